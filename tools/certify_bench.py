#!/usr/bin/env python3
"""Does the certificate hold, and what does it cost? Repeated calibration on random draws from a pool.

For a bundle and a pool of labelled data from one distribution: one all-exit pass over the pool
(every exit's outputs kept), stage costs measured once through the real early-exit path (or read
from a profile), then for every calibration size n, bound X and risk, ``--draws`` times: draw n
samples at random as the calibration set, the rest of the pool is the test set; fit thresholds
with the certified method (hisd_edge.runtime.risk, the code ``hisd-edge thresholds`` runs) and with
the empirical one; measure on the test set the realised accuracy drop against the final exit, the
realised risk, the expected speedup under the cost model and the exit distribution.

A certificate at confidence c promises: over draws, P(risk on new data > X) <= 1 - c. The test
set's realised risk is an estimate of that risk, so the violation rate counted on it carries the
test set's own noise as well; both violation rates (of the controlled risk, and of the accuracy
drop it bounds) are reported with a Clopper-Pearson interval over the draws.

    python tools/certify_bench.py engines/mnist --pool default:val,default:test --sizes 500,1000 \\
        --max-drop 0.5,1,2 --draws 200 --out results/certify_mnist_heldout.json

``--population`` instead treats the pool itself as the distribution: calibration sets are drawn
from it with replacement (i.i.d. from the pool's distribution, so n may reach the pool size) and
the risk of the chosen thresholds is computed exactly on the whole pool, without a test set's noise.
That checks the statistics themselves; the disjoint test set checks what a user would see.

``--families shared,split`` also tests the alternative family (per-exit thresholds chosen on a
third of the calibration set, tested on the rest), which is how the shared family was chosen.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from hisd_edge import atomic
from hisd_edge.bundle import Bundle
from hisd_edge.data import load_samples
from hisd_edge.runtime import risk as rc
from hisd_edge.runtime.backend import create_backend
from hisd_edge.runtime.policies import make_policy
from hisd_edge.runtime.thresholds import (
    ExitOutputs,
    calibrate,
    collect_exit_outputs,
    exit_predictions,
    measure_stage_latency_ms,
    read_profile_costs,
)


def load_pool(bundle: Bundle, sources: List[str]) -> Dict[str, Any]:
    tensors, labels = [], []
    for source in sources:
        samples = load_samples(source)
        tensors.append(samples.tensors(bundle.preprocessing))
        got = samples.labels_for(bundle.class_names, source)
        if got is None:
            raise SystemExit(f"{source}: the pool needs labels (the accuracy drop is measured on it)")
        labels.append(got)
    return {"tensors": np.concatenate(tensors), "labels": np.concatenate(labels)}


def split_family(
    scores: np.ndarray, preds: np.ndarray, labels: Optional[np.ndarray], cum: np.ndarray, risk: str, grid: int = 16
) -> np.ndarray:
    """The alternative family: per-exit thresholds, ordered by their risk on this (separate) data.

    Candidates per exit: ``grid`` quantiles of its scores plus "never"; for every risk level seen,
    the cheapest vector whose empirical risk is within it; ordered from the lowest level up.
    """
    num = scores.shape[1]
    per_exit = [np.concatenate([[np.inf], np.quantile(scores[:, k], np.linspace(1, 0, grid))]) for k in range(num - 1)]
    family = np.array(list(itertools.product(*per_exit)), dtype=np.float64)
    taken = rc.exit_indices(scores, family)
    losses = rc.per_sample_losses(preds, taken, labels, risk).mean(axis=0)
    cost = cum[taken].mean(axis=0)
    path: List[int] = []
    for level in np.unique(losses):
        ok = np.flatnonzero(losses <= level)
        best = int(ok[np.argmin(cost[ok])])
        if not path or best != path[-1]:
            path.append(best)
    return family[path]


def evaluate_on(
    scores: np.ndarray, preds: np.ndarray, labels: np.ndarray, cum: np.ndarray, thresholds: np.ndarray
) -> Dict[str, Any]:
    """Realised drop, risks, speedup and exit distribution of one threshold vector (score space)."""
    taken = rc.exit_indices(scores, thresholds[None, :])[:, 0]
    chosen = preds[np.arange(len(preds)), taken]
    final = preds[:, -1]
    return {
        "drop_points": 100.0 * (float((final == labels).mean()) - float((chosen == labels).mean())),
        "accuracy_risk_points": 100.0 * float(((final == labels) & (chosen != labels)).mean()),
        "disagreement_points": 100.0 * float((chosen != final).mean()),
        "speedup": float(cum[-1] / cum[taken].mean()),
        "exit_fractions": (np.bincount(taken, minlength=scores.shape[1]) / len(taken)).tolist(),
    }


def summarise(rows: List[Dict[str, Any]], bound: float, delta: float, key: str, test_n: int) -> Dict[str, Any]:
    drops = np.array([r["drop_points"] for r in rows])
    risks = np.array([r[key] for r in rows])
    out: Dict[str, Any] = {"draws": len(rows)}
    for name, values in (("drop", drops), ("risk", risks)):
        count = int((values > bound + 1e-9).sum())
        out[f"{name}_violations"] = count
        out[f"{name}_violation_rate"] = count / len(rows)
        out[f"{name}_violation_interval"] = rc.two_sided_interval(count, len(rows), 0.95)
    # A test set of test_n samples measures the risk with noise of its own: count a violation only
    # where the test set itself shows (95 % one-sided Clopper-Pearson lower bound) a risk above X.
    stats = rc.import_scipy_stats()
    losses = np.round(risks / 100.0 * test_n).astype(int)
    lower = np.where(losses > 0, stats.beta.ppf(0.05, np.maximum(losses, 1), test_n - losses + 1), 0.0)
    out["risk_significant_violations"] = int((lower > bound / 100.0).sum())
    out["risk_significant_violation_rate"] = out["risk_significant_violations"] / len(rows)
    out["mean_drop_points"] = float(drops.mean())
    out["mean_risk_points"] = float(risks.mean())
    out["mean_speedup"] = float(np.mean([r["speedup"] for r in rows]))
    out["median_speedup"] = float(np.median([r["speedup"] for r in rows]))
    out["mean_exit_fractions"] = np.mean([r["exit_fractions"] for r in rows], axis=0).tolist()
    out["certified_any_early"] = float(np.mean([r.get("certified", True) for r in rows]))
    out["allowed_violation_rate"] = delta
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--pool", required=True, help="comma-separated labelled data sources forming the pool")
    parser.add_argument("--sizes", default="500,2000,5000", help="calibration set sizes (those the pool allows)")
    parser.add_argument("--min-test", type=int, default=500, help="keep at least this many pool samples for testing")
    parser.add_argument("--max-drop", default="0.5,1,2", help="bounds X in accuracy points")
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--risks", default="accuracy,disagreement")
    parser.add_argument("--families", default="shared", help="shared and/or split (see the module docstring)")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument(
        "--population", action="store_true", help="draw with replacement; exact risk on the whole pool (see above)"
    )
    parser.add_argument("--policy", default="max_prob")
    parser.add_argument("--costs", default=None, help="profile.json with per-stage costs (default: measured here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    bundle = Bundle.open(args.bundle)
    sources = [s.strip() for s in args.pool.split(",") if s.strip()]
    pool = load_pool(bundle, sources)
    n_pool = len(pool["labels"])
    num = bundle.num_stages
    began = time.time()
    with create_backend("onnxruntime", bundle) as runner:
        outputs = collect_exit_outputs(runner, pool["tensors"], progress=True)
        if args.costs:
            stage_costs, cost_meta = read_profile_costs(Path(args.costs), num)
        else:
            probe = make_policy(args.policy, [None] * num, num)
            stage_costs = measure_stage_latency_ms(runner, probe, pool["tensors"][:1], reps=300)
            cost_meta = {
                "source": "measured here through the early-exit path, batch 1, median of 300",
                **runner.describe(),
            }
    cum = np.cumsum(stage_costs)
    policy = make_policy(args.policy, [None] * num, num)
    scores = policy.all_scores(outputs.confidences, outputs.outputs)
    preds = exit_predictions(outputs, "logits", None)
    labels = pool["labels"]
    delta = 1.0 - args.confidence
    family = rc.shared_family(policy, num)
    rng = np.random.default_rng(args.seed)
    limit = n_pool if args.population else n_pool - args.min_test
    sizes = [int(s) for s in args.sizes.split(",") if int(s) <= limit]
    bounds = [float(x) for x in args.max_drop.split(",")]
    risks = [r.strip() for r in args.risks.split(",")]
    families = [f.strip() for f in args.families.split(",")]
    results: List[Dict[str, Any]] = []
    for n in sizes:
        if args.population:
            draws = [np.concatenate([rng.integers(0, n_pool, n), np.arange(n_pool)]) for _ in range(args.draws)]
        else:
            draws = [rng.permutation(n_pool) for _ in range(args.draws)]
        for bound, risk, fam in itertools.product(bounds, risks, families):
            key = "accuracy_risk_points" if risk == "accuracy" else "disagreement_points"
            certified_rows, empirical_rows = [], []
            for order in draws:
                cal, test = order[:n], order[n:]
                cal_labels = labels[cal] if risk == "accuracy" else None
                if fam == "shared":
                    choice = rc.evaluate_family(
                        scores[cal], preds[cal], cal_labels, stage_costs, family, risk, bound / 100, delta
                    )
                    chosen_family = family
                else:
                    third = n // 3
                    path = split_family(
                        scores[cal[:third]],
                        preds[cal[:third]],
                        None if cal_labels is None else cal_labels[:third],
                        cum,
                        risk,
                    )
                    rest = cal[third:]
                    choice = rc.evaluate_family(
                        scores[rest],
                        preds[rest],
                        None if cal_labels is None else labels[rest],
                        stage_costs,
                        path,
                        risk,
                        bound / 100,
                        delta,
                    )
                    chosen_family = path
                if choice.index is None:
                    thresholds = np.full(num - 1, np.inf)
                else:
                    thresholds = chosen_family[choice.index]
                row = evaluate_on(scores[test], preds[test], labels[test], cum, thresholds)
                row["certified"] = choice.index is not None
                certified_rows.append(row)
                if fam == "shared":
                    emp = calibrate(
                        args.policy,
                        ExitOutputs(
                            [o[cal] for o in outputs.outputs],
                            [None if c is None else c[cal] for c in outputs.confidences],
                        ),
                        cal_labels,
                        stage_costs,
                        bound,
                    )
                    emp_thresholds = np.array([emp.policy.score_threshold(k) for k in range(num - 1)])
                    empirical_rows.append(evaluate_on(scores[test], preds[test], labels[test], cum, emp_thresholds))
            entry = {
                "n": n,
                "test_n": n_pool if args.population else n_pool - n,
                "evaluated_on": "the whole pool (population)" if args.population else "the disjoint rest of the pool",
                "max_drop_points": bound,
                "risk": risk,
                "family": fam,
                "certified": summarise(certified_rows, bound, delta, key, len(order) - n),
            }
            if empirical_rows:
                entry["empirical"] = summarise(empirical_rows, bound, delta, key, len(order) - n)
            results.append(entry)
            c = entry["certified"]
            e = entry.get("empirical")
            print(
                f"n={n:5d} X={bound:4g} {risk:12s} {fam:6s} certified: violations drop {c['drop_violation_rate']:.3f} "
                f"risk {c['risk_violation_rate']:.3f} (significant {c['risk_significant_violation_rate']:.3f}; allowed "
                f"{delta:.2f}), speedup {c['mean_speedup']:.2f}"
                + (
                    f" | empirical: violations drop {e['drop_violation_rate']:.3f}, speedup {e['mean_speedup']:.2f}"
                    if e
                    else ""
                ),
                flush=True,
            )
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "bundle": bundle.name,
        "pool": sources,
        "pool_size": n_pool,
        "pool_final_accuracy": float((preds[:, -1] == labels).mean()),
        "pool_exit_accuracy": [float((preds[:, k] == labels).mean()) for k in range(num)],
        "stage_costs_ms": [float(c) for c in stage_costs],
        "costs": cost_meta,
        "confidence": args.confidence,
        "draws": args.draws,
        "family": rc.describe_family(policy, family),
        "seconds": round(time.time() - began, 1),
        "results": results,
    }
    atomic.write_json(args.out, report)
    print(f"wrote {args.out} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
