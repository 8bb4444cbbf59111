"""The in-graph early exit as one TensorRT engine (through the TensorRT and CUDA test doubles):
``build`` makes it, the TensorRT backend runs a frame with one enqueue, with the chain's decisions.
It has never run on real TensorRT."""

from __future__ import annotations

import shutil

import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.engine import BuildOptions, build_engines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory):
    from hisd_edge.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("converted") / "tiny_ingraph"
    convert_checkpoint(tiny_checkpoint, out, precisions=("fp32", "fp16"), val_count=64, verify_count=8)
    return out


@pytest.mark.parametrize("generation", ["8.6", "10.13", "11.4"])
def test_build_makes_one_engine_and_a_frame_is_one_enqueue(converted, fake_trt, tmp_path, generation):
    from hisd_edge.data import load_samples
    from hisd_edge.runtime import open_runtime

    _trt, cuda = fake_trt(generation, num_dla_cores=0)
    path = tmp_path / "bundle"
    shutil.copytree(converted, path)
    build_engines(Bundle.open(path), BuildOptions(precision="fp32", progress=False), cuda=cuda)
    record = Bundle.open(path).manifest["engines"][-1]
    assert record["ingraph"]["built"] is True and record["ingraph"]["onnx"] == "ingraph.onnx"
    assert [f["kind"] for f in record["files"]].count("ingraph_plan") == 1
    x = load_samples("default:val").tensors(Bundle.open(path).preprocessing)[:24]
    thresholds = [0.6, 0.6, None]
    with open_runtime(path, backend="onnxruntime", thresholds=thresholds, guard=False, ingraph=False) as ort:
        want = [ort.infer_tensors(x[i : i + 1])[0][0] for i in range(len(x))]
    with open_runtime(
        path, backend="tensorrt", precision="fp32", thresholds=thresholds, guard=False, ingraph=True
    ) as rt:
        assert rt.backend.describe()["ingraph"] == "loaded"
        have = []
        for i in range(len(x)):
            before = cuda.stats["trt_executions"]
            have.append(rt.infer_tensors(x[i : i + 1])[0][0])
            assert cuda.stats["trt_executions"] - before == 1  # one engine run per frame, whatever the exit
    assert [(r.exit, r.class_index, r.score) for r in have] == [(r.exit, r.class_index, r.score) for r in want]
    assert len({r.exit for r in want}) > 1
    with open_runtime(path, backend="tensorrt", precision="fp32", thresholds=thresholds, guard=False) as rt:
        before = cuda.stats["trt_executions"]
        chained = rt.infer_tensors(x[:1])[0][0]  # without ingraph=True: the chain, one run per stage taken
        assert cuda.stats["trt_executions"] - before == chained.exit + 1
        assert "only when asked" in str(rt.backend.ingraph_unavailable(rt.policy))


def test_builds_that_cannot_take_it_say_why(converted, fake_trt, tmp_path):
    _trt, cuda = fake_trt("8.6", num_dla_cores=1)
    path = tmp_path / "bundle"
    shutil.copytree(converted, path)
    build_engines(Bundle.open(path), BuildOptions(precision="fp16", dla_core=0, progress=False), cuda=cuda)
    record = Bundle.open(path).manifest["engines"][-1]
    assert record["ingraph"] == {
        "built": False,
        "reason": "IIfConditional layers cannot run on the DLA; DLA builds run the chain",
    }
    assert "ingraph_plan" not in [f["kind"] for f in record["files"]]
    _trt, cuda = fake_trt("10.13", num_dla_cores=0)
    build_engines(Bundle.open(path), BuildOptions(precision="fp16", progress=False), cuda=cuda)
    strongly_typed = Bundle.open(path).manifest["engines"][-1]  # built from the fp16 ONNX: no fp16 artifact
    assert "no fp16 in-graph artifact" in strongly_typed["ingraph"]["reason"]
