"""Energy from Intel RAPL through the powercap sysfs (x86 hosts; AMD exposes the same layout).

``/sys/class/powercap/intel-rapl:<n>/`` is a top-level domain (``name`` = ``package-<n>``, ``psys``,
``dram``); ``intel-rapl:<n>:<m>`` are its sub-domains (``core``, ``uncore``, ``dram``).
``energy_uj`` is a cumulative counter in uJ that wraps at ``max_energy_range_uj``. Since 2020
(CVE-2020-8694) it is readable by root only on most distributions. The total is the sum of the
``package-*`` domains: CPU packages, not the whole machine.
"""

from __future__ import annotations

import glob
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hisd_edge.errors import DeviceError
from hisd_edge.profile.power.base import Clock, PowerSample, PowerSource, read_label, read_number, sysfs_root, under
from hisd_edge.profile.power.rails import QUANTITIES
from hisd_edge.profile.sensor import SensorTiming, counter_timing

POWERCAP_GLOB = "/sys/class/powercap/intel-rapl:*"
WHAT = "the RAPL energy counter"
_TOP_LEVEL = re.compile(r"^intel-rapl:\d+$")


class _Domain:
    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.top_level = bool(_TOP_LEVEL.match(directory.name))
        self.counter = directory / "energy_uj"
        range_path = directory / "max_energy_range_uj"
        self.range_uj = read_number(range_path, WHAT, "--power none") if range_path.is_file() else float(2**32)
        self._last_raw: Optional[float] = None
        self.total_uj = 0.0

    def read_uj(self) -> float:
        """Unwrapped cumulative energy since the first read (uJ)."""
        raw = read_number(self.counter, WHAT, "--power none")
        if self._last_raw is not None:
            delta = raw - self._last_raw
            if delta < 0:  # the counter wrapped
                delta += self.range_uj
            self.total_uj += delta
        self._last_raw = raw
        return self.total_uj


def rapl_domains(root: Path) -> List[_Domain]:
    domains = []
    for directory in map(Path, sorted(glob.glob(str(under(root, POWERCAP_GLOB))))):
        name_path = directory / "name"
        if not (directory / "energy_uj").exists() or not name_path.is_file():
            continue
        name = read_label(name_path, WHAT)
        label = name if _TOP_LEVEL.match(directory.name) else f"{name}@{directory.name}"
        domains.append(_Domain(directory, label))
    return domains


class RaplSource(PowerSource):
    name = "rapl"

    def __init__(self, domains: List[_Domain], clock: Clock = time.monotonic):
        super().__init__(clock)
        if not domains:
            raise DeviceError("no RAPL powercap domains (/sys/class/powercap/intel-rapl:*); use --power none")
        self.domains = domains
        packages = [d for d in domains if d.top_level and d.name.startswith("package")]
        self.total_domains = packages or [d for d in domains if d.top_level]
        self.min_period_s = 0.01
        self._last: Optional[Tuple[float, float]] = None  # (time_s, total uJ)
        self._last_rails: Dict[str, Tuple[float, float]] = {}

    @classmethod
    def discover(cls, root: Optional[str] = None, clock: Clock = time.monotonic) -> Optional[RaplSource]:
        domains = rapl_domains(sysfs_root(root))
        return cls(domains, clock) if domains else None

    def open_impl(self) -> None:
        self.read_impl()  # primes the counters and fails now if they are unreadable

    def read_impl(self) -> PowerSample:
        now = self.clock()
        energies = {d.name: d.read_uj() for d in self.domains}
        total_uj = sum(energies[d.name] for d in self.total_domains)
        rails_mw: Dict[str, float] = {}
        for name, uj in energies.items():
            previous = self._last_rails.get(name)
            rails_mw[name] = (
                (uj - previous[1]) / 1000.0 / (now - previous[0]) if previous and now > previous[0] else 0.0
            )
            self._last_rails[name] = (now, uj)
        if self._last is not None and now > self._last[0]:
            total_mw = (total_uj - self._last[1]) / 1000.0 / (now - self._last[0])
        else:
            total_mw = 0.0
        self._last = (now, total_uj)
        return PowerSample(time_s=now, total_mw=total_mw, rails_mw=rails_mw, energy_mj=total_uj / 1000.0)

    def timing(self) -> SensorTiming:
        return counter_timing(self.min_period_s, "RAPL energy counter")

    def describe(self) -> Dict[str, Any]:
        label = " + ".join(d.name for d in self.total_domains)
        return {
            "source": self.name,
            "rails": [d.name for d in self.domains],
            "total": label,
            "total_rule": {
                "quantity": "cpu_packages",
                "label": label,
                "rails": [d.name for d in self.total_domains],
                "meaning": QUANTITIES["cpu_packages"],
                "family": None,
            },
            "total_note": QUANTITIES["cpu_packages"],
            "paths": [str(d.counter) for d in self.domains],
        }
