"""The one small CUDA interface the TensorRT side needs, whatever binding provides it.

TensorRT's Python API takes raw device pointers (``set_tensor_address``) and a raw stream handle
(``execute_async_v3``); everything around it (allocating the buffers, pinned host memory, copies,
events for timing, CUDA graphs) comes from a CUDA binding. JetPack ships pycuda-friendly setups,
newer TensorRT samples use cuda-python (``cuda.bindings``): both sit behind this interface, so the
engine builder and the runtime backend are written once.

Pointers and handles are plain ``int`` everywhere: that is what TensorRT wants, and it makes
pointer arithmetic (a row offset into a batch buffer) and pointer identity (stage k's output
buffer *is* stage k+1's input buffer) explicit.

Only numpy is imported here; the bindings are imported by :func:`hisd_edge.cuda.open_cuda`.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from typing import Any, List, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the engine store and the runtime need to know about the GPU."""

    index: int
    name: str
    compute_capability: Tuple[int, int]
    integrated: bool  # shares DRAM with the CPU (Jetson): mapped pinned memory is zero-copy
    can_map_host_memory: bool
    total_memory_bytes: int
    multiprocessor_count: int = 0  # SMs; 0: unknown. Tells apart GPUs of one name and capability (Orin Nano / NX / AGX)

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def key(self) -> str:
        """Directory-safe identity of the device model, e.g. ``orin-sm87-16sm``, ``nvidia-geforce-rtx-4090-sm89-128sm``.

        TensorRT plans are tied to the GPU model, not to one board. Name and compute capability
        alone do not identify it: every Jetson Orin module reports "Orin" sm 8.7, and TensorRT
        tunes its tactics for the multiprocessor count, so that is part of the key too.
        """
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"
        key = f"{slug}-sm{self.compute_capability[0]}{self.compute_capability[1]}"
        return f"{key}-{self.multiprocessor_count}sm" if self.multiprocessor_count > 0 else key

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "compute_capability": self.compute_capability_str,
            "integrated": self.integrated,
            "multiprocessor_count": self.multiprocessor_count,
            "key": self.key,
        }


class DeviceBuffer(abc.ABC):
    """Device memory of ``nbytes`` at address ``ptr``."""

    ptr: int
    nbytes: int

    @abc.abstractmethod
    def free(self) -> None: ...


class HostBuffer(abc.ABC):
    """Page-locked host memory seen as a numpy array.

    ``device_ptr`` is set for *mapped* pinned memory (``cudaHostAllocMapped``): the GPU reads and
    writes it directly, so on an integrated GPU it can be bound to an engine's I/O with no copy.
    """

    array: np.ndarray
    device_ptr: Optional[int]

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    @abc.abstractmethod
    def free(self) -> None: ...


class Stream(abc.ABC):
    handle: int

    @abc.abstractmethod
    def synchronize(self) -> None: ...

    def free(self) -> None:
        """Destroy the stream (called by :meth:`CudaBackend.close`)."""


class Event(abc.ABC):
    """A CUDA event; ``elapsed_ms(start)`` is the device time from ``start`` to this event."""

    @abc.abstractmethod
    def record(self, stream: Stream) -> None: ...

    @abc.abstractmethod
    def synchronize(self) -> None: ...

    @abc.abstractmethod
    def elapsed_ms(self, start: Event) -> float: ...

    def free(self) -> None:
        """Destroy the event (called by :meth:`CudaBackend.close`)."""


class Graph(abc.ABC):
    """An instantiated CUDA graph captured from a stream: replays the same work at the same addresses."""

    @abc.abstractmethod
    def launch(self, stream: Stream) -> None: ...

    @abc.abstractmethod
    def free(self) -> None: ...


class CudaBackend(abc.ABC):
    """One CUDA binding: allocation, copies, streams, events, graph capture on one device.

    Copies are asynchronous on ``stream``; host arrays passed to them must be pinned
    (:meth:`alloc_host`) for the copy to be truly asynchronous, and must stay alive until the
    stream has passed the copy. Everything allocated through a backend is freed by :meth:`close`.
    """

    name = "cuda"

    def __init__(self) -> None:
        self._owned: List[Any] = []

    # -- description --------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> DeviceInfo: ...

    @property
    def zero_copy_preferred(self) -> bool:
        """Integrated GPUs (Jetson) share DRAM: mapped pinned host memory avoids every copy."""
        return self.device.integrated and self.device.can_map_host_memory

    # -- memory -------------------------------------------------------------------------------
    def memory_info(self) -> Optional[Tuple[int, int]]:
        """(free, total) device memory in bytes, or None where the binding cannot tell.

        On Jetson this is the shared DRAM as CUDA sees it (without swap).
        """
        return None

    @abc.abstractmethod
    def alloc_device(self, nbytes: int) -> DeviceBuffer: ...

    @abc.abstractmethod
    def alloc_host(self, shape: Tuple[int, ...], dtype: Any, mapped: bool = False) -> HostBuffer: ...

    @abc.abstractmethod
    def copy_htod_async(self, dst_ptr: int, src: np.ndarray, stream: Stream) -> None: ...

    @abc.abstractmethod
    def copy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream: Stream) -> None:
        """Copy ``dst.nbytes`` from ``src_ptr`` into the (contiguous) host array ``dst``."""

    @abc.abstractmethod
    def copy_dtod_async(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None: ...

    # -- ordering and timing ------------------------------------------------------------------
    @abc.abstractmethod
    def create_stream(self) -> Stream: ...

    @abc.abstractmethod
    def create_event(self, timing: bool = True) -> Event: ...

    # -- CUDA graphs --------------------------------------------------------------------------
    @property
    def graphs_unavailable(self) -> Optional[str]:
        """None where this binding can capture CUDA graphs, else why not and what to install (one line)."""
        return None

    @abc.abstractmethod
    def begin_capture(self, stream: Stream) -> None:
        """Start capturing ``stream`` (not the legacy default stream); nothing enqueued runs until launch."""

    @abc.abstractmethod
    def end_capture(self, stream: Stream) -> Graph:
        """Stop capturing and instantiate the captured work as a launchable graph."""

    # -- lifetime -----------------------------------------------------------------------------
    def _own(self, obj: Any) -> Any:
        self._owned.append(obj)
        return obj

    def close(self) -> None:
        """Free everything allocated through this backend (newest first), then release the context."""
        while self._owned:
            obj = self._owned.pop()
            try:
                obj.free()
            except Exception:
                pass
        self.close_impl()

    def close_impl(self) -> None:
        """Release the binding's context, if the backend created one."""

    def __enter__(self) -> CudaBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def nbytes_of(shape: Tuple[int, ...], dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
