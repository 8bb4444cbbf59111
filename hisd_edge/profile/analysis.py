"""From measured blocks to per-exit figures with confidence intervals (see :mod:`.measure` for the design).

For block b of exit k in round r, with window length T, N inferences (rows) inside it and mean power
P over it (the integral divided by the covered time):

    total_k,r   = P x T / N
    dynamic_k,r = (P - P_idle(t_b)) x T / N

where ``P_idle(t_b)`` is the idle power linearly interpolated between the idle brackets around the
block's midpoint. Per exit the figure is the mean over rounds with a Student-t interval; stage j's is
the mean of the paired per-round differences ``exit j - exit j-1``. The same runs per rail.

A block whose window has a gap (the power source failed) is left out, and the notes say which; an
exit left with no usable block has no energy, with the reason. The model check compares, per round,
the energy of the real early-exit block with ``sum_k f_k x E_k,r``, where ``f_k`` are the exit
fractions the early-exit block actually took.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.profile.measure import EARLY, EXIT, IDLE, Block
from hisd_edge.profile.stats import mean_ci, overlap

MIN_COVERAGE = 1.0 - 1e-9  # a window with any gap is not used


def _usable(block: Block) -> bool:
    total = block.energy.get("total")
    return total is not None and total.covered_s > 0 and total.coverage >= MIN_COVERAGE and not total.gaps


def idle_power_at(idle_blocks: List[Block], t: float, key: str) -> Optional[float]:
    """Idle power (``key``: "total" or a rail) at time t, interpolated between the idle brackets around it."""
    points = [(b.mid_s, b.energy[key].mean_power_mw) for b in idle_blocks if _usable(b) and key in b.energy]
    points = [(m, p) for m, p in points if p is not None]
    if not points:
        return None
    points.sort()
    if t <= points[0][0]:
        return float(points[0][1])
    if t >= points[-1][0]:
        return float(points[-1][1])
    for (m0, p0), (m1, p1) in zip(points, points[1:]):
        if m0 <= t <= m1:
            return float(p0 + (p1 - p0) * (t - m0) / (m1 - m0)) if m1 > m0 else float(p0)
    return float(points[-1][1])


def block_energy(block: Block, idle_blocks: List[Block], key: str) -> Optional[Dict[str, Optional[float]]]:
    """Per-inference total and dynamic energy (mJ) of one block, for ``key`` ("total" or a rail)."""
    window = block.energy.get(key)
    if window is None or window.mean_power_mw is None or block.samples <= 0:
        return None
    per = block.window_s / block.samples
    idle = idle_power_at(idle_blocks, block.mid_s, key)
    return {
        "total": window.mean_power_mw * per,
        "dynamic": None if idle is None else (window.mean_power_mw - idle) * per,
        "mean_power_mw": window.mean_power_mw,
        "idle_power_mw": idle,
    }


def _stat(values: Sequence[Optional[float]], confidence: float) -> Dict[str, Any]:
    return mean_ci([v for v in values if v is not None], confidence)


def _energy_entry(per_round: List[Dict[str, Optional[float]]], confidence: float) -> Optional[Dict[str, Any]]:
    if not per_round:
        return None
    total = _stat([e["total"] for e in per_round], confidence)
    dynamic = _stat([e["dynamic"] for e in per_round], confidence)
    return {
        "total": total["mean"],
        "dynamic": dynamic["mean"],
        "total_ci": total["ci"],
        "dynamic_ci": dynamic["ci"],
        "rounds": total["n"],
    }


def analyse_batch(
    blocks: List[Block],
    n_exits: int,
    rails: Sequence[str],
    confidence: float,
) -> Dict[str, Any]:
    """Per exit and stage: energy (total, dynamic; per rail) with intervals; the model check's energy part."""
    idle_blocks = [b for b in blocks if b.kind == IDLE]
    excluded = [b for b in blocks if b.kind != IDLE and not _usable(b)]
    rounds = sorted({b.round for b in blocks if b.kind == EXIT})
    keys = ["total", *rails]
    # per_round[key][k][r] -> energy dict (or absent)
    per_round: Dict[str, List[Dict[int, Dict[str, Optional[float]]]]] = {
        key: [{} for _ in range(n_exits)] for key in keys
    }
    loop_ms: List[Dict[int, float]] = [{} for _ in range(n_exits)]
    details: List[Dict[str, Any]] = [
        {"blocks_used": 0, "window_s": 0.0, "covered_s": 0.0, "inferences": 0, "power_samples": 0, "idle": []}
        for _ in range(n_exits)
    ]
    for block in blocks:
        if block.kind != EXIT or block.exit is None or not _usable(block):
            continue
        k = block.exit
        for key in keys:
            energy = block_energy(block, idle_blocks, key)
            if energy is not None:
                per_round[key][k][block.round] = energy
        if block.calls:
            loop_ms[k][block.round] = 1e3 * block.window_s / block.calls
        d = details[k]
        total = block.energy["total"]
        d["blocks_used"] += 1
        d["window_s"] += block.window_s
        d["covered_s"] += total.covered_s
        d["inferences"] += block.samples
        d["power_samples"] += total.samples
        idle = idle_power_at(idle_blocks, block.mid_s, "total")
        if idle is not None:
            d["idle"].append(idle)
    exits: List[Dict[str, Any]] = []
    for k in range(n_exits):
        entry: Dict[str, Any] = {"index": k}
        totals = list(per_round["total"][k].values())
        entry["energy_mj"] = _energy_entry(totals, confidence)
        entry["rails_mj"] = {
            rail: _energy_entry(list(per_round[rail][k].values()), confidence) for rail in rails
        } or None
        loop = _stat(list(loop_ms[k].values()), confidence)
        d = details[k]
        mean_power = _stat([e["mean_power_mw"] for e in totals], confidence)
        entry["energy"] = (
            {
                "method": "interleaved rounds, paired with idle brackets",
                "rounds": len(totals),
                "window_s": d["window_s"] / max(d["blocks_used"], 1),
                "covered_s": d["covered_s"],
                "coverage": d["covered_s"] / d["window_s"] if d["window_s"] else 0.0,
                "complete": True,
                "samples": d["power_samples"],
                "inferences": d["inferences"],
                "mean_power_mw": mean_power["mean"],
                "mean_power_mw_ci": mean_power["ci"],
                "idle_power_mw": float(np.mean(d["idle"])) if d["idle"] else None,
                "loop_latency_ms": loop["mean"],
                "loop_latency_ms_ci": loop["ci"],
            }
            if totals
            else None
        )
        exits.append(entry)
    stages: List[Dict[str, Any]] = []
    for j in range(n_exits):
        entry = {"index": j}
        for key in keys:
            diffs: List[Dict[str, Optional[float]]] = []
            for r in rounds:
                here = per_round[key][j].get(r)
                prev = per_round[key][j - 1].get(r) if j > 0 else {"total": 0.0, "dynamic": 0.0}
                if here is None or prev is None:
                    continue
                diffs.append(
                    {
                        "total": None
                        if here["total"] is None or prev["total"] is None
                        else here["total"] - prev["total"],
                        "dynamic": None
                        if here["dynamic"] is None or prev["dynamic"] is None
                        else here["dynamic"] - prev["dynamic"],
                    }
                )
            value = _energy_entry(diffs, confidence)
            if key == "total":
                entry["energy_mj"] = value
            else:
                entry.setdefault("rails_mj", {})[key] = value
        stages.append(entry)
    early = [b for b in blocks if b.kind == EARLY and _usable(b)]
    check = _energy_check(early, idle_blocks, per_round["total"], confidence)
    return {
        "exits": exits,
        "stages": stages,
        "model_check_energy": check,
        "excluded_blocks": [b.to_dict() for b in excluded],
        "idle": _idle_summary(idle_blocks, rails, confidence),
    }


def _idle_summary(idle_blocks: List[Block], rails: Sequence[str], confidence: float) -> Optional[Dict[str, Any]]:
    usable = [b for b in idle_blocks if _usable(b)]
    if not idle_blocks:
        return None
    powers = _stat([b.energy["total"].mean_power_mw for b in usable], confidence)
    first = idle_blocks[0].energy.get("total")
    return {
        "power_mw": powers["mean"],
        "power_mw_ci": powers["ci"],
        "brackets": len(idle_blocks),
        "brackets_used": len(usable),
        "window_s": idle_blocks[0].window_s,
        "covered_s": sum(b.energy["total"].covered_s for b in idle_blocks if b.energy.get("total") is not None),
        "samples": sum(b.energy["total"].samples for b in idle_blocks if b.energy.get("total") is not None),
        "complete": len(usable) == len(idle_blocks),
        "gaps": [] if first is None else first.gaps,
        "drift_mw": (
            usable[-1].energy["total"].mean_power_mw - usable[0].energy["total"].mean_power_mw
            if len(usable) >= 2
            else None
        ),
        "rails_power_mw": {
            rail: _stat([b.energy[rail].mean_power_mw for b in usable if rail in b.energy], confidence)["mean"]
            for rail in rails
        },
    }


def _energy_check(
    early: List[Block],
    idle_blocks: List[Block],
    per_exit_round: List[Dict[int, Dict[str, Optional[float]]]],
    confidence: float,
) -> Optional[Dict[str, Any]]:
    """Measured energy per sample of the real early-exit pass vs the per-exit prediction, per round."""
    measured: Dict[str, List[float]] = {"total": [], "dynamic": []}
    predicted: Dict[str, List[float]] = {"total": [], "dynamic": []}
    diffs: Dict[str, List[float]] = {"total": [], "dynamic": []}
    fractions: List[List[float]] = []
    for block in early:
        counts = block.exit_counts or []
        rows = sum(counts)
        energy = block_energy(block, idle_blocks, "total")
        if energy is None or rows <= 0:
            continue
        f = [c / rows for c in counts]
        fractions.append(f)
        for kind in ("total", "dynamic"):
            got = energy[kind]
            parts = [per_exit_round[k].get(block.round, {}).get(kind) for k in range(len(f))]
            if got is None or any(p is None and f[k] > 0 for k, p in enumerate(parts)):
                continue
            pred = math.fsum(f[k] * (parts[k] or 0.0) for k in range(len(f)))
            measured[kind].append(got)
            predicted[kind].append(pred)
            diffs[kind].append(got - pred)
    if not fractions:
        return None
    out: Dict[str, Any] = {"rounds": len(fractions), "exit_fraction": np.mean(fractions, axis=0).tolist()}
    for kind in ("total", "dynamic"):
        m, p, d = (_stat(v, confidence) for v in (measured[kind], predicted[kind], diffs[kind]))
        out[kind] = {
            "measured": m["mean"],
            "measured_ci": m["ci"],
            "predicted": p["mean"],
            "predicted_ci": p["ci"],
            "difference": d["mean"],
            "difference_ci": d["ci"],
            "ratio": (m["mean"] / p["mean"]) if m["mean"] is not None and p["mean"] else None,
        }
    return out


def latency_check(latency: Dict[str, Any], confidence: float) -> Optional[Dict[str, Any]]:
    """Measured latency of real early-exit calls vs ``sum_k f_k x latency_k`` of the same round."""
    early_ms, early_exits, paired = (
        latency.get("early_ms") or [],
        latency.get("early_exits") or [],
        latency.get("paired") or [],
    )
    if not early_ms or len(early_ms) != len(paired):
        return None
    n = len(paired[0]) if paired else 0
    measured, predicted, diffs, fractions = [], [], [], []
    for ms, exits, per_exit in zip(early_ms, early_exits, paired):
        if not exits or any(math.isnan(v) for v in per_exit):
            continue
        counts = np.bincount(np.asarray(exits, dtype=np.int64), minlength=n)
        f = counts / counts.sum()
        # Per call: a call runs stage j for the rows still in the batch; the per-exit figure is per call.
        pred = float(np.dot(f, per_exit))
        measured.append(ms)
        predicted.append(pred)
        diffs.append(ms - pred)
        fractions.append(f.tolist())
    if not measured:
        return None
    m, p, d = (_stat(v, confidence) for v in (measured, predicted, diffs))
    return {
        "calls": len(measured),
        "exit_fraction": np.mean(fractions, axis=0).tolist(),
        "measured": m["mean"],
        "measured_ci": m["ci"],
        "predicted": p["mean"],
        "predicted_ci": p["ci"],
        "difference": d["mean"],
        "difference_ci": d["ci"],
        "ratio": (m["mean"] / p["mean"]) if m["mean"] is not None and p["mean"] else None,
    }


def latency_stats(values_ms: Sequence[float], confidence: float) -> Dict[str, Any]:
    """p50/p90/p99/mean/min/count and the mean's interval."""
    arr = np.asarray(values_ms, dtype=np.float64)
    if arr.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "min": None, "count": 0, "ci": None}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    stats = mean_ci(arr.tolist(), confidence)
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "count": int(arr.size),
        "ci": stats["ci"],
    }


def indistinguishable(entries: Sequence[Optional[Dict[str, Any]]], key: str) -> List[Tuple[int, int]]:
    """Consecutive exits whose ``key`` intervals (``key + '_ci'``) overlap: they cannot be told apart."""
    pairs = []
    for k in range(len(entries) - 1):
        a, b = entries[k], entries[k + 1]
        if not a or not b or a.get(f"{key}_ci") is None or b.get(f"{key}_ci") is None:
            continue
        if overlap(a[f"{key}_ci"], b[f"{key}_ci"]):
            pairs.append((k, k + 1))
    return pairs
