"""The CUDA layer for real, on a GPU: every installed binding (cuda-python, and pycuda where it imports).

Skipped without a GPU (``gpu`` marker). Run on a GPU machine with::

    pytest tests/cuda/test_cuda_real.py -v -s     # -s shows the timings printed below

What runs: device buffers and host<->device round trips; device-to-device chaining at row offsets
(the compaction path); events timing a copy; pinned memory; mapped pinned memory written by the
host and read by the device (zero-copy); a CUDA graph captured from a stream and replayed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from hisd_edge.cuda import available_bindings, open_cuda

pytestmark = pytest.mark.gpu

BINDINGS = available_bindings()


@pytest.fixture(params=BINDINGS or ["none"])
def cuda(request):
    if request.param == "none":
        pytest.skip("no CUDA Python binding installed")
    backend = open_cuda(request.param)
    yield backend
    backend.close()


def test_device_info(cuda):
    info = cuda.device
    print(
        f"\n{cuda.name}: {info.name} sm {info.compute_capability_str}, integrated={info.integrated}, "
        f"map host={info.can_map_host_memory}, {info.total_memory_bytes >> 20} MiB, key {info.key}"
    )
    assert info.compute_capability[0] >= 5 and info.total_memory_bytes > 0
    free, total = cuda.memory_info()
    assert 0 < free <= total


def test_roundtrip_chaining_and_events(cuda):
    stream = cuda.create_stream()
    rows, width = 64, 256
    src = cuda.alloc_host((rows, width), np.float32)
    src.array[:] = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    a = cuda.alloc_device(src.nbytes)
    b = cuda.alloc_device(src.nbytes)
    out = cuda.alloc_host((rows, width), np.float32)
    start, end = cuda.create_event(), cuda.create_event()
    cuda.copy_htod_async(a.ptr, src.array, stream)
    start.record(stream)
    row_bytes = width * 4
    # compaction-style gather: rows 10..19 then 40..41 to the front of b
    cuda.copy_dtod_async(b.ptr, a.ptr + 10 * row_bytes, 10 * row_bytes, stream)
    cuda.copy_dtod_async(b.ptr + 10 * row_bytes, a.ptr + 40 * row_bytes, 2 * row_bytes, stream)
    end.record(stream)
    cuda.copy_dtoh_async(out.array[:12], b.ptr, stream)
    stream.synchronize()
    expected = np.concatenate([src.array[10:20], src.array[40:42]])
    np.testing.assert_array_equal(out.array[:12], expected)
    elapsed = end.elapsed_ms(start)
    print(f"\n{cuda.name}: two D2D row-run copies took {elapsed * 1e3:.1f} us of device time")
    assert elapsed >= 0.0


def test_mapped_pinned_memory_is_visible_to_the_device(cuda):
    if not cuda.device.can_map_host_memory:
        pytest.skip("device cannot map host memory")
    stream = cuda.create_stream()
    mapped = cuda.alloc_host((1024,), np.float32, mapped=True)
    assert mapped.device_ptr
    mapped.array[:] = 3.5
    dev = cuda.alloc_device(mapped.nbytes)
    back = cuda.alloc_host((1024,), np.float32)
    cuda.copy_dtod_async(dev.ptr, mapped.device_ptr, mapped.nbytes, stream)
    cuda.copy_dtoh_async(back.array, dev.ptr, stream)
    stream.synchronize()
    assert np.all(back.array == 3.5)


def test_graph_capture_replays_at_fixed_addresses(cuda):
    stream = cuda.create_stream()
    host_in = cuda.alloc_host((256,), np.float32)
    host_out = cuda.alloc_host((256,), np.float32)
    a, b = cuda.alloc_device(host_in.nbytes), cuda.alloc_device(host_in.nbytes)
    cuda.begin_capture(stream)
    cuda.copy_htod_async(a.ptr, host_in.array, stream)
    cuda.copy_dtod_async(b.ptr, a.ptr, host_in.nbytes, stream)
    cuda.copy_dtoh_async(host_out.array, b.ptr, stream)
    graph = cuda.end_capture(stream)
    timings = []
    for value in (1.0, 2.0, 7.0):
        host_in.array[:] = value
        begin = time.perf_counter()
        graph.launch(stream)
        stream.synchronize()
        timings.append((time.perf_counter() - begin) * 1e6)
        assert np.all(host_out.array == value)
    print(f"\n{cuda.name}: graph launch + sync {min(timings):.1f} us (best of {len(timings)})")
