"""Power sampling at a fixed period: in a separate process, in a thread, or on a virtual clock.

A sampler polls a :class:`~hisd_edge.profile.power.PowerSource` and keeps every sample with its
timestamp, plus a record of every failure. Energy over any window is computed afterwards from the
trace (:mod:`hisd_edge.profile.energy`), so measuring a window costs nothing while the model runs:
the polling is the whole overhead, and the profiler measures it at every exit.

Three ways to run the polls, one interface (``start``, ``pause``, ``resume``, ``stop``, ``trace``,
``latest``):

* :class:`ProcessSampler` (the default for sysfs monitors on a real board, as Zeus does on Jetson):
  a child process reads the rail files (each read is an I2C transaction of the INA3221) and appends
  lines to a file; the measured process reads that file only between windows. Its timestamps are
  ``CLOCK_MONOTONIC``, the clock the profiler uses, shared by every process.
* :class:`PowerSampler` with a real clock: a daemon thread in this process (streaming sources: a
  ``tegrastats`` process, jtop, NVML, RAPL, whose reads cost little or happen elsewhere anyway).
* :class:`PowerSampler` with a :class:`~hisd_edge.profile.clock.VirtualClock`: the polls are jobs of
  the virtual clock (the simulated-board tests).

Robustness rules (tested): ``start()`` twice starts one poller; ``stop()`` without ``start()``
returns an empty trace; a source that raises mid-run does not stop the sampler, it opens a *gap*
(from the last good sample, with the error) that closes when samples come back; everything
measured before the failure is kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from hisd_edge.errors import DeviceError
from hisd_edge.profile.clock import is_virtual
from hisd_edge.profile.power.base import Clock, PowerSample, PowerSource

LOG = logging.getLogger("hisd_edge.profile.sampler")
WORKER = Path(__file__).with_name("sampler_worker.py")


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


class _Recorder:
    """Samples and gaps, with the gap rules; shared by every way of polling."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: List[PowerSample] = []
        self.gaps: List[Gap] = []
        self.open_gap: Optional[Gap] = None

    def sample(self, sample: PowerSample) -> bool:
        with self.lock:
            if self.samples and sample.time_s <= self.samples[-1].time_s:
                return False  # a streaming source has nothing new since the last poll
            if self.open_gap is not None:
                self.open_gap.end_s = sample.time_s
                self.open_gap = None
            self.samples.append(sample)
            return True

    def failure(self, now: float, message: str, source_name: str) -> None:
        with self.lock:
            if self.open_gap is None:
                last = self.samples[-1].time_s if self.samples else now
                self.open_gap = Gap(start_s=last, end_s=None, reason=message)
                self.gaps.append(self.open_gap)
                LOG.info("power source %s failed: %s", source_name, message)
            else:
                self.open_gap.failures += 1

    def latest(self) -> Tuple[Optional[float], bool]:
        with self.lock:
            return (self.samples[-1].time_s if self.samples else None), self.open_gap is not None

    def copy(self) -> Tuple[List[PowerSample], List[Gap]]:
        with self.lock:
            return list(self.samples), [dataclasses.replace(g) for g in self.gaps]

    def trace(self, source: Any, period_s: float, started_s: Optional[float], stopped_s: Optional[float]) -> PowerTrace:
        """A copy of everything recorded so far, with what the source says of itself."""
        description = dict(source.describe())
        description["min_period_s"] = float(getattr(source, "min_period_s", 0.0) or 0.0)
        samples, gaps = self.copy()
        return PowerTrace(
            samples=samples,
            gaps=gaps,
            period_s=period_s,
            source=description,
            started_s=started_s,
            stopped_s=stopped_s,
        )


class PowerSampler:
    """Polls ``source`` every ``period_s`` seconds: in a daemon thread, or as a virtual-clock job."""

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
        # Never poll faster than the sensor updates: that only repeats values and costs reads.
        self.period_s = max(float(period_s), float(getattr(source, "min_period_s", 0.0) or 0.0))
        self.clock: Any = clock or source.clock
        self.mode = "virtual" if is_virtual(self.clock) else "thread"
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread: Optional[threading.Thread] = None
        self._job: Optional[int] = None
        self._record = _Recorder()
        self._started_s: Optional[float] = None
        self._stopped_s: Optional[float] = None

    # -- stepping (the poller calls this; tests call it directly) ---------------------------------
    def sample_once(self) -> Optional[PowerSample]:
        """Read the source once and record the sample or the failure."""
        try:
            sample = self.source.read()
        except Exception as exc:  # any failure of the source is a gap, never a crash of the run
            message = " ".join(str(exc).split()) or exc.__class__.__name__
            self._record.failure(self.clock(), message, getattr(self.source, "name", "?"))
            return None
        if sample is None or not self._record.sample(sample):
            return None
        return sample

    # -- polling -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        if self.mode == "virtual":
            return self._job is not None
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> PowerSampler:
        """Open the source and start polling; a second call while running does nothing."""
        if self.running:
            LOG.debug("sampler already running; start() ignored")
            return self
        self.source.open()
        self._started_s = self._started_s if self._started_s is not None else self.clock()
        self._stopped_s = None
        self.resume()
        return self

    def resume(self) -> None:
        """Start polling again after :meth:`pause` (the source stays open)."""
        if self.running:
            return
        if self.mode == "virtual":
            self._job = self.clock.every(self.period_s, self.sample_once)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hisd-edge-power-sampler", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop polling (no reads at all) until :meth:`resume`; the trace is kept."""
        if self.mode == "virtual":
            if self._job is not None:
                self.clock.cancel(self._job)
                self._job = None
            return
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=max(2.0, 4 * self.period_s))

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
        was_running = self.running
        self.pause()
        if was_running:
            self._stopped_s = self.clock()
        return self.trace()

    def latest(self) -> Tuple[Optional[float], bool]:
        """(time of the newest sample or None, whether the source is failing now): cheap, no copies."""
        return self._record.latest()

    def trace(self) -> PowerTrace:
        """A copy of everything recorded so far (safe while running)."""
        return self._record.trace(self.source, self.period_s, self._started_s, self._stopped_s)

    def __enter__(self) -> PowerSampler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ProcessSampler:
    """Polls a sysfs source from a child process (see the module docstring).

    The child is ``sampler_worker.py`` run as a plain script (standard library only, nothing of this
    package imported: it starts in a fraction of a second and holds a few MB). It reads only the files
    the source's :meth:`~hisd_edge.profile.power.PowerSource.worker_spec` names and writes one line per
    sample to a file; commands (``pause``, ``resume``, ``stop``) go to its stdin.
    """

    mode = "process"

    def __init__(self, source: PowerSource, period_s: float = 0.05, python: Optional[str] = None):
        spec = source.worker_spec()
        if spec is None:
            raise ValueError(f"the {source.name} source cannot be sampled from another process")
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        self.source = source
        self.period_s = max(float(period_s), float(getattr(source, "min_period_s", 0.0) or 0.0))
        self.clock: Any = time.monotonic
        self._spec = dict(spec, period_s=self.period_s)
        self._python = python or sys.executable
        self._process: Optional[subprocess.Popen] = None
        self._out: Optional[Path] = None
        self._handle: Any = None
        self._offset = 0
        self._pending = ""
        self._record = _Recorder()
        self._rails: List[str] = [r["rail"] for r in spec["rails"]]
        self._started_s: Optional[float] = None
        self._stopped_s: Optional[float] = None
        self._paused = False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None and not self._paused

    def start(self) -> ProcessSampler:
        if self._process is not None:
            self.resume()
            return self
        self.source.open()  # fails now, in this process, naming an unreadable file
        fd, name = tempfile.mkstemp(prefix="hisd-edge-power-", suffix=".txt")
        os.close(fd)
        self._out = Path(name)
        # Kept open across polls (read incrementally from the last offset); closed in stop().
        self._handle = open(self._out, encoding="utf-8")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [self._python, str(WORKER), json.dumps(self._spec), str(self._out)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            self._handle.close()
            self._handle = None
            raise DeviceError(
                f"cannot start the power-sampling process ({exc.strerror or exc}); use --sampler thread"
            ) from None
        self._started_s = time.monotonic()
        self._paused = False
        return self

    def _command(self, text: str) -> None:
        process = self._process
        if process is None or process.stdin is None or process.poll() is not None:
            return
        try:
            process.stdin.write(text + "\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def pause(self) -> None:
        self._command("pause")
        self._paused = True

    def resume(self) -> None:
        self._command("resume")
        self._paused = False

    def _poll(self) -> None:
        """Read the lines the child appended since the last call."""
        if self._handle is None:
            return
        chunk = self._handle.read()
        if not chunk:
            self._check_alive()
            return
        text = self._pending + chunk
        lines = text.split("\n")
        self._pending = lines.pop()  # an incomplete last line waits for the next poll
        for line in lines:
            parts = line.split("\t")
            if not parts or not parts[0]:
                continue
            try:
                when = float(parts[1])
            except (IndexError, ValueError):
                continue
            if parts[0] == "S" and len(parts) == 3 + len(self._rails):
                values = [float(v) for v in parts[3:]]
                self._record.sample(
                    PowerSample(time_s=when, total_mw=float(parts[2]), rails_mw=dict(zip(self._rails, values)))
                )
            elif parts[0] == "E":
                self._record.failure(when, parts[2] if len(parts) > 2 else "read failed", self.source.name)
        self._check_alive()

    def _check_alive(self) -> None:
        process = self._process
        if process is not None and process.poll() is not None and process.returncode not in (0, None):
            self._record.failure(time.monotonic(), f"sampling process exited (status {process.returncode})", "process")

    def latest(self) -> Tuple[Optional[float], bool]:
        self._poll()
        return self._record.latest()

    def stop(self) -> PowerTrace:
        process, self._process = self._process, None
        if process is not None:
            try:
                if process.stdin is not None:
                    process.stdin.write("stop\n")
                    process.stdin.flush()
                    process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5.0)
            self._stopped_s = time.monotonic()
        self._poll()
        trace = self.trace()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._out is not None:
            try:
                self._out.unlink()
            except OSError:
                pass
            self._out = None
        return trace

    def trace(self) -> PowerTrace:
        self._poll()
        return self._record.trace(self.source, self.period_s, self._started_s, self._stopped_s)


def make_sampler(source: PowerSource, period_s: float, clock: Any, prefer: str = "auto") -> Any:
    """The sampler for ``source``: ``process`` where it can poll from another process (and the clock is
    real), else ``thread`` (or virtual-clock jobs). ``prefer`` is ``auto``, ``process`` or ``thread``."""
    if is_virtual(clock):
        return PowerSampler(source, period_s, clock=clock)
    if prefer in ("auto", "process") and source.worker_spec() is not None:
        return ProcessSampler(source, period_s)
    return PowerSampler(source, period_s, clock=clock)


def default_clock() -> float:
    """The profiler's one clock on a real machine: CLOCK_MONOTONIC, shared with the sampling process."""
    return time.monotonic()
