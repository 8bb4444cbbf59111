"""ONNX Runtime backend: CPU by default, CUDA / TensorRT execution providers when available.

Sessions come from the one factory both sides share (:mod:`hisd_edge.runtime.ort_session`: no
spinning, INT8 at the "basic" optimisation level, and why). How they are run here (measured on a
shared 2-core CPU, see the bench verb):

* IOBinding with preallocated output buffers: ``session.run()`` allocates every output and copies
  it into a fresh numpy array on each call and costs ~12 us per run; a cached binding whose
  outputs are our own numpy buffers costs ~5 us and copies nothing. Stage k's ``feat{k}`` buffer is
  bound directly as stage k+1's input (zero copy); compaction gathers the surviving rows into a
  per-stage buffer.
* No ``RunOptions`` object is passed per run: doing so cost ~40 us per call in ORT 1.31 here.

With a non-CPU provider the same host buffers are bound and ONNX Runtime copies them to and from
the device around each stage; keeping features on the GPU between stages is what the TensorRT
backend does.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.errors import BundleError, DependencyError, HisdError, InputError, first_line
from hisd_edge.runtime import ingraph
from hisd_edge.runtime.backend import Backend, FullResult, StageResult, pool_features, softmax_max, stage_precisions
from hisd_edge.runtime.ort_session import graph_optimization_for, import_onnxruntime, open_session

LOG = logging.getLogger("hisd_edge.runtime")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_GPU_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def resolve_providers(requested: Optional[Sequence[str]]) -> List[str]:
    """Execution provider names for ``requested`` ("cpu", "cuda", "tensorrt", full names, or "auto").

    "auto" picks TensorRT, CUDA, CPU in that order among the installed ones. CPU is always
    appended as the fallback for nodes a GPU provider does not take.
    """
    ort = import_onnxruntime()
    available = list(ort.get_available_providers())
    if not requested:
        return ["CPUExecutionProvider"]
    if list(requested) == ["auto"]:
        return [p for p in _GPU_ORDER if p in available]
    out = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            hint = (
                "pip install onnxruntime-gpu (and uninstall the CPU-only onnxruntime)"
                if full != "CPUExecutionProvider"
                else ""
            )
            raise DependencyError(
                f"ONNX Runtime provider {name!r} is not available here (available: {', '.join(available)}); {hint}".rstrip(
                    "; "
                )
            )
        if full not in out:
            out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


class _Session:
    """One ONNX Runtime session with output buffers and IOBindings cached per batch size."""

    def __init__(self, session: Any, label: str):
        self.session = session
        self.label = label
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"{label}: expected one input, the ONNX file has {len(inputs)}; convert the model again")
        self.input_name = inputs[0].name
        self.input_dtype = _NP_TYPES.get(inputs[0].type, np.float32)
        self.output_names = [o.name for o in session.get_outputs()]
        self.output_dtypes = [_NP_TYPES.get(o.type, np.float32) for o in session.get_outputs()]
        self.sample_shapes: Optional[List[Tuple[int, ...]]] = None  # per output, without the batch axis
        self.capacity = 0
        self.buffers: List[np.ndarray] = []
        self.bindings: Dict[int, List[Any]] = {}  # rows -> [IOBinding, bound input array, output views]
        self.compact: Optional[np.ndarray] = None  # gather target for compacted inputs
        raw = getattr(session, "_sess", None)
        self._raw_run = raw.run_with_iobinding if raw is not None and hasattr(raw, "run_with_iobinding") else None
        self.feat_index = self.exit_index = self.conf_index = -1  # positions in output_names, set by the backend

    def ensure_capacity(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        capacity = max(rows, 2 * self.capacity, 1)
        assert self.sample_shapes is not None
        self.buffers = [
            np.empty((capacity, *shape), dtype=dtype) for shape, dtype in zip(self.sample_shapes, self.output_dtypes)
        ]
        self.bindings = {}
        self.compact = None
        self.capacity = capacity

    def binding(self, rows: int) -> Any:
        """A new IOBinding with the outputs bound to the first ``rows`` rows of our buffers."""
        io = self.session.io_binding()
        if not hasattr(io, "_iobinding"):  # pragma: no cover - other ORT versions
            self._raw_run = None
        assert self.sample_shapes is not None
        for name, buf, shape in zip(self.output_names, self.buffers, self.sample_shapes):
            io.bind_output(name, "cpu", 0, buf.dtype, [rows, *shape], buf.ctypes.data)
        return io

    def run(self, inputs: np.ndarray) -> List[np.ndarray]:
        """Run on ``inputs`` (contiguous, right dtype); returns views of the output buffers.

        The binding for a batch size is made once. The input is re-bound only when it is a
        different array object than last time: stage k > 0 reads a cached view of the previous
        stage's buffer, so in steady state nothing is re-bound (``arr.ctypes`` alone costs ~1.5 us).
        The binding keeps a reference to the bound array, so its memory cannot be reused under it.
        """
        rows = len(inputs)
        entry = self.bindings.get(rows)
        if entry is None:
            if rows > self.capacity:
                self.ensure_capacity(rows)
            entry = self.bindings[rows] = [self.binding(rows), None, [buf[:rows] for buf in self.buffers]]
        io = entry[0]
        if entry[1] is not inputs:
            io.bind_cpu_input(self.input_name, inputs)
            entry[1] = inputs
        if self._raw_run is not None:
            self._raw_run(io._iobinding, None)  # the public wrapper adds ~2 us per call
        else:  # pragma: no cover - other ORT versions
            self.session.run_with_iobinding(io)
        return entry[2]

    def gather(self, source: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``source[rows]`` written into a reusable contiguous buffer (the compaction step)."""
        need = (len(rows), *source.shape[1:])
        if self.compact is None or self.compact.shape[0] < len(rows) or self.compact.shape[1:] != source.shape[1:]:
            self.compact = np.empty((max(len(rows), self.capacity, 1), *source.shape[1:]), dtype=source.dtype)
        out = self.compact[: need[0]]
        np.take(source, rows, axis=0, out=out)
        return out


class _IngraphSession:
    """The in-graph early-exit session (:mod:`hisd_edge.runtime.ingraph`) with a cached IOBinding:
    outputs bound to our own buffers, the policy inputs re-bound only when the policy changes."""

    def __init__(self, session: Any, label: str, num_exits: int):
        self.session = session
        self.label = label
        self.num_exits = num_exits
        names = {i.name for i in session.get_inputs()}
        wanted = {ingraph.INPUT, ingraph.POLICY_KIND, ingraph.SCORE_THRESHOLDS}
        if names != wanted or [o.name for o in session.get_outputs()] != list(ingraph.OUTPUTS):
            raise BundleError(f"{label}: inputs/outputs are not the in-graph contract's; convert the model again")
        classes = session.get_outputs()[0].shape[1]
        self.logits = np.empty((1, int(classes)), dtype=np.float32)
        self.exit_index = np.empty(1, dtype=np.int32)
        self.score = np.empty(1, dtype=np.float32)
        self.io = session.io_binding()
        buffers: List[np.ndarray] = [self.logits, self.exit_index, self.score]
        for name, buf in zip(ingraph.OUTPUTS, buffers):
            self.io.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        raw = getattr(self.io, "_iobinding", None)
        inner = getattr(session, "_sess", None)
        self._raw = (inner.run_with_iobinding, raw) if raw is not None and inner is not None else None
        self.bound_input: Any = None
        self.bound_policy: Any = None  # (policy object, its score thresholds) the policy inputs were bound for
        self.feeds: Any = None

    def bind_policy(self, policy: Any) -> None:
        key = (policy, policy.score_thresholds())
        if self.bound_policy is not None and self.bound_policy[0] is key[0] and self.bound_policy[1] == key[1]:
            return
        code, thresholds = ingraph.feed(policy, self.num_exits)
        self.io.bind_cpu_input(ingraph.POLICY_KIND, code)
        self.io.bind_cpu_input(ingraph.SCORE_THRESHOLDS, thresholds)
        self.feeds = (code, thresholds)  # the binding reads these arrays: keep them alive
        self.bound_policy = key

    def run(self, sample: np.ndarray) -> None:
        if sample is not self.bound_input:
            self.io.bind_cpu_input(ingraph.INPUT, sample)
            self.bound_input = sample
        if self._raw is not None:
            self._raw[0](self._raw[1], None)
        else:  # pragma: no cover - other ORT versions
            self.session.run_with_iobinding(self.io)


# Batch-1 frames through the in-graph artifact only when asked. Measured with ``bench --designs``
# on the default MNIST bundle (2 shared x86 cores, ONNX Runtime 1.31, 1 thread): the lean chain
# beat the If graph (results/BATCH1_DESIGNS.md); ONNX Runtime's If runs each branch as a subgraph
# with its own execution frame, which costs more than the session calls it saves at this size.
INGRAPH_DEFAULT = False

# A whole model below this many multiply-accumulates per sample runs each stage in tens of
# microseconds on one CPU core; waking a second intra-op thread in every stage session then costs
# more than it saves. Measured on the default MNIST bundle (10.8 M MACs, 2-core x86): early exit
# 3.5x faster than the full model with 1 thread, 2.5x with 2; chain overhead 1.05x vs 1.14x.
SMALL_MODEL_MACS = 50_000_000


class OnnxRuntimeBackend(Backend):
    """Runs a bundle's stage ONNX files with ONNX Runtime.

    Options: ``providers`` (list of "cpu"/"cuda"/"tensorrt" or full names, or ["auto"]; default
    CPU), ``intra_op_threads`` (default "auto": 1 for models under ``SMALL_MODEL_MACS`` per
    sample, else ONNX Runtime's own choice, one per physical core), ``graph_optimization`` ("all" default, "extended",
    "basic", "disable"), ``allow_spinning`` (default False; see the module docstring),
    ``provider_options`` (list of dicts, one per provider), ``load_full_model`` (load the
    monolithic model at activation instead of on first use), ``ingraph`` (default False, see
    ``INGRAPH_DEFAULT``; True: batch-1 frames run through the bundle's in-graph artifact where it
    can decide, see :mod:`hisd_edge.runtime.ingraph`), ``thread_pool`` ("per_session" default, or "shared": every
    session of the process on one ONNX Runtime pool, see
    :func:`~hisd_edge.runtime.ort_session.shared_thread_pool`).

    For int8 the default level is "basic" (Q/DQ executed as written, as the converter validates
    them; see :func:`~hisd_edge.runtime.ort_session.graph_optimization_for`); pass
    ``graph_optimization="all"`` to measure ONNX Runtime's fused integer kernels anyway.
    """

    name = "onnxruntime"

    def __init__(self, bundle, precision: str = "fp32", **options: Any):
        super().__init__(bundle, precision, **options)
        self._stages: List[_Session] = []
        self._full: Optional[_Session] = None
        self._held: Optional[np.ndarray] = None
        self._providers: List[str] = []
        self._exit_meta: List[Dict[str, Any]] = []
        self._ingraph: Optional[_IngraphSession] = None
        self._ingraph_missing = ""  # why there is no in-graph session ("" while there is one)
        self._ingraph_reasons: Dict[str, Optional[str]] = {}  # policy kind -> why not (None: usable)

    # -- sessions ------------------------------------------------------------------------------
    @property
    def intra_op_threads(self) -> int:
        """The intra-op thread count sessions get (0 = ONNX Runtime's default: one per physical core)."""
        value = self.options.get("intra_op_threads")
        if value is None or value == "auto":
            macs = sum(int(stage.get("macs") or 0) for stage in self.bundle.stages)
            return 1 if 0 < macs < SMALL_MODEL_MACS else 0
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InputError(f"intra-op threads must be a number or 'auto', got {value!r}") from None

    def _graph_optimization(self) -> str:
        """The level sessions run at: the requested one, else the shared rule ("basic" for int8).

        A mixed plan with an int8 stage runs the whole chain at the int8 level (one level per backend)."""
        plan = stage_precisions(self.bundle, self.precision)
        return graph_optimization_for("int8" if "int8" in plan else plan[0], self.options.get("graph_optimization"))

    def _open(self, path, label: str) -> _Session:
        return _Session(self._new_session(path), label)

    def _new_session(self, path) -> Any:
        threads = self.intra_op_threads
        level = self._graph_optimization()
        try:
            session = open_session(
                str(path),
                threads,
                self.precision,
                graph_optimization=level,
                allow_spinning=bool(self.options.get("allow_spinning")),
                providers=self._providers,
                provider_options=self.options.get("provider_options"),
                shared_pool=self.options.get("thread_pool", "per_session") == "shared",
            )
        except HisdError:
            raise
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            first = first_line(exc)
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({first}); convert the model again") from None
        return session

    def activate_impl(self) -> None:
        first_dim = self.bundle.stages[0]["inputs"][0]["shape"][0]
        # Rows per run: 0 = any (dynamic batch axis); 1 for a model exported with a fixed batch of 1.
        self.max_batch = first_dim if isinstance(first_dim, int) else 0
        self._providers = resolve_providers(self.options.get("providers"))
        self._exit_meta = self.bundle.exits
        shape: Tuple[int, ...] = self.input_shape
        plan = stage_precisions(self.bundle, self.precision)  # "mixed": convert's per-stage plan
        for k in range(self.num_stages):
            path = self.bundle.stage_path(k, plan[k])
            stage = self._open(path, f"{path.name} (stage {k})")
            expected = [o["name"] for o in self.bundle.stages[k]["outputs"]]
            if sorted(stage.output_names) != sorted(expected):
                raise BundleError(
                    f"{path}: outputs {stage.output_names} differ from the manifest's {expected}; convert again"
                )
            last = k == self.num_stages - 1
            # Reorder the buffers as the manifest names them: feat first, then exit, then conf.
            order = [stage.output_names.index(n) for n in expected]
            stage.output_names = [stage.output_names[i] for i in order]
            stage.output_dtypes = [stage.output_dtypes[i] for i in order]
            probe: np.ndarray = np.zeros((1, *shape), dtype=stage.input_dtype)
            outs = stage.session.run(stage.output_names, {stage.input_name: probe})
            stage.sample_shapes = [tuple(o.shape[1:]) for o in outs]
            meta = self._exit_meta[k]
            stage.feat_index = -1 if last else expected.index(f"feat{k}")
            stage.exit_index = expected.index(meta["output"])
            conf_name = meta.get("confidence_output")
            stage.conf_index = expected.index(conf_name) if conf_name and conf_name in expected else -1
            if not last:
                shape = stage.sample_shapes[expected.index(f"feat{k}")]
            self._stages.append(stage)
        if self.options.get("load_full_model"):
            self._load_full()
        self._open_ingraph()

    def _open_ingraph(self) -> None:
        """Open the bundle's in-graph artifact for this precision, when it has one and ``ingraph`` is
        not False; old bundles without it simply run the chain."""
        if not self.options.get("ingraph", INGRAPH_DEFAULT):
            self._ingraph_missing = (
                "the in-graph artifact runs only when asked (ingraph=True): slower than the chain here"
            )
            return
        if self.precision == "mixed":
            self._ingraph_missing = "a mixed-precision plan runs as a chain"
            return
        record = (self.bundle.manifest.get("ingraph") or {}).get("files", {}).get(self.precision)
        if not isinstance(record, dict):
            self._ingraph_missing = ingraph.usable_policy(self.bundle.manifest, self.precision, "max_prob")[1]
            return
        path = self.bundle.ingraph_path(self.precision)
        assert path is not None
        self._ingraph = _IngraphSession(self._new_session(path), path.name, self.num_stages)
        self._ingraph_missing = ""

    def _load_full(self) -> _Session:
        if self._full is None:
            path = self.bundle.full_model_path()
            if path is None:
                raise BundleError(
                    f"{self.bundle.root}: the manifest names no full_model; convert again to benchmark it"
                )
            full = self._open(path, f"{path.name} (full model)")
            wanted = [e["output"] for e in self._exit_meta]
            missing = [n for n in wanted if n not in full.output_names]
            if missing:
                raise BundleError(f"{path}: the full model lacks outputs {missing}; convert again")
            full.output_names = wanted
            full.output_dtypes = [
                _NP_TYPES.get(o.type, np.float32) for n in wanted for o in full.session.get_outputs() if o.name == n
            ]
            probe: np.ndarray = np.zeros((1, *self.input_shape), dtype=full.input_dtype)
            full.sample_shapes = [tuple(o.shape[1:]) for o in full.session.run(wanted, {full.input_name: probe})]
            self._full = full
        return self._full

    def deactivate_impl(self) -> None:
        self._stages = []
        self._full = None
        self._held = None
        self._ingraph = None

    # -- the in-graph path -------------------------------------------------------------------------
    def ingraph_unavailable(self, policy: Any) -> Optional[str]:
        if self._ingraph is None:
            return self._ingraph_missing or "no in-graph session"
        reason = self._ingraph_reasons.get(policy.kind, "?")
        if reason == "?":  # once per policy kind: this runs before every single-sample frame
            reason = self._ingraph_reasons[policy.kind] = (
                ingraph.usable_policy(self.bundle.manifest, self.precision, policy.kind)[1] or None
            )
        return reason

    def run_ingraph_impl(self, policy: Any) -> Tuple[np.ndarray, int, float]:
        session = self._ingraph
        assert session is not None and self._held is not None
        session.bind_policy(policy)
        session.run(self._held)
        return (
            session.logits,
            int(session.exit_index[0]),
            float(session.score[0]),
        )  # a view: read it before the next frame

    def describe_impl(self) -> Dict[str, Any]:
        ort = import_onnxruntime()
        return {
            "onnxruntime_version": ort.__version__,
            "providers": list(self._providers),
            "intra_op_threads": self.intra_op_threads,
            "graph_optimization": self._graph_optimization(),
            "allow_spinning": bool(self.options.get("allow_spinning", False)),
            "ingraph": self._ingraph.label if self._ingraph is not None else self._ingraph_missing or None,
            "thread_pool": self.options.get("thread_pool", "per_session"),
        }

    @property
    def supports_full_model(self) -> bool:
        return self.bundle.full_model_path() is not None

    # -- running -------------------------------------------------------------------------------
    def start_impl(self, batch: np.ndarray) -> None:
        if self.max_batch and len(batch) > self.max_batch:
            raise InputError(
                f"{self.bundle.root}: the stages take {self.max_batch} sample per run (exported with a fixed batch of 1); "
                "pass one sample at a time (--batch-size 1), or re-export the model with a dynamic batch axis"
            )
        dtype = self._stages[0].input_dtype
        self._held = batch if batch.dtype == dtype else batch.astype(dtype)

    def run_stage_impl(self, k: int, keep_rows: Optional[np.ndarray]) -> StageResult:
        stage = self._stages[k]
        held = self._held
        assert held is not None
        if keep_rows is not None:
            held = stage.gather(held, keep_rows)
        if held.dtype != stage.input_dtype:  # e.g. an fp16 stage after an fp32 one
            held = held.astype(stage.input_dtype)
        outs = stage.run(held)
        self._held = outs[stage.feat_index] if stage.feat_index >= 0 else None
        exit_out = outs[stage.exit_index]
        confidence: Optional[np.ndarray] = None
        if stage.conf_index >= 0:
            conf = outs[stage.conf_index]
            confidence = (
                conf.astype(np.float32) if conf.ndim == 1 else conf.astype(np.float32).reshape(-1)
            )  # a copy: the buffer is reused
        elif self._exit_meta[k].get("kind", "logits") == "logits":
            confidence = softmax_max(exit_out)

        def fetch(rows: Optional[np.ndarray], exit_out: np.ndarray = exit_out) -> np.ndarray:
            # Copies: the buffer is reused by the next batch.
            return exit_out.astype(np.float32) if rows is None else exit_out[rows].astype(np.float32, copy=False)

        result = StageResult(k, int(held.shape[0]), confidence, float("nan"), fetch)
        if self._held is not None:
            feat = self._held
            result.fetch_pooled_features = lambda: pool_features(feat)
        return result

    def run_stage_lean(self, k: int) -> Tuple[float, float, np.ndarray]:
        """:meth:`Backend.run_stage_lean` without the per-stage object, closures or re-checks: one
        IOBinding run, the fused confidence read as a float."""
        if k != self._next_stage or self._held_rows != 1:
            return super().run_stage_lean(k)  # the checks and their messages
        stage = self._stages[k]
        held = self._held
        assert held is not None
        if held.dtype != stage.input_dtype:
            held = held.astype(stage.input_dtype)
        begin = perf_counter()
        outs = stage.run(held)
        end = perf_counter()
        self._held = outs[stage.feat_index] if stage.feat_index >= 0 else None
        self._next_stage = k + 1
        exit_out = outs[stage.exit_index]
        if stage.conf_index >= 0:
            conf = float(outs[stage.conf_index].reshape(-1)[0])
        elif self._exit_meta[k].get("kind", "logits") == "logits":
            conf = float(softmax_max(exit_out)[0])
        else:
            conf = float("nan")
        return (end - begin) * 1e3, conf, exit_out

    def run_full_impl(self, batch: np.ndarray) -> FullResult:
        full = self._load_full()
        inputs = batch if batch.dtype == full.input_dtype else batch.astype(full.input_dtype)
        outs = full.run(inputs)
        return FullResult(outputs=[np.array(o, dtype=np.float32) for o in outs], latency_ms=float("nan"))
