"""Calibration statistics accumulated batch by batch, so memory does not grow with the image count.

TensorRT's own calibrators keep histograms, not activations; so does this module. For every
tensor of every stage it keeps a running absolute maximum and a 2048-bin histogram of ``|x|``
(symmetric INT8 needs only magnitudes), a running per-channel mean (for bias correction,
:func:`~hisd_edge.convert.qdq.apply_qdq`) and, per Conv/Gemm, the second moment of its input
patches (for GPTQ weight rounding, :mod:`~hisd_edge.convert.rounding`). When a batch exceeds the histogram's range the range
doubles and neighbouring bins merge, so one pass suffices and no batch is ever kept. The chain
runs once per batch: the images go through stage 0, its ``feat0`` through stage 1, and so on,
each stage's session returning the tensors to calibrate as extra outputs. The batch size is set
from the bytes those outputs take per sample, so a 224x224 network and a 28x28 one both stay
within :data:`BATCH_BUDGET_BYTES`.

From a histogram, the range (``amax``) is:

* ``minmax``: the largest magnitude seen;
* ``percentile``: the magnitude below which ``percentile`` % of the values lie;
* ``entropy``: TensorRT's entropy calibration (the threshold whose 128-level quantization of the
  clipped distribution has the least KL divergence from it), searched over the histogram's bins
  from 128 up; with 2048 bins there are hundreds of candidates, not one.

ONNX Runtime's calibrators do the same arithmetic but keep every batch's outputs until the end
(about 60 MB per 224x224 image on EfficientNet-Lite0), and their entropy default (128 bins for
128 levels) leaves a single candidate threshold; hence this module.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

BINS = 2048
QUANT_LEVELS = 128  # |x| maps to 0..127 in symmetric INT8
ENTROPY_CANDIDATES = 256  # thresholds tried between 128 bins and all bins
BATCH_BUDGET_BYTES = 256 * 2**20  # outputs of one calibration batch, all stages together at most
MAX_BATCH = 64
SAMPLE_ROWS = 128  # per stage, inputs kept for the sensitivity analysis and --keep-fp16 auto
SAMPLE_BYTES = 128 * 2**20  # and at most this many bytes of them per stage (but 16 rows at least)


class AbsHistogram:
    """Running max and histogram of ``|x|`` over [0, edge), with a range that doubles as needed."""

    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.float64)
        self.edge = 0.0
        self.amax = 0.0
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        magnitudes = np.abs(np.asarray(values, dtype=np.float32)).ravel()
        if magnitudes.size == 0:
            return
        finite = np.isfinite(magnitudes)
        if not finite.all():
            magnitudes = magnitudes[finite]
        top = float(magnitudes.max()) if magnitudes.size else 0.0
        self.amax = max(self.amax, top)
        self.count += magnitudes.size
        if top <= 0.0:
            self.counts[0] += magnitudes.size
            return
        if self.edge == 0.0:
            self.edge = top
        elif top > self.edge:
            factor = 2 ** math.ceil(math.log2(top / self.edge))
            if factor >= self.bins:
                self.counts = np.concatenate([[self.counts.sum()], np.zeros(self.bins - 1)])
            else:
                merged = self.counts.reshape(-1, factor).sum(axis=1)
                self.counts = np.concatenate([merged, np.zeros(self.bins - merged.size)])
            self.edge *= factor
        index = np.minimum((magnitudes * (self.bins / self.edge)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    @property
    def width(self) -> float:
        return self.edge / self.bins if self.edge else 0.0

    def percentile_amax(self, percentile: float) -> float:
        total = self.counts.sum()
        if total == 0 or self.edge == 0:
            return self.amax
        cdf = np.cumsum(self.counts) / total
        index = int(np.searchsorted(cdf, percentile / 100.0))
        return min(self.amax, (min(index, self.bins - 1) + 1) * self.width)

    def entropy_amax(self, levels: int = QUANT_LEVELS, candidates: int = ENTROPY_CANDIDATES) -> float:
        """TensorRT's KL-divergence threshold search over this histogram."""
        counts = self.counts.copy()
        # The spike of exact zeros (everything a ReLU cut off) would dominate the divergence and
        # drag the threshold down; like TensorRT's tooling, give bin 0 its neighbour's count.
        counts[0] = counts[1]
        used = int(np.max(np.nonzero(counts)[0])) + 1 if counts.any() else 0
        if used <= levels or self.edge == 0:
            return self.amax  # fewer occupied bins than levels: nothing to clip
        step = max(1, (used - levels) // candidates)
        best_i, best_kl = used, math.inf
        for i in range(levels, used + 1, step):
            reference = counts[:i].copy()
            reference[i - 1] += counts[i:].sum()
            kl = _kl_after_quantization(reference, counts[:i], levels)
            if kl < best_kl:
                best_kl, best_i = kl, i
        return min(self.amax, best_i * self.width)

    def mse_amax(self, levels: int = QUANT_LEVELS, candidates: int = ENTROPY_CANDIDATES) -> float:
        """The range whose symmetric INT8 quantization of this histogram has the least mean squared
        error, rounding inside the range plus clipping beyond it (the ``mse`` calibrators of
        TensorRT's pytorch-quantization and Model Optimizer). Values are taken as uniform within
        each bin and both errors integrated exactly, so a bin narrower or wider than a
        quantization step is counted right; candidates are bin edges."""
        used = int(np.max(np.nonzero(self.counts)[0])) + 1 if self.counts.any() else 0
        if used == 0 or self.edge == 0:
            return self.amax
        width = self.width
        lower = np.arange(used) * width
        upper = lower + width
        counts = self.counts[:used]
        step = max(1, used // candidates)
        best_amax, best_error = self.amax, math.inf
        for i in range(max(1, used // levels), used + 1, step):
            amax = i * width
            scale = amax / (levels - 1)
            inside = _rounding_error_integral(upper[:i], scale) - _rounding_error_integral(lower[:i], scale)
            outside = ((upper[i:] - amax) ** 3 - (lower[i:] - amax) ** 3) / 3.0
            error = float(np.dot(counts[:i], inside) + np.dot(counts[i:], outside)) / width
            if error < best_error:
                best_error, best_amax = error, amax
        return min(self.amax, best_amax)

    def amax_for(self, method: str, percentile: float = 99.999) -> float:
        if method == "minmax":
            return self.amax
        if method == "percentile":
            return self.percentile_amax(percentile)
        if method == "entropy":
            return self.entropy_amax()
        if method == "mse":
            return self.mse_amax()
        raise ValueError(f"unknown calibration method {method!r}")


def _rounding_error_integral(x: np.ndarray, scale: float) -> np.ndarray:
    """The integral from 0 to ``x`` of the squared error of rounding to multiples of ``scale``.

    The error t - scale * round(t / scale) is periodic; each whole period contributes scale^3 / 12.
    """
    shifted = x + scale / 2
    periods = np.floor(shifted / scale)
    phase = shifted - periods * scale - scale / 2  # the error at x, in [-scale/2, scale/2)
    return periods * scale**3 / 12 + (phase**3 + (scale / 2) ** 3) / 3 - scale**3 / 24


def _kl_after_quantization(reference: np.ndarray, clipped: np.ndarray, levels: int) -> float:
    """KL(P || Q): P the clipped reference distribution, Q the same bins merged into ``levels``
    groups and spread back evenly over each group's non-empty bins."""
    i = clipped.size
    groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
    nonzero = clipped != 0
    group_sums = np.bincount(groups, weights=clipped, minlength=levels)
    group_nonzero = np.bincount(groups, weights=nonzero.astype(np.float64), minlength=levels)
    expanded = np.where(nonzero, group_sums[groups] / np.maximum(group_nonzero[groups], 1), 0.0)
    p_total, q_total = reference.sum(), expanded.sum()
    if p_total == 0 or q_total == 0:
        return math.inf
    p = reference / p_total
    q = expanded / q_total
    mask = p > 0
    if np.any(q[mask] == 0):
        return math.inf  # the clipped-in tail mass sits in an empty quantized bin
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


class ChannelMean:
    """Running mean of a tensor per channel (axis 1, for tensors of rank 2 and more): what bias
    correction needs to know of a quantized layer's input (:func:`~hisd_edge.convert.qdq.apply_qdq`)."""

    def __init__(self) -> None:
        self.total: Optional[np.ndarray] = None
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.ndim < 2 or values.size == 0:
            return
        if self.count < 0 or (self.total is not None and self.total.shape != (values.shape[1],)):
            self.count = -1  # a tensor whose channel count varies has no per-channel mean
            return
        others = tuple(d for d in range(values.ndim) if d != 1)
        total = values.sum(axis=others, dtype=np.float64)  # buffered cast: no float64 copy of the tensor
        self.total = total if self.total is None else self.total + total
        self.count += values.size // values.shape[1]

    @property
    def mean(self) -> Optional[np.ndarray]:
        return None if self.total is None or self.count <= 0 else self.total / self.count


@dataclasses.dataclass
class StageStatistics:
    """One stage's histograms, the ranges derived from them, its tensors' per-channel means and a
    few of its real inputs."""

    histograms: Dict[str, AbsHistogram]
    sample_inputs: np.ndarray  # the first SAMPLE_ROWS inputs this stage saw (for sensitivity)
    batch_size: int
    channel_means: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    input_moments: Dict[str, Any] = dataclasses.field(default_factory=dict)  # layer -> rounding.InputMoments

    def amax(self, method: str, percentile: float = 99.999) -> Dict[str, float]:
        return {name: float(h.amax_for(method, percentile)) for name, h in self.histograms.items()}


class LazyInputs:
    """Preprocessed calibration inputs made on demand, a slice at a time (never all at once)."""

    def __init__(self, count: int, make: Callable[[int, int], np.ndarray]):
        self.count = count
        self.make = make

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item: slice) -> np.ndarray:
        if not isinstance(item, slice):
            raise TypeError("LazyInputs supports slices only")
        start, stop, step = item.indices(self.count)
        if step != 1:
            raise TypeError("LazyInputs supports contiguous slices only")
        return self.make(start, stop)

    @property
    def shape(self) -> tuple:
        first = self.make(0, 1) if self.count else np.zeros((0,), dtype=np.float32)
        return (self.count, *first.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All of it at once (for small sets and tests; the converter slices instead)."""
        whole = self.make(0, self.count)
        return whole.astype(dtype) if dtype is not None else whole

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.count, size):
            yield self.make(start, min(start + size, self.count))


def batches_of(inputs: Any, size: int) -> Iterator[np.ndarray]:
    if isinstance(inputs, LazyInputs):
        yield from inputs.batches(size)
        return
    for start in range(0, len(inputs), size):
        yield np.asarray(inputs[start : start + size])


def calibration_tensors(model: Any) -> List[str]:
    """The float tensors of a stage worth a range: its input and every float node output."""
    from onnx import TensorProto

    graph = model.graph
    types = {
        v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output) + list(graph.input)
    }
    inits = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    for node in graph.node:
        if node.op_type in ("Constant", "Shape", "QuantizeLinear", "DequantizeLinear"):
            continue
        for out in node.output:
            if out and types.get(out) == TensorProto.FLOAT and out not in names:
                names.append(out)
    return names


def _bytes_per_sample(model: Any, names: Sequence[str]) -> int:
    graph = model.graph
    shapes = {}
    for info in list(graph.value_info) + list(graph.output) + list(graph.input):
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]
    total = 0
    for name in names:
        dims = shapes.get(name, [1])
        total += 4 * int(np.prod(dims[1:])) if len(dims) > 1 else 4
    return max(total, 4)


def _augmented(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` whose outputs also include ``names``."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    infos = {v.name: v for v in copy.graph.value_info}
    for name in names:
        if name in present or name not in infos:
            continue
        out = copy.graph.output.add()
        out.CopyFrom(infos[name])
    return copy


def batch_size_for(
    models: Sequence[Any], fixed: Optional[int] = None, budget: int = BATCH_BUDGET_BYTES, limit: int = MAX_BATCH
) -> int:
    """Samples per batch so that every tensor of every stage fits ``budget`` together (at most ``limit``)."""
    if fixed:
        return fixed
    per_sample = sum(_bytes_per_sample(m, calibration_tensors(m)) for m in models)
    return int(max(1, min(limit, budget // per_sample)))


def collect_chain(
    stage_models: Sequence[Any],
    stage_outputs: Sequence[Sequence[str]],
    inputs: Any,
    make_session: Callable[[bytes], Any],
    batch_size: int,
    progress: Optional[Callable[[int], None]] = None,
) -> List[StageStatistics]:
    """Run the fp32 chain over ``inputs`` once, batch by batch, and keep histograms per stage.

    Stage k+1 is fed the ``feat{k}`` that stage k just produced for the same batch, so every
    stage is calibrated on what it meets at inference time; nothing but the histograms, the
    per-channel means, each Conv/Gemm's input moments for GPTQ weight rounding
    (:mod:`~hisd_edge.convert.rounding`; sized by the layer, not the image count) and
    :data:`SAMPLE_ROWS` inputs per stage outlives a batch.
    """
    from hisd_edge.convert.rounding import layer_moments

    names = [calibration_tensors(m) for m in stage_models]
    moments = [layer_moments(m) for m in stage_models]
    sessions = []
    for model, stage_names in zip(stage_models, names):
        sessions.append(make_session(_augmented(model, stage_names[1:]).SerializeToString()))
    histograms: List[Dict[str, AbsHistogram]] = [{n: AbsHistogram() for n in stage_names} for stage_names in names]
    means: List[Dict[str, ChannelMean]] = [{n: ChannelMean() for n in stage_names} for stage_names in names]
    samples: List[List[np.ndarray]] = [[] for _ in stage_models]
    kept = [0] * len(stage_models)
    for batch in batches_of(inputs, batch_size):
        x = np.ascontiguousarray(batch, dtype=np.float32)
        for k, session in enumerate(sessions):
            wanted_rows = max(16, min(SAMPLE_ROWS, SAMPLE_BYTES // max(1, x[:1].nbytes)))
            if kept[k] < wanted_rows:
                samples[k].append(x[: wanted_rows - kept[k]].copy())
                kept[k] += len(samples[k][-1])
            fetch = names[k][1:]
            wanted = list(dict.fromkeys(list(stage_outputs[k]) + fetch))
            values = dict(zip(wanted, session.run(wanted, {names[k][0]: x})))
            histograms[k][names[k][0]].update(x)
            means[k][names[k][0]].update(x)
            for name in fetch:
                histograms[k][name].update(values[name])
                means[k][name].update(values[name])
            for tensor, accumulator in moments[k].values():
                value = x if tensor == names[k][0] else values.get(tensor)
                if value is not None:
                    accumulator.update(value)
            if k < len(sessions) - 1:
                x = values[f"feat{k}"]
            del values
        if progress is not None:
            progress(len(batch))
    return [
        StageStatistics(
            histograms=h,
            sample_inputs=np.concatenate(s) if s else np.zeros((0,)),
            batch_size=batch_size,
            channel_means={name: mean.mean for name, mean in m.items() if mean.mean is not None},
            input_moments={label: accumulator for label, (_, accumulator) in layer.items()},
        )
        for h, s, m, layer in zip(histograms, samples, means, moments)
    ]
