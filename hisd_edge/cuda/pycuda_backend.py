"""The CUDA interface over pycuda (the default where it is installed, as on many JetPack setups).

pycuda talks to the driver API. We make our own context on the device (as ``pycuda.autoinit``
does) with ``MAP_HOST`` so mapped pinned memory works, and ``SCHED_SPIN`` when asked for the
lowest wake-up latency; TensorRT's runtime-API calls then run in that current context, which is
how NVIDIA's pycuda-based TensorRT samples work. The context is popped and detached on close.
The context is current only on the thread that opened the backend: use it from that thread.

CUDA graphs: no pycuda release can capture a stream (``Stream.begin_capture`` and friends exist
only in an unmerged pull request; pycuda 2026.1's ``Stream`` has ``synchronize``, ``is_done``,
``wait_for_event`` and ``handle``). Where cuda-python is installed too, graphs are captured
through its runtime API on pycuda's stream handles (the runtime API works in the context current
on the thread, pycuda's); otherwise :attr:`graphs_unavailable` says what to install and
``begin_capture`` raises that one-line DependencyError instead of an AttributeError.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from hisd_edge.cuda.api import CudaBackend, DeviceBuffer, DeviceInfo, Event, Graph, HostBuffer, Stream
from hisd_edge.errors import DependencyError, DeviceError

NO_GRAPHS = (
    "pycuda cannot capture CUDA graphs (no pycuda release has stream capture); pip install cuda-python to capture "
    "them through it on pycuda's streams, or run without CUDA graphs"
)


def _driver() -> Any:
    import pycuda.driver as cuda

    return cuda


def _graph_runtime() -> Any:
    """cuda-python's runtime module where it is installed (for graph capture), else None."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    return runtime


class _DeviceBuffer(DeviceBuffer):
    def __init__(self, allocation: Any, nbytes: int):
        self._allocation, self.ptr, self.nbytes = allocation, int(allocation), nbytes

    def free(self) -> None:
        if self._allocation is not None:
            self._allocation.free()
            self._allocation, self.ptr = None, 0


class _HostBuffer(HostBuffer):
    def __init__(self, array: np.ndarray, device_ptr: Any):
        self.array, self.device_ptr = array, device_ptr

    def free(self) -> None:
        base = getattr(self.array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()


class _Stream(Stream):
    def __init__(self, stream: Any):
        self.raw, self.handle = stream, int(stream.handle)

    def synchronize(self) -> None:
        self.raw.synchronize()


class _Event(Event):
    def __init__(self, event: Any):
        self.raw = event

    def record(self, stream: Stream) -> None:
        self.raw.record(_raw(stream))

    def synchronize(self) -> None:
        self.raw.synchronize()

    def elapsed_ms(self, start: Event) -> float:
        return float(self.raw.time_since(_raw(start)))


class _Graph(Graph):
    """A graph captured through cuda-python's runtime API on a pycuda stream."""

    def __init__(self, rt: Any, graph: Any, graph_exec: Any):
        self._rt, self._graph, self._exec = rt, graph, graph_exec

    def launch(self, stream: Stream) -> None:
        from hisd_edge.cuda.cudart_backend import _check

        _check(self._rt, self._rt.cudaGraphLaunch(self._exec, _raw(stream).handle), "cudaGraphLaunch")

    def free(self) -> None:
        from hisd_edge.cuda.cudart_backend import _check

        if self._exec is not None:
            _check(self._rt, self._rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            _check(self._rt, self._rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._exec = self._graph = None


def _raw(obj: Any) -> Any:
    if not isinstance(obj, (_Stream, _Event)):
        raise TypeError(f"{type(obj).__name__} does not come from the pycuda backend")
    return obj.raw


class PyCudaBackend(CudaBackend):
    """pycuda on device ``index``, in a context of its own made current on this thread."""

    name = "pycuda"

    def __init__(self, index: int = 0, spin_wait: bool = False):
        super().__init__()
        cuda = _driver()
        self._cuda = cuda
        self._rt = _graph_runtime()
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as exc:
            raise DeviceError(
                f"no usable CUDA device ({exc}); check the NVIDIA driver (nvidia-smi, or tegrastats on a Jetson)"
            ) from None
        if count <= index:
            raise DeviceError(f"no CUDA device {index} ({count} found); check the NVIDIA driver")
        dev = cuda.Device(index)
        flags = cuda.ctx_flags.MAP_HOST | (cuda.ctx_flags.SCHED_SPIN if spin_wait else cuda.ctx_flags.SCHED_AUTO)
        self._context = dev.make_context(flags)
        attr = cuda.device_attribute
        major, minor = dev.compute_capability()
        self._device = DeviceInfo(
            index=index,
            name=str(dev.name()).strip(),
            compute_capability=(int(major), int(minor)),
            integrated=bool(dev.get_attribute(attr.INTEGRATED)),
            can_map_host_memory=bool(dev.get_attribute(attr.CAN_MAP_HOST_MEMORY)),
            total_memory_bytes=int(dev.total_memory()),
            multiprocessor_count=int(dev.get_attribute(attr.MULTIPROCESSOR_COUNT)),
        )

    @property
    def device(self) -> DeviceInfo:
        return self._device

    def memory_info(self) -> Optional[Tuple[int, int]]:
        free, total = self._cuda.mem_get_info()
        return int(free), int(total)

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        return self._own(_DeviceBuffer(self._cuda.mem_alloc(max(int(nbytes), 1)), int(nbytes)))

    def alloc_host(self, shape: Tuple[int, ...], dtype: Any, mapped: bool = False) -> HostBuffer:
        cuda = self._cuda
        if mapped:
            array = cuda.pagelocked_empty(tuple(shape), dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
            device_ptr = int(array.base.get_device_pointer())
        else:
            array = cuda.pagelocked_empty(tuple(shape), dtype)
            device_ptr = None
        return self._own(_HostBuffer(array, device_ptr))

    def copy_htod_async(self, dst_ptr: int, src: np.ndarray, stream: Stream) -> None:
        self._cuda.memcpy_htod_async(dst_ptr, src, _raw(stream))

    def copy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream: Stream) -> None:
        self._cuda.memcpy_dtoh_async(dst, src_ptr, _raw(stream))

    def copy_dtod_async(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
        self._cuda.memcpy_dtod_async(dst_ptr, src_ptr, nbytes, _raw(stream))

    def create_stream(self) -> Stream:
        return self._own(_Stream(self._cuda.Stream()))

    def create_event(self, timing: bool = True) -> Event:
        flags = 0 if timing else self._cuda.event_flags.DISABLE_TIMING
        return self._own(_Event(self._cuda.Event(flags)))

    @property
    def graphs_unavailable(self) -> Optional[str]:
        return None if self._rt is not None else NO_GRAPHS

    def begin_capture(self, stream: Stream) -> None:
        from hisd_edge.cuda.cudart_backend import _check

        rt = self._rt
        if rt is None:
            raise DependencyError(NO_GRAPHS)
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(rt, rt.cudaStreamBeginCapture(_raw(stream).handle, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Stream) -> Graph:
        from hisd_edge.cuda.cudart_backend import _check

        rt = self._rt
        if rt is None:
            raise DependencyError(NO_GRAPHS)
        graph = _check(rt, rt.cudaStreamEndCapture(_raw(stream).handle), "cudaStreamEndCapture")
        graph_exec = _check(rt, rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        return self._own(_Graph(rt, graph, graph_exec))

    def close_impl(self) -> None:
        if self._context is not None:
            self._context.pop()
            self._context.detach()
            self._context = None
