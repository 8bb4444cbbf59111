"""Export and structural split: boundaries found from the graph, clean cuts only, stable names."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hisd_edge.convert import export, split, verify
from hisd_edge.errors import ConversionError, InputError
from hisd_edge.models import ExitInfo, create_model


def _split(model, shape, split_points=None):
    proto, split_tensors = export.export_module(model, shape, split_points=split_points)
    num = len(model.exit_info)
    conf = export.add_confidence_outputs(proto, [getattr(model, "exit_output", "logits")] * num)
    outputs = split.stage_output_names(num, conf)
    boundaries = split.find_boundaries(proto, outputs, split_tensors or None)
    split.name_boundaries(proto, boundaries)
    return proto, split.split_stages(proto, outputs), boundaries


class SkipAcrossExit(nn.Module):
    """Stage 1 reads stage 0's output AND the raw input: no single tensor separates the stages."""

    def __init__(self):
        super().__init__()
        self.stage0 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head0 = nn.Sequential(nn.Flatten(1), nn.Linear(4 * 8 * 8, 3))
        self.head1 = nn.Sequential(nn.Flatten(1), nn.Linear(4 * 8 * 8, 3))
        self.exit_info = [ExitInfo("exit0", 0, 4, 1, "stage0"), ExitInfo("exit1", 1, 4, 1, "stage1")]

    def forward(self, x):
        a = self.stage0(x)
        b = self.stage1(a) + x  # the skip from the input crosses the boundary after exit 0
        return [self.head0(a), self.head1(b)]


def test_export_names_exits_and_batch_axis():
    model = create_model("tiny_cnn")
    proto, _ = export.export_module(model, (1, 28, 28))
    assert [o.name for o in proto.graph.output] == ["exit0", "exit1", "exit2"]
    assert [i.name for i in proto.graph.input] == ["input"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert proto.graph.value_info, "shape inference filled value_info"


def test_structural_split_of_cnn_and_transformer_is_exact():
    for name in ("tiny_cnn", "tiny_vit"):
        model = create_model(name).eval()
        proto, stages, boundaries = _split(model, (1, 28, 28))
        assert len(stages) == 3 and len(boundaries) == 2
        assert [s.inputs for s in stages] == [["input"], ["feat0"], ["feat1"]]
        assert [s.outputs for s in stages] == [
            ["feat0", "exit0", "conf0"],
            ["feat1", "exit1", "conf1"],
            ["exit2", "conf2"],
        ]
        for stage in stages:
            onnx.checker.check_model(stage.model, full_check=True)
            assert stage.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
        chain = verify.Chain([verify.model_bytes(s.model) for s in stages], [s.outputs for s in stages])
        report = verify.verify(verify.model_bytes(proto), chain, x, 3, torch_model=model)
        assert max(report.chain_max_abs_diff) <= verify.CHAIN_TOLERANCE
        assert max(report.torch_max_abs_diff) <= verify.TORCH_TOLERANCE
        # the fused confidence is the softmax maximum of the exit's logits
        out = chain.run(x)
        logits = out["exit1"].astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        np.testing.assert_allclose(out["conf1"], probs.max(1), rtol=1e-5)


def test_not_a_clean_cut_names_the_tensors():
    with pytest.raises(ConversionError) as exc:
        _split(SkipAcrossExit().eval(), (1, 8, 8))
    message = str(exc.value)
    assert "no clean cut after exit 0" in message and "input" in message
    assert "\n" not in message


def test_exits_out_of_order_are_reported():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = create_model("tiny_cnn")
            self.exit_info = list(reversed(self.inner.exit_info))

        def forward(self, x):
            return list(reversed(self.inner(x)))

    with pytest.raises(ConversionError, match="shallowest first|clean cut"):
        _split(Reversed().eval(), (1, 28, 28))


def test_named_split_points_match_the_structural_ones():
    model = create_model("tiny_cnn").eval()
    names = [n for n, _ in export.list_split_points(model, (1, 28, 28))]
    assert "stages.0" in names and "stages.1" in names
    _, stages_named, _boundaries_named = _split(model, (1, 28, 28), split_points=["stages.0", "stages.1"])
    _, stages_found, _ = _split(model, (1, 28, 28))
    for a, b in zip(stages_named, stages_found):
        assert [n.op_type for n in a.model.graph.node] == [n.op_type for n in b.model.graph.node]


def test_unknown_split_point_lists_valid_names():
    model = create_model("tiny_cnn").eval()
    with pytest.raises(InputError) as exc:
        export.export_module(model, (1, 28, 28), split_points=["stages.0", "nope"])
    assert "nope" in str(exc.value) and "stages.1" in str(exc.value)


def test_split_point_that_is_not_a_clean_cut_is_refused():
    model = create_model("tiny_cnn").eval()
    # inside stage 1's residual block: the block's shortcut still needs the block input
    inner = next(n for n, _ in export.list_split_points(model, (1, 28, 28)) if n.startswith("stages.1.0.body"))
    with pytest.raises(ConversionError, match="not a clean cut|not a boundary"):
        _split(model, (1, 28, 28), split_points=["stages.0", inner])


def test_user_onnx_exits_are_renamed_and_checked(tmp_path):
    model = create_model("tiny_cnn").eval()
    path = tmp_path / "user.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["image"],
            output_names=["logits_a", "logits_b", "logits_c"],
            dynamic_axes={"image": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    proto, original = export.load_onnx(path, ["logits_a", "logits_b", "logits_c"])
    assert [o.name for o in proto.graph.output] == ["exit0", "exit1", "exit2"]
    assert original == {"exit0": "logits_a", "exit1": "logits_b", "exit2": "logits_c"}
    assert proto.graph.input[0].name == "input"
    with pytest.raises(InputError) as exc:
        export.load_onnx(path, ["logits_a", "missing"])
    assert "missing" in str(exc.value) and "logits_b" in str(exc.value)
    with pytest.raises(InputError):
        export.load_onnx(tmp_path / "absent.onnx", ["a"])
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError):
        export.load_onnx(tmp_path / "junk.onnx", ["a"])


def test_exit_name_clash_in_user_onnx_is_resolved(tmp_path):
    """A graph whose tensors already use the names exit0/exit1 in another role still splits correctly."""
    model = create_model("tiny_cnn").eval()
    path = tmp_path / "clash.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["x"],
            output_names=["exit1", "exit2", "exit0"],
            opset_version=17,
            dynamo=False,
        )
    proto, original = export.load_onnx(path, ["exit1", "exit2", "exit0"])
    assert original == {"exit0": "exit1", "exit1": "exit2", "exit2": "exit0"}
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    got = verify.run_full(verify.make_session(verify.model_bytes(proto)), x, ["exit0", "exit1", "exit2"])
    for k in range(3):
        np.testing.assert_allclose(got[f"exit{k}"], expected[k].numpy(), atol=1e-4)
