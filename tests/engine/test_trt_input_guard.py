"""The input guard on the TensorRT backend (against the TensorRT and CUDA test doubles).

The guard reads stage 0's pooled features through the backend interface; on TensorRT they live
in device memory, so the backend copies ``feat0`` of the batch's rows to a pinned host buffer once
per batch. Decisions, flags and scores must equal the ONNX Runtime backend's.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.engine import BuildOptions, build_engines
from hisd_edge.preprocess import preprocess_batch
from hisd_edge.runtime import create_backend, open_runtime
from hisd_edge.runtime.guard import fit_guard, guard_features


@pytest.fixture()
def trt_path(fake_trt, bundle_copy):
    cuda_double = sys.modules["hisd_test_cuda_double"]
    _trt, cuda = fake_trt("10.13", cuda_double.DISCRETE)
    build_engines(Bundle.open(bundle_copy), BuildOptions(precision="fp32", progress=False), cuda=cuda)
    cuda.stats.clear()
    return bundle_copy, cuda


def _guard(bundle):
    from hisd_edge.data import load_samples

    x = load_samples("default:val").tensors(bundle.preprocessing)[:400]
    with create_backend("onnxruntime", bundle) as backend:
        backend.start(x)
        r0 = backend.run_stage(0)
        return fit_guard(guard_features(x, r0.pooled_features()), r0.exit_output().argmax(1), 0.02)


@pytest.mark.parametrize("rows", [1, 12])
def test_guard_decisions_and_scores_match_onnxruntime(trt_path, rows):
    path, cuda = trt_path
    bundle = Bundle.open(path)
    guard = _guard(bundle)
    from hisd_edge.data import load_samples

    digits = load_samples("default:test").tensors(bundle.preprocessing)[: rows // 2 + 1]
    rng = np.random.default_rng(0)
    strange = preprocess_batch(list(rng.integers(0, 256, (rows, 28, 28)).astype(np.uint8)), bundle.preprocessing)
    x = np.concatenate([digits, strange])[:rows] if rows > 1 else strange[:1]
    thresholds = [0.0, 0.0, None]  # everyone would leave at exit 0: only the guard keeps rows in
    with open_runtime(path, backend="onnxruntime", thresholds=thresholds, guard=guard) as ort:
        want, want_trace = ort.infer_tensors(x)
    with open_runtime(path, backend="tensorrt", precision="fp32", thresholds=thresholds, guard=guard) as rt:
        have, have_trace = rt.infer_tensors(x)
    assert [(r.exit, r.class_index, r.flags) for r in have] == [(r.exit, r.class_index, r.flags) for r in want]
    np.testing.assert_allclose([r.ood_score for r in have], [r.ood_score for r in want], rtol=1e-5)
    assert have_trace.stage_rows == want_trace.stage_rows
    assert any("out_of_distribution" in r.flags for r in have)
    # one feat0 read-back per batch into a pinned buffer (allocated once), not a pageable copy
    assert cuda.stats["pageable_copies"] == 0 and cuda.stats["pinned_allocs"] >= 1


def test_pooled_features_are_read_from_device_memory(trt_path):
    path, _cuda = trt_path
    bundle = Bundle.open(path)
    from hisd_edge.data import load_samples

    x = load_samples("default:val").tensors(bundle.preprocessing)[:5]
    with create_backend("onnxruntime", bundle) as ort:
        ort.start(x)
        want0 = ort.run_stage(0).pooled_features()
        want1 = ort.run_stage(1, keep_rows=[4, 0]).pooled_features()
    with create_backend("tensorrt", bundle, precision="fp32") as trt:
        trt.start(x)
        have0 = trt.run_stage(0).pooled_features()
        have1 = trt.run_stage(1, keep_rows=[4, 0]).pooled_features()
        r2 = trt.run_stage(2)
        with pytest.raises(RuntimeError, match="passes no features on"):
            r2.pooled_features()
    np.testing.assert_allclose(have0, want0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(have1, want1, rtol=1e-5, atol=1e-6)
