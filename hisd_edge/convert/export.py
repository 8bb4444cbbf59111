"""Step 1: one monolithic ONNX graph with every exit as an output.

Three ways in, one result (``input`` -> ``exit0`` .. ``exit{K-1}``, dynamic batch axis ``batch``,
shapes inferred):

* :func:`export_module` exports a torch multi-exit model (anything following
  :mod:`hisd_edge.models.protocol`) with the TorchScript exporter (``dynamo=False``: it writes a
  single self-contained file at the opset asked for). Optional split points (torch.fx point names) are
  exported as extra outputs so their ONNX tensor names are known exactly, then dropped again.
* :func:`load_onnx` takes a user's multi-exit ONNX and the names of its exit tensors, renames the
  input to ``input`` and the exits to ``exit{k}``.
* :func:`add_confidence_outputs` fuses softmax -> max into each logits exit as an extra per-sample
  output ``conf{k}``, so a GPU backend copies one float per sample instead of all logits.

The TorchScript exporter emits no ``value_info``; :func:`infer_shapes` fills it in before the
graph is split (graphsurgeon needs dtypes and shapes on the boundary tensors).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.errors import ConversionError, InputError, first_line

LOG = logging.getLogger("hisd_edge.convert")

DEFAULT_OPSET = 17
INPUT_NAME = "input"
BATCH_DIM = "batch"
_SPLIT_PREFIX = "split@"  # split points are exported as outputs split@<point>, then renamed <point>


def exit_name(k: int) -> str:
    return f"exit{k}"


def conf_name(k: int) -> str:
    return f"conf{k}"


def feat_name(k: int) -> str:
    return f"feat{k}"


def infer_shapes(model: Any) -> Any:
    """Shape inference with data propagation (resolves Reshape targets computed from Shape ops)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several types here; all mean "this graph is inconsistent"
        raise ConversionError(f"ONNX shape inference failed ({first_line(exc)}); the graph is inconsistent") from None


# -- torch -----------------------------------------------------------------------------------
def list_split_points(model: Any, input_shape: Sequence[int]) -> List[Tuple[str, Tuple[int, ...]]]:
    """Names of values in ``model`` that can serve as split points, with their shapes.

    The torch.fx names of :mod:`hisd_edge.models.fx_points` (the same scheme as
    :func:`~hisd_edge.models.list_exit_points`; for an ``ExitsOnBackbone`` the backbone's names,
    no prefix). A name is a *valid* split only if it is also a clean cut, which the split step checks.
    """
    import torch

    from hisd_edge.models import list_exit_points

    if hasattr(model, "list_points"):
        return list(model.list_points())
    example = torch.zeros((1, *tuple(int(s) for s in input_shape)))
    return list_exit_points(model, example)


def _with_split_outputs(model: Any, points: Sequence[str], input_shape: Sequence[int]) -> Any:
    """A module returning the model's exits followed by the values at ``points`` (torch imported lazily)."""
    import torch
    from torch import nn

    from hisd_edge.models.fx_points import PointCapture

    if hasattr(model, "with_split_outputs"):
        return model.with_split_outputs(points)
    capture = PointCapture(model, points, torch.zeros((1, *tuple(int(s) for s in input_shape))))

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            outs, values = capture(x)
            return list(outs) + list(values)

    return Wrapped()


def export_module(
    model: Any, input_shape: Sequence[int], *, opset: int = DEFAULT_OPSET, split_points: Optional[Sequence[str]] = None
) -> Tuple[Any, List[str]]:
    """Export ``model`` to ONNX (exits as ``exit{k}``); returns (model proto, split tensor names).

    ``split_points`` are point names (see :func:`list_split_points`); the returned list holds the
    ONNX tensor names of their outputs, in the same order, for the split step.
    """
    import onnx
    import torch

    from hisd_edge.models import is_multi_exit

    if not is_multi_exit(model):
        raise InputError(
            f"{type(model).__name__} is not a multi-exit model: it needs an exit_info list and a forward that returns "
            "one output per exit (see hisd_edge.models.protocol)"
        )
    num_exits = len(model.exit_info)
    points = list(split_points or [])
    if points:
        valid = [name for name, _ in list_split_points(model, input_shape)]
        unknown = [p for p in points if p not in valid]
        if unknown:
            raise InputError(f"unknown split point(s) {', '.join(unknown)}; valid names: {', '.join(valid)}")
    model = model.eval()
    example = torch.zeros((2, *tuple(int(s) for s in input_shape)))
    with torch.no_grad():
        try:
            outs = model(example)
        except Exception as exc:
            raise ConversionError(
                f"the model fails on an input of shape {tuple(example.shape)} ({first_line(exc)})"
            ) from None
    if not isinstance(outs, (list, tuple)) or len(outs) != num_exits:
        got = len(outs) if isinstance(outs, (list, tuple)) else 1
        raise ConversionError(f"the model declares {num_exits} exits (exit_info) but forward returned {got} output(s)")

    target = _with_split_outputs(model, points, input_shape) if points else model
    exit_names = [exit_name(k) for k in range(num_exits)]
    split_names = [f"{_SPLIT_PREFIX}{name}" for name in points]
    output_names = exit_names + split_names
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                target,
                (example,),
                buffer,  # type: ignore[arg-type]  # torch accepts file-like objects
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_axes={name: {0: BATCH_DIM} for name in [INPUT_NAME, *output_names]},
                opset_version=int(opset),
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
                dynamo=False,
            )
    except Exception as exc:
        raise ConversionError(
            f"torch.onnx.export failed at opset {opset} ({first_line(exc)}); if an operator is unsupported try "
            "another --opset, or export the model to ONNX yourself and convert that"
        ) from None
    proto = onnx.load_from_string(buffer.getvalue())
    from hisd_edge.convert.normalize import normalize

    # Static shape arithmetic ("same" padding) folded while the split tensors are still outputs,
    # so no rewrite (a BatchNormalization folded into its Conv, say) can make them vanish.
    proto, _ = normalize(proto, what="the exported model")
    tensor_names_out = list(split_names)
    if points:
        # The split tensors were only outputs so we learn their names: drop them as outputs again,
        # and give them the point names the user wrote (no internal prefix in any message).
        keep = [o for o in proto.graph.output if o.name not in split_names]
        del proto.graph.output[:]
        proto.graph.output.extend(keep)
        tensor_names_out = []
        for internal, point in zip(split_names, points):
            _free_name(proto, point, internal)
            rename_tensor(proto, internal, point)
            tensor_names_out.append(point)
    proto.producer_name = "hisd-edge"
    return infer_shapes(proto), tensor_names_out


# -- user ONNX -------------------------------------------------------------------------------
def rename_tensor(model: Any, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in the main graph (nodes, I/O, value_info)."""
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for collection in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in collection:
            if item.name == old:
                item.name = new


def tensor_names(model: Any) -> List[str]:
    """All tensor names of the main graph in a stable order: input, then node outputs."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    for node in graph.node:
        names.extend(o for o in node.output if o)
    return names


def _free_name(model: Any, wanted: str, keep: str) -> None:
    """If ``wanted`` is already used by a tensor other than ``keep``, rename that tensor away."""
    names = set(tensor_names(model)) | {i.name for i in model.graph.initializer}
    if wanted in names and wanted != keep:
        suffix = 0
        while f"{wanted}_orig{suffix}" in names:
            suffix += 1
        rename_tensor(model, wanted, f"{wanted}_orig{suffix}")


def load_onnx(
    path: Path, exits: Sequence[str], input_shape: Optional[Sequence[Optional[int]]] = None
) -> Tuple[Any, Dict[str, str]]:
    """A user's multi-exit ONNX, normalised (:mod:`hisd_edge.convert.normalize`: IR/opset upgraded,
    ``input_shape`` pinned, constants and BatchNormalization folded), with its exit tensors renamed
    ``exit{k}`` and its input ``input``.

    Returns (model, {new name: original name}). Exit names may be graph outputs or any other
    tensor of the graph (they become outputs).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    if not model.graph.node:
        raise InputError(f"{path}: the ONNX graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InputError(f"{path}: the ONNX model is invalid ({first_line(exc)}); fix or re-export it") from None
    model = read_normalized(model, path, exits, input_shape)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(
            f"{path}: the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "hisd-edge converts single-input image models"
        )
    if not exits:
        raise InputError(
            f"{path}: give the exit tensors with --exits NAME,NAME,... (shallowest first); "
            f"graph outputs: {', '.join(o.name for o in graph.output)}"
        )
    names = tensor_names(model)
    unknown = [e for e in exits if e not in names]
    if unknown:
        raise InputError(
            f"{path}: exit tensor(s) {', '.join(unknown)} not in the graph; graph outputs: "
            f"{', '.join(o.name for o in graph.output)} (list all tensors with --list-points)"
        )
    if len(set(exits)) != len(exits):
        raise InputError(f"--exits names a tensor twice: {', '.join(exits)}")
    # Two phases so that any name clash (a graph whose tensors are already called "exit1", say)
    # resolves: first move the input and the exits to unique temporary names, then free the
    # final names and move them there.
    temps = {inputs[0].name: "__hisd_tmp_input"}
    temps.update({name: f"__hisd_tmp_exit{k}" for k, name in enumerate(exits)})
    for old, tmp in temps.items():
        rename_tensor(model, old, tmp)
    finals = {"__hisd_tmp_input": INPUT_NAME}
    finals.update({f"__hisd_tmp_exit{k}": exit_name(k) for k in range(len(exits))})
    for tmp, final in finals.items():
        _free_name(model, final, tmp)
        rename_tensor(model, tmp, final)
    original = {exit_name(k): name for k, name in enumerate(exits)}
    value_infos = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    outputs = []
    for k in range(len(exits)):
        info = value_infos.get(exit_name(k))
        if info is None or not info.type.tensor_type.HasField("shape"):
            raise ConversionError(
                f"{path}: exit tensor {exits[k]} has no inferred type/shape; the model needs shape information"
            )
        outputs.append(info)
    copied = [onnx.ValueInfoProto() for _ in outputs]
    for dst, src in zip(copied, outputs):
        dst.CopyFrom(src)
    # Exits that were intermediate tensors keep a value_info entry; outputs must not duplicate it.
    exit_set = {exit_name(k) for k in range(len(exits))}
    kept_info = [v for v in graph.value_info if v.name not in exit_set]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    del graph.output[:]
    graph.output.extend(copied)
    return model, original


def read_normalized(
    model: Any, path: Path, keep: Sequence[str], input_shape: Optional[Sequence[Optional[int]]] = None
) -> Any:
    """``model`` normalised, with the tensors named in ``keep`` made graph outputs during the
    folding (so no rewrite can touch them) and the original outputs restored afterwards."""
    import onnx

    from hisd_edge.convert.normalize import normalize

    model = infer_shapes(model)
    outputs = [o.name for o in model.graph.output]
    extra = [name for name in keep if name not in outputs and name in set(tensor_names(model))]
    infos = {v.name: v for v in model.graph.value_info}
    for name in extra:
        info = onnx.ValueInfoProto()
        if name in infos:
            info.CopyFrom(infos[name])
        else:
            info.name = name
        model.graph.output.append(info)
    model, report = normalize(model, input_shape, what=str(path))
    if extra:
        kept = [o for o in model.graph.output if o.name not in extra]
        del model.graph.output[:]
        model.graph.output.extend(kept)
        model = infer_shapes(model)
    LOG.info("%s normalised: %s", path, report.to_dict())
    return model


# -- fused confidence ------------------------------------------------------------------------
def num_classes(model: Any, k: int) -> Optional[int]:
    """Width of exit k's output (classes of a logits exit), if shape inference knows it."""
    for out in model.graph.output:
        if out.name == exit_name(k) and out.type.tensor_type.HasField("shape"):
            dims = out.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None


def fixed_batch(model: Any) -> Optional[int]:
    """The input's batch size when the graph fixes it (user ONNX exported for batch 1, say), else None."""
    for info in model.graph.input:
        if info.name == INPUT_NAME and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def add_confidence_outputs(model: Any, kinds: Sequence[str]) -> List[Optional[str]]:
    """Append ``conf{k} = ReduceMax(Softmax(exit{k}))`` (one float32 per sample) for logits exits.

    Returns, per exit, the confidence output's name or None (embedding exits, non-2-D outputs).
    The nodes are named ``conf{k}/...`` so quantization and fp16 conversion can leave them alone.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    opset = model_opset(model)
    by_name = {o.name: o for o in graph.output}
    names: List[Optional[str]] = []
    for k, kind in enumerate(kinds):
        info = by_name[exit_name(k)]
        shape = info.type.tensor_type.shape
        if kind != "logits" or len(shape.dim) != 2 or info.type.tensor_type.elem_type != TensorProto.FLOAT:
            names.append(None)
            continue
        _free_name(model, conf_name(k), "")  # a user graph may already use the name for something else
        probs = f"conf{k}/probs"
        graph.node.append(helper.make_node("Softmax", [exit_name(k)], [probs], name=f"conf{k}/Softmax", axis=-1))
        if opset >= 18:
            axes = f"conf{k}/axes"
            graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
            graph.node.append(
                helper.make_node("ReduceMax", [probs, axes], [conf_name(k)], name=f"conf{k}/ReduceMax", keepdims=0)
            )
        else:
            graph.node.append(
                helper.make_node("ReduceMax", [probs], [conf_name(k)], name=f"conf{k}/ReduceMax", axes=[1], keepdims=0)
            )
        batch = shape.dim[0]
        out = helper.make_tensor_value_info(
            conf_name(k), TensorProto.FLOAT, [batch.dim_param or batch.dim_value or None]
        )
        graph.output.append(out)
        names.append(conf_name(k))
    return names


def check_exit_ranks(model: Any, exit_names: Sequence[str], kinds: Sequence[str]) -> None:
    """Refuse exits that are not one vector per sample (feature maps crash the runtime's policies)."""
    outputs = {o.name: o for o in model.graph.output}
    for k, kind in enumerate(kinds):
        info = outputs.get(exit_name(k))
        if info is None or not info.type.tensor_type.HasField("shape"):
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in info.type.tensor_type.shape.dim
        ]
        if len(dims) != 2:
            label = exit_names[k] if k < len(exit_names) else exit_name(k)
            raise InputError(
                f"exit {k} ({label}) has shape {dims}, not one {kind} vector per sample [batch, N]; attach an exit "
                "head that pools and classifies (ExitsOnBackbone adds one at a feature map), or name the tensor after "
                "global pooling and the classifier"
            )


def model_opset(model: Any) -> int:
    """The default-domain opset the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return DEFAULT_OPSET
