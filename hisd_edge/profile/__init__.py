"""The profiler: what each exit costs on *this* device, in milliseconds, bytes and millijoules.

Layout (one module per step):

* :mod:`~hisd_edge.profile.power` - power readers behind one interface (INA3221 hwmon/iio and
  Thor's INA238, tegrastats, jtop, NVML, RAPL, none), ``auto`` discovery, and per board family what
  each rail covers and what "total" means (:mod:`~hisd_edge.profile.power.rails`);
* :mod:`~hisd_edge.profile.sensor` - how fast readings follow power (the INA3221's averaging):
  settling time and the shortest window;
* :mod:`~hisd_edge.profile.clock` - the one clock (CLOCK_MONOTONIC, or virtual for simulations);
* :mod:`~hisd_edge.profile.sampler` - polling in its own process, a thread, or on a virtual clock;
* :mod:`~hisd_edge.profile.energy` - trapezoid / counter integration of a window, per rail, gaps;
* :mod:`~hisd_edge.profile.measure` - the design: idle brackets, interleaved seeded rounds, warm-up,
  latency rounds, sampler overhead at every exit;
* :mod:`~hisd_edge.profile.analysis` - per exit and stage: means and intervals, the model check;
* :mod:`~hisd_edge.profile.stats` - Student-t intervals;
* :mod:`~hisd_edge.profile.conditions` - clocks (CPU, GPU, EMC), temperatures, throttling, the guard;
* :mod:`~hisd_edge.profile.memory` - RSS, MemAvailable, NvMapMemUsed, backend reports, per exit;
* :mod:`~hisd_edge.profile.device` - board, L4T, nvpmodel, jetson_clocks;
* :mod:`~hisd_edge.profile.tradeoff` - threshold sweep, exit distribution, Pareto front;
* :mod:`~hisd_edge.profile.costs` - per-stage costs and their intervals for ``thresholds --costs``;
* :mod:`~hisd_edge.profile.schema` - the ``profile.json`` schema (documented there);
* :mod:`~hisd_edge.profile.report` - CSV, PNG plots, the HTML page, comparisons;
* :mod:`~hisd_edge.profile.profiler` - the orchestration: ``profile_bundle``.

Nothing here imports torch, onnx, TensorRT, CUDA, NVML or jtop at import time.
"""

from hisd_edge.profile.clock import SystemClock, VirtualClock
from hisd_edge.profile.energy import WindowEnergy, integrate_window, per_inference
from hisd_edge.profile.power import POWER_CHOICES, NullSource, PowerSample, PowerSource, open_power_source
from hisd_edge.profile.profiler import (
    ProfileConfig,
    format_summary,
    profile_bundle,
    profile_default,
    run_profile,
    run_profile_modes,
)
from hisd_edge.profile.sampler import Gap, PowerSampler, PowerTrace, ProcessSampler
from hisd_edge.profile.schema import SCHEMA_VERSION, load_profile
from hisd_edge.profile.sensor import SensorTiming

__all__ = [
    "POWER_CHOICES",
    "SCHEMA_VERSION",
    "Gap",
    "NullSource",
    "PowerSample",
    "PowerSampler",
    "PowerSource",
    "PowerTrace",
    "ProcessSampler",
    "ProfileConfig",
    "SensorTiming",
    "SystemClock",
    "VirtualClock",
    "WindowEnergy",
    "format_summary",
    "integrate_window",
    "load_profile",
    "open_power_source",
    "per_inference",
    "profile_bundle",
    "profile_default",
    "run_profile",
    "run_profile_modes",
]
