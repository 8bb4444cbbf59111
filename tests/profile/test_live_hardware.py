"""Checks that only mean something on real hardware (skipped elsewhere, with the reason)."""

from __future__ import annotations

import time

import pytest

from hisd_edge.profile import PowerSampler, integrate_window, open_power_source
from hisd_edge.profile.device import device_info


@pytest.mark.jetson
def test_live_jetson_power_and_mode():
    source, notes = open_power_source("auto")
    assert source.available, notes
    with source:
        sample = source.read()
        assert sample is None or 500.0 < sample.total_mw < 150_000.0  # a Jetson module draws 0.5 W .. 150 W
    info = device_info()
    assert info["is_jetson"] and info["l4t_release"]
    assert info["nvpmodel"]["mode_name"] or info["nvpmodel"].get("reason")
    assert info["jetson_clocks"]["state"] in ("on", "off", "unknown") and "emc" in info["jetson_clocks"]
    timing = source.timing()  # the board's own averaging settings (JetPack 5+: read, not assumed)
    assert timing.tau_s > 0 and timing.min_window_s > 1.0, timing.to_dict()


@pytest.mark.jetson
def test_live_jetson_sampling_process_follows_the_board():
    from hisd_edge.profile.power.ina3221 import Ina3221Source
    from hisd_edge.profile.sampler import ProcessSampler

    source = Ina3221Source.discover()
    if source is None:
        pytest.skip("no INA3221 in sysfs (JetPack 4 iio boards are read the same way)")
    sampler = ProcessSampler(source, period_s=0.05).start()
    time.sleep(1.0)
    trace = sampler.stop()
    assert len(trace.samples) >= 10 and not trace.gaps
    assert all(500.0 < s.total_mw < 150_000.0 for s in trace.samples)


@pytest.mark.gpu
def test_live_nvml_energy_counter_moves():
    pytest.importorskip("pynvml", reason="needs nvidia-ml-py")
    source, _ = open_power_source("nvml")
    with source:
        sampler = PowerSampler(source, period_s=0.05)
        with sampler:
            time.sleep(1.0)
        trace = sampler.trace()
    window = integrate_window(trace, trace.samples[1].time_s, trace.samples[-1].time_s)
    assert window.method == "counter" and window.energy_mj > 0 and 1_000.0 < window.mean_power_mw < 2_000_000.0
