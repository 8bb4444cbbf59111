#!/usr/bin/env python3
"""The live audit catching a drift, and what auditing costs.

A stream of ``--length`` in-distribution images (``--data``, cycled in fresh random orders) goes
through the early-exit runtime one batch of ``--batch`` at a time, with ``run --audit N``'s
machinery (hisd_edge.runtime.audit.LiveAudit) and the bundle's certified thresholds. Halfway
through, each scenario changes the images: Gaussian noise, a rotation. Reported per scenario:
where the audit first warned, the audited disagreement before and after the change, how many
inputs the guard flagged, and a plot of the windowed disagreement against the certified rate.

Then the audit's overhead by the benchmark method: the same clean stream at batch 1, early exit
with and without the audit (1 in 10, 1 in 100), in interleaved blocks, the median of ratios.

    python tools/audit_drift_demo.py engines/mnist --out results/audit_drift
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from hisd_edge import atomic
from hisd_edge.bundle import Bundle
from hisd_edge.data import load_samples
from hisd_edge.preprocess import preprocess_batch
from hisd_edge.runtime.audit import LiveAudit, audit_reference
from hisd_edge.runtime.early_exit import EarlyExitRuntime


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    import cv2

    h, w = images.shape[1:3]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return np.stack([cv2.warpAffine(img, m, (w, h)) for img in images])


def gaussian(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images.astype(np.float32) + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


def stream(images: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    reps = -(-length // len(images))
    return np.concatenate([images[rng.permutation(len(images))] for _ in range(reps)])[:length]


def run_scenario(
    bundle: Bundle,
    images: np.ndarray,
    change: Callable[[np.ndarray], np.ndarray],
    *,
    guard: bool,
    every: int,
    batch: int,
    seed: int,
) -> Dict[str, Any]:
    half = len(images) // 2
    drifted = np.concatenate([images[:half], change(images[half:])])
    tensors = preprocess_batch(list(drifted), bundle.preprocessing)
    certificate = bundle.policy.get("certificate") or {}
    audit = LiveAudit(
        every, audit_reference(bundle.policy), confidence=float(certificate.get("confidence") or 0.9), seed=seed
    )
    audited: List[Dict[str, Any]] = []
    flagged = [0, 0]
    with EarlyExitRuntime(bundle, guard=guard, audit=audit) as rt:
        for start in range(0, len(tensors), batch):
            results, _ = rt.infer_tensors(tensors[start : start + batch], first_index=start)
            for r in results:
                flagged[r.index >= half] += "out_of_distribution" in r.flags
                if r.audit is not None:
                    audited.append({"index": r.index, "agrees": bool(r.audit["agrees"]), "exit": r.exit})
    before = [a for a in audited if a["index"] < half]
    after = [a for a in audited if a["index"] >= half]
    first = audit.warnings[0] if audit.warnings else None
    return {
        "guard": guard,
        "audited": len(audited),
        "disagreement_before": 1 - np.mean([a["agrees"] for a in before]) if before else None,
        "disagreement_after": 1 - np.mean([a["agrees"] for a in after]) if after else None,
        "flagged_before": flagged[0] / half,
        "flagged_after": flagged[1] / (len(images) - half),
        "warned_at": None if first is None else first.index,
        "inputs_after_change_until_warning": None if first is None else first.index - half,
        "warning": None if first is None else first.text(),
        "summary": audit.summary(),
        "audited_inputs": audited,
    }


def overhead(bundle: Bundle, tensors: np.ndarray, every: int, blocks: int, block: int) -> Dict[str, Any]:
    """Batch-1 stream time with and without the audit, by the benchmark method: blocks of ``block``
    inputs, the two variants back to back in alternating order, the median of per-pair ratios
    (a block holds enough audited inputs for its total to include the audit's full-model runs)."""
    with EarlyExitRuntime(bundle) as plain, EarlyExitRuntime(bundle, audit=LiveAudit(every, None, seed=1)) as audited:
        for i in range(20):  # warm-up
            plain.infer_tensors(tensors[i : i + 1])
            audited.infer_tensors(tensors[i : i + 1])
        totals: Dict[str, List[float]] = {"plain": [], "audit": []}
        for b in range(blocks):
            rows = [(b * block + i) % len(tensors) for i in range(block)]
            order = [("plain", plain), ("audit", audited)] if b % 2 else [("audit", audited), ("plain", plain)]
            for name, rt in order:
                begin = time.perf_counter()
                for row in rows:
                    rt.infer_tensors(tensors[row : row + 1])
                totals[name].append((time.perf_counter() - begin) * 1e3)
    plain_ms, audit_ms = np.asarray(totals["plain"]), np.asarray(totals["audit"])
    return {
        "every": every,
        "blocks": blocks,
        "block": block,
        "batch": 1,
        "median_block_ms": {"plain": float(np.median(plain_ms)), "audit": float(np.median(audit_ms))},
        "ratio": float(np.median(audit_ms / plain_ms)),
        "added_us_per_input": float(np.median(audit_ms - plain_ms) / block * 1e3),
        "audited_share": float(audited.audit.audited / max(audited.audit.seen, 1)),
    }


def plot(results: List[Dict[str, Any]], half: int, reference: Optional[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.4 * len(results)), sharex=True)
    for ax, result in zip(np.atleast_1d(axes), results):
        audited = result["audited_inputs"]
        idx = np.array([a["index"] for a in audited])
        dis = 1 - np.array([a["agrees"] for a in audited], dtype=float)
        window = 50
        rolling = np.convolve(dis, np.ones(window) / window, mode="valid") if len(dis) >= window else dis
        ax.plot(idx[len(idx) - len(rolling) :], 100 * rolling, label=f"disagreement, last {window} audited")
        if reference is not None:
            ax.axhline(100 * reference, color="k", ls="--", lw=1, label="certified")
        ax.axvline(half, color="grey", lw=1)
        if result["warned_at"] is not None:
            ax.axvline(result["warned_at"], color="r", lw=1.5, label="audit warns")
        ax.set_ylabel("%")
        ax.set_title(result["name"], fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    np.atleast_1d(axes)[-1].set_xlabel("input")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a bundle with certified thresholds (hisd-edge thresholds)")
    parser.add_argument("--data", default="default:test")
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=40, help="block pairs for the overhead")
    parser.add_argument("--block", type=int, default=200, help="inputs per block for the overhead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output prefix: PREFIX.json and PREFIX.png")
    args = parser.parse_args(argv)

    bundle = Bundle.open(args.bundle)
    if (bundle.policy.get("certificate") or {}).get("method") != "certified":
        raise SystemExit(f"{args.bundle}: no certified thresholds; run hisd-edge thresholds first")
    rng = np.random.default_rng(args.seed)
    images = stream(np.stack(load_samples(args.data).images), args.length, rng)
    scenarios = [
        ("Gaussian noise sigma 48 from the middle, guard off", lambda x: gaussian(x, 48, rng), False),
        ("Gaussian noise sigma 48 from the middle, guard on (default)", lambda x: gaussian(x, 48, rng), True),
        ("Gaussian noise sigma 24 from the middle, guard on", lambda x: gaussian(x, 24, rng), True),
        ("rotated 30 degrees from the middle, guard on", lambda x: rotate(x, 30), True),
        ("no change (control), guard on", lambda x: x, True),
    ]
    began = time.time()
    results = []
    for name, change, guard in scenarios:
        result = run_scenario(bundle, images, change, guard=guard, every=args.every, batch=args.batch, seed=args.seed)
        result["name"] = name
        results.append(result)
        print(
            f"{name}: audited {result['audited']}, disagreement {100 * (result['disagreement_before'] or 0):.2f}% -> "
            f"{100 * (result['disagreement_after'] or 0):.2f}%, flagged {100 * result['flagged_after']:.1f}% after; "
            f"warned at input {result['warned_at']} ({result['inputs_after_change_until_warning']} after the change)",
            flush=True,
        )
    tensors = preprocess_batch(list(images[:1000]), bundle.preprocessing)
    costs = [overhead(bundle, tensors, every, args.blocks, args.block) for every in (10, 100)]
    for cost in costs:
        print(
            f"audit 1 in {cost['every']}: stream time x{cost['ratio']:.3f}, +{cost['added_us_per_input']:.1f} us per input "
            f"({cost['median_block_ms']} ms per block of {cost['block']})",
            flush=True,
        )
    out = Path(args.out)
    plot(results, args.length // 2, audit_reference(bundle.policy), out.with_suffix(".png"))
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "bundle": bundle.name,
        "certificate": bundle.policy.get("certificate"),
        "stream": {"data": args.data, "length": args.length, "change_at": args.length // 2, "batch": args.batch},
        "audit_every": args.every,
        "scenarios": [{k: v for k, v in r.items() if k != "audited_inputs"} for r in results],
        "overhead": costs,
        "seconds": round(time.time() - began, 1),
    }
    atomic.write_json(out.with_suffix(".json"), report)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
