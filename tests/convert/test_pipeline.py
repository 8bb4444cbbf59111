"""The converter end to end on a real (1-epoch) tiny checkpoint: the bundle honours the contract."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hisd_edge.bundle import Bundle
from hisd_edge.convert import calib_cache, calibrate, verify
from hisd_edge.data import load_samples
from hisd_edge.errors import InputError
from hisd_edge.preprocess import Preprocessing
from hisd_edge.runtime.ort_session import StageChain


def test_manifest_contract(tiny_bundle, tiny_checkpoint):
    bundle = Bundle.open(tiny_bundle)  # verifies every sha256
    m = bundle.manifest
    assert bundle.precisions() == ["fp32", "fp16", "int8"]
    assert m["model"]["source"] == "checkpoint" and m["model"]["arch"]["name"] == "tiny_cnn"
    assert len(m["class_names"]) == 10
    assert Preprocessing.from_dict(m["preprocessing"]).input_shape == (1, 28, 28)
    for k, stage in enumerate(m["stages"]):
        assert stage["index"] == k
        assert [i["name"] for i in stage["inputs"]] == (["input"] if k == 0 else [f"feat{k - 1}"])
        names = [o["name"] for o in stage["outputs"]]
        assert names == ([f"feat{k}"] if k < 2 else []) + [f"exit{k}", f"conf{k}"]
        assert stage["inputs"][0]["shape"][0] == "batch" and stage["inputs"][0]["dtype"] == "float32"
        assert stage["params"] > 0 and stage["macs"] > 0
        for record in stage["files"].values():
            assert record["io_dtype"] == "float32"
            assert (tiny_bundle / record["path"]).is_file()
        assert stage["files"]["int8"]["calibration_cache"]["path"] == f"stage{k}.int8.cache"
    assert [e["confidence_output"] for e in m["exits"]] == ["conf0", "conf1", "conf2"]
    assert m["policy"] == {"kind": "max_prob", "thresholds": [0.9, 0.9, None], "calibrated": False}
    prov = m["provenance"]
    from hisd_edge.atomic import sha256_file

    assert prov["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    assert prov["opset"] == 17 and prov["onnx_version"] == onnx.__version__
    assert m["calibration"]["count"] == 70 and m["calibration"]["source"] == "default:train"
    assert m["full_model"]["path"] == "full.onnx"
    # MACs of stage 0 by hand from the architecture: 7x7/2 stem (to 14x14), one basic block (two 3x3 convs,
    # plus a 1x1 shortcut if the width changes), the exit head (k x k conv, global pool, linear)
    cfg = m["model"]["arch"]["config"]
    stem, width, hidden, kernel = cfg["stem_channels"], cfg["widths"][0], cfg["exit_hidden"], cfg["exit_kernel"]
    assert cfg["stem_stride"] == 2 and cfg["depths"][0] == 1 and cfg["strides"][0] == 1
    pixels = 14 * 14
    expected = (
        pixels * stem * cfg["in_channels"] * 49
        + pixels * width * stem * 9
        + pixels * width * width * 9
        + (pixels * width * stem if stem != width else 0)
        + pixels * hidden * width * kernel * kernel
        + hidden * cfg["num_classes"]
    )
    assert m["stages"][0]["macs"] == expected


def test_stage_files_pass_full_checker_and_chain_matches_full_model(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    x = load_samples("default:test", count=32).tensors(bundle.preprocessing)
    for precision in ("fp32", "fp16", "int8"):
        for k in range(bundle.num_stages):
            onnx.checker.check_model(onnx.load(str(bundle.stage_path(k, precision))), full_check=True)
    chain = verify.Chain(
        [str(bundle.stage_path(k)) for k in range(3)], [[o["name"] for o in s["outputs"]] for s in bundle.stages]
    )
    report = verify.verify(str(bundle.full_model_path()), chain, x, 3)
    assert max(report.chain_max_abs_diff) <= 1e-5
    assert bundle.manifest["verification"]["torch_max_abs_diff"] is not None
    assert max(bundle.manifest["verification"]["torch_max_abs_diff"]) <= 1e-4


def test_int8_is_symmetric_qdq_that_tensorrt_accepts(tiny_bundle):
    """Zero points 0 (int8, explicit); weights float behind a per-channel Q/DQ pair; biases float; confidence float."""
    bundle = Bundle.open(tiny_bundle)
    for k in range(bundle.num_stages):
        model = onnx.load(str(bundle.stage_path(k, "int8")))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        producer = {o: n for n in model.graph.node for o in n.output}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq, "explicit Q/DQ present"
        for node in qdq:
            assert len(node.input) == 3, "zero points are explicit (omitted would mean uint8)"
            zero = inits[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), f"{node.name}: zero point must be int8 0"
            if node.op_type == "DequantizeLinear":
                assert node.input[0] not in inits, f"{node.name}: TensorRT 8.x dequantizes only activations (Q outputs)"
        weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
        assert weighted
        for node in weighted:
            dq = producer[node.input[1]]
            q = producer[dq.input[0]]
            assert (dq.op_type, q.op_type) == ("DequantizeLinear", "QuantizeLinear")
            weight = inits[q.input[0]]
            assert weight.dtype == np.float32
            out_channels = (
                weight.shape[0]
                if node.op_type == "Conv"
                else (weight.shape[0] if any(a.name == "transB" and a.i for a in node.attribute) else weight.shape[1])
            )
            assert inits[q.input[1]].size == out_channels, f"{node.name}: one weight scale per output channel"
            if len(node.input) > 2:
                assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32, "bias stays float"
        # activations: one scale per tensor
        act_q = [n for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
        assert act_q and all(inits[n.input[1]].size == 1 for n in act_q)
        # the fused confidence stays float
        assert not any(n.input[0].startswith(f"conf{k}/") for n in qdq)
        assert [n.op_type for n in model.graph.node if n.name.startswith(f"conf{k}/")] == ["Softmax", "ReduceMax"]


def test_fp16_keeps_float32_io(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    model = onnx.load(str(bundle.stage_path(1, "fp16")))
    for info in list(model.graph.input) + list(model.graph.output):
        assert info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_cache_scales_are_the_qdq_scales(tiny_bundle):
    """The TensorRT cache and the Q/DQ graph come from the same statistics."""
    bundle = Bundle.open(tiny_bundle)
    for k in range(bundle.num_stages):
        _, algorithm, scales = calib_cache.parse_cache((tiny_bundle / f"stage{k}.int8.cache").read_text())
        assert algorithm == "EntropyCalibration2"
        model = onnx.load(str(bundle.stage_path(k, "int8")))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        name = "input" if k == 0 else f"feat{k - 1}"
        quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name]
        assert quant, f"stage {k} quantizes its input {name}"
        assert scales[name] == pytest.approx(float(inits[quant[0].input[1]]), rel=1e-6)


def test_calibration_follows_the_chain(tiny_bundle, tmp_path):
    """Stage 1 is calibrated on what fp32 stage 0 makes of the calibration images, not on random data."""
    bundle = Bundle.open(tiny_bundle)
    spec = bundle.preprocessing
    recipe = calibrate.CalibrationRecipe(source="default:train", count=32, method="minmax")
    calibration = calibrate.load_calibration_set(recipe, spec)
    paths = [bundle.stage_path(k) for k in range(3)]
    chain = verify.Chain([str(p) for p in paths], [[o["name"] for o in s["outputs"]] for s in bundle.stages])
    stats = calibrate.calibrate_chain(paths, chain, calibration, recipe, tmp_path)
    images = calibration.inputs[0:32]
    feat0 = chain.run(images, stop=1)["feat0"]
    feat1 = chain.run(images, stop=2)["feat1"]
    assert stats[1].amax()["feat0"] == pytest.approx(float(np.abs(feat0).max()), rel=1e-6)
    assert stats[2].amax()["feat1"] == pytest.approx(float(np.abs(feat1).max()), rel=1e-6)
    assert stats[0].amax()["input"] == pytest.approx(float(np.abs(images).max()), rel=1e-6)
    np.testing.assert_allclose(stats[1].inputs, feat0[: len(stats[1].inputs)], atol=1e-6)


def test_validation_table(tiny_bundle):
    from hisd_edge.convert import format_validation_table

    validation = Bundle.open(tiny_bundle).manifest["validation"]
    assert validation["data"] == "default:val" and validation["count"] == 200 and validation["labelled"]
    rows = {(r["exit"], r["precision"]): r for r in validation["rows"]}
    assert set(rows) == {(k, p) for k in range(3) for p in ("fp32", "fp16", "int8")}
    # Recomputed here: the first 200 default:val digits through each precision's stage files.
    bundle = Bundle.open(tiny_bundle)
    val = load_samples("default:val").subset(range(200))
    x = val.tensors(bundle.preprocessing)
    predictions = {}
    for precision in ("fp32", "int8"):
        stages = [str(bundle.stage_path(k, precision)) for k in range(3)]
        outputs = StageChain(stages, precision=precision).run(x)
        predictions[precision] = [outputs[f"exit{k}"].argmax(axis=1) for k in range(3)]
    for k in range(3):
        assert rows[(k, "fp32")]["agreement_with_fp32"] == 1.0
        for precision in ("fp32", "int8"):
            assert rows[(k, precision)]["top1"] == pytest.approx(np.mean(predictions[precision][k] == val.labels))
        agreement = np.mean(predictions["int8"][k] == predictions["fp32"][k])
        assert rows[(k, "int8")]["agreement_with_fp32"] == pytest.approx(agreement)
        # INT8 calibrated on 70 real images stays close to fp32 (README: within 0.3 points on the default model).
        assert agreement >= 0.97 and abs(rows[(k, "int8")]["top1"] - rows[(k, "fp32")]["top1"]) <= 0.02
        assert rows[(k, "fp32")]["top1"] > (0.6, 0.75, 0.85)[k]  # the deeper, the better: a trained model
    text = format_validation_table(validation)
    assert "int8 top-1" in text and len(text.splitlines()) == 5


def test_stage_file_runs_under_polygraphy(tiny_bundle):
    """The stage files run as they are with Polygraphy's ONNX Runtime runner (polygraphy run stageK.onnx --onnxrt)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    bundle = Bundle.open(tiny_bundle)
    feat_shape = [2, *bundle.stages[1]["inputs"][0]["shape"][1:]]
    for precision in ("fp32", "fp16", "int8"):
        path = str(bundle.stage_path(1, precision))
        with OnnxrtRunner(SessionFromOnnx(path)) as runner:
            outputs = runner.infer({"feat0": np.ones(feat_shape, dtype=np.float32)})
        assert set(outputs) == {"feat1", "exit1", "conf1"}
        assert outputs["conf1"].shape == (2,)


def test_polygraphy_cli_runs_a_stage_file(tiny_bundle):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")
    assert Path(exe).exists(), "the polygraphy command is missing: it comes with the workstation extra"
    result = subprocess.run(
        [exe, "run", str(tiny_bundle / "stage0.onnx"), "--onnxrt"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASSED" in result.stdout + result.stderr


def test_manifest_is_json_with_no_nan(tiny_bundle):
    text = (tiny_bundle / "manifest.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def test_qdq_scales_are_the_calibrated_ranges(tiny_bundle, tmp_path):
    """quantize_int8 puts amax / 127 of the chained calibration on each activation it quantizes."""
    from hisd_edge.convert import quantize

    bundle = Bundle.open(tiny_bundle)
    recipe = calibrate.CalibrationRecipe(source="default:train", count=32, method="minmax")
    calibration = calibrate.load_calibration_set(recipe, bundle.preprocessing)
    paths = [bundle.stage_path(k) for k in range(3)]
    chain = verify.Chain([str(p) for p in paths], [[o["name"] for o in s["outputs"]] for s in bundle.stages])
    stage1 = calibrate.calibrate_chain(paths, chain, calibration, recipe, tmp_path)[1]
    out = tmp_path / "stage1.int8.onnx"
    quantize.quantize_int8(paths[1], out, stage1, "minmax", tmp_path)
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "feat0")
    assert float(inits[node.input[1]]) == pytest.approx(stage1.amax()["feat0"] / 127, rel=1e-6)


def test_user_onnx_with_a_fixed_batch_of_one(tiny_model_and_meta, tmp_path):
    """An ONNX exported for batch 1 is fed one sample at a time (calibration, verification, validation)."""
    import torch

    from hisd_edge.convert import convert_onnx

    model, meta = tiny_model_and_meta
    path = tmp_path / "batch1.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["pixels"],
            output_names=["e0", "e1", "e2"],
            opset_version=17,
            dynamo=False,
        )
    result = convert_onnx(
        path,
        tmp_path / "b1",
        ["e0", "e1", "e2"],
        preprocessing=meta["preprocessing"],
        precisions=("fp32", "int8"),
        calib="default:train",
        calib_count=9,
        val="default:val",
        val_count=11,
        verify_count=5,
    )
    manifest = result.manifest
    assert manifest["stages"][0]["inputs"][0]["shape"] == [1, 1, 28, 28]
    assert manifest["calibration"]["count"] == 9 and result.validation["count"] == 11
    assert max(result.verification["chain_max_abs_diff"]) <= 1e-5 and result.verification["samples"] == 5
    # The runtime feeds such a bundle one sample per run, whatever batch it is given.
    from hisd_edge.runtime import open_runtime
    from hisd_edge.runtime.thresholds import fit_thresholds

    cal, _ = fit_thresholds(Bundle.open(tmp_path / "b1"), "default:val", count=7, write=False, method="empirical")
    assert len(cal.exit_fractions) == 3
    with open_runtime(tmp_path / "b1") as runtime:
        results, _ = runtime.infer_tensors(np.zeros((5, 1, 28, 28), np.float32))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]


def test_user_onnx_with_a_fixed_batch_above_one_is_refused(tiny_model_and_meta, tmp_path):
    import torch

    from hisd_edge.convert import convert_onnx

    model, meta = tiny_model_and_meta
    path = tmp_path / "batch4.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(4, 1, 28, 28),),
            str(path),
            input_names=["pixels"],
            output_names=["e0", "e1", "e2"],
            opset_version=17,
            dynamo=False,
        )
    with pytest.raises(InputError, match="fixed batch of 4.*dynamic batch axis"):
        convert_onnx(
            path,
            tmp_path / "b4",
            ["e0", "e1", "e2"],
            preprocessing=meta["preprocessing"],
            precisions=("fp32",),
            calib_count=8,
            val="default:val",
            val_count=8,
        )
    assert not (tmp_path / "b4").exists()
