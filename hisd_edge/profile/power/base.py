"""The one small interface every power reader implements, and the rules they share.

A power source answers ``read()`` with a :class:`PowerSample`: the board's total power in mW, the
per-rail powers in mW, and, where the hardware keeps one, a cumulative energy counter in mJ (NVML,
RAPL). Sources are context managers (``open()`` starts a process or a session, ``close()`` ends
it); ``describe()`` says, for the report, where the numbers came from and how the total was formed.

Why one interface: the sampler, the energy integration and the report never care whether the
numbers came from an INA3221 in sysfs, a ``tegrastats`` line or NVML, so the same profiling code
runs on every Jetson generation, on a desktop GPU, on x86 with RAPL, and (with :class:`NullSource`)
on a machine with no power telemetry at all, where energy is reported as unavailable.
"""

from __future__ import annotations

import abc
import dataclasses
import errno
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from hisd_edge.errors import DeviceError
from hisd_edge.profile.power.rails import TotalRule, total_rule
from hisd_edge.profile.sensor import SensorTiming, sampled_timing

Clock = Callable[[], float]

# Rails that carry the whole module's input power. Boards without one (AGX Xavier, AGX Orin) only
# meter their supplies: their total is a documented per-board sum with its own name (see rails.py).
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
SYSFS_ROOT_ENV = "HISD_EDGE_SYSFS_ROOT"


@dataclasses.dataclass(frozen=True)
class PowerSample:
    """One reading: when (seconds on the profiler's clock), total and per-rail power (mW).

    ``energy_mj`` is a cumulative counter (mJ since some origin) for sources that keep one; the
    energy integration then uses counter differences instead of integrating power.
    """

    time_s: float
    total_mw: float
    rails_mw: Mapping[str, float] = dataclasses.field(default_factory=dict)
    energy_mj: Optional[float] = None


def total_from_rails(rails_mw: Mapping[str, float]) -> Tuple[float, str]:
    """(total mW, its label): the board's input rail, its documented rail sum, or the plain sum (see rails.py)."""
    rule = total_rule(list(rails_mw))
    return rule.total_mw(rails_mw), rule.label


def sysfs_root(root: Optional[str] = None) -> Path:
    """The filesystem root that ``/sys``, ``/proc/device-tree`` and ``/etc`` are read under.

    ``root`` (``--sysfs-root``) wins, then ``$HISD_EDGE_SYSFS_ROOT``, then ``/``. A recorded tree
    from a real board laid under a directory can so be profiled and tested anywhere.
    """
    chosen = root or os.environ.get(SYSFS_ROOT_ENV) or "/"
    path = Path(chosen)
    if not path.is_dir():
        raise DeviceError(
            f"sysfs root {chosen}: no such directory; give a directory that holds sys/ (or unset {SYSFS_ROOT_ENV})"
        )
    return path


def under(root: Path, absolute: str) -> Path:
    """``absolute`` (e.g. ``/sys/class/powercap``) re-rooted under ``root``."""
    return root / absolute.lstrip("/")


def permission_error(path: Path, what: str, alternative: str = "--power tegrastats") -> DeviceError:
    """The one-line error for a telemetry file this user may not read, with the fixes."""
    return DeviceError(
        f"{path}: permission denied reading {what}; run as root, or `sudo chmod a+r {path}` "
        f"(udev rule to keep it), or use {alternative}"
    )


def read_number(path: Path, what: str, alternative: str = "--power tegrastats") -> float:
    """The first number in a sysfs file (some append units, e.g. ``32760 ma``).

    Permission problems become a :class:`DeviceError` naming the path and the fix; a file that
    vanished (driver unbound) becomes a :class:`DeviceError` too, so a sampler flags a gap.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except PermissionError:
        raise permission_error(path, what, alternative) from None
    except OSError as exc:
        if exc.errno == errno.EACCES:
            raise permission_error(path, what, alternative) from None
        raise DeviceError(
            f"{path}: cannot be read ({exc.strerror or exc}); the driver of {what} may have gone away"
        ) from None
    token = text.strip().split(" ")[0] if text.strip() else ""
    try:
        return float(token)
    except ValueError:
        raise DeviceError(f"{path}: expected a number, read {text.strip()[:40]!r}; is this the {what}?") from None


def read_label(path: Path, what: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except PermissionError:
        raise permission_error(path, what) from None
    except OSError as exc:
        raise DeviceError(f"{path}: cannot be read ({exc.strerror or exc})") from None


class PowerSource(abc.ABC):
    """A reader of board power. Construct (cheap), ``open()``, ``read()`` repeatedly, ``close()``.

    Subclasses set ``name`` and implement ``read_impl()``. ``min_period_s`` is the shortest
    sampling period worth using (twice the sensor's own update interval, where known): sampling
    faster only repeats values. ``streaming`` sources (a ``tegrastats`` process) produce samples on
    their own schedule and stamp them themselves; ``read()`` returns the newest one, or ``None``
    before the first. ``runs_in_background`` sources (a ``tegrastats`` process, a jtop client) keep
    working between ``open()`` and ``close()`` whether or not anything polls them, so stopping the
    sampler does not stop their cost (the sampler-overhead figure then leaves it out).
    """

    name = "source"
    streaming = False
    runs_in_background = False
    available = True  # False only for NullSource: energy cannot be measured

    def __init__(self, clock: Clock = time.monotonic):
        self.clock = clock
        self.min_period_s = 0.0
        self._open = False
        self._rule: Optional[TotalRule] = None

    def open(self) -> PowerSource:
        if not self._open:
            self.open_impl()
            self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._open = False
            self.close_impl()

    def __enter__(self) -> PowerSource:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def read(self) -> Optional[PowerSample]:
        """The current reading (polled sources) or the newest one (streaming sources)."""
        if not self._open:
            self.open()
        return self.read_impl()

    def open_impl(self) -> None:
        """Start what must run (a process, a session); check the source works. Default: nothing."""

    def close_impl(self) -> None:
        """Stop it; safe after a failed open. Default: nothing."""

    @abc.abstractmethod
    def read_impl(self) -> Optional[PowerSample]: ...

    def describe(self) -> Dict[str, Any]:
        """For the report: source name, rails, how the total is formed, paths or command."""
        return {"source": self.name}

    def timing(self) -> SensorTiming:
        """How readings follow the power (see :mod:`hisd_edge.profile.sensor`): by default, samples
        taken every ``min_period_s`` with no known lag."""
        return sampled_timing(self.min_period_s, f"{self.name}: its own update period")

    def total_rule(self, rails: List[str]) -> TotalRule:
        """How this source's total is formed from ``rails`` (fixed at the first call)."""
        if self._rule is None:
            self._rule = total_rule(rails)
        return self._rule

    def worker_spec(self) -> Optional[Dict[str, Any]]:
        """What a sampling process must read to stand in for ``read()`` (files and how to combine them),
        or None when this source cannot be sampled from another process."""
        return None


class NullSource(PowerSource):
    """No power telemetry here: energy is reported as unavailable (never invented)."""

    name = "none"
    available = False

    def __init__(self, reason: str = "no power source selected (--power none)", clock: Clock = time.monotonic):
        super().__init__(clock)
        self.reason = reason

    def read_impl(self) -> Optional[PowerSample]:
        return None

    def describe(self) -> Dict[str, Any]:
        return {"source": self.name, "reason": self.reason}
