"""INT8 bias correction and the per-channel means it is computed from; the MSE range."""

import numpy as np
import pytest

from hisd_edge.convert import calib_stats, qdq, verify


def _conv_model(weight: np.ndarray, bias: np.ndarray, group: int):
    """One Conv (no padding) over a [N, C, 6, 6] input: the smallest graph with a quantized weight."""
    from onnx import TensorProto, helper, numpy_helper

    channels = weight.shape[1] * group
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _high_gain_depthwise(rng, channels=8):
    """Depthwise 3x3 filters with large, nearly cancelling taps, as BatchNormalization folding makes
    them in MobileNet/EfficientNet stems: their outputs are small differences of large products."""
    weight = rng.normal(0, 6, (channels, 1, 3, 3)).astype(np.float32)
    weight -= weight.mean(axis=(2, 3), keepdims=True)
    return weight, rng.normal(0, 1, channels).astype(np.float32)


@pytest.mark.parametrize("group", [1, 8])
def test_bias_correction_removes_the_mean_shift_of_weight_quantization(group):
    rng = np.random.default_rng(0)
    if group == 1:
        weight, bias = rng.normal(0, 2, (5, 8, 3, 3)).astype(np.float32), rng.normal(0, 1, 5).astype(np.float32)
    else:
        weight, bias = _high_gain_depthwise(rng)
    model = _conv_model(weight, bias, group)
    x = (rng.uniform(0, 6, (32, 8, 1, 1)) + rng.normal(0, 0.3, (32, 8, 6, 6))).astype(np.float32)  # bright, flat
    stats = calib_stats.collect_chain([model], [["y"]], x, verify.make_session, batch_size=8)[0]
    assert stats.channel_means["x"] == pytest.approx(x.mean(axis=(0, 2, 3)), rel=1e-5)
    plan = qdq.plan_qdq(model)
    weights_only = qdq.QdqPlan(activations={}, weights=plan.weights, layers=plan.layers, layer_nodes=plan.layer_nodes)
    reference = verify.make_session(model.SerializeToString()).run(["y"], {"x": x})[0]

    def output(means):
        quantized, _ = qdq.apply_qdq(model, weights_only, {}, means)
        return verify.make_session(quantized.SerializeToString()).run(["y"], {"x": x})[0]

    plain, corrected = output(None), output(stats.channel_means)
    shift_plain = np.abs((plain - reference).mean(axis=(0, 2, 3)))
    shift_corrected = np.abs((corrected - reference).mean(axis=(0, 2, 3)))
    assert shift_plain.max() > 1e-3, "the weight rounding moves the output means (else the test proves nothing)"
    assert shift_corrected.max() < 1e-4 + 0.02 * shift_plain.max()
    assert np.linalg.norm(corrected - reference) < np.linalg.norm(plain - reference)
    # The weights and their Q/DQ are untouched: only the (float) bias differs.
    q_plain, _ = qdq.apply_qdq(model, weights_only, {}, None)
    q_corr, _ = qdq.apply_qdq(model, weights_only, {}, stats.channel_means)
    assert [n.op_type for n in q_plain.graph.node] == [n.op_type for n in q_corr.graph.node]
    assert next(n for n in q_corr.graph.node if n.op_type == "Conv").input[2] != "b"


def test_bias_shift_of_a_gemm_is_the_weight_error_times_the_input_mean():
    from onnx import helper

    rng = np.random.default_rng(1)
    weight = rng.normal(0, 1, (4, 6)).astype(np.float32)  # transB: [N, K]
    mean = rng.uniform(0, 3, 6)
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)
    expected = (qdq.fake_quantize_weight(weight, 0).astype(np.float64) - weight) @ mean
    assert qdq.bias_shift(node, weight, 0, mean) == pytest.approx(expected)
    scaled = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1, alpha=0.5)
    assert qdq.bias_shift(scaled, weight, 0, mean) is None  # forms it does not model are left alone


def test_channel_means_accumulate_over_batches():
    rng = np.random.default_rng(2)
    batches = [rng.normal(c, 1, (n, 3, 4, 4)).astype(np.float32) for c, n in ((0.0, 5), (2.0, 3), (-1.0, 7))]
    mean = calib_stats.ChannelMean()
    for batch in batches:
        mean.update(batch)
    assert mean.mean == pytest.approx(np.concatenate(batches).mean(axis=(0, 2, 3)), rel=1e-6)


def test_mse_range_minimises_the_quantization_error():
    rng = np.random.default_rng(3)
    values = rng.laplace(0, 1, 200_000)  # heavy-tailed, like a linear bottleneck's output
    hist = calib_stats.AbsHistogram()
    hist.update(values)

    def error(amax):
        scale = amax / 127
        return float(np.mean((values - np.clip(np.rint(values / scale), -127, 127) * scale) ** 2))

    chosen = hist.amax_for("mse")
    best = min(error(a) for a in np.linspace(1, hist.amax, 400))
    assert chosen < 0.8 * hist.amax
    assert error(chosen) < error(hist.amax) and error(chosen) <= 1.02 * best


def test_mse_is_a_calibration_method_of_json_definitions(tmp_path):
    import json

    from hisd_edge.convert import calibrate

    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"source": "default:train", "count": 8, "method": "mse"}))
    assert calibrate.load_recipe(path).method == "mse"
    hist = calib_stats.AbsHistogram()
    hist.update(np.random.default_rng(4).laplace(0, 1, 10_000))
    stats = calib_stats.StageStatistics(histograms={"t": hist}, sample_inputs=np.zeros((0,)), batch_size=1)
    assert calibrate.StageCalibration(stats, stats.sample_inputs, 1, "mse").amax()["t"] == hist.mse_amax()
