"""The ONNX Runtime backend against the interface contract and against the monolithic model."""

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.errors import BundleError, DependencyError, HisdError, InputError
from hisd_edge.runtime import create_backend, softmax_max
from hisd_edge.runtime.ort_backend import resolve_providers


@pytest.fixture(scope="module")
def val_tensors(tiny_bundle, val_samples):
    return val_samples.tensors(Bundle.open(tiny_bundle).preprocessing)[:40]


def _chain(backend, x):
    backend.start(x)
    return [backend.run_stage(k) for k in range(backend.num_stages)]


def test_chained_stages_reproduce_the_full_model(tiny_bundle, val_tensors):
    with create_backend("onnxruntime", Bundle.open(tiny_bundle)) as backend:
        full = backend.run_full(val_tensors).outputs
        stages = _chain(backend, val_tensors)
        for k, result in enumerate(stages):
            assert result.rows == len(val_tensors)
            np.testing.assert_allclose(result.exit_output(), full[k], atol=1e-5)
            assert result.latency_ms > 0


def test_fused_confidence_equals_host_softmax_max(tiny_bundle, tiny_bundle_unfused, val_tensors):
    with create_backend("onnxruntime", Bundle.open(tiny_bundle)) as fused, create_backend(
        "onnxruntime", Bundle.open(tiny_bundle_unfused)
    ) as plain:
        for a, b in zip(_chain(fused, val_tensors), _chain(plain, val_tensors)):
            np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-6)
            np.testing.assert_allclose(a.confidence, softmax_max(a.exit_output()), atol=1e-6)


def test_compaction_keeps_exactly_the_given_rows(tiny_bundle, val_tensors):
    keep0 = np.array([1, 4, 5, 9, 20, 33])
    keep1 = np.array([0, 2, 5])  # relative to keep0's rows
    with create_backend("onnxruntime", Bundle.open(tiny_bundle)) as backend:
        reference = [r.exit_output() for r in _chain(backend, val_tensors)]
        backend.start(val_tensors)
        r0 = backend.run_stage(0)
        r1 = backend.run_stage(1, keep_rows=keep0)
        r2 = backend.run_stage(2, keep_rows=keep1)
        np.testing.assert_allclose(r0.exit_output([3, 7]), reference[0][[3, 7]], atol=1e-6)
        assert (r1.rows, r2.rows) == (len(keep0), len(keep1))
        np.testing.assert_allclose(r1.exit_output(), reference[1][keep0], atol=1e-5)
        np.testing.assert_allclose(r2.exit_output(), reference[2][keep0[keep1]], atol=1e-5)
        np.testing.assert_allclose(r2.confidence, softmax_max(reference[2][keep0[keep1]]), atol=1e-5)


def test_buffers_are_reused_but_results_are_copies(tiny_bundle, val_tensors):
    with create_backend("onnxruntime", Bundle.open(tiny_bundle)) as backend:
        first = _chain(backend, val_tensors[:8])
        saved_conf = first[0].confidence.copy()
        fetched = first[0].exit_output(np.arange(8))
        saved_out = fetched.copy()
        whole = first[1].exit_output()  # fetched (and cached) before the next batch
        _chain(backend, val_tensors[8:16])  # same batch size: same buffers and bindings
        np.testing.assert_array_equal(first[0].confidence, saved_conf)
        np.testing.assert_array_equal(fetched, saved_out)
        np.testing.assert_array_equal(first[1].exit_output(), whole)
        with pytest.raises(RuntimeError, match="earlier batch"):
            first[2].exit_output([0])  # lazy read of a buffer the next batch overwrote
        again = _chain(backend, val_tensors[:8])
        np.testing.assert_allclose(again[0].confidence, saved_conf, atol=1e-6)
        np.testing.assert_allclose(again[0].exit_output(np.arange(8)), saved_out, atol=1e-6)


def test_growing_batch_reallocates(tiny_bundle, val_tensors):
    with create_backend("onnxruntime", Bundle.open(tiny_bundle)) as backend:
        small = _chain(backend, val_tensors[:2])[-1].exit_output()
        large = _chain(backend, val_tensors)[-1].exit_output()
        np.testing.assert_allclose(large[:2], small, atol=1e-5)


def test_call_order_and_input_checks(tiny_bundle):
    backend = create_backend("onnxruntime", Bundle.open(tiny_bundle))
    with pytest.raises(RuntimeError):
        backend.start(np.zeros((1, 1, 28, 28), np.float32))  # not activated
    with backend:
        with pytest.raises(RuntimeError, match="before start"):
            backend.run_stage(0)
        backend.start(np.zeros((2, 1, 28, 28), np.float32))
        with pytest.raises(RuntimeError, match="in order"):
            backend.run_stage(1)
        backend.run_stage(0)
        with pytest.raises(IndexError):
            backend.run_stage(1, keep_rows=[5])
        with pytest.raises(InputError, match="does not fit"):
            backend.start(np.zeros((2, 3, 28, 28), np.float32))
        with pytest.raises(InputError, match="empty"):
            backend.start(np.zeros((0, 1, 28, 28), np.float32))
    assert not backend.is_active


def test_missing_precision_and_unknown_backend(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    with pytest.raises(BundleError, match="no int8 stage files"):
        create_backend("onnxruntime", bundle, precision="int8").activate()
    with pytest.raises(InputError, match="unknown backend"):
        create_backend("nope", bundle)


def test_tensorrt_backend_without_tensorrt_is_a_user_error(tiny_bundle):
    try:
        import tensorrt
    except ImportError:
        tensorrt = None
    if getattr(tensorrt, "Builder", None) is not None:  # not just the type-stubs namespace package
        pytest.skip("TensorRT is installed here")
    with pytest.raises(HisdError), create_backend("tensorrt", Bundle.open(tiny_bundle)):
        pass


def test_providers():
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    assert resolve_providers(["auto"])[-1] == "CPUExecutionProvider"
    with pytest.raises(DependencyError, match="onnxruntime-gpu"):
        resolve_providers(["NoSuchExecutionProvider"])


def test_describe_and_options(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    with create_backend("onnxruntime", bundle, intra_op_threads=1, graph_optimization="basic") as backend:
        info = backend.describe()
    assert info["backend"] == "onnxruntime" and info["intra_op_threads"] == 1
    assert info["graph_optimization"] == "basic" and info["allow_spinning"] is False
    with pytest.raises(InputError, match="graph optimization"):
        create_backend("onnxruntime", bundle, graph_optimization="max").activate()


def test_intra_op_threads_default_to_one_for_small_models(converted_bundle):
    from hisd_edge.runtime.ort_backend import SMALL_MODEL_MACS, OnnxRuntimeBackend

    bundle = Bundle.open(converted_bundle)
    assert 0 < sum(s["macs"] for s in bundle.stages) < SMALL_MODEL_MACS
    assert OnnxRuntimeBackend(bundle).intra_op_threads == 1
    assert OnnxRuntimeBackend(bundle, intra_op_threads=None).intra_op_threads == 1
    assert OnnxRuntimeBackend(bundle, intra_op_threads=3).intra_op_threads == 3
    big = Bundle(bundle.root, {**bundle.manifest, "stages": [{**s, "macs": SMALL_MODEL_MACS} for s in bundle.stages]})
    assert OnnxRuntimeBackend(big).intra_op_threads == 0  # ONNX Runtime's default: one per physical core
    with OnnxRuntimeBackend(bundle) as backend:
        assert backend.describe()["intra_op_threads"] == 1
