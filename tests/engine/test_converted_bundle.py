"""A bundle written by the real converter builds with every recipe and runs on the TensorRT backend
(through the test doubles) with the ONNX Runtime backend's exit decisions: the manifest contract
between ``convert`` and ``build`` / the runtime, end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.engine import BuildOptions, build_engines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def converted(tiny_checkpoint, tmp_path_factory):
    from hisd_edge.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("converted") / "tiny"
    convert_checkpoint(
        tiny_checkpoint, out, precisions=("fp32", "fp16", "int8"), calib_count=64, val_count=64, verify_count=8
    )
    return out


@pytest.mark.parametrize(
    "generation, precision, legacy",
    [
        ("8.5", "int8", True),  # implicit INT8 from the converter's calibration caches (retargeted header)
        ("10.3", "best", False),
        ("10.13", "fp16", False),  # strongly typed from the converter's fp16 ONNX
        ("11.4", "int8", False),  # strongly typed from the converter's Q/DQ ONNX
    ],
)
def test_converted_bundle_builds_and_runs(converted, fake_trt, tmp_path, generation, precision, legacy):
    from hisd_edge.data import load_samples
    from hisd_edge.runtime import open_runtime

    trt, cuda = fake_trt(generation, num_dla_cores=0)
    path = tmp_path / "bundle"
    shutil.copytree(converted, path)
    result = build_engines(
        Bundle.open(path), BuildOptions(precision=precision, legacy_int8=legacy, progress=False), cuda=cuda
    )
    assert all(b["ok"] for b in trt.builds) and (all(b["calibrated"] for b in trt.builds) is legacy)
    x = load_samples("default:val").tensors(Bundle.open(path).preprocessing)[:24]
    thresholds = [0.3, 0.3, None]
    with open_runtime(
        path, backend="onnxruntime", precision=result.recipe.onnx_precision, thresholds=thresholds
    ) as ort:
        want, want_trace = ort.infer_tensors(x)
    with open_runtime(path, backend="tensorrt", precision=result.recipe.precision, thresholds=thresholds) as rt:
        have, have_trace = rt.infer_tensors(x)
    assert [(r.exit, r.class_index) for r in have] == [(r.exit, r.class_index) for r in want]
    assert have_trace.stage_rows == want_trace.stage_rows


def _tight_thresholds(confidences):
    """Per early exit, the midpoint of the two closest confidences: a decision that any rounding of
    the confidence (an fp16 softmax/max) would flip for one of them."""
    out = []
    for conf in confidences:
        ordered = np.unique(conf)
        gaps = np.diff(ordered)
        i = int(np.argmin(np.where(ordered[1:] > 0.3, gaps, np.inf)))
        out.append(float((ordered[i] + ordered[i + 1]) / 2))
    return [*out, None]


def test_weakly_typed_fp16_engines_make_the_calibrated_decisions(converted, fake_trt, tmp_path, monkeypatch):
    """The converter's fp16 ONNX keeps each confidence head (softmax, max) in fp32, and thresholds are
    calibrated on it; a weakly typed fp16 engine (fp32 ONNX + FP16) must keep the head in fp32 too."""
    import hisd_edge.engine.builder as builder
    from hisd_edge.data import load_samples
    from hisd_edge.runtime import create_backend, open_runtime

    _trt, cuda = fake_trt("8.6")
    path = tmp_path / "bundle"
    shutil.copytree(converted, path)
    fp16 = BuildOptions(precision="fp16", batch=(1, 32, 128), progress=False)
    result = build_engines(Bundle.open(path), fp16, cuda=cuda)
    assert result.recipe.typing == "weak" and result.recipe.onnx_precision == "fp32"
    assert all(
        s["fp32_layers"] == [f"conf{s['index']}/Softmax", f"conf{s['index']}/ReduceMax"]
        for s in result.record["stages"]
    )
    x = load_samples("default:val").tensors(Bundle.open(path).preprocessing)[:128]
    with create_backend("onnxruntime", Bundle.open(path), precision="fp16") as ort:
        ort.start(x)
        calibrated = [ort.run_stage(k).confidence for k in range(2)]
    thresholds = _tight_thresholds(calibrated)
    with open_runtime(path, backend="onnxruntime", precision="fp16", thresholds=thresholds) as ort:
        want, want_trace = ort.infer_tensors(x)
    with open_runtime(path, backend="tensorrt", precision="fp16", thresholds=thresholds) as rt:
        have, have_trace = rt.infer_tensors(x)
        rt.backend.start(x)
        engine_conf = [rt.backend.run_stage(k).confidence for k in range(2)]
        fp16_logits = rt.backend.run_stage(2).exit_output()
    assert [(r.exit, r.class_index) for r in have] == [(r.exit, r.class_index) for r in want]
    assert have_trace.stage_rows == want_trace.stage_rows
    for mine, theirs in zip(engine_conf, calibrated):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    # the engine really computed in fp16 (its logits are not the fp32 ones), so the above could fail
    with create_backend("onnxruntime", Bundle.open(path), precision="fp32") as fp32:
        fp32.start(x)
        fp32_logits = [fp32.run_stage(k) for k in range(3)][-1].exit_output()
    assert np.abs(fp16_logits - fp32_logits).max() > 1e-4
    # and with the head left to fp16, the confidences move off the calibrated ones
    monkeypatch.setattr(builder, "pin_head_to_fp32", lambda *args, **kwargs: [])
    build_engines(Bundle.open(path), fp16, cuda=cuda)
    with create_backend("tensorrt", Bundle.open(path), precision="fp16", cuda=cuda) as unpinned:
        unpinned.start(x)
        drift = max(float(np.abs(unpinned.run_stage(k).confidence - calibrated[k]).max()) for k in range(2))
    assert drift > 1e-4
