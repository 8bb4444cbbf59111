"""The CUDA interface on the CPU: binding selection and its errors, and the test double's semantics
(the TensorRT contract tests rely on the double honouring pointer identity, stream order and capture)."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from hisd_edge.cuda import DeviceInfo, available_bindings, open_cuda
from hisd_edge.errors import DependencyError, DeviceError, InputError


def _load_double():
    name = "hisd_test_cuda_double"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("cuda_double.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cuda_double = _load_double()


def _has_gpu() -> bool:
    try:
        from cuda.bindings import runtime

        err, count = runtime.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:
        return False


# -- selection and errors ------------------------------------------------------------------------
def test_importing_the_cuda_package_imports_no_binding():
    code = "import sys, hisd_edge.cuda; print(any(m == 'pycuda' or m.startswith('cuda.') or m == 'cuda' for m in sys.modules))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_binding_installed_is_one_line_dependency_error_with_install_hint(monkeypatch):
    import hisd_edge.cuda as hc

    monkeypatch.setattr(hc, "available_bindings", list)
    with pytest.raises(DependencyError) as err:
        open_cuda()
    message = str(err.value)
    assert "\n" not in message and "pip install pycuda" in message and "pip install cuda-python" in message


def test_explicit_binding_that_cannot_import_says_what_failed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)  # import pycuda -> ImportError
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(DependencyError, match="pycuda"):
        open_cuda("pycuda")


def test_unknown_binding_name_is_input_error():
    with pytest.raises(InputError, match="pycuda or cuda-python"):
        open_cuda("cupy")


@pytest.mark.skipif("cuda-python" not in available_bindings(), reason="cuda-python is not installed here")
def test_cuda_python_without_a_gpu_is_a_device_error_not_a_crash():
    if _has_gpu():
        pytest.skip("a GPU is present: this checks the no-driver path")
    with pytest.raises(DeviceError) as err:
        open_cuda("cuda-python")
    assert "nvidia-smi" in str(err.value) and "\n" not in str(err.value)


def test_device_key_is_directory_safe_and_names_the_compute_capability():
    info = DeviceInfo(0, "NVIDIA GeForce RTX 4090", (8, 9), False, True, 24 << 30)
    assert info.key == "nvidia-geforce-rtx-4090-sm89"
    assert DeviceInfo(0, "Orin", (8, 7), True, True, 8 << 30).key == "orin-sm87"
    assert info.to_dict()["compute_capability"] == "8.9"


def test_device_key_tells_orin_modules_apart_by_their_multiprocessors():
    nano, agx = cuda_double.JETSON_ORIN, cuda_double.AGX_ORIN
    assert (nano.name, nano.compute_capability) == (agx.name, agx.compute_capability)  # what CUDA reports for both
    assert (nano.key, agx.key) == ("orin-sm87-8sm", "orin-sm87-16sm")
    assert agx.to_dict()["multiprocessor_count"] == 16 and agx.to_dict()["key"] == "orin-sm87-16sm"


def test_both_bindings_read_the_multiprocessor_count(monkeypatch):
    from types import SimpleNamespace as NS

    import hisd_edge.cuda.cudart_backend as cudart
    import hisd_edge.cuda.pycuda_backend as pyc

    ok = object()
    prop = NS(
        name=b"Orin\0\0",
        major=8,
        minor=7,
        integrated=1,
        canMapHostMemory=1,
        totalGlobalMem=64 << 30,
        multiProcessorCount=16,
    )
    rt = NS(
        cudaError_t=NS(cudaSuccess=ok),
        cudaGetDeviceCount=lambda: (ok, 1),
        cudaSetDevice=lambda i: (ok,),
        cudaDeviceMapHost=8,
        cudaDeviceScheduleSpin=1,
        cudaDeviceScheduleAuto=0,
        cudaSetDeviceFlags=lambda f: (ok,),
        cudaGetDeviceProperties=lambda i: (ok, prop),
    )
    monkeypatch.setattr(cudart, "_runtime", lambda: rt)
    assert cudart.CudaPythonBackend(0).device.key == "orin-sm87-16sm"

    attrs = NS(INTEGRATED="integrated", CAN_MAP_HOST_MEMORY="map", MULTIPROCESSOR_COUNT="sms")
    dev = NS(
        make_context=lambda flags: None,
        compute_capability=lambda: (8, 7),
        name=lambda: "Orin",
        get_attribute=lambda a: {"integrated": 1, "map": 1, "sms": 8}[a],
        total_memory=lambda: 8 << 30,
    )
    driver = NS(
        init=lambda: None,
        Error=RuntimeError,
        device_attribute=attrs,
        ctx_flags=NS(MAP_HOST=8, SCHED_SPIN=1, SCHED_AUTO=0),
    )
    driver.Device = type("Device", (), {"count": staticmethod(lambda: 1), "__new__": lambda cls, i: dev})
    monkeypatch.setattr(pyc, "_driver", lambda: driver)
    assert pyc.PyCudaBackend(0).device.key == "orin-sm87-8sm"


def test_cuda_python_host_array_is_a_view_of_the_pinned_memory():
    from hisd_edge.cuda.cudart_backend import _host_array

    memory = (ctypes.c_float * 6)(*range(6))
    view = _host_array(ctypes.addressof(memory), (2, 3), np.float32)
    assert view.tolist() == [[0, 1, 2], [3, 4, 5]]
    view[1, 2] = 42.0
    assert memory[5] == 42.0


# -- the double honours what the TensorRT backend relies on -----------------------------------------
def test_double_pointer_identity_and_row_offsets():
    cuda = cuda_double.FakeCuda()
    stream = cuda.create_stream()
    buf = cuda.alloc_device(4 * 4 * 3)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    cuda.copy_htod_async(buf.ptr, rows, stream)
    other = cuda.alloc_device(2 * 4 * 3)
    cuda.copy_dtod_async(other.ptr, buf.ptr + 2 * 12, 2 * 12, stream)  # rows 2..3
    out = np.empty((2, 3), dtype=np.float32)
    cuda.copy_dtoh_async(out, other.ptr, stream)
    assert out.tolist() == rows[2:].tolist()
    assert cuda.stats["pageable_copies"] == 2  # numpy arrays, not pinned: the backend must avoid this


def test_double_refuses_illegal_addresses_and_overlapping_copies():
    cuda = cuda_double.FakeCuda()
    stream = cuda.create_stream()
    buf = cuda.alloc_device(64)
    with pytest.raises(cuda_double.FakeCudaError, match="past the end"):
        cuda.copy_dtod_async(buf.ptr, buf.ptr + 32, 48, stream)
    with pytest.raises(cuda_double.FakeCudaError, match="overlapping"):
        cuda.copy_dtod_async(buf.ptr, buf.ptr + 8, 16, stream)
    host = np.zeros(4, dtype=np.float32)
    with pytest.raises(cuda_double.FakeCudaError, match="illegal address"):
        cuda.copy_dtoh_async(host, 0x1234, stream)
    freed = buf.ptr
    buf.free()
    with pytest.raises(cuda_double.FakeCudaError, match="illegal address"):
        cuda.copy_dtoh_async(host, freed, stream)  # use after free


def test_double_mapped_memory_is_zero_copy_and_capture_replays_at_the_same_addresses():
    cuda = cuda_double.FakeCuda(cuda_double.JETSON_ORIN)
    assert cuda.zero_copy_preferred
    stream = cuda.create_stream()
    mapped = cuda.alloc_host((4,), np.float32, mapped=True)
    dst = cuda.alloc_device(16)
    out = cuda.alloc_host((4,), np.float32)
    cuda.begin_capture(stream)
    cuda.copy_dtod_async(dst.ptr, mapped.device_ptr, 16, stream)
    cuda.copy_dtoh_async(out.array, dst.ptr, stream)
    with pytest.raises(cuda_double.FakeCudaError, match="capturing"):
        stream.synchronize()
    graph = cuda.end_capture(stream)
    assert cuda.stats["dtod_copies"] == 0  # captured, not run
    for value in (1.0, 2.5):
        mapped.array[:] = value  # the host writes; the device reads the same memory
        graph.launch(stream)
        assert out.array.tolist() == [value] * 4
    assert cuda.stats["pageable_copies"] == 0


def test_double_events_time_in_stream_order():
    cuda = cuda_double.FakeCuda()
    stream = cuda.create_stream()
    start, end = cuda.create_event(), cuda.create_event()
    start.record(stream)
    end.record(stream)
    end.synchronize()
    assert end.elapsed_ms(start) >= 0.0
    untimed = cuda.create_event(timing=False)
    untimed.record(stream)
    with pytest.raises(cuda_double.FakeCudaError):
        untimed.elapsed_ms(start)
