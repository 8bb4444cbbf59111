"""Size and cost of a stage graph: parameters and multiply-accumulates per sample.

MACs are counted for the operators that dominate (Conv, ConvTranspose, Gemm, MatMul) from the
inferred shapes, with the symbolic batch dimension taken as one sample. A shape that shape
inference could not resolve makes the count a lower bound; ``macs_complete`` says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np


@dataclasses.dataclass
class GraphStats:
    params: int
    macs: int
    macs_complete: bool


def _shapes(model: Any) -> Dict[str, List[Optional[int]]]:
    graph = model.graph
    shapes: Dict[str, List[Optional[int]]] = {}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims: List[Optional[int]] = []
        for dim in tensor_type.shape.dim:
            dims.append(int(dim.dim_value) if dim.HasField("dim_value") else None)
        shapes[info.name] = dims
    for init in graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return shapes


def _per_sample(dims: List[Optional[int]]) -> Optional[int]:
    """Product of the dims after the leading (batch) one; None if any is unknown."""
    rest = dims[1:]
    if any(d is None for d in rest):
        return None
    return int(np.prod([int(d) for d in rest if d is not None])) if rest else 1


def _batch_one(model: Any) -> Any:
    """A copy with a batch of one, shapes re-inferred: with concrete dims, data propagation resolves
    the Reshape targets that are computed from Shape ops (attention blocks), so every MatMul has a shape."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {i.name for i in copy.graph.initializer}
    for info in copy.graph.input:
        if info.name in inits or not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    del copy.graph.value_info[:]
    for out in copy.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        # ONNX Runtime's symbolic inference also follows the Div/Concat arithmetic of traced
        # shape code that onnx's data propagation gives up on.
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(copy, auto_merge=True)
    except Exception:
        try:
            return onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
        except Exception:
            return model


def graph_stats(model: Any) -> GraphStats:
    from onnx import TensorProto

    graph = model.graph
    params = sum(
        int(np.prod(init.dims)) if init.dims else 1
        for init in graph.initializer
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    )
    shapes = _shapes(_batch_one(model))
    macs = 0
    complete = True
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        count = _node_macs(node, shapes)
        if count is None:
            complete = False
        else:
            macs += count
    return GraphStats(params=int(params), macs=int(macs), macs_complete=complete)


def _attr_int(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _node_macs(node: Any, shapes: Dict[str, List[Optional[int]]]) -> Optional[int]:
    """Per-sample MACs of one Conv/ConvTranspose/Gemm/MatMul node, or None if a shape is unknown."""
    out = shapes.get(node.output[0])
    first = shapes.get(node.input[0])
    second = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if not out or not first or not second:
        return None
    if node.op_type == "Conv":  # every output element: Cin/groups * kernel MACs
        out_elems, per_out = _per_sample(out), _per_sample(second)
        return None if out_elems is None or per_out is None else out_elems * per_out
    if node.op_type == "ConvTranspose":  # every input element scatters into Cout/groups * kernel outputs
        in_elems, per_in = _per_sample(first), _per_sample(second)
        return None if in_elems is None or per_in is None else in_elems * per_in
    if node.op_type == "Gemm":
        inner = first[0] if _attr_int(node, "transA", 0) else first[-1]
    else:
        inner = first[-1]
    out_elems = _per_sample(out)
    return None if inner is None or out_elems is None else out_elems * int(inner)
