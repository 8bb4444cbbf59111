"""Exit policies: when is an exit's answer good enough to stop?

Every policy turns what exit k produced for a row into one **score** where higher means more
confident, and the row leaves at exit k when ``score >= threshold[k]``. Thresholds are stored in
the manifest in the policy's natural unit (see each class); ``None`` means "never leave at this
exit"; the last exit always accepts. Policies with memory (patience, stability) keep a per-row
state that the early-exit loop compacts together with the batch.

The same :meth:`ExitPolicy.step` computes scores in the runtime (on the still-active rows) and in
threshold calibration (on all validation rows at once), so calibration predicts exactly the
decisions the runtime makes.

=============  ===========================================  =============================  ========
kind           score at exit k                              threshold unit                 needs
=============  ===========================================  =============================  ========
max_prob       max softmax probability                      probability, leave if >= t     conf only
entropy        softmax entropy / log(classes)               leave if entropy <= t (0..1)   logits
margin         top-1 minus top-2 softmax probability        leave if margin >= t           logits
patience       consecutive exits (ending at k) that agree   count, leave if >= t           logits
               on the class (1 at exit 0)
stability      cosine(embedding_k, embedding_{k-1})         leave if cosine >= t (tau)     embeddings
               (-inf at exit 0)
=============  ===========================================  =============================  ========
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from hisd_edge.errors import InputError
from hisd_edge.schemas import check_policy_thresholds

State = Dict[str, np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ExitPolicy:
    """Base class. Subclasses set ``kind``, ``needs_outputs``, ``exit_kind`` and implement ``_score``."""

    kind = "policy"
    needs_outputs = True  # the score needs every active row's exit output, not only the confidence
    exit_kind = "logits"  # which exit outputs the policy understands
    lower_is_confident = False  # the stored threshold is an upper bound on a "badness" (entropy)

    def __init__(self, thresholds: Sequence[Optional[float]], num_exits: Optional[int] = None):
        thresholds = list(thresholds)
        if num_exits is not None and len(thresholds) == num_exits - 1 and num_exits > 1:
            thresholds.append(None)  # K-1 values: the last exit always accepts, so its threshold is implied
        if num_exits is not None and len(thresholds) != num_exits:
            raise InputError(
                f"policy {self.kind} has {len(thresholds)} thresholds but the bundle has {num_exits} exits; "
                f"give {num_exits - 1} (the last exit always accepts) or {num_exits}, 'none' for 'never leave here', "
                "or run hisd-edge thresholds"
            )
        if not thresholds:
            raise InputError("a policy needs one threshold per exit")
        for t in thresholds:
            if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or math.isnan(float(t))):
                raise InputError(f"policy threshold {t!r} is not a number or none")
        # The score range of each kind lives in the manifest schema (one place for manifests and --thresholds).
        check_policy_thresholds(self.kind, [None if t is None else float(t) for t in thresholds], f"{self.kind} policy")
        self.thresholds: List[Optional[float]] = [None if t is None else float(t) for t in thresholds]
        self.thresholds[-1] = None  # the last exit always accepts
        self._score_thresholds = [self.score_threshold(k) for k in range(len(self.thresholds))]

    # -- thresholds in score space -------------------------------------------------------------
    def score_threshold(self, k: int) -> float:
        """Threshold of exit k in score space (score >= it leaves); +inf: never leave here."""
        if k == len(self.thresholds) - 1:
            return -math.inf
        t = self.thresholds[k]
        if t is None:
            return math.inf
        return -t if self.lower_is_confident else t

    def score_thresholds(self) -> List[float]:
        """Every exit's threshold in score space, shallowest first (the last exit's is -inf)."""
        return list(self._score_thresholds)

    def to_stored(self, score_threshold: float) -> Optional[float]:
        """Convert a score-space threshold back to the manifest's unit (None for +inf)."""
        if math.isinf(score_threshold) and score_threshold > 0:
            return None
        return -score_threshold if self.lower_is_confident else score_threshold

    # -- the step -------------------------------------------------------------------------------
    def init_state(self, rows: int) -> State:
        return {}

    def step(self, k: int, confidence: Optional[np.ndarray], outputs: Optional[np.ndarray], state: State) -> np.ndarray:
        """Scores (float64, one per active row) at exit k; updates ``state`` in place."""
        return self._score(k, confidence, outputs, state)

    def _score(
        self, k: int, confidence: Optional[np.ndarray], outputs: Optional[np.ndarray], state: State
    ) -> np.ndarray:
        raise NotImplementedError

    def leaves(self, k: int, scores: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows that leave at exit k."""
        t = self._score_thresholds[k]
        if t == -math.inf:
            return np.ones(scores.shape, dtype=bool)
        return scores >= t  # NaN scores never leave early

    @staticmethod
    def compact(state: State, keep: np.ndarray) -> State:
        return {key: value[keep] for key, value in state.items()}

    def all_scores(self, confidences: Sequence[Optional[np.ndarray]], outputs: Sequence[np.ndarray]) -> np.ndarray:
        """(N, K) scores of every row at every exit, without leaving (for calibration)."""
        rows = len(outputs[0])
        state = self.init_state(rows)
        cols = [self.step(k, confidences[k], outputs[k], state) for k in range(len(outputs))]
        return np.stack(cols, axis=1)

    def to_manifest(self, **extra: Any) -> Dict[str, Any]:
        return {"kind": self.kind, "thresholds": list(self.thresholds), **extra}


class MaxProbPolicy(ExitPolicy):
    """Leave when the maximum softmax probability reaches the threshold (reads only ``conf{k}``)."""

    kind = "max_prob"
    needs_outputs = False

    def _score(self, k, confidence, outputs, state):
        if confidence is None:
            confidence = softmax(outputs).max(axis=1)
        return np.asarray(confidence, dtype=np.float64)


class EntropyPolicy(ExitPolicy):
    """Leave when the softmax entropy, normalised by log(classes) to 0..1, is at most the threshold."""

    kind = "entropy"
    lower_is_confident = True

    def _score(self, k, confidence, outputs, state):
        p = softmax(outputs)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return -(h / math.log(max(p.shape[1], 2)))


class MarginPolicy(ExitPolicy):
    """Leave when top-1 minus top-2 softmax probability reaches the threshold."""

    kind = "margin"

    def _score(self, k, confidence, outputs, state):
        p = softmax(outputs)
        if p.shape[1] < 2:
            return p[:, 0]
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]


class PatiencePolicy(ExitPolicy):
    """Leave when the last ``t`` exits (ending here) agree on the class (PABEE-style patience)."""

    kind = "patience"

    def init_state(self, rows: int) -> State:
        return {"pred": np.full(rows, -1, dtype=np.int64), "streak": np.zeros(rows, dtype=np.int64)}

    def _score(self, k, confidence, outputs, state):
        with np.errstate(invalid="ignore"):
            pred = np.argmax(outputs, axis=1)
        streak = np.where(pred == state["pred"], state["streak"] + 1, 1)
        state["pred"], state["streak"] = pred, streak
        return streak.astype(np.float64)


class StabilityPolicy(ExitPolicy):
    """Embedding exits: leave when cosine(this exit's embedding, the previous exit's) >= tau."""

    kind = "stability"
    exit_kind = "embedding"

    def init_state(self, rows: int) -> State:
        return {}

    def _score(self, k, confidence, outputs, state):
        emb = np.asarray(outputs, dtype=np.float64)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = emb / np.where(norm > 0, norm, 1.0)
        prev = state.get("prev")
        state["prev"] = unit
        if prev is None:
            return np.full(len(emb), -math.inf)
        return (unit * prev).sum(axis=1)


POLICIES = {cls.kind: cls for cls in (MaxProbPolicy, EntropyPolicy, MarginPolicy, PatiencePolicy, StabilityPolicy)}
POLICY_KINDS = tuple(POLICIES)


def make_policy(
    kind: str, thresholds: Sequence[Optional[float]], num_exits: Optional[int] = None, exit_kind: str = "logits"
) -> ExitPolicy:
    """A policy by kind, checked against the bundle's exit kind."""
    if kind not in POLICIES:
        raise InputError(f"unknown exit policy {kind!r}; choose one of: {', '.join(POLICY_KINDS)}")
    cls = POLICIES[kind]
    if exit_kind == "embedding" and cls.exit_kind != "embedding":
        raise InputError(
            f"the bundle's exits give embeddings, which policy {kind!r} cannot read; use --policy stability"
        )
    if exit_kind == "logits" and cls.exit_kind == "embedding":
        raise InputError(
            f"policy {kind!r} needs embedding exits but the bundle's exits give logits; use max_prob, entropy, margin or patience"
        )
    return cls(thresholds, num_exits)


def policy_from_manifest(policy: Dict[str, Any], num_exits: int, exit_kind: str = "logits") -> ExitPolicy:
    """The policy recorded in a bundle manifest (``policy`` key, see hisd_edge.bundle)."""
    if not policy:
        default_kind = "stability" if exit_kind == "embedding" else "max_prob"
        raise InputError(
            f"the bundle has no exit policy; run hisd-edge thresholds (e.g. --policy {default_kind}) first"
        )
    thresholds = policy.get("thresholds")
    if not isinstance(thresholds, list):
        raise InputError("the bundle's policy has no thresholds list; run hisd-edge thresholds again")
    return make_policy(str(policy.get("kind")), thresholds, num_exits, exit_kind)


def bundle_exit_kind(exits: Sequence[Dict[str, Any]]) -> str:
    kinds = {e.get("kind", "logits") for e in exits}
    if len(kinds) != 1:
        raise InputError(
            f"the bundle mixes exit kinds {sorted(kinds)}; every exit must give logits, or every exit embeddings"
        )
    return kinds.pop()
