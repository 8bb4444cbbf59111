"""TensorRT-style Q/DQ placement, histogram calibration, bounded memory, sensitivity."""

import numpy as np
import pytest

from hisd_edge.convert import calib_stats, calibrate, export, qdq, sensitivity, split, verify
from hisd_edge.models import create_model


@pytest.fixture(scope="module")
def mobilenet_stages():
    import torch

    torch.manual_seed(0)
    model = create_model("tiny_mobilenet").eval()
    proto, _ = export.export_module(model, (1, 28, 28))
    outputs = split.stage_output_names(3, [None] * 3)
    split.name_boundaries(proto, split.find_boundaries(proto, outputs))
    proto = export.infer_shapes(proto)
    return model, proto, split.split_stages(proto, outputs)


def _amax_everywhere(model, value=1.0):
    return dict.fromkeys(calib_stats.calibration_tensors(model), value)


def test_placement_lets_tensorrt_fuse_conv_bn_activation_and_residual(mobilenet_stages):
    _, proto, _ = mobilenet_stages
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node), "BN folded into the Conv"
    quantized, _ = qdq.apply_qdq(proto, qdq.plan_qdq(proto), _amax_everywhere(proto))
    producer = {o: n for n in quantized.graph.node for o in n.output}
    convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        assert producer[conv.input[0]].op_type == "DequantizeLinear", f"{conv.name}: activation input quantized"
        weight_dq = producer[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and any(
            a.name == "axis" and a.i == 0 for a in weight_dq.attribute
        )
    for act in (n for n in quantized.graph.node if n.op_type in ("Clip", "Relu")):
        assert producer[act.input[0]].op_type == "Conv", f"{act.name}: no Q/DQ between a Conv and its activation"
    adds = [n for n in quantized.graph.node if n.op_type == "Add"]
    assert adds, "the tiny MobileNet has residual blocks"
    for add in adds:
        kinds = sorted(producer[name].op_type for name in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], f"{add.name}: only the skip input is quantized"


def test_activation_ranges_are_post_activation(mobilenet_stages):
    """A Q/DQ after ReLU6 is calibrated on the clipped values: amax <= 6 (the issue saw 82 before)."""
    _, _, stages = mobilenet_stages
    x = np.random.default_rng(0).normal(0, 3, (40, 1, 28, 28)).astype(np.float32)
    stats = calib_stats.collect_chain(
        [s.model for s in stages], [s.outputs for s in stages], x, verify.make_session, batch_size=8
    )
    for stage, stat in zip(stages, stats):
        producer = {o: n for n in stage.model.graph.node for o in n.output}
        plan = qdq.plan_qdq(stage.model)
        amax = stat.amax("minmax")
        clipped = [t for t in plan.activations if t in producer and producer[t].op_type == "Clip"]
        assert clipped
        assert all(amax[t] <= 6.0 + 1e-6 for t in clipped)


def test_histogram_growth_keeps_every_count_and_methods_differ():
    rng = np.random.default_rng(0)
    hist = calib_stats.AbsHistogram()
    batches = [rng.laplace(0, 1, 5000) * scale for scale in (0.1, 1.0, 30.0)]  # the range grows twice
    for batch in batches:
        hist.update(batch)
    values = np.abs(np.concatenate(batches))
    assert hist.counts.sum() == values.size and hist.amax == pytest.approx(values.max())
    assert hist.edge >= values.max()
    p99 = hist.percentile_amax(99.0)
    assert abs(p99 - np.percentile(values, 99.0)) <= 2 * hist.width
    entropy = hist.entropy_amax()
    assert 0 < entropy < 0.9 * hist.amax, "entropy clips the heavy tail (it is not minmax in disguise)"


def test_entropy_searches_many_thresholds():
    rng = np.random.default_rng(1)
    hist = calib_stats.AbsHistogram()
    hist.update(np.concatenate([rng.normal(0, 1, 100_000), [40.0]]))  # one outlier stretches the range
    assert hist.entropy_amax() < 10.0 < hist.amax_for("minmax")


def test_calibration_reads_the_images_a_batch_at_a_time(mobilenet_stages):
    """Memory does not grow with the image count: inputs are made per batch, never all at once."""
    _, _, stages = mobilenet_stages
    rng = np.random.default_rng(2)
    data = rng.normal(0, 1, (50, 1, 28, 28)).astype(np.float32)
    requested = []

    def make(start, stop):
        requested.append(stop - start)
        return data[start:stop]

    lazy = calib_stats.LazyInputs(len(data), make)
    models = [s.model for s in stages]
    stats = calib_stats.collect_chain(models, [s.outputs for s in stages], lazy, verify.make_session, batch_size=8)
    assert max(requested) == 8 and sum(requested) == 50
    whole = calib_stats.collect_chain(models, [s.outputs for s in stages], data, verify.make_session, batch_size=50)
    for a, b in zip(stats, whole):
        assert a.amax("minmax") == pytest.approx(b.amax("minmax"), rel=1e-6)
    assert calib_stats.batch_size_for(models, budget=4 * 2**20) < calib_stats.batch_size_for(models)


def test_sensitivity_ranks_layers_and_keeps_the_worst_float(mobilenet_stages, tmp_path):
    import onnx

    from hisd_edge.convert import quantize

    _, _, stages = mobilenet_stages
    x = np.random.default_rng(3).normal(0, 1, (24, 1, 28, 28)).astype(np.float32)
    stats = calib_stats.collect_chain(
        [s.model for s in stages], [s.outputs for s in stages], x, verify.make_session, batch_size=8
    )
    calibrations = [calibrate.StageCalibration(s, s.sample_inputs, 8, "minmax") for s in stats]
    rows, kept = sensitivity.rank_layers(stages, calibrations, keep=2, measure=False)
    assert sum(len(v) for v in kept.values()) == 2 and len(rows) > 2
    keys = [(-r["top1_flips"], -r["rel_error"]) for r in rows]
    assert keys == sorted(keys) and [r["kept_float"] for r in rows[:2]] == [True, True]
    assert "INT8 sensitivity" in sensitivity.format_sensitivity(rows)
    stage_index, layers = next(iter(kept.items()))
    path = tmp_path / "s.onnx"
    onnx.save(stages[stage_index].model, str(path))
    out = tmp_path / "s.int8.onnx"
    quantize.quantize_int8(path, out, calibrations[stage_index], "minmax", tmp_path, layers)
    model = onnx.load(str(out))
    producer = {o: n for n in model.graph.node for o in n.output}
    names = {qdq.node_label(n, i): n for i, n in enumerate(onnx.load(str(path)).graph.node)}
    for label in layers:
        node = next(n for n in model.graph.node if n.name == names[label].name)
        assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)


def test_entropy_is_not_dragged_down_by_the_relu_zero_spike():
    """Half the values of a post-ReLU tensor are exact zeros; the threshold must still cover the bulk."""
    rng = np.random.default_rng(4)
    hist = calib_stats.AbsHistogram()
    hist.update(np.maximum(rng.normal(0, 1, 200_000), 0))
    assert hist.entropy_amax() > 2.0  # the bulk of N(0,1)+ lies below ~2.5; the spike bug gave ~0.3


def test_check_warns_about_qdq_between_conv_and_activation(mobilenet_stages):
    """What ONNX Runtime's default placement did (Conv -> Q/DQ -> Clip) is flagged; ours is not."""
    import onnx
    from onnx import helper, numpy_helper

    from hisd_edge.convert.check import check_model
    from hisd_edge.convert.trt_ops import family

    _, proto, _ = mobilenet_stages
    ours, _ = qdq.apply_qdq(proto, qdq.plan_qdq(proto), _amax_everywhere(proto))
    assert not [f for f in check_model(ours, [family("10")]) if f.code == "qdq_breaks_fusion"]
    bad = onnx.ModelProto()
    bad.CopyFrom(ours)
    index = next(i for i, n in enumerate(bad.graph.node) if n.op_type == "Clip")
    conv_out = bad.graph.node[index].input[0]
    bad.graph.initializer.extend(
        [numpy_helper.from_array(np.array(0.5, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    )
    bad.graph.node.extend(
        [
            helper.make_node("QuantizeLinear", [conv_out, "s", "z"], ["pre_q"], name="pre_q"),
            helper.make_node("DequantizeLinear", ["pre_q", "s", "z"], ["pre_dq"], name="pre_dq"),
        ]
    )
    bad.graph.node[index].input[0] = "pre_dq"
    split.toposort(bad)
    findings = check_model(bad, [family("10")])
    assert [f for f in findings if f.code == "qdq_breaks_fusion"], [(f.code, f.message[:90]) for f in findings]


def _calibrated(stages, count=48):
    x = np.random.default_rng(5).normal(0, 1, (count, 1, 28, 28)).astype(np.float32)
    stats = calib_stats.collect_chain(
        [s.model for s in stages], [s.outputs for s in stages], x, verify.make_session, batch_size=16
    )
    return [calibrate.StageCalibration(s, s.sample_inputs, 16, "minmax") for s in stats]


def test_auto_keep_quantizes_everything_when_int8_agrees(mobilenet_stages, monkeypatch):
    _, _, stages = mobilenet_stages
    calibrations = _calibrated(stages)
    monkeypatch.setattr(sensitivity, "rank_layers", lambda *a, **k: pytest.fail("no ranking is needed"))
    rows, kept, record = sensitivity.auto_keep(stages, calibrations, ["logits"] * 3)
    assert rows == [] and kept == {}
    assert record["met"] and record["kept_layers"] == 0 and record["samples"] == 48
    assert min(record["all_int8_agreement"]) >= sensitivity.AUTO_TARGET_AGREEMENT


def test_auto_keep_keeps_the_layer_that_ruins_int8_and_only_layers_that_help(mobilenet_stages, monkeypatch):
    _, _, stages = mobilenet_stages
    calibrations = _calibrated(stages)
    # Sabotage one layer: its input's range shrunk 50x, so INT8 clips nearly everything it reads.
    plan = qdq.plan_qdq(stages[0].model)
    image = stages[0].model.graph.input[0].name
    victim = next(label for label, tensors in plan.layers.items() if image in tensors)  # the stem
    amax = calibrations[0].amax()
    amax[image] /= 50.0
    calibrations[0].__dict__["_amax"] = amax
    real_rank = sensitivity.rank_layers

    def rank_with_a_useless_layer_first(*args, **kwargs):
        rows, kept = real_rank(*args, **kwargs)
        useless = {"stage": 2, "layer": "not_a_layer", "rel_error": 1.0, "top1_flips": 1.0}
        return [useless, *rows], kept

    monkeypatch.setattr(sensitivity, "rank_layers", rank_with_a_useless_layer_first)
    rows, kept, record = sensitivity.auto_keep(stages, calibrations, ["logits"] * 3)
    assert min(record["all_int8_agreement"]) < sensitivity.AUTO_TARGET_AGREEMENT
    assert victim in kept.get(0, [])
    assert "not_a_layer" not in kept.get(2, [])  # keeping it float lowered no error: not kept
    assert record["kept_layers"] <= record["max_layers"]
    assert record["logit_error"] < 0.5 * record["all_int8_logit_error"]
    assert min(record["agreement"]) > min(record["all_int8_agreement"])
    flagged = {(r["stage"], r["layer"]) for r in rows if r["kept_float"]}
    assert flagged == {(k, label) for k, labels in kept.items() for label in labels}


def test_keep_fp16_option_values():
    from hisd_edge.convert.options import parse_keep_fp16
    from hisd_edge.errors import InputError

    assert parse_keep_fp16("auto") == "auto" and parse_keep_fp16("AUTO") == "auto"
    assert parse_keep_fp16("3") == 3 and parse_keep_fp16(0) == 0
    with pytest.raises(InputError, match="--keep-fp16 takes a number of layers or 'auto', got 'most'"):
        parse_keep_fp16("most")
    with pytest.raises(InputError, match="must be >= 0 layers"):
        parse_keep_fp16("-1")


def test_auto_keep_undoes_a_rejected_layer_without_requantizing(mobilenet_stages):
    _, _, stages = mobilenet_stages
    calibrations = _calibrated(stages)
    chains = sensitivity._ChainAgreement(stages, calibrations, calibrations[0].inputs, [0, 1, 2], 2, 16)
    before = chains.measure({}, range(3))
    graphs = list(chains.int8)
    layer = next(iter(qdq.plan_qdq(stages[1].model).layers))
    chains.quantize({1: [layer]}, [1])
    assert chains.int8[1] != graphs[1] and chains.int8[0] == graphs[0]
    chains.undo()
    assert chains.int8 == graphs
    assert chains.measure({}, []) == before
