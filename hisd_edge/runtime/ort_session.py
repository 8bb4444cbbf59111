"""ONNX Runtime sessions and the stage chain: the one place they are set up and run.

Both sides use this module: the converter (verify, calibrate, validate) to run stage graphs over
whole arrays, and the runtime's ONNX Runtime backend (:mod:`hisd_edge.runtime.ort_backend`) to
run a bundle batch by batch. Convert may import the runtime; the runtime never imports convert,
so the rules live here:

* **Session options** (:func:`open_session`): one inter-op thread, intra-op threads as asked
  (0 = ONNX Runtime's default, one per physical core), spinning off. Several stage sessions in one
  process otherwise keep their worker threads spinning after each run and fight over the cores:
  a chain of stages ran 1.2-2.8x slower than the monolithic model on 2 cores with spinning, and
  1.00-1.05x without.
* **INT8 runs at the "basic" optimisation level** (:func:`graph_optimization_for`). INT8 stages
  are explicit Q/DQ graphs meant for TensorRT. At the "extended"/"all" levels ONNX Runtime fuses
  Q/DQ pairs into its own integer kernels, which on x86 CPUs without VNNI saturate int8 x int8
  products (``VPMADDUBSW``): the default MNIST model lost 9 points of top-1 that way. At "basic"
  the Q/DQ nodes run as the float arithmetic they define, which is what TensorRT implements, so
  the converter validates and the runtime runs the same numbers. Every other precision runs at
  "all" (ONNX Runtime's own default).

:class:`StageChain` runs stage sessions one after another over a whole array (``input`` ->
stage 0 -> ``feat0`` -> stage 1 ...), in batches, keeping every output: what verification,
chained calibration and validation need. The runtime backend runs the same sessions batch by
batch instead, holding features between stages and dropping the rows that exit.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from hisd_edge.errors import DependencyError, InputError

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
INT8_GRAPH_OPTIMIZATION = "basic"
DEFAULT_GRAPH_OPTIMIZATION = "all"
DEFAULT_BATCH_ROWS = 256

ModelSource = Union[bytes, str]


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line DependencyError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(
            "this needs ONNX Runtime: pip install onnxruntime (CPU) or onnxruntime-gpu "
            "(CUDA/TensorRT providers; on Jetson the wheel from the Jetson AI Lab index)"
        ) from None
    return onnxruntime


def graph_optimization_for(precision: str, requested: Optional[str] = None) -> str:
    """The graph optimisation level a session for ``precision`` runs at.

    ``requested`` (None or "auto": the default) overrides the rule, e.g. "all" to measure ONNX
    Runtime's fused integer kernels on an INT8 bundle anyway.
    """
    if requested in (None, "auto"):
        return INT8_GRAPH_OPTIMIZATION if precision == "int8" else DEFAULT_GRAPH_OPTIMIZATION
    level = str(requested)
    if level not in GRAPH_OPTIMIZATION_LEVELS:
        raise InputError(f"graph optimization level {level!r} is not one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
    return level


_SHARED_POOL_THREADS: List[int] = []  # the process-wide pool's size, once made


def shared_thread_pool(threads: int) -> None:
    """Make ONNX Runtime's process-wide intra-op pool (once per process) with ``threads`` threads.

    The Python API can size it (``set_global_thread_pool_sizes``, in ``onnxruntime.capi``) but not
    turn its spinning off or pin it: its idle threads spin, like the C API's default. Once it
    exists, ONNX Runtime refuses sessions with their own pools in that process, so every session
    this module opens afterwards runs on it; a request for another size is refused (the pool is the
    process's, not a session's).
    """
    if _SHARED_POOL_THREADS:
        if _SHARED_POOL_THREADS[0] != threads:
            raise InputError(
                f"this process already runs ONNX Runtime's shared thread pool with {_SHARED_POOL_THREADS[0]} threads, "
                f"not {threads}; use one thread count per process, or per-session pools"
            )
        return
    import_onnxruntime()
    from onnxruntime.capi import _pybind_state

    if not hasattr(_pybind_state, "set_global_thread_pool_sizes"):
        raise DependencyError("this ONNX Runtime cannot make a shared thread pool from Python; use per-session pools")
    _pybind_state.set_global_thread_pool_sizes(int(threads), 1)
    _SHARED_POOL_THREADS.append(int(threads))


def session_options(
    threads: int = 0,
    precision: str = "fp32",
    graph_optimization: Optional[str] = None,
    allow_spinning: bool = False,
    shared_pool: bool = False,
) -> Any:
    """``onnxruntime.SessionOptions`` by the rules in the module docstring; ``shared_pool``: run on the
    process-wide pool of :func:`shared_thread_pool` (made here with ``threads`` if not yet made)."""
    ort = import_onnxruntime()
    threads = int(threads)
    if threads < 0:
        raise InputError(f"intra-op threads must be >= 0 (0 = ONNX Runtime's default), got {threads}")
    options = ort.SessionOptions()
    if shared_pool:
        shared_thread_pool(threads)
    if _SHARED_POOL_THREADS:  # made in this process: ONNX Runtime allows no per-session pool any more
        options.use_per_session_threads = False  # (and warns about pool sizes set per session)
    else:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spinning = "1" if allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization_for(precision, graph_optimization)]
    options.log_severity_level = 3
    return options


def open_session(
    model: ModelSource,
    threads: int = 0,
    precision: str = "fp32",
    *,
    graph_optimization: Optional[str] = None,
    allow_spinning: bool = False,
    providers: Optional[Sequence[str]] = None,
    provider_options: Optional[Sequence[Dict[str, Any]]] = None,
    shared_pool: bool = False,
) -> Any:
    """An ONNX Runtime session for one model (a path, or serialized bytes), CPU unless ``providers``.

    ``precision`` is that of the model's arithmetic (``fp32``, ``fp16``, ``int8``); it picks the
    optimisation level (INT8 at "basic", see the module docstring) unless ``graph_optimization``
    names one. ONNX Runtime's own errors for unreadable models propagate; callers say what to do.
    """
    ort = import_onnxruntime()
    options = session_options(threads, precision, graph_optimization, allow_spinning, shared_pool)
    return ort.InferenceSession(
        model,
        sess_options=options,
        providers=list(providers) if providers else ["CPUExecutionProvider"],
        provider_options=list(provider_options) if provider_options else None,
    )


def run_batched(
    session: Any, x: np.ndarray, names: Sequence[str], batch_size: int = DEFAULT_BATCH_ROWS
) -> Dict[str, np.ndarray]:
    """The outputs ``names`` of one single-input session over all of ``x``, ``batch_size`` rows per run."""
    input_name = session.get_inputs()[0].name
    chunks: Dict[str, List[np.ndarray]] = {name: [] for name in names}
    for lo in range(0, len(x), batch_size):
        for name, value in zip(names, session.run(list(names), {input_name: x[lo : lo + batch_size]})):
            chunks[name].append(value)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


class StageChain:
    """Stage sessions run one after another over whole arrays: ``input`` -> stage 0 -> ``feat0`` -> ...

    ``stage_models`` are the stage graphs (paths or serialized bytes), shallowest first, all of
    one ``precision``; ``stage_outputs`` the outputs to keep per stage (default: all of them).
    ``batch_size`` rows go through per run (a model exported with a fixed batch must be fed
    exactly that many). Stage k's ``feat{k}`` output is stage k+1's input.
    """

    def __init__(
        self,
        stage_models: Sequence[ModelSource],
        stage_outputs: Optional[Sequence[Sequence[str]]] = None,
        threads: int = 2,
        batch_size: int = DEFAULT_BATCH_ROWS,
        precision: str = "fp32",
    ):
        self.precision = precision
        self.threads = threads
        self.sessions = [open_session(model, threads, precision) for model in stage_models]
        if stage_outputs is None:
            stage_outputs = [[o.name for o in s.get_outputs()] for s in self.sessions]
        self.stage_outputs = [list(names) for names in stage_outputs]
        self.batch_size = batch_size

    @property
    def num_stages(self) -> int:
        return len(self.sessions)

    def run_stage(self, k: int, x: np.ndarray, batch_size: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Every kept output of stage ``k`` for all of ``x`` (its input: images or ``feat{k-1}``)."""
        return run_batched(self.sessions[k], x, self.stage_outputs[k], batch_size or self.batch_size)

    def run(
        self, x: np.ndarray, batch_size: Optional[int] = None, start: int = 0, stop: Optional[int] = None
    ) -> Dict[str, np.ndarray]:
        """Every kept output of stages ``start..stop-1`` for all of ``x`` (the input of stage ``start``)."""
        stop = self.num_stages if stop is None else stop
        outputs: Dict[str, np.ndarray] = {}
        value = x
        for k in range(start, stop):
            stage_out = self.run_stage(k, value, batch_size)
            outputs.update(stage_out)
            value = next_stage_input(k, stage_out, value)
        return outputs


def next_stage_input(k: int, stage_outputs: Dict[str, np.ndarray], current: np.ndarray) -> np.ndarray:
    """What stage k+1 reads: stage k's ``feat{k}`` (the last stage has none; ``current`` stays)."""
    return stage_outputs.get(f"feat{k}", current)
