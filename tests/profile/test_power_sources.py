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
    board, (name, rails, label, quantity, total_mw) = each_board
    root = board_tree(board)
    source, notes = open_power_source("auto", sysfs_root=str(root))
    with source:
        sample = source.read()
    assert source.name == name
    assert list(sample.rails_mw) == rails
    assert sample.total_mw == pytest.approx(total_mw, abs=1e-9)
    described = source.describe()
    assert described["total"] == label and described["total_rule"]["quantity"] == quantity
    assert notes[-1] == {"source": name, "used": True, "why": f"{len(rails)} rails found"}


def test_what_total_means_is_named_per_board_never_one_name_for_two_meanings(board_tree):
    seen = {}
    for board in ("nano_jp4", "orin_nano_jp6", "agx_orin_jp5", "agx_xavier_jp4", "thor_jp7"):
        source = Ina3221Source.discover(str(board_tree(board)))
        rule = source.describe()["total_rule"]
        seen.setdefault(rule["label"], set()).add(rule["quantity"])
        assert rule["meaning"] and "carrier" in rule["meaning"]  # each says whether the carrier board is in it
    assert all(len(quantities) == 1 for quantities in seen.values()), seen
    assert seen["AGX Orin rail sum"] == {"agx_orin_rail_sum"} and seen["AGX Xavier rail sum"] == {"agx_xavier_rail_sum"}
    assert seen["VIN"] == {"board_input"} and seen["VDD_IN"] == seen["POM_5V_IN"] == {"module_input"}


def test_every_rail_says_what_it_covers(board_tree):
    from hisd_edge.profile.power.rails import describe_rails

    for board in ("nano_jp4", "xavier_nx_jp5", "agx_xavier_jp4", "agx_orin_jp5", "thor_jp7"):
        rails = [r.name for r in Ina3221Source.discover(str(board_tree(board))).rails]
        described = describe_rails(rails)
        assert all(r["covers"] != "not documented for this board" for r in described), (board, described)
        assert sum(r["gpu"] for r in described) == 1  # the rail carrying the GPU is named on every family
    assert describe_rails(["A", "B"])[0]["covers"] == "not documented for this board"


def test_hwmon_skips_nc_and_the_shunt_sum_and_reads_the_averaging(board_tree):
    source = Ina3221Source.discover(str(board_tree("agx_orin_jp5")))
    names = [r.name for r in source.rails]
    assert "NC" not in names and not any("shunt" in n for n in names)
    assert {r.device for r in source.rails} == {"1-0040", "1-0041"}
    timing = source.timing()  # samples 512, update_interval 1 ms (one cycle, as new kernels report it)
    assert timing.samples == 512 and timing.update_interval_meaning == "one conversion cycle"
    assert timing.tau_s == pytest.approx(0.5115, rel=1e-3) and timing.settle_s >= 5 * timing.tau_s
    assert source.min_period_s == pytest.approx(0.001)  # a new value each cycle
    described = source.describe()
    assert described["total"] == "AGX Orin rail sum" and "carrier board not included" in described["total_note"]
    assert described["sensor"]["samples"] == 512


def test_old_kernels_update_interval_includes_the_samples(board_tree):
    # Xavier NX's tree reports 430 ms = 3 channels x 512 x (140 + 140) us: the old convention.
    timing = Ina3221Source.discover(str(board_tree("xavier_nx_jp5"))).timing()
    assert timing.update_interval_meaning == "channels x samples x conversions"
    assert timing.cycle_s == pytest.approx(0.430 / 512) and timing.tau_s == pytest.approx(0.4296, rel=2e-3)


def test_thor_reads_the_ina238_system_input_as_vin(board_tree):
    source = Ina3221Source.discover(str(board_tree("thor_jp7")))
    sample = source.read()
    assert sample.rails_mw["VIN"] == pytest.approx(32010.0)  # power1_input is in uW
    assert sample.total_mw == pytest.approx(32010.0)  # VIN is the total: the INA3221 rails are inside it
    assert source.describe()["total_rule"]["quantity"] == "board_input"
    vin = next(r for r in source.rails if r.name == "VIN")
    assert vin.chip == "ina238" and vin.paths() == [str(vin.power_uw_path)]  # one file per reading
    assert any("INA238" in n for n in source.timing().notes)


def test_only_the_rails_asked_for_are_read(board_tree, monkeypatch):
    import builtins

    root = board_tree("orin_nano_jp6")
    source, _ = open_power_source("ina3221", sysfs_root=str(root), rails=["VDD_IN"])
    source.open()  # opening reads once, to fail early on an unreadable file
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    sample = source.read()
    assert list(sample.rails_mw) == ["VDD_IN"] and sample.total_mw == pytest.approx(5064 * 1126 / 1000.0)
    assert [p.rsplit("/", 1)[1] for p in opened] == ["in1_input", "curr1_input"]  # two files: one rail
    assert source.worker_spec()["rails"] == [{"rail": "VDD_IN", "files": [opened[0], opened[1]], "scale": 1e-3}]
    with pytest.raises(InputError, match="VDD_GPU not on this board; it has VDD_IN, VDD_CPU_GPU_CV, VDD_SOC"):
        open_power_source("ina3221", sysfs_root=str(root), rails=["VDD_GPU"])
    with pytest.raises(InputError, match="cannot be combined with --power nvml"):
        open_power_source("nvml", rails=["VDD_IN"])


def test_class_hwmon_link_does_not_duplicate_rails(board_tree):
    root = board_tree("orin_nano_jp6")
    assert (root / "sys/class/hwmon/hwmon3").is_symlink()
    source = Ina3221Source.discover(str(root))
    assert [r.name for r in source.rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]


def test_hwmon_found_through_class_path_when_driver_path_is_missing(board_tree, tmp_path):
    root = board_tree("xavier_nx_jp5")
    chip_dir = root / "sys/bus/i2c/drivers/ina3221/7-0040/hwmon/hwmon6"
    moved = root / "sys/devices/platform/bus@0/c240000.i2c/i2c-1/7-0040/hwmon/hwmon6"
    moved.parent.mkdir(parents=True)
    chip_dir.rename(moved)
    (root / "sys/class/hwmon").mkdir(parents=True)
    (root / "sys/class/hwmon/hwmon6").symlink_to(moved)
    source = Ina3221Source.discover(str(root))
    assert source.layout == "hwmon" and source.rails[0].device == "7-0040"
    assert source.read().total_mw == pytest.approx(5048 * 1006 / 1000.0)


def test_iio_falls_back_to_voltage_times_current_and_assumes_the_averaging(board_tree):
    root = board_tree("nano_jp4")
    for i in range(3):
        (root / f"sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power{i}_input").unlink()
    source = Ina3221Source.discover(str(root))
    assert source.read().rails_mw["POM_5V_IN"] == pytest.approx(5112 * 182 / 1000.0)
    # JetPack 4's driver does not show its averaging: the slowest documented setting, said out loud
    timing = source.timing()
    assert timing.assumed and timing.samples == 512 and timing.tau_s == pytest.approx(0.4296, rel=2e-3)
    assert "does not expose its averaging settings" in timing.notes[0] and "assumed" in timing.notes[0]


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
    # Thor: VIN (carrier INA238) already holds every module rail: never added to them
    assert total_from_rails({"VDD_GPU": 5.0, "VDD_CPU_SOC_MSS": 6.0, "VIN_SYS_5V0": 1.0, "VIN": 30.0}) == (30.0, "VIN")


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


def _jtop_module(power):
    class FakeJtop:
        def __init__(self, interval):
            self.power = power

        def start(self):
            pass

        def is_alive(self):
            return True

        def close(self):
            pass

    module = types.ModuleType("jtop")
    module.jtop = FakeJtop
    return module


def test_jtop_leaves_out_usb_pd_supplies_on_a_board_without_vdd_in(monkeypatch, counter_clock):
    # AGX Orin devkit as jtop saw it before jetson-stats PR #900: the USB-C power-delivery supply of
    # /sys/class/power_supply (negotiated 20 V x 3 A) listed as a rail and summed into "tot".
    rails = {
        "VDD_GPU_SOC": {"power": 2390, "type": "INA3221"},
        "VDD_CPU_CV": {"power": 796, "type": "INA3221"},
        "VIN_SYS_5V0": {"power": 3522, "type": "INA3221"},
        "VDDQ_VDD2_1V8AO": {"power": 301, "type": "INA3221"},
        "ucsi-source-psy-usbc000:001": {"power": 60000, "type": "USB", "volt": 20000, "curr": 3000},
    }
    monkeypatch.setitem(sys.modules, "jtop", _jtop_module({"rail": rails, "tot": {"power": 67009}}))
    source, _ = open_power_source("jtop", clock=counter_clock)
    with source:
        sample = source.read()
    assert "ucsi-source-psy-usbc000:001" not in sample.rails_mw
    assert sample.total_mw == pytest.approx(2390 + 796 + 3522 + 301)  # not jtop's 67 W "tot"
    assert source.describe()["total_rule"]["quantity"] == "agx_orin_rail_sum"


def test_jtop_takes_an_input_rail_it_moved_into_tot(monkeypatch, counter_clock):
    # jtop moves VDD_IN (or VIN on Thor) out of "rail" into "tot" with its name
    power = {"rail": {"VDD_CPU_GPU_CV": {"power": 831, "type": "INA3221"}}, "tot": {"power": 5704, "name": "VDD_IN"}}
    monkeypatch.setitem(sys.modules, "jtop", _jtop_module(power))
    source, _ = open_power_source("jtop", clock=counter_clock)
    with source:
        sample = source.read()
    assert sample.rails_mw == {"VDD_CPU_GPU_CV": 831.0, "VDD_IN": 5704.0} and sample.total_mw == 5704.0
