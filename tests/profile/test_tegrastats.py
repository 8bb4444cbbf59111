"""tegrastats lines of every format, the live-process reader (with a stand-in tegrastats) and logs."""

from __future__ import annotations

import time

import pytest

from hisd_edge.errors import DeviceError, InputError
from hisd_edge.profile.power import open_power_source, total_from_rails
from hisd_edge.profile.power.tegrastats import (
    TegrastatsLogSource,
    TegrastatsProcessSource,
    parse_rails_mw,
    parse_timestamp_s,
    sample_from_line,
    samples_from_log,
)
from hisd_edge.profile.sampler import PowerSampler

EXPECTED = {  # rails, total mW, what the total is (the lines and their sources: conftest.TEGRASTATS_LINES)
    "nano_jp4": ({"POM_5V_IN": 933.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 84.0}, 933.0, "POM_5V_IN"),
    "tx2_jp4": (
        {"VDD_IN": 1383.0, "VDD_CPU": 153.0, "VDD_GPU": 76.0, "VDD_SOC": 384.0, "VDD_WIFI": 364.0, "VDD_DDR": 192.0},
        1383.0,
        "VDD_IN",
    ),
    "agx_xavier_jp4": (
        {"GPU": 463.0, "CPU": 618.0, "SOC": 2936.0, "CV": 0.0, "VDDRQ": 309.0, "SYS5V": 3306.0},
        463.0 + 618 + 2936 + 0 + 309 + 3306,
        "AGX Xavier rail sum",
    ),
    "agx_xavier_jp5": (
        {"GPU": 467.0, "CPU": 467.0, "SOC": 1245.0, "CV": 0.0, "VDDRQ": 311.0, "SYS5V": 2768.0},
        467.0 + 467 + 1245 + 0 + 311 + 2768,
        "AGX Xavier rail sum",
    ),
    "xavier_nx_jp5": ({"VDD_IN": 5079.0, "VDD_CPU_GPU_CV": 696.0, "VDD_SOC": 1104.0}, 5079.0, "VDD_IN"),
    "orin_nano_jp6": ({"VDD_IN": 5704.0, "VDD_CPU_GPU_CV": 831.0, "VDD_SOC": 1624.0}, 5704.0, "VDD_IN"),
    "agx_orin_jp5": (
        {"VDD_GPU_SOC": 2390.0, "VDD_CPU_CV": 796.0, "VIN_SYS_5V0": 3522.0, "VDDQ_VDD2_1V8AO": 301.0},
        2390.0 + 796 + 3522 + 301,
        "AGX Orin rail sum",
    ),
    "agx_orin_jp7": (
        {"VDD_GPU_SOC": 5139.0, "VDD_CPU_CV": 3268.0, "VIN_SYS_5V0": 5500.0},
        5139.0 + 3268 + 5500,
        "AGX Orin rail sum",
    ),
}


def test_every_recorded_format_is_covered(tegrastats_lines):
    assert sorted(EXPECTED) == sorted(tegrastats_lines)


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_every_line_format_parses_exactly(fmt, tegrastats_lines):
    rails, total, label = EXPECTED[fmt]
    assert parse_rails_mw(tegrastats_lines[fmt]) == rails
    assert sample_from_line(tegrastats_lines[fmt], 3.0).total_mw == total
    assert total_from_rails(rails)[1] == label


def test_memory_temperatures_and_frequencies_are_not_rails():
    line = (
        "RAM 2257/30536MB (lfb 5392x4MB) SWAP 0/15268MB (cached 0MB) IRAM 0/252kB(lfb 252kB) EMC_FREQ 0%@2133 "
        "GR3D_FREQ 12%@[1300,1300] cpu@52.968C/52.968C APE 174 MTS fg 0% bg 0%"
    )
    assert parse_rails_mw(line) == {}
    assert sample_from_line(line, 0.0) is None


def test_current_value_is_used_not_the_average():
    assert parse_rails_mw("VDD_IN 5000mW/7000mW")["VDD_IN"] == 5000.0
    assert parse_rails_mw("POM_5V_IN 933/1200")["POM_5V_IN"] == 933.0
    assert parse_rails_mw("VDD_IN 5000mW/6000mW/7000mW VDD_SOC 10/20/30") == {"VDD_IN": 5000.0, "VDD_SOC": 10.0}


def test_timestamps(tegrastats_lines):
    assert parse_timestamp_s(tegrastats_lines["agx_orin_jp5"]) == pytest.approx(
        time.mktime((2023, 1, 3, 16, 7, 54, 0, 0, -1))
    )
    assert parse_timestamp_s(tegrastats_lines["nano_jp4"]) is None


def test_samples_from_a_recorded_log(tegrastats_lines):
    lines = [
        tegrastats_lines["orin_nano_jp6"],
        "garbage",
        tegrastats_lines["orin_nano_jp6"].replace("5704mW/", "6704mW/"),
    ]
    samples = samples_from_log(lines, interval_s=0.1, start_s=10.0)
    assert [s.time_s for s in samples] == [10.0, pytest.approx(10.1)]
    assert [s.total_mw for s in samples] == [5704.0, 6704.0]


def test_log_source_replays_then_stops(tmp_path, tegrastats_lines, counter_clock):
    log = tmp_path / "tegrastats.log"
    log.write_text("\n".join([tegrastats_lines["agx_orin_jp7"]] * 3) + "\n")
    source, notes = open_power_source("auto", tegrastats_log=str(log), clock=counter_clock)
    assert isinstance(source, TegrastatsLogSource) and notes[0]["source"] == "tegrastats-log"
    with source:
        for _ in range(3):
            counter_clock.advance(0.1)
            assert source.read().total_mw == 5139.0 + 3268 + 5500
        with pytest.raises(DeviceError, match="ended after 3 samples"):
            source.read()
    assert source.describe()["total"] == "AGX Orin rail sum"
    assert source.describe()["total_rule"]["quantity"] == "agx_orin_rail_sum"
    # a recorded log cannot say how the board's sensor was set: the documented setting is assumed, and said
    timing = source.timing()
    assert timing.assumed and timing.tau_s > 0.4 and timing.refresh_s == pytest.approx(0.1)


def test_log_source_bad_input(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_power_source("tegrastats", tegrastats_log=str(tmp_path / "absent.log"))
    empty = tmp_path / "empty.log"
    empty.write_text("RAM 1/2MB\n")
    with pytest.raises(InputError, match="no power rails"):
        open_power_source("tegrastats", tegrastats_log=str(empty))
    with pytest.raises(InputError, match="cannot be combined"):
        open_power_source("nvml", tegrastats_log=str(empty))


def test_tegrastats_missing_from_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeviceError) as info:
        open_power_source("tegrastats")
    assert "not found on PATH" in str(info.value) and "--power" in str(info.value)


def _fake_tegrastats_body(line: str, count: int) -> str:
    # Like the real tool: --interval MS, one line per interval; this one dies after `count` lines.
    return f"""
    interval=100
    while [ -n "$1" ]; do
      case "$1" in --interval) interval=$2; shift;; esac; shift
    done
    i=0
    while [ $i -lt {count} ]; do
      echo "{line}"
      i=$((i+1))
      sleep $(awk "BEGIN {{print $interval/1000}}")
    done
    exit 3
    """


def test_process_source_streams_lines_and_reports_when_it_dies(fake_tool, tegrastats_lines):
    fake_tool("tegrastats", _fake_tegrastats_body(tegrastats_lines["orin_nano_jp6"], 4))
    source, notes = open_power_source("auto", sysfs_root=None, tegrastats_interval_ms=20)
    assert isinstance(source, TegrastatsProcessSource) and notes[-1]["source"] == "tegrastats"
    sampler = PowerSampler(source, period_s=0.01)
    sampler.start()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not sampler.trace().gaps:
        time.sleep(0.02)
    trace = sampler.stop()
    source.close()
    assert 1 <= len(trace.samples) <= 4  # one per line, never duplicated by faster polling
    assert all(s.total_mw == 5704.0 for s in trace.samples)
    assert trace.gaps and "tegrastats stopped (exit status 3)" in trace.gaps[0].reason
    assert trace.period_s == pytest.approx(0.02)  # never faster than the tool's interval
    assert source.describe()["command"].endswith("--interval 20")


def test_process_source_that_prints_no_rails_fails_to_open(fake_tool):
    fake_tool("tegrastats", "echo 'RAM 1/2MB'\nsleep 5\n")
    source = TegrastatsProcessSource(50, first_line_timeout_s=0.5)
    with pytest.raises(DeviceError, match="printed no power rails"):
        source.open()
