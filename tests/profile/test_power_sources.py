"""Power readers against sysfs trees laid out as on real boards, and the auto discovery order."""

from __future__ import annotations

import sys
import types

import pytest

from hisd_edge.errors import DependencyError, DeviceError, InputError
from hisd_edge.profile.power import NullSource, open_power_source, total_from_rails
from hisd_edge.profile.power.ina3221 import Ina3221Source
from hisd_edge.profile.power.rapl import RaplSource


def test_auto_discovers_each_board_with_exact_rails_and_total(each_board, board_tree):
    board, (name, rails, rule, total_mw) = each_board
    root = board_tree(board)
    source, notes = open_power_source("auto", sysfs_root=str(root))
    with source:
        sample = source.read()
    assert source.name == name
    assert list(sample.rails_mw) == rails
    assert sample.total_mw == pytest.approx(total_mw, abs=1e-9)
    assert source.describe()["total"] == rule
    assert notes[-1] == {"source": name, "used": True, "why": f"{len(rails)} rails found"}


def test_hwmon_skips_nc_and_the_shunt_sum_and_reads_update_interval(board_tree):
    source = Ina3221Source.discover(str(board_tree("agx_orin_jp5")))
    names = [r.name for r in source.rails]
    assert "NC" not in names and not any("shunt" in n for n in names)
    assert {r.device for r in source.rails} == {"1-0040", "1-0041"}
    assert source.min_period_s == pytest.approx(0.010)  # 2 x update_interval (5 ms)
    described = source.describe()
    assert described["total"] == "sum of rails" and "carrier board" in described["total_note"]


def test_class_hwmon_link_does_not_duplicate_rails(board_tree):
    root = board_tree("orin_nano_jp6")
    assert (root / "sys/class/hwmon/hwmon3").is_symlink()
    source = Ina3221Source.discover(str(root))
    assert [r.name for r in source.rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]


def test_hwmon_found_through_class_path_when_driver_path_is_missing(board_tree, tmp_path):
    root = board_tree("xavier_nx_jp5")
    chip_dir = root / "sys/bus/i2c/drivers/ina3221/7-0040/hwmon/hwmon5"
    moved = root / "sys/devices/platform/bus@0/c240000.i2c/i2c-1/7-0040/hwmon/hwmon5"
    moved.parent.mkdir(parents=True)
    chip_dir.rename(moved)
    (root / "sys/class/hwmon").mkdir(parents=True)
    (root / "sys/class/hwmon/hwmon5").symlink_to(moved)
    source = Ina3221Source.discover(str(root))
    assert source.layout == "hwmon" and source.rails[0].device == "7-0040"
    assert source.read().total_mw == pytest.approx(5048 * 1064 / 1000.0)


def test_iio_falls_back_to_voltage_times_current(board_tree):
    root = board_tree("nano_jp4")
    for i in range(3):
        (root / f"sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power{i}_input").unlink()
    sample = Ina3221Source.discover(str(root)).read()
    assert sample.rails_mw["POM_5V_IN"] == pytest.approx(5000 * 904 / 1000.0)


def test_readings_follow_the_files(board_tree):
    root = board_tree("orin_nano_jp6")
    source = Ina3221Source.discover(str(root))
    first = source.read().total_mw
    (root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input").write_text("2000\n")
    assert first != source.read().total_mw == pytest.approx(5064 * 2000 / 1000.0)


def test_unreadable_sysfs_file_names_the_path_and_the_fix(board_tree, deny_read):
    root = board_tree("orin_nano_jp6")
    path = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input"
    deny_read(path)
    for power in ("auto", "ina3221"):
        with pytest.raises(DeviceError) as info:
            source, _ = open_power_source(power, sysfs_root=str(root))
            source.open()
        message = str(info.value)
        assert str(path) in message and "chmod a+r" in message and "--power tegrastats" in message
        assert "\n" not in message


def test_explicit_ina3221_without_a_monitor_says_what_to_do(tmp_path):
    with pytest.raises(DeviceError, match="--power tegrastats"):
        open_power_source("ina3221", sysfs_root=str(tmp_path))


def test_missing_sysfs_root_and_unknown_power_name(tmp_path):
    with pytest.raises(DeviceError, match="no such directory"):
        open_power_source("ina3221", sysfs_root=str(tmp_path / "absent"))
    with pytest.raises(InputError, match="unknown power source"):
        open_power_source("watts")


def test_sysfs_root_from_environment(board_tree, monkeypatch):
    monkeypatch.setenv("HISD_EDGE_SYSFS_ROOT", str(board_tree("xavier_nx_jp5")))
    source, _ = open_power_source("ina3221")
    assert source.name == "ina3221-hwmon"


def test_total_prefers_input_rails():
    assert total_from_rails({"VDD_CPU": 1.0, "VDD_IN": 7.0}) == (7.0, "VDD_IN")
    assert total_from_rails({"POM_5V_GPU": 1.0, "POM_5V_IN": 4.0}) == (4.0, "POM_5V_IN")
    assert total_from_rails({"A": 1.0, "B": 2.5}) == (3.5, "sum of rails")


def test_auto_on_a_bare_machine_is_none_with_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tegrastats
    source, notes = open_power_source("auto", sysfs_root=str(tmp_path))
    assert isinstance(source, NullSource) and not source.available and source.read() is None
    assert "no power source found" in source.describe()["reason"]
    assert [n["source"] for n in notes][:1] == ["ina3221"] and notes[-1]["source"] == "none"


# -- RAPL ------------------------------------------------------------------------------------------
def test_rapl_counter_power_and_wraparound(board_tree, counter_clock):
    root = board_tree("x86_rapl")
    counter = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    (root / "sys/class/powercap/intel-rapl:0/max_energy_range_uj").write_text("2000000\n")
    source = RaplSource.discover(str(root), clock=counter_clock)
    source.open()  # primes at 1.0 J
    counter_clock.advance(0.5)
    counter.write_text("1500000\n")
    sample = source.read()
    assert sample.total_mw == pytest.approx(1000.0)  # 500 mJ in 0.5 s
    assert sample.energy_mj == pytest.approx(500.0)
    counter_clock.advance(1.0)
    counter.write_text("500000\n")  # wrapped at 2 J: +1.0 J
    sample = source.read()
    assert sample.energy_mj == pytest.approx(1500.0) and sample.total_mw == pytest.approx(1000.0)
    assert source.describe()["total"] == "package-0"


def test_rapl_unreadable_is_none_in_auto_but_an_error_when_asked(board_tree, deny_read, tmp_path, monkeypatch):
    root = board_tree("x86_rapl")
    deny_read(root / "sys/class/powercap/intel-rapl:0/energy_uj")
    monkeypatch.setenv("PATH", str(tmp_path))
    source, _notes = open_power_source("auto", sysfs_root=str(root))
    assert isinstance(source, NullSource) and "chmod a+r" in source.reason
    with pytest.raises(DeviceError, match="chmod a\\+r"):
        explicit, _ = open_power_source("rapl", sysfs_root=str(root))
        explicit.open()


# -- NVML (nvidia-ml-py is replaced by a stand-in module) ---------------------------------------------
class _NVMLError(Exception):
    pass


def _fake_pynvml(energy_values, supported=True):
    module = types.ModuleType("pynvml")
    module.NVMLError = _NVMLError
    values = iter(energy_values)
    calls = {"shutdown": 0}
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1)
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H100"

    def energy(handle):
        if not supported:
            raise _NVMLError("Not Supported")
        return next(values)

    module.nvmlDeviceGetTotalEnergyConsumption = energy
    module.nvmlDeviceGetPowerUsage = lambda h: 250000
    return module, calls


def test_nvml_reads_the_energy_counter(monkeypatch, counter_clock):
    module, calls = _fake_pynvml([1000, 1000, 4000])
    monkeypatch.setitem(sys.modules, "pynvml", module)
    source, _ = open_power_source("nvml", clock=counter_clock)
    with source:
        counter_clock.advance(1.0)
        sample = source.read()
    assert (sample.energy_mj, sample.total_mw, sample.time_s) == (1000.0, 250000.0, 1.0)
    assert calls["shutdown"] == 1
    assert source.describe()["gpu_name"] == "NVIDIA H100"


def test_nvml_without_energy_counter_or_bindings(monkeypatch):
    module, _ = _fake_pynvml([], supported=False)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    with pytest.raises(DeviceError, match="not supported on Jetson"):
        open_power_source("nvml")[0].open()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with pytest.raises(DependencyError, match="nvidia-ml-py"):
        open_power_source("nvml")[0].open()


# -- jtop (jetson-stats is replaced by a stand-in module) --------------------------------------------
def test_jtop_reads_power_and_reports_a_lost_service(monkeypatch, counter_clock):
    state = {"alive": True}

    class FakeJtop:
        def __init__(self, interval):
            self.interval = interval
            self.power = {
                "rail": {
                    "VDD_CPU_CV": {"power": 796, "volt": 5080, "curr": 156},
                    "VDD_GPU_SOC": {"power": 2390, "volt": 5080, "curr": 470},
                },
                "tot": {"power": 3186},
            }

        def start(self):
            pass

        def is_alive(self):
            return state["alive"]

        def close(self):
            pass

    module = types.ModuleType("jtop")
    module.jtop = FakeJtop
    monkeypatch.setitem(sys.modules, "jtop", module)
    source, _ = open_power_source("jtop", clock=counter_clock)
    with source:
        sample = source.read()
        assert sample.total_mw == 3186.0 and sample.rails_mw == {"VDD_CPU_CV": 796.0, "VDD_GPU_SOC": 2390.0}
        state["alive"] = False
        with pytest.raises(DeviceError, match="jtop stopped"):
            source.read()
    monkeypatch.setitem(sys.modules, "jtop", None)
    with pytest.raises(DependencyError, match="jetson-stats"):
        open_power_source("jtop")[0].open()
