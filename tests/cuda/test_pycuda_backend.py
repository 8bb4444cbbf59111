"""The pycuda backend against a pycuda double with exactly pycuda's surface (pycuda does not build here).

pycuda has no CUDA-graph API in any release: with pycuda alone, graphs are reported unavailable
in one line (never an AttributeError from a stage's second run); with cuda-python installed too,
graphs are captured through its runtime API on pycuda's streams."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from hisd_edge.errors import DependencyError

HERE = Path(__file__).resolve().parent


def _load(name):
    module_name = f"hisd_test_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


cuda_double = _load("cuda_double")
pycuda_double = _load("pycuda_double")


@pytest.fixture()
def pycuda(monkeypatch):
    """open(runtime=None|"fake") -> (PyCudaBackend on the pycuda double, fake cuda-python runtime or None)."""
    import hisd_edge.cuda.pycuda_backend as pyc

    def open_backend(runtime=None):
        memory = cuda_double.FakeMemory()
        driver = pycuda_double.make_driver(memory, cuda_double.JETSON_ORIN)
        rt = pycuda_double.make_runtime(driver) if runtime == "fake" else None
        monkeypatch.setattr(pyc, "_driver", lambda: driver)
        monkeypatch.setattr(pyc, "_graph_runtime", lambda: rt)
        return pyc.PyCudaBackend(0), rt

    return open_backend


def test_the_double_has_exactly_pycudas_stream():
    memory = cuda_double.FakeMemory()
    driver = pycuda_double.make_driver(memory, cuda_double.DISCRETE)
    public = sorted(n for n in dir(driver.Stream) if not n.startswith("_"))
    assert tuple(public) == pycuda_double.STREAM_API  # no begin_capture, end_capture or Graph: none exist in pycuda


def test_copies_and_mapped_memory_through_pycuda(pycuda):
    cuda, _ = pycuda()
    assert cuda.device.key == "orin-sm87-8sm" and cuda.zero_copy_preferred
    stream = cuda.create_stream()
    host = cuda.alloc_host((4, 3), np.float32)
    host.array[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
    dev = cuda.alloc_device(host.nbytes)
    out = cuda.alloc_host((2, 3), np.float32)
    cuda.copy_htod_async(dev.ptr, host.array, stream)
    cuda.copy_dtoh_async(out.array, dev.ptr + 2 * 12, stream)
    stream.synchronize()
    assert out.array.tolist() == host.array[2:].tolist()
    mapped = cuda.alloc_host((4,), np.float32, mapped=True)
    assert mapped.device_ptr
    cuda.close()


def test_pycuda_alone_reports_graphs_unavailable_in_one_line(pycuda):
    cuda, _ = pycuda(runtime=None)
    reason = cuda.graphs_unavailable
    assert reason is not None and "\n" not in reason and "pip install cuda-python" in reason
    stream = cuda.create_stream()
    with pytest.raises(DependencyError, match="pip install cuda-python"):  # not AttributeError
        cuda.begin_capture(stream)
    with pytest.raises(DependencyError):
        cuda.end_capture(stream)


def test_with_cuda_python_graphs_are_captured_through_it_on_pycudas_stream(pycuda):
    cuda, rt = pycuda(runtime="fake")
    assert cuda.graphs_unavailable is None
    stream = cuda.create_stream()
    host_in = cuda.alloc_host((8,), np.float32)
    host_out = cuda.alloc_host((8,), np.float32)
    a, b = cuda.alloc_device(32), cuda.alloc_device(32)
    cuda.begin_capture(stream)
    cuda.copy_htod_async(a.ptr, host_in.array, stream)
    cuda.copy_dtod_async(b.ptr, a.ptr, 32, stream)
    cuda.copy_dtoh_async(host_out.array, b.ptr, stream)
    graph = cuda.end_capture(stream)
    assert host_out.array.tolist() == [0.0] * 8  # captured, not run
    for value in (1.5, 4.0):
        host_in.array[:] = value
        graph.launch(stream)
        assert host_out.array.tolist() == [value] * 8
    assert rt.calls[:3] == ["cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate"]
    graph.free()
    cuda.close()
