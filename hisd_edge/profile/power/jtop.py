"""Power through jtop (jetson-stats), when it is installed and its service runs.

``jtop.power`` is ``{"rail": {name: {"power": mW, "volt": mV, "curr": mA, "type": ..., ...}}, "tot":
{"power": mW, "name": ...}}``. jtop's ``tot`` is VIN/VDD_IN/POM_5V_IN when present, else the sum of
*every* rail it lists (jtop/core/power.py), and before jetson-stats PR #900 that list included the
USB-C power-delivery supplies of ``/sys/class/power_supply`` (``ucsi-source-psy-*``): negotiated
limits, not measurements. So only the power-monitor rails (type INA3221 or INA238) are kept, and the
total is formed here by the board's documented rule (:mod:`.rails`), never taken from ``tot`` unless
``tot`` names an input rail. jtop's ``avg`` is a recursive (new + old) / 2, not a mean: not used.
The update interval is set by the root ``jtop.service`` and shared by all clients.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from hisd_edge.errors import DependencyError, DeviceError
from hisd_edge.profile.power.base import Clock, PowerSample, PowerSource
from hisd_edge.profile.power.rails import total_rule
from hisd_edge.profile.sensor import SensorTiming

MONITOR_TYPES = ("INA3221", "INA238")
INPUT_RAILS = ("VIN", "VDD_IN", "POM_5V_IN")

INSTALL_HINT = "install jetson-stats (sudo pip3 install -U jetson-stats, then reboot or restart jtop.service), or use --power ina3221"


class JtopSource(PowerSource):
    name = "jtop"
    runs_in_background = True  # the jtop client thread keeps reading the service until close()

    def __init__(self, interval_s: float = 0.1, clock: Clock = time.monotonic):
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
        rails = {
            name: float(values.get("power", 0.0))
            for name, values in (power.get("rail") or {}).items()
            if isinstance(values, dict) and values.get("type", "INA3221") in MONITOR_TYPES
        }
        total_entry = power.get("tot") or {}
        input_name = total_entry.get("name")
        if input_name in INPUT_RAILS and "power" in total_entry:
            rails[str(input_name)] = float(total_entry["power"])  # jtop moved the input rail out of "rail"
        if not rails:
            raise DeviceError("jtop reports no power-monitor rails on this board; use --power ina3221 or tegrastats")
        rule = self.total_rule(list(rails))
        return PowerSample(time_s=self.clock(), total_mw=rule.total_mw(rails), rails_mw=rails)

    def timing(self) -> SensorTiming:
        from hisd_edge.profile.power.tegrastats import board_sensor_timing

        return board_sensor_timing(self.interval_s, f"jtop.service (interval {self.interval_s:g} s)")

    def close_impl(self) -> None:
        jetson, self._jetson = self._jetson, None
        if jetson is not None:
            try:
                jetson.close()
            except Exception:
                pass

    def describe(self) -> Dict[str, Any]:
        rule = total_rule(list(self._rails)) if self._rails else None
        return {
            "source": self.name,
            "rails": list(self._rails),
            "total": rule.label if rule else None,
            "total_rule": rule.to_dict() if rule else None,
            "total_note": rule.meaning if rule else None,
            "interval_ms": round(self.interval_s * 1000.0, 3),
        }
