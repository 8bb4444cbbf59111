"""Energy from NVML on desktop and data-centre GPUs (nvidia-ml-py, imported lazily).

``nvmlDeviceGetTotalEnergyConsumption`` is a cumulative counter in mJ (Volta and newer), updated
every 20-100 ms: energy over a window is a counter difference, not an integral of sampled power.
``nvmlDeviceGetPowerUsage`` (mW) is kept for the power trace; on Ampere and newer it is a 1 s
average, so it is not used for energy. Jetson has no NVML power (N/A on JP 6, NOT_SUPPORTED on
JP 7): use ina3221 or tegrastats there. The figures cover the GPU board only, not the host.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from hisd_edge.errors import DependencyError, DeviceError
from hisd_edge.profile.power.base import Clock, PowerSample, PowerSource
from hisd_edge.profile.power.rails import QUANTITIES
from hisd_edge.profile.sensor import SensorTiming, counter_timing

INSTALL_HINT = "pip install nvidia-ml-py (and an NVIDIA driver)"


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        raise DependencyError(f"--power nvml needs NVML's Python bindings: {INSTALL_HINT}") from None
    return pynvml


class NvmlSource(PowerSource):
    name = "nvml"

    def __init__(self, gpu_index: int = 0, clock: Clock = time.monotonic):
        super().__init__(clock)
        self.gpu_index = gpu_index
        self.min_period_s = 0.02
        self._nvml: Any = None
        self._handle: Any = None
        self._gpu_name = ""

    def open_impl(self) -> None:
        nvml = _nvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise DeviceError(f"NVML cannot start ({exc}); no NVIDIA driver here? use --power rapl/none") from None
        self._nvml = nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            if not 0 <= self.gpu_index < count:
                raise DeviceError(f"--gpu {self.gpu_index}: NVML sees {count} GPU(s); pick 0..{count - 1}")
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self.gpu_index)
            name = nvml.nvmlDeviceGetName(self._handle)
            self._gpu_name = name.decode() if isinstance(name, bytes) else str(name)
            nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except nvml.NVMLError as exc:
            self.close_impl()
            raise DeviceError(
                f"NVML has no energy counter for GPU {self.gpu_index} ({exc}): it needs Volta or newer and is "
                "not supported on Jetson; use --power ina3221 or tegrastats on a Jetson"
            ) from None
        except DeviceError:
            self.close_impl()
            raise

    def read_impl(self) -> PowerSample:
        nvml = self._nvml
        if nvml is None:
            raise DeviceError("NVML is not initialised")
        try:
            energy_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            power_mw = float(nvml.nvmlDeviceGetPowerUsage(self._handle))
        except nvml.NVMLError as exc:
            raise DeviceError(f"NVML read failed on GPU {self.gpu_index} ({exc})") from None
        return PowerSample(time_s=self.clock(), total_mw=power_mw, rails_mw={"GPU": power_mw}, energy_mj=energy_mj)

    def close_impl(self) -> None:
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass

    def timing(self) -> SensorTiming:
        return counter_timing(0.1, "NVML energy counter (updated every 20-100 ms)")

    def describe(self) -> Dict[str, Any]:
        return {
            "source": self.name,
            "gpu_index": self.gpu_index,
            "gpu_name": self._gpu_name,
            "rails": ["GPU"],
            "total": "GPU board (NVML energy counter)",
            "total_rule": {
                "quantity": "gpu_board",
                "label": "GPU board",
                "rails": ["GPU"],
                "meaning": QUANTITIES["gpu_board"],
                "family": None,
            },
            "total_note": QUANTITIES["gpu_board"],
        }
