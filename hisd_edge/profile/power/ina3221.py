"""Jetson power monitors read from sysfs: INA3221 through hwmon (JetPack 5+) or iio (JetPack 4), and
Thor's INA238 on the system input.

hwmon, driver ``ina3221`` (kernel Documentation/hwmon/ina3221.rst), one directory per chip::

    /sys/bus/i2c/drivers/ina3221/<bus>-00<addr>/hwmon/hwmon<N>/
        in[123]_label   rail name from the device tree ("VDD_IN", ...; "NC" = not connected)
        in[123]_input   bus voltage, mV        curr[123]_input  current, mA
        in[456]_input   shunt voltages, uV     in7_input/in7_label  sum of shunt voltages (skipped)
        samples         readings per running average    update_interval  ms (see profile/sensor.py)
        in[123]_enable  channel enabled

iio, driver ``ina3221x`` (L4T 32 and older)::

    /sys/bus/i2c/drivers/ina3221x/<bus>-00<addr>/iio:device<N>/
        rail_name_<n>       rail name ("POM_5V_IN", ...), n = 0, 1, 2
        in_power<n>_input   power, mW   (in_voltage<n>_input mV and in_current<n>_input mA also exist)

hwmon, driver ``ina238`` (Thor's carrier board, kernel Documentation/hwmon/ina238.rst)::

    /sys/bus/i2c/drivers/ina238/<bus>-00<addr>/hwmon/hwmon<N>/
        power1_input  power, uW    in1_input bus voltage, mV    curr1_input current, mA

It is named ``VIN``: the system input, module and carrier (jetson_stats PR #900).

The hwmon index changes between boots, so the directory is globbed. A channel without a label file
is unused. Power = bus voltage x current (INA3221 hwmon), or read directly (iio, INA238). Each file
read is an I2C transaction, so only the rails asked for are read (``rails=``), and each with as few
files as it needs. What each rail covers and what the total means per board: :mod:`.rails`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hisd_edge.errors import DeviceError, InputError
from hisd_edge.profile.power.base import (
    Clock,
    PowerSample,
    PowerSource,
    read_label,
    read_number,
    sysfs_root,
    under,
)
from hisd_edge.profile.sensor import SensorTiming, assumed_jetson_timing, hwmon_chip_timing, slowest

HWMON_GLOB = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
HWMON_CLASS_GLOB = "/sys/class/hwmon/hwmon*"  # fallback when the driver path is laid out differently
IIO_GLOB = "/sys/bus/i2c/drivers/ina3221x/*/iio:device*"
INA238_GLOB = "/sys/bus/i2c/drivers/ina238/*/hwmon/hwmon*"
WHAT = "the INA3221 power monitor"
# Linux's ina238 driver programs 16-sample averages of 1052 us conversions (bus, shunt, temperature):
# a new reading about every 50 ms, not readable from sysfs (ina238.c INA238_ADC_CONFIG_DEFAULT).
INA238_AVERAGE_S = 16 * 3 * 1052e-6


@dataclasses.dataclass(frozen=True)
class Rail:
    """One metered rail and the files its power is computed from."""

    name: str
    device: str  # e.g. "1-0040"
    power_mw_path: Optional[Path] = None  # iio: power directly, mW
    voltage_mv_path: Optional[Path] = None
    current_ma_path: Optional[Path] = None
    power_uw_path: Optional[Path] = None  # INA238: power directly, uW
    chip: str = "ina3221"
    chip_dir: Optional[Path] = None

    def read_mw(self) -> float:
        if self.power_mw_path is not None:
            return read_number(self.power_mw_path, WHAT)
        if self.power_uw_path is not None:
            return read_number(self.power_uw_path, WHAT) / 1000.0
        assert self.voltage_mv_path is not None and self.current_ma_path is not None
        return read_number(self.voltage_mv_path, WHAT) * read_number(self.current_ma_path, WHAT) / 1000.0

    def paths(self) -> List[str]:
        return [
            str(p)
            for p in (self.power_mw_path, self.power_uw_path, self.voltage_mv_path, self.current_ma_path)
            if p is not None
        ]

    def spec(self) -> Dict[str, Any]:
        """The files a sampling process reads for this rail, and how they combine into mW."""
        if self.power_mw_path is not None:
            return {"rail": self.name, "files": [str(self.power_mw_path)], "scale": 1.0}
        if self.power_uw_path is not None:
            return {"rail": self.name, "files": [str(self.power_uw_path)], "scale": 1e-3}
        return {"rail": self.name, "files": [str(self.voltage_mv_path), str(self.current_ma_path)], "scale": 1e-3}


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
                    chip_dir=directory,
                )
            )
    for directory in map(Path, sorted(glob.glob(str(under(root, INA238_GLOB))))):
        power = directory / "power1_input"
        if power.is_file():
            rails.append(Rail(name="VIN", device=_chip_name(directory), power_uw_path=power, chip="ina238"))
        elif (directory / "in1_input").is_file() and (directory / "curr1_input").is_file():
            rails.append(
                Rail(
                    name="VIN",
                    device=_chip_name(directory),
                    voltage_mv_path=directory / "in1_input",
                    current_ma_path=directory / "curr1_input",
                    chip="ina238",
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
                rails.append(Rail(name=label, device=chip, power_mw_path=power, chip_dir=directory))
            else:
                rails.append(
                    Rail(
                        name=label,
                        device=chip,
                        voltage_mv_path=directory / f"in_voltage{channel}_input",
                        current_ma_path=directory / f"in_current{channel}_input",
                        chip_dir=directory,
                    )
                )
    return _unique_names(rails)


def _unique_names(rails: List[Rail]) -> List[Rail]:
    counts: Dict[str, int] = {}
    for rail in rails:
        counts[rail.name] = counts.get(rail.name, 0) + 1
    return [dataclasses.replace(r, name=f"{r.name}@{r.device}") if counts[r.name] > 1 else r for r in rails]


class Ina3221Source(PowerSource):
    """Polls the INA3221 (and INA238) rails in sysfs (hwmon layout first, then iio).

    ``rails`` limits what is read (names as the board labels them); by default every connected rail.
    """

    def __init__(
        self,
        rails: List[Rail],
        layout: str,
        root: Path,
        clock: Clock = time.monotonic,
        use: Optional[Sequence[str]] = None,
    ):
        super().__init__(clock)
        if not rails:
            raise DeviceError(
                f"{root}: no INA3221 rails found; use --power tegrastats, or --sysfs-root for a recorded tree"
            )
        self.all_rails = rails
        if use:
            unknown = [name for name in use if name not in {r.name for r in rails}]
            if unknown:
                raise InputError(
                    f"--rails {','.join(use)}: {', '.join(unknown)} not on this board; "
                    f"it has {', '.join(r.name for r in rails)}"
                )
            rails = [r for r in rails if r.name in use]
        self.rails = rails
        self.layout = layout
        self.root = root
        self.name = f"ina3221-{layout}"
        self._timing = self._read_timing()
        # A new value appears once per conversion cycle; polling faster only repeats it.
        self.min_period_s = self._timing.refresh_s
        self.rule = self.total_rule([r.name for r in rails])

    @classmethod
    def discover(
        cls, root: Optional[str] = None, clock: Clock = time.monotonic, use: Optional[Sequence[str]] = None
    ) -> Optional[Ina3221Source]:
        """The hwmon source if any ina3221 chip is bound, else the iio source, else None."""
        base = sysfs_root(root)
        rails = hwmon_rails(base)
        if rails:
            return cls(rails, "hwmon", base, clock, use)
        rails = iio_rails(base)
        if rails:
            return cls(rails, "iio", base, clock, use)
        return None

    def _read_timing(self) -> SensorTiming:
        timings: List[SensorTiming] = []
        if self.layout == "iio":
            timings.append(assumed_jetson_timing("JetPack 4's ina3221x driver does not expose its averaging settings"))
        else:
            for directory in sorted({r.chip_dir for r in self.rails if r.chip == "ina3221" and r.chip_dir}):
                timings.append(hwmon_chip_timing(directory))
        if any(r.chip == "ina238" for r in self.rails):
            timings.append(
                SensorTiming(
                    kind="averaging",
                    tau_s=INA238_AVERAGE_S / 2.0,
                    refresh_s=INA238_AVERAGE_S,
                    samples=16,
                    assumed=True,
                    origin="ina238 driver default",
                    notes=[
                        "INA238 (VIN): averaging not readable from sysfs; assumed Linux's driver default "
                        f"(16 x 3 x 1052 us = {INA238_AVERAGE_S * 1000:.0f} ms per reading)"
                    ],
                )
            )
        return slowest(timings)

    def timing(self) -> SensorTiming:
        return self._timing

    def open_impl(self) -> None:
        self.read_impl()  # fail now, naming the unreadable file, not in the middle of a measurement

    def read_impl(self) -> PowerSample:
        begin = self.clock()
        rails_mw = {rail.name: rail.read_mw() for rail in self.rails}
        end = self.clock()
        return PowerSample(time_s=0.5 * (begin + end), total_mw=self.rule.total_mw(rails_mw), rails_mw=rails_mw)

    def worker_spec(self) -> Optional[Dict[str, Any]]:
        return {"rails": [r.spec() for r in self.rails], "total_rails": list(self.rule.rails), "what": WHAT}

    def describe(self) -> Dict[str, Any]:
        files = sum(len(r.paths()) for r in self.rails)
        return {
            "source": self.name,
            "rails": [r.name for r in self.rails],
            "rails_available": [r.name for r in self.all_rails],
            "total": self.rule.label,
            "total_rule": self.rule.to_dict(),
            "total_note": self.rule.meaning,
            "devices": sorted({r.device for r in self.rails}),
            "paths": [p for r in self.rails for p in r.paths()],
            "files_per_reading": files,
            "sensor": self._timing.to_dict(),
        }
