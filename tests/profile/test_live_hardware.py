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
    assert info["jetson_clocks"]["state"] in ("on", "off", "unknown")


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
