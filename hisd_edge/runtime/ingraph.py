"""The in-graph early-exit artifact's contract: what it takes, what it gives, when it may be used.

At batch 1 a bundle may also carry one ONNX graph per precision (``ingraph.onnx``,
``ingraph.fp16.onnx``, built by :mod:`hisd_edge.convert.ingraph`) that runs stage 0, scores
exit 0 with the policy, and runs stage 1 only in the ``else`` branch of an ONNX ``If`` node, and
so on: one session call per frame instead of one per stage plus Python between them.

Inputs (names fixed here, used by the converter and the backends):

* ``input``: (1, C, H, W) float32, the preprocessed sample;
* ``policy_kind``: int32 scalar, the index of the policy in :data:`INGRAPH_POLICIES`;
* ``score_thresholds``: float32 (K-1,), exit k's threshold **in score space** (see
  :meth:`~hisd_edge.runtime.policies.ExitPolicy.score_thresholds`): leave at exit k when
  ``score_k >= score_thresholds[k]`` (+inf: never leave there), each rounded *up* to float32
  (:func:`thresholds_f32`): for a float32 score s, ``s >= up(t)`` exactly when ``s >= t`` in float64,
  so the graph decides as the chain does (a float32 threshold rounded to nearest would not).

Outputs: ``logits`` (1, classes) float32 of the exit taken, ``exit_index`` (1,) int32 and
``score`` (1,) float32, the policy's score there. Only float32 and int32 cross the graph's edge, so
TensorRT (which has no float64, and before 10 no int64 I/O) builds it as it is.

Thresholds are inputs, so ``hisd-edge thresholds`` never re-exports anything. The converter
records, per precision, the policies whose in-graph scores were bit-identical to the runtime's
host scores at every exit on the validation data (:func:`usable_policy`); the runtime uses the
graph only for those, and only where nothing else needs the stages one by one (the input guard,
forced exits, batches, patience or stability policies).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from hisd_edge.errors import InputError

INGRAPH_POLICIES = ("max_prob", "entropy", "margin")  # index = the graph's policy_kind code
INPUT = "input"
POLICY_KIND = "policy_kind"
SCORE_THRESHOLDS = "score_thresholds"
OUTPUTS = ("logits", "exit_index", "score")
INGRAPH_FILE = {"fp32": "ingraph.onnx", "fp16": "ingraph.fp16.onnx", "int8": "ingraph.int8.onnx"}


def usable_policy(manifest: Dict[str, Any], precision: str, policy_kind: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """The artifact record for ``precision`` if it may run ``policy_kind``, else (None, why not)."""
    record = manifest.get("ingraph")
    if not isinstance(record, dict):
        return None, "the bundle has no in-graph early-exit artifact (converted before it existed)"
    files = record.get("files") or {}
    entry = files.get(precision)
    if not isinstance(entry, dict):
        return None, f"the bundle has no {precision} in-graph artifact (has {', '.join(sorted(files)) or 'none'})"
    if policy_kind not in INGRAPH_POLICIES:
        return None, f"policy {policy_kind} keeps per-exit state the graph cannot carry"
    if policy_kind not in (entry.get("policies") or []):
        return None, (
            f"policy {policy_kind}: the {precision} in-graph scores were not bit-identical to the chain's at convert"
        )
    return entry, ""


def feed(policy: Any, num_exits: int) -> Tuple[np.ndarray, np.ndarray]:
    """(policy_kind, score_thresholds) arrays for ``policy``; wrong count or range refused in one line.

    ``policy`` is an :class:`~hisd_edge.runtime.policies.ExitPolicy` (its thresholds were already
    range-checked when it was made; checked again here because the graph trusts what it is fed).
    """
    if policy.kind not in INGRAPH_POLICIES:
        raise InputError(
            f"policy {policy.kind} cannot run in the in-graph artifact (it takes {', '.join(INGRAPH_POLICIES)})"
        )
    scores = list(policy.score_thresholds())
    if len(scores) != num_exits:
        raise InputError(
            f"the in-graph artifact takes {num_exits - 1} thresholds (one per exit but the last) and the policy has "
            f"{len(scores) - 1}; give one threshold per exit"
        )
    bounds = {"max_prob": (0.0, 1.0), "entropy": (-1.0, 0.0), "margin": (0.0, 1.0)}[policy.kind]
    for k, value in enumerate(scores[:-1]):
        if math.isnan(value) or (not math.isinf(value) and not bounds[0] <= value <= bounds[1]):
            shown = policy.to_stored(value)
            raise InputError(
                f"{policy.kind} threshold {shown!r} at exit {k} is out of range for the in-graph artifact; "
                "run hisd-edge thresholds again"
            )
    code = np.array(INGRAPH_POLICIES.index(policy.kind), dtype=np.int32)
    return code, thresholds_f32(scores[:-1])


def thresholds_f32(score_thresholds: Any) -> np.ndarray:
    """float64 thresholds -> the smallest float32 at or above each (infinities stay)."""
    wide = np.asarray(score_thresholds, dtype=np.float64)
    narrow = wide.astype(np.float32)
    below = narrow.astype(np.float64) < wide
    narrow[below] = np.nextafter(narrow[below], np.float32(np.inf))
    return narrow
