"""Where the Q/DQ pairs go: TensorRT's explicit-quantization placement rules.

TensorRT runs a Q/DQ graph by fusing each DequantizeLinear into the op that reads it and each
QuantizeLinear into the op that writes its input. It fuses Conv + bias + BatchNormalization +
ReLU/Clip + residual Add into one INT8 kernel when, and only when, the Q/DQ sit at the *inputs*
of the weighted op (and of the residual branch), never between the Conv and its activation. The
rules followed here are those of TensorRT's Q/DQ placement guide and of TensorRT Model
Optimizer's ONNX PTQ:

* quantize the inputs of Conv, ConvTranspose, Gemm and MatMul: the activation per tensor
  (symmetric, scale = amax / 127, zero point 0) and the weight per output channel (symmetric,
  float32 weights behind a QuantizeLinear -> DequantizeLinear pair, which TensorRT 8.x needs and
  folds at build time); biases stay float;
* never quantize a weighted op's output: the next weighted op's input Q/DQ sits after the ReLU
  or Clip, so it is calibrated with the post-activation range (amax 6 after a ReLU6, not the
  pre-activation 82) and TensorRT fuses the activation and the requantization into the Conv;
* of a residual ``Add(conv_out, skip)``, quantize only the skip input, so TensorRT fuses the Add
  (and a following ReLU) into the Conv as an INT8 residual;
* BatchNormalization is folded into the Conv before this runs (:mod:`~hisd_edge.convert.normalize`),
  and each quantized Conv/Gemm's float bias is corrected for the mean shift its weight rounding
  causes (bias correction, from the calibration data's per-channel input means; see
  :func:`apply_qdq`: on EfficientNet-Lite0 it is worth 5 points of final-exit agreement);
* everything else (pooling, reshapes, softmax, the fused confidence) stays float, and a tensor
  read by several quantized ops gets one shared Q/DQ pair.

The weights behind the Q/DQ pairs can be ones already rounded to their scale's grid by GPTQ
(``rounded_weights``, :mod:`~hisd_edge.convert.rounding`) instead of the fp32 weights that
QuantizeLinear would round to nearest.

Layers can be left out (``exclude``): they then run in float (fp16 where the TensorRT build
enables it). :func:`layer_sensitivity` measures what quantizing each layer alone costs, to pick them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INT8_MAX = 127.0


def node_label(node: Any, index: int) -> str:
    """A node's name, or ``<op>_<index>`` for an unnamed one (foreign graphs leave names empty)."""
    return node.name or f"{node.op_type}_{index}"


@dataclasses.dataclass
class QdqPlan:
    """Which inputs get Q/DQ: activations (shared per tensor) and weights (per node)."""

    activations: Dict[str, List[Tuple[int, int]]]  # tensor -> [(node index, input slot)] reading its DQ
    weights: List[Tuple[int, int, Optional[int]]]  # (node index, input slot, channel axis or None)
    layers: Dict[str, List[str]]  # quantized layer label -> the activation tensors it reads quantized
    layer_nodes: Dict[str, int]  # quantized layer label -> its node index

    def only(self, label: str) -> QdqPlan:
        """The part of this plan that belongs to one layer."""
        index = self.layer_nodes[label]
        tensors = self.layers[label]
        return QdqPlan(
            activations={t: [(i, s) for i, s in self.activations[t] if i == index] for t in tensors},
            weights=[w for w in self.weights if w[0] == index],
            layers={label: list(tensors)},
            layer_nodes={label: index},
        )


def plan_qdq(model: Any, exclude: Sequence[str] = ()) -> QdqPlan:
    """The TensorRT-fusable Q/DQ placement for ``model`` (see the module docstring)."""
    from onnx import TensorProto

    graph = model.graph
    nodes = list(graph.node)
    excluded = set(exclude)
    float_inits = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    constants = {i.name for i in graph.initializer} | {o for n in nodes if n.op_type == "Constant" for o in n.output}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: Dict[str, List[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(i)

    activations: Dict[str, List[Tuple[int, int]]] = {}
    weights: List[Tuple[int, int, Optional[int]]] = []
    layers: Dict[str, List[str]] = {}
    layer_nodes: Dict[str, int] = {}
    quantized: Set[int] = set()

    def add_activation(label: str, tensor: str, index: int, slot: int) -> None:
        activations.setdefault(tensor, []).append((index, slot))
        layers.setdefault(label, [])
        layer_nodes[label] = index
        if tensor not in layers[label]:
            layers[label].append(tensor)

    for i, node in enumerate(nodes):
        label = node_label(node, i)
        if node.op_type not in WEIGHTED_OPS or label in excluded or label.startswith("conf"):
            continue
        data = [(slot, name) for slot, name in enumerate(node.input[:2]) if name and name not in constants]
        if not data:
            continue
        for slot, name in data:
            add_activation(label, name, i, slot)
        if len(node.input) > 1 and node.input[1] in float_inits:
            weights.append((i, 1, weight_axis(node, float_inits[node.input[1]])))
        quantized.add(i)

    # Residual Adds: quantize the skip input, leave the weighted op's output float for the fusion.
    for i, node in enumerate(nodes):
        label = node_label(node, i)
        if node.op_type != "Add" or len(node.input) != 2 or label in excluded:
            continue
        if any(name in constants or not name for name in node.input):
            continue
        from_weighted = [producer.get(name) in quantized and len(consumers.get(name, [])) == 1 for name in node.input]
        if not any(from_weighted):
            continue
        skip_slot = 1 if from_weighted[0] else 0
        add_activation(label, node.input[skip_slot], i, skip_slot)
    return QdqPlan(activations=activations, weights=weights, layers=layers, layer_nodes=layer_nodes)


def weight_axis(node: Any, init: Any) -> Optional[int]:
    """The output-channel axis of a weight, or None for per-tensor (grouped ConvTranspose, N-D MatMul)."""
    rank = len(init.dims)
    attrs = {a.name: a.i for a in node.attribute}
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if attrs.get("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    return 1 if rank == 2 else None  # MatMul: [K, N], one scale per output column


def weight_scale(weight: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """Symmetric INT8 scale of a weight: per output channel (``axis``) or per tensor (None)."""
    weight = np.asarray(weight, dtype=np.float32)
    if axis is None:
        return np.array(max(float(np.abs(weight).max()), 1e-12) / INT8_MAX, dtype=np.float32)
    reduce = tuple(d for d in range(weight.ndim) if d != axis)
    channel_max = np.abs(weight).max(axis=reduce) if reduce else np.abs(weight)
    return np.where(channel_max > 0, channel_max / INT8_MAX, 1.0).astype(np.float32)


def fake_quantize_weight(weight: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """What the weight's QuantizeLinear -> DequantizeLinear pair turns it into (round half to even,
    as ONNX QuantizeLinear does)."""
    weight = np.asarray(weight, dtype=np.float32)
    scale = weight_scale(weight, axis)
    if axis is not None:
        scale = np.expand_dims(scale, tuple(d for d in range(weight.ndim) if d != axis))
    return (np.clip(np.rint(weight / scale), -INT8_MAX - 1, INT8_MAX) * scale).astype(np.float32)


def bias_shift(
    node: Any, weight: np.ndarray, axis: Optional[int], input_mean: np.ndarray, rounded: Optional[np.ndarray] = None
) -> Optional[np.ndarray]:
    """How much quantizing ``node``'s weight moves its output's mean, per output channel, given
    the per-channel mean of its input: ``(Wq - W) E[x]`` (Nagel et al., "Data-Free Quantization",
    2019: bias correction). ``rounded`` is ``Wq`` when it is not plain rounding (GPTQ). None where
    the layer's form is not one this handles."""
    attrs = {a.name: a for a in node.attribute}
    quantized = fake_quantize_weight(weight, axis) if rounded is None else rounded
    delta = np.asarray(quantized, dtype=np.float64) - np.asarray(weight, dtype=np.float64)
    mean = np.asarray(input_mean, dtype=np.float64)
    if node.op_type == "Conv" and delta.ndim >= 3:
        group = attrs["group"].i if "group" in attrs else 1
        out_channels, in_per_group = delta.shape[0], delta.shape[1]
        if mean.shape != (in_per_group * group,) or out_channels % group:
            return None
        summed = delta.reshape(out_channels, in_per_group, -1).sum(axis=2)  # [O, C/g]
        grouped_mean = mean.reshape(group, in_per_group)[np.arange(out_channels) // (out_channels // group)]
        return np.sum(summed * grouped_mean, axis=1)
    if node.op_type == "Gemm" and delta.ndim == 2:
        if any(attrs[a].f != 1.0 for a in ("alpha", "beta") if a in attrs) or ("transA" in attrs and attrs["transA"].i):
            return None
        matrix = delta if "transB" in attrs and attrs["transB"].i else delta.T  # [N, K]
        return matrix @ mean if mean.shape == (matrix.shape[1],) else None
    return None  # MatMul (the channel axis of its input is not axis 1), ConvTranspose: left as they are


def apply_qdq(
    model: Any,
    plan: QdqPlan,
    amax: Dict[str, float],
    input_means: Optional[Dict[str, np.ndarray]] = None,
    rounded_weights: Optional[Dict[str, np.ndarray]] = None,
) -> Tuple[Any, List[str]]:
    """A copy of ``model`` with the plan's Q/DQ pairs, scales from ``amax``; also the tensors left
    float because they have no usable range (never seen non-zero during calibration).

    With ``input_means`` (per tensor, its per-channel mean on the calibration data), each
    quantized Conv/Gemm's float bias is corrected by the mean shift its weight quantization causes
    (:func:`bias_shift`): rounding a weight per channel to 127 levels moves the mean of every
    output, and on layers with large, nearly cancelling weights (the high-gain depthwise filters
    that BatchNormalization folding makes in MobileNet/EfficientNet stems) that shift is most of
    the error. The bias stays float, so TensorRT fuses it as before.

    ``rounded_weights`` (per layer label, the weight already rounded to ``scale * q`` by
    :func:`~hisd_edge.convert.rounding.gptq_round`) replaces that layer's weight in this copy; its
    Q/DQ scale is the original weight's, so QuantizeLinear reproduces the chosen integers."""
    import onnx
    from onnx import helper, numpy_helper

    from hisd_edge.convert.split import toposort

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = list(graph.node)
    inits = {i.name: i for i in graph.initializer}
    taken = {o for n in nodes for o in n.output} | set(inits) | {i.name for i in graph.input}
    new_nodes: List[Any] = []
    skipped: List[str] = []

    def fresh(name: str) -> str:
        candidate, suffix = name, 0
        while candidate in taken:
            suffix += 1
            candidate = f"{name}_{suffix}"
        taken.add(candidate)
        return candidate

    def qdq(tensor: str, scale: np.ndarray, axis: Optional[int]) -> str:
        scale_name = fresh(f"{tensor}/qdq/scale")
        zero_name = fresh(f"{tensor}/qdq/zero_point")
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), scale_name))
        graph.initializer.append(numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), zero_name))
        quantized, dequantized = fresh(f"{tensor}/qdq/int8"), fresh(f"{tensor}/qdq/dq")
        extra: Dict[str, Any] = {"axis": axis} if axis is not None else {}
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [tensor, scale_name, zero_name],
                [quantized],
                name=fresh(f"{tensor}/QuantizeLinear"),
                **extra,
            )
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [quantized, scale_name, zero_name],
                [dequantized],
                name=fresh(f"{tensor}/DequantizeLinear"),
                **extra,
            )
        )
        return dequantized

    data_inputs = {index: nodes[index].input[0] for index, _, _ in plan.weights}  # before any rewiring
    for tensor, readers in plan.activations.items():
        value = amax.get(tensor)
        if value is None or not np.isfinite(value) or value <= 0:
            skipped.append(tensor)
            continue
        dq = qdq(tensor, np.array(value / INT8_MAX, dtype=np.float32), None)
        for index, slot in readers:
            nodes[index].input[slot] = dq

    for index, slot, axis in plan.weights:
        name = nodes[index].input[slot]
        weight = numpy_helper.to_array(inits[name]).astype(np.float32)
        rounded = (rounded_weights or {}).get(node_label(nodes[index], index))
        if rounded is not None:
            rounded = np.asarray(rounded, dtype=np.float32).reshape(weight.shape)
        mean = (input_means or {}).get(data_inputs[index])
        if mean is not None:
            _correct_bias(graph, nodes[index], inits, weight, axis, mean, fresh, rounded)
        scale = weight_scale(weight, axis)
        if rounded is not None:
            name = fresh(f"{name}/gptq")
            graph.initializer.append(numpy_helper.from_array(rounded, name))
        nodes[index].input[slot] = qdq(name, scale, axis)
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)  # the fp32 weights and biases replaced above
    toposort(out)
    return out, skipped


def _drop_unused_initializers(graph: Any) -> None:
    """Remove initializers no node reads (subgraphs of If/Loop/Scan included)."""
    used = {o.name for o in graph.output}
    pending = list(graph.node)
    while pending:
        node = pending.pop()
        used.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                pending.extend(sub.node)
                used.update(o.name for o in sub.output)
    kept = [init for init in graph.initializer if init.name in used]
    if len(kept) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _correct_bias(
    graph: Any,
    node: Any,
    inits: Dict[str, Any],
    weight: np.ndarray,
    axis: Optional[int],
    mean: np.ndarray,
    fresh: Any,
    rounded: Optional[np.ndarray] = None,
) -> None:
    """Subtract :func:`bias_shift` from ``node``'s bias (a new initializer; a shared one is not changed)."""
    from onnx import numpy_helper

    shift = bias_shift(node, weight, axis, mean, rounded)
    if shift is None or not np.all(np.isfinite(shift)):
        return
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias_name is not None and bias_name not in inits:
        return  # a computed bias: leave it
    bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else np.zeros(shift.shape)
    if bias.shape != shift.shape:
        return  # a broadcast Gemm bias (C of shape [1] or [1, N]): leave it
    corrected = fresh(f"{node.name or node.op_type}/bias_corrected")
    graph.initializer.append(numpy_helper.from_array((bias - shift).astype(np.float32), corrected))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = corrected


def layer_sensitivity(
    model: Any,
    amax: Dict[str, float],
    inputs: np.ndarray,
    outputs: Sequence[str],
    make_session: Callable[[bytes], Any],
    exclude: Sequence[str] = (),
    input_means: Optional[Dict[str, np.ndarray]] = None,
    rounded_weights: Optional[Dict[str, np.ndarray]] = None,
    batch: int = 16,
) -> List[Dict[str, Any]]:
    """What quantizing each layer *alone* costs, on real stage inputs, worst first.

    Per layer: the relative L2 error of the stage's outputs against fp32 (``rel_error``) and, for
    the exit logits, the share of samples whose top-1 class changes (``top1_flips``).
    """
    if len(inputs) == 0:
        return []
    from hisd_edge.runtime.ort_session import run_batched

    plan = plan_qdq(model, exclude)
    names = list(outputs)
    reference = run_batched(make_session(model.SerializeToString()), inputs, names, batch)
    rows: List[Dict[str, Any]] = []
    for label in plan.layers:
        single, _ = apply_qdq(model, plan.only(label), amax, input_means, rounded_weights)
        got = run_batched(make_session(single.SerializeToString()), inputs, names, batch)
        errors, flips = [], 0.0
        for name in names:
            ref, val = reference[name].astype(np.float64), got[name].astype(np.float64)
            errors.append(float(np.linalg.norm(val - ref) / max(np.linalg.norm(ref), 1e-12)))
            if name.startswith("exit") and ref.ndim == 2:
                flips = max(flips, float(np.mean(ref.argmax(1) != val.argmax(1))))
        rows.append({"layer": label, "rel_error": max(errors), "top1_flips": flips})
    rows.sort(key=lambda r: (-float(r["top1_flips"]), -float(r["rel_error"])))
    return rows
