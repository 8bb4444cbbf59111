"""The profiler's one clock, real or virtual.

Every figure the profiler produces is a time difference: latency of a call, the bounds of an energy
window, the stamp of a power sample. They must all come from one clock, and on a real board that
clock must also be readable from the sampling process, so :class:`SystemClock` is
``CLOCK_MONOTONIC`` (``time.monotonic``), which every process on the machine shares.

:class:`VirtualClock` is the same interface over simulated time, for the simulated-board tests and
for checking the method without a board: time moves only when someone works (``busy``) or waits
(``sleep``), and periodic jobs (a power sampler's polls) run at their scheduled instants while it
moves. Thirty-second energy windows then take milliseconds of real time, and every figure is exactly
reproducible.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Callable, List, Optional, Tuple


class SystemClock:
    """Wall-clock seconds on ``CLOCK_MONOTONIC`` (shared by all processes), real sleeps."""

    virtual = False

    def now(self) -> float:
        return time.monotonic()

    __call__ = now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Simulated seconds. ``busy(s)`` is work that takes ``s`` seconds; ``sleep(s)`` is idle waiting.

    ``every(period_s, job)`` runs ``job()`` at ``start, start + period, ...`` while time passes. What
    a job does takes no time of the thread that was working (a sampler in another process, on
    another core) unless ``jobs_steal_time`` is set (a sampler polling inside the measured process):
    then ``busy`` inside a job moves the clock and delays the interrupted work by as much.
    ``listeners`` are called with every stretch ``(t0, t1)`` the clock moves through, so a simulated
    board can follow what ran when.
    """

    virtual = True

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self._queue: List[Tuple[float, int, int]] = []  # (due, tiebreak, job id)
        self._jobs: dict = {}
        self._ids = itertools.count()
        self._in_job: Optional[int] = None
        self.jobs_steal_time = False
        self.listeners: List[Callable[[float, float], Any]] = []  # called with (t0, t1) for every stretch

    def now(self) -> float:
        return self._now

    __call__ = now

    # -- periodic jobs ---------------------------------------------------------------------------
    def every(self, period_s: float, job: Callable[[], Any]) -> int:
        """Run ``job`` now and every ``period_s`` after; returns a handle for :meth:`cancel`."""
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        handle = next(self._ids)
        self._jobs[handle] = (float(period_s), job)
        heapq.heappush(self._queue, (self._now, next(self._ids), handle))
        return handle

    def cancel(self, handle: int) -> None:
        self._jobs.pop(handle, None)

    # -- time passing ----------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        self.busy(seconds)

    def busy(self, seconds: float) -> None:
        """Let ``seconds`` of this thread's time pass, running due jobs on the way."""
        remaining = max(0.0, float(seconds))
        if self._in_job is not None:  # a job's own work: it delays the measured thread only if it steals time
            if self.jobs_steal_time:
                self._advance(remaining)
            return
        while True:
            due = self._next_due()
            if due is None or due > self._now + remaining:
                self._advance(remaining)
                return
            step = max(0.0, due - self._now)
            self._advance(step)
            remaining -= step
            self._run_due()

    def _next_due(self) -> Optional[float]:
        while self._queue and self._queue[0][2] not in self._jobs:
            heapq.heappop(self._queue)
        return self._queue[0][0] if self._queue else None

    def _advance(self, seconds: float) -> None:
        if seconds <= 0:
            return
        t0 = self._now
        self._now = t0 + seconds
        for listener in self.listeners:
            listener(t0, self._now)

    def _run_due(self) -> None:
        due, _, handle = heapq.heappop(self._queue)
        spec = self._jobs.get(handle)
        if spec is None:
            return
        period, job = spec
        self._in_job = handle
        try:
            job()
        finally:
            self._in_job = None
        if handle in self._jobs:
            heapq.heappush(self._queue, (due + period, next(self._ids), handle))


def is_virtual(clock: Any) -> bool:
    return bool(getattr(clock, "virtual", False))
