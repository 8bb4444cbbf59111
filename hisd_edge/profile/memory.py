"""Memory figures that mean something on a Jetson (facts sheet section 6).

CPU and GPU share DRAM on Jetson, so device allocations do not show in NVML; what can be read is
the process resident set (``VmRSS`` in ``/proc/self/status``), system ``MemAvailable`` and, on
Tegra, ``NvMapMemUsed`` (CPU-GPU shared buffers) in ``/proc/meminfo``. A :class:`MemorySnapshot`
holds them; the profiler takes one before the backend loads and one after, and reports the
change. CUDA's free/total and TensorRT's per-context device memory come from the backend when it
offers them (``memory_info()``), never by importing CUDA here.

Per exit (what reaching exit k needs): :func:`static_per_exit` (stage files, and the engines' plan,
weights and context memory where the backend reports them per stage) and :func:`measured_per_exit`
(what first running stages 0..k took). System-wide figures (MemAvailable) are labelled as such.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

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


def static_per_exit(stage_bytes: List[Optional[int]], backend_info: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """What stages 0..k hold by construction, per exit k (bytes, cumulative).

    ``model_bytes``: the stage files (what a runtime loads). From the backend's report where it gives
    per-stage figures (the TensorRT backend: ``stage<j>_plan_bytes``, ``stage<j>_weights_bytes``,
    ``stage<j>_device_memory_bytes`` = the execution context's scratch): their sums over 0..k. Buffers
    the backend allocates once for all stages (``device_buffers_bytes``, ``host_buffers_bytes``) are
    shared by every exit and reported once, not per exit.
    """
    info = backend_info or {}
    exits: List[Dict[str, Any]] = []
    for k in range(len(stage_bytes)):
        entry: Dict[str, Any] = {"index": k}
        files = stage_bytes[: k + 1]
        entry["model_bytes"] = sum(b for b in files if b) if all(b is not None for b in files) else None
        for name in ("plan_bytes", "weights_bytes", "device_memory_bytes"):
            values = [info.get(f"stage{j}_{name}") for j in range(k + 1)]
            if all(isinstance(v, int) for v in values):
                entry[name] = int(sum(values))  # type: ignore[arg-type]
        exits.append(entry)
    return exits


def measured_per_exit(
    num_stages: int, run_to_exit: Callable[[int], Any], cuda_free: Callable[[], Optional[int]], proc_root: str = "/proc"
) -> List[Dict[str, Any]]:
    """Memory that running stages 0..k for the first time took, per exit k, right after the backend loaded.

    Stage k's lazily allocated memory (ONNX Runtime's arenas, a first-run workspace) appears when it
    first runs: exit k's figure is the change over running stages 0..k once, on top of exits 0..k-1.
    ``device_taken_mib`` is the fall in CUDA's free memory where the backend reports it (on a Jetson:
    the shared DRAM); ``rss_delta_mib`` and ``nvmap_used_delta_mib`` are this process's resident set
    and Tegra's CPU-GPU shared buffers; ``system_mem_available_taken_mib`` is **system-wide** (any
    other process moves it too).
    """
    exits: List[Dict[str, Any]] = []
    before = snapshot(proc_root)
    free_before = cuda_free()
    for k in range(num_stages):
        run_to_exit(k)
        after = snapshot(proc_root)
        free_after = cuda_free()
        diff = difference(before, after)
        exits.append(
            {
                "index": k,
                "rss_delta_mib": diff["rss_delta_mib"],
                "nvmap_used_delta_mib": diff["nvmap_used_delta_mib"],
                "system_mem_available_taken_mib": diff["mem_available_taken_mib"],
                "device_taken_mib": None
                if free_before is None or free_after is None
                else (free_before - free_after) / MIB,
            }
        )
        before, free_before = after, free_after
    return exits
