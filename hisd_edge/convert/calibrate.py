"""Step 4: calibration statistics for every stage, along the chain, from real images.

Stage 0 sees the preprocessed calibration images; stage k sees the ``feat{k-1}`` activations that
the fp32 stages before it produce from those same images, so each stage is calibrated on exactly
the distribution it meets at inference time (never on random data). The statistics are
histograms accumulated batch by batch (:mod:`hisd_edge.convert.calib_stats`: entropy, minmax,
percentile, memory independent of the image count); they feed both the Q/DQ quantization
(:mod:`hisd_edge.convert.quantize`) and the TensorRT calibration cache
(:mod:`hisd_edge.convert.calib_cache`), so the two INT8 paths agree.

A calibration set is a source string (see :mod:`hisd_edge.data`: ``default:train``, an image
folder, a video, a ``.npy``/``.npz``) or a JSON definition like those under ``calibration/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.data import is_named_dataset
from hisd_edge.errors import ConversionError, InputError, first_line
from hisd_edge.runtime.ort_session import StageChain

LOG = logging.getLogger("hisd_edge.convert")

# "mse" (the least-squared-error range) is reachable from calibration/*.json definitions.
METHODS = ("entropy", "minmax", "percentile", "mse")
DEFAULT_SOURCE = "default:train"
DEFAULT_COUNT = 256
DEFAULT_METHOD = "percentile"  # measured best on EfficientNet-Lite0 and the default model (results/real_models)
DEFAULT_PERCENTILE = 99.999
# How INT8 weights are rounded: "gptq" (error-compensating, from the calibration data's input
# statistics; see hisd_edge.convert.rounding) or "nearest" (plain round-to-nearest).
WEIGHT_ROUNDINGS = ("gptq", "nearest")
DEFAULT_WEIGHT_ROUNDING = "gptq"
_BATCH = 64


@dataclasses.dataclass(frozen=True)
class CalibrationRecipe:
    """What to calibrate on and how (the content of a ``calibration/*.json`` definition)."""

    source: str = DEFAULT_SOURCE
    count: int = DEFAULT_COUNT
    method: str = DEFAULT_METHOD
    seed: int = 0
    percentile: float = DEFAULT_PERCENTILE
    name: str = "default"
    weight_rounding: str = DEFAULT_WEIGHT_ROUNDING

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"calibration method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise InputError(f"weight rounding {self.weight_rounding!r} is not one of {', '.join(WEIGHT_ROUNDINGS)}")
        if int(self.count) <= 0:
            raise InputError(f"calibration count must be positive, got {self.count}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise InputError(f"calibration percentile must be in (50, 100], got {self.percentile}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: Path) -> CalibrationRecipe:
    """A calibration definition from JSON (keys of :class:`CalibrationRecipe`; ``source`` relative to the file)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path}: not a readable calibration definition ({exc.__class__.__name__}); see calibration/README.md"
        ) from None
    if not isinstance(data, dict) or "source" not in data:
        raise InputError(
            f"{path}: a calibration definition is a JSON object with at least a 'source'; see calibration/README.md"
        )
    known = {f.name for f in dataclasses.fields(CalibrationRecipe)}
    unknown = sorted(set(data) - known - {"description"})
    if unknown:
        raise InputError(
            f"{path}: unknown key(s) {', '.join(unknown)} in the calibration definition (known: {', '.join(sorted(known))})"
        )
    source = str(data["source"])
    if not is_named_dataset(source) and not Path(source).is_absolute():
        source = str((Path(path).parent / source).resolve())
    fields = {k: v for k, v in data.items() if k in known}
    fields["source"] = source
    fields.setdefault("name", Path(path).stem)
    try:
        return CalibrationRecipe(**fields)
    except TypeError as exc:
        raise InputError(f"{path}: malformed calibration definition ({exc})") from None


def resolve_recipe(
    calib: Optional[str],
    count: Optional[int] = None,
    method: Optional[str] = None,
    default_source: str = DEFAULT_SOURCE,
) -> CalibrationRecipe:
    """``--calib`` (a source string or a ``.json`` definition) plus overrides -> a recipe."""
    if calib and calib.endswith(".json"):
        recipe = load_recipe(Path(calib))
    else:
        recipe = CalibrationRecipe(source=calib or default_source, name="cli" if calib else "default")
    overrides: Dict[str, Any] = {}
    if count is not None:
        overrides["count"] = count
    if method is not None:
        overrides["method"] = method
    return dataclasses.replace(recipe, **overrides) if overrides else recipe


@dataclasses.dataclass
class CalibrationSet:
    """Preprocessed calibration inputs plus what was skipped on the way."""

    inputs: np.ndarray  # or a calib_stats.LazyInputs: sliceable, preprocessed on demand
    source: str
    skipped: List[Tuple[str, str]]


def load_calibration_set(recipe: CalibrationRecipe, spec: Any, strict: bool = False) -> CalibrationSet:
    """Read the recipe's images; they are preprocessed (with the model's own preprocessing) a
    batch at a time when used, so the float inputs of all images never sit in memory at once."""
    from hisd_edge.convert.calib_stats import LazyInputs
    from hisd_edge.data import load_samples

    samples = load_samples(recipe.source, count=recipe.count, strict=strict, seed=recipe.seed)
    if len(samples) == 0:
        raise InputError(f"{recipe.source}: the calibration source holds no usable images")

    def make(start: int, stop: int) -> np.ndarray:
        batch = samples.subset(range(start, stop)).tensors(spec)
        if not np.all(np.isfinite(batch)):
            raise InputError(f"{recipe.source}: calibration inputs contain NaN or infinity; check the source")
        return batch

    inputs = LazyInputs(len(samples), make)
    inputs[0 : min(len(samples), 64)]  # fail early on a bad source, before any heavy work
    return CalibrationSet(inputs=inputs, source=recipe.source, skipped=list(samples.skipped))  # type: ignore[arg-type]


def equal_batch_size(count: int, limit: int = _BATCH) -> int:
    """The largest batch size <= ``limit`` that divides ``count``: ONNX Runtime's histogram
    calibrators stack per-batch outputs and fail on a short last batch."""
    for size in range(min(limit, max(count, 1)), 0, -1):
        if count % size == 0:
            return size
    return 1


class ArrayReader:
    """An ONNX Runtime ``CalibrationDataReader`` over an in-memory array, in batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch_size: int = _BATCH):
        self.input_name = input_name
        self.data = data
        self.batch_size = equal_batch_size(len(data), batch_size)
        self.position = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.position >= len(self.data):
            return None
        batch = self.data[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        self.rewind()
        while True:
            item = self.get_next()
            if item is None:
                return
            yield item


def ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[method]


def _as_reader(reader: ArrayReader) -> Any:
    """Make ``reader`` an instance of ORT's CalibrationDataReader (its calibrators check the type)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

        def __len__(self) -> int:
            return len(reader)

        def set_range(self, start_index: int, end_index: int) -> None:  # CalibStridedMinMax support
            reader.position = start_index

    return Reader()


def compute_stage_statistics(
    stage_path: Path, stage_input: np.ndarray, recipe: CalibrationRecipe, scratch: Path, batch_size: int = _BATCH
) -> Any:
    """ONNX Runtime calibration statistics (``TensorsData``) of one fp32 stage on its real input."""
    from onnxruntime.quantization import create_calibrator

    session_inputs = input_name(stage_path)
    extra: Dict[str, Any] = {"symmetric": True}
    if recipe.method == "percentile":
        extra["percentile"] = float(recipe.percentile)
    if recipe.method == "minmax":
        extra = {"symmetric": True}
    sink = io.StringIO()
    try:
        # ORT's calibrators print progress to stdout; keep --json output clean.
        with contextlib.redirect_stdout(sink):
            calibrator = create_calibrator(
                Path(stage_path),
                [],
                augmented_model_path=str(scratch / f"{Path(stage_path).stem}.augmented.onnx"),
                calibrate_method=ort_method(recipe.method),
                extra_options=extra,
            )
            calibrator.collect_data(_as_reader(ArrayReader(session_inputs, stage_input, batch_size)))
            data = calibrator.compute_data()
    except Exception as exc:
        raise ConversionError(f"{Path(stage_path).name}: calibration failed ({first_line(exc)})") from None
    return data


def input_name(stage_path: Path) -> str:
    import onnx

    model = onnx.load(str(stage_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def amax_table(tensors_data: Any) -> Dict[str, float]:
    """Per-tensor absolute maximum (symmetric range) from ONNX Runtime statistics."""
    table: Dict[str, float] = {}
    for name, data in tensors_data.data.items():
        low, high = data.range_value
        table[name] = float(max(abs(float(np.max(low))), abs(float(np.max(high)))))
    return table


@dataclasses.dataclass
class StageCalibration:
    """One stage's calibration: its histograms (:mod:`~hisd_edge.convert.calib_stats`), the
    method that turns them into ranges, and the first few real inputs the stage saw."""

    statistics: Any  # calib_stats.StageStatistics
    inputs: np.ndarray  # up to calib_stats.SAMPLE_ROWS real inputs of this stage
    batch_size: int = _BATCH
    method: str = DEFAULT_METHOD
    percentile: float = DEFAULT_PERCENTILE
    weight_rounding: str = DEFAULT_WEIGHT_ROUNDING

    def amax(self) -> Dict[str, float]:
        """Per tensor, the symmetric range (computed once: entropy searches hundreds of thresholds)."""
        cached = self.__dict__.get("_amax")
        if cached is None:
            cached = self.__dict__["_amax"] = self.statistics.amax(self.method, self.percentile)
        return dict(cached)

    def input_means(self) -> Dict[str, np.ndarray]:
        """Per tensor, its per-channel mean on the calibration data (for INT8 bias correction)."""
        return dict(getattr(self.statistics, "channel_means", {}) or {})

    def rounded_weights(self, model: Any) -> Dict[str, np.ndarray]:
        """Per layer label of ``model`` (this stage's fp32 graph), its INT8 weight as GPTQ rounds it
        (:func:`~hisd_edge.convert.rounding.round_layer`); empty with ``weight_rounding`` "nearest".
        Computed once per stage: the sensitivity analysis and the INT8 file share it."""
        if self.weight_rounding != "gptq":
            return {}
        cached = self.__dict__.get("_rounded")
        if cached is None:
            cached = self.__dict__["_rounded"] = _round_stage(model, getattr(self.statistics, "input_moments", {}))
        return dict(cached)


def _round_stage(model: Any, moments: Dict[str, Any]) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    from hisd_edge.convert.qdq import node_label, weight_axis
    from hisd_edge.convert.rounding import round_layer

    inits = {i.name: i for i in model.graph.initializer}
    rounded: Dict[str, np.ndarray] = {}
    for index, node in enumerate(model.graph.node):
        label = node_label(node, index)
        if label not in moments or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        result = round_layer(node, weight, weight_axis(node, inits[node.input[1]]), moments[label])
        if result is not None:
            rounded[label] = result
    return rounded


def calibrate_chain(
    stage_paths: Sequence[Path],
    chain: StageChain,
    calibration: CalibrationSet,
    recipe: CalibrationRecipe,
    scratch: Path,
    batch_size: Optional[int] = None,
) -> List[StageCalibration]:
    """Statistics for every stage, each on the activations the fp32 stages before it produce.

    One pass over the images, batch by batch (:func:`~hisd_edge.convert.calib_stats.collect_chain`):
    memory holds histograms, not activations, whatever ``--calib-count``. ``batch_size`` fixes
    the batch (models with a fixed batch dim); by default it follows the activations' size.
    """
    import onnx

    from hisd_edge.convert import calib_stats
    from hisd_edge.runtime.ort_session import open_session

    models = [onnx.load(str(p)) for p in stage_paths]
    outputs = [list(o) for o in chain.stage_outputs]
    size = calib_stats.batch_size_for(models, fixed=batch_size)
    threads = chain.threads
    try:
        stats = calib_stats.collect_chain(models, outputs, calibration.inputs, lambda m: open_session(m, threads), size)
    except (InputError, ConversionError):
        raise
    except Exception as exc:
        raise ConversionError(f"calibration failed ({first_line(exc)})") from None
    return [
        StageCalibration(s, s.sample_inputs, size, recipe.method, float(recipe.percentile), recipe.weight_rounding)
        for s in stats
    ]
