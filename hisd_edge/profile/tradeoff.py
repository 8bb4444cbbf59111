"""Accuracy and exit distribution across thresholds, priced with the measured per-exit costs.

The profiler runs every sample through every exit once and keeps, per sample and exit, the
policy's score and whether the exit's prediction is right. Any threshold setting can then be
evaluated exactly without running the model again: a sample leaves at the first exit whose score
reaches its threshold (the last exit always accepts). Its expected cost is the measured cost of
reaching that exit, so the mean latency/energy of a setting is ``sum_k fraction_k * cost_k``.

:func:`sweep` moves one shared threshold over the non-final exits; :func:`per_exit_grid` and
:func:`sweep_settings` give every non-final exit its own threshold (the report's sweep). The
Pareto front keeps the settings that no other setting beats on both cost and accuracy. Energy is priced twice: total (what
the board draws per inference when it does nothing else) and dynamic (above idle: what an inference
adds when the board runs at a fixed frame rate and idles in between).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def exit_indices(scores: np.ndarray, thresholds: Sequence[Optional[float]]) -> np.ndarray:
    """Index of the exit each sample leaves at: first k with scores[:, k] >= thresholds[k].

    ``scores`` is (N, K), higher = more confident; ``None`` thresholds never accept (the last exit
    always does, whatever its threshold).
    """
    n, k_total = scores.shape
    chosen = np.full(n, k_total - 1, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    for k in range(k_total - 1):
        t = thresholds[k] if k < len(thresholds) else None
        if t is None:
            continue
        leave = undecided & (scores[:, k] >= t)
        chosen[leave] = k
        undecided &= ~leave
    return chosen


def evaluate(
    scores: np.ndarray,
    correct: Optional[np.ndarray],
    thresholds: Sequence[Optional[float]],
    exit_latency_ms: Sequence[Optional[float]],
    exit_energy_mj: Sequence[Optional[float]],
    exit_dynamic_energy_mj: Optional[Sequence[Optional[float]]] = None,
) -> Dict[str, Any]:
    """Accuracy, exit fractions and expected mean costs of one threshold setting."""
    chosen = exit_indices(scores, thresholds)
    n, k_total = scores.shape
    fractions = np.bincount(chosen, minlength=k_total).astype(np.float64) / max(n, 1)
    accuracy = float(correct[np.arange(n), chosen].mean()) if correct is not None and n else None

    def expected(costs: Sequence[Optional[float]]) -> Optional[float]:
        if len(costs) != k_total or any(c is None for c in costs):
            return None
        return float(np.dot(fractions, np.asarray(costs, dtype=np.float64)))

    return {
        "thresholds": [None if t is None else float(t) for t in thresholds],
        "accuracy": accuracy,
        "exit_fraction": fractions.tolist(),
        "mean_latency_ms": expected(exit_latency_ms),
        "mean_energy_mj": expected(exit_energy_mj),
        "mean_dynamic_energy_mj": expected(exit_dynamic_energy_mj) if exit_dynamic_energy_mj is not None else None,
    }


def pareto_flags(costs: Sequence[Optional[float]], accuracies: Sequence[Optional[float]]) -> List[bool]:
    """True for points no other point beats: lower-or-equal cost and higher-or-equal accuracy, one strictly.

    Sorted, not pairwise: a per-exit sweep has thousands of points.
    """
    valid = [i for i, (c, a) in enumerate(zip(costs, accuracies)) if c is not None and a is not None]
    flags = [False] * len(costs)
    if not valid:
        return flags
    c = np.asarray([costs[i] for i in valid], dtype=np.float64)
    a = np.asarray([accuracies[i] for i in valid], dtype=np.float64)
    order = np.lexsort((-a, c))  # cost ascending, then accuracy descending
    best_cheaper = -np.inf  # best accuracy among points strictly cheaper than the current cost
    position = 0
    while position < len(order):
        end = position
        while end < len(order) and c[order[end]] == c[order[position]]:
            end += 1
        group = order[position:end]
        top = a[group].max()  # the best at this cost; anything below it at the same cost is dominated
        for i in group:
            flags[valid[int(i)]] = bool(a[i] == top and a[i] > best_cheaper)
        best_cheaper = max(best_cheaper, top)
        position = end
    return flags


def per_exit_grid(scores: np.ndarray, points: int, max_settings: int = 4096) -> List[List[Optional[float]]]:
    """Threshold settings with one threshold per non-final exit: each exit's own score quantiles
    (plus "never leave here"), every combination, thinned so that at most ``max_settings`` remain."""
    k_total = scores.shape[1]
    free = k_total - 1
    if free < 1:
        return [[None]]
    per_exit = max(2, min(points, int(max_settings ** (1.0 / free))) - 1)
    axes: List[List[Optional[float]]] = []
    for k in range(free):
        finite = scores[:, k][np.isfinite(scores[:, k])]
        values: List[Optional[float]] = []
        if finite.size:
            values = sorted(set(np.quantile(finite, np.linspace(0.0, 1.0, per_exit)).tolist()))
        axes.append([None, *values])  # "never leave here" first: of settings with one outcome, the simplest is kept
    settings: List[List[Optional[float]]] = [[]]
    for axis in axes:
        settings = [[*s, t] for s in settings for t in axis]
    return [[*s, None] for s in settings]


def sweep_settings(
    scores: np.ndarray,
    correct: Optional[np.ndarray],
    settings: Sequence[Sequence[Optional[float]]],
    exit_latency_ms: Sequence[Optional[float]],
    exit_energy_mj: Sequence[Optional[float]],
    exit_dynamic_energy_mj: Optional[Sequence[Optional[float]]] = None,
) -> List[Dict[str, Any]]:
    """Evaluate each per-exit threshold setting (score space), Pareto-flagged on every cost.

    Settings that send every sample to the same exit as an earlier one are left out (a threshold
    behind an exit every sample already leaves at changes nothing): one point per distinct outcome.
    """
    points = []
    seen = set()
    for thresholds in settings:
        outcome = exit_indices(scores, list(thresholds)).tobytes()
        if outcome in seen:
            continue
        seen.add(outcome)
        point = evaluate(scores, correct, list(thresholds), exit_latency_ms, exit_energy_mj, exit_dynamic_energy_mj)
        shared = set(thresholds[:-1])
        if len(shared) == 1:  # one value for every non-final exit (None: never leave early)
            point["threshold"] = shared.pop()
        points.append(point)
    _flag(points)
    return points


def _flag(points: List[Dict[str, Any]]) -> None:
    accuracies = [p["accuracy"] for p in points]
    for key, flag in (
        ("mean_latency_ms", "pareto_latency"),
        ("mean_energy_mj", "pareto_energy"),
        ("mean_dynamic_energy_mj", "pareto_dynamic_energy"),
    ):
        for p, f in zip(points, pareto_flags([p[key] for p in points], accuracies)):
            p[flag] = f


def default_grid(points: int = 41) -> List[float]:
    """Shared thresholds from 0 (everything leaves at exit 0) to 1 (nothing leaves early), denser near 1."""
    u = np.linspace(0.0, 1.0, points)
    return sorted(set(np.round(1.0 - (1.0 - u) ** 2, 6).tolist()))


def sweep(
    scores: np.ndarray,
    correct: Optional[np.ndarray],
    exit_latency_ms: Sequence[Optional[float]],
    exit_energy_mj: Sequence[Optional[float]],
    grid: Optional[Sequence[Optional[float]]] = None,
    exit_dynamic_energy_mj: Optional[Sequence[Optional[float]]] = None,
) -> List[Dict[str, Any]]:
    """Evaluate a shared threshold over the non-final exits at every grid value, Pareto-flagged.

    A ``None`` grid value is the "no early exit" setting (every sample runs to the last exit).
    """
    k_total = scores.shape[1]
    points = []
    for t in grid if grid is not None else default_grid():
        shared = None if t is None else float(t)
        point = evaluate(
            scores, correct, [shared] * (k_total - 1) + [None], exit_latency_ms, exit_energy_mj, exit_dynamic_energy_mj
        )
        point["threshold"] = shared
        points.append(point)
    _flag(points)
    ordered = [
        "threshold",
        "thresholds",
        "accuracy",
        "exit_fraction",
        "mean_latency_ms",
        "mean_energy_mj",
        "mean_dynamic_energy_mj",
        "pareto_latency",
        "pareto_energy",
        "pareto_dynamic_energy",
    ]
    return [{key: p[key] for key in ordered} for p in points]
