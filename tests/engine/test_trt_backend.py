"""The ``tensorrt`` runtime backend against the TensorRT and CUDA test doubles.

The doubles execute each stage's ONNX with ONNX Runtime at the device addresses the backend
binds, so these tests check the orchestration for real: exit decisions identical to the ONNX
Runtime backend, chaining by pointer identity, compaction by row runs, only confidences crossing
to the host (none at all with zero-copy), CUDA graphs, and refusal of engines that do not belong
to this device or TensorRT version. They cannot check TensorRT's numerics or real GPU timing.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hisd_edge.bundle import Bundle, file_record
from hisd_edge.cuda import open_cuda as real_open_cuda
from hisd_edge.engine import BuildOptions, build_engines
from hisd_edge.errors import BundleError, DependencyError, DeviceError, InputError
from hisd_edge.runtime import create_backend, open_runtime


@pytest.fixture(scope="session")
def images(trt_bundle):
    from hisd_edge.data import load_samples

    return load_samples("default:val").tensors(Bundle.open(trt_bundle).preprocessing)[:32]


@pytest.fixture()
def built(fake_trt, bundle_copy):
    """built(generation, device="discrete") -> (bundle path, fake trt, fake cuda) with fp32 engines."""

    def make(generation="10.13", device="discrete", **kwargs):
        cuda_double = sys.modules["hisd_test_cuda_double"]
        info = cuda_double.JETSON_ORIN if device == "jetson" else cuda_double.DISCRETE
        trt, cuda = fake_trt(generation, info, **kwargs)
        build_engines(Bundle.open(bundle_copy), BuildOptions(precision="fp32", progress=False), cuda=cuda)
        trt.builds.clear()
        cuda.stats.clear()
        return bundle_copy, trt, cuda

    return make


def _midpoint_threshold(values: np.ndarray, quantile: float) -> float:
    """A threshold between two neighbouring confidences near ``quantile``: no ties, so no float-noise flips."""
    ordered = np.unique(values)
    i = min(max(int(quantile * len(ordered)), 1), len(ordered) - 1)
    return float((ordered[i - 1] + ordered[i]) / 2)


def _mixed_thresholds(bundle_path, x):
    """Thresholds that send roughly a third of the rows out at each exit, in a scattered pattern."""
    with create_backend("onnxruntime", Bundle.open(bundle_path)) as ort:
        ort.start(x)
        conf0 = ort.run_stage(0).confidence
        conf1 = ort.run_stage(1).confidence
    return [_midpoint_threshold(conf0, 0.65), _midpoint_threshold(conf1, 0.5), None]


def _decisions(results):
    return [(r.exit, r.class_index) for r in results]


@pytest.mark.parametrize("generation", ["8.5", "10.3", "11.4"])
@pytest.mark.parametrize("device", ["discrete", "jetson"])
@pytest.mark.parametrize("graphs", [False, True])
def test_exit_decisions_match_the_onnxruntime_backend(built, images, generation, device, graphs):
    path, _trt, cuda = built(generation, device)
    thresholds = _mixed_thresholds(path, images)
    # repeats (graphs get captured and replayed), a different batch in between (graphs must be dropped:
    # the double, like TensorRT, replays what was staged by the latest enqueue), then repeats again
    batches = [images[:24], images[:24], images[:24], images[3:8], images[:24], images[:24], images[8:32], images[3:5]]
    with open_runtime(path, backend="onnxruntime", thresholds=thresholds) as ort:
        expected = [ort.infer_tensors(b) for b in batches]
    with open_runtime(path, backend="tensorrt", precision="fp32", thresholds=thresholds, cuda_graphs=graphs) as rt:
        got = [rt.infer_tensors(b) for b in batches]
        assert rt.backend.describe()["zero_copy"] is (device == "jetson")
    for (want, want_trace), (have, have_trace) in zip(expected, got):
        assert _decisions(have) == _decisions(want)
        assert have_trace.stage_rows == want_trace.stage_rows
        np.testing.assert_allclose([r.confidence for r in have], [r.confidence for r in want], rtol=0, atol=1e-6)
        assert all(ms >= 0 for ms in have_trace.stage_latency_ms)
    rows = expected[0][1].stage_rows
    assert rows[0] > rows[1] > rows[2] > 0  # the thresholds really split the batch at every exit
    assert (cuda.stats["graph_launches"] > 0) is graphs
    assert cuda.stats["pageable_copies"] == 0


@pytest.mark.parametrize("generation", ["8.5", "11.4"])
def test_int8_exit_decisions_match_the_onnxruntime_backend(built, images, generation):
    path, trt, cuda = built(generation)
    build_engines(Bundle.open(path), BuildOptions(precision="int8", progress=False), cuda=cuda)
    assert trt.builds[-1]["ok"] and ("INT8" in trt.builds[-1]["builder_flags"]) is (generation == "8.5")
    thresholds = _mixed_thresholds(path, images)
    with open_runtime(path, backend="onnxruntime", precision="int8", thresholds=thresholds) as ort:
        want, want_trace = ort.infer_tensors(images[:24])
    with open_runtime(path, backend="tensorrt", precision="int8", thresholds=thresholds) as rt:
        have, have_trace = rt.infer_tensors(images[:24])
    assert _decisions(have) == _decisions(want) and have_trace.stage_rows == want_trace.stage_rows
    np.testing.assert_allclose([r.confidence for r in have], [r.confidence for r in want], rtol=0, atol=1e-6)


def test_only_confidences_and_leaving_logits_cross_to_the_host(built, images):
    path, _trt, cuda = built("10.13")
    thresholds = _mixed_thresholds(path, images)
    x = images[:20]
    with open_runtime(path, backend="tensorrt", precision="fp32", thresholds=thresholds) as rt:
        cuda.stats.clear()
        results, trace = rt.infer_tensors(x)
    classes = 10
    leaving = [sum(1 for r in results if r.exit == k) for k in range(3)]
    assert cuda.stats["htod_bytes"] == x.nbytes  # the input, once
    assert cuda.stats["dtoh_bytes"] == 4 * sum(trace.stage_rows) + 4 * classes * sum(leaving)
    assert cuda.stats["trt_executions"] == 3


def test_zero_copy_on_an_integrated_gpu_copies_nothing(built, images):
    path, _trt, cuda = built("10.3", "jetson")
    with open_runtime(path, backend="tensorrt", precision="fp32", thresholds=_mixed_thresholds(path, images)) as rt:
        cuda.stats.clear()
        rt.infer_tensors(images[:16])
    assert cuda.stats["htod_bytes"] == 0 and cuda.stats["dtoh_bytes"] == 0
    assert cuda.stats["mapped_allocs"] == 0  # all allocated once, at activation


def test_chaining_binds_one_buffer_and_compaction_copies_row_runs(built, images):
    path, _trt, cuda = built("10.13")
    bundle = Bundle.open(path)
    x = images[:10]
    with create_backend("onnxruntime", bundle) as ort, create_backend("tensorrt", bundle, cuda=cuda) as trt_backend:
        for backend in (ort, trt_backend):
            backend.start(x)
        stages = trt_backend._stages
        ort_r0, trt_r0 = ort.run_stage(0), trt_backend.run_stage(0)
        np.testing.assert_allclose(trt_r0.confidence, ort_r0.confidence, atol=1e-6)
        # no compaction: stage 1 reads stage 0's feat0 buffer itself
        cuda.stats.clear()
        ort_r1, trt_r1 = ort.run_stage(1), trt_backend.run_stage(1)
        assert stages[1].context._addresses["feat0"] == stages[0].context._addresses["feat0"]
        assert cuda.stats["dtod_copies"] == 0
        # compaction with a reordering: runs [4,5,6], [9], [2,3] -> three copies
        keep = [4, 5, 6, 9, 2, 3]
        cuda.stats.clear()
        ort_r2, trt_r2 = ort.run_stage(2, keep_rows=keep), trt_backend.run_stage(2, keep_rows=keep)
        assert cuda.stats["dtod_copies"] == 3
        np.testing.assert_allclose(trt_r2.confidence, ort_r2.confidence, atol=1e-6)
        np.testing.assert_allclose(trt_r2.exit_output([5, 0]), ort_r2.exit_output([5, 0]), atol=1e-5)
        np.testing.assert_allclose(trt_r1.exit_output(), ort_r1.exit_output(), atol=1e-5)
        assert trt_r2.latency_ms >= 0
        trt_backend.start(x)
        with pytest.raises(RuntimeError, match="batch"):
            trt_r0.exit_output([0])  # (trt_r1 cached its full output above)


def test_host_confidence_when_the_bundle_fuses_none(built, images):
    path, _trt, _cuda = built("10.13")
    bundle = Bundle.open(path)
    bundle.update(lambda m: [e.__setitem__("confidence_output", None) for e in m["exits"]])
    thresholds = _mixed_thresholds(path, images)
    with open_runtime(path, backend="onnxruntime", thresholds=thresholds) as ort:
        want, _ = ort.infer_tensors(images[:16])
    with open_runtime(path, backend="tensorrt", precision="fp32", thresholds=thresholds) as rt:
        have, _ = rt.infer_tensors(images[:16])
    assert _decisions(have) == _decisions(want)


def test_batch_larger_than_the_profile_is_refused(built, images):
    path, _trt, _cuda = built("10.13")
    with create_backend("tensorrt", Bundle.open(path)) as backend:
        assert backend.max_batch == 32
        with pytest.raises(InputError, match="more than the TensorRT engines take"):
            backend.start(np.concatenate([images, images[:8]]))


# -- refusals ------------------------------------------------------------------------------------------
def _activate(path, **options):
    with create_backend("tensorrt", Bundle.open(path, verify=False), precision="fp32", **options):
        pass


def test_engines_for_another_device_are_refused(built, trt_double, monkeypatch):
    path, _trt, _cuda = built("10.13", "discrete")
    jetson = trt_double.cuda_double.FakeCuda(trt_double.cuda_double.JETSON_ORIN)
    monkeypatch.setitem(sys.modules, "tensorrt", trt_double.make_tensorrt("10.13", jetson))
    with pytest.raises(BundleError) as err:
        _activate(path, cuda=jetson)
    message = str(err.value)
    assert "Fake RTX 4090 (sm 8.9)" in message and "Orin (sm 8.7)" in message
    assert "run hisd-edge build" in message and "on this device" in message


def test_engines_from_an_orin_nano_are_refused_on_an_agx_orin(built, trt_double, monkeypatch):
    path, _trt, _cuda = built("10.3", "jetson")  # an Orin Nano: "Orin", sm 8.7, 8 SMs
    agx = trt_double.cuda_double.FakeCuda(trt_double.cuda_double.AGX_ORIN)  # also "Orin", sm 8.7: 16 SMs
    monkeypatch.setitem(sys.modules, "tensorrt", trt_double.make_tensorrt("10.3", agx))
    with pytest.raises(BundleError) as err:
        _activate(path, cuda=agx)
    message = str(err.value)
    assert "Orin (sm 8.7) with 8 SMs" in message and "this Orin (sm 8.7) with 16 SMs" in message
    assert "run hisd-edge build" in message


def test_engines_for_another_tensorrt_version_are_refused(built, trt_double, monkeypatch):
    path, _trt, cuda = built("10.13")
    monkeypatch.setitem(sys.modules, "tensorrt", trt_double.make_tensorrt("10.3", cuda))
    with pytest.raises(BundleError, match=r"TensorRT 10\.13\.3\.9.*TensorRT 10\.3\.0\.26.*run hisd-edge build"):
        _activate(path, cuda=cuda)


def test_no_engines_yet(fake_trt, bundle_copy):
    _, cuda = fake_trt("10.13")
    with pytest.raises(BundleError, match="no TensorRT engines built yet.*hisd-edge build"):
        _activate(bundle_copy, cuda=cuda)


def test_truncated_engine_file(built):
    path, _trt, cuda = built("10.13")
    plan = path / Bundle.open(path).manifest["engines"][0]["files"][1]["path"]
    plan.write_bytes(plan.read_bytes()[:-100])
    # Bundle.open checks each file when it is used (issue 9): the plans when the engines are loaded.
    with pytest.raises(BundleError, match=r"stage1\.plan: engine file is \d+ bytes.*truncated.*hisd-edge build"):
        _activate(path, cuda=cuda)


def _replace_plan(path, stage, data):
    """Put ``data`` in place of a plan and make the record agree, as a copied-in foreign file would look."""
    bundle = Bundle.open(path, verify=False)
    rel = bundle.manifest["engines"][0]["files"][stage]["path"]
    (path / rel).write_bytes(data)
    bundle.update(lambda m: m["engines"][0]["files"].__setitem__(stage, file_record(path, rel, stage=stage)))


def test_foreign_engine_file_quotes_tensorrt(built):
    path, _trt, cuda = built("10.13")
    _replace_plan(path, 2, b"\x00" * 64 + b"not a plan")
    with pytest.raises(BundleError) as err:
        _activate(path, cuda=cuda)
    message = str(err.value)
    assert "stage2.plan" in message and "Magic tag does not match" in message and "hisd-edge build" in message
    assert "\n" not in message


def test_plan_from_another_version_under_a_forged_record_is_caught_by_tensorrt(
    built, trt_double, monkeypatch, tmp_path
):
    import shutil

    path, trt, cuda = built("10.13")
    other = tmp_path / "other"
    shutil.copytree(path, other)
    monkeypatch.setitem(sys.modules, "tensorrt", trt_double.make_tensorrt("10.3", cuda))
    build_engines(Bundle.open(other), BuildOptions(precision="fp32", progress=False), cuda=cuda)
    old_plan = next((other / "engines").rglob("trt-10.3*/fp32/stage0.plan")).read_bytes()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    _replace_plan(path, 0, old_plan)
    with pytest.raises(BundleError, match="not compatible with this version of TensorRT.*hisd-edge build"):
        _activate(path, cuda=cuda)


def test_engines_from_an_older_conversion_are_refused(built):
    import onnx

    path, _trt, cuda = built("10.13")
    model = onnx.load(str(path / "stage1.fp32.onnx"))
    model.doc_string = "converted again"
    onnx.save(model, str(path / "stage1.fp32.onnx"))
    bundle = Bundle.open(path, verify=False)
    bundle.update(
        lambda m: m["stages"][1]["files"].__setitem__("fp32", file_record(path, "stage1.fp32.onnx", io_dtype="float32"))
    )
    with pytest.raises(BundleError, match="stage 1 was built from a different stage ONNX"):
        _activate(path, cuda=cuda)


def test_missing_tensorrt_for_the_backend(monkeypatch, trt_bundle):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DependencyError, match="python3-libnvinfer.*pip install tensorrt"):
        _activate(trt_bundle)


def test_run_verb_with_tensorrt_backend(built, images, capsys, tmp_path):
    from hisd_edge.cli import main

    path, _trt, _cuda = built("10.13")
    np.save(tmp_path / "x.npy", images[:6])
    code = main(["run", str(path), str(tmp_path / "x.npy"), "--backend", "tensorrt", "--json", "--batch-size", "6"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(rows) == 6 and all(r["exit"] in (0, 1, 2) for r in rows)


def test_run_verb_without_tensorrt_is_one_line(monkeypatch, trt_bundle, images, capsys, tmp_path):
    from hisd_edge.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    np.save(tmp_path / "x.npy", images[:2])
    code = main(["run", str(trt_bundle), str(tmp_path / "x.npy"), "--backend", "tensorrt", "--json"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "python3-libnvinfer" in lines[0]


def test_engines_of_another_precision_on_this_device(built):
    path, _trt, cuda = built("10.13")  # fp32 engines only
    with pytest.raises(
        BundleError, match=r"no fp16 TensorRT engines for this .* \(built: fp32\).*--precision fp16.*--precision fp32"
    ), create_backend("tensorrt", Bundle.open(path), precision="fp16", cuda=cuda):
        pass


def _cuda_python_oom(nbytes):
    from hisd_edge.cuda.cudart_backend import CudaCallError

    return CudaCallError(f"cudaMalloc({nbytes}) failed (cudaErrorMemoryAllocation: out of memory)")


def _pycuda_oom(nbytes):
    pycuda_memory_error = type("MemoryError", (RuntimeError,), {"__module__": "pycuda._driver"})  # not the builtin
    return pycuda_memory_error("cuMemAlloc failed: out of memory")


@pytest.mark.parametrize("make_error", [_cuda_python_oom, _pycuda_oom])
@pytest.mark.parametrize("first_fit_bytes", [0, 128 << 10])  # the first (host) buffer fails / a later device one does
def test_out_of_memory_allocating_buffers_is_one_line_with_the_fix(built, make_error, first_fit_bytes):
    path, _trt, cuda = built("10.13")
    cuda.allocated_bytes, cuda.alloc_limit_bytes, cuda.alloc_error = 0, first_fit_bytes, make_error
    backend = create_backend("tensorrt", Bundle.open(path), precision="fp32", cuda=cuda)
    with pytest.raises(DeviceError) as err:
        backend.activate()
    message = str(err.value)
    assert "\n" not in message and "out of" in message and "memory allocating" in message and "MiB" in message
    assert "max_batch=16" in message and "smaller --batch" in message and "MiB free" in message
    assert ("out of pinned host memory" if first_fit_bytes == 0 else "out of device memory") in message
    assert not backend.is_active and backend._allocations == [] and cuda.memory._blocks == {}  # nothing left behind
    cuda.alloc_limit_bytes = None
    with backend:  # with the memory back it activates
        assert backend.max_batch == 32


def test_an_allocation_failure_that_is_not_memory_is_not_disguised(built):
    path, _trt, cuda = built("10.13")
    cuda.alloc_limit_bytes, cuda.alloc_error = (
        0,
        lambda n: RuntimeError("cudaErrorIllegalAddress: an illegal memory access"),
    )
    with pytest.raises(RuntimeError, match="illegal memory access"):
        create_backend("tensorrt", Bundle.open(path), precision="fp32", cuda=cuda).activate()


def test_missing_cuda_binding_for_the_backend(built, monkeypatch):
    import hisd_edge.cuda as hc

    path, _trt, _cuda = built("10.13")
    monkeypatch.setattr(hc, "open_cuda", real_open_cuda)
    monkeypatch.setattr(hc, "available_bindings", list)
    with pytest.raises(DependencyError, match="pip install pycuda.*pip install cuda-python"):
        _activate(path)


def _drop_fp16_onnx(path):
    """The bundle as ``convert --precision fp32,int8`` leaves it: no fp16 stage files at all."""
    bundle = Bundle.open(path, verify=False)
    bundle.update(lambda m: [s["files"].pop("fp16") for s in m["stages"]])
    for plan in path.glob("stage*.fp16.onnx"):
        plan.unlink()
    assert "fp16" not in Bundle.open(path).precisions()


def test_weakly_typed_fp16_engines_from_an_fp32_only_bundle_load(fake_trt, bundle_copy, images):
    _trt, cuda = fake_trt("8.5")
    _drop_fp16_onnx(bundle_copy)
    result = build_engines(Bundle.open(bundle_copy), BuildOptions(precision="fp16", progress=False), cuda=cuda)
    assert result.record["precision"] == "fp16" and result.recipe.onnx_precision == "fp32"
    with create_backend("tensorrt", Bundle.open(bundle_copy), precision="fp16", cuda=cuda) as backend:
        backend.start(images[:4])
        assert backend.run_stage(0).confidence.shape == (4,)
    # the ONNX Runtime backend still needs fp16 stage files, and says so
    with pytest.raises(BundleError, match="no fp16 stage files.*convert with --precision fp16"):
        create_backend("onnxruntime", Bundle.open(bundle_copy), precision="fp16").activate()
    # a precision TensorRT never builds is refused up front, naming the choices
    with pytest.raises(InputError, match="'fp8'.*fp32, fp16, int8"):
        create_backend("tensorrt", Bundle.open(bundle_copy), precision="fp8", cuda=cuda).activate()


@pytest.mark.parametrize("generation", ["10.13", "11.4"])
def test_memory_info_reports_the_build_record_plans_buffers_and_cuda(built, generation):
    from hisd_edge.profile.memory import backend_memory

    path, _trt, cuda = built(generation)
    bundle = Bundle.open(path)
    record = bundle.manifest["engines"][0]
    with create_backend("tensorrt", bundle, precision="fp32", cuda=cuda) as backend:
        info = backend_memory(backend)
        buffers = [a for a in backend._allocations if hasattr(a, "nbytes")]
    assert info is not None and all(key.endswith("_bytes") for key in info)
    for k, stage in enumerate(record["stages"]):
        assert info[f"stage{k}_device_memory_bytes"] == stage["device_memory_bytes"] > 0
        assert info[f"stage{k}_plan_bytes"] == (path / record["files"][k]["path"]).stat().st_size
        assert (f"stage{k}_weights_bytes" in info) is ("weights_bytes" in stage)
    assert info["device_memory_bytes"] == sum(s["device_memory_bytes"] for s in record["stages"])
    assert info["plan_bytes"] == sum(info[f"stage{k}_plan_bytes"] for k in range(3))
    assert ("weights_bytes" in info) is (generation == "11.4")  # TensorRT 10.14+ records weights
    assert info["device_buffers_bytes"] + info["host_buffers_bytes"] == sum(a.nbytes for a in buffers) > 0
    assert (info["cuda_free_bytes"], info["cuda_total_bytes"]) == cuda.memory_info()
    with pytest.raises(RuntimeError, match="before activate"):
        backend.memory_info()


def test_exit_outputs_after_deactivate_are_refused(built, images):
    path, _trt, cuda = built("10.13")
    with create_backend("tensorrt", Bundle.open(path), precision="fp32", cuda=cuda) as backend:
        backend.start(images[:4])
        r0 = backend.run_stage(0)
        backend.start(images[:4])  # a new batch: the base class's batch id refuses r0's lazy reads
        with pytest.raises(RuntimeError, match="earlier batch"):
            r0.exit_output([0])
        r0 = backend.run_stage(0)
    with pytest.raises(RuntimeError, match="only available while the backend is active"):
        r0.exit_output([0])
