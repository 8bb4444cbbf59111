"""Step 1: what is converted, read into one shape the pipeline works on.

Three kinds of input become a :class:`ModelSource` (how to export it, its exits, preprocessing,
classes, default calibration and validation data): a checkpoint written by ``hisd-edge train``
(:func:`checkpoint_source`), a user's multi-exit ONNX plus the names of its exit tensors
(:func:`onnx_source`) and an in-memory ``nn.Module`` (:func:`module_source`). :func:`list_points`
names the valid split points of each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from hisd_edge import atomic
from hisd_edge.convert.options import ConvertOptions
from hisd_edge.data import NAMED_DATASETS
from hisd_edge.errors import CheckpointError, ConversionError, InputError

LOG = logging.getLogger("hisd_edge.convert")

PathLike = Union[str, "os.PathLike[str]"]


@dataclasses.dataclass
class ModelSource:
    """What the pipeline needs from any kind of input (a checkpoint, a user's ONNX, an nn.Module)."""

    export: Callable[[], Tuple[Any, Optional[List[str]]]]  # -> (monolithic proto with exit{k} outputs, split tensors)
    num_exits: int
    kinds: List[str]
    spec: Any  # Preprocessing
    class_names: List[str]
    model_record: Dict[str, Any]
    exit_names: List[str]
    default_calib: Optional[str]
    validation: Callable[[], Optional[Tuple[Any, str]]]  # -> (Samples, description) or None
    torch_model: Any = None
    source_sha256: Optional[str] = None
    source_path: Optional[str] = None


def _load_checkpoint(path: Path, model: Any) -> Tuple[Any, Dict[str, Any]]:
    from hisd_edge.checkpoint import load_checkpoint, read_metadata

    meta = read_metadata(path)  # CheckpointError / InputError for missing, corrupt or foreign files
    if not meta.get("arch") and model is None:
        raise CheckpointError(
            f"{path}: this checkpoint wraps a custom backbone that its metadata cannot rebuild; convert it from Python "
            "with hisd_edge.convert.convert_checkpoint(path, out, model=your_model), or export it to ONNX and convert that"
        )
    return load_checkpoint(path, model)


def checkpoint_source(
    path: Path, model: Any, split_points: Optional[Sequence[str]], opts: ConvertOptions
) -> ModelSource:
    """A ``hisd-edge train`` checkpoint (``model`` only for wrapped custom backbones)."""
    from hisd_edge.preprocess import Preprocessing

    torch_model, meta = _load_checkpoint(path, model)
    spec = Preprocessing.from_dict(meta["preprocessing"])
    exits = meta.get("exits") or []
    kind = str(meta.get("exit_output", "logits"))
    training = (meta.get("training") or {}).get("config") or {}
    data = training.get("data")
    default_calib = None
    if data in NAMED_DATASETS:  # default, fashion
        default_calib = f"{data}:train"
    elif data and Path(data).exists():
        default_calib = str(data)

    def validation() -> Optional[Any]:
        return _checkpoint_validation(meta, opts)

    return ModelSource(
        export=_module_exporter(torch_model, spec, split_points, opts),
        num_exits=len(exits),
        kinds=[kind] * len(exits),
        spec=spec,
        class_names=list(meta.get("class_names") or []),
        model_record={"arch": meta.get("arch"), "source": "checkpoint", "exit_output": kind},
        exit_names=[str(e.get("name", f"exit{k}")) for k, e in enumerate(exits)],
        default_calib=default_calib,
        validation=validation,
        torch_model=torch_model,
        source_sha256=atomic.sha256_file(path),
        source_path=str(path),
    )


def _checkpoint_validation(meta: Dict[str, Any], opts: ConvertOptions) -> Optional[Any]:
    """The checkpoint's own held-out split: default:val, its --val folder, or the same 15% of its data."""
    training = (meta.get("training") or {}).get("config") or {}
    data = training.get("data")
    if data is None:
        return None
    if data in NAMED_DATASETS:  # default, fashion
        from hisd_edge.data import load_samples

        return load_samples(f"{data}:val"), f"{data}:val"
    if (training.get("val") and not Path(training["val"]).exists()) or not Path(data).exists():
        LOG.warning("the checkpoint's training data (%s) is not here; give --val for a validation table", data)
        return None
    from hisd_edge.train.trainer import TrainConfig, load_training_data

    config = TrainConfig(data=str(data), val=training.get("val"), seed=int(training.get("seed", 0)), strict=opts.strict)
    name = str(training["val"]) if training.get("val") else f"{data} (the checkpoint's 15% validation split)"
    return load_training_data(config)[1], name


def _module_exporter(
    model: Any, spec: Any, split_points: Optional[Sequence[str]], opts: ConvertOptions
) -> Callable[[], Tuple[Any, Optional[List[str]]]]:
    def export() -> Tuple[Any, Optional[List[str]]]:
        from hisd_edge.convert.export import export_module

        proto, split_tensors = export_module(model, spec.input_shape, opset=opts.opset, split_points=split_points)
        return proto, (split_tensors or None)

    return export


def onnx_source(
    path: Path,
    exits: List[str],
    split_at: Optional[List[str]],
    preprocessing: Any,
    class_names: Optional[Sequence[str]],
    exit_kind: str,
    opts: ConvertOptions,
    input_shape: Optional[Sequence[Optional[int]]] = None,
) -> ModelSource:
    """A user's multi-exit ONNX; ``exits`` name its exit tensors, shallowest first.

    The graph is normalised first (:mod:`~hisd_edge.convert.normalize`); ``input_shape`` (N,C,H,W,
    None for a dynamic dim) pins dynamic input dims.
    """
    from hisd_edge.convert.export import load_onnx, model_opset, num_classes
    from hisd_edge.preprocess import Preprocessing

    if exit_kind not in ("logits", "embedding"):
        raise InputError(f"--exit-kind {exit_kind!r}: choose logits or embedding")
    proto, original = load_onnx(path, exits, input_shape)
    graph_input = next(i for i in proto.graph.input if i.name == "input")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InputError(
            f"{path}: input shape {['N' if d is None else d for d in dims]} is not N x C x H x W; hisd-edge converts image models"
        )
    if any(d is None for d in dims[1:]):
        raise InputError(
            f"{path}: input dims {['N' if d is None else d for d in dims]} are dynamic beyond the batch; pin them with "
            "--input-shape N,C,H,W (e.g. N,3,224,224)"
        )
    if preprocessing is None:
        channels = int(dims[1])  # type: ignore[arg-type]
        spec = Preprocessing(
            input_size=(int(dims[2]), int(dims[3])),  # type: ignore[arg-type]  # fixed dims, checked above
            channels=channels,
            color_order="gray" if channels == 1 else "rgb",
            mean=(0.0,) * channels,
            std=(1.0,) * channels,
        )
    else:
        spec = (
            preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(dict(preprocessing))
        )
    if tuple(spec.input_shape) != tuple(dims[1:]):
        raise InputError(
            f"{path}: the model's input is {tuple(dims[1:])} (C, H, W) but the preprocessing gives "
            f"{tuple(spec.input_shape)}; fix --preprocessing (channels, input_size)"
        )
    if opts.opset != 17 and model_opset(proto) != opts.opset:
        LOG.warning("--opset is ignored for ONNX input (the model's opset %d is kept)", model_opset(proto))
    classes = num_classes(proto, len(exits) - 1) if exit_kind == "logits" else None
    if class_names and classes is not None and len(class_names) != classes:
        raise InputError(f"--class-names gives {len(class_names)} names but the exits have {classes} classes")
    if not class_names and classes is not None:
        class_names = [str(i) for i in range(classes)]
    return ModelSource(
        export=lambda: (proto, split_at),
        num_exits=len(exits),
        kinds=[exit_kind] * len(exits),
        spec=spec,
        class_names=list(class_names) if class_names else [],
        model_record={"arch": None, "source": "onnx", "exit_output": exit_kind},
        exit_names=[original[f"exit{k}"] for k in range(len(exits))],
        default_calib=None,
        validation=lambda: None,
        source_sha256=atomic.sha256_file(path),
        source_path=str(path),
    )


def module_source(
    model: Any,
    preprocessing: Any,
    class_names: Optional[Sequence[str]],
    split_points: Optional[Sequence[str]],
    opts: ConvertOptions,
) -> ModelSource:
    """An in-memory multi-exit ``nn.Module`` (forward returns one output per exit, has ``exit_info``)."""
    from hisd_edge.preprocess import Preprocessing

    spec = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(dict(preprocessing))
    kinds = [str(getattr(model, "exit_output", "logits"))] * len(getattr(model, "exit_info", []) or [])
    names = [getattr(info, "name", f"exit{k}") for k, info in enumerate(getattr(model, "exit_info", []) or [])]
    return ModelSource(
        export=_module_exporter(model, spec, split_points, opts),
        num_exits=len(kinds),
        kinds=kinds,
        spec=spec,
        class_names=list(class_names) if class_names else [],
        model_record={
            "arch": getattr(model, "arch", None),
            "source": "module",
            "exit_output": kinds[0] if kinds else "logits",
        },
        exit_names=names,
        default_calib=None,
        validation=lambda: None,
        torch_model=model,
    )


def validation_data(source: ModelSource, opts: ConvertOptions) -> Optional[Any]:
    """The held-out data the validation table is measured on: ``--val``, else the source's own split."""
    from hisd_edge.convert.validate import ValidationData
    from hisd_edge.data import load_samples

    if opts.val:
        samples = load_samples(opts.val, count=opts.val_count, strict=opts.strict)
        name = opts.val
    else:
        found = source.validation()
        if found is None:
            return None
        samples, name = found
        if opts.val_count is not None and opts.val_count < len(samples):
            samples = samples.subset(range(opts.val_count))
    inputs = samples.tensors(source.spec)
    labels = samples.labels_for(source.class_names, name)
    if samples.skipped:
        LOG.warning("%s: skipped %d undecodable image(s)", name, len(samples.skipped))
    return ValidationData(inputs=inputs, labels=labels, source=name)


# -- split points ---------------------------------------------------------------------------
def list_points(
    source: Union[PathLike, Any], model: Any = None, input_shape: Optional[Sequence[Optional[int]]] = None
) -> List[Tuple[str, Any]]:
    """Valid names for ``--exits`` / ``--split-at``: torch.fx point names with shapes for a checkpoint
    or module, tensor names with shapes for an ONNX file (normalised first; see
    :func:`list_onnx_points` for which of them are clean cuts)."""
    from hisd_edge.convert.export import list_split_points

    if not isinstance(source, (str, os.PathLike)):
        spec_shape = _module_input_shape(source)
        return [(n, s) for n, s in list_split_points(source, spec_shape)]
    path = Path(source)
    if path.suffix.lower() == ".onnx":
        return [(name, shape) for name, shape, _ in list_onnx_points(path, input_shape)]
    torch_model, meta = _load_checkpoint(path, model)
    from hisd_edge.preprocess import Preprocessing

    spec = Preprocessing.from_dict(meta["preprocessing"])
    return [(n, s) for n, s in list_split_points(torch_model, spec.input_shape)]


def _module_input_shape(model: Any) -> Tuple[int, ...]:
    shape = getattr(model, "input_shape", None)  # ExitsOnBackbone records its example's shape
    if shape is not None:
        return tuple(int(v) for v in shape)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "input_size"):
        return (int(config.in_channels), *tuple(int(v) for v in config.input_size))
    raise InputError(
        "cannot tell this module's input shape; pass a checkpoint path, or use "
        "hisd_edge.convert.export.list_split_points(model, (C, H, W))"
    )


def list_onnx_points(path: Path, input_shape: Optional[Sequence[Optional[int]]] = None) -> List[Tuple[str, Any, bool]]:
    """(tensor name, shape, clean cut?) for every tensor of the normalised ONNX that depends on the input."""
    import onnx

    from hisd_edge.convert.export import read_normalized
    from hisd_edge.convert.split import GraphIndex

    try:
        model = read_normalized(onnx.load(str(path)), path, [], input_shape)
    except (ConversionError, InputError):
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    index = GraphIndex(model)
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    points = []
    for node in model.graph.node:
        for out in node.output:
            if out and out in index.dynamic:
                info = infos.get(out)
                shape = None
                if info is not None and info.type.tensor_type.HasField("shape"):
                    shape = tuple(
                        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                        for d in info.type.tensor_type.shape.dim
                    )
                points.append((out, shape, index.is_clean_cut(out)))
    return points
