"""Fixtures for the profiler tests: sysfs trees laid out as on real boards, real tegrastats lines, fake tools.

Board trees (paths and file names as the kernel drivers create them; rail labels, channel order and
addresses from the sources named per board; readings chosen to match each board's tegrastats line
below where one exists):

* ``nano_jp4``        Jetson Nano, L4T 32.7, iio ``ina3221x`` at 6-0040: POM_5V_IN, POM_5V_GPU, POM_5V_CPU
                      (jetson_stats jtop/core/power.py reads rail_name_N / in_powerN_input; the path is the
                      one public Nano scripts read); powers from jetson_stats' Nano tegrastats line
* ``agx_xavier_jp4``  AGX Xavier, L4T 32.7, iio chips 1-0040 (GPU, CPU, SOC) and 1-0041 (CV, VDDRQ, SYS5V):
                      the design guide DG-09840-001 section 5.6.2 (monitors at 0x40 and 0x41 on the supply
                      inputs); powers from the real line in martinkersner/gtop#7; bus voltages: 19 V for the
                      supply inputs (the devkit's adapter; an assumption) and 5 V for SYS5V
* ``agx_xavier_jp5``  the same chips under hwmon (L4T 35): labels as JetPack 5's tegrastats prints them
* ``xavier_nx_jp5``   Xavier NX, L4T 35.4, hwmon ``ina3221`` at 7-0040/hwmon/hwmon6 (alumet-dev/alumet,
                      plugins/nvidia-jetson/README.md): VDD_IN, VDD_CPU_GPU_CV, VDD_SOC + in7 "sum of shunt voltages"
* ``orin_nano_jp6``   Orin Nano, L4T 36.4, hwmon 1-0040/hwmon/hwmon3: in1 VDD_IN, in2 VDD_CPU_GPU_CV, in3 VDD_SOC
                      (J. Hunter, "arm64: tegra: Add power-sensors for Tegra234 boards", 2023) + the
                      /sys/class/hwmon/hwmon3 link
* ``agx_orin_jp5``    AGX Orin, L4T 35.4, hwmon 1-0040 (VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0) and 1-0041
                      (NC, VDDQ_VDD2_1V8AO, NC) (Hunter 2023): no VDD_IN; powers from jetson_stats' Orin line
* ``thor_jp7``        Thor devkit, L4T 38: the carrier's INA238 (hwmon ``ina238``: in1_input mV, curr1_input mA,
                      power1_input uW; kernel Documentation/hwmon/ina238.rst) read as VIN (jetson_stats PR #900),
                      and an INA3221 with VDD_GPU, VDD_CPU_SOC_MSS, VIN_SYS_5V0 (the rail names of jetson_stats
                      PR #785); the I2C addresses here are illustrative
* ``x86_rapl``        an x86 host with intel-rapl:0 (package-0) and intel-rapl:0:0 (core)

Every INA3221 hwmon chip has in4-6 (shunt uV), in7 "sum of shunt voltages", curr*_max/crit, in*_enable,
``samples`` 512 and an ``update_interval`` (one cycle as new kernels report it, 1 ms; or the old
convention, samples included, 430 ms): both conventions appear, as on the boards in the field.
"""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

HWMON = "sys/bus/i2c/drivers/ina3221/{chip}/hwmon/{hwmon}"
IIO = "sys/bus/i2c/drivers/ina3221x/{chip}/iio:device{n}"
INA238 = "sys/bus/i2c/drivers/ina238/{chip}/hwmon/{hwmon}"


def _hwmon_chip(
    files: Dict[str, str],
    chip: str,
    hwmon: str,
    channels: List[Tuple[str, int, int]],
    update_ms: int = 1,
    samples: int = 512,
) -> None:
    """channels: (label or '' for no label file, bus mV, current mA) for in1..in3."""
    d = HWMON.format(chip=chip, hwmon=hwmon)
    files[f"sys/bus/i2c/drivers/ina3221/{chip}/name"] = "ina3221\n"
    files[f"{d}/name"] = "ina3221\n"
    shunt_sum = 0
    for i, (label, mv, ma) in enumerate(channels, start=1):
        if label:
            files[f"{d}/in{i}_label"] = label + "\n"
        files[f"{d}/in{i}_input"] = f"{mv}\n"
        files[f"{d}/curr{i}_input"] = f"{ma}\n"
        files[f"{d}/curr{i}_max"] = "32760\n"
        files[f"{d}/curr{i}_crit"] = "32760\n"
        files[f"{d}/curr{i}_max_alarm"] = "0\n"
        files[f"{d}/curr{i}_crit_alarm"] = "0\n"
        files[f"{d}/in{i}_enable"] = "1\n"
        files[f"{d}/shunt{i}_resistor"] = "5000\n"
        shunt_uv = ma * 5  # 5 mOhm shunts: uV = mA * 5
        files[f"{d}/in{i + 3}_input"] = f"{shunt_uv}\n"
        shunt_sum += shunt_uv
    files[f"{d}/in7_input"] = f"{shunt_sum}\n"
    files[f"{d}/in7_label"] = "sum of shunt voltages\n"
    files[f"{d}/curr4_input"] = f"{sum(c[2] for c in channels)}\n"
    files[f"{d}/samples"] = f"{samples}\n"
    files[f"{d}/update_interval"] = f"{update_ms}\n"


def _iio_chip(files: Dict[str, str], chip: str, n: int, rails: List[Tuple[str, int, int, int]]) -> None:
    """rails: (name, power mW, voltage mV, current mA) for channels 0..2."""
    d = IIO.format(chip=chip, n=n)
    files[f"sys/bus/i2c/drivers/ina3221x/{chip}/name"] = "ina3221x\n"
    files[f"{d}/name"] = "ina3221x\n"
    for i, (name, mw, mv, ma) in enumerate(rails):
        files[f"{d}/rail_name_{i}"] = name + "\n"
        files[f"{d}/in_power{i}_input"] = f"{mw}\n"
        files[f"{d}/in_voltage{i}_input"] = f"{mv}\n"
        files[f"{d}/in_current{i}_input"] = f"{ma}\n"
        files[f"{d}/crit_current_limit_{i}"] = "4000\n"
        files[f"{d}/warn_current_limit_{i}"] = "3000\n"
    files[f"{d}/running_mode"] = "1\n"


def _cpus(files: Dict[str, str], count: int, low: int, high: int) -> None:
    for c in range(count):
        base = f"sys/devices/system/cpu/cpu{c}"
        files[f"{base}/online"] = "1\n"
        files[f"{base}/cpufreq/scaling_min_freq"] = f"{low}\n"
        files[f"{base}/cpufreq/scaling_max_freq"] = f"{high}\n"
        files[f"{base}/cpufreq/scaling_cur_freq"] = f"{high}\n"


def _jetson(
    files: Dict[str, str],
    model: str,
    release: str,
    gpu_node: str,
    gpu_min: int,
    gpu_max: int,
    cpu_low: int,
    cpu_high: int,
    cpus: int,
) -> None:
    files["proc/device-tree/model"] = model + "\x00"
    files["etc/nv_tegra_release"] = release + "\n"
    files[f"sys/class/devfreq/{gpu_node}/min_freq"] = f"{gpu_min}\n"
    files[f"sys/class/devfreq/{gpu_node}/max_freq"] = f"{gpu_max}\n"
    files[f"sys/class/devfreq/{gpu_node}/cur_freq"] = f"{gpu_max}\n"
    _cpus(files, cpus, cpu_low, cpu_high)
    files["sys/class/thermal/thermal_zone0/type"] = "cpu-thermal\n"
    files["sys/class/thermal/thermal_zone0/temp"] = "41500\n"
    files["sys/class/thermal/thermal_zone1/type"] = "cv0-thermal\n"
    files["sys/class/thermal/thermal_zone1/temp"] = "-256000\n"  # an absent sensor, as Orin shows it


_XAVIER_RELEASE_JP5 = (
    "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023"
)


def board_files(board: str) -> Dict[str, str]:
    files: Dict[str, str] = {}
    if board == "nano_jp4":
        _iio_chip(
            files,
            "6-0040",
            0,
            [("POM_5V_IN", 933, 5112, 182), ("POM_5V_GPU", 0, 5104, 0), ("POM_5V_CPU", 84, 5104, 16)],
        )
        _jetson(
            files,
            "NVIDIA Jetson Nano Developer Kit",
            "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022",
            "57000000.gpu",
            76800000,
            921600000,
            102000,
            1479000,
            4,
        )
    elif board in ("agx_xavier_jp4", "agx_xavier_jp5"):
        hv = 19040  # SYS_VIN_HV from the devkit's 19 V adapter (assumed magnitude)
        if board == "agx_xavier_jp4":
            top = [("GPU", 463, hv, 24), ("CPU", 618, hv, 32), ("SOC", 2936, hv, 154)]
            bottom = [("CV", 0, hv, 0), ("VDDRQ", 309, hv, 16), ("SYS5V", 3306, 5016, 659)]
            _iio_chip(files, "1-0040", 0, top)
            _iio_chip(files, "1-0041", 1, bottom)
            release = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:07:00 UTC 2022"
        else:
            _hwmon_chip(files, "1-0040", "hwmon2", [("GPU", hv, 25), ("CPU", hv, 25), ("SOC", hv, 65)], 430)
            _hwmon_chip(files, "1-0041", "hwmon3", [("CV", hv, 0), ("VDDRQ", hv, 16), ("SYS5V", 5016, 552)], 430)
            release = _XAVIER_RELEASE_JP5
        _jetson(files, "Jetson-AGX", release, "17000000.gv11b", 1377000000, 1377000000, 2265600, 2265600, 8)
    elif board == "xavier_nx_jp5":
        _hwmon_chip(
            files,
            "7-0040",
            "hwmon6",
            [("VDD_IN", 5048, 1006), ("VDD_CPU_GPU_CV", 5040, 138), ("VDD_SOC", 5040, 219)],
            430,  # the old convention: channels x samples x conversions
        )
        _jetson(
            files,
            "NVIDIA Jetson Xavier NX Developer Kit",
            _XAVIER_RELEASE_JP5,
            "17000000.gv11b",
            114750000,
            1109250000,
            1190400,
            1907200,
            6,
        )
    elif board == "orin_nano_jp6":
        _hwmon_chip(
            files,
            "1-0040",
            "hwmon3",
            [("VDD_IN", 5064, 1126), ("VDD_CPU_GPU_CV", 5056, 164), ("VDD_SOC", 5056, 321)],
        )
        _jetson(
            files,
            "NVIDIA Jetson Orin Nano Developer Kit",
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025",
            "17000000.ga10b",
            306000000,
            1020000000,
            729600,
            1728000,
            6,
        )
    elif board == "agx_orin_jp5":
        _hwmon_chip(
            files,
            "1-0040",
            "hwmon3",
            [("VDD_GPU_SOC", 5080, 470), ("VDD_CPU_CV", 5080, 156), ("VIN_SYS_5V0", 5048, 697)],
        )
        _hwmon_chip(files, "1-0041", "hwmon4", [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5064, 59), ("NC", 0, 0)])
        _jetson(
            files,
            "Jetson AGX Orin Developer Kit",
            _XAVIER_RELEASE_JP5,
            "17000000.ga10b",
            306000000,
            1300500000,
            115200,
            2201600,
            12,
        )
    elif board == "thor_jp7":
        d = INA238.format(chip="2-0044", hwmon="hwmon1")
        files["sys/bus/i2c/drivers/ina238/2-0044/name"] = "ina238\n"
        files[f"{d}/name"] = "ina238\n"
        files[f"{d}/in0_input"] = "3\n"  # shunt voltage, mV
        files[f"{d}/in1_input"] = "19968\n"
        files[f"{d}/curr1_input"] = "1603\n"
        files[f"{d}/power1_input"] = "32010000\n"  # uW
        files[f"{d}/temp1_input"] = "38125\n"
        _hwmon_chip(
            files,
            "2-0040",
            "hwmon2",
            [("VDD_GPU", 5008, 1103), ("VDD_CPU_SOC_MSS", 5008, 1496), ("VIN_SYS_5V0", 5016, 902)],
        )
        _jetson(
            files,
            "NVIDIA Jetson AGX Thor Developer Kit",
            "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Fri Aug 22 00:55:42 UTC 2025",
            "gpu-gpc-0",
            1575000000,
            1575000000,
            2601000,
            2601000,
            14,
        )
    elif board == "x86_rapl":
        base = "sys/class/powercap"
        files[f"{base}/intel-rapl:0/name"] = "package-0\n"
        files[f"{base}/intel-rapl:0/energy_uj"] = "1000000\n"
        files[f"{base}/intel-rapl:0/max_energy_range_uj"] = "262143328850\n"
        files[f"{base}/intel-rapl:0:0/name"] = "core\n"
        files[f"{base}/intel-rapl:0:0/energy_uj"] = "400000\n"
        files[f"{base}/intel-rapl:0:0/max_energy_range_uj"] = "262143328850\n"
        files[f"{base}/intel-rapl/enabled"] = "1\n"
    else:
        raise KeyError(board)
    return files


def write_tree(root: Path, files: Dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


# Expected figures per board: (source name, rail names in order, total label, total quantity, total mW).
BOARDS = {
    "nano_jp4": ("ina3221-iio", ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"], "POM_5V_IN", "module_input", 933.0),
    "agx_xavier_jp4": (
        "ina3221-iio",
        ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"],
        "AGX Xavier rail sum",
        "agx_xavier_rail_sum",
        463.0 + 618 + 2936 + 0 + 309 + 3306,
    ),
    "agx_xavier_jp5": (
        "ina3221-hwmon",
        ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"],
        "AGX Xavier rail sum",
        "agx_xavier_rail_sum",
        (19040 * (25 + 25 + 65 + 0 + 16) + 5016 * 552) / 1000.0,
    ),
    "xavier_nx_jp5": (
        "ina3221-hwmon",
        ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"],
        "VDD_IN",
        "module_input",
        5048 * 1006 / 1000.0,
    ),
    "orin_nano_jp6": (
        "ina3221-hwmon",
        ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"],
        "VDD_IN",
        "module_input",
        5064 * 1126 / 1000.0,
    ),
    "agx_orin_jp5": (
        "ina3221-hwmon",
        ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"],
        "AGX Orin rail sum",
        "agx_orin_rail_sum",
        (5080 * 470 + 5080 * 156 + 5048 * 697 + 5064 * 59) / 1000.0,
    ),
    "thor_jp7": (
        "ina3221-hwmon",
        ["VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0", "VIN"],
        "VIN",
        "board_input",
        32010.0,
    ),
}


@pytest.fixture()
def board_tree(tmp_path):
    """board_tree(name) -> a directory laid out like that board's root filesystem (sys/, proc/, etc/)."""

    def _make(board: str) -> Path:
        root = write_tree(tmp_path / board, board_files(board))
        if board == "orin_nano_jp6":  # the class link the kernel creates
            link = root / "sys/class/hwmon/hwmon3"
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(root / HWMON.format(chip="1-0040", hwmon="hwmon3"), link)
        return root

    return _make


# Real tegrastats lines, one per format, each with where it came from.
TEGRASTATS_LINES = {
    # Jetson Nano, JetPack 4: mW without a unit. jetson_stats tests/tegrastats, "Jetson Nano (SUDO)" line
    # (the emulator draws the CPU loads at random: fixed here).
    "nano_jp4": "RAM 331/3964MB (lfb 758x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [12%@102,3%@102,"
    "9%@102,0%@102] EMC_FREQ 3%@204 GR3D_FREQ 0%@76 APE 25 PLL@20.5C CPU@23.5C PMIC@100C GPU@22.5C AO@27.5C "
    "thermal@23C POM_5V_IN 933/933 POM_5V_GPU 0/0 POM_5V_CPU 84/105",
    # Jetson TX2, JetPack 4. jetson_stats tests/tegrastats, "Jetson TX2 (SUDO)" line (CPU loads fixed). The old
    # "AGX Xavier" fixture was this rail set under another name.
    "tx2_jp4": "RAM 696/7854MB (lfb 1675x4MB) CPU [4%@345,0%@345,0%@345,7%@345,2%@345,1%@345] EMC_FREQ 1%@665 "
    "GR3D_FREQ 0%@140 APE 150 MTS fg 0% bg 0% BCPU@30C MCPU@30C GPU@28C PLL@30C Tboard@26C Tdiode@27C PMIC@100C "
    "thermal@29.2C VDD_IN 1383/1383 VDD_CPU 153/191 VDD_GPU 76/76 VDD_SOC 384/384 VDD_WIFI 364/335 VDD_DDR 192/201",
    # AGX Xavier, JetPack 4.2: GPU/CPU/SOC/CV/VDDRQ/SYS5V, no input rail. A real board's output posted in
    # martinkersner/gtop pull request #7 (2019-06-17).
    "agx_xavier_jp4": "RAM 14700/15692MB (lfb 3x2MB) SWAP 898/8192MB (cached 23MB) CPU [0%@1190,0%@1190,0%@1190,"
    "0%@1190,0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0% GR3D_FREQ 0% AO@30C GPU@30.5C Tboard@31C Tdiode@32C "
    "AUX@30.5C CPU@31.5C thermal@30.8C PMIC@100C GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 VDDRQ 309/309 "
    "SYS5V 3306/3306",
    # AGX Xavier, JetPack 5 (mW units). The tail of a line (from inside the CPU list on) in a public tegrastats
    # parser's test; the search index did not name its repository.
    "agx_xavier_jp5": "[0%@1190,1%@1190,0%@1190,0%@1189,0%@1190,0%@1191,0%@1190,0%@1190] EMC_FREQ 0%@1331 "
    "GR3D_FREQ 0%@114 VIC_FREQ 115 APE 150 AUX@36C CPU@36.5C thermal@35.7C Tboard@37C AO@35C GPU@35C Tdiode@38.75C "
    "PMIC@50C GPU 467mW/467mW CPU 467mW/467mW SOC 1245mW/1245mW CV 0mW/0mW VDDRQ 311mW/311mW SYS5V 2768mW/2768mW",
    # Xavier NX, JetPack 5. From a public tegrastats collector's docstring ("Jetson Xavier collector"); the
    # search index did not name its repository.
    "xavier_nx_jp5": "RAM 2690/6854MB (lfb 6x1MB) SWAP 479/3427MB (cached 3MB) CPU [3%@1904,7%@1906,1%@1905,0%@1907,"
    "off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@[510] VIC_FREQ 601 APE 150 AUX@39C CPU@39.5C AO@37.5C GPU@37.5C "
    "PMIC@50C VDD_IN 5079mW/5079mW VDD_CPU_GPU_CV 696mW/696mW VDD_SOC 1104mW/1104mW",
    # Orin Nano / NX, JetPack 6: the rails as in the facts sheet's example (from a public parser test whose
    # repository could not be identified); the other fields follow the JetPack 5 Orin layout.
    "orin_nano_jp6": "RAM 2461/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] VIC_FREQ 729 APE 200 cpu@49.25C soc2@47.625C soc0@48.031C gpu@48.625C "
    "tj@49.25C soc1@48.437C VDD_IN 5704mW/5704mW VDD_CPU_GPU_CV 831mW/831mW VDD_SOC 1624mW/1624mW",
    # AGX Orin, JetPack 5: mW unit, NC rails, leading date. jetson_stats tests/tegrastats, "Jetson Orin (SUDO)"
    # line (CPU and GPU loads fixed).
    "agx_orin_jp5": "01-03-2023 16:07:54 RAM 2257/30536MB (lfb 5392x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,0%@729,"
    "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@204 GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 "
    "NVJPG1 729 VIC_FREQ 115 APE 233 CV0@-256C CPU@41.437C Tboard@29C SOC2@39.062C Tdiode@30.75C SOC0@39.031C "
    "CV1@-256C GPU@-256C tj@41.656C SOC1@38.937C CV2@-256C VDD_GPU_SOC 2390mW/2390mW VDD_CPU_CV 796mW/796mW "
    "VIN_SYS_5V0 3522mW/3522mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW",
    # AGX Orin, JetPack 7.2 (R39.2): three values per rail, two per temperature. jetson_stats
    # jtop/tests/test_06_tegra_parse.py (TEGRASTATS_ORIN_JP7, a real board's line).
    "agx_orin_jp7": "07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU [23%@2201,10%@2201,4%@2201,14%@2201,30%@2201,"
    "18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,27%@2201] EMC_FREQ 3%@3199 GR3D_FREQ 12%@[1300,1300] "
    "NVENC0 off NVDEC0 off NVJPG0 off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 "
    "cpu@52.968C/52.968C soc2@48.406C/48.406C soc0@49.531C/49.531C gpu@47.625C/47.625C "
    "VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW",
}


@pytest.fixture()
def fake_tool(tmp_path, monkeypatch):
    """fake_tool(name, script_body) -> puts an executable shell script ``name`` first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")

    def _make(name: str, body: str) -> Path:
        path = bindir / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    return _make


class CounterClock:
    """A clock that only moves when told to: exact energy arithmetic."""

    def __init__(self, start: float = 0.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def counter_clock():
    return CounterClock()


@pytest.fixture()
def deny_read(monkeypatch):
    """deny_read(path) -> opening that file raises PermissionError, as for a non-root user.

    The suite may run as root (CI containers), where chmod cannot take read access away.
    """
    import builtins

    denied = set()
    real_open = builtins.open

    def guarded(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(file) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)

    def _deny(path: Path) -> None:
        denied.add(os.fspath(path))

    return _deny


@pytest.fixture(params=sorted(BOARDS))
def each_board(request):
    """(board name, (source name, rails, total rule, total mW)) for every recorded board tree."""
    return request.param, BOARDS[request.param]


@pytest.fixture()
def tegrastats_lines():
    return dict(TEGRASTATS_LINES)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real bundle of the trained tiny CNN (fp32), written by the converter; treat as read-only."""
    from hisd_edge.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("profile_bundle") / "tiny"
    convert_checkpoint(tiny_checkpoint, out, precisions=("fp32",), val_count=64, verify_count=8)
    return out


@pytest.fixture()
def bundle_copy(tiny_bundle_dir, tmp_path):
    """bundle_copy(change=None) -> a private copy of the tiny bundle, its manifest edited by ``change``."""
    import shutil

    from hisd_edge.bundle import Bundle

    def _make(change=None) -> Path:
        dst = tmp_path / "bundle_copy"
        shutil.copytree(tiny_bundle_dir, dst)
        if change is not None:
            Bundle.open(dst).update(change)
        return dst

    return _make


FAST = [
    "--data",
    "default:test",
    "--samples",
    "120",
    "--repeats",
    "12",
    "--warmup",
    "2",
    "--rounds",
    "2",
    "--warmup-seconds",
    "0",
    "--energy-seconds",
    "0.3",
    "--energy-inferences",
    "5",
    "--idle-seconds",
    "0.3",
    "--overhead-pairs",
    "1",
    "--sweep-points",
    "11",
    "--no-progress",
]


@pytest.fixture()
def fast_board(board_tree):
    """fast_board(name) -> a board tree whose INA3221s average 1 sample (``echo 1 > samples``): readings
    follow the power at once, so real-clock tests may use sub-second windows (a 512-sample board refuses them)."""

    def _make(board: str) -> Path:
        root = board_tree(board)
        for samples in root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/samples"):
            samples.write_text("1\n")
            (samples.parent / "update_interval").write_text("1\n")
        return root

    return _make


@pytest.fixture()
def fast_args():
    """Settings that keep one profile run around a second on a 2-core CPU."""
    return list(FAST)
