"""Step 1b: bring any ONNX graph into the form the later steps (and TensorRT) expect.

Exports from other tools arrive in many dialects: IR version 3 with every initializer also
listed as a graph input, opsets older than 13 (no per-channel Q/DQ), dynamic H/W, "same"
padding computed at run time from ``Shape`` ops (shape inference then loses H and W, MAC counts
come out incomplete and TensorRT sees dynamic dims), BatchNormalization left next to its Conv.
:func:`normalize` fixes each with what the stack already does, in this order:

1. initializers removed from the graph inputs, IR version raised to what the opset needs
   (plain protobuf edits; every IR >= 4 allows it);
2. opset raised to at least 13 with ``onnx.version_converter``;
3. the input's dims pinned to ``--input-shape`` (a dim the model fixes differently is refused);
4. constants folded with Polygraphy's ``fold_constants`` (onnx-graphsurgeon + ONNX Runtime,
   shape folding on, repeated until nothing changes): static ``Shape`` arithmetic becomes
   constants, so the only run-time shape values left are the batch size's;
5. inference-mode BatchNormalization folded into the Conv before it (a few lines of arithmetic
   on the weights: the form TensorRT fuses, and the form Q/DQ placement assumes);
6. shapes re-inferred.

The graph's named tensors (the exits and split points) survive: folding only replaces constant
subgraphs, and a folded BatchNormalization's output keeps its name.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.errors import ConversionError, InputError, first_line

LOG = logging.getLogger("hisd_edge.convert")

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis) needs 13


@dataclasses.dataclass
class NormalizeReport:
    """What :func:`normalize` changed (recorded in the manifest's provenance)."""

    ir_version: Tuple[int, int]
    opset: Tuple[int, int]
    initializer_inputs_removed: int = 0
    input_shape: Optional[List[Any]] = None
    nodes: Tuple[int, int] = (0, 0)
    batchnorms_folded: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def parse_input_shape(text: Optional[str]) -> Optional[List[Optional[int]]]:
    """``"N,3,224,224"``, ``"1x3x224x224"`` or ``"3x224x224"`` -> dims (None: keep dynamic)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    dims: List[Optional[int]] = []
    for part in parts:
        if part.lower() in ("n", "?", "-1", "batch", "b"):
            dims.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value <= 0:
            raise InputError(
                f"--input-shape {text!r}: dims are positive integers or N for a dynamic batch, e.g. N,3,224,224"
            )
        dims.append(value)
    if len(dims) not in (3, 4):
        raise InputError(f"--input-shape {text!r}: give C,H,W or N,C,H,W (e.g. N,3,224,224)")
    if len(dims) == 3:
        dims = [None, *dims]
    if any(d is None for d in dims[1:]):
        raise InputError(f"--input-shape {text!r}: only the batch dim may stay dynamic")
    return dims


def model_opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _data_inputs(model: Any) -> List[Any]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def normalize(
    model: Any,
    input_shape: Optional[Sequence[Optional[int]]] = None,
    *,
    fold: bool = True,
    fold_batchnorm: bool = True,
    what: str = "the model",
) -> Tuple[Any, NormalizeReport]:
    """The normalised copy of ``model`` and what changed (see the module docstring)."""
    import onnx

    from hisd_edge.convert.export import infer_shapes

    report = NormalizeReport(
        ir_version=(int(model.ir_version), int(model.ir_version)),
        opset=(model_opset(model), model_opset(model)),
        nodes=(len(model.graph.node), len(model.graph.node)),
    )
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy

    # 1. initializers out of the inputs; IR version up to what the opset needs (at least 4).
    inits = {i.name for i in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in inits]
    if listed:
        keep = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        report.initializer_inputs_removed = len(listed)

    # 2. opset >= 13.
    opset = model_opset(model)
    if opset and opset < MIN_OPSET:
        if model.ir_version < 4:
            model.ir_version = 4
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise ConversionError(
                f"{what}: cannot upgrade opset {opset} to {MIN_OPSET} with onnx.version_converter ({first_line(exc)}); "
                f"re-export the model at opset {MIN_OPSET} or newer"
            ) from None
    wanted_ir = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(int(model.ir_version), int(wanted_ir), 4)

    # 3. pin the input dims.
    if input_shape is not None:
        _pin_input(model, list(input_shape), what)

    model = infer_shapes(model)
    # 4. fold constants (static shape arithmetic included).
    if fold:
        model = _fold_constants(model, what)
    # 5. BatchNormalization into the Conv before it.
    if fold_batchnorm:
        model, report.batchnorms_folded = fold_batchnorms(model)
    # 6. shapes again, from scratch (stale value_info from before the edits would mislead).
    del model.graph.value_info[:]
    model = infer_shapes(model)
    report.ir_version = (report.ir_version[0], int(model.ir_version))
    report.opset = (report.opset[0], model_opset(model))
    report.nodes = (report.nodes[0], len(model.graph.node))
    inputs = _data_inputs(model)
    if inputs and inputs[0].type.tensor_type.HasField("shape"):
        report.input_shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in inputs[0].type.tensor_type.shape.dim
        ]
    return model, report


def _pin_input(model: Any, dims: List[Optional[int]], what: str) -> None:
    inputs = _data_inputs(model)
    if len(inputs) != 1:
        raise InputError(f"{what} has {len(inputs)} inputs; --input-shape applies to single-input models")
    info = inputs[0]
    current = list(info.type.tensor_type.shape.dim) if info.type.tensor_type.HasField("shape") else []
    if current and len(current) != len(dims):
        raise InputError(
            f"--input-shape has {len(dims)} dims but {what}'s input {info.name} has {len(current)}; give N,C,H,W"
        )
    for axis, (dim, wanted) in enumerate(zip(current, dims)):
        if wanted is not None and dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != wanted:
            fixed = [d.dim_value if d.HasField("dim_value") else "N" for d in current]
            raise InputError(
                f"--input-shape {','.join('N' if d is None else str(d) for d in dims)} contradicts {what}'s input "
                f"{info.name}, fixed at {','.join(str(d) for d in fixed)} (dim {axis}); drop --input-shape or match it"
            )
    shape = info.type.tensor_type.shape
    del shape.dim[:]
    for axis, wanted in enumerate(dims):
        dim = shape.dim.add()
        if wanted is None:
            old = current[axis] if axis < len(current) else None
            dim.dim_param = (old.dim_param if old is not None and old.dim_param else "") or "batch"
        else:
            dim.dim_value = int(wanted)
    del model.graph.value_info[:]
    for out in model.graph.output:  # re-inferred from the pinned input
        if out.type.tensor_type.HasField("shape"):
            out_dims = out.type.tensor_type.shape.dim
            for d in out_dims[1:]:
                if not d.HasField("dim_value"):
                    out.type.tensor_type.ClearField("shape")
                    break


def _fold_constants(model: Any, what: str) -> Any:
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            folded = fold_constants(model, fold_shapes=True, partitioning="basic", error_ok=True)
    except Exception as exc:  # a failed fold leaves the graph as it was: still correct, only less static
        LOG.warning("%s: constant folding failed (%s); continuing without it", what, first_line(exc))
        return model
    return folded


def fold_batchnorms(model: Any) -> Tuple[Any, int]:
    """Fold every inference-mode BatchNormalization that directly follows a Conv into its weights.

    ``y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta`` is ``conv(x, W') + b'`` with
    ``W' = W * s`` (per output channel) and ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``.
    Only Convs whose output feeds nothing but the BatchNormalization, with constant weights, are
    folded; the BatchNormalization's output name is kept.
    """
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    folded = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
            continue
        source = bn.inputs[0]
        if len(source.inputs) != 1 or len(source.outputs) != 1 or source in graph.outputs:
            continue
        conv = source.inputs[0]
        if conv.op != "Conv" or not isinstance(conv.inputs[1], gs.Constant):
            continue
        params = bn.inputs[1:5]
        if not all(isinstance(p, gs.Constant) for p in params):
            continue
        gamma, beta, mean, var = (np.asarray(p.values, dtype=np.float64) for p in params)
        eps = float(bn.attrs.get("epsilon", 1e-5))
        weight = np.asarray(conv.inputs[1].values)
        if weight.dtype != np.float32 or weight.shape[0] != gamma.shape[0]:
            continue
        scale = gamma / np.sqrt(var + eps)
        bias = (
            np.asarray(conv.inputs[2].values, dtype=np.float64)
            if len(conv.inputs) > 2 and isinstance(conv.inputs[2], gs.Constant)
            else np.zeros_like(gamma)
        )
        if len(conv.inputs) > 2 and not isinstance(conv.inputs[2], gs.Constant):
            continue
        new_weight = (weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_bias = ((bias - mean) * scale + beta).astype(np.float32)
        name = conv.name or conv.outputs[0].name
        data = conv.inputs[0]
        conv.inputs.clear()
        conv.inputs.extend(
            [data, gs.Constant(f"{name}/weight_bn_folded", new_weight), gs.Constant(f"{name}/bias_bn_folded", new_bias)]
        )
        result = bn.outputs[0]
        bn.outputs.clear()
        bn.inputs.clear()
        conv.outputs.clear()
        conv.outputs.append(result)
        folded += 1
    if not folded:
        return model, 0
    graph.cleanup().toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.ir_version = model.ir_version
    out.producer_name = model.producer_name
    return out, folded
