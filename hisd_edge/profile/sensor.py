"""How fast a power reading follows the power: the sensor's averaging, and the windows it calls for.

The INA3221 averages in hardware. Its datasheet (quoted in NVIDIA's DRIVE OS power-tool page)
describes a running average: each new conversion moves the output register by
``(new - old) / samples``. One conversion cycle covers every enabled channel, bus and shunt:
``cycle = channels x (bus + shunt conversion time)``. So a reading follows a step in power like a
first-order filter with time constant

    tau = -cycle / ln(1 - 1/samples)  ~=  samples x cycle

NVIDIA's boards ship with 512 samples of 140 us conversions on 3 channels: tau = 0.43 s, which is
also what JetPack 4's ``ina3221x`` driver configures (continuous config 0x7c07). After a change of
phase (idle -> loop, exit 0 -> exit 2) the readings need about 5 tau to get within 1 % (e^-5) of the
new level; until then they still measure the phase before. The profiler therefore

* discards ``5 tau`` at the start of every window (:attr:`SensorTiming.settle_s`), and
* makes each window long enough to hold :data:`MIN_INDEPENDENT_READINGS` readings that are
  independent of each other (readings closer than about ``2 tau`` are correlated by the filter):
  ``window >= 2 tau x 30``; on a Jetson the default is at least 30 s.

Sources that integrate exactly (an energy counter: NVML, RAPL) have no lag: their windows only need
enough counter updates.

Reading the settings. hwmon (JetPack 5+) exposes ``samples`` and ``update_interval`` (ms) per chip
and ``in[123]_enable`` per channel. ``update_interval`` changed meaning in 2023: Linux first reported
``channels x samples x (bus + shunt)``, NVIDIA's fix (N. Malwade, "hwmon: (ina3221) ...", applied by
G. Roeck) drops ``samples`` so it reports one cycle. The two are told apart by size: with
``samples`` >= 64 an interval that included them would be at least ``samples x channels x 0.28 ms``,
more than any cycle can be (``3 x 16.5 ms``); below that the larger reading of the two is assumed
(it errs towards longer settling). JetPack 4's iio driver (``ina3221x``) exposes neither: the
slowest documented Jetson setting (512 x 140 us x 3 channels) is assumed and the report says so.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from hisd_edge.errors import DeviceError, InputError

MIN_INDEPENDENT_READINGS = 30
SETTLE_TAUS = 5.0
JETSON_MIN_WINDOW_S = 30.0  # default window on an averaging board sensor
COUNTER_MIN_UPDATES = 20
COUNTER_DEFAULT_WINDOW_S = 5.0
INA3221_CONVERSION_US = (140, 204, 332, 588, 1100, 2116, 4156, 8244)  # datasheet / kernel table
INA3221_SAMPLES = (1, 4, 16, 64, 128, 256, 512, 1024)
# NVIDIA's documented Jetson configuration (kernel notes; JP4 ina3221x continuous-config 0x7c07).
JETSON_DEFAULT_SAMPLES = 512
JETSON_DEFAULT_CONVERSION_US = 140
JETSON_DEFAULT_CHANNELS = 3


def averaging_tau_s(samples: int, cycle_s: float) -> float:
    """Time constant of the running average: ``-cycle / ln(1 - 1/samples)`` (0 without averaging)."""
    if samples <= 1 or cycle_s <= 0:
        return 0.0
    return -cycle_s / math.log(1.0 - 1.0 / samples)


@dataclasses.dataclass
class SensorTiming:
    """What the profiler needs to know about a source's time behaviour, and where it came from.

    ``kind``: "averaging" (a reading lags the power with ``tau_s``), "counter" (an exact energy
    counter refreshed every ``refresh_s``) or "sampled" (instantaneous readings, e.g. a tool that
    prints every interval). ``assumed`` is True when the settings could not be read.
    """

    kind: str
    tau_s: float = 0.0
    refresh_s: float = 0.0  # how often a new value appears
    samples: Optional[int] = None
    cycle_s: Optional[float] = None
    channels: Optional[int] = None
    update_interval_ms: Optional[float] = None
    update_interval_meaning: Optional[str] = None
    assumed: bool = False
    origin: str = ""  # where the settings came from, for the report
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def settle_s(self) -> float:
        """Time discarded after every change of phase before a window starts counting."""
        if self.kind == "averaging":
            return SETTLE_TAUS * self.tau_s + self.refresh_s
        return 2.0 * self.refresh_s

    @property
    def min_window_s(self) -> float:
        """Shortest window that holds enough independent readings (or counter updates)."""
        if self.kind == "averaging":
            return max(2.0 * self.tau_s, self.refresh_s) * MIN_INDEPENDENT_READINGS
        return max(self.refresh_s, 1e-3) * COUNTER_MIN_UPDATES

    @property
    def default_window_s(self) -> float:
        if self.kind == "averaging":
            return max(JETSON_MIN_WINDOW_S, self.min_window_s)
        return max(COUNTER_DEFAULT_WINDOW_S, self.min_window_s)

    def independent_readings(self, window_s: float) -> float:
        """How many effectively independent readings a window of ``window_s`` holds."""
        spacing = max(2.0 * self.tau_s, self.refresh_s, 1e-9)
        return window_s / spacing

    def check_window(self, window_s: float, source: str, flag: str = "--energy-seconds") -> None:
        """Refuse a window too short for this sensor, naming the minimum (one line)."""
        minimum = self.min_window_s
        if window_s + 1e-9 < minimum:
            if self.kind == "averaging":
                why = (
                    f"the {source} readings average over tau = {self.tau_s:.3g} s, so {MIN_INDEPENDENT_READINGS} "
                    f"independent readings need {minimum:.3g} s"
                )
            else:
                why = (
                    f"the {source} counter updates every {self.refresh_s:.3g} s and needs {COUNTER_MIN_UPDATES} updates"
                )
            raise InputError(
                f"{flag} {window_s:g}: too short for this power sensor ({why}); use {flag} {math.ceil(minimum * 10) / 10:g} or more"
            )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "tau_s": self.tau_s,
            "refresh_s": self.refresh_s,
            "settle_s": self.settle_s,
            "min_window_s": self.min_window_s,
            "samples": self.samples,
            "cycle_s": self.cycle_s,
            "channels": self.channels,
            "update_interval_ms": self.update_interval_ms,
            "update_interval_meaning": self.update_interval_meaning,
            "assumed": self.assumed,
            "origin": self.origin,
            "notes": list(self.notes),
        }


def assumed_jetson_timing(why: str) -> SensorTiming:
    """The slowest documented Jetson INA3221 setting, used when a board's settings cannot be read."""
    cycle = JETSON_DEFAULT_CHANNELS * 2 * JETSON_DEFAULT_CONVERSION_US / 1e6
    return SensorTiming(
        kind="averaging",
        tau_s=averaging_tau_s(JETSON_DEFAULT_SAMPLES, cycle),
        refresh_s=cycle,
        samples=JETSON_DEFAULT_SAMPLES,
        cycle_s=cycle,
        channels=JETSON_DEFAULT_CHANNELS,
        assumed=True,
        origin="assumed",
        notes=[
            f"{why}: assumed the slowest documented Jetson setting ({JETSON_DEFAULT_SAMPLES} samples x "
            f"{JETSON_DEFAULT_CONVERSION_US} us conversions x {JETSON_DEFAULT_CHANNELS} channels, tau = "
            f"{averaging_tau_s(JETSON_DEFAULT_SAMPLES, cycle):.2f} s)"
        ],
    )


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip().split(" ")[0]
        return int(float(text))
    except (OSError, ValueError):
        return None


def hwmon_chip_timing(directory: Path) -> SensorTiming:
    """Averaging settings of one ina3221 hwmon chip directory (see the module docstring)."""
    samples = _read_int(directory / "samples")
    interval_ms = _read_int(directory / "update_interval")
    enabled = [_read_int(directory / f"in{c}_enable") for c in (1, 2, 3)]
    channels = sum(1 for e in enabled if e) if any(e is not None for e in enabled) else JETSON_DEFAULT_CHANNELS
    channels = max(1, channels)
    if samples is None and interval_ms is None:
        return assumed_jetson_timing(f"{directory}: samples and update_interval cannot be read")
    notes: List[str] = []
    slowest_cycle_ms = channels * 2 * INA3221_CONVERSION_US[-1] / 1000.0
    if samples is None:
        # update_interval alone: above the slowest cycle it is the averaged total (old kernels), so tau is
        # about that long; otherwise it is one cycle and the documented 512 samples are assumed.
        assert interval_ms is not None
        total = interval_ms > slowest_cycle_ms + 0.5
        cycle = (interval_ms / JETSON_DEFAULT_SAMPLES if total else max(interval_ms, 1)) / 1000.0
        return SensorTiming(
            kind="averaging",
            tau_s=averaging_tau_s(JETSON_DEFAULT_SAMPLES, cycle),
            refresh_s=cycle,
            samples=None,
            cycle_s=cycle,
            channels=channels,
            update_interval_ms=float(interval_ms),
            update_interval_meaning="channels x samples x conversions" if total else "one conversion cycle",
            assumed=True,
            origin=str(directory),
            notes=[
                f"{directory / 'samples'}: cannot be read; assumed {JETSON_DEFAULT_SAMPLES} samples per average "
                "(the documented Jetson setting)"
            ],
        )
    if interval_ms is None:
        cycle = channels * 2 * JETSON_DEFAULT_CONVERSION_US / 1e6
        notes.append(
            f"{directory / 'update_interval'}: cannot be read; assumed the documented Jetson conversions "
            f"({JETSON_DEFAULT_CONVERSION_US} us)"
        )
        meaning = None
        assumed = True
    else:
        # Milliseconds, rounded by the kernel. Above the slowest possible cycle it must include samples;
        # at or below it, it is one cycle (certain when samples >= 64; otherwise the longer-tau reading).
        includes_samples = interval_ms > slowest_cycle_ms + 0.5
        if not includes_samples and 1 < samples < 64 and interval_ms >= samples * channels * 0.28 - 0.5:
            notes.append(
                f"update_interval {interval_ms} ms with {samples} samples could mean either kernel convention; "
                "read as one conversion cycle (the longer settling)"
            )
        cycle = (interval_ms / samples if includes_samples else max(interval_ms, 1)) / 1000.0
        if not includes_samples:
            # The kernel rounds a sub-millisecond cycle up to 1 ms; never assume faster than the fastest cycle.
            cycle = max(cycle, channels * 2 * INA3221_CONVERSION_US[0] / 1e6)
        meaning = "channels x samples x conversions" if includes_samples else "one conversion cycle"
        assumed = False
    timing = SensorTiming(
        kind="averaging",
        tau_s=averaging_tau_s(samples, cycle),
        refresh_s=cycle,
        samples=samples,
        cycle_s=cycle,
        channels=channels,
        update_interval_ms=None if interval_ms is None else float(interval_ms),
        update_interval_meaning=meaning,
        assumed=assumed,
        origin=str(directory),
        notes=notes,
    )
    return timing


def slowest(timings: List[SensorTiming]) -> SensorTiming:
    """The timing with the longest settling among several chips (a window must suit all of them)."""
    if not timings:
        raise DeviceError("no sensor timing to choose from")
    chosen = max(timings, key=lambda t: (t.settle_s, t.min_window_s))
    merged = dataclasses.replace(chosen, notes=[n for t in timings for n in t.notes])
    merged.assumed = any(t.assumed for t in timings)
    return merged


def counter_timing(refresh_s: float, origin: str) -> SensorTiming:
    return SensorTiming(kind="counter", refresh_s=refresh_s, origin=origin)


def sampled_timing(
    refresh_s: float, origin: str, tau_s: float = 0.0, notes: Optional[List[str]] = None
) -> SensorTiming:
    """Readings taken every ``refresh_s`` (a tool's interval), lagging the power by ``tau_s`` upstream."""
    kind = "averaging" if tau_s > 0 else "sampled"
    return SensorTiming(kind=kind, tau_s=tau_s, refresh_s=refresh_s, origin=origin, notes=list(notes or []))
