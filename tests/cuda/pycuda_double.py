"""TEST DOUBLE: ``pycuda.driver`` with exactly pycuda's surface, over host memory. Never shipped.

pycuda does not build on these machines (no full CUDA toolkit), so :class:`PyCudaBackend` is
tested against this double. Its surface is pycuda 2026.1's, read from
``src/wrapper/wrap_cudadrv.cpp`` (inducer/pycuda at v2026.1): a ``Stream`` has ``synchronize``,
``is_done``, ``wait_for_event`` and ``handle``, and nothing else; no pycuda release can capture a
stream into a CUDA graph (``begin_capture`` / ``end_capture`` / ``Graph`` exist only in an unmerged
pull request). So this double has no capture either: asking for graphs through pycuda alone must
fail the way the real pycuda would make it fail, and the backend must not get that far.

``make_runtime(driver)`` is the part of cuda-python's ``cuda.bindings.runtime`` that capture uses
(stream capture, graph instantiate / launch / destroy), working on this double's streams by
handle, as the real runtime API works on pycuda's streams in pycuda's current context.
"""

from __future__ import annotations

import itertools
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

STREAM_API = ("handle", "is_done", "synchronize", "wait_for_event")  # pycuda 2026.1's Stream, all of it


def make_driver(memory: Any, device: Any) -> types.ModuleType:
    """A ``pycuda.driver`` over ``memory`` (cuda_double.FakeMemory) for ``device`` (a DeviceInfo)."""
    drv = types.ModuleType("pycuda.driver")
    handles = itertools.count(0x9000)
    streams: Dict[int, Any] = {}
    drv.captures = {}  # stream handle -> list of ops while cuda-python captures it (the double's own)
    drv.streams = streams

    class Error(Exception):
        pass

    class MemoryError(Error):
        pass

    drv.Error, drv.MemoryError = Error, MemoryError
    drv.init = lambda flags=0: None
    drv.ctx_flags = types.SimpleNamespace(MAP_HOST=8, SCHED_SPIN=1, SCHED_AUTO=0, SCHED_BLOCKING_SYNC=4)
    drv.device_attribute = types.SimpleNamespace(
        INTEGRATED="integrated", CAN_MAP_HOST_MEMORY="map", MULTIPROCESSOR_COUNT="sms"
    )
    drv.event_flags = types.SimpleNamespace(DISABLE_TIMING=2)
    drv.host_alloc_flags = types.SimpleNamespace(PORTABLE=1, DEVICEMAP=2, WRITECOMBINED=4)

    class Context:
        def pop(self) -> None:
            pass

        def detach(self) -> None:
            pass

    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __init__(self, index: int):
            self.index = index

        def name(self) -> str:
            return device.name

        def compute_capability(self) -> Tuple[int, int]:
            return device.compute_capability

        def total_memory(self) -> int:
            return device.total_memory_bytes

        def get_attribute(self, attr: str) -> int:
            return {
                "integrated": int(device.integrated),
                "map": int(device.can_map_host_memory),
                "sms": device.multiprocessor_count,
            }[attr]

        def make_context(self, flags: int = 0) -> Context:
            return Context()

    drv.Device, drv.Context = Device, Context

    class DeviceAllocation:
        def __init__(self, nbytes: int):
            self._ptr = memory.add(np.zeros(max(nbytes, 1), dtype=np.uint8))

        def __int__(self) -> int:
            return self._ptr

        def free(self) -> None:
            if self._ptr:
                memory.remove(self._ptr)
                self._ptr = 0

    drv.mem_alloc = DeviceAllocation
    drv.mem_get_info = lambda: (device.total_memory_bytes // 2, device.total_memory_bytes)

    class _PinnedBase:
        """What ``array.base`` is for pycuda's pagelocked arrays: free() and get_device_pointer()."""

        def __init__(self, raw: np.ndarray, mapped: bool):
            self.raw = raw
            self._device_ptr = memory.add(raw) if mapped else 0

        def get_device_pointer(self) -> int:
            return self._device_ptr

        def free(self) -> None:
            if self._device_ptr:
                memory.remove(self._device_ptr)
                self._device_ptr = 0

    class _Pinned(np.ndarray):
        @property
        def base(self) -> Any:  # type: ignore[override]
            return self.__dict__.get("_pinned_base")

    def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        raw = np.zeros(max(nbytes, 1), dtype=np.uint8)
        view = raw[:nbytes].view(dtype).reshape(shape).view(_Pinned)
        view._pinned_base = _PinnedBase(raw, bool(mem_flags & drv.host_alloc_flags.DEVICEMAP))
        return view

    drv.pagelocked_empty = pagelocked_empty

    def enqueue(stream: Any, op: Callable[[], None]) -> None:
        capture = drv.captures.get(stream.handle)
        if capture is not None:
            capture.append(op)
        else:
            op()

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Any = None) -> None:
        enqueue(stream, lambda: memory.write(int(dest), np.ascontiguousarray(src)))  # reads src when it runs

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
        def op() -> None:
            dest.reshape(-1).view(np.uint8)[:] = memory.view(int(src), dest.nbytes)

        enqueue(stream, op)

    def memcpy_dtod_async(dest: Any, src: Any, size: int, stream: Any = None) -> None:
        def op() -> None:
            memory.view(int(dest), size)[:] = memory.view(int(src), size)

        enqueue(stream, op)

    drv.memcpy_htod_async = memcpy_htod_async
    drv.memcpy_dtoh_async = memcpy_dtoh_async
    drv.memcpy_dtod_async = memcpy_dtod_async

    class Stream:
        """pycuda.driver.Stream as of 2026.1: nothing more."""

        def __init__(self, flags: int = 0):
            self._handle = next(handles)
            streams[self._handle] = self

        @property
        def handle(self) -> int:
            return self._handle

        def synchronize(self) -> None:
            if self._handle in drv.captures:
                raise Error("cuStreamSynchronize failed: operation not permitted when stream is capturing")

        def is_done(self) -> bool:
            return True

        def wait_for_event(self, event: Any) -> None:
            pass

    class Event:
        def __init__(self, flags: int = 0):
            self._time: Optional[float] = None

        def record(self, stream: Any = None) -> Event:
            import time

            def stamp() -> None:
                self._time = time.perf_counter()

            enqueue(stream, stamp)
            return self

        def synchronize(self) -> Event:
            return self

        def query(self) -> bool:
            return True

        def time_since(self, event: Event) -> float:
            return ((self._time or 0.0) - (event._time or 0.0)) * 1e3

        def time_till(self, event: Event) -> float:
            return -self.time_since(event)

    drv.Stream, drv.Event = Stream, Event
    return drv


def make_runtime(driver: types.ModuleType) -> types.SimpleNamespace:
    """The graph-capture part of ``cuda.bindings.runtime``, on ``driver``'s streams by handle."""
    ok = "cudaSuccess"
    graphs: Dict[int, List[Callable[[], None]]] = {}
    ids = itertools.count(1)
    calls: List[str] = []

    def begin(stream: int, mode: Any) -> Tuple[str]:
        calls.append("cudaStreamBeginCapture")
        driver.captures[int(stream)] = []
        return (ok,)

    def end(stream: int) -> Tuple[str, int]:
        calls.append("cudaStreamEndCapture")
        graph = next(ids)
        graphs[graph] = driver.captures.pop(int(stream))
        return ok, graph

    def instantiate(graph: int, flags: int) -> Tuple[str, int]:
        calls.append("cudaGraphInstantiate")
        return ok, graph

    def launch(graph_exec: int, stream: int) -> Tuple[str]:
        calls.append("cudaGraphLaunch")
        for op in graphs[graph_exec]:
            op()
        return (ok,)

    return types.SimpleNamespace(
        calls=calls,
        cudaError_t=types.SimpleNamespace(cudaSuccess=ok),
        cudaStreamCaptureMode=types.SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local"),
        cudaStreamBeginCapture=begin,
        cudaStreamEndCapture=end,
        cudaGraphInstantiate=instantiate,
        cudaGraphLaunch=launch,
        cudaGraphExecDestroy=lambda e: (ok,),
        cudaGraphDestroy=lambda g: (ok,),
        cudaGetErrorName=lambda e: (ok, str(e)),
        cudaGetErrorString=lambda e: (ok, str(e)),
    )
