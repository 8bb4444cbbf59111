"""Fixtures for the profiler tests: sysfs trees laid out as on real boards, fake tools, a fake clock.

Board trees (paths and file names as the kernel creates them; rail labels and channel order from
the kernel device trees (J. Hunter, "arm64: tegra: Add power-sensors for Tegra234 boards", 2023),
jetson_stats' recorded output and public scripts reading these boards):

* ``nano_jp4``       Jetson Nano, L4T 32.7, iio ``ina3221x`` at 6-0040: POM_5V_IN, POM_5V_GPU, POM_5V_CPU
* ``agx_xavier_jp4`` AGX Xavier, L4T 32.7, two iio chips 1-0040 (GPU, CPU, SOC) and 1-0041 (CV, VDDRQ, SYS5V); no total rail
* ``xavier_nx_jp5``  Xavier NX, L4T 35.4, hwmon ``ina3221`` at 7-0040/hwmon/hwmon5: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC
* ``orin_nano_jp6``  Orin Nano, L4T 36.4, hwmon at 1-0040/hwmon/hwmon3: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC
                     (+ the /sys/class/hwmon/hwmon3 link, as on the board)
* ``agx_orin_jp5``   AGX Orin, L4T 35.4, hwmon 1-0040/hwmon/hwmon3 (VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0) and
                     1-0041/hwmon/hwmon4 (NC, VDDQ_VDD2_1V8AO, NC): no VDD_IN, total = sum of rails
* ``x86_rapl``       an x86 host with intel-rapl:0 (package-0) and intel-rapl:0:0 (core)

Every hwmon chip also has in4-6 (shunt uV), in7 "sum of shunt voltages", curr*_max/crit and
update_interval, so the readers must skip what is not a rail.
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


def _hwmon_chip(
    files: Dict[str, str], chip: str, hwmon: str, channels: List[Tuple[str, int, int]], update_ms: int = 5
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
    files[f"{d}/samples"] = "512\n"
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
    _cpus(files, cpus, cpu_low, cpu_high)


def board_files(board: str) -> Dict[str, str]:
    files: Dict[str, str] = {}
    if board == "nano_jp4":
        _iio_chip(
            files,
            "6-0040",
            0,
            [("POM_5V_IN", 4520, 5000, 904), ("POM_5V_GPU", 385, 5000, 77), ("POM_5V_CPU", 1078, 5000, 215)],
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
    elif board == "agx_xavier_jp4":
        _iio_chip(files, "1-0040", 0, [("GPU", 6854, 1000, 6854), ("CPU", 2209, 1000, 2209), ("SOC", 1371, 1000, 1371)])
        _iio_chip(files, "1-0041", 1, [("CV", 0, 1000, 0), ("VDDRQ", 716, 1000, 716), ("SYS5V", 2702, 5000, 540)])
        _jetson(
            files,
            "Jetson-AGX",
            "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:07:00 UTC 2022",
            "17000000.gv11b",
            1377000000,
            1377000000,
            2265600,
            2265600,
            8,
        )
    elif board == "xavier_nx_jp5":
        _hwmon_chip(
            files,
            "7-0040",
            "hwmon5",
            [("VDD_IN", 5048, 1064), ("VDD_CPU_GPU_CV", 5040, 259), ("VDD_SOC", 5040, 414)],
            8,
        )
        _jetson(
            files,
            "NVIDIA Jetson Xavier NX Developer Kit",
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
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
            [("VDD_IN", 5064, 1130), ("VDD_CPU_GPU_CV", 5056, 164), ("VDD_SOC", 5056, 322)],
            5,
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
            5,
        )
        _hwmon_chip(files, "1-0041", "hwmon4", [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5064, 59), ("NC", 0, 0)], 5)
        _jetson(
            files,
            "Jetson AGX Orin Developer Kit",
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
            "17000000.ga10b",
            306000000,
            1300500000,
            115200,
            2201600,
            12,
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


# Expected figures per board: (source name, rail names in order, total rule, total mW).
BOARDS = {
    "nano_jp4": ("ina3221-iio", ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"], "POM_5V_IN", 4520.0),
    "agx_xavier_jp4": (
        "ina3221-iio",
        ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"],
        "sum of rails",
        6854.0 + 2209 + 1371 + 0 + 716 + 2702,
    ),
    "xavier_nx_jp5": ("ina3221-hwmon", ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"], "VDD_IN", 5048 * 1064 / 1000.0),
    "orin_nano_jp6": ("ina3221-hwmon", ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"], "VDD_IN", 5064 * 1130 / 1000.0),
    "agx_orin_jp5": (
        "ina3221-hwmon",
        ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"],
        "sum of rails",
        (5080 * 470 + 5080 * 156 + 5048 * 697 + 5064 * 59) / 1000.0,
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


# Recorded tegrastats lines, one per format.
TEGRASTATS_LINES = {
    # Jetson Nano, JetPack 4: mW without a unit (jetson_stats tests/tegrastats)
    "nano_jp4": "RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) CPU [30%@1036,33%@1036,"
    "28%@1036,26%@1036] EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 NVENC 716 NVDEC 716 APE 25 PLL@57C CPU@60.5C PMIC@100C "
    "GPU@59C AO@65C thermal@59.75C POM_5V_IN 4520/4680 POM_5V_GPU 0/0 POM_5V_CPU 1078/1205",
    # AGX Xavier, JetPack 4: no total rail, negative temperatures (jetson_stats tests/tegrastats)
    "agx_xavier_jp4": "RAM 4722/7844MB (lfb 1x512kB) CPU [55%@2035,14%@2034,27%@2034,55%@2035,47%@2035,45%@2035] SWAP 149/1024MB "
    "(cached 7MB) EMC_FREQ 2%@1866 GR3D_FREQ 37%@1300 APE 150 MTS fg 0% bg 0% BCPU@-45C MCPU@-45C GPU@-51C "
    "PLL@45C AO@47.5C Tboard@37C Tdiode@46.75C PMIC@100C thermal@46.4C VDD_IN 14025/14416 VDD_CPU 2209/2538 "
    "VDD_GPU 6854/6903 VDD_SOC 1371/1370 VDD_WIFI 19/19 NVENC 716 NVDEC 716 VDD_DDR 2702/2702",
    # AGX Orin, JetPack 5: mW unit, NC rails, leading date (facts sheet section 5)
    "agx_orin_jp5": "01-03-2023 16:07:54 RAM 2257/30536MB (lfb 5392x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,0%@729,"
    "0%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@0 VIC_FREQ 729 APE 174 CV0@-256C CPU@43.343C "
    "Tboard@32C SOC2@39.531C Tdiode@33.25C SOC0@40.218C CV1@-256C GPU@-256C tj@41.656C SOC1@39.906C CV2@-256C "
    "VDD_GPU_SOC 2390mW/2390mW VDD_CPU_CV 796mW/796mW VIN_SYS_5V0 3522mW/3522mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW",
    # Orin Nano / NX, JetPack 6: rails as in the facts sheet example; the other fields follow the JP 5 layout
    "orin_nano_jp6": "RAM 2461/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] VIC_FREQ 729 APE 200 cpu@49.25C soc2@47.625C soc0@48.031C gpu@48.625C "
    "tj@49.25C soc1@48.437C VDD_IN 5704mW/5704mW VDD_CPU_GPU_CV 831mW/831mW VDD_SOC 1624mW/1624mW",
    # AGX Orin, JetPack 7.2 (R39.2): three values per rail, two per temperature (jetson_stats PR #900)
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
    "--energy-seconds",
    "0.3",
    "--energy-inferences",
    "5",
    "--idle-seconds",
    "0.3",
    "--sweep-points",
    "11",
    "--no-progress",
]


@pytest.fixture()
def fast_args():
    """Settings that keep one profile run around a second on a 2-core CPU."""
    return list(FAST)
