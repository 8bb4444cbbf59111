"""What the real TensorRT and CUDA APIs showed, fixed in the TensorRT backend and builder, on the doubles:
graphs a binding cannot capture, engine tensor types numpy cannot hold, a filtered and bounded
logger, any row count from 1 to the maximum (padding to a profile minimum above 1), a bounded
CUDA-graph cache with more than one slot, and the monolithic model for bench and evaluate."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.engine import BuildOptions, build_engines
from hisd_edge.errors import BundleError, DependencyError
from hisd_edge.runtime import create_backend, open_runtime


@pytest.fixture(scope="session")
def images(trt_bundle):
    from hisd_edge.data import load_samples

    return load_samples("default:val").tensors(Bundle.open(trt_bundle).preprocessing)[:32]


@pytest.fixture()
def install(trt_double, monkeypatch):
    """install(generation, cuda=None, **kwargs) -> (fake tensorrt, FakeCuda) as sys.modules["tensorrt"]."""
    import hisd_edge.cuda

    def go(generation="10.13", cuda=None, **kwargs):
        cuda = cuda or trt_double.cuda_double.FakeCuda(trt_double.cuda_double.DISCRETE)
        trt = trt_double.make_tensorrt(generation, cuda, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(hisd_edge.cuda, "open_cuda", lambda *a, **k: cuda)
        return trt, cuda

    return go


def _build(path, cuda, **options):
    options.setdefault("progress", False)
    return build_engines(Bundle.open(path), BuildOptions(**options), cuda=cuda)


def _decisions(results):
    return [(r.exit, r.class_index) for r in results]


def _thresholds(path, x):
    with create_backend("onnxruntime", Bundle.open(path)) as ort:
        ort.start(x)
        c0, c1 = ort.run_stage(0).confidence, ort.run_stage(1).confidence
    return [float(np.quantile(c0, 0.6)), float(np.quantile(c1, 0.5)), None]


# -- CUDA graphs a binding cannot capture ----------------------------------------------------------------
def test_graphs_requested_where_the_binding_cannot_capture_are_one_line(install, trt_double, bundle_copy, images):
    no_graphs = trt_double.cuda_double.FakeCuda(trt_double.cuda_double.DISCRETE, graphs=False)  # as pycuda alone
    _trt, cuda = install("10.13", cuda=no_graphs)
    _build(bundle_copy, cuda, precision="fp32")
    backend = create_backend("tensorrt", Bundle.open(bundle_copy), precision="fp32", cuda=cuda, cuda_graphs=True)
    with pytest.raises(DependencyError) as err:
        backend.activate()
    message = str(err.value)
    assert message.startswith("cuda_graphs: pycuda cannot capture CUDA graphs") and "pip install cuda-python" in message
    assert "\n" not in message and not backend.is_active and cuda.memory._blocks == {}
    with create_backend("tensorrt", Bundle.open(bundle_copy), precision="fp32", cuda=cuda) as plain:
        for _ in range(3):  # the second run of a stage is where an AttributeError used to come from
            plain.start(images[:4])
            assert plain.run_stage(0).confidence.shape == (4,)


# -- engine tensors numpy cannot hold ------------------------------------------------------------------
@pytest.mark.parametrize("generation, dtype", [("10.13", "BF16"), ("10.13", "FP8"), ("11.4", "INT4"), ("11.4", "FP4")])
def test_an_engine_tensor_of_a_type_numpy_cannot_hold_is_one_line(install, bundle_copy, monkeypatch, generation, dtype):
    trt, cuda = install(generation)
    _build(bundle_copy, cuda, precision="fp32")
    real_dtype = trt.ICudaEngine.get_tensor_dtype

    def odd(self, name):
        return getattr(trt.DataType, dtype) if name == "conf1" else real_dtype(self, name)

    monkeypatch.setattr(trt.ICudaEngine, "get_tensor_dtype", odd)
    with pytest.raises(BundleError) as err:
        create_backend("tensorrt", Bundle.open(bundle_copy), precision="fp32", cuda=cuda).activate()
    message = str(err.value)
    assert f"(stage 1): engine tensor conf1 is {dtype}, a type the runtime cannot map to numpy" in message
    assert "rebuild with hisd-edge build" in message and "\n" not in message


# -- the logger ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generation", ["8.5", "11.4"])
def test_the_logger_drops_verbose_messages_and_keeps_a_bounded_number(install, generation):
    install(generation)
    import tensorrt as trt

    from hisd_edge.engine.builder import make_logger

    logger = make_logger()
    for i in range(1000):
        logger.log(trt.ILogger.VERBOSE, f"verbose {i}")
        logger.log(trt.ILogger.INFO, f"info {i}")
    for i in range(100):
        logger.log(trt.ILogger.ERROR, f"error {i}")
        logger.log(trt.ILogger.WARNING, f"warning {i}")
    assert logger.errors() == [f"error {i}" for i in range(68, 100)]  # the newest 32, oldest dropped
    assert len(logger.other_messages) == 32 and all(m.startswith("warning") for m in logger.other_messages)
    verbose = make_logger(verbose=True)
    verbose.log(trt.ILogger.VERBOSE, "kept")
    assert list(verbose.other_messages) == ["kept"]
    logger.clear()
    assert logger.errors() == []


# -- any row count from 1 to the maximum -----------------------------------------------------------------
def test_rows_below_a_profile_minimum_are_padded_and_decisions_match(install, bundle_copy, images):
    # DLA takes one fixed batch: the engines' profile minimum is 4, and every smaller row count
    # (batch-1 frames, the rows left after an exit, the last partial chunk) must still run
    _trt, cuda = install("8.6", num_dla_cores=1)
    _build(bundle_copy, cuda, precision="int8", dla_core=0, batch=(1, 4, 4))  # legacy calibrated int8: fp32 math
    thresholds = _thresholds(bundle_copy, images[:24])
    batches = [images[:4], images[4:5], images[5:8], images[8:12], images[12:13]]
    with open_runtime(bundle_copy, backend="onnxruntime", thresholds=thresholds) as ort:
        want = [ort.infer_tensors(b) for b in batches]
    with open_runtime(bundle_copy, backend="tensorrt", precision="int8", thresholds=thresholds) as rt:
        have = [rt.infer_tensors(b) for b in batches]
        described = rt.backend.describe()
    for (w, w_trace), (h, h_trace) in zip(want, have):
        assert _decisions(h) == _decisions(w) and h_trace.stage_rows == w_trace.stage_rows
    assert described["min_rows"] == [4, 4, 4] and described["max_batch"] == 4
    assert described["padded_runs"] > 0


def test_a_gpu_profile_minimum_above_one_is_refused(install, bundle_copy, capsys):
    from hisd_edge.cli import main

    install("10.13")
    code = main(["build", str(bundle_copy), "--batch", "4,8,32", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "the minimum must be 1" in err and "--batch 1,8,32" in err


# -- the CUDA-graph cache ----------------------------------------------------------------------------------
def _alternate(backend, images, sizes, rounds):
    for _ in range(rounds):
        for rows in sizes:
            backend.start(images[:rows])
            for k in range(backend.num_stages):
                backend.run_stage(k)


@pytest.mark.parametrize("slots, launches", [(3, True), (1, False)])
def test_alternating_shapes_keep_their_graphs_with_more_than_one_slot(install, bundle_copy, images, slots, launches):
    _trt, cuda = install("10.13")
    _build(bundle_copy, cuda, precision="fp32")
    bundle = Bundle.open(bundle_copy)
    with create_backend(
        "tensorrt", bundle, precision="fp32", cuda=cuda, cuda_graphs=True, graph_slots=slots
    ) as backend:
        cuda.stats.clear()
        _alternate(backend, images, (24, 8), rounds=6)  # full batches and the last partial chunk, alternating
        if launches:  # a plain first run, one capture per stage and shape, then only launches
            assert cuda.stats["graphs"] == 3 * 2 and cuda.stats["graph_launches"] == 3 * 2 * 5
        else:  # one slot: each shape evicts the other before it is seen twice
            assert cuda.stats["graph_launches"] == 0
        with create_backend("onnxruntime", bundle) as ort:
            for b in (images[:24], images[:8]):
                ort.start(b)
                backend.start(b)
                for k in range(3):
                    np.testing.assert_allclose(
                        backend.run_stage(k).confidence, ort.run_stage(k).confidence, rtol=0, atol=1e-6
                    )


def test_the_graph_cache_is_bounded(install, bundle_copy, images, monkeypatch):
    import hisd_edge.runtime.tensorrt_backend as tb

    trt, cuda = install("10.13")
    _build(bundle_copy, cuda, precision="fp32")
    with create_backend(
        "tensorrt", Bundle.open(bundle_copy), precision="fp32", cuda=cuda, cuda_graphs=True, graph_slots=2
    ) as backend:
        _alternate(backend, images, range(1, 11), rounds=2)  # ten shapes, each seen twice
        assert all(len(stage.slots) == 2 for stage in backend._stages)
        # one extra context per stage, no more: its scratch is what the extra slots cost
        assert backend.memory_info()["graph_contexts_device_memory_bytes"] == 3 * (1 << 20)
    # keys that cannot be captured are remembered, boundedly, and still run (without a graph)
    monkeypatch.setattr(tb, "_UNCAPTURABLE_KEPT", 4)
    real = trt.IExecutionContext.execute_async_v3

    def never_under_capture(self, stream_handle):
        return False if cuda.stream_for(stream_handle).capture is not None else real(self, stream_handle)

    monkeypatch.setattr(trt.IExecutionContext, "execute_async_v3", never_under_capture)
    with create_backend("tensorrt", Bundle.open(bundle_copy), precision="fp32", cuda=cuda, cuda_graphs=True) as backend:
        for rows in range(1, 11):  # each shape twice in a row: the second run tries to capture, and cannot
            _alternate(backend, images, (rows, rows), rounds=1)
        assert len(backend._uncapturable) == 4
        backend.start(images[:5])
        assert backend.run_stage(0).confidence.shape == (5,)


def test_tensorrt_85_keeps_one_slot_per_dynamic_stage(install, bundle_copy, images):
    # TensorRT 8.5 gives an optimization profile to one execution context only
    _trt, cuda = install("8.5")
    _build(bundle_copy, cuda, precision="fp32")
    with create_backend("tensorrt", Bundle.open(bundle_copy), precision="fp32", cuda=cuda, cuda_graphs=True) as b:
        _alternate(b, images, (24, 8, 24, 24), rounds=2)
        assert all(len(stage.slots) == 1 for stage in b._stages) and cuda.stats["graph_launches"] > 0


# -- the monolithic model for bench and evaluate ------------------------------------------------------------
def test_the_full_model_engine_matches_onnx_runtime(install, bundle_copy, images):
    _trt, cuda = install("10.3")
    result = _build(bundle_copy, cuda, precision="fp32")
    assert result.record["full_model"]["built"] and any(f["kind"] == "full_plan" for f in result.record["files"])
    bundle = Bundle.open(bundle_copy)  # verifies full.plan's checksum like every other file
    with create_backend("onnxruntime", bundle, load_full_model=True) as ort, create_backend(
        "tensorrt", bundle, precision="fp32", cuda=cuda, load_full_model=True
    ) as trt_backend:
        assert trt_backend.full_model_label == "monolithic full model (TensorRT engine)"
        want, have = ort.run_full(images[:5]), trt_backend.run_full(images[:5])
        for w, h in zip(want.outputs, have.outputs):
            np.testing.assert_allclose(h, w, rtol=0, atol=1e-5)


def test_without_a_full_engine_the_chain_stands_in_with_a_clear_label(install, bundle_copy, images):
    _trt, cuda = install("10.13")
    result = _build(bundle_copy, cuda, precision="fp16")  # strongly typed from the fp16 ONNX: no fp16 full model
    assert result.record["full_model"] == {
        "built": False,
        "reason": "the full model exists as fp32 ONNX only, and this fp16 recipe reads the fp16 ONNX",
    }
    with create_backend(
        "tensorrt", Bundle.open(bundle_copy), precision="fp16", cuda=cuda, load_full_model=True
    ) as backend:
        label = backend.full_model_label
        assert label.startswith("all stages chained without early exit (no monolithic engine: the full model exists")
        full = backend.run_full(images[:6])
        backend.start(images[:6])
        for k in range(3):
            np.testing.assert_array_equal(full.outputs[k], backend.run_stage(k).exit_output())


@pytest.mark.parametrize(
    "precision, label", [("fp32", "monolithic full model (TensorRT engine)"), ("fp16", "all stages")]
)
def test_bench_runs_on_the_tensorrt_backend(install, bundle_copy, capsys, precision, label):
    from hisd_edge.cli import main

    _trt, cuda = install("10.13")
    _build(bundle_copy, cuda, precision=precision)
    code = main(
        ["bench", str(bundle_copy), "--backend", "tensorrt", "--precision", precision, "--count", "16",
         "--seconds", "1", "--batch", "8", "--json", "--no-progress"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["full_model"].startswith(label) and report["backend"]["backend"] == "tensorrt"
    assert report["early_exit"]["speedup"] > 0 and len(report["chain"]) == 2


def test_evaluate_runs_on_the_tensorrt_backend(install, bundle_copy):
    from hisd_edge.runtime import evaluate_early_exit, format_early_exit

    _trt, cuda = install("8.6")
    _build(bundle_copy, cuda, precision="fp32")
    summary = evaluate_early_exit(
        bundle_copy, val="default:val", test="default:test", backend="tensorrt", write=False,
        backend_options={"cuda": cuda, "precision": "fp32"},
    )  # fmt: skip
    assert summary.full_model == "monolithic full model (TensorRT engine)"
    assert summary.count > 0 and 0 < summary.accuracy <= 1 and sum(summary.exit_fractions) == pytest.approx(1.0)
    assert "over the monolithic full model (TensorRT engine)" in format_early_exit(summary)
