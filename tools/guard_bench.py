#!/usr/bin/env python3
"""Which out-of-distribution score should guard exit 0, how well does it detect, and what does it cost?

For a bundle, in-distribution data (``--cal`` to fit and calibrate, ``--test`` for false alarms)
and an ``--other`` dataset: every candidate score is fit on a seeded half of ``--cal`` and
calibrated on the other half (split conformal, as hisd_edge.runtime.guard does), at each
``--rates`` false-alarm rate; then the share flagged of: uniform noise, blank/constant frames
(black, white, random grey levels), Gaussian-noised test images (sigma 32, 64, 128 on 0..255),
and the other dataset; and the false-alarm rate on ``--test``. Candidates: max softmax
probability, max logit, energy (-logsumexp), Mahalanobis on exit 0's logits, on exit 0's pooled
features, and on pooled features + input mean/std (the shipped guard, through ``fit_guard``).

Then the shipped guard alone: its false-alarm rate over ``--draws`` random calibration draws of
``--draw-size`` from the in-distribution pool (``--cal`` + ``--test``, measured on the rest), and
its cost per input at batch 1 through the real early-exit loop (with vs without the guard,
interleaved, medians and the median of paired differences).

    python tools/guard_bench.py engines/mnist --cal default:val --test default:test \\
        --other idx:/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --out results/guard_mnist.json

A source ``idx:PATH`` reads an IDX image file (.gz or not) directly.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from hisd_edge import atomic
from hisd_edge.bundle import Bundle
from hisd_edge.data import load_samples
from hisd_edge.preprocess import preprocess_batch
from hisd_edge.runtime import guard as g
from hisd_edge.runtime.backend import create_backend
from hisd_edge.runtime.early_exit import run_early_exit
from hisd_edge.runtime.policies import make_policy


def read_source(source: str, limit: Optional[int] = None) -> np.ndarray:
    """Raw images (N, H, W[, C]) from a data source, or from ``idx:PATH``."""
    if source.startswith("idx:"):
        path = Path(source[4:])
        if path.suffix == ".gz":
            with gzip.open(path) as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
        count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
        images = np.frombuffer(raw, np.uint8, offset=16, count=count * rows * cols).reshape(count, rows, cols)
    else:
        images = np.stack(load_samples(source).images)
    return images[:limit] if limit else images


def stage0(bundle: Bundle, backend: Any, tensors: np.ndarray) -> Dict[str, np.ndarray]:
    """Exit 0's logits and pooled features for every row (batches of 256)."""
    logits, pooled = [], []
    for start in range(0, len(tensors), 256):
        backend.start(tensors[start : start + 256])
        res = backend.run_stage(0)
        logits.append(res.exit_output())
        pooled.append(res.pooled_features())
    return {"inputs": tensors, "logits": np.concatenate(logits), "pooled": np.concatenate(pooled)}


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit_scorer(name: str, fit: Dict[str, np.ndarray]) -> Callable[[Dict[str, np.ndarray]], np.ndarray]:
    """Higher score = stranger. Mahalanobis variants are fit with the guard's own estimator."""
    if name == "max softmax prob":
        return lambda d: -softmax(d["logits"]).max(axis=1)
    if name == "max logit":
        return lambda d: -d["logits"].max(axis=1)
    if name == "energy":
        return lambda d: -(d["logits"].max(1) + np.log(np.exp(d["logits"] - d["logits"].max(1, keepdims=True)).sum(1)))
    columns = {
        "Mahalanobis, exit-0 logits": lambda d: d["logits"],
        "Mahalanobis, pooled feat0": lambda d: d["pooled"],
        "Mahalanobis, pooled feat0 + input mean and std (shipped)": lambda d: g.guard_features(
            d["inputs"], d["pooled"]
        ),
    }[name]
    guard = g.fit_mahalanobis(columns(fit), fit["logits"].argmax(1))
    return lambda d: guard.scores(columns(d))


SCORES = [
    "max softmax prob",
    "max logit",
    "energy",
    "Mahalanobis, exit-0 logits",
    "Mahalanobis, pooled feat0",
    "Mahalanobis, pooled feat0 + input mean and std (shipped)",
]


def take(d: Dict[str, np.ndarray], rows: np.ndarray) -> Dict[str, np.ndarray]:
    return {k: v[rows] for k, v in d.items()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--cal", default="default:val")
    parser.add_argument("--test", default="default:test")
    parser.add_argument("--other", required=True, help="the other dataset (a data source, or idx:PATH)")
    parser.add_argument("--other-name", default=None)
    parser.add_argument("--rates", default="0.05,0.01")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--draw-size", type=int, default=500)
    parser.add_argument("--reps", type=int, default=2000, help="batch-1 repetitions for the cost")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    bundle = Bundle.open(args.bundle)
    spec = bundle.preprocessing
    rng = np.random.default_rng(args.seed)
    cal_images, test_images = read_source(args.cal), read_source(args.test)
    other = read_source(args.other, 2000)
    height, width = cal_images.shape[1:3]
    noisy = test_images[:1000].astype(np.float32)
    cases = {
        "uniform noise": rng.integers(0, 256, (1000, height, width)).astype(np.uint8),
        "black frames": np.zeros((50, height, width), np.uint8),
        "white frames": np.full((50, height, width), 255, np.uint8),
        "constant grey frames": np.repeat(rng.integers(1, 255, 1000).astype(np.uint8), height * width).reshape(
            1000, height, width
        ),
        "Gaussian noise sigma 32": np.clip(noisy + rng.normal(0, 32, noisy.shape), 0, 255).astype(np.uint8),
        "Gaussian noise sigma 64": np.clip(noisy + rng.normal(0, 64, noisy.shape), 0, 255).astype(np.uint8),
        "Gaussian noise sigma 128": np.clip(noisy + rng.normal(0, 128, noisy.shape), 0, 255).astype(np.uint8),
        args.other_name or f"other dataset ({args.other})": other,
    }
    began = time.time()
    with create_backend("onnxruntime", bundle) as backend:
        cal = stage0(bundle, backend, preprocess_batch(list(cal_images), spec))
        test = stage0(bundle, backend, preprocess_batch(list(test_images), spec))
        ood = {name: stage0(bundle, backend, preprocess_batch(list(images), spec)) for name, images in cases.items()}

        order = np.random.default_rng(args.seed).permutation(len(cal["logits"]))
        fit_part, cal_part = take(cal, order[: len(order) // 2]), take(cal, order[len(order) // 2 :])
        table: List[Dict[str, Any]] = []
        for rate in [float(r) for r in args.rates.split(",")]:
            for name in SCORES:
                scorer = fit_scorer(name, fit_part)
                threshold = g.conformal_threshold(scorer(cal_part), rate)
                row = {
                    "false_alarm_rate": rate,
                    "score": name,
                    "test_false_alarms": float((scorer(test) > threshold).mean()),
                }
                row["detected"] = {case: float((scorer(d) > threshold).mean()) for case, d in ood.items()}
                table.append(row)
                print(
                    f"{rate:.2f} {name:55s} FA {100 * row['test_false_alarms']:5.1f}%  "
                    + " ".join(f"{100 * v:5.1f}" for v in row["detected"].values()),
                    flush=True,
                )

        # The shipped guard's false alarms over calibration draws from the in-distribution pool.
        pool = {k: np.concatenate([cal[k], test[k]]) for k in cal}
        n_pool = len(pool["logits"])
        draws: Dict[str, List[float]] = {}
        for rate in [float(r) for r in args.rates.split(",")]:
            values = []
            for _ in range(args.draws):
                perm = rng.permutation(n_pool)
                chosen, rest = take(pool, perm[: args.draw_size]), take(pool, perm[args.draw_size :])
                guard = g.fit_guard(
                    g.guard_features(chosen["inputs"], chosen["pooled"]),
                    chosen["logits"].argmax(1),
                    rate,
                    seed=int(rng.integers(1 << 31)),
                )
                values.append(float(guard.flags(guard.scores(g.guard_features(rest["inputs"], rest["pooled"]))).mean()))
            draws[str(rate)] = values
            print(
                f"false alarms over {args.draws} draws of {args.draw_size} at {rate}: mean {np.mean(values):.4f}",
                flush=True,
            )

        # Cost per input through the early-exit loop, with and without the guard: batch 1 (paired,
        # alternating order, medians of wall time and of process CPU time, which a shared machine
        # inflates less) and batch 32 (per sample).
        guard = g.fit_guard(g.guard_features(cal["inputs"], cal["pooled"]), cal["logits"].argmax(1), 0.01)
        policy = make_policy("max_prob", [0.0] * (bundle.num_stages - 1) + [None], bundle.num_stages)  # leave at exit 0
        x = test["inputs"]
        x = x[~guard.flags(guard.scores(g.guard_features(x, test["pooled"])))]  # unflagged: both leave at exit 0
        cost: Dict[str, Any] = {"reps": args.reps, "backend": backend.describe()}
        for batch in (1, 32):
            wall: Dict[bool, List[float]] = {True: [], False: []}
            cpu: Dict[bool, List[float]] = {True: [], False: []}
            for rep in range(args.reps // batch * 4 + 50):
                start = (rep * batch) % (len(x) - batch)
                sample = x[start : start + batch]
                for guarded in [True, False] if rep % 2 else [False, True]:
                    w0, c0 = time.perf_counter(), time.process_time()
                    run_early_exit(backend, policy, sample, guard=guard if guarded else None)
                    if rep >= 50:
                        wall[guarded].append((time.perf_counter() - w0) * 1e6 / batch)
                        cpu[guarded].append((time.process_time() - c0) * 1e6 / batch)
            cost[f"batch{batch}"] = {
                "early_exit_at_exit0_us_per_sample": {
                    "with_guard": float(np.median(wall[True])),
                    "without_guard": float(np.median(wall[False])),
                },
                "guard_us_per_sample": float(np.median(np.subtract(wall[True], wall[False]))),
                "cpu_us_per_sample": {
                    "with_guard": float(np.mean(cpu[True])),
                    "without_guard": float(np.mean(cpu[False])),
                },
                "guard_cpu_us_per_sample": float(np.mean(cpu[True]) - np.mean(cpu[False])),
            }
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cost["load_average_1min"] = load
        print(f"cost: {cost}", flush=True)
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "bundle": bundle.name,
        "cal": args.cal,
        "test": args.test,
        "cases": {name: len(images) for name, images in cases.items()},
        "table": table,
        "false_alarms_over_draws": {
            rate: {
                "draws": len(v),
                "draw_size": args.draw_size,
                "mean": float(np.mean(v)),
                "p90": float(np.quantile(v, 0.9)),
            }
            for rate, v in draws.items()
        },
        "cost": cost,
        "seconds": round(time.time() - began, 1),
    }
    atomic.write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
