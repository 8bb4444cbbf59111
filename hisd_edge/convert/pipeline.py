"""The converter end to end: a multi-exit model in, a verified stage bundle out.

Three entry points share one pipeline (and so the same split, verification and quantization):

* :func:`convert_checkpoint` — a checkpoint written by ``hisd-edge train``;
* :func:`convert_onnx` — a user's multi-exit ONNX plus the names of its exit tensors;
* :func:`convert_model` — any ``nn.Module`` following :mod:`hisd_edge.models.protocol`.

Order of work: refuse a bad ``--out`` and load the data first (cheap failures before expensive
ones), then export -> split -> verify -> fp16 -> chained calibration -> INT8 Q/DQ + TensorRT
caches -> task-level validation -> manifest, all inside a temporary directory that becomes the
bundle only at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from hisd_edge import __version__, atomic
from hisd_edge.bundle import PRECISIONS, file_record, write_manifest
from hisd_edge.errors import CheckpointError, ConversionError, InputError

LOG = logging.getLogger("hisd_edge.convert")

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_THRESHOLD = 0.9
DEFAULT_MAX_DROP_PP = 0.5
VERIFY_SAMPLES = 64


@dataclasses.dataclass
class ConvertOptions:
    """Everything ``hisd-edge convert`` can be told (defaults match the CLI)."""

    precisions: Tuple[str, ...] = ("fp32", "fp16", "int8")
    max_drop_pp: Optional[float] = None  # set: also choose a per-stage "mixed" plan within this drop
    calib: Optional[str] = None  # source string or calibration/*.json; None: the model's own default
    calib_count: Optional[int] = None  # None: the recipe's (256)
    calib_method: Optional[str] = None  # None: the recipe's (percentile)
    val: Optional[str] = None  # held-out data; None: the checkpoint's validation split
    val_count: Optional[int] = None
    opset: int = 17
    strict: bool = False  # undecodable images are fatal instead of skipped
    force: bool = False  # replace an existing bundle (atomically)
    threads: int = 2  # ONNX Runtime intra-op threads per session
    verify_count: int = VERIFY_SAMPLES
    trt_version: str = "8.5.2"  # TensorRT version named in the calibration caches' header
    confidence: bool = True  # fuse softmax->max as conf{k} outputs
    keep_fp16: int = 0  # keep this many of the most INT8-sensitive layers out of INT8
    sensitivity: bool = False  # measure every layer's INT8 sensitivity (done anyway when keep_fp16 > 0)
    threshold: float = DEFAULT_THRESHOLD  # default max-prob threshold of every exit but the last
    name: Optional[str] = None  # bundle name; default: the output directory's name
    progress: bool = False
    command: Optional[str] = None  # recorded in provenance

    def __post_init__(self) -> None:
        precisions = tuple(dict.fromkeys(self.precisions))
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise InputError(
                f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)} or 'mixed'"
            )
        if "fp32" not in precisions:
            precisions = ("fp32", *precisions)  # the reference every other precision is judged against
        self.precisions = tuple(p for p in PRECISIONS if p in precisions)
        if self.max_drop_pp is not None and self.max_drop_pp < 0:
            raise InputError(f"--max-drop must be >= 0 percentage points, got {self.max_drop_pp}")
        if int(self.keep_fp16) < 0:
            raise InputError(f"--keep-fp16 must be >= 0 layers, got {self.keep_fp16}")
        if self.threads <= 0 or self.verify_count <= 0:
            raise InputError("threads and verify count must be positive")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise InputError(f"threshold must be in (0, 1], got {self.threshold}")
        if int(self.opset) < 13:
            raise InputError(f"--opset {self.opset}: needs 13 or newer (per-channel Q/DQ)")


def parse_precisions(text: str) -> Tuple[Tuple[str, ...], bool]:
    """``"fp32,fp16,int8"`` or ``"mixed"`` -> (precisions to write, mixed requested)."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not parts:
        raise InputError("--precision is empty; give e.g. fp32,fp16,int8 or mixed")
    mixed = "mixed" in parts
    parts = [p for p in parts if p != "mixed"]
    if mixed:
        parts = list(PRECISIONS)
    unknown = [p for p in parts if p not in PRECISIONS]
    if unknown:
        raise InputError(f"--precision: unknown {', '.join(unknown)}; choose from {', '.join(PRECISIONS)} or mixed")
    return tuple(parts), mixed


@dataclasses.dataclass
class ConvertResult:
    """What a conversion produced: where, the validation table and what it cost."""

    bundle: Path
    manifest: Dict[str, Any]
    validation: Dict[str, Any]
    verification: Dict[str, Any]
    calibration: Dict[str, Any]
    timings_s: Dict[str, float]
    sensitivity: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # INT8 cost per layer, worst first

    def table(self) -> str:
        from hisd_edge.convert.validate import format_validation_table

        return format_validation_table(self.validation)


@dataclasses.dataclass
class _Source:
    """What the pipeline needs from any kind of input."""

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


# -- entry points ----------------------------------------------------------------------------
def convert_checkpoint(
    checkpoint: PathLike,
    out_dir: PathLike,
    *,
    model: Any = None,
    split_points: Optional[Sequence[str]] = None,
    **options: Any,
) -> ConvertResult:
    """Convert a ``hisd-edge train`` checkpoint into a bundle at ``out_dir``.

    ``model`` is needed only for checkpoints of wrapped custom backbones; ``split_points`` are
    module names (see :func:`list_points`). Keyword options are those of :class:`ConvertOptions`,
    e.g. ``precisions=("fp32", "fp16", "int8"), calib="default:train", calib_count=256``.
    """
    opts = _options(options)
    from hisd_edge.convert.writer import check_output_dir

    check_output_dir(Path(out_dir), opts.force)
    source = _checkpoint_source(Path(checkpoint), model, split_points, opts)
    return _convert(source, Path(out_dir), opts)


def convert_onnx(
    onnx_path: PathLike,
    out_dir: PathLike,
    exits: Sequence[str],
    *,
    split_at: Optional[Sequence[str]] = None,
    preprocessing: Any = None,
    class_names: Optional[Sequence[str]] = None,
    exit_kind: str = "logits",
    input_shape: Optional[Sequence[Optional[int]]] = None,
    **options: Any,
) -> ConvertResult:
    """Convert a user's multi-exit ONNX: ``exits`` name its exit tensors, shallowest first.

    The graph is normalised first (:mod:`~hisd_edge.convert.normalize`); ``input_shape`` (N,C,H,W,
    None for a dynamic dim) pins dynamic input dims.

    ``split_at`` optionally names the boundary tensors (one fewer than exits); otherwise they are
    found structurally. ``preprocessing`` is a :class:`~hisd_edge.preprocess.Preprocessing` or its
    dict; by default it is derived from the input shape (0..1 scaling, RGB or gray).
    """
    opts = _options(options)
    from hisd_edge.convert.writer import check_output_dir

    check_output_dir(Path(out_dir), opts.force)
    source = _onnx_source(
        Path(onnx_path),
        list(exits),
        list(split_at) if split_at else None,
        preprocessing,
        class_names,
        exit_kind,
        opts,
        input_shape,
    )
    return _convert(source, Path(out_dir), opts)


def convert_model(
    model: Any,
    out_dir: PathLike,
    *,
    preprocessing: Any,
    class_names: Optional[Sequence[str]] = None,
    split_points: Optional[Sequence[str]] = None,
    **options: Any,
) -> ConvertResult:
    """Convert an in-memory multi-exit ``nn.Module`` (forward returns one output per exit, has
    ``exit_info``). ``split_points`` are module names (:func:`list_points`); by default the stage
    boundaries are found structurally. Calibration needs ``calib=`` (no training data is known)."""
    opts = _options(options)
    from hisd_edge.convert.writer import check_output_dir
    from hisd_edge.preprocess import Preprocessing

    check_output_dir(Path(out_dir), opts.force)
    spec = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(dict(preprocessing))
    kinds = [str(getattr(model, "exit_output", "logits"))] * len(getattr(model, "exit_info", []) or [])
    names = [getattr(info, "name", f"exit{k}") for k, info in enumerate(getattr(model, "exit_info", []) or [])]
    source = _Source(
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
    return _convert(source, Path(out_dir), opts)


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


def _options(options: Dict[str, Any]) -> ConvertOptions:
    if options.get("calib_count") is not None and int(options["calib_count"]) <= 0:
        raise InputError(f"--calib-count must be positive, got {options['calib_count']}")
    if options.get("val_count") is not None and int(options["val_count"]) <= 0:
        raise InputError(f"--val-count must be positive, got {options['val_count']}")
    if isinstance(options.get("precisions"), str):
        precisions, mixed = parse_precisions(options["precisions"])
        options = {**options, "precisions": precisions}
        if mixed and options.get("max_drop_pp") is None:
            options["max_drop_pp"] = DEFAULT_MAX_DROP_PP
    known = {f.name for f in dataclasses.fields(ConvertOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown conversion option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return ConvertOptions(**options)


# -- sources ---------------------------------------------------------------------------------
def _load_checkpoint(path: Path, model: Any) -> Tuple[Any, Dict[str, Any]]:
    from hisd_edge.checkpoint import load_checkpoint, read_metadata

    meta = read_metadata(path)  # CheckpointError / InputError for missing, corrupt or foreign files
    if not meta.get("arch") and model is None:
        raise CheckpointError(
            f"{path}: this checkpoint wraps a custom backbone that its metadata cannot rebuild; convert it from Python "
            "with hisd_edge.convert.convert_checkpoint(path, out, model=your_model), or export it to ONNX and convert that"
        )
    return load_checkpoint(path, model)


def _checkpoint_source(path: Path, model: Any, split_points: Optional[Sequence[str]], opts: ConvertOptions) -> _Source:
    from hisd_edge.preprocess import Preprocessing

    torch_model, meta = _load_checkpoint(path, model)
    spec = Preprocessing.from_dict(meta["preprocessing"])
    exits = meta.get("exits") or []
    kind = str(meta.get("exit_output", "logits"))
    training = (meta.get("training") or {}).get("config") or {}
    data = training.get("data")
    default_calib = None
    if data == "default":
        default_calib = "default:train"
    elif data and Path(data).exists():
        default_calib = str(data)

    def validation() -> Optional[Any]:
        return _checkpoint_validation(meta, opts)

    return _Source(
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
    if data == "default":
        from hisd_edge.data import load_samples

        return load_samples("default:val"), "default:val"
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


def _onnx_source(
    path: Path,
    exits: List[str],
    split_at: Optional[List[str]],
    preprocessing: Any,
    class_names: Optional[Sequence[str]],
    exit_kind: str,
    opts: ConvertOptions,
    input_shape: Optional[Sequence[Optional[int]]] = None,
) -> _Source:
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
    return _Source(
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


# -- the pipeline ----------------------------------------------------------------------------
class _Timer:
    def __init__(self, progress: Any):
        self.times: Dict[str, float] = {}
        self.progress = progress
        self.started = time.perf_counter()

    def step(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, timer: _Timer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        if self.timer.progress is not None:
            self.timer.progress.set_postfix_str(self.name)

    def __exit__(self, *exc: Any) -> None:
        self.timer.times[self.name] = round(self.timer.times.get(self.name, 0.0) + time.perf_counter() - self.t0, 3)
        if self.timer.progress is not None and exc[0] is None:
            self.timer.progress.update(1)


def _validation_data(source: _Source, opts: ConvertOptions) -> Optional[Any]:
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


def _convert(source: _Source, out: Path, opts: ConvertOptions) -> ConvertResult:
    from hisd_edge.convert import calibrate as calib_mod

    if source.num_exits < 1:
        raise InputError("the model declares no exits")
    steps = 6 + ("fp16" in opts.precisions) + 2 * ("int8" in opts.precisions)
    progress = None
    if opts.progress:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, pipes, tests stay clean)
        progress = tqdm(
            total=steps,
            desc=f"convert {out.name}",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
            disable=None,
        )
    timer = _Timer(progress)
    try:
        # Data first: a bad calibration or validation source fails before any heavy work.
        with timer.step("data"):
            need_calib = "int8" in opts.precisions
            default_source = source.default_calib
            if opts.calib is None and default_source is None and need_calib:
                raise InputError(
                    "no calibration data known for this model; give --calib SOURCE (an image folder, video, .npy/.npz, "
                    "'default:train' or a calibration/*.json definition)"
                )
            recipe = calib_mod.resolve_recipe(
                opts.calib, opts.calib_count, opts.calib_method, default_source=default_source or "default:train"
            )
            validation_data = _validation_data(source, opts)
            calibration = None
            if need_calib:
                calibration = calib_mod.load_calibration_set(recipe, source.spec, strict=opts.strict)
                verify_inputs = calibration.inputs[: opts.verify_count]
            elif opts.calib is not None or default_source is not None:
                verify_recipe = dataclasses.replace(recipe, count=min(recipe.count, opts.verify_count))
                verify_inputs = calib_mod.load_calibration_set(verify_recipe, source.spec, strict=opts.strict).inputs[:]
            elif validation_data is not None:
                verify_inputs = validation_data.inputs[: opts.verify_count]
            else:
                raise InputError("real samples are needed to verify the split; give --calib SOURCE or --val SOURCE")
            if opts.max_drop_pp is not None and validation_data is None:
                raise InputError("--precision mixed needs held-out labelled data; give --val SOURCE")
        with timer.step("export"):
            proto, split_tensors = source.export()
        result = _build_bundle(
            source, proto, split_tensors, out, opts, recipe, calibration, verify_inputs, validation_data, timer
        )
    finally:
        if progress is not None:
            progress.close()
    return result


def _build_bundle(
    source: _Source,
    proto: Any,
    split_tensors: Optional[List[str]],
    out: Path,
    opts: ConvertOptions,
    recipe: Any,
    calibration: Any,
    verify_inputs: np.ndarray,
    validation_data: Any,
    timer: _Timer,
) -> ConvertResult:
    import onnx

    from hisd_edge.convert import calib_cache, calibrate, export, quantize, split, validate, verify, writer

    num = source.num_exits
    with timer.step("split"):
        export.check_exit_ranks(proto, source.exit_names, source.kinds)
        confidence: List[Optional[str]] = (
            export.add_confidence_outputs(proto, source.kinds) if opts.confidence else [None] * num
        )
        exit_outputs = split.stage_output_names(num, confidence)
        boundaries = split.find_boundaries(proto, exit_outputs, split_tensors)
        split.name_boundaries(proto, boundaries)
        proto = export.infer_shapes(proto)
        split.check_model(proto, "the monolithic model")
        stages = split.split_stages(proto, exit_outputs)
        fixed = export.fixed_batch(proto)
        if fixed and fixed != 1:
            raise InputError(
                f"the model's input has a fixed batch of {fixed}; early exit drops finished samples from the batch, so "
                "stages need a dynamic batch axis (or batch 1): re-export with dynamic_axes={'input': {0: 'batch'}}"
            )
        from hisd_edge.convert.calib_stats import batch_size_for

        # Chains run in batches whose activations fit a budget: 256 samples of a 28x28 model, a
        # handful at 224x224 (ONNX Runtime keeps its arena at the largest batch's size).
        run_batch = fixed or batch_size_for([s.model for s in stages], limit=256)
        calib_batch = fixed or None
        if fixed:
            verify_inputs, calibration, validation_data = _trim_to_batch(
                fixed, verify_inputs, calibration, validation_data
            )
        if not source.class_names and source.kinds[-1] == "logits":
            classes = export.num_classes(proto, num - 1)
            source.class_names = [str(i) for i in range(classes)] if classes else []

    with writer.bundle_dir(out, opts.force) as tmp, tempfile.TemporaryDirectory(prefix="hisd-convert-") as scratch_name:
        scratch = Path(scratch_name)
        paths: Dict[str, List[Path]] = {"fp32": []}
        with timer.step("verify"):
            onnx.save(proto, str(tmp / writer.FULL_MODEL_FILE))
            for stage in stages:
                path = tmp / writer.stage_file(stage.index, "fp32")
                onnx.save(stage.model, str(path))
                paths["fp32"].append(path)
            chain = verify.Chain(
                [str(p) for p in paths["fp32"]], [s.outputs for s in stages], threads=opts.threads, batch_size=run_batch
            )
            report = verify.verify(
                str(tmp / writer.FULL_MODEL_FILE),
                chain,
                verify_inputs,
                num,
                torch_model=source.torch_model,
                threads=opts.threads,
            )
        if "fp16" in opts.precisions:
            with timer.step("fp16"):
                paths["fp16"] = []
                for stage in stages:
                    half = quantize.convert_fp16(stage.model, quantize.confidence_nodes(stage.model))
                    split.check_model(half, f"stage {stage.index} (fp16)")
                    path = tmp / writer.stage_file(stage.index, "fp16")
                    onnx.save(half, str(path))
                    paths["fp16"].append(path)
        caches: List[Dict[str, Any]] = []
        sensitivity: List[Dict[str, Any]] = []
        kept_float: Dict[int, List[str]] = {}
        if "int8" in opts.precisions:
            with timer.step("calibrate"):
                statistics = calibrate.calibrate_chain(paths["fp32"], chain, calibration, recipe, scratch, calib_batch)
            with timer.step("int8"):
                paths["int8"] = []
                from hisd_edge.convert import sensitivity as sens_mod

                sensitivity, kept_float = sens_mod.rank_layers(
                    stages, statistics, opts.keep_fp16, opts.sensitivity, opts.threads
                )
                for stage, stage_calibration in zip(stages, statistics):
                    path = tmp / writer.stage_file(stage.index, "int8")
                    quantize.quantize_int8(
                        paths["fp32"][stage.index],
                        path,
                        stage_calibration,
                        recipe.method,
                        scratch,
                        quantize.confidence_nodes(stage.model) + kept_float.get(stage.index, []),
                    )
                    split.check_model(onnx.load(str(path)), f"stage {stage.index} (int8)")
                    amax = stage_calibration.amax()
                    cache_name = writer.cache_file(stage.index)
                    atomic.write_text(tmp / cache_name, calib_cache.format_cache(amax, opts.trt_version))
                    caches.append(
                        {
                            "path": cache_name,
                            "trt_version": opts.trt_version,
                            "algorithm": calib_cache.DEFAULT_ALGORITHM,
                            "tensors": len(amax),
                        }
                    )
                    paths["int8"].append(path)
        with timer.step("validate"):
            validation: Dict[str, Any] = {"data": None, "count": 0, "labelled": False, "rows": []}
            if validation_data is not None:
                chains = validate.PrecisionChains(
                    {p: [str(x) for x in v] for p, v in paths.items()},
                    [s.outputs for s in stages],
                    opts.threads,
                    batch_size=run_batch,
                )
                validation = validate.validate(chains, validation_data, source.kinds, list(paths), opts.max_drop_pp)
        with timer.step("write"):
            manifest = _manifest(
                source,
                stages,
                paths,
                caches,
                confidence,
                proto,
                tmp,
                out,
                opts,
                recipe,
                calibration,
                report,
                validation,
                kept_float,
            )
            write_manifest(tmp, manifest)
    timer.times["total"] = round(time.perf_counter() - timer.started, 3)
    return ConvertResult(
        bundle=out,
        manifest=manifest,
        validation=validation,
        verification=report.to_dict(),
        calibration=manifest.get("calibration") or {},
        timings_s=dict(timer.times),
        sensitivity=sensitivity,
    )


def _trim_to_batch(
    batch: int, verify_inputs: np.ndarray, calibration: Any, validation_data: Any
) -> Tuple[np.ndarray, Any, Any]:
    """A model with a fixed batch dim takes exactly that many samples per run: keep whole batches."""

    def whole(n: int, what: str) -> int:
        if n < batch:
            raise InputError(
                f"the model's input has a fixed batch of {batch} but only {n} {what} sample(s) are available"
            )
        if n % batch:
            LOG.warning("the model's batch is fixed at %d: using %d of %d %s samples", batch, n - n % batch, n, what)
        return n - n % batch

    verify_inputs = verify_inputs[: whole(len(verify_inputs), "verification")]
    if calibration is not None:
        calibration = dataclasses.replace(
            calibration, inputs=calibration.inputs[: whole(len(calibration.inputs), "calibration")]
        )
    if validation_data is not None:
        keep = whole(len(validation_data.inputs), "validation")
        validation_data = dataclasses.replace(
            validation_data,
            inputs=validation_data.inputs[:keep],
            labels=None if validation_data.labels is None else validation_data.labels[:keep],
        )
    return verify_inputs, calibration, validation_data


def _manifest(
    source: _Source,
    stages: List[Any],
    paths: Dict[str, List[Path]],
    caches: List[Dict[str, Any]],
    confidence: List[Optional[str]],
    proto: Any,
    tmp: Path,
    out: Path,
    opts: ConvertOptions,
    recipe: Any,
    calibration: Any,
    report: Any,
    validation: Dict[str, Any],
    kept_float: Optional[Dict[int, List[str]]] = None,
) -> Dict[str, Any]:
    import onnx
    import onnxruntime

    kept_float = kept_float or {}

    from hisd_edge.convert import export, stats, writer

    stage_records = []
    for stage in stages:
        graph_stats = stats.graph_stats(stage.model)
        files: Dict[str, Any] = {}
        for precision, stage_paths in paths.items():
            record = file_record(tmp, stage_paths[stage.index].name, io_dtype="float32")
            if precision == "fp16":
                record["compute_dtype"] = "float16"
            if precision == "int8":
                cache = dict(caches[stage.index])
                record["calibration_cache"] = {**file_record(tmp, cache.pop("path")), **cache}
                record["quantization"] = {
                    "format": "QDQ",
                    "placement": "tensorrt (inputs of Conv/Gemm/MatMul and residual Add skips)",
                    "activations": "int8 per-tensor symmetric",
                    "weights": "int8 per-channel symmetric",
                    "calibration": recipe.method,
                    "kept_float": list(kept_float.get(stage.index, [])),
                }
            files[precision] = record
        stage_records.append(
            {
                "index": stage.index,
                "inputs": writer.tensor_records(stage.model.graph.input),
                "outputs": writer.tensor_records(stage.model.graph.output),
                "files": files,
                "params": graph_stats.params,
                "macs": graph_stats.macs,
                "macs_complete": graph_stats.macs_complete,
            }
        )
    exits = [
        {
            "index": k,
            "stage": k,
            "output": export.exit_name(k),
            "confidence_output": confidence[k],
            "kind": source.kinds[k],
            "name": source.exit_names[k] if k < len(source.exit_names) else f"exit{k}",
        }
        for k in range(source.num_exits)
    ]
    policy_kind = "max_prob" if all(kind == "logits" for kind in source.kinds) else "stability"
    thresholds: List[Optional[float]] = [float(opts.threshold)] * (source.num_exits - 1) + [None]
    manifest: Dict[str, Any] = {
        "name": opts.name or out.name,
        "model": {**source.model_record, "num_exits": source.num_exits},
        "class_names": list(source.class_names),
        "preprocessing": source.spec.to_dict(),
        "stages": stage_records,
        "exits": exits,
        "full_model": file_record(tmp, writer.FULL_MODEL_FILE),
        "policy": {"kind": policy_kind, "thresholds": thresholds, "calibrated": False},
        "validation": validation,
        "engines": [],
        "calibration": None,
        "verification": report.to_dict(),
        "provenance": {
            "checkpoint_sha256": source.source_sha256,
            "source_path": source.source_path,
            "toolkit_version": __version__,
            "torch_version": _torch_version(),
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "opset": export.model_opset(proto),
            "command": opts.command or "hisd_edge.convert (Python API)",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    if calibration is not None:
        manifest["calibration"] = {
            "source": calibration.source,
            "count": len(calibration.inputs),
            "method": recipe.method,
            "seed": recipe.seed,
            "recipe": recipe.name,
            "trt_cache_version": opts.trt_version,
            "skipped": len(calibration.skipped),
            "skipped_files": [name for name, _ in calibration.skipped[:20]],
        }
    if validation.get("mixed_plan"):
        manifest["mixed_precision"] = {"stages": list(validation["mixed_plan"]), "max_drop_pp": opts.max_drop_pp}
    return manifest


def _torch_version() -> Optional[str]:
    torch = sys.modules.get("torch")
    return getattr(torch, "__version__", None) if torch is not None else None
