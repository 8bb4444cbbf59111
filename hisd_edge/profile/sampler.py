"""Background power sampling at a fixed period, with an injectable clock.

A :class:`PowerSampler` polls a :class:`~hisd_edge.profile.power.PowerSource` from a daemon thread
and keeps every sample with its timestamp, plus a record of every failure. Energy over any window
is computed afterwards from the trace (:mod:`hisd_edge.profile.energy`), so measuring windows cost
nothing while the model runs: the thread is the whole overhead.

Robustness rules (tested): ``start()`` twice starts one thread; ``stop()`` without ``start()``
returns an empty trace; a source that raises mid-run does not stop the sampler, it opens a *gap*
(first failure time, last good sample before it, the error) that closes when samples come back;
everything measured before the failure is kept.

The clock and the wait are injectable, so tests can step the sampler with ``sample_once()`` and
a counter clock and get exact arithmetic.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from hisd_edge.profile.power.base import Clock, PowerSample, PowerSource

LOG = logging.getLogger("hisd_edge.profile.sampler")


@dataclasses.dataclass
class Gap:
    """A stretch with no valid samples: from the last good sample (or the failure) to the next one."""

    start_s: float
    end_s: Optional[float]  # None: the source never came back
    reason: str
    failures: int = 1

    def to_dict(self) -> Dict[str, Any]:
        return {"start_s": self.start_s, "end_s": self.end_s, "reason": self.reason, "failures": self.failures}


@dataclasses.dataclass
class PowerTrace:
    """What a sampler recorded: samples in time order, gaps, and the settings used."""

    samples: List[PowerSample]
    gaps: List[Gap]
    period_s: float
    source: Dict[str, Any]
    started_s: Optional[float] = None
    stopped_s: Optional[float] = None

    @property
    def expected_interval_s(self) -> float:
        """The spacing samples should have: the sampling period or the source's own, whichever is longer."""
        return max(self.period_s, float(self.source.get("min_period_s") or 0.0))


class PowerSampler:
    """Polls ``source`` every ``period_s`` seconds in a background thread."""

    def __init__(
        self,
        source: PowerSource,
        period_s: float = 0.05,
        clock: Optional[Clock] = None,
        wait: Optional[Callable[[float], Any]] = None,
    ):
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        self.source = source
        # Never poll faster than the sensor updates: that only repeats values and costs CPU.
        self.period_s = max(float(period_s), float(getattr(source, "min_period_s", 0.0) or 0.0))
        self.clock: Clock = clock or source.clock
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._samples: List[PowerSample] = []
        self._gaps: List[Gap] = []
        self._open_gap: Optional[Gap] = None
        self._started_s: Optional[float] = None
        self._stopped_s: Optional[float] = None

    # -- stepping (the thread calls this; tests call it directly) ---------------------------------
    def sample_once(self) -> Optional[PowerSample]:
        """Read the source once and record the sample or the failure."""
        try:
            sample = self.source.read()
        except Exception as exc:  # any failure of the source is a gap, never a crash of the run
            now = self.clock()
            message = " ".join(str(exc).split()) or exc.__class__.__name__
            with self._lock:
                if self._open_gap is None:
                    last = self._samples[-1].time_s if self._samples else now
                    self._open_gap = Gap(start_s=last, end_s=None, reason=message)
                    self._gaps.append(self._open_gap)
                    LOG.info("power source %s failed: %s", getattr(self.source, "name", "?"), message)
                else:
                    self._open_gap.failures += 1
            return None
        if sample is None:
            return None
        with self._lock:
            if self._samples and sample.time_s <= self._samples[-1].time_s:
                return None  # a streaming source has nothing new since the last poll
            if self._open_gap is not None:
                self._open_gap.end_s = sample.time_s
                self._open_gap = None
            self._samples.append(sample)
        return sample

    # -- thread ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> PowerSampler:
        """Open the source and start polling; a second call while running does nothing."""
        if self.running:
            LOG.debug("sampler already running; start() ignored")
            return self
        self.source.open()
        self._stop.clear()
        self._started_s = self.clock()
        self._stopped_s = None
        self._thread = threading.Thread(target=self._loop, name="hisd-edge-power-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        next_s = self.clock()
        while not self._stop.is_set():
            self.sample_once()
            next_s += self.period_s
            delay = next_s - self.clock()
            if delay < 0:  # fell behind (slow read): re-anchor instead of bursting
                next_s = self.clock()
                delay = 0.0
            self._wait(delay)

    def stop(self) -> PowerTrace:
        """Stop polling (if running) and return the trace so far; safe without start()."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=max(2.0, 4 * self.period_s))
            self._stopped_s = self.clock()
        return self.trace()

    def latest(self) -> "Tuple[Optional[float], bool]":
        """(time of the newest sample or None, whether the source is failing now): cheap, no copies."""
        with self._lock:
            return (self._samples[-1].time_s if self._samples else None), self._open_gap is not None

    def trace(self) -> PowerTrace:
        """A copy of everything recorded so far (safe while running)."""
        description = dict(self.source.describe())
        description["min_period_s"] = float(getattr(self.source, "min_period_s", 0.0) or 0.0)
        with self._lock:
            return PowerTrace(
                samples=list(self._samples),
                gaps=[dataclasses.replace(g) for g in self._gaps],
                period_s=self.period_s,
                source=description,
                started_s=self._started_s,
                stopped_s=self._stopped_s,
            )

    def __enter__(self) -> PowerSampler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def default_clock() -> float:
    """The profiler's one clock: latency and power timestamps must share it."""
    return time.perf_counter()
