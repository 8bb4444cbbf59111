"""The one small interface every runtime backend implements (ONNX Runtime, TensorRT, ...).

In the spirit of Polygraphy's runners: the constructor only stores configuration; ``activate()``
allocates (sessions, engines, device buffers) and ``deactivate()`` frees them; a backend is also a
context manager. The public methods validate their arguments, keep the call order honest and
record timing, then delegate to ``*_impl`` methods that a backend overrides.

A backend runs a bundle *stage by stage* and holds the features between stages itself, so a GPU
backend can keep them in device memory: stage k's output buffer is stage k+1's input buffer, only
the per-sample confidence comes back to the host after each stage, the exit outputs (logits or
embeddings) of the samples that leave are fetched on demand, and batch compaction (dropping the
rows that exited) happens where the features live. The early-exit loop itself (policies, which
rows continue, putting results back in input order) is backend-agnostic and lives in
:mod:`hisd_edge.runtime.engine`, so every backend makes identical exit decisions.

One batch through a backend::

    with create_backend("onnxruntime", bundle) as backend:
        backend.start(batch)                     # (N, C, H, W) float32, preprocessed
        r0 = backend.run_stage(0)                # all N rows through stage 0
        keep = np.flatnonzero(r0.confidence < 0.9)
        exiting = np.flatnonzero(r0.confidence >= 0.9)
        logits0 = r0.exit_output(exiting)        # host copy of exit 0's logits for those rows only
        r1 = backend.run_stage(1, keep_rows=keep)  # the held feat0 is compacted to ``keep``, then stage 1
        ...

Row indices are always *relative to the rows the previous call worked on*: ``r0`` has N rows,
``r1`` has ``len(keep)`` rows in the order given by ``keep``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from hisd_edge.bundle import Bundle
from hisd_edge.errors import BundleError, InputError

# Names accepted by create_backend -> "module:Class" (imported lazily: a backend's module may
# import TensorRT or CUDA at use time, never when the runtime package is imported).
BACKENDS: Dict[str, str] = {
    "onnxruntime": "hisd_edge.runtime.ort_backend:OnnxRuntimeBackend",
    "tensorrt": "hisd_edge.runtime.tensorrt_backend:TensorRTBackend",
}

LOG = logging.getLogger("hisd_edge.runtime.backend")


def softmax_max(logits: np.ndarray) -> np.ndarray:
    """Per-row maximum softmax probability, computed stably on the host (float32).

    Used when an exit has no fused ``conf{k}`` output; equals what the fused graph computes.
    """
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (1.0 / e.sum(axis=1)).astype(np.float32)  # max prob = exp(0) / sum(exp)


def pool_features(feat: np.ndarray) -> np.ndarray:
    """One vector per sample from a feature map: the mean over the spatial axes of (N, C, H, W),
    over the tokens of (N, T, D); (N, D) as it is. float32. (``sum`` and a scale: ``mean`` costs
    several microseconds more per call, and this runs once per batch in the early-exit loop.)"""
    if feat.ndim == 4:
        spatial = feat.shape[2] * feat.shape[3]
        return feat.reshape(feat.shape[0], feat.shape[1], spatial).sum(axis=2, dtype=np.float32) * (1.0 / spatial)
    if feat.ndim == 3:
        return feat.sum(axis=1, dtype=np.float32) * (1.0 / feat.shape[1])
    return np.asarray(feat.reshape(feat.shape[0], -1), dtype=np.float32)


@dataclasses.dataclass
class StageResult:
    """What one stage produced for the rows it ran on.

    ``confidence`` is the max softmax probability per row (the fused ``conf{k}`` output when the
    bundle has one, otherwise computed on the host from the logits); ``None`` for embedding exits.
    ``exit_output(rows)`` returns a host copy of the exit's logits (or embeddings) for those rows
    (all rows when ``rows`` is None); on a GPU backend this is the only time logits cross to the
    host. ``latency_ms`` is the stage's latency: device time where the backend can measure it
    (CUDA events), otherwise host wall time around the stage including the confidence read-back.
    ``pooled_features()`` returns the feature map the stage passes on (``feat{k}``) averaged over
    its spatial (or token) axes, one row per sample, on the host: what the input guard scores.
    """

    stage: int
    rows: int
    confidence: Optional[np.ndarray]
    latency_ms: float
    fetch_exit_output: Callable[[Optional[np.ndarray]], np.ndarray] = dataclasses.field(repr=False)
    _cache: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
    _backend: Any = dataclasses.field(default=None, repr=False)
    _batch_id: int = dataclasses.field(default=0, repr=False)
    fetch_pooled_features: Optional[Callable[[], np.ndarray]] = dataclasses.field(default=None, repr=False)

    def pooled_features(self) -> np.ndarray:
        """(rows, channels) float32 host copy of ``feat{k}`` pooled by :func:`pool_features`."""
        if self.fetch_pooled_features is None:
            raise RuntimeError(
                f"stage {self.stage} passes no features on (the last stage), or the backend cannot read them"
            )
        if self._backend is not None and self._backend._batch_id != self._batch_id:
            raise RuntimeError(
                "this stage result belongs to an earlier batch; read its features before the next start()"
            )
        return self.fetch_pooled_features()

    def exit_output(self, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """Host copy of this exit's output (logits or embeddings) for ``rows`` (indices into this result)."""
        if self._cache is not None:
            return self._cache if rows is None else self._cache[np.asarray(rows, dtype=np.int64)]
        if self._backend is not None and self._backend._batch_id != self._batch_id:
            raise RuntimeError(
                "this stage result belongs to an earlier batch; fetch exit outputs before the next start()"
            )
        if rows is None:
            self._cache = np.asarray(self.fetch_exit_output(None))
            return self._cache
        return np.asarray(self.fetch_exit_output(np.asarray(rows, dtype=np.int64)))


@dataclasses.dataclass
class FullResult:
    """The monolithic full model's outputs (one array per exit, shallowest first) and its latency."""

    outputs: List[np.ndarray]
    latency_ms: float


class Backend(abc.ABC):
    """Runs one bundle stage by stage. Subclasses implement the ``*_impl`` methods.

    Constructor arguments (stored, nothing allocated): the opened :class:`Bundle`, the
    ``precision`` of the stage files to run (``fp32``/``fp16``/``int8``) and backend options.

    Contract for implementers:

    * ``activate_impl()``: load every stage (and, if supported, the full model), allocate buffers.
    * ``deactivate_impl()``: free everything; must be safe after a failed ``activate_impl``.
    * ``start_impl(batch)``: take a new input batch (validated float32 NCHW, at least one row) and
      make it the held "features" that stage 0 will read.
    * ``run_stage_impl(k, keep_rows)``: if ``keep_rows`` is not None, compact the held features to
      those rows (in that order) first; run stage k; hold its ``feat{k}`` output for stage k+1;
      return a :class:`StageResult` whose ``confidence`` is on the host, and (for every stage but
      the last) whose ``fetch_pooled_features`` returns :func:`pool_features` of ``feat{k}`` for
      its rows, read when asked. Leave ``latency_ms`` as ``nan`` to let the base class fill in
      host wall time.
    * ``run_full_impl(batch)`` (optional): run the monolithic ``full_model`` for benchmarks.
    """

    name = "backend"
    # Most rows one start() takes (a TensorRT engine's profile maximum, a model exported with a
    # fixed batch of 1); 0 = any. Set at activation; callers that feed larger batches chunk by it.
    max_batch: int = 0

    def __init__(self, bundle: Bundle, precision: str = "fp32", **options: Any):
        self.bundle = bundle
        self.precision = precision
        self.options = dict(options)
        self._active = False
        self._next_stage: Optional[int] = None  # None: no batch started
        self._held_rows = 0
        self._batch_id = 0  # bumped by start(): stage results of older batches refuse lazy reads
        self._num_stages = bundle.num_stages
        self._input_shape = tuple(int(v) for v in bundle.stages[0]["inputs"][0]["shape"][1:])

    # -- lifetime ------------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> Backend:
        if self._active:
            return self
        self.check_precision()
        try:
            self.activate_impl()
        except BaseException:
            self.deactivate_impl()
            raise
        self._active = True
        return self

    def check_precision(self) -> None:
        """Refuse, before anything is allocated, a precision this backend has nothing to run for.

        The default needs a stage ONNX file of ``precision`` (what ONNX Runtime runs), or for
        "mixed" the per-stage plan and its files. A backend that runs something else overrides
        it: a weakly typed TensorRT "fp16" build is made from the fp32 ONNX, so the TensorRT
        backend checks its build records instead.
        """
        if self.precision == "mixed":
            stage_precisions(self.bundle, "mixed")
            return
        if self.precision not in self.bundle.precisions():
            raise BundleError(
                f"{self.bundle.root}: no {self.precision} stage files (has {', '.join(self.bundle.precisions()) or 'none'}); "
                f"pick one of those with --precision or convert with --precision {self.precision}"
            )

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._next_stage = None
            self.deactivate_impl()

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # -- description ---------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return self._num_stages

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one model input."""
        return self._input_shape

    @property
    def supports_full_model(self) -> bool:
        """True when :meth:`run_full` can run the bundle's monolithic model."""
        return False

    @property
    def full_model_label(self) -> str:
        """What :meth:`run_full` runs, as reports name it (a backend without a monolithic model says so)."""
        return "monolithic full model"

    def describe(self) -> Dict[str, Any]:
        """Backend name, precision and backend-specific details (providers, versions) for reports."""
        return {"backend": self.name, "precision": self.precision, **self.describe_impl()}

    # -- inference -----------------------------------------------------------------------------
    def _check_active(self) -> None:
        if not self._active:
            raise RuntimeError(f"{self.name} backend used before activate() (use it as a context manager)")

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != self._input_shape:
            raise InputError(
                f"input batch of shape {tuple(batch.shape)} does not fit the model (expects N x {' x '.join(map(str, self.input_shape))}); "
                "preprocess raw images with the bundle's preprocessing"
            )
        if batch.shape[0] == 0:
            raise InputError("input batch is empty")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def start(self, batch: np.ndarray) -> None:
        """Take a new preprocessed batch (N, C, H, W); stage 0 runs on it next."""
        if not self._active:
            self._check_active()
        batch = self._check_batch(batch)
        self._batch_id += 1
        self.start_impl(batch)
        self._next_stage = 0
        self._held_rows = int(batch.shape[0])

    def run_stage(self, k: int, keep_rows: Union[Sequence[int], np.ndarray, None] = None) -> StageResult:
        """Compact the held features to ``keep_rows`` (None: keep all), run stage ``k``, time it."""
        if k != self._next_stage or not self._active:
            self._check_active()
            if self._next_stage is None:
                raise RuntimeError("run_stage() before start(): give the backend a batch first")
            raise RuntimeError(f"stages run in order: expected stage {self._next_stage}, got {k}")
        if k >= self._num_stages:
            raise RuntimeError(f"the bundle has stages 0..{self._num_stages - 1}, not {k}")
        rows_idx: Optional[np.ndarray] = None
        if keep_rows is not None:
            rows_idx = np.asarray(keep_rows, dtype=np.int64).reshape(-1)
            if rows_idx.size == 0:
                raise ValueError("keep_rows is empty: stop the loop instead of running a stage on no rows")
            if rows_idx.min() < 0 or rows_idx.max() >= self._held_rows:
                raise IndexError(f"keep_rows out of range for the {self._held_rows} held rows")
            if rows_idx.size == self._held_rows and np.array_equal(rows_idx, np.arange(self._held_rows)):
                rows_idx = None  # nothing to compact
        begin = time.perf_counter()
        result = self.run_stage_impl(k, rows_idx)
        end = time.perf_counter()
        if result.latency_ms != result.latency_ms:  # NaN: the backend did not measure device time
            result.latency_ms = (end - begin) * 1e3
        result._backend = self
        result._batch_id = self._batch_id
        self._held_rows = result.rows
        self._next_stage = k + 1
        return result

    def run_stage_lean(self, k: int) -> Tuple[float, float, np.ndarray]:
        """Stage ``k`` on a started single-row batch, for the batch-1 loop: (latency ms, max softmax
        probability as a float (NaN for embedding exits), the exit output (1, D) as a view that the
        next run overwrites). No per-stage object; stages must still come in order. This default
        goes through :meth:`run_stage`; a backend may override it with a direct path."""
        result = self.run_stage(k)
        conf = result.confidence
        return result.latency_ms, float("nan") if conf is None else float(conf[0]), result.exit_output()

    def run_full(self, batch: np.ndarray) -> FullResult:
        """Run the monolithic full model (all exits as outputs) on a batch, for benchmarks."""
        self._check_active()
        if not self.supports_full_model:
            raise BundleError(f"the {self.name} backend cannot run the full model of {self.bundle.root}")
        batch = self._check_batch(batch)
        begin = time.perf_counter()
        result = self.run_full_impl(batch)
        if result.latency_ms != result.latency_ms:
            result.latency_ms = (time.perf_counter() - begin) * 1e3
        return result

    # -- the in-graph early exit (batch 1, one call; see hisd_edge.runtime.ingraph) -----------------
    def ingraph_unavailable(self, policy: Any) -> Optional[str]:
        """None when :meth:`run_ingraph` can run ``policy`` on this backend, else why not (one line)."""
        return f"the {self.name} backend has no in-graph early-exit path"

    def run_ingraph(self, policy: Any) -> Tuple[np.ndarray, int, float, float]:
        """Run the started single-row batch through the in-graph artifact with ``policy``'s thresholds:
        (logits (1, classes) float32 on the host, valid until the next frame: copy to keep them; exit
        index, score, latency ms). Exit decisions equal the chain's (verified at convert, per policy);
        check :meth:`ingraph_unavailable` first."""
        if self._next_stage != 0 or self._held_rows != 1:
            raise RuntimeError("run_ingraph() needs a freshly started batch of one row")
        begin = time.perf_counter()
        logits, exit_index, score = self.run_ingraph_impl(policy)
        latency_ms = (time.perf_counter() - begin) * 1e3
        self._next_stage = None  # the stages' held features are not produced on this path
        return logits, exit_index, score, latency_ms

    def run_ingraph_impl(self, policy: Any) -> Tuple[np.ndarray, int, float]:  # pragma: no cover - optional
        raise NotImplementedError

    # -- to implement ----------------------------------------------------------------------------
    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def start_impl(self, batch: np.ndarray) -> None: ...

    @abc.abstractmethod
    def run_stage_impl(self, k: int, keep_rows: Optional[np.ndarray]) -> StageResult: ...

    def run_full_impl(self, batch: np.ndarray) -> FullResult:  # pragma: no cover - optional
        raise NotImplementedError

    def describe_impl(self) -> Dict[str, Any]:
        return {}


def stage_precisions(bundle: Bundle, precision: str) -> List[str]:
    """The precision each stage runs at: ``precision`` everywhere, or for "mixed" the per-stage plan
    ``convert --precision mixed`` recorded (manifest ``mixed_precision``), checked against the files."""
    if precision != "mixed":
        return [precision] * bundle.num_stages
    plan = (bundle.manifest.get("mixed_precision") or {}).get("stages")
    if not plan or len(plan) != bundle.num_stages:
        raise BundleError(
            f"{bundle.root}: --precision mixed needs the per-stage plan of convert --precision mixed, and this bundle "
            f"has none; convert with --precision mixed, or pick one of {', '.join(bundle.precisions()) or 'none'}"
        )
    for k, p in enumerate(plan):
        if p not in bundle.stages[k]["files"]:
            raise BundleError(
                f"{bundle.root}: the mixed plan runs stage {k} at {p}, and the bundle has no {p} file for it; "
                "convert again with --precision mixed"
            )
    return [str(p) for p in plan]


def run_chain(backend: Backend, batch: np.ndarray, stop: Optional[int] = None) -> List[StageResult]:
    """Stages ``0..stop-1`` (default: all) on every row of ``batch``, with no exit decisions.

    The chain as a whole, on any backend: what the benchmark compares with the monolithic model
    and what an all-exit pass reads every exit from. The results' exit outputs stay readable
    until the backend's next ``start()``.
    """
    backend.start(batch)
    return [backend.run_stage(k) for k in range(backend.num_stages if stop is None else stop)]


def create_backend(name: str, bundle: Bundle, precision: str = "fp32", **options: Any) -> Backend:
    """A backend by name (see :data:`BACKENDS`), configured but not yet activated."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise InputError(
                f"the {name} backend is not part of this hisd-edge version; use --backend onnxruntime"
            ) from None
        raise
    LOG.debug("%s backend, %s, options %s", name, precision, options)
    return getattr(module, cls_name)(bundle, precision=precision, **options)
