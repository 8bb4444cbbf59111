"""Power readers: one small interface (:class:`PowerSource` -> :class:`PowerSample`), many sources.

``ina3221`` (hwmon, JetPack 5+; iio, JetPack 4), ``tegrastats`` (a live process or a recorded log),
``jtop``, ``nvml`` (desktop GPUs), ``rapl`` (x86) and ``none``. :func:`open_power_source` picks one by
name or discovers one (``auto``). Heavy or optional modules (pynvml, jtop) are imported only
inside the readers that need them.
"""

from hisd_edge.profile.power.base import (
    SYSFS_ROOT_ENV,
    TOTAL_RAILS,
    NullSource,
    PowerSample,
    PowerSource,
    sysfs_root,
    total_from_rails,
)
from hisd_edge.profile.power.discover import POWER_CHOICES, open_power_source
from hisd_edge.profile.power.tegrastats import parse_rails_mw, samples_from_log

__all__ = [
    "POWER_CHOICES",
    "SYSFS_ROOT_ENV",
    "TOTAL_RAILS",
    "NullSource",
    "PowerSample",
    "PowerSource",
    "open_power_source",
    "parse_rails_mw",
    "samples_from_log",
    "sysfs_root",
    "total_from_rails",
]
