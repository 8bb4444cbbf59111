"""Memory figures that mean something on a Jetson (facts sheet section 6).

CPU and GPU share DRAM on Jetson, so device allocations do not show in NVML; what can be read is
the process resident set (``VmRSS`` in ``/proc/self/status``), system ``MemAvailable`` and, on
Tegra, ``NvMapMemUsed`` (CPU-GPU shared buffers) in ``/proc/meminfo``. A :class:`MemorySnapshot`
holds them; the profiler takes one before the backend loads and one after, and reports the
change. CUDA's free/total and TensorRT's per-context device memory come from the backend when it
offers them (``memory_info()``), never by importing CUDA here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

MIB = 1024.0 * 1024.0


def _kib_fields(path: Path, names: tuple) -> Dict[str, Optional[int]]:
    """``Name:   1234 kB`` lines -> bytes, for the names asked; missing names are None."""
    found: Dict[str, Optional[int]] = dict.fromkeys(names)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in found:
            parts = rest.split()
            if parts and parts[0].isdigit():
                scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                found[key] = int(parts[0]) * scale
    return found


@dataclasses.dataclass(frozen=True)
class MemorySnapshot:
    """Process and system memory at one moment, in bytes (None where the system does not say)."""

    rss_bytes: Optional[int]
    rss_peak_bytes: Optional[int]
    mem_available_bytes: Optional[int]
    nvmap_used_bytes: Optional[int]

    def to_dict(self) -> Dict[str, Optional[float]]:
        return {
            "rss_mib": _mib(self.rss_bytes),
            "rss_peak_mib": _mib(self.rss_peak_bytes),
            "mem_available_mib": _mib(self.mem_available_bytes),
            "nvmap_used_mib": _mib(self.nvmap_used_bytes),
        }


def _mib(value: Optional[int]) -> Optional[float]:
    return None if value is None else value / MIB


def snapshot(proc_root: str = "/proc") -> MemorySnapshot:
    """Read ``/proc/self/status`` and ``/proc/meminfo`` (under ``proc_root``, for tests)."""
    root = Path(proc_root)
    status = _kib_fields(root / "self" / "status", ("VmRSS", "VmHWM"))
    meminfo = _kib_fields(root / "meminfo", ("MemAvailable", "NvMapMemUsed"))
    return MemorySnapshot(
        rss_bytes=status["VmRSS"],
        rss_peak_bytes=status["VmHWM"],
        mem_available_bytes=meminfo["MemAvailable"],
        nvmap_used_bytes=meminfo["NvMapMemUsed"],
    )


def difference(before: MemorySnapshot, after: MemorySnapshot) -> Dict[str, Optional[float]]:
    """Change from ``before`` to ``after`` in MiB; MemAvailable is reported as memory *taken*."""

    def delta(a: Optional[int], b: Optional[int]) -> Optional[float]:
        return None if a is None or b is None else (b - a) / MIB

    return {
        "rss_delta_mib": delta(before.rss_bytes, after.rss_bytes),
        "mem_available_taken_mib": delta(after.mem_available_bytes, before.mem_available_bytes),
        "nvmap_used_delta_mib": delta(before.nvmap_used_bytes, after.nvmap_used_bytes),
    }


def backend_memory(backend: Any) -> Optional[Dict[str, Any]]:
    """What the backend reports itself (CUDA free/total, TensorRT context memory), if it can.

    A backend offers this through an optional ``memory_info()`` returning a dict of figures whose
    keys carry their units (``..._bytes``); anything else is ignored.
    """
    reporter = getattr(backend, "memory_info", None)
    if not callable(reporter):
        return None
    try:
        info = reporter()
    except Exception as exc:  # a failing optional report must not fail the profile
        return {"error": " ".join(str(exc).split())}
    return dict(info) if isinstance(info, dict) else None
