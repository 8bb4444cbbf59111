"""hisd-edge check finds what TensorRT would reject; the Python API converts any protocol module."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hisd_edge.cli import main
from hisd_edge.convert.check import check_model
from hisd_edge.convert.trt_ops import FAMILIES, family
from hisd_edge.errors import InputError

ALL = list(FAMILIES.values())


def _model(nodes, inputs, outputs, inits=(), opset=17, value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _codes(findings, target=None):
    return {f.code for f in findings if target is None or f.target in (target, "all")}


def test_layernorm_is_unsupported_on_trt85_only():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])
    inits = [
        numpy_helper.from_array(np.ones(8, np.float32), "g"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
    ]
    model = _model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)], [x], [y], inits)
    findings = check_model(model, ALL)
    assert _codes(findings, "8.5") == {"unsupported_op"}
    assert not _codes(findings, "8.6") and not _codes(findings, "10") and not _codes(findings, "11")
    assert "--opset 16" in next(f for f in findings if f.code == "unsupported_op").message


def test_asymmetric_and_uint8_qdq_are_errors():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.int8), "zp"),
        numpy_helper.from_array(np.array(0, np.uint8), "zu"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
        helper.make_node("QuantizeLinear", ["d", "s", "zu"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s", "zu"], ["d2"]),
        helper.make_node("QuantizeLinear", ["d2", "s"], ["q3"]),
        helper.make_node("DequantizeLinear", ["q3", "s"], ["y"]),
    ]
    findings = check_model(_model(nodes, [x], [y], inits), ALL)
    codes = [f.code for f in findings]
    assert codes.count("nonzero_zero_point") == 2  # the Q and the DQ with zero point 3
    assert "uint8_qdq" in codes
    assert all(f.target == "all" for f in findings if f.code in ("nonzero_zero_point", "uint8_qdq"))


def test_dynamic_dims_int64_weights_custom_ops_missing_shapes_and_opset():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", 8])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    table = numpy_helper.from_array(np.arange(100, dtype=np.int64), "table")
    nodes = [
        helper.make_node("Gather", ["table", "idx"], ["picked"]),
        helper.make_node("Cast", ["picked"], ["picked_f"], to=TensorProto.FLOAT),
        helper.make_node("Fancy", ["x"], ["z"], domain="com.example"),
        helper.make_node("Add", ["z", "picked_f"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x, idx], [y], initializer=[table]),
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.example", 1)],
    )
    findings = check_model(model, ALL)
    assert "dynamic_dim" in _codes(findings) and "height" in " ".join(f.message for f in findings)
    assert "custom_domain" in _codes(findings)
    assert "missing_shape" in _codes(findings)
    assert "int64_weights" in _codes(findings, "8.5") and "int64_weights" not in _codes(findings, "10")
    assert "opset" in _codes(findings, "8.6") and "opset" not in _codes(findings, "11")


def test_family_names():
    assert family("10.3.0").name == "10" and family("TRT-11.1").name == "11" and family("8.6").name == "8.6"
    with pytest.raises(InputError):
        family("7.1")


@pytest.fixture(scope="module")
def vit_bundles(tmp_path_factory):
    """An untrained tiny transformer through the Python API: logits exits at opset 17 and 16, embedding exits."""
    from hisd_edge.convert import convert_model
    from hisd_edge.models import create_model
    from hisd_edge.preprocess import Preprocessing

    spec = Preprocessing(input_size=(28, 28), channels=1, color_order="gray", mean=(0.1307,), std=(0.3081,))
    root = tmp_path_factory.mktemp("vit")
    common = {
        "preprocessing": spec,
        "class_names": [str(d) for d in range(10)],
        "calib": "default:train",
        "calib_count": 16,
        "val": "default:val",
        "val_count": 40,
    }
    results = {
        "opset17": convert_model(
            create_model("tiny_vit").eval(), root / "vit17", precisions=("fp32", "int8"), **common
        ),
        "opset16": convert_model(
            create_model("tiny_vit").eval(), root / "vit16", precisions=("fp32",), opset=16, **common
        ),
        "embedding": convert_model(
            create_model("tiny_vit", exit_output="embedding").eval(),
            root / "emb",
            precisions=("fp32", "fp16"),
            **common,
        ),
    }
    return results


def test_transformer_bundle_check_flags_layernorm_for_trt85_and_opset16_fixes_it(vit_bundles, capsys):
    bundle17 = str(vit_bundles["opset17"].bundle)
    assert main(["check", bundle17, "--trt", "8.5"]) == 1
    out = capsys.readouterr().out
    assert "LayerNormalization" in out and "problem" in out
    assert main(["check", bundle17, "--trt", "8.6,10,11"]) == 0
    capsys.readouterr()
    assert main(["check", str(vit_bundles["opset16"].bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]


def test_python_api_module_conversion_and_embedding_exits(vit_bundles):
    result = vit_bundles["opset17"]
    assert result.manifest["model"]["source"] == "module"
    assert max(result.verification["torch_max_abs_diff"]) <= 1e-4
    assert "int8" in result.manifest["stages"][0]["files"]
    emb = vit_bundles["embedding"].manifest
    assert all(e["confidence_output"] is None and e["kind"] == "embedding" for e in emb["exits"])
    assert emb["policy"]["kind"] == "stability"
    rows = emb["validation"]["rows"]
    assert all(r["top1"] is None and 0.99 <= r["cosine_with_fp32"] <= 1.0 + 1e-6 for r in rows)
    assert "cos" in vit_bundles["embedding"].table()


def test_inspect_text_shows_every_stage_and_precision(vit_bundles, capsys):
    assert main(["inspect", str(vit_bundles["opset17"].bundle)]) == 0
    out = capsys.readouterr().out
    for word in ("feat0[b,", "exit2", "int8", "MACs", "validation on default:val"):
        assert word in out


def test_int32_bias_and_int8_weight_constants_are_flagged():
    """What ONNX Runtime's defaults produce (QuantizeBias, int8 weight initializers) and TensorRT rejects."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4, 4])
    inits = [
        numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.full(2, 0.1, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(2, np.int8), "w_z"),
        numpy_helper.from_array(np.ones(2, np.int32), "b_q"),
        numpy_helper.from_array(np.full(2, 0.01, np.float32), "b_s"),
        numpy_helper.from_array(np.zeros(2, np.int32), "b_z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], axis=0),
        helper.make_node("Conv", ["x", "w", "b"], ["y"]),
    ]
    findings = check_model(_model(nodes, [x], [y], inits), ALL)
    assert "int32_dequantize" in _codes(findings, "10")
    assert "int8_weight_constant" in _codes(findings, "8.5") and "int8_weight_constant" not in _codes(findings, "11")
    # The same constants without zero-point inputs (optional in ONNX) are flagged just the same.
    bare = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], axis=0),
        nodes[2],
    ]
    findings = check_model(_model(bare, [x], [y], inits), ALL)
    assert "int32_dequantize" in _codes(findings, "10") and "int8_weight_constant" in _codes(findings, "8.5")


def test_check_a_precision_the_bundle_lacks_is_an_error(vit_bundles, capsys):
    bundle = vit_bundles["opset17"].bundle
    assert main(["check", str(bundle), "--precision", "int4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no int4 stage files" in err[0]


def test_inspect_runs_without_torch_or_onnx(vit_bundles):
    """inspect reads only the manifest: it works on a target that has neither torch nor onnx."""
    import subprocess
    import sys

    blocker = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'onnx_graphsurgeon', 'onnxruntime'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, _Block())\n"
        "from hisd_edge.cli import main\n"
        f"raise SystemExit(main(['inspect', {str(vit_bundles['opset16'].bundle)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exit2" in result.stdout
