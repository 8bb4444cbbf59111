"""Pick a power source by name, or discover one (``--power auto``).

Discovery order: INA3221 through hwmon, INA3221 through iio, ``tegrastats`` on PATH, jtop, NVML,
RAPL, none. The first that is present wins. A Jetson power monitor that is present but unreadable
is an error (permissions are the user's to fix, and silently measuring nothing would hide it);
an unreadable RAPL counter on an ordinary x86 desktop is not: energy is then reported as
unavailable with the reason and the fix.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hisd_edge.errors import DependencyError, DeviceError, InputError
from hisd_edge.profile.power.base import Clock, NullSource, PowerSource
from hisd_edge.profile.power.base import sysfs_root as resolve_root

LOG = logging.getLogger("hisd_edge.profile.power")

POWER_CHOICES = ("auto", "ina3221", "tegrastats", "jtop", "nvml", "rapl", "none")


def open_power_source(
    name: str = "auto",
    *,
    sysfs_root: Optional[str] = None,
    tegrastats_log: Optional[str] = None,
    tegrastats_interval_ms: int = 100,
    gpu_index: int = 0,
    clock: Clock = time.monotonic,
    rails: Optional[Sequence[str]] = None,
) -> Tuple[PowerSource, List[Dict[str, Any]]]:
    """(configured source, discovery notes). The source is not opened yet.

    ``rails`` limits an INA3221 source to those rails (fewer I2C reads per sample).

    The notes list every source tried and why it was or was not used; they go into the report so a
    reader can tell "no power monitor on this machine" from "monitor present but skipped".
    """
    if tegrastats_log is not None:
        if name not in ("auto", "tegrastats"):
            raise InputError(f"--tegrastats-log replays tegrastats lines; it cannot be combined with --power {name}")
        from hisd_edge.profile.power.tegrastats import TegrastatsLogSource

        return TegrastatsLogSource(tegrastats_log, tegrastats_interval_ms, clock), [
            {"source": "tegrastats-log", "used": True, "why": f"replaying {tegrastats_log}"}
        ]
    if name not in POWER_CHOICES:
        raise InputError(f"--power {name}: unknown power source; choose one of {', '.join(POWER_CHOICES)}")
    if name == "none":
        return NullSource("no power source selected (--power none)", clock), [
            {"source": "none", "used": True, "why": "--power none"}
        ]
    if rails and name not in ("auto", "ina3221"):
        raise InputError(f"--rails selects INA3221 rails; it cannot be combined with --power {name}")
    if name == "auto":
        return _discover(sysfs_root, tegrastats_interval_ms, gpu_index, clock, rails)
    return _explicit(name, sysfs_root, tegrastats_interval_ms, gpu_index, clock, rails), [
        {"source": name, "used": True, "why": f"--power {name}"}
    ]


def _explicit(
    name: str,
    sysfs_root: Optional[str],
    interval_ms: int,
    gpu_index: int,
    clock: Clock,
    rails: Optional[Sequence[str]] = None,
) -> PowerSource:
    if name == "ina3221":
        from hisd_edge.profile.power.ina3221 import Ina3221Source

        source = Ina3221Source.discover(sysfs_root, clock, rails)
        if source is None:
            raise DeviceError(
                "no INA3221 power monitor under /sys/bus/i2c/drivers/ina3221 (JetPack 5+) or ina3221x (JetPack 4); "
                "is this a Jetson? use --power tegrastats, --sysfs-root DIR for a recorded tree, or --power none"
            )
        return source
    if name == "tegrastats":
        from hisd_edge.profile.power.tegrastats import TegrastatsProcessSource

        return TegrastatsProcessSource(interval_ms, clock=clock)
    if name == "jtop":
        from hisd_edge.profile.power.jtop import JtopSource

        return JtopSource(interval_ms / 1000.0, clock)
    if name == "nvml":
        from hisd_edge.profile.power.nvml import NvmlSource

        return NvmlSource(gpu_index, clock)
    if name == "rapl":
        from hisd_edge.profile.power.rapl import RaplSource

        rapl = RaplSource.discover(sysfs_root, clock)
        if rapl is None:
            raise DeviceError(
                "no RAPL powercap domains under /sys/class/powercap (not an x86 host, or the intel_rapl "
                "module is not loaded: sudo modprobe intel_rapl_common); use --power none"
            )
        return rapl
    raise InputError(f"--power {name}: unknown power source")


def _discover(
    sysfs_root: Optional[str], interval_ms: int, gpu_index: int, clock: Clock, rails: Optional[Sequence[str]] = None
) -> Tuple[PowerSource, List[Dict[str, Any]]]:
    notes: List[Dict[str, Any]] = []
    from hisd_edge.profile.power.ina3221 import Ina3221Source

    # Present but unreadable raises here (DeviceError naming the file and the fix).
    ina = Ina3221Source.discover(sysfs_root, clock, rails)
    if ina is not None:
        ina.open()
        notes.append({"source": ina.name, "used": True, "why": f"{len(ina.all_rails)} rails found"})
        return ina, notes
    notes.append({"source": "ina3221", "used": False, "why": "no ina3221 (hwmon) or ina3221x (iio) device in sysfs"})
    if rails:
        raise InputError(f"--rails {','.join(rails)}: no INA3221 power monitor here to read them from")

    # Tools and libraries only make sense for the live machine, not for a recorded sysfs tree.
    recorded = os.path.realpath(str(resolve_root(sysfs_root))) != "/"
    if recorded:
        notes.append({"source": "tegrastats/jtop/nvml", "used": False, "why": "a recorded --sysfs-root is being read"})
    else:
        if shutil.which("tegrastats"):
            from hisd_edge.profile.power.tegrastats import TegrastatsProcessSource

            notes.append({"source": "tegrastats", "used": True, "why": "tegrastats found on PATH"})
            return TegrastatsProcessSource(interval_ms, clock=clock), notes
        notes.append({"source": "tegrastats", "used": False, "why": "tegrastats not on PATH"})
        if importlib.util.find_spec("jtop") is not None:
            from hisd_edge.profile.power.jtop import JtopSource

            notes.append({"source": "jtop", "used": True, "why": "jtop module installed"})
            return JtopSource(interval_ms / 1000.0, clock), notes
        notes.append({"source": "jtop", "used": False, "why": "jtop (jetson-stats) not installed"})
        nvml_source, why = _try_nvml(gpu_index, clock)
        if nvml_source is not None:
            notes.append({"source": "nvml", "used": True, "why": why})
            return nvml_source, notes
        notes.append({"source": "nvml", "used": False, "why": why})

    from hisd_edge.profile.power.rapl import RaplSource

    try:
        rapl = RaplSource.discover(sysfs_root, clock)
        if rapl is not None:
            rapl.open()
            notes.append({"source": "rapl", "used": True, "why": f"{len(rapl.domains)} powercap domains"})
            return rapl, notes
        why = "no /sys/class/powercap/intel-rapl:* domains"
    except DeviceError as exc:
        why = str(exc)
    notes.append({"source": "rapl", "used": False, "why": why})
    reason = "no power source found on this machine: " + "; ".join(f"{n['source']}: {n['why']}" for n in notes)
    notes.append({"source": "none", "used": True, "why": "nothing else available"})
    return NullSource(reason, clock), notes


def _try_nvml(gpu_index: int, clock: Clock) -> Tuple[Optional[PowerSource], str]:
    if importlib.util.find_spec("pynvml") is None:
        return None, "nvidia-ml-py (pynvml) not installed"
    from hisd_edge.profile.power.nvml import NvmlSource

    source = NvmlSource(gpu_index, clock)
    try:
        source.open()
    except (DeviceError, DependencyError) as exc:
        return None, str(exc)
    return source, "NVML energy counter available"
