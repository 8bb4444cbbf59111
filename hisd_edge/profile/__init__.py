"""The profiler: what each exit costs on *this* device, in milliseconds, bytes and millijoules.

Layout (one module per step):

* :mod:`~hisd_edge.profile.power` - power readers behind one interface (INA3221 hwmon/iio,
  tegrastats, jtop, NVML, RAPL, none) and ``auto`` discovery;
* :mod:`~hisd_edge.profile.sampler` - the background sampling thread (injectable clock);
* :mod:`~hisd_edge.profile.energy` - trapezoid / counter integration, idle baseline, gaps;
* :mod:`~hisd_edge.profile.memory` - RSS, MemAvailable, NvMapMemUsed, backend memory reports;
* :mod:`~hisd_edge.profile.device` - board, L4T, nvpmodel, jetson_clocks;
* :mod:`~hisd_edge.profile.tradeoff` - threshold sweep, exit distribution, Pareto front;
* :mod:`~hisd_edge.profile.schema` - the ``profile.json`` schema (documented there);
* :mod:`~hisd_edge.profile.report` - CSV, PNG plots, the HTML page, comparisons;
* :mod:`~hisd_edge.profile.profiler` - the orchestration: ``profile_bundle``.

Nothing here imports torch, onnx, TensorRT, CUDA, NVML or jtop at import time.
"""

from hisd_edge.profile.energy import WindowEnergy, integrate_window, per_inference
from hisd_edge.profile.power import POWER_CHOICES, NullSource, PowerSample, PowerSource, open_power_source
from hisd_edge.profile.profiler import ProfileConfig, format_summary, profile_bundle, profile_default, run_profile
from hisd_edge.profile.sampler import Gap, PowerSampler, PowerTrace
from hisd_edge.profile.schema import SCHEMA_VERSION, load_profile

__all__ = [
    "POWER_CHOICES",
    "SCHEMA_VERSION",
    "Gap",
    "NullSource",
    "PowerSample",
    "PowerSampler",
    "PowerSource",
    "PowerTrace",
    "ProfileConfig",
    "WindowEnergy",
    "format_summary",
    "integrate_window",
    "load_profile",
    "open_power_source",
    "per_inference",
    "profile_bundle",
    "profile_default",
    "run_profile",
]
