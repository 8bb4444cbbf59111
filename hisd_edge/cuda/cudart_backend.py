"""The CUDA interface over cuda-python's runtime bindings (``from cuda.bindings import runtime``).

This is the layout of cuda-bindings 12.x/13.x; the older ``from cuda import cudart`` layout was
removed in 13.0. Every call returns ``(error, value...)``; :func:`_check` turns a non-success code
into an exception that names the call. The runtime API works in the device's primary context,
the same one TensorRT uses.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional, Tuple

import numpy as np

from hisd_edge.cuda.api import CudaBackend, DeviceBuffer, DeviceInfo, Event, Graph, HostBuffer, Stream, nbytes_of
from hisd_edge.errors import DeviceError


class CudaCallError(RuntimeError):
    """A CUDA runtime call failed after the device was opened (a bug or a device fault, not user input)."""


def _runtime() -> Any:
    from cuda.bindings import runtime

    return runtime


def _error_text(rt: Any, err: Any) -> str:
    try:
        name = rt.cudaGetErrorName(err)[1]
        text = rt.cudaGetErrorString(err)[1]
        return f"{name.decode() if isinstance(name, bytes) else name}: {text.decode() if isinstance(text, bytes) else text}"
    except Exception:
        return str(err)


def _check(rt: Any, result: Any, what: str) -> Any:
    """Unpack ``(err, *values)``; raise on error; return None, the single value or the tuple of values."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != rt.cudaError_t.cudaSuccess:
        raise CudaCallError(f"{what} failed ({_error_text(rt, err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _handle(obj: Any) -> int:
    """The integer value of a cuda-python handle (stream, event); int() is deprecated in 13.x."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle

        return int(get_cuda_native_handle(obj))
    except ImportError:  # cuda-python 12.x before the helper existed
        return int(obj)


def _host_array(ptr: int, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    nbytes = nbytes_of(shape, dtype)
    raw = (ctypes.c_ubyte * max(nbytes, 1)).from_address(ptr)
    return np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)


def _raw(obj: Any) -> Any:
    """The cuda-python object behind one of this module's streams or events."""
    if not isinstance(obj, (_Stream, _Event)):
        raise TypeError(f"{type(obj).__name__} does not come from the cuda-python backend")
    return obj.raw


class _DeviceBuffer(DeviceBuffer):
    def __init__(self, rt: Any, ptr: int, nbytes: int):
        self._rt, self.ptr, self.nbytes = rt, ptr, nbytes

    def free(self) -> None:
        if self.ptr:
            _check(self._rt, self._rt.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class _HostBuffer(HostBuffer):
    def __init__(self, rt: Any, host_ptr: int, array: np.ndarray, device_ptr: Any):
        self._rt, self._host_ptr, self.array, self.device_ptr = rt, host_ptr, array, device_ptr

    def free(self) -> None:
        if self._host_ptr:
            _check(self._rt, self._rt.cudaFreeHost(self._host_ptr), "cudaFreeHost")
            self._host_ptr = 0


class _Stream(Stream):
    def __init__(self, rt: Any, stream: Any):
        self._rt, self.raw, self.handle = rt, stream, _handle(stream)

    def synchronize(self) -> None:
        _check(self._rt, self._rt.cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")

    def free(self) -> None:
        if self.raw is not None:
            _check(self._rt, self._rt.cudaStreamDestroy(self.raw), "cudaStreamDestroy")
            self.raw = None


class _Event(Event):
    def __init__(self, rt: Any, event: Any):
        self._rt, self.raw = rt, event

    def record(self, stream: Stream) -> None:
        _check(self._rt, self._rt.cudaEventRecord(self.raw, _raw(stream)), "cudaEventRecord")

    def synchronize(self) -> None:
        _check(self._rt, self._rt.cudaEventSynchronize(self.raw), "cudaEventSynchronize")

    def elapsed_ms(self, start: Event) -> float:
        return float(_check(self._rt, self._rt.cudaEventElapsedTime(_raw(start), self.raw), "cudaEventElapsedTime"))

    def free(self) -> None:
        if self.raw is not None:
            _check(self._rt, self._rt.cudaEventDestroy(self.raw), "cudaEventDestroy")
            self.raw = None


class _Graph(Graph):
    def __init__(self, rt: Any, graph: Any, graph_exec: Any):
        self._rt, self._graph, self._exec = rt, graph, graph_exec

    def launch(self, stream: Stream) -> None:
        _check(self._rt, self._rt.cudaGraphLaunch(self._exec, _raw(stream)), "cudaGraphLaunch")

    def free(self) -> None:
        if self._exec is not None:
            _check(self._rt, self._rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            _check(self._rt, self._rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._exec = self._graph = None


class CudaPythonBackend(CudaBackend):
    """cuda-python (``cuda-bindings``) on device ``index``; ``spin_wait`` trades CPU for wake-up latency."""

    name = "cuda-python"

    def __init__(self, index: int = 0, spin_wait: bool = False):
        super().__init__()
        rt = _runtime()
        self._rt = rt
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess or count <= index:
            reason = _error_text(rt, err) if err != rt.cudaError_t.cudaSuccess else f"{count} device(s)"
            raise DeviceError(
                f"no usable CUDA device {index} ({reason}); check the NVIDIA driver (nvidia-smi, or tegrastats on a Jetson)"
            )
        _check(rt, rt.cudaSetDevice(index), "cudaSetDevice")
        flags = rt.cudaDeviceMapHost | (rt.cudaDeviceScheduleSpin if spin_wait else rt.cudaDeviceScheduleAuto)
        # Flags can only change before the primary context is active; if TensorRT or another
        # library got there first, keep its settings (mapping is on by default with UVA).
        rt.cudaSetDeviceFlags(flags)
        prop = _check(rt, rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        self._device = DeviceInfo(
            index=index,
            name=str(name).strip(),
            compute_capability=(int(prop.major), int(prop.minor)),
            integrated=bool(prop.integrated),
            can_map_host_memory=bool(prop.canMapHostMemory),
            total_memory_bytes=int(prop.totalGlobalMem),
            multiprocessor_count=int(prop.multiProcessorCount),
        )

    @property
    def device(self) -> DeviceInfo:
        return self._device

    def memory_info(self) -> Optional[Tuple[int, int]]:
        free, total = _check(self._rt, self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        ptr = _check(self._rt, self._rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})")
        return self._own(_DeviceBuffer(self._rt, int(ptr), int(nbytes)))

    def alloc_host(self, shape: Tuple[int, ...], dtype: Any, mapped: bool = False) -> HostBuffer:
        rt = self._rt
        nbytes = nbytes_of(shape, dtype)
        flags = rt.cudaHostAllocMapped if mapped else rt.cudaHostAllocDefault
        host_ptr = int(_check(rt, rt.cudaHostAlloc(max(nbytes, 1), flags), f"cudaHostAlloc({nbytes})"))
        device_ptr = (
            int(_check(rt, rt.cudaHostGetDevicePointer(host_ptr, 0), "cudaHostGetDevicePointer")) if mapped else None
        )
        return self._own(_HostBuffer(rt, host_ptr, _host_array(host_ptr, tuple(shape), dtype), device_ptr))

    def copy_htod_async(self, dst_ptr: int, src: np.ndarray, stream: Stream) -> None:
        rt = self._rt
        _check(
            rt,
            rt.cudaMemcpyAsync(
                dst_ptr, src.ctypes.data, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, _raw(stream)
            ),
            "cudaMemcpyAsync(HtoD)",
        )

    def copy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream: Stream) -> None:
        rt = self._rt
        _check(
            rt,
            rt.cudaMemcpyAsync(
                dst.ctypes.data, src_ptr, dst.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, _raw(stream)
            ),
            "cudaMemcpyAsync(DtoH)",
        )

    def copy_dtod_async(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
        rt = self._rt
        _check(
            rt,
            rt.cudaMemcpyAsync(dst_ptr, src_ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, _raw(stream)),
            "cudaMemcpyAsync(DtoD)",
        )

    def create_stream(self) -> Stream:
        rt = self._rt
        raw = _check(rt, rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        return self._own(_Stream(rt, raw))

    def create_event(self, timing: bool = True) -> Event:
        rt = self._rt
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        return self._own(_Event(rt, _check(rt, rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")))

    def begin_capture(self, stream: Stream) -> None:
        rt = self._rt
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(rt, rt.cudaStreamBeginCapture(_raw(stream), mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Stream) -> Graph:
        rt = self._rt
        graph = _check(rt, rt.cudaStreamEndCapture(_raw(stream)), "cudaStreamEndCapture")
        graph_exec = _check(rt, rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        return self._own(_Graph(rt, graph, graph_exec))
