"""A simulated Jetson for the profiler: a fake sysfs whose INA3221 readings follow a known power trace.

What is simulated, and how (everything in virtual time, :class:`hisd_edge.profile.clock.VirtualClock`):

* **The power trace.** Each rail draws an idle power that drifts slowly (heating: a linear term and a
  slow wave), plus what the running work adds. :class:`SimBackend` wraps a real ONNX Runtime backend
  (so outputs, confidences and exit decisions are real) and makes every call spend virtual time:
  ``start()`` and each ``run_stage(k)`` are work of known duration (growing with the rows) at a known
  extra power per rail. So the true energy of every exit is known exactly (:meth:`SimBackend.true_exit_mj`).
* **The INA3221.** Per channel a running average of the current, updated once per conversion cycle
  (``channels x 2 x conversion time``) by ``(new - old) / samples``, as the datasheet describes; the
  ``curr*_input`` file shows the register at the read instant plus read noise, in whole mA, as the
  kernel does. ``samples`` and ``update_interval`` are files the profiler reads; the board can write
  ``update_interval`` the new-kernel way (one cycle) or the old way (including samples).
* **I2C reads cost time.** Each file read takes ``i2c_read_s``. With a sampler in its own process the
  reads are serialised on the bus without delaying the measured work; with ``clock.jobs_steal_time``
  (a sampler inside the measured process) they delay it, and the profiler's overhead pairs must see it.
* **A power source that stops** (:meth:`SimBoard.fail_between`): reads raise like a driver gone away.

The fake sysfs is a real directory tree (labels, settings, device tree model, cpufreq/devfreq nodes);
reads of the live files are answered by the board through a patched ``open``.
"""

from __future__ import annotations

import builtins
import errno
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.profile.clock import VirtualClock

HWMON_DIR = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
RAILS = ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC")  # Orin Nano / NX: in1, in2, in3 (Hunter 2023)
BUS_MV = {"VDD_IN": 5064.0, "VDD_CPU_GPU_CV": 5056.0, "VDD_SOC": 5056.0}


class SimBoard:
    """Power per rail over virtual time, seen through a simulated INA3221 in a fake sysfs tree."""

    def __init__(
        self,
        root: Path,
        clock: VirtualClock,
        idle_mw: Optional[Dict[str, float]] = None,
        drift_mw_per_s: Optional[Dict[str, float]] = None,
        wave_mw: float = 25.0,
        wave_period_s: float = 97.0,
        samples: int = 512,
        conversion_us: int = 140,
        channels: int = 3,
        kernel: str = "new",
        i2c_read_s: float = 0.0004,
        noise_ma: float = 1.5,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.clock = clock
        self.idle_mw = dict(idle_mw or {"VDD_IN": 4800.0, "VDD_CPU_GPU_CV": 700.0, "VDD_SOC": 1300.0})
        self.drift = dict(drift_mw_per_s or {"VDD_IN": 0.35, "VDD_CPU_GPU_CV": 0.2, "VDD_SOC": 0.05})
        self.wave_mw = wave_mw
        self.wave_period_s = wave_period_s
        self.samples = samples
        self.cycle_s = channels * 2 * conversion_us / 1e6
        self.i2c_read_s = i2c_read_s
        self.noise_ma = noise_ma
        self.rng = np.random.default_rng(seed)
        self.t0 = clock.now()  # drift counts from the board's start
        self.extra_mw: Dict[str, float] = dict.fromkeys(RAILS, 0.0)
        self.energy_mj: Dict[str, float] = dict.fromkeys(RAILS, 0.0)  # exact integral, for checks
        self.register_ma: Dict[str, float] = {r: self._power(r, clock.now()) / BUS_MV[r] * 1000.0 for r in RAILS}
        self.committed_s = clock.now()
        self.bus_free_s = clock.now()
        self.reads = 0
        self.failures: List[Tuple[float, float]] = []
        self._live: Dict[str, Tuple[str, str]] = {}
        self._write_tree(samples, conversion_us, channels, kernel)
        clock.listeners.append(self._advance)

    # -- the tree ---------------------------------------------------------------------------------
    def _write_tree(self, samples: int, conversion_us: int, channels: int, kernel: str) -> None:
        d = self.root / HWMON_DIR
        d.mkdir(parents=True, exist_ok=True)
        (self.root / "sys/bus/i2c/drivers/ina3221/1-0040/name").write_text("ina3221\n")
        (d / "name").write_text("ina3221\n")
        for c, rail in enumerate(RAILS, start=1):
            (d / f"in{c}_label").write_text(rail + "\n")
            (d / f"in{c}_enable").write_text("1\n")
            (d / f"shunt{c}_resistor").write_text("5000\n")
            for kind in ("in", "curr"):
                path = d / f"{kind}{c}_input"
                path.write_text("0\n")
                self._live[os.fspath(path)] = (kind, rail)
        (d / "in7_label").write_text("sum of shunt voltages\n")
        (d / "in7_input").write_text("0\n")
        (d / "samples").write_text(f"{samples}\n")
        cycle_us = channels * 2 * conversion_us
        interval_ms = cycle_us / 1000.0 if kernel == "new" else cycle_us * samples / 1000.0
        (d / "update_interval").write_text(f"{max(1, round(interval_ms))}\n")
        (self.root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
        (self.root / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Developer Kit (simulated)\x00")
        (self.root / "etc").mkdir(exist_ok=True)
        (self.root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 0, BOARD: generic\n")
        gpu = self.root / "sys/class/devfreq/17000000.ga10b"
        gpu.mkdir(parents=True, exist_ok=True)
        for name, value in (("min_freq", 1020000000), ("max_freq", 1020000000), ("cur_freq", 1020000000)):
            (gpu / name).write_text(f"{value}\n")
        for cpu in range(2):
            base = self.root / f"sys/devices/system/cpu/cpu{cpu}"
            (base / "cpufreq").mkdir(parents=True, exist_ok=True)
            (base / "online").write_text("1\n")
            for name in ("scaling_min_freq", "scaling_max_freq", "scaling_cur_freq"):
                (base / "cpufreq" / name).write_text("1728000\n")
        zone = self.root / "sys/class/thermal/thermal_zone0"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text("tj-thermal\n")
        (zone / "temp").write_text("48500\n")

    # -- power ------------------------------------------------------------------------------------
    def _power(self, rail: str, t: float) -> float:
        idle = self.idle_mw[rail] + self.drift[rail] * (t - self.t0)
        if rail == "VDD_IN":
            idle += self.wave_mw * math.sin(2 * math.pi * t / self.wave_period_s)
        return idle + self.extra_mw[rail]

    def _advance(self, t0: float, t1: float) -> None:
        """The clock moved through [t0, t1] with the current activity: update the integrals and registers."""
        decay = 1.0 - 1.0 / self.samples
        m = math.floor(t1 / self.cycle_s + 1e-9) - math.floor(self.committed_s / self.cycle_s + 1e-9)
        for rail in RAILS:
            # exact energy: the drift and wave integrate in closed form over the stretch
            a, b = t0 - self.t0, t1 - self.t0
            idle = self.idle_mw[rail] * (t1 - t0) + 0.5 * self.drift[rail] * (b * b - a * a)
            if rail == "VDD_IN":
                w = 2 * math.pi / self.wave_period_s
                idle += self.wave_mw * (math.cos(w * t0) - math.cos(w * t1)) / w
            self.energy_mj[rail] += idle + self.extra_mw[rail] * (t1 - t0)
            if m > 0:
                target = self._power(rail, t1) / BUS_MV[rail] * 1000.0  # mA at the stretch's end (slow drift)
                self.register_ma[rail] = target + (self.register_ma[rail] - target) * decay**m
        self.committed_s = t1

    def _register_at(self, rail: str, t: float) -> float:
        m = math.floor(t / self.cycle_s + 1e-9) - math.floor(self.committed_s / self.cycle_s + 1e-9)
        if m <= 0:
            return self.register_ma[rail]
        target = self._power(rail, t) / BUS_MV[rail] * 1000.0
        return target + (self.register_ma[rail] - target) * (1.0 - 1.0 / self.samples) ** m

    def fail_between(self, start_s: float, end_s: float) -> None:
        """Reads in [start_s, end_s) fail as if the driver went away (a power source stopping mid-run)."""
        self.failures.append((start_s, end_s))

    # -- the files --------------------------------------------------------------------------------
    def read_file(self, path: str) -> str:
        kind, rail = self._live[path]
        now = self.clock.now()
        for start, end in self.failures:
            if start <= now < end:
                raise OSError(errno.ENODEV, "No such device", path)
        self.reads += 1
        if self.clock.jobs_steal_time:
            self.clock.busy(self.i2c_read_s)  # in-process: the read holds up the measured work
            when = self.clock.now()
        else:
            when = max(now, self.bus_free_s) + self.i2c_read_s  # another process: reads queue on the bus
            self.bus_free_s = when
        if kind == "in":
            return f"{round(BUS_MV[rail])}\n"
        value = self._register_at(rail, when) + self.rng.normal(0.0, self.noise_ma)
        return f"{round(value)}\n"

    def install(self, monkeypatch: Any) -> None:
        """Serve the live files through ``open`` (the profiler's sysfs reader opens them by path)."""
        real_open = builtins.open
        live = self._live

        def board_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            key = os.fspath(file) if isinstance(file, (str, os.PathLike)) else None
            if key in live:
                return io.StringIO(self.read_file(key))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", board_open)


class SimBackend:
    """A real backend whose every call also spends known virtual time at known power on the board."""

    def __init__(
        self,
        real: Any,
        board: SimBoard,
        stage_ms: Sequence[float] = (15.0, 25.0, 40.0),
        stage_extra_mw: Optional[Sequence[Dict[str, float]]] = None,
        start_ms: float = 1.0,
        start_extra_mw: Optional[Dict[str, float]] = None,
    ):
        self.real = real
        self.board = board
        self.clock = board.clock
        self.stage_ms = list(stage_ms)
        self.stage_extra_mw = list(
            stage_extra_mw
            or [
                {"VDD_IN": 1800.0, "VDD_CPU_GPU_CV": 1250.0, "VDD_SOC": 300.0},
                {"VDD_IN": 2600.0, "VDD_CPU_GPU_CV": 1900.0, "VDD_SOC": 380.0},
                {"VDD_IN": 3900.0, "VDD_CPU_GPU_CV": 2900.0, "VDD_SOC": 520.0},
            ]
        )
        self.start_ms = start_ms
        self.start_extra_mw = dict(start_extra_mw or {"VDD_IN": 600.0, "VDD_CPU_GPU_CV": 450.0, "VDD_SOC": 60.0})
        self._rows = 0

    # -- the cost model (what the test compares against) --------------------------------------------
    def stage_s(self, k: int, rows: int) -> float:
        return self.stage_ms[k] * (0.55 + 0.45 * rows) / 1000.0

    def true_exit_mj(self, k: int, batch: int, rail: str = "VDD_IN") -> float:
        """Dynamic energy per sample of a call forced to exit k (the trace's own figure)."""
        energy = self.start_extra_mw[rail] * self.start_ms / 1000.0
        energy += sum(self.stage_extra_mw[j][rail] * self.stage_s(j, batch) for j in range(k + 1))
        return energy / batch

    def _work(self, seconds: float, extra: Dict[str, float]) -> None:
        for rail in RAILS:
            self.board.extra_mw[rail] = extra.get(rail, 0.0)
        try:
            self.clock.busy(seconds)
        finally:
            for rail in RAILS:
                self.board.extra_mw[rail] = 0.0

    # -- the backend interface the profiler and the runtime use ------------------------------------
    @property
    def num_stages(self) -> int:
        return int(self.real.num_stages)

    @property
    def max_batch(self) -> int:
        return int(self.real.max_batch)

    @property
    def is_active(self) -> bool:
        return bool(self.real.is_active)

    @property
    def precision(self) -> str:
        return str(self.real.precision)

    def activate(self) -> SimBackend:
        self.real.activate()
        return self

    def deactivate(self) -> None:
        self.real.deactivate()

    def __enter__(self) -> SimBackend:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def describe(self) -> Dict[str, Any]:
        return {**self.real.describe(), "simulated": True}

    def start(self, batch: np.ndarray) -> None:
        self.real.start(batch)
        self._rows = int(batch.shape[0])
        self._work(self.start_ms / 1000.0, self.start_extra_mw)

    def run_stage(self, k: int, keep_rows: Any = None) -> Any:
        result = self.real.run_stage(k, keep_rows)
        rows = int(result.rows)
        seconds = self.stage_s(k, rows)
        self._work(seconds, self.stage_extra_mw[k])
        result.latency_ms = seconds * 1000.0
        return result
