"""The converter end to end: a multi-exit model in, a verified stage bundle out.

Three entry points share one pipeline (and so the same split, verification and quantization):

* :func:`convert_checkpoint` — a checkpoint written by ``hisd-edge train``;
* :func:`convert_onnx` — a user's multi-exit ONNX plus the names of its exit tensors;
* :func:`convert_model` — any ``nn.Module`` following :mod:`hisd_edge.models.protocol`.

This module only runs the steps in order; each step lives in its own module:
:mod:`~hisd_edge.convert.source` (what is converted) -> :mod:`~hisd_edge.convert.export` ->
:mod:`~hisd_edge.convert.split` -> :mod:`~hisd_edge.convert.verify` ->
:mod:`~hisd_edge.convert.quantize` (fp16) -> :mod:`~hisd_edge.convert.calibrate` (along the
chain) -> :mod:`~hisd_edge.convert.quantize` (INT8 Q/DQ) + :mod:`~hisd_edge.convert.calib_cache`
-> :mod:`~hisd_edge.convert.validate` -> :mod:`~hisd_edge.convert.writer` (manifest, atomic
directory). Order of work: refuse a bad ``--out`` and load the data first (cheap failures before
expensive ones), then the rest inside a temporary directory that becomes the bundle only at the
end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from hisd_edge import atomic
from hisd_edge.bundle import write_manifest
from hisd_edge.convert.options import (
    DEFAULT_MAX_DROP_PP,
    DEFAULT_THRESHOLD,
    VERIFY_SAMPLES,
    ConvertOptions,
    ConvertResult,
    options_from,
    parse_precisions,
)
from hisd_edge.convert.source import (
    ModelSource,
    checkpoint_source,
    list_onnx_points,
    list_points,
    module_source,
    onnx_source,
    validation_data,
)
from hisd_edge.errors import InputError

LOG = logging.getLogger("hisd_edge.convert")

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "DEFAULT_MAX_DROP_PP",
    "DEFAULT_THRESHOLD",
    "VERIFY_SAMPLES",
    "ConvertOptions",
    "ConvertResult",
    "convert_checkpoint",
    "convert_model",
    "convert_onnx",
    "list_onnx_points",
    "list_points",
    "parse_precisions",
]


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
    opts = options_from(options)
    from hisd_edge.convert.writer import check_output_dir

    check_output_dir(Path(out_dir), opts.force)
    source = checkpoint_source(Path(checkpoint), model, split_points, opts)
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
    opts = options_from(options)
    from hisd_edge.convert.writer import check_output_dir

    check_output_dir(Path(out_dir), opts.force)
    source = onnx_source(
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
    opts = options_from(options)
    from hisd_edge.convert.writer import check_output_dir

    check_output_dir(Path(out_dir), opts.force)
    source = module_source(model, preprocessing, class_names, split_points, opts)
    return _convert(source, Path(out_dir), opts)


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


@dataclasses.dataclass
class _Data:
    """The real samples a conversion works on, loaded before anything heavy runs."""

    recipe: Any  # calibrate.CalibrationRecipe
    calibration: Any  # calibrate.CalibrationSet, or None without INT8
    verify_inputs: np.ndarray
    validation: Any  # validate.ValidationData, or None without held-out data


def _load_data(source: ModelSource, opts: ConvertOptions) -> _Data:
    """Calibration, verification and validation samples; a bad source fails here, before any export."""
    from hisd_edge.convert import calibrate

    need_calib = "int8" in opts.precisions
    default_source = source.default_calib
    if opts.calib is None and default_source is None and need_calib:
        raise InputError(
            "no calibration data known for this model; give --calib SOURCE (an image folder, video, .npy/.npz, "
            "'default:train' or a calibration/*.json definition)"
        )
    recipe = calibrate.resolve_recipe(
        opts.calib, opts.calib_count, opts.calib_method, default_source=default_source or "default:train"
    )
    held_out = validation_data(source, opts)
    calibration = None
    if need_calib:
        calibration = calibrate.load_calibration_set(recipe, source.spec, strict=opts.strict)
        verify_inputs = calibration.inputs[: opts.verify_count]
    elif opts.calib is not None or default_source is not None:
        verify_recipe = dataclasses.replace(recipe, count=min(recipe.count, opts.verify_count))
        verify_inputs = calibrate.load_calibration_set(verify_recipe, source.spec, strict=opts.strict).inputs[:]
    elif held_out is not None:
        verify_inputs = held_out.inputs[: opts.verify_count]
    else:
        raise InputError("real samples are needed to verify the split; give --calib SOURCE or --val SOURCE")
    if opts.max_drop_pp is not None and held_out is None:
        raise InputError("--precision mixed needs held-out labelled data; give --val SOURCE")
    return _Data(recipe=recipe, calibration=calibration, verify_inputs=verify_inputs, validation=held_out)


def _convert(source: ModelSource, out: Path, opts: ConvertOptions) -> ConvertResult:
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
        with timer.step("data"):
            data = _load_data(source, opts)
        with timer.step("export"):
            proto, split_tensors = source.export()
        with timer.step("split"):
            split_model = _split(source, proto, split_tensors, opts)
            if split_model.fixed_batch:
                data = _trim_to_batch(split_model.fixed_batch, data)
        result = _build_bundle(source, split_model, data, out, opts, timer)
    finally:
        if progress is not None:
            progress.close()
    return result


@dataclasses.dataclass
class _SplitModel:
    """The monolithic graph (exit and boundary tensors named) and its stage graphs."""

    proto: Any
    stages: List[Any]  # split.Stage
    confidence: List[Optional[str]]  # conf{k} output per exit, or None
    fixed_batch: int  # 0: dynamic batch axis
    # Rows per ONNX Runtime run (a fixed-batch model takes exactly its batch). Otherwise chains run in
    # batches whose activations fit a budget: 256 samples of a 28x28 model, a handful at 224x224
    # (ONNX Runtime keeps its arena at the largest batch's size).
    run_batch: int

    @property
    def calib_batch(self) -> Optional[int]:
        """Calibration's batch: the fixed one, else None (it follows the activations' size)."""
        return self.fixed_batch or None


def _split(source: ModelSource, proto: Any, split_tensors: Optional[List[str]], opts: ConvertOptions) -> _SplitModel:
    from hisd_edge.convert import export, split
    from hisd_edge.convert.calib_stats import batch_size_for

    num = source.num_exits
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
    if not source.class_names and source.kinds[-1] == "logits":
        classes = export.num_classes(proto, num - 1)
        source.class_names = [str(i) for i in range(classes)] if classes else []
    run_batch = int(fixed or batch_size_for([s.model for s in stages], limit=256))
    return _SplitModel(
        proto=proto, stages=stages, confidence=confidence, fixed_batch=int(fixed or 0), run_batch=run_batch
    )


def _build_bundle(
    source: ModelSource, model: _SplitModel, data: _Data, out: Path, opts: ConvertOptions, timer: _Timer
) -> ConvertResult:
    """Every file of the bundle in a temporary directory that becomes ``out`` only if all steps pass."""
    from hisd_edge.convert import calibrate, validate, verify, writer
    from hisd_edge.runtime.ort_session import StageChain

    stage_outputs = [s.outputs for s in model.stages]
    with writer.bundle_dir(out, opts.force) as tmp, writer.scratch_dir() as scratch_name:
        scratch = Path(scratch_name)
        paths: Dict[str, List[Path]] = {}
        with timer.step("verify"):
            paths["fp32"] = _write_fp32(model, tmp)
            chain = StageChain([str(p) for p in paths["fp32"]], stage_outputs, opts.threads, model.run_batch)
            report = verify.verify(
                str(tmp / writer.FULL_MODEL_FILE),
                chain,
                data.verify_inputs,
                source.num_exits,
                torch_model=source.torch_model,
                threads=opts.threads,
            )
        if "fp16" in opts.precisions:
            with timer.step("fp16"):
                paths["fp16"] = _write_fp16(model, tmp)
        caches: List[Dict[str, Any]] = []
        sensitivity: List[Dict[str, Any]] = []
        kept_float: Dict[int, List[str]] = {}
        keep_record: Dict[str, Any] = {}
        if "int8" in opts.precisions:
            with timer.step("calibrate"):
                statistics = calibrate.calibrate_chain(
                    paths["fp32"], chain, data.calibration, data.recipe, scratch, model.calib_batch
                )
            with timer.step("int8"):
                from hisd_edge.convert import sensitivity as sensitivity_mod

                sensitivity, kept_float, keep_record = sensitivity_mod.choose_float_layers(
                    model.stages,
                    statistics,
                    opts.keep_fp16,
                    opts.sensitivity,
                    source.kinds,
                    opts.threads,
                    model.calib_batch,
                )
                paths["int8"], caches = _write_int8(
                    model, paths["fp32"], statistics, data.recipe, tmp, scratch, opts, kept_float
                )
        with timer.step("validate"):
            validation: Dict[str, Any] = {"data": None, "count": 0, "labelled": False, "rows": []}
            if data.validation is not None:
                chains = validate.PrecisionChains(paths, stage_outputs, opts.threads, batch_size=model.run_batch)
                validation = validate.validate(chains, data.validation, source.kinds, list(paths), opts.max_drop_pp)
        with timer.step("write"):
            manifest = writer.build_manifest(
                source,
                model.stages,
                paths,
                caches,
                model.confidence,
                model.proto,
                tmp,
                out,
                opts,
                data.recipe,
                data.calibration,
                report,
                validation,
                kept_float,
                keep_record,
            )
            if data.validation is not None:  # the input guard, calibrated on the validation inputs
                from hisd_edge.convert import export
                from hisd_edge.runtime.guard import guard_record_for_convert

                manifest["guard"] = guard_record_for_convert(
                    paths["fp32"][0],
                    data.validation.inputs,
                    data.validation.source,
                    outputs=("feat0" if source.num_exits > 1 else None, export.exit_name(0)),
                    logits=source.kinds[0] == "logits",
                    threads=opts.threads,
                    batch_size=model.run_batch,
                )
            if data.validation is not None and all(kind == "logits" for kind in source.kinds):  # batch-1 If graph
                from hisd_edge.convert import export, ingraph

                names = [export.exit_name(k) for k in range(source.num_exits)]
                record = ingraph.write_ingraph(
                    paths, names, model.confidence, len(source.class_names), data.validation.inputs, tmp
                )
                manifest.update({"ingraph": record} if record else {})
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


def _write_fp32(model: _SplitModel, tmp: Path) -> List[Path]:
    """The monolithic model and the fp32 stage graphs, as verification reads them."""
    import onnx

    from hisd_edge.convert import writer

    onnx.save(model.proto, str(tmp / writer.FULL_MODEL_FILE))
    paths = []
    for stage in model.stages:
        path = tmp / writer.stage_file(stage.index, "fp32")
        onnx.save(stage.model, str(path))
        paths.append(path)
    return paths


def _write_fp16(model: _SplitModel, tmp: Path) -> List[Path]:
    import onnx

    from hisd_edge.convert import quantize, split, writer

    paths = []
    for stage in model.stages:
        half = quantize.convert_fp16(stage.model, quantize.confidence_nodes(stage.model))
        split.check_model(half, f"stage {stage.index} (fp16)")
        path = tmp / writer.stage_file(stage.index, "fp16")
        onnx.save(half, str(path))
        paths.append(path)
    return paths


def _write_int8(
    model: _SplitModel,
    fp32_paths: List[Path],
    statistics: List[Any],
    recipe: Any,
    tmp: Path,
    scratch: Path,
    opts: ConvertOptions,
    kept_float: Dict[int, List[str]],
) -> Tuple[List[Path], List[Dict[str, Any]]]:
    """INT8 Q/DQ stage graphs and their TensorRT calibration caches (records for the manifest).

    ``kept_float`` names, per stage, the layers ``--keep-fp16`` keeps out of INT8.
    """
    import onnx

    from hisd_edge.convert import calib_cache, quantize, split, writer

    paths: List[Path] = []
    caches: List[Dict[str, Any]] = []
    for stage, stage_calibration in zip(model.stages, statistics):
        path = tmp / writer.stage_file(stage.index, "int8")
        quantize.quantize_int8(
            fp32_paths[stage.index],
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
        paths.append(path)
    return paths, caches


def _trim_to_batch(batch: int, data: _Data) -> _Data:
    """A model with a fixed batch dim takes exactly that many samples per run: keep whole batches."""

    def whole(n: int, what: str) -> int:
        if n < batch:
            raise InputError(
                f"the model's input has a fixed batch of {batch} but only {n} {what} sample(s) are available"
            )
        if n % batch:
            LOG.warning("the model's batch is fixed at %d: using %d of %d %s samples", batch, n - n % batch, n, what)
        return n - n % batch

    calibration, held_out = data.calibration, data.validation
    verify_inputs = data.verify_inputs[: whole(len(data.verify_inputs), "verification")]
    if calibration is not None:
        calibration = dataclasses.replace(
            calibration, inputs=calibration.inputs[: whole(len(calibration.inputs), "calibration")]
        )
    if held_out is not None:
        keep = whole(len(held_out.inputs), "validation")
        held_out = dataclasses.replace(
            held_out,
            inputs=held_out.inputs[:keep],
            labels=None if held_out.labels is None else held_out.labels[:keep],
        )
    return dataclasses.replace(data, calibration=calibration, verify_inputs=verify_inputs, validation=held_out)
