"""Jetson INA3221 power monitors read from sysfs: hwmon (JetPack 5+) and iio (JetPack 4).

hwmon, driver ``ina3221`` (kernel Documentation/hwmon/ina3221.rst), one directory per chip::

    /sys/bus/i2c/drivers/ina3221/<bus>-00<addr>/hwmon/hwmon<N>/
        in[123]_label   rail name from the device tree ("VDD_IN", ...; "NC" = not connected)
        in[123]_input   bus voltage, mV        curr[123]_input  current, mA
        in[456]_input   shunt voltages, uV     in7_input/in7_label  sum of shunt voltages (skipped)
        update_interval conversion time, ms

The hwmon index changes between boots, so the directory is globbed. A channel without a label
file is unused. Power = bus voltage x current.

iio, driver ``ina3221x`` (L4T 32 and older)::

    /sys/bus/i2c/drivers/ina3221x/<bus>-00<addr>/iio:device<N>/
        rail_name_<n>       rail name ("POM_5V_IN", ...), n = 0, 1, 2
        in_power<n>_input   power, mW   (in_voltage<n>_input mV and in_current<n>_input mA also exist)

Rails per board (channel order), from the kernel device trees and jetson_stats' recorded output:
Nano (JP 4) POM_5V_IN, POM_5V_GPU, POM_5V_CPU; Xavier NX VDD_IN, VDD_CPU_GPU_CV, VDD_SOC;
AGX Xavier GPU, CPU, SOC + CV, VDDRQ, SYS5V; Orin NX / Orin Nano VDD_IN, VDD_CPU_GPU_CV, VDD_SOC;
AGX Orin VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 + NC, VDDQ_VDD2_1V8AO, NC (no VDD_IN).
The total is VDD_IN or POM_5V_IN where the board has it, else the sum of the rails.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from hisd_edge.errors import DeviceError
from hisd_edge.profile.power.base import (
    Clock,
    PowerSample,
    PowerSource,
    read_label,
    read_number,
    sysfs_root,
    total_from_rails,
    under,
)

HWMON_GLOB = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
HWMON_CLASS_GLOB = "/sys/class/hwmon/hwmon*"  # fallback when the driver path is laid out differently
IIO_GLOB = "/sys/bus/i2c/drivers/ina3221x/*/iio:device*"
WHAT = "the INA3221 power monitor"


@dataclasses.dataclass(frozen=True)
class Rail:
    """One metered rail and the files its power is computed from."""

    name: str
    device: str  # e.g. "1-0040"
    power_mw_path: Optional[Path] = None  # iio: power directly, mW
    voltage_mv_path: Optional[Path] = None
    current_ma_path: Optional[Path] = None

    def read_mw(self) -> float:
        if self.power_mw_path is not None:
            return read_number(self.power_mw_path, WHAT)
        assert self.voltage_mv_path is not None and self.current_ma_path is not None
        return read_number(self.voltage_mv_path, WHAT) * read_number(self.current_ma_path, WHAT) / 1000.0

    def paths(self) -> List[str]:
        return [str(p) for p in (self.power_mw_path, self.voltage_mv_path, self.current_ma_path) if p is not None]


def _chip_name(directory: Path) -> str:
    """``1-0040`` for .../1-0040/hwmon/hwmon3 (resolving /sys/class/hwmon links), else the dir name."""
    for candidate in (Path(os.path.realpath(directory)), directory):
        if candidate.parent.name == "hwmon" and candidate.parent.parent.name != "class":
            return candidate.parent.parent.name
    return directory.name


def hwmon_rails(root: Path) -> List[Rail]:
    """Labelled, connected channels of every ina3221 hwmon chip under ``root``."""
    dirs = sorted(glob.glob(str(under(root, HWMON_GLOB))))
    seen = {os.path.realpath(d) for d in dirs}
    for candidate in sorted(glob.glob(str(under(root, HWMON_CLASS_GLOB)))):
        name_file = Path(candidate) / "name"
        if os.path.realpath(candidate) in seen or not name_file.is_file():
            continue
        if read_label(name_file, WHAT) == "ina3221":
            dirs.append(candidate)
            seen.add(os.path.realpath(candidate))
    rails: List[Rail] = []
    for directory in map(Path, dirs):
        chip = _chip_name(directory)
        for channel in (1, 2, 3):
            label_path = directory / f"in{channel}_label"
            if not label_path.is_file():
                continue  # channel unused on this board (no label in the device tree)
            label = read_label(label_path, WHAT)
            if not label or label.upper() == "NC":
                continue
            rails.append(
                Rail(
                    name=label,
                    device=chip,
                    voltage_mv_path=directory / f"in{channel}_input",
                    current_ma_path=directory / f"curr{channel}_input",
                )
            )
    return _unique_names(rails)


def iio_rails(root: Path) -> List[Rail]:
    """Named channels of every ina3221x iio device under ``root`` (JetPack 4)."""
    rails: List[Rail] = []
    for directory in map(Path, sorted(glob.glob(str(under(root, IIO_GLOB))))):
        chip = directory.parent.name
        for label_path in sorted(directory.glob("rail_name_*")):
            channel = label_path.name[len("rail_name_") :]
            label = read_label(label_path, WHAT)
            if not label or label.upper() == "NC":
                continue
            power = directory / f"in_power{channel}_input"
            if power.is_file():
                rails.append(Rail(name=label, device=chip, power_mw_path=power))
            else:
                rails.append(
                    Rail(
                        name=label,
                        device=chip,
                        voltage_mv_path=directory / f"in_voltage{channel}_input",
                        current_ma_path=directory / f"in_current{channel}_input",
                    )
                )
    return _unique_names(rails)


def _unique_names(rails: List[Rail]) -> List[Rail]:
    counts: Dict[str, int] = {}
    for rail in rails:
        counts[rail.name] = counts.get(rail.name, 0) + 1
    return [dataclasses.replace(r, name=f"{r.name}@{r.device}") if counts[r.name] > 1 else r for r in rails]


def _update_interval_s(rails: List[Rail]) -> float:
    """The slowest chip's ``update_interval`` (ms in sysfs), 0 when unknown."""
    longest = 0.0
    for directory in {r.voltage_mv_path.parent for r in rails if r.voltage_mv_path is not None}:
        path = directory / "update_interval"
        if path.is_file():
            try:
                longest = max(longest, read_number(path, WHAT) / 1000.0)
            except DeviceError:
                pass
    return longest


class Ina3221Source(PowerSource):
    """Polls the INA3221 rails in sysfs (hwmon layout first, then iio)."""

    def __init__(self, rails: List[Rail], layout: str, root: Path, clock: Clock = time.perf_counter):
        super().__init__(clock)
        if not rails:
            raise DeviceError(
                f"{root}: no INA3221 rails found; use --power tegrastats, or --sysfs-root for a recorded tree"
            )
        self.rails = rails
        self.layout = layout
        self.root = root
        self.name = f"ina3221-{layout}"
        # Sampling faster than twice the conversion time only repeats values.
        self.min_period_s = 2.0 * _update_interval_s(rails) if layout == "hwmon" else 0.0
        self.total_rule = total_from_rails({r.name: 0.0 for r in rails})[1]

    @classmethod
    def discover(cls, root: Optional[str] = None, clock: Clock = time.perf_counter) -> Optional[Ina3221Source]:
        """The hwmon source if any ina3221 chip is bound, else the iio source, else None."""
        base = sysfs_root(root)
        rails = hwmon_rails(base)
        if rails:
            return cls(rails, "hwmon", base, clock)
        rails = iio_rails(base)
        if rails:
            return cls(rails, "iio", base, clock)
        return None

    def open_impl(self) -> None:
        self.read_impl()  # fail now, naming the unreadable file, not in the middle of a measurement

    def read_impl(self) -> PowerSample:
        begin = self.clock()
        rails_mw = {rail.name: rail.read_mw() for rail in self.rails}
        end = self.clock()
        total, _ = total_from_rails(rails_mw)
        return PowerSample(time_s=0.5 * (begin + end), total_mw=total, rails_mw=rails_mw)

    def describe(self) -> Dict[str, Any]:
        return {
            "source": self.name,
            "rails": [r.name for r in self.rails],
            "total": self.total_rule,
            "total_note": None
            if self.total_rule != "sum of rails"
            else "this board has no module input rail (VDD_IN): total = sum of the metered rails, carrier board not included",
            "devices": sorted({r.device for r in self.rails}),
            "paths": [p for r in self.rails for p in r.paths()],
            "sensor_update_interval_ms": round(self.min_period_s * 500.0, 3) if self.min_period_s else None,
        }
