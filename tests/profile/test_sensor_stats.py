"""The sensor's time behaviour (tau, settling, shortest window) and the interval arithmetic."""

from __future__ import annotations

import math

import pytest

from hisd_edge.errors import InputError
from hisd_edge.profile import sensor, stats


def _chip(tmp_path, **files):
    d = tmp_path / "hwmon3"
    d.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (d / name).write_text(f"{value}\n")
    return d


def test_tau_of_the_running_average():
    # 512 samples, one cycle = 3 channels x (140 + 140) us: tau ~ 512 x 0.84 ms = 0.43 s
    tau = sensor.averaging_tau_s(512, 3 * 2 * 140e-6)
    assert tau == pytest.approx(0.4296, rel=1e-3)
    # after 5 tau a step is within e^-5 (0.7 %) of its new level: the discrete filter agrees
    cycles = math.ceil(5 * tau / (3 * 2 * 140e-6))
    assert (1 - 1 / 512) ** cycles == pytest.approx(math.exp(-5), rel=0.01)
    assert sensor.averaging_tau_s(1, 0.001) == 0.0


def test_both_kernel_conventions_of_update_interval(tmp_path):
    new = sensor.hwmon_chip_timing(
        _chip(tmp_path / "a", samples=512, update_interval=1, in1_enable=1, in2_enable=1, in3_enable=1)
    )
    old = sensor.hwmon_chip_timing(_chip(tmp_path / "b", samples=512, update_interval=430))
    assert new.update_interval_meaning == "one conversion cycle" and new.cycle_s == pytest.approx(0.001)
    assert old.update_interval_meaning == "channels x samples x conversions"
    assert old.tau_s == pytest.approx(0.4296, rel=2e-3) and new.tau_s >= old.tau_s  # a rounded cycle errs long
    assert not new.assumed and not old.assumed
    one_channel = sensor.hwmon_chip_timing(
        _chip(tmp_path / "c", samples=4, update_interval=1, in1_enable=1, in2_enable=0, in3_enable=0)
    )
    assert one_channel.channels == 1 and one_channel.cycle_s == pytest.approx(0.001)


def test_unreadable_settings_assume_the_slowest_documented_setting_and_say_so(tmp_path):
    nothing = sensor.hwmon_chip_timing(_chip(tmp_path / "a"))
    assert nothing.assumed and nothing.samples == 512 and nothing.tau_s == pytest.approx(0.4296, rel=2e-3)
    assert "cannot be read" in nothing.notes[0] and "assumed" in nothing.notes[0]
    no_samples = sensor.hwmon_chip_timing(_chip(tmp_path / "b", update_interval=1))
    assert (
        no_samples.assumed and "samples" in no_samples.notes[0] and no_samples.tau_s == pytest.approx(0.5115, rel=1e-3)
    )


def test_windows_hold_enough_independent_readings_and_short_ones_are_refused():
    timing = sensor.assumed_jetson_timing("test")
    assert timing.settle_s == pytest.approx(5 * timing.tau_s + timing.refresh_s)
    assert timing.min_window_s == pytest.approx(2 * timing.tau_s * sensor.MIN_INDEPENDENT_READINGS)
    assert timing.default_window_s >= 30.0
    assert timing.independent_readings(timing.min_window_s) == pytest.approx(sensor.MIN_INDEPENDENT_READINGS)
    with pytest.raises(InputError) as info:
        timing.check_window(2.0, "ina3221-hwmon")
    message = str(info.value)
    assert "--energy-seconds 2: too short" in message and "tau = 0.43 s" in message
    assert f"use --energy-seconds {math.ceil(timing.min_window_s * 10) / 10:g} or more" in message
    timing.check_window(timing.min_window_s, "ina3221-hwmon")  # the minimum itself is accepted
    counter = sensor.counter_timing(0.1, "NVML")
    assert counter.settle_s == pytest.approx(0.2) and counter.min_window_s == pytest.approx(2.0)
    assert counter.default_window_s == 5.0  # exact counters need far shorter windows than 30 s
    with pytest.raises(InputError, match="counter updates every 0.1 s"):
        counter.check_window(1.0, "nvml")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 30, 101, 1999, 2001, 100000])
@pytest.mark.parametrize("p", [0.975, 0.95, 0.995, 0.6, 0.025])
def test_t_quantile_matches_scipy(df, p):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.t_quantile(p, df) == pytest.approx(float(scipy_stats.t.ppf(p, df)), rel=1e-7, abs=1e-9)


def test_mean_ci_and_overlap():
    assert stats.mean_ci([]) == {"mean": None, "ci": None, "sd": None, "n": 0}
    assert stats.mean_ci([2.0])["ci"] is None  # one round: no interval
    result = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert result["mean"] == 2.0 and result["ci"] == pytest.approx([2.0 - half, 2.0 + half])
    assert stats.overlap([0, 1], [1, 2]) and not stats.overlap([0, 1], [1.5, 2]) and stats.overlap(None, [0, 1])
    assert stats.excludes_zero([0.1, 0.2]) and not stats.excludes_zero([-0.1, 0.2])
