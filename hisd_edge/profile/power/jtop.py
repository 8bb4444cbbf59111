"""Power through jtop (jetson-stats), when it is installed and its service runs.

``jtop.power`` is ``{"rail": {name: {"power": mW, "volt": mV, "curr": mA, ...}}, "tot": {"power": mW, ...}}``;
``tot`` is VDD_IN/POM_5V_IN when present, else the sum of the rails (jtop/core/power.py). jtop's
``avg`` is a recursive (new + old) / 2, not a mean, so it is not used. The update interval is set by
the root ``jtop.service`` and shared by all clients: the sampler only ever sees its refresh rate.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from hisd_edge.errors import DependencyError, DeviceError
from hisd_edge.profile.power.base import Clock, PowerSample, PowerSource, total_from_rails

INSTALL_HINT = "install jetson-stats (sudo pip3 install -U jetson-stats, then reboot or restart jtop.service), or use --power ina3221"


class JtopSource(PowerSource):
    name = "jtop"
    runs_in_background = True  # the jtop client thread keeps reading the service until close()

    def __init__(self, interval_s: float = 0.1, clock: Clock = time.perf_counter):
        super().__init__(clock)
        self.interval_s = interval_s
        self.min_period_s = interval_s
        self._jetson: Any = None
        self._rails: Dict[str, float] = {}

    def open_impl(self) -> None:
        try:
            from jtop import jtop
        except ImportError:
            raise DependencyError(f"--power jtop needs the jtop module: {INSTALL_HINT}") from None
        jetson = jtop(interval=self.interval_s)
        try:
            jetson.start()
        except Exception as exc:  # jtop raises its own JtopException when the service is down
            raise DeviceError(
                f"jtop could not connect to jtop.service ({exc}); "
                "sudo systemctl restart jtop.service, or use --power ina3221"
            ) from None
        self._jetson = jetson
        first = self.read_impl()
        self._rails = dict(first.rails_mw)

    def read_impl(self) -> PowerSample:
        jetson = self._jetson
        if jetson is None or not jetson.is_alive():
            raise DeviceError("jtop stopped (jtop.service connection lost)")
        power = jetson.power or {}
        rails = {name: float(values.get("power", 0.0)) for name, values in (power.get("rail") or {}).items()}
        total_entry = power.get("tot") or {}
        total = float(total_entry["power"]) if "power" in total_entry else total_from_rails(rails)[0]
        if not rails and "power" not in total_entry:
            raise DeviceError("jtop reports no power rails on this board; use --power ina3221 or tegrastats")
        return PowerSample(time_s=self.clock(), total_mw=total, rails_mw=rails)

    def close_impl(self) -> None:
        jetson, self._jetson = self._jetson, None
        if jetson is not None:
            try:
                jetson.close()
            except Exception:
                pass

    def describe(self) -> Dict[str, Any]:
        rule = total_from_rails(self._rails)[1] if self._rails else None
        return {
            "source": self.name,
            "rails": list(self._rails),
            "total": rule,
            "interval_ms": round(self.interval_s * 1000.0, 3),
        }
