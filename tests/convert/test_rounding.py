"""GPTQ weight rounding: the input moments it is computed from, the rounding, and the INT8 file."""

import json

import numpy as np
import pytest

from hisd_edge.convert import calib_stats, calibrate, qdq, rounding, verify
from hisd_edge.errors import InputError


def _conv(weight, bias, group=1, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), size=9):
    from onnx import TensorProto, helper, numpy_helper

    channels = weight.shape[1] * group
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], name="conv", group=group, strides=strides, pads=pads, dilations=dilations
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _im2col_moment(x, weight_shape, group, strides, pads, dilations):
    """sum p p^T over every output position, by plain loops (the definition)."""
    _, per_group, kh, kw = weight_shape
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))).astype(np.float64)
    span_h, span_w = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    moment = np.zeros((group, per_group * kh * kw, per_group * kh * kw))
    for g in range(group):
        block = x[:, g * per_group : (g + 1) * per_group]
        for i in range(0, x.shape[2] - span_h + 1, strides[0]):
            for j in range(0, x.shape[3] - span_w + 1, strides[1]):
                patch = block[:, :, i : i + span_h : dilations[0], j : j + span_w : dilations[1]].reshape(len(x), -1)
                moment[g] += patch.T @ patch
    return moment


@pytest.mark.parametrize(
    "shape, group, strides, pads, dilations",
    [
        ((4, 3, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1)),
        ((6, 1, 3, 3), 6, (2, 2), (0, 1, 1, 0), (1, 1)),  # depthwise, stride 2, asymmetric "same" padding
        ((4, 2, 2, 3), 2, (1, 2), (0, 0, 0, 0), (2, 1)),  # grouped, dilated, non-square kernel
        ((5, 3, 1, 1), 1, (2, 2), (0, 0, 0, 0), (1, 1)),  # 1x1 with stride
    ],
)
def test_input_moments_are_the_patch_second_moments(shape, group, strides, pads, dilations):
    from onnx import helper

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3, shape[1] * group, 9, 9)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, strides=strides, pads=pads, dilations=dilations)
    moments = rounding.InputMoments(node, shape)
    moments.update(x[:2])
    moments.update(x[2:])
    expected = _im2col_moment(x, shape, group, strides, pads, dilations)
    assert moments.usable
    assert moments.sum == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert moments.hessian() == pytest.approx(expected / moments.rows, rel=1e-5, abs=1e-6)


def test_input_moments_subsample_large_batches_evenly(monkeypatch):
    from onnx import helper

    monkeypatch.setattr(rounding, "MAX_ROWS_PER_BATCH", 50)
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    moments = rounding.InputMoments(node, (2, 2, 1, 1))
    moments.update(np.ones((4, 2, 10, 10), dtype=np.float32))  # 400 positions
    assert 25 <= moments.rows <= 50
    assert moments.hessian() == pytest.approx(np.ones((1, 2, 2)))
    monkeypatch.setattr(rounding, "MAX_PATCH_VALUES", 40)  # a wide layer: fewer rows, same memory
    wide = rounding.InputMoments(node, (2, 2, 1, 1))
    wide.update(np.ones((4, 2, 10, 10), dtype=np.float32))
    assert 10 <= wide.rows <= 20


def test_unsupported_geometry_keeps_plain_rounding():
    from onnx import helper

    auto = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")
    assert not rounding.InputMoments(auto, (2, 2, 3, 3)).usable
    trans_a = helper.make_node("Gemm", ["a", "w"], ["y"], transA=1)
    assert not rounding.InputMoments(trans_a, (4, 3)).usable


def test_gptq_rounds_onto_the_grid_and_beats_nearest_on_correlated_inputs():
    rng = np.random.default_rng(1)
    # 3x3 filters with large, nearly cancelling taps over smooth inputs (flat image regions).
    weight = rng.normal(0, 6, (16, 9))
    weight -= weight.mean(axis=1, keepdims=True)
    base = rng.uniform(0, 6, (4000, 1))
    x = base + rng.normal(0, 0.2, (4000, 9))
    hessian = (x.T @ x / len(x))[None]
    scale = np.abs(weight).max(axis=1) / 127
    rounded = rounding.gptq_round(weight, scale, hessian, group=1)
    q = rounded / scale[:, None]
    assert np.allclose(q, np.rint(q), atol=1e-3) and np.abs(np.rint(q)).max() <= 127
    nearest = np.clip(np.rint(weight / scale[:, None]), -127, 127) * scale[:, None]

    def output_error(w):
        return float(np.mean(((w - weight) @ x.T) ** 2))

    assert output_error(rounded) < 0.5 * output_error(nearest)


def test_gptq_handles_dead_inputs_and_groups():
    rng = np.random.default_rng(2)
    weight = rng.normal(0, 1, (4, 3))  # 2 groups of 2 output channels
    x = rng.normal(0, 1, (2, 500, 3))
    x[1, :, 2] = 0.0  # an input of group 1 that is always zero
    hessian = np.einsum("gmi,gmj->gij", x, x) / 500
    scale = np.abs(weight).max(axis=1) / 127
    rounded = rounding.gptq_round(weight, scale, hessian, group=2)
    assert np.all(np.isfinite(rounded))
    assert rounded[2:, 2] == pytest.approx([0.0, 0.0])  # weights on a dead input do not matter: zero


def _smooth_images(rng, n, channels=8, size=9):
    return (rng.uniform(0, 6, (n, channels, 1, 1)) + rng.normal(0, 0.3, (n, channels, size, size))).astype(np.float32)


def test_gptq_weights_in_the_qdq_file_reduce_the_output_error_and_keep_their_integers():
    from onnx import numpy_helper

    rng = np.random.default_rng(3)
    weight = rng.normal(0, 6, (8, 1, 3, 3)).astype(np.float32)
    weight -= weight.mean(axis=(2, 3), keepdims=True)
    model = _conv(weight, rng.normal(0, 1, 8).astype(np.float32), group=8, pads=(1, 1, 1, 1))
    calib, test = _smooth_images(rng, 64), _smooth_images(rng, 64)
    stats = calib_stats.collect_chain([model], [["y"]], calib, verify.make_session, batch_size=16)[0]
    assert set(stats.input_moments) == {"conv"}
    stage = calibrate.StageCalibration(stats, stats.sample_inputs, 16)
    rounded = stage.rounded_weights(model)
    plan = qdq.plan_qdq(model)
    weights_only = qdq.QdqPlan(activations={}, weights=plan.weights, layers=plan.layers, layer_nodes=plan.layer_nodes)
    reference = verify.make_session(model.SerializeToString()).run(["y"], {"x": test})[0]

    def error(weights):
        quantized, _ = qdq.apply_qdq(model, weights_only, {}, stats.channel_means, weights)
        got = verify.make_session(quantized.SerializeToString()).run(["y"], {"x": test})[0]
        return quantized, float(np.linalg.norm(got - reference))

    quantized, gptq_error = error(rounded)
    _, nearest_error = error(None)
    assert gptq_error < 0.7 * nearest_error  # on held-out images, not the calibration ones
    # The file's weight is scale * q exactly, with the original weight's scale.
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    quant = next(n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and "gptq" in n.input[0])
    stored, scale = inits[quant.input[0]], inits[quant.input[1]]
    assert scale == pytest.approx(qdq.weight_scale(weight, 0))
    q = stored / scale[:, None, None, None]
    assert np.abs(q - np.rint(q)).max() < 1e-3
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), weight)  # the fp32 model is not changed
    read = {name for node in quantized.graph.node for name in node.input}
    assert set(inits) <= read  # the replaced fp32 weight and bias are not carried along (file size)


def test_nearest_rounding_from_a_recipe(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"source": "default:train", "weight_rounding": "nearest"}))
    recipe = calibrate.load_recipe(path)
    assert recipe.weight_rounding == "nearest"
    rng = np.random.default_rng(4)
    model = _conv(rng.normal(0, 1, (2, 3, 3, 3)).astype(np.float32), np.zeros(2, np.float32))
    stats = calib_stats.collect_chain([model], [["y"]], _smooth_images(rng, 8, 3), verify.make_session, 8)[0]
    assert (
        calibrate.StageCalibration(stats, stats.sample_inputs, 8, weight_rounding="nearest").rounded_weights(model)
        == {}
    )
    assert set(calibrate.StageCalibration(stats, stats.sample_inputs, 8).rounded_weights(model)) == {"conv"}
    path.write_text(json.dumps({"source": "default:train", "weight_rounding": "adaround"}))
    with pytest.raises(InputError, match="weight rounding 'adaround' is not one of gptq, nearest"):
        calibrate.load_recipe(path)


def test_sample_inputs_kept_for_the_auto_check_are_bounded_in_bytes(monkeypatch):
    rng = np.random.default_rng(6)
    model = _conv(rng.normal(0, 1, (2, 3, 3, 3)).astype(np.float32), np.zeros(2, np.float32))
    x = _smooth_images(rng, 64, 3)
    stats = calib_stats.collect_chain([model], [["y"]], x, verify.make_session, 8)[0]
    assert len(stats.sample_inputs) == 64  # fewer than SAMPLE_ROWS: all of them
    monkeypatch.setattr(calib_stats, "SAMPLE_BYTES", 20 * x[:1].nbytes)
    stats = calib_stats.collect_chain([model], [["y"]], x, verify.make_session, 8)[0]
    assert len(stats.sample_inputs) == 20
    monkeypatch.setattr(calib_stats, "SAMPLE_BYTES", 1)
    stats = calib_stats.collect_chain([model], [["y"]], x, verify.make_session, 8)[0]
    assert len(stats.sample_inputs) == 16  # at least 16 rows to judge anything by
