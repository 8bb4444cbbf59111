"""The profiler's seam to the early-exit runtime: everything it asks of :mod:`hisd_edge.runtime`.

The profiler needs four things from a backend, all through the runtime's public API
(``create_backend``, ``Backend.start``/``run_stage``, the exit policies and ``run_early_exit``):

* run one batch *forced to exit k* (stages 0..k, no decisions), timing the whole chain on the host
  with the profiler's clock and keeping the backend's own per-stage latency (CUDA events on a GPU
  backend, host wall time on the CPU);
* run every sample through every exit once, keeping each exit's output and confidence, for the
  accuracy and the threshold sweep (the runtime's own ``thresholds.collect_exit_outputs``, which
  also keeps each chunk within a TensorRT backend's ``max_batch``);
* run the real early-exit loop at given thresholds, to measure what a user would get;
* the bundle's policy, or the defaults when it has none.

Keeping this in one module means a change in the runtime's API touches one file here.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.bundle import Bundle
from hisd_edge.runtime import Backend, create_backend, run_early_exit
from hisd_edge.runtime.policies import ExitPolicy, bundle_exit_kind, make_policy, policy_from_manifest

DEFAULT_MAX_PROB = 0.9  # the runtime's documented default threshold for max_prob
DEFAULT_STABILITY = 0.95


def resolve_policy(bundle: Bundle) -> Tuple[ExitPolicy, Dict[str, Any], Optional[str]]:
    """(policy, its report block, a note when the bundle has no calibrated policy)."""
    n = bundle.num_stages
    exit_kind = bundle_exit_kind(bundle.exits)
    recorded = bundle.policy
    note = None
    if recorded and isinstance(recorded.get("thresholds"), list):
        policy = policy_from_manifest(recorded, n, exit_kind)
        calibrated = bool(recorded.get("calibrated"))
        if not calibrated:
            note = (
                f"the bundle's {policy.kind} thresholds are not calibrated: profiled with its default thresholds "
                f"{policy.thresholds}; calibrate with hisd-edge thresholds, then profile again"
            )
    else:
        kind = "stability" if exit_kind == "embedding" else "max_prob"
        default = DEFAULT_STABILITY if kind == "stability" else DEFAULT_MAX_PROB
        policy = make_policy(kind, [default] * (n - 1) + [None], n, exit_kind)
        calibrated = False
        note = (
            f"the bundle has no exit policy: profiled with the default {kind} thresholds {policy.thresholds}; "
            "calibrate with hisd-edge thresholds, then profile again"
        )
    block = {"kind": policy.kind, "thresholds": list(policy.thresholds), "calibrated": calibrated, "note": note}
    return policy, block, note


def open_backend(bundle: Bundle, name: str, precision: str, options: Dict[str, Any]) -> Backend:
    return create_backend(name, bundle, precision=precision, **options)


def run_to_exit(
    backend: Backend, batch: np.ndarray, k: int, clock: Callable[[], float] = time.monotonic
) -> Tuple[float, List[float]]:
    """Stages 0..k on ``batch`` with no exit decisions: (host wall ms, per-stage ms from the backend)."""
    stage_ms: List[float] = []
    begin = clock()
    backend.start(batch)
    for j in range(k + 1):
        stage_ms.append(backend.run_stage(j).latency_ms)
    return (clock() - begin) * 1e3, stage_ms


def early_exit_call(backend: Backend, policy: ExitPolicy, batch: np.ndarray, class_names: Sequence[str]) -> List[int]:
    """One real early-exit call on ``batch``: the exit each row left at."""
    results, _trace = run_early_exit(backend, policy, batch, class_names=class_names)
    return [int(r.exit) for r in results if r.exit is not None]


def early_exit_pass(
    backend: Backend, policy: ExitPolicy, tensors: np.ndarray, batch: int, class_names: Sequence[str]
) -> Tuple[np.ndarray, List[float]]:
    """The real early-exit loop over the data in batches: (exit index per sample, ms per call)."""
    exits: List[int] = []
    call_ms: List[float] = []
    for begin in range(0, len(tensors), batch):
        results, trace = run_early_exit(
            backend, policy, tensors[begin : begin + batch], class_names=class_names, first_index=begin
        )
        exits.extend(int(r.exit) for r in results if r.exit is not None)
        call_ms.append(trace.total_ms)
    return np.asarray(exits, dtype=np.int64), call_ms
