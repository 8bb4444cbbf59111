"""TEST DOUBLE: a CUDA backend over host numpy memory. Never shipped, never a real backend.

``FakeCuda`` implements :class:`hisd_edge.cuda.CudaBackend` with a fake address space: every
device allocation (and every *mapped* pinned host allocation) gets an integer address, and
:meth:`FakeMemory.view` turns an address (possibly offset into an allocation, as for one row of a
batch) back into the bytes behind it. So pointer identity is real: if stage k's output and stage
k+1's input are bound to the same address, stage k+1 reads exactly what stage k wrote, and an
address that was never allocated, or a read past the end of an allocation, fails loudly.

Streams run their work at enqueue time, in order (which is what one CUDA stream guarantees to
its users); while a stream is being captured, work is recorded instead and replayed by
``Graph.launch``. Capture is a feature of the binding: ``FakeCuda(graphs=False)`` is a binding
that has none (pycuda without cuda-python), and refuses to capture the way
:class:`hisd_edge.cuda.pycuda_backend.PyCudaBackend` does, instead of pretending. (pycuda's own
calls are doubled in ``pycuda_double.py``, with exactly pycuda's surface.) Synchronising a capturing stream is an error, as in CUDA. ``stats`` counts copies
by direction and bytes so tests can assert that, say, only the confidences crossed to the host.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from hisd_edge.cuda.api import CudaBackend, DeviceBuffer, DeviceInfo, Event, Graph, HostBuffer, Stream, nbytes_of

DISCRETE = DeviceInfo(
    index=0,
    name="Fake RTX 4090",
    compute_capability=(8, 9),
    integrated=False,
    can_map_host_memory=True,
    total_memory_bytes=24 << 30,
    multiprocessor_count=128,
)
# An Orin Nano 8GB (8 SMs); an AGX Orin reports the same name and capability with 16 SMs.
JETSON_ORIN = DeviceInfo(
    index=0,
    name="Orin",
    compute_capability=(8, 7),
    integrated=True,
    can_map_host_memory=True,
    total_memory_bytes=8 << 30,
    multiprocessor_count=8,
)
AGX_ORIN = DeviceInfo(
    index=0,
    name="Orin",
    compute_capability=(8, 7),
    integrated=True,
    can_map_host_memory=True,
    total_memory_bytes=64 << 30,
    multiprocessor_count=16,
)


class FakeCudaError(RuntimeError):
    """What a real CUDA call would report as an error (illegal address, capture violation, ...)."""


class FakeMemory:
    """A sparse address space of numpy byte blocks."""

    _addresses = itertools.count(0x7F00_0000_0000, 1 << 24)  # far apart: no accidental overlaps

    def __init__(self) -> None:
        self._bases: List[int] = []
        self._blocks: Dict[int, np.ndarray] = {}

    def add(self, block: np.ndarray) -> int:
        assert block.dtype == np.uint8 and block.ndim == 1
        base = next(self._addresses)
        bisect.insort(self._bases, base)
        self._blocks[base] = block
        return base

    def remove(self, base: int) -> None:
        if base not in self._blocks:
            raise FakeCudaError(f"free of unknown or already freed address {base:#x}")
        del self._blocks[base]
        self._bases.remove(base)

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The ``nbytes`` bytes at ``ptr`` (a writable uint8 view), or FakeCudaError (illegal address)."""
        if not isinstance(ptr, (int, np.integer)) or ptr <= 0:
            raise FakeCudaError(f"illegal address {ptr!r}")
        i = bisect.bisect_right(self._bases, int(ptr)) - 1
        if i < 0:
            raise FakeCudaError(f"illegal address {int(ptr):#x}: not in any allocation")
        base = self._bases[i]
        block = self._blocks[base]
        offset = int(ptr) - base
        if offset + nbytes > block.size:
            raise FakeCudaError(
                f"illegal address: {nbytes} bytes at {int(ptr):#x} run past the end of a {block.size}-byte allocation"
            )
        return block[offset : offset + nbytes]

    def read(self, ptr: int, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.view(ptr, nbytes_of(shape, dtype)).view(dtype).reshape(shape).copy()

    def write(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self.view(ptr, array.nbytes)[:] = array.reshape(-1).view(np.uint8)


class _DeviceBuffer(DeviceBuffer):
    def __init__(self, cuda: FakeCuda, nbytes: int):
        self._cuda, self.nbytes = cuda, nbytes
        self.ptr = cuda.memory.add(np.zeros(max(nbytes, 1), dtype=np.uint8))

    def free(self) -> None:
        if self.ptr:
            self._cuda.memory.remove(self.ptr)
            self.ptr = 0


class _HostBuffer(HostBuffer):
    def __init__(self, cuda: FakeCuda, shape: Tuple[int, ...], dtype: Any, mapped: bool):
        self._cuda = cuda
        raw = np.zeros(max(nbytes_of(shape, dtype), 1), dtype=np.uint8)
        self.array = raw[: nbytes_of(shape, dtype)].view(dtype).reshape(shape)
        self._raw = raw
        self.device_ptr = cuda.memory.add(raw) if mapped else None
        cuda.pinned.append(raw)

    def free(self) -> None:
        if self.device_ptr:
            self._cuda.memory.remove(self.device_ptr)
            self.device_ptr = None
        self._cuda.pinned = [b for b in self._cuda.pinned if b is not self._raw]


class FakeStream(Stream):
    _handles = itertools.count(0x5000)

    def __init__(self, cuda: FakeCuda):
        self._cuda = cuda
        self.handle = next(self._handles)
        self.capture: Optional[List[Callable[[], None]]] = None

    def synchronize(self) -> None:
        if self.capture is not None:
            raise FakeCudaError(
                "cudaStreamSynchronize on a capturing stream (operation not permitted when stream is capturing)"
            )
        self._cuda.stats["stream_syncs"] += 1


class FakeEvent(Event):
    def __init__(self, cuda: FakeCuda, timing: bool):
        self._cuda, self.timing = cuda, timing
        self.time_s: Optional[float] = None

    def record(self, stream: Stream) -> None:
        def stamp() -> None:
            self.time_s = time.perf_counter()

        self._cuda.enqueue(stream, stamp, "event")

    def synchronize(self) -> None:
        self._cuda.stats["event_syncs"] += 1

    def elapsed_ms(self, start: Event) -> float:
        assert isinstance(start, FakeEvent)
        if not (self.timing and start.timing):
            raise FakeCudaError("cudaEventElapsedTime on an event created with cudaEventDisableTiming")
        if self.time_s is None or start.time_s is None:
            raise FakeCudaError("cudaEventElapsedTime on an event that was never recorded")
        return (self.time_s - start.time_s) * 1e3


class FakeGraph(Graph):
    def __init__(self, cuda: FakeCuda, ops: List[Callable[[], None]]):
        self._cuda, self.ops = cuda, ops

    def launch(self, stream: Stream) -> None:
        self._cuda.stats["graph_launches"] += 1
        for op in self.ops:
            self._cuda.enqueue(stream, op, "graph-node")

    def free(self) -> None:
        self.ops = []


class FakeCuda(CudaBackend):
    """The test double. ``device`` picks a discrete GPU (default) or a Jetson-like integrated one."""

    name = "fake-cuda"

    def __init__(self, device: DeviceInfo = DISCRETE, free_memory_bytes: Optional[int] = None, graphs: bool = True):
        super().__init__()
        self._device = device
        self._graphs = graphs
        self.free_memory_bytes = device.total_memory_bytes if free_memory_bytes is None else free_memory_bytes
        self.memory = FakeMemory()
        self.pinned: List[np.ndarray] = []
        self.streams: Dict[int, FakeStream] = {}
        self.stats: collections.Counter = collections.Counter()
        self.closed = False
        # Out-of-memory on demand: once ``alloc_limit_bytes`` (device + pinned host bytes allocated
        # so far) would be passed, allocations raise ``alloc_error(nbytes)``, e.g. cuda-python's
        # CudaCallError("cudaMalloc(...) failed (cudaErrorMemoryAllocation: out of memory)").
        self.alloc_limit_bytes: Optional[int] = None
        self.alloc_error: Callable[[int], Exception] = lambda n: FakeCudaError(f"out of memory allocating {n} bytes")
        self.allocated_bytes = 0

    def _charge(self, nbytes: int) -> None:
        if self.alloc_limit_bytes is not None and self.allocated_bytes + nbytes > self.alloc_limit_bytes:
            raise self.alloc_error(nbytes)
        self.allocated_bytes += nbytes

    @property
    def device(self) -> DeviceInfo:
        return self._device

    def memory_info(self) -> Optional[Tuple[int, int]]:
        return self.free_memory_bytes, self._device.total_memory_bytes

    # -- the stream model -------------------------------------------------------------------------
    def stream_for(self, handle: int) -> FakeStream:
        if handle not in self.streams:
            raise FakeCudaError(f"invalid stream handle {handle:#x}")
        return self.streams[handle]

    def enqueue(self, stream: Stream, op: Callable[[], None], kind: str) -> None:
        assert isinstance(stream, FakeStream)
        if stream.capture is not None:
            stream.capture.append(op)
            self.stats[f"captured_{kind}"] += 1
        else:
            op()

    def _is_pinned(self, array: np.ndarray) -> bool:
        return any(np.shares_memory(array, block) for block in self.pinned)

    # -- CudaBackend ------------------------------------------------------------------------------
    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        self._charge(int(nbytes))
        self.stats["device_allocs"] += 1
        return self._own(_DeviceBuffer(self, int(nbytes)))

    def alloc_host(self, shape: Tuple[int, ...], dtype: Any, mapped: bool = False) -> HostBuffer:
        self._charge(nbytes_of(tuple(shape), dtype))
        self.stats["mapped_allocs" if mapped else "pinned_allocs"] += 1
        return self._own(_HostBuffer(self, tuple(shape), dtype, mapped))

    def copy_htod_async(self, dst_ptr: int, src: np.ndarray, stream: Stream) -> None:
        if not self._is_pinned(src):
            self.stats["pageable_copies"] += 1
        nbytes = src.nbytes

        def op() -> None:
            self.memory.write(dst_ptr, src)
            self.stats["htod_bytes"] += nbytes
            self.stats["htod_copies"] += 1

        self.enqueue(stream, op, "memcpy")

    def copy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream: Stream) -> None:
        if not self._is_pinned(dst):
            self.stats["pageable_copies"] += 1
        if not dst.flags.c_contiguous:
            raise FakeCudaError("copy_dtoh_async into a non-contiguous host array")

        def op() -> None:
            dst.reshape(-1).view(np.uint8)[:] = self.memory.view(src_ptr, dst.nbytes)
            self.stats["dtoh_bytes"] += dst.nbytes
            self.stats["dtoh_copies"] += 1

        self.enqueue(stream, op, "memcpy")

    def copy_dtod_async(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
        def op() -> None:
            src = self.memory.view(src_ptr, nbytes)
            dst = self.memory.view(dst_ptr, nbytes)
            if np.shares_memory(src, dst):
                raise FakeCudaError("cudaMemcpyAsync DtoD with overlapping source and destination")
            dst[:] = src
            self.stats["dtod_bytes"] += nbytes
            self.stats["dtod_copies"] += 1

        self.enqueue(stream, op, "memcpy")

    def create_stream(self) -> Stream:
        stream = FakeStream(self)
        self.streams[stream.handle] = stream
        return self._own(stream)

    def create_event(self, timing: bool = True) -> Event:
        return self._own(FakeEvent(self, timing))

    @property
    def graphs_unavailable(self) -> Optional[str]:
        from hisd_edge.cuda.pycuda_backend import NO_GRAPHS

        return None if self._graphs else NO_GRAPHS

    def begin_capture(self, stream: Stream) -> None:
        from hisd_edge.errors import DependencyError

        if not self._graphs:
            raise DependencyError(self.graphs_unavailable or "")
        assert isinstance(stream, FakeStream)
        if stream.capture is not None:
            raise FakeCudaError("cudaStreamBeginCapture on a stream that is already capturing")
        stream.capture = []

    def end_capture(self, stream: Stream) -> Graph:
        assert isinstance(stream, FakeStream)
        if stream.capture is None:
            raise FakeCudaError("cudaStreamEndCapture on a stream that is not capturing")
        ops, stream.capture = stream.capture, None
        self.stats["graphs"] += 1
        return self._own(FakeGraph(self, ops))

    def close_impl(self) -> None:
        self.closed = True
