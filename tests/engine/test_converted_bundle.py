"""A bundle written by the real converter builds with every recipe and runs on the TensorRT backend
(through the test doubles) with the ONNX Runtime backend's exit decisions: the manifest contract
between ``convert`` and ``build`` / the runtime, end to end."""

from __future__ import annotations

import shutil

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
