"""Certified exit thresholds: Learn-then-Test risk control over a fixed family of thresholds.

What is certified
-----------------
For the thresholds chosen here, with probability at least ``confidence`` over the draw of the
calibration set, the expected *risk* on new data from the calibration data's distribution is at
most ``max_drop`` (a fraction; the CLI speaks in points). Two risks, both per-sample and binary:

``accuracy``      1[the final exit is right and the exit taken is wrong]. The accuracy drop against
                  the final exit is E[1[final right] - 1[taken right]] = E[this loss] -
                  P(final wrong, taken right) <= E[this loss], so bounding the risk bounds the drop
                  the user asked about. Needs labels.
``disagreement``  1[the exit taken predicts another class than the final exit]. Whenever the first
                  loss is 1 this one is too, so it bounds the accuracy drop as well, and it needs no
                  labels: calibrate on what the target's camera sees.

How (Angelopoulos et al. 2021, "Learn then Test", arXiv 2110.01052; for early exit: Schuster et
al. 2022, CALM, and Jazbec et al. 2024, "Fast yet Safe")
------------------------------------------------------------------------------------------------
Every candidate threshold vector j has the null hypothesis "its risk exceeds alpha". A binary loss
makes the count of losses on n i.i.d. samples Binomial(n, risk), so the exact binomial tail
``P(Binomial(n, alpha) <= count_j)`` is a valid p-value (it is at least as tight as Hoeffding-Bentkus,
which exists for general bounded losses). The candidates form one ordered sequence, most
conservative first; fixed-sequence testing rejects p-values <= delta in that order and stops at
the first that is not. That controls the family-wise error at delta, so *every* rejected candidate
has risk <= alpha simultaneously with probability >= 1 - delta, and picking the cheapest of them
(with any cost model) keeps the guarantee.

The family must not be chosen from the data that is tested (or the p-values are no longer valid).
Here it is fixed in advance: one *shared* score threshold for every early exit, on a
data-independent grid (log-spaced distance from the fully confident score: 161 values, see
:func:`shared_family`), as CALM and "Fast yet Safe" do. Per-exit thresholds learnt on a split of
the calibration data were tried (tools/certify_bench.py, results/CERTIFIED_THRESHOLDS.md): the
split halves what can be certified and cost far more speed on 500-5,000 samples than equal
thresholds cost.

Only ``numpy`` at import; SciPy (binomial tail, beta quantiles) is imported when needed, so the
runtime core stays numpy-only and SciPy is the ``calibration`` extra (it installs on JetPack).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from hisd_edge.errors import DependencyError, InputError

RISKS = ("accuracy", "disagreement")
RISK_NAMES = {"accuracy": "accuracy drop", "disagreement": "disagreement with the final exit"}
# Candidate distances from the fully confident score, 10**-8 (most conservative) to 10**0, in
# steps of 0.05 decades. Finer steps cost nothing in fixed-sequence testing but a slightly earlier
# stop where the empirical risk wobbles; 8 decades reach past float32 resolution of a probability.
SHARED_GRID_DECADES = np.round(np.arange(8.0, -1e-9, -0.05), 2)
METHOD_TEXT = "Learn-then-Test: exact binomial tail p-values, fixed-sequence testing over a shared threshold"


def import_scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError:
        raise DependencyError(
            "certified thresholds and the live audit need SciPy: pip install 'hisd-edge[calibration]' "
            "(on JetPack: sudo apt install python3-scipy)"
        ) from None
    return stats


# -- the statistics ---------------------------------------------------------------------------------
def binomial_p_values(counts: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """p-values of "risk > alpha" for loss counts out of n: P(Binomial(n, alpha) <= count)."""
    counts = np.asarray(counts)
    if alpha >= 1.0:
        return np.zeros(counts.shape)  # a binary loss never has risk above 1
    return np.asarray(import_scipy_stats().binom.cdf(counts, n, alpha), dtype=np.float64)


def upper_bound(count: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound on a binomial rate (Clopper-Pearson): the
    smallest alpha whose binomial tail p-value at ``count`` is <= delta."""
    return float(upper_bounds(np.array([count]), n, delta)[0])


def upper_bounds(counts: np.ndarray, n: int, delta: float) -> np.ndarray:
    """:func:`upper_bound` for an array of counts."""
    counts = np.asarray(counts, dtype=np.float64)
    inside = counts < n
    out = np.ones(counts.shape)
    if inside.any():
        c = counts[inside]
        out[inside] = import_scipy_stats().beta.ppf(1.0 - delta, c + 1, n - c)
    return out


def two_sided_interval(count: int, n: int, confidence: float) -> List[float]:
    """Clopper-Pearson interval of a binomial rate at ``confidence`` ([0, 1] when n is 0)."""
    if n <= 0:
        return [0.0, 1.0]
    stats = import_scipy_stats()
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if count <= 0 else float(stats.beta.ppf(tail, count, n - count + 1))
    high = 1.0 if count >= n else float(stats.beta.ppf(1.0 - tail, count + 1, n - count))
    return [low, high]


def samples_needed(alpha: float, delta: float, rate: float = 0.0) -> Optional[int]:
    """Fewest samples whose upper bound falls to ``alpha`` when losses occur at ``rate`` (None: never)."""
    if alpha >= 1.0:
        return 1
    if alpha <= 0.0:
        return None
    if rate <= 0.0:
        return math.ceil(math.log(delta) / math.log1p(-alpha))
    if rate >= alpha:
        return None
    low, high = 1, 1
    while upper_bound(math.floor(rate * high), high, delta) > alpha:
        low, high = high, high * 2
        if high > 10**9:
            return None
    while low < high:
        mid = (low + high) // 2
        if upper_bound(math.floor(rate * mid), mid, delta) <= alpha:
            high = mid
        else:
            low = mid + 1
    return high


def fixed_sequence(p_values: Union[Sequence[float], np.ndarray], delta: float) -> int:
    """How many hypotheses, in the given order, fixed-sequence testing rejects at level delta."""
    for j, p in enumerate(p_values):
        if not p <= delta:
            return j
    return len(p_values)


# -- the family -------------------------------------------------------------------------------------
def shared_family(policy: Any, num_exits: int) -> np.ndarray:
    """(G, K-1) score-space thresholds, most conservative first, chosen before seeing any data.

    Every early exit gets the same threshold. max_prob and margin: 1 - 10**-s; entropy (score is
    minus the normalised entropy): -10**-s; s from 8 down to 0. patience: streak lengths K-1 .. 1.
    """
    free = num_exits - 1
    kind = policy.kind
    if kind in ("max_prob", "margin"):
        values = 1.0 - 10.0**-SHARED_GRID_DECADES
    elif kind == "entropy":
        values = -(10.0**-SHARED_GRID_DECADES)
    elif kind == "patience":
        values = np.arange(max(free, 1), 0, -1, dtype=np.float64)
    else:
        raise InputError(
            f"policy {kind!r} has no certified calibration (its exits give embeddings, not classes); "
            "use --method empirical (no guarantee)"
        )
    return np.repeat(values[:, None], free, axis=1)


def describe_family(policy: Any, family: np.ndarray) -> str:
    if policy.kind == "patience":
        return f"one shared patience count for every early exit ({len(family)} values)"
    return (
        f"one shared {policy.kind} threshold for every early exit ({len(family)} log-spaced values, fixed in advance)"
    )


# -- evaluating candidates --------------------------------------------------------------------------
def exit_indices(scores: np.ndarray, family: np.ndarray) -> np.ndarray:
    """(N, G) exit each sample takes under each candidate: the first k with score >= threshold."""
    n, num = scores.shape
    taken = np.full((n, len(family)), num - 1, dtype=np.int64)
    undecided = np.ones((n, len(family)), dtype=bool)
    for k in range(num - 1):
        leave = undecided & (scores[:, k : k + 1] >= family[None, :, k])  # NaN never leaves
        taken[leave] = k
        undecided &= ~leave
    return taken


def per_sample_losses(preds: np.ndarray, taken: np.ndarray, labels: Optional[np.ndarray], risk: str) -> np.ndarray:
    """(N, G) binary losses of ``risk`` for the exits ``taken`` (see the module docstring)."""
    chosen = np.take_along_axis(preds, taken, axis=1)
    final = preds[:, -1][:, None]
    if risk == "disagreement":
        return chosen != final
    assert labels is not None
    truth = np.asarray(labels)[:, None]
    return (final == truth) & (chosen != truth)


@dataclasses.dataclass
class CertifiedChoice:
    """What testing the family found; ``index`` is None when no candidate lets anyone leave early."""

    family: np.ndarray  # (G, K-1) score thresholds
    loss_counts: np.ndarray  # (G,)
    p_values: np.ndarray  # (G,)
    expected_cost: np.ndarray  # (G,) per sample, under the cost model
    early_fraction: np.ndarray  # (G,) share of samples leaving before the last exit
    exit_fractions: np.ndarray  # (G, K)
    certified: int  # candidates 0 .. certified-1 are certified
    index: Optional[int]
    count: int
    alpha: float
    delta: float
    best_alpha: float  # smallest alpha for which any candidate that exits early would be certified
    best_index: Optional[int]  # the candidate that best_alpha reaches


def evaluate_family(
    scores: np.ndarray,
    preds: np.ndarray,
    labels: Optional[np.ndarray],
    stage_costs: Sequence[float],
    family: np.ndarray,
    risk: str,
    alpha: float,
    delta: float,
) -> CertifiedChoice:
    """Test every candidate of ``family`` on the calibration data and pick the cheapest certified."""
    n, num = scores.shape
    cum = np.cumsum(np.asarray(stage_costs, dtype=np.float64))
    counts = np.zeros(len(family), dtype=np.int64)
    cost = np.zeros(len(family))
    fractions = np.zeros((len(family), num))
    block = max(1, 4_000_000 // max(n, 1))  # bound the (N, G) work arrays to a few tens of MB
    for start in range(0, len(family), block):
        part = family[start : start + block]
        taken = exit_indices(scores, part)
        counts[start : start + len(part)] = per_sample_losses(preds, taken, labels, risk).sum(axis=0)
        cost[start : start + len(part)] = cum[taken].mean(axis=0)
        for k in range(num):
            fractions[start : start + len(part), k] = (taken == k).mean(axis=0)
    p_values = binomial_p_values(counts, n, alpha)
    certified = fixed_sequence(p_values, delta)
    early = 1.0 - fractions[:, -1]
    index: Optional[int] = None
    if certified:
        index = min(range(certified), key=lambda j: (cost[j], counts[j], j))
        if early[index] <= 0:
            index = None  # every certified candidate keeps every sample to the last exit
    # What this set can certify at best: fixed-sequence testing must pass every candidate up to
    # the first that lets anyone leave early, so the smallest alpha that gets there is the largest
    # upper confidence bound along the way.
    best_alpha, best_index = 1.0, None
    exits_early = np.flatnonzero(early > 0)
    if len(exits_early):
        best_index = int(exits_early[0])
        best_alpha = float(upper_bounds(counts[: best_index + 1], n, delta).max())
    return CertifiedChoice(
        family=family,
        loss_counts=counts,
        p_values=p_values,
        expected_cost=cost,
        early_fraction=early,
        exit_fractions=fractions,
        certified=certified,
        index=index,
        count=n,
        alpha=alpha,
        delta=delta,
        best_alpha=best_alpha,
        best_index=best_index,
    )


def too_few_samples_message(choice: CertifiedChoice, risk: str, confidence: float) -> str:
    """The one line for a calibration set that cannot certify any early exit at the requested bound."""
    n, alpha, delta = choice.count, choice.alpha, choice.delta
    what = RISK_NAMES[risk]
    if choice.best_index is None:
        return (
            f"{n} calibration samples: no threshold in the family lets any of them leave early; "
            "check the data matches the model, or use --method empirical (no guarantee)"
        )
    rate = choice.loss_counts[choice.best_index] / n
    need = samples_needed(alpha, delta, rate)
    needs = (
        f"{100 * alpha:.3g} points needs at least {need:,} samples"
        + (" with no early-exit error" if rate == 0 else f" at this data's error rate ({100 * rate:.2g}%)")
        if need is not None
        else f"{100 * alpha:.3g} points cannot be reached: the most conservative early exits already give {100 * rate:.2g}%"
    )
    return (
        f"{n} calibration samples can certify at best {100 * choice.best_alpha:.3g} points ({what}) at confidence "
        f"{confidence:g}; {needs}: give more data (--data), a larger --max-drop, or --method empirical (no guarantee)"
    )


def check_request(max_drop_points: float, confidence: Optional[float]) -> None:
    if not math.isfinite(max_drop_points) or max_drop_points < 0:
        raise InputError(f"--max-drop must be >= 0 accuracy points, got {max_drop_points}")
    if max_drop_points > 100:
        raise InputError(f"--max-drop is in accuracy points (0..100), got {max_drop_points}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise InputError(f"--confidence must be strictly between 0 and 1 (e.g. 0.9), got {confidence}")
    if confidence is not None and max_drop_points == 0:
        raise InputError(
            "--max-drop 0 cannot be certified (no finite sample proves a zero drop); give a positive bound, "
            "or --method empirical (no guarantee)"
        )


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Labels must index the model's classes (a label outside them would count as a wrong answer)."""
    if len(labels) and (int(labels.min()) < 0 or (num_classes and int(labels.max()) >= num_classes)):
        raise InputError(
            f"{source}: labels range {int(labels.min())}..{int(labels.max())} but the model has classes "
            f"0..{num_classes - 1}; fix the labels (or name class folders after the model's classes)"
        )


def data_fingerprint(tensors: np.ndarray, labels: Optional[np.ndarray] = None) -> str:
    """sha256 over the preprocessed calibration tensors (and labels): which data a certificate is about."""
    digest = hashlib.sha256()
    digest.update(repr(tuple(tensors.shape)).encode())
    digest.update(np.ascontiguousarray(tensors, dtype=np.float32).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return "sha256:" + digest.hexdigest()


def certificate_of(policy: Dict[str, Any]) -> Dict[str, Any]:
    """The certificate of a manifest ``policy`` entry: {} for convert's uncalibrated defaults; for
    thresholds calibrated before certificates existed, an empirical one made from their record."""
    if not (policy or {}).get("calibrated"):
        return {}
    certificate = policy.get("certificate")
    if certificate:
        return dict(certificate)
    record = policy.get("calibration") or {}
    return {
        "method": "empirical",
        "guarantee": "none: fitted before hisd-edge recorded certificates",
        "risk": "accuracy" if record.get("labels") == "labels" else "disagreement",
        "max_drop_points": record.get("max_drop_points"),
        "confidence": None,
        "count": record.get("count"),
        "data": record.get("data"),
    }


def certificate_text(certificate: Dict[str, Any]) -> str:
    """One line for people: what the thresholds promise (or that they promise nothing)."""
    if not certificate:
        return "thresholds not calibrated (convert's defaults): no guarantee; run hisd-edge thresholds"
    method = certificate.get("method")
    count = certificate.get("count")
    data = certificate.get("data")
    if method != "certified":
        return (
            f"thresholds fitted empirically on {count} samples of {data}: no guarantee "
            f"(drop {certificate.get('max_drop_points')} points met on those samples only)"
        )
    what = RISK_NAMES.get(str(certificate.get("risk")), str(certificate.get("risk")))
    return (
        f"certified: {what} <= {certificate.get('max_drop_points')} points with confidence "
        f"{certificate.get('confidence')} on new data like the {count} samples of {data} "
        f"({str(certificate.get('data_fingerprint', ''))[:19]}...)"
    )
