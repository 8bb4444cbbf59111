"""Step 3's reject path: a chain that does not reproduce the monolithic model is refused, at 1e-5."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from hisd_edge.convert import verify
from hisd_edge.errors import ConversionError
from hisd_edge.runtime.ort_session import StageChain

ROWS, WIDTH = 8, 4


def _model(nodes, inputs, outputs, consts):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", WIDTH]) for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", WIDTH]) for name in outputs],
        [helper.make_tensor(name, TensorProto.FLOAT, [1], [value]) for name, value in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _full():
    """exit0 = relu(x) + 0.5, exit1 = relu(x) * 2 (both exits as outputs of one graph)."""
    return _model(
        [
            helper.make_node("Relu", ["input"], ["feat0"]),
            helper.make_node("Add", ["feat0", "half"], ["exit0"]),
            helper.make_node("Mul", ["feat0", "two"], ["exit1"]),
        ],
        ["input"],
        ["exit0", "exit1"],
        {"half": 0.5, "two": 2.0},
    )


def _chain(exit0_offset=0.0, exit1_offset=0.0):
    """The same computation as two stages; an offset makes an exit disagree by exactly that much."""
    stage0 = _model(
        [
            helper.make_node("Relu", ["input"], ["feat0"]),
            helper.make_node("Add", ["feat0", "half"], ["exit0"]),
        ],
        ["input"],
        ["feat0", "exit0"],
        {"half": 0.5 + exit0_offset},
    )
    stage1 = _model(
        [helper.make_node("Mul", ["feat0", "two"], ["scaled"]), helper.make_node("Add", ["scaled", "off"], ["exit1"])],
        ["feat0"],
        ["exit1"],
        {"two": 2.0, "off": exit1_offset},
    )
    return StageChain([stage0, stage1], [["feat0", "exit0"], ["exit1"]])


X = np.random.default_rng(0).uniform(-1, 1, (ROWS, WIDTH)).astype(np.float32)


def test_a_faithful_chain_passes_and_reports_its_differences():
    report = verify.verify(_full(), _chain(), X, 2)
    assert report.samples == ROWS and report.chain_max_abs_diff == [0.0, 0.0] and report.torch_max_abs_diff is None


def test_a_difference_just_under_the_tolerance_passes():
    report = verify.verify(_full(), _chain(exit1_offset=6e-6), X, 2)
    assert report.chain_max_abs_diff[1] == pytest.approx(6e-6, rel=0.1)


@pytest.mark.parametrize("exit0_offset, exit1_offset, bad_exit", [(3e-5, 0.0, 0), (0.0, 3e-5, 1), (0.0, 1e-2, 1)])
def test_a_disagreeing_chain_is_refused(exit0_offset, exit1_offset, bad_exit):
    # 3e-5 is over the chain tolerance (1e-5) though under the torch one (1e-4): the chain rule is the tight one.
    with pytest.raises(ConversionError, match=f"do not reproduce the monolithic ONNX at exit {bad_exit}.*no bundle"):
        verify.verify(_full(), _chain(exit0_offset, exit1_offset), X, 2)


def test_a_nan_difference_is_refused():
    x = X.copy()
    x[0, 0] = np.nan  # relu(NaN) is NaN on both sides: NaN never compares as "within tolerance"
    with pytest.raises(ConversionError, match="exit 0"):
        verify.verify(_full(), _chain(), x, 2)


class _Torch(torch.nn.Module):
    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        feat = torch.relu(x)
        return [feat + 0.5 + self.offset, feat * 2.0]


def test_the_onnx_must_reproduce_torch_within_1e_4():
    report = verify.verify(_full(), _chain(), X, 2, torch_model=_Torch(4e-5))
    assert report.torch_max_abs_diff[0] == pytest.approx(4e-5, rel=0.1)
    with pytest.raises(ConversionError, match="does not reproduce torch at exit 0"):
        verify.verify(_full(), _chain(), X, 2, torch_model=_Torch(3e-4))


def test_convert_refuses_a_split_that_moves_an_exit_and_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    """A stage graph off by 3e-5 at the last exit (within torch's 1e-4, not the chain's 1e-5): no bundle."""
    from onnx import numpy_helper

    from hisd_edge.convert import convert_checkpoint, split

    real_split = split.split_stages

    def drifting_split(proto, exit_outputs):
        stages = real_split(proto, exit_outputs)
        graph = stages[-1].model.graph
        nodes = list(graph.node)
        at = next(i for i, n in enumerate(nodes) if "exit2" in n.output)
        nodes[at].output[list(nodes[at].output).index("exit2")] = "exit2_exact"
        nodes.insert(at + 1, helper.make_node("Add", ["exit2_exact", "drift"], ["exit2"]))
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.append(numpy_helper.from_array(np.array([3e-5], np.float32), "drift"))
        return stages

    monkeypatch.setattr(split, "split_stages", drifting_split)
    out = tmp_path / "bundle"
    with pytest.raises(ConversionError, match=r"at exit 2 \(max abs diff \S+e-05 > 1e-05"):
        convert_checkpoint(tiny_checkpoint, out, precisions=("fp32",), val_count=8, verify_count=16)
    assert list(tmp_path.iterdir()) == []  # no bundle, no half-written temporary directory


def test_a_graph_the_checker_rejects_is_a_one_line_conversion_error():
    from hisd_edge.convert.split import check_model

    bad = helper.make_model(
        helper.make_graph(
            [helper.make_node("NoSuchOp", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    with pytest.raises(ConversionError, match=r"^stage 1 \(int8\) fails onnx\.checker \(.*NoSuchOp") as info:
        check_model(bad, "stage 1 (int8)")
    assert "\n" not in str(info.value)
