"""Runs in a subprocess with NVIDIA's real cuda-python (``cuda.bindings``) importable and no GPU; never
imported by the test suite. Prints one JSON object: per call the project makes, "ok" or the TypeError.

Without a driver every runtime call returns an error code instead of raising, so hisd-edge's own
code paths run to completion here: the backend turns that code into a CudaCallError (a call the
real API accepted) or, where an argument has the wrong kind, cuda-python raises TypeError before
any CUDA call (what this looks for). The objects the calls need (a stream, an event, a graph) are
cuda-python's own null handles.
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any, Callable, Dict

import numpy as np
from cuda.bindings import runtime as rt

from hisd_edge.cuda import cudart_backend as cb
from hisd_edge.cuda import pycuda_backend as pb


def _outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except TypeError as exc:
        return f"TypeError: {exc}"
    except (cb.CudaCallError, Exception):  # an error code from the (absent) driver: the call was accepted
        return "ok"
    return "ok"


def main() -> None:
    backend: Any = object.__new__(cb.CudaPythonBackend)
    backend._rt, backend._owned = rt, []
    stream = cb._Stream.__new__(cb._Stream)
    stream._rt, stream.raw, stream.handle = rt, rt.cudaStream_t(), 0
    event = cb._Event(rt, rt.cudaEvent_t())
    other = cb._Event(rt, rt.cudaEvent_t())
    host = np.zeros(16, dtype=np.float32)
    calls: Dict[str, Callable[[], Any]] = {
        "CudaPythonBackend(0)": lambda: cb.CudaPythonBackend(0),
        "memory_info": backend.memory_info,
        "alloc_device": lambda: backend.alloc_device(64),
        "alloc_host(mapped)": lambda: backend.alloc_host((4,), np.float32, mapped=True),
        "copy_htod_async": lambda: backend.copy_htod_async(0x1000, host, stream),
        "copy_dtoh_async": lambda: backend.copy_dtoh_async(host, 0x1000, stream),
        "copy_dtod_async": lambda: backend.copy_dtod_async(0x1000, 0x2000, 64, stream),
        "create_stream": backend.create_stream,
        "create_event": backend.create_event,
        "stream.synchronize": stream.synchronize,
        "event.record": lambda: event.record(stream),
        "event.synchronize": event.synchronize,
        "event.elapsed_ms": lambda: event.elapsed_ms(other),
        "begin_capture": lambda: backend.begin_capture(stream),
        "end_capture": lambda: backend.end_capture(stream),
        "graph.launch": lambda: cb._Graph(rt, rt.cudaGraph_t(), rt.cudaGraphExec_t()).launch(stream),
        "graph.free": lambda: cb._Graph(rt, rt.cudaGraph_t(), rt.cudaGraphExec_t()).free(),
        "device_buffer.free": lambda: cb._DeviceBuffer(rt, 0x1000, 64).free(),
        "host_buffer.free": lambda: cb._HostBuffer(rt, 0x1000, host, None).free(),
    }
    # pycuda's streams with graphs through cuda-python: the runtime calls get pycuda's int handles
    pycuda_backend: Any = object.__new__(pb.PyCudaBackend)
    pycuda_backend._rt, pycuda_backend._owned = pb._graph_runtime(), []
    pycuda_stream = pb._Stream(types.SimpleNamespace(handle=0x5000))
    calls["pycuda: begin_capture"] = lambda: pycuda_backend.begin_capture(pycuda_stream)
    calls["pycuda: end_capture"] = lambda: pycuda_backend.end_capture(pycuda_stream)
    calls["pycuda: graph.launch"] = lambda: pb._Graph(rt, rt.cudaGraph_t(), rt.cudaGraphExec_t()).launch(pycuda_stream)
    calls["pycuda: graph.free"] = lambda: pb._Graph(rt, rt.cudaGraph_t(), rt.cudaGraphExec_t()).free()
    # canaries: arguments of the wrong kind must be reported
    calls["canary: cudaMalloc('x')"] = lambda: rt.cudaMalloc("x")
    calls["canary: cudaGraphLaunch(exec, 'stream')"] = lambda: rt.cudaGraphLaunch(rt.cudaGraphExec_t(), "stream")
    sys.stdout.write(json.dumps({name: _outcome(call) for name, call in calls.items()}))


if __name__ == "__main__":
    main()
