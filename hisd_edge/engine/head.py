"""The confidence head of each exit: the layers that turn ``exit{k}`` logits into ``conf{k}``.

The runtime decides "leave here?" by comparing ``conf{k}`` (softmax, then max) with a threshold
calibrated on the bundle's ONNX, whose fp16 variant keeps those nodes in fp32 (see
:mod:`hisd_edge.convert.quantize`). A weakly typed TensorRT build with the ``FP16`` flag may run
any layer in fp16, so near a threshold its decisions could differ from the calibrated ones.
The builder therefore pins the head to fp32 layer by layer (``layer.precision``,
``set_output_type`` and ``OBEY_PRECISION_CONSTRAINTS``); ``trtexec`` gets the same through
``--layerPrecisions`` / ``--layerOutputTypes`` / ``--precisionConstraints=obey``. Strongly typed
builds take the precision from the ONNX, which already has it right.

The head is found structurally, on any graph given as ``(name, inputs, outputs)`` nodes: every
node that depends on ``exit{k}`` *and* feeds ``conf{k}``. The same function serves the TensorRT
network (on the target) and the ONNX graph (``build --dry-run``, on a workstation).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

Node = Tuple[str, Sequence[str], Sequence[str]]  # (name, input tensor names, output tensor names)


def head_nodes(nodes: Sequence[Node], exit_tensor: str, conf_tensor: str) -> List[int]:
    """Indices of the nodes between ``exit_tensor`` and ``conf_tensor`` (both ends' producers excluded
    for the exit, included for the confidence), in graph order; empty when conf does not come from exit."""
    consumers: Dict[str, List[int]] = {}
    producer: Dict[str, int] = {}
    for i, (_name, inputs, outputs) in enumerate(nodes):
        for tensor in inputs:
            consumers.setdefault(tensor, []).append(i)
        for tensor in outputs:
            producer[tensor] = i
    downstream: Set[int] = set()
    stack = list(consumers.get(exit_tensor, []))
    while stack:
        i = stack.pop()
        if i not in downstream:
            downstream.add(i)
            for tensor in nodes[i][2]:
                stack.extend(consumers.get(tensor, []))
    upstream: Set[int] = set()
    stack = [producer[conf_tensor]] if conf_tensor in producer else []
    while stack:
        i = stack.pop()
        if i not in upstream and i in downstream:
            upstream.add(i)
            stack.extend(producer[t] for t in nodes[i][1] if t in producer)
    return sorted(upstream)


def head_pairs(exits: Iterable[Dict[str, Any]], outputs: Iterable[str]) -> List[Tuple[str, str]]:
    """(exit output, confidence output) for every exit whose fused confidence is among ``outputs``."""
    present = set(outputs)
    return [
        (str(e["output"]), str(e["confidence_output"]))
        for e in exits
        if e.get("confidence_output") and e["confidence_output"] in present and e["output"] in present
    ]


def network_nodes(network: Any) -> List[Node]:
    """A TensorRT ``INetworkDefinition`` as (layer name, input names, output names)."""
    nodes: List[Node] = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        nodes.append(
            (layer.name, [t.name for t in inputs if t is not None], [t.name for t in outputs if t is not None])
        )
    return nodes


def pin_head_to_fp32(trt: Any, network: Any, pairs: Sequence[Tuple[str, str]]) -> List[str]:
    """Set fp32 precision and output types on the confidence-head layers; returns their names.

    Only float layers are pinned (a Shape or index layer inside the head keeps its integer type).
    The constraint takes effect with ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` (the recipe sets it).
    """
    nodes = network_nodes(network)
    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    pinned: List[str] = []
    for exit_name, conf_name in pairs:
        for i in head_nodes(nodes, exit_name, conf_name):
            layer = network.get_layer(i)
            outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
            if not outputs or any(t is None or t.dtype not in floats for t in outputs):
                continue
            layer.precision = trt.DataType.FLOAT
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.DataType.FLOAT)
            if layer.name not in pinned:
                pinned.append(layer.name)
    return pinned


def onnx_head_nodes(onnx_path: Any, pairs: Sequence[Tuple[str, str]]) -> List[str]:
    """Names of the confidence-head nodes of an ONNX file (for ``trtexec --layerPrecisions``).

    TensorRT's ONNX parser names each layer after its node, so these are the layer names a
    ``trtexec`` build sees. Needs the ``onnx`` package (a workstation has it).
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    nodes: List[Node] = [(n.name, list(n.input), list(n.output)) for n in graph.node]
    names: List[str] = []
    for exit_name, conf_name in pairs:
        for i in head_nodes(nodes, exit_name, conf_name):
            if nodes[i][0] and nodes[i][0] not in names:
                names.append(nodes[i][0])
    return names
