"""Foreign ONNX in: batch-only values across cuts, normalisation, clean-cut listing, bad input."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hisd_edge.convert import export, normalize, split, verify
from hisd_edge.convert.pipeline import list_onnx_points
from hisd_edge.errors import ConversionError, InputError
from hisd_edge.models import ExitInfo


class BatchViewNet(nn.Module):
    """Two exits; the batch size is read at the top (EfficientNet's ``bs = inputs.size(0)``)."""

    def __init__(self):
        super().__init__()
        self.stage0 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6())
        self.stage1 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.head0 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)
        self.exit_info = [ExitInfo("exit0", 0, 4, 1, "stage0"), ExitInfo("exit1", 1, 8, 2, "stage1")]

    def forward(self, x):
        bs = x.size(0)
        a = self.stage0(x)
        b = self.pool(self.stage1(a))
        return [self.head0(a), self.fc(b.view(bs, -1))]


def _export(model, path, **kwargs):
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 8, 8),),
            str(path),
            input_names=["image"],
            output_names=["logits0", "logits1"],
            opset_version=kwargs.pop("opset", 17),
            dynamo=False,
            **kwargs,
        )
    return path


def _split_user_onnx(path, exits, input_shape=None):
    proto, _ = export.load_onnx(path, exits, input_shape)
    outputs = split.stage_output_names(len(exits), [None] * len(exits))
    boundaries = split.find_boundaries(proto, outputs)
    split.name_boundaries(proto, boundaries)
    proto = export.infer_shapes(proto)
    return proto, split.split_stages(proto, outputs)


def test_batch_size_read_at_the_top_does_not_block_the_cut(tmp_path):
    """Shape(input) -> Gather(0) -> Concat -> Reshape at the end is recomputed in the last stage."""
    torch.manual_seed(0)
    model = BatchViewNet().eval()
    path = _export(model, tmp_path / "bs.onnx", dynamic_axes={"image": {0: "n"}})
    assert any(n.op_type == "Shape" for n in onnx.load(str(path)).graph.node)
    _, stages = _split_user_onnx(path, ["logits0", "logits1"])
    assert [s.inputs for s in stages] == [["input"], ["feat0"]]
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    chain = verify.Chain([verify.model_bytes(s.model) for s in stages], [s.outputs for s in stages])
    got = chain.run(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    for k in range(2):
        np.testing.assert_allclose(got[f"exit{k}"], expected[k].numpy(), atol=1e-5)
    # the batch comes from the stage's own input in every stage
    stage1 = stages[1].model
    shapes = [n for n in stage1.graph.node if n.op_type == "Shape"]
    assert shapes and all(n.input[0] == "feat0" for n in shapes)


def test_same_through_the_torch_path():
    model = BatchViewNet().eval()
    proto, _ = export.export_module(model, (1, 8, 8))
    outputs = split.stage_output_names(2, [None, None])
    boundaries = split.find_boundaries(proto, outputs)
    assert len(boundaries) == 1


def _legacy_graph(tmp_path, dynamic_hw=True):
    """IR 3, opset 11, initializers listed as inputs, BatchNormalization unfolded (a PP-OCR-style export)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    fc0 = rng.standard_normal((4, 2)).astype(np.float32)
    fc1 = rng.standard_normal((5, 2)).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    bn += [rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)]
    inits = {"w1": w1, "w2": w2, "fc0": fc0, "fc1": fc1, "g": bn[0], "b": bn[1], "m": bn[2], "v": bn[3]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn1"], epsilon=1e-5, name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p0"], name="gap0"),
        helper.make_node("Flatten", ["p0"], ["f0"], name="flat0"),
        helper.make_node("MatMul", ["f0", "fc0"], ["head0"], name="fc0"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p1"], name="gap1"),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flat1"),
        helper.make_node("MatMul", ["f1", "fc1"], ["head1"], name="fc1"),
    ]
    hw = ["h", "w"] if dynamic_hw else [16, 16]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1 if False else "n", 3, *hw])]
    inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inits.items()]
    graph = helper.make_graph(
        nodes,
        "legacy",
        inputs,
        [
            helper.make_tensor_value_info("head0", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("head1", TensorProto.FLOAT, ["n", 2]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 3
    path = tmp_path / "legacy.onnx"
    onnx.save(model, str(path))
    return path, model


def test_legacy_graph_is_normalised(tmp_path):
    path, original = _legacy_graph(tmp_path)
    normalised, report = normalize.normalize(original, [None, 3, 16, 16])
    assert report.initializer_inputs_removed == 8 and report.batchnorms_folded == 1
    assert normalize.model_opset(normalised) >= 13 and normalised.ir_version >= 7
    assert [i.name for i in normalised.graph.input] == ["x"]
    assert not any(n.op_type == "BatchNormalization" for n in normalised.graph.node)
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    before = verify.make_session(original.SerializeToString()).run(["head0", "head1"], {"x": x})
    after = verify.make_session(normalised.SerializeToString()).run(["head0", "head1"], {"x": x})
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # and the whole path splits it
    _, stages = _split_user_onnx(path, ["head0", "head1"], [None, 3, 16, 16])
    assert len(stages) == 2


def test_input_shape_contradiction_and_parsing(tmp_path):
    path, _ = _legacy_graph(tmp_path, dynamic_hw=False)
    with pytest.raises(InputError) as exc:
        export.load_onnx(path, ["head0", "head1"], [None, 3, 32, 32])
    assert "contradicts" in str(exc.value) and "\n" not in str(exc.value)
    assert normalize.parse_input_shape("N,3,224,224") == [None, 3, 224, 224]
    assert normalize.parse_input_shape("1x3x224x224") == [1, 3, 224, 224]
    assert normalize.parse_input_shape("3x224x224") == [None, 3, 224, 224]
    for bad in ("3,224", "N,3,N,224", "a,b,c"):
        with pytest.raises(InputError):
            normalize.parse_input_shape(bad)


def test_list_points_marks_clean_cuts(tmp_path):
    from hisd_edge.models import create_model

    model = create_model("tiny_cnn").eval()
    path = tmp_path / "tiny.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["x"],
            output_names=["a", "b", "c"],
            dynamic_axes={"x": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    rows = {name: clean for name, _, clean in list_onnx_points(path)}
    proto, _ = export.load_onnx(path, ["a", "b", "c"])
    outputs = split.stage_output_names(3, [None] * 3)
    found = split.find_boundaries(proto, outputs)
    for boundary in found:
        assert rows[boundary.tensor], f"the structural boundary {boundary.tensor} is listed as a clean cut"
    assert not all(rows.values()) and sum(rows.values()) >= 2


def test_a_cut_that_cannot_be_clean_names_the_tensors_and_why():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 1, 3, padding=1)
            self.h0 = nn.Sequential(nn.Flatten(1), nn.Linear(4 * 8 * 8, 3))
            self.h1 = nn.Sequential(nn.Flatten(1), nn.Linear(8 * 8, 3))
            self.exit_info = [ExitInfo("exit0", 0, 4, 1, "a"), ExitInfo("exit1", 1, 1, 1, "b")]

        def forward(self, x):
            a = self.a(x)
            return [self.h0(a), self.h1(self.b(a) + x)]

    proto, _ = export.export_module(Skip().eval(), (1, 8, 8))
    with pytest.raises(ConversionError) as exc:
        split.find_boundaries(proto, split.stage_output_names(2, [None, None]))
    message = str(exc.value)
    assert "input (read by Add" in message and "\n" not in message and "split@" not in message


def test_feature_map_exits_are_refused_at_convert(tmp_path):
    from hisd_edge.convert import convert_onnx

    path, _ = _legacy_graph(tmp_path, dynamic_hw=False)
    with pytest.raises(InputError) as exc:
        convert_onnx(path, tmp_path / "out", ["r1", "head1"], calib="default:train", precisions="fp32")
    assert "not one logits vector per sample" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_cli_list_points_marks_clean_cuts_and_input_shape_errors_are_one_line(tmp_path, capsys):
    from hisd_edge.cli import main

    path, _ = _legacy_graph(tmp_path, dynamic_hw=True)
    assert main(["convert", str(path), "--list-points", "--input-shape", "N,3,16,16"]) == 0
    out = capsys.readouterr().out
    marked = [line.split()[1] for line in out.splitlines() if line.strip().startswith("*")]
    assert "r1" in marked and "c1" not in marked  # BN folded: the Conv writes bn1, which the Relu reads
    assert main(["convert", str(path), "--list-points"]) == 0  # dynamic H/W: listed all the same
    capsys.readouterr()
    code = main(["convert", str(path), "--exits", "head0,head1", "--calib", "default:train", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 2 and "--input-shape" in err and len(err.strip().splitlines()) == 1
    code = main(["convert", str(path), "--list-points", "--input-shape", "N,3,0,16"])
    err = capsys.readouterr().err
    assert code == 2 and "--input-shape" in err and len(err.strip().splitlines()) == 1


def test_inspect_marks_incomplete_mac_counts():
    from hisd_edge.convert import inspect as inspect_mod

    assert inspect_mod._macs(117_000_000, False).startswith(">=")
    assert not inspect_mod._macs(117_000_000, True).startswith(">=")
