"""Power from ``tegrastats`` lines: a pure parser, a live process reader and a recorded-log reader.

Each rail prints as *current/average* (JetPack 4-6) or with three slash values (JetPack 7.2 on
AGX Orin), in mW either without a unit (Nano, JP 4) or with ``mW`` (JP 5+)::

    ... thermal@22.5C POM_5V_IN 933/933 POM_5V_GPU 0/0 POM_5V_CPU 84/105
    01-03-2023 16:07:54 RAM 2257/30536MB ... VDD_GPU_SOC 2390mW/2390mW VDD_CPU_CV 796mW/796mW ...
    ... VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW

Only the first value (the instantaneous reading) is used: the others are running averages whose
meaning changed between releases. ``NC`` rails are skipped. Memory fields (``RAM 2257/30536MB``)
and temperatures (``cpu@52.968C/52.968C``) never match the rail pattern because of their units.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from hisd_edge.errors import DeviceError, InputError
from hisd_edge.profile.power.base import Clock, PowerSample, PowerSource, total_from_rails
from hisd_edge.profile.power.rails import total_rule
from hisd_edge.profile.sensor import SensorTiming, assumed_jetson_timing

# NAME v[mW]/v[mW][/v[mW]], each value followed by whitespace or the end of the line.
_RAIL_RE = re.compile(
    r"(?:(?<=\s)|^)(?P<name>[A-Za-z][A-Za-z0-9_]*) "
    r"(?P<values>\d+(?:\.\d+)?(?:mW)?(?:/\d+(?:\.\d+)?(?:mW)?){1,2})(?=\s|$)"
)
_DATE_RE = re.compile(r"^\s*(\d{2})-(\d{2})-(\d{4}) (\d{2}):(\d{2}):(\d{2})\s")
# Fields of the shape NAME a/b that are not power rails, whatever their units.
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "EMC", "MTS"}


def parse_rails_mw(line: str) -> Dict[str, float]:
    """Instantaneous power (mW) per rail in one tegrastats line; {} when the line has none."""
    rails: Dict[str, float] = {}
    for match in _RAIL_RE.finditer(line):
        name = match.group("name")
        if name in _NOT_RAILS or name.upper() == "NC":
            continue
        first = match.group("values").split("/")[0]
        rails[name] = float(first[:-2] if first.endswith("mW") else first)
    return rails


def parse_timestamp_s(line: str) -> Optional[float]:
    """Seconds since the epoch from a leading ``MM-DD-YYYY HH:MM:SS`` (JetPack 5+), else None."""
    match = _DATE_RE.match(line)
    if not match:
        return None
    month, day, year, hour, minute, second = (int(g) for g in match.groups())
    return _dt.datetime(year, month, day, hour, minute, second).timestamp()


def sample_from_line(line: str, time_s: float) -> Optional[PowerSample]:
    rails = parse_rails_mw(line)
    if not rails:
        return None
    total, _ = total_from_rails(rails)
    return PowerSample(time_s=time_s, total_mw=total, rails_mw=rails)


def samples_from_log(lines: Iterable[str], interval_s: float, start_s: float = 0.0) -> List[PowerSample]:
    """Samples of a recorded log, one per line with rails, ``interval_s`` apart from ``start_s``.

    tegrastats timestamps have one-second resolution, finer than nothing but coarser than the usual
    interval, so the sample times come from the interval the log was recorded with.
    """
    samples: List[PowerSample] = []
    for line in lines:
        sample = sample_from_line(line, start_s + len(samples) * interval_s)
        if sample is not None:
            samples.append(sample)
    return samples


def _describe_rails(rails: Dict[str, float]) -> Dict[str, Any]:
    rule = total_rule(list(rails))
    return {"rails": list(rails), "total": rule.label, "total_rule": rule.to_dict(), "total_note": rule.meaning}


def board_sensor_timing(refresh_s: float, origin: str, sysfs: Optional[str] = "/") -> SensorTiming:
    """A tool's readings (tegrastats, jtop) come from the board's INA3221 through the kernel: its
    averaging applies, and the tool adds its own interval. Read the chip settings where possible."""
    timing: Optional[SensorTiming] = None
    if sysfs is not None:
        try:
            from hisd_edge.profile.power.ina3221 import Ina3221Source

            source = Ina3221Source.discover(sysfs)
            timing = source.timing() if source is not None else None
        except Exception:  # unreadable settings are a note, not an error: the fallback below says so
            timing = None
    if timing is None:
        timing = assumed_jetson_timing(f"{origin}: the INA3221 settings cannot be read from sysfs here")
    return SensorTiming(
        kind="averaging",
        tau_s=timing.tau_s,
        refresh_s=max(refresh_s, timing.refresh_s),
        samples=timing.samples,
        cycle_s=timing.cycle_s,
        channels=timing.channels,
        update_interval_ms=timing.update_interval_ms,
        update_interval_meaning=timing.update_interval_meaning,
        assumed=timing.assumed,
        origin=f"{origin} over {timing.origin}",
        notes=list(timing.notes),
    )


def find_tegrastats(executable: Optional[str] = None) -> str:
    """Path of the tegrastats executable, or a DeviceError naming the fix."""
    path = shutil.which(executable or "tegrastats")
    if path is None:
        raise DeviceError(
            f"{executable or 'tegrastats'}: not found on PATH; tegrastats ships with JetPack (/usr/bin/tegrastats) - "
            "on a Jetson add it to PATH, otherwise use --power ina3221/nvml/rapl/none or --tegrastats-log FILE"
        )
    return path


class TegrastatsProcessSource(PowerSource):
    """Runs ``tegrastats --interval MS`` and parses its lines as they come (a streaming source)."""

    name = "tegrastats"
    streaming = True
    runs_in_background = True  # the tegrastats process runs until close()

    def __init__(
        self,
        interval_ms: int = 100,
        executable: Optional[str] = None,
        clock: Clock = time.monotonic,
        first_line_timeout_s: float = 5.0,
    ):
        super().__init__(clock)
        if interval_ms <= 0:
            raise InputError(f"--tegrastats-interval-ms {interval_ms}: must be positive")
        self.interval_ms = int(interval_ms)
        self.executable = find_tegrastats(executable)
        self.min_period_s = self.interval_ms / 1000.0
        self.first_line_timeout_s = first_line_timeout_s
        self._process: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None
        self._latest: Optional[PowerSample] = None
        self._lines = 0
        self._first = threading.Event()
        self._rails: Dict[str, float] = {}

    def timing(self) -> SensorTiming:
        return board_sensor_timing(self.min_period_s, f"tegrastats --interval {self.interval_ms}")

    def open_impl(self) -> None:
        try:
            self._process = subprocess.Popen(
                [self.executable, "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        except OSError as exc:
            raise DeviceError(
                f"{self.executable}: cannot be started ({exc.strerror or exc}); use --power ina3221"
            ) from None
        self._thread = threading.Thread(target=self._pump, name="hisd-edge-tegrastats", daemon=True)
        self._thread.start()
        if not self._first.wait(self.first_line_timeout_s):
            code = self._process.poll()
            self.close_impl()
            state = (
                f"exited with status {code}"
                if code is not None
                else f"printed no power rails in {self.first_line_timeout_s:g} s"
            )
            raise DeviceError(
                f"{self.executable} {state}; check it runs on this board (sudo may be needed), or use --power ina3221"
            )

    def _pump(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            sample = sample_from_line(line, self.clock())
            self._lines += 1
            if sample is not None:
                self._latest = sample
                if not self._first.is_set():
                    self._rails = dict(sample.rails_mw)
                    self._first.set()

    def read_impl(self) -> Optional[PowerSample]:
        process = self._process
        if process is None:
            raise DeviceError("tegrastats is not running")
        code = process.poll()
        if code is not None:
            raise DeviceError(f"tegrastats stopped (exit status {code}) after {self._lines} lines")
        return self._latest

    def close_impl(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            # tegrastats runs in its own session: end its whole group (a wrapper script's children too),
            # so the pipe closes and the reading thread finishes.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    process.wait(timeout=2.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
            process.poll()  # reap it if it had already exited
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # the pipe is at EOF once the group is gone
            self._thread = None
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def describe(self) -> Dict[str, Any]:
        return {
            "source": self.name,
            "command": f"{self.executable} --interval {self.interval_ms}",
            "interval_ms": self.interval_ms,
            **_describe_rails(self._rails),
        }


class TegrastatsLogSource(PowerSource):
    """Replays a recorded tegrastats log, one line per ``read()``, stamped with the clock.

    For profiling against a recording and for testing: when the log runs out the source raises,
    exactly like a tegrastats process that died, so the sampler flags a gap.
    """

    name = "tegrastats-log"

    def __init__(self, path: str, interval_ms: int = 100, clock: Clock = time.monotonic):
        super().__init__(clock)
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(
                f"--tegrastats-log {path}: no such file; record one with `tegrastats --interval 100 --logfile FILE`"
            )
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        self._samples = [s for s in (sample_from_line(line, 0.0) for line in lines) if s is not None]
        if not self._samples:
            raise InputError(f"--tegrastats-log {path}: no power rails in any line; is it a tegrastats log?")
        self.interval_ms = int(interval_ms)
        self.min_period_s = self.interval_ms / 1000.0
        self._next = 0

    def timing(self) -> SensorTiming:
        return board_sensor_timing(self.min_period_s, f"recorded tegrastats log {self.path.name}", sysfs=None)

    def read_impl(self) -> PowerSample:
        if self._next >= len(self._samples):
            raise DeviceError(f"tegrastats log {self.path} ended after {len(self._samples)} samples")
        sample = self._samples[self._next]
        self._next += 1
        return PowerSample(time_s=self.clock(), total_mw=sample.total_mw, rails_mw=sample.rails_mw)

    def describe(self) -> Dict[str, Any]:
        return {
            "source": self.name,
            "log": str(self.path),
            "log_samples": len(self._samples),
            "interval_ms": self.interval_ms,
            **_describe_rails(dict(self._samples[0].rails_mw)),
        }
