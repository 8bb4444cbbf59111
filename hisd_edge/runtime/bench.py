"""Side-by-side benchmark of one bundle on this machine, in one run (``hisd-edge bench``).

Rows, each measured with its comparison partner in the same loop, the variants interleaved in a
freshly shuffled order on every repetition (so drift and cache warmth hit both alike), medians
reported:

* **chain overhead**: the monolithic full model vs all stages chained, batch 1 and batch 32 (the
  ratio is the median of per-repetition ratios, each pair run back to back);
* **per-exit cost**: latency of reaching exit k (forced exit, batch 1) vs the full model;
* **early exit** at the bundle's thresholds vs the monolithic model, per sample at batch 1:
  mean latency, speedup (with its spread) and top-1 accuracy (labelled data only); with the
  bundle's input guard (as ``run`` uses it) unless ``guard=False``, and the thresholds' certificate
  alongside. This is :func:`measure_early_exit`, the one measurement ``demo``, ``profile`` and the
  report's headline use too;
* **oracle exit**: each sample leaves at the first exit that is right (the limit for any policy),
  in its own interleaved run against early exit;
* **throughput** at batch 32 with per-sample exits (compaction) vs the monolithic model;
* **exit decision cost**: the time the early-exit loop spends outside the stages (scoring,
  compaction, bookkeeping), per batch.

Latencies are wall-clock around the whole call (what an application waits for).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from hisd_edge.errors import InputError
from hisd_edge.runtime.backend import create_backend, run_chain
from hisd_edge.runtime.early_exit import run_early_exit
from hisd_edge.runtime.guard import InputGuard, guard_from_bundle
from hisd_edge.runtime.policies import ExitPolicy, bundle_exit_kind, policy_from_manifest
from hisd_edge.runtime.risk import certificate_of, certificate_text
from hisd_edge.runtime.thresholds import collect_exit_outputs, exit_predictions, fit_thresholds

# The project's own goals for the default model, shown only with ``hisd-edge bench --targets``.
TARGETS = {"chain_overhead": 1.03, "speedup": 3.0, "accuracy_drop_points": 0.5, "vs_oracle": 1.2}

# What the early-exit speedup figure is, wherever it is printed (bench, demo, profile, report).
METHOD_LABEL = (
    "per sample at batch 1, mean over {n} samples of each sample's median over {passes} interleaved passes "
    "(early exit and monolithic back to back in shuffled order, after warm-up); speedup = ratio of the means"
)
# Passes over the data: each sample's latency is its median over them, so a call slowed by another
# process must hit 3 of 5 passes to count; every verb uses this number unless told otherwise.
DEFAULT_PASSES = 5


def warm_up(runner: Any, policy: ExitPolicy, tensors: np.ndarray, guard: Optional[InputGuard] = None) -> None:
    """First calls allocate and pick kernels: run both variants a few times before anything is timed."""
    for i in range(min(5, len(tensors))):
        x = tensors[i : i + 1]
        run_early_exit(runner, policy, x, guard=guard)
        runner.run_full(x)
        for k in range(runner.num_stages):
            run_early_exit(runner, policy, x, exit_at=k)


def measure_early_exit(
    runner: Any,
    policy: ExitPolicy,
    tensors: np.ndarray,
    labels: Optional[np.ndarray],
    *,
    passes: int = DEFAULT_PASSES,
    exit_kind: str = "logits",
    guard: Optional[InputGuard] = None,
    seed: int = 0,
    progress: bool = False,
    details: bool = False,
) -> Dict[str, Any]:
    """The one early-exit-vs-monolithic measurement behind every speedup the toolkit prints.

    Warm-up, then :func:`compare_per_sample` (interleaved, per-sample medians over ``passes``,
    ratio of the means) with a fixed seed; returns its ``early_exit`` block (with the spread), or
    with ``details`` everything :func:`compare_per_sample` returns (exit per sample, decision times).
    ``demo``, ``bench``, ``profile`` and the report all call this, so one bundle and one data set
    give one speedup, within the spread it reports (leave-one-pass-out).
    """
    warm_up(runner, policy, tensors, guard)
    compared = compare_per_sample(
        runner,
        policy,
        tensors,
        labels,
        passes=max(1, passes),
        exit_kind=exit_kind,
        rng=np.random.default_rng(seed),
        progress=progress,
        guard=guard,
    )
    return compared if details else dict(compared["early_exit"])


def speedup_text(early: Dict[str, Any]) -> str:
    """``4.71x (spread 4.52-4.80x leaving one of 5 passes out; per sample at batch 1, 1000 samples)``."""
    low, high = early.get("speedup_range") or (early["speedup"], early["speedup"])
    return (
        f"{early['speedup']:.2f}x (spread {low:.2f}-{high:.2f}x leaving one of {early.get('passes', 1)} passes out; "
        f"per sample at batch 1, {early.get('samples', '?')} samples)"
    )


def _interleaved(variants: Dict[str, Callable[[], Any]], reps: int, rng: np.random.Generator) -> Dict[str, List[float]]:
    """Run every variant ``reps`` times, shuffled anew each repetition; wall times in ms."""
    times: Dict[str, List[float]] = {name: [] for name in variants}
    names = list(variants)
    for _ in range(reps):
        rng.shuffle(names)
        for name in names:
            begin = time.perf_counter()
            variants[name]()
            times[name].append((time.perf_counter() - begin) * 1e3)
    return times


def _reps_for(seconds: float, one_ms: float, low: int, high: int) -> int:
    return int(min(high, max(low, seconds * 1e3 / max(one_ms, 1e-3))))


def _tile(tensors: np.ndarray, rows: int) -> np.ndarray:
    reps = -(-rows // len(tensors))
    return np.ascontiguousarray(np.concatenate([tensors] * reps)[:rows])


def synthetic_inputs(shape: tuple, count: int, seed: int = 0) -> np.ndarray:
    """Preprocessed-scale random inputs (for models with random weights: latency rows only)."""
    return np.random.default_rng(seed).standard_normal((count, *tuple(shape))).astype(np.float32)


def _leave_one_pass_out(ee_ms: np.ndarray, full_ms: np.ndarray) -> List[float]:
    """Speedup (ratio of the means of per-sample medians) with each pass left out in turn."""
    passes = ee_ms.shape[0]
    if passes < 2:
        return [float(full_ms.mean() / max(ee_ms.mean(), 1e-12))]
    out = []
    for p in range(passes):
        keep = [q for q in range(passes) if q != p]
        ee = float(np.median(ee_ms[keep], axis=0).mean())
        full = float(np.median(full_ms[keep], axis=0).mean())
        out.append(full / max(ee, 1e-12))
    return out


def compare_per_sample(
    runner: Any,
    policy: ExitPolicy,
    tensors: np.ndarray,
    labels: Optional[np.ndarray],
    *,
    passes: int = 1,
    oracle_exit: Optional[np.ndarray] = None,
    exit_kind: str = "logits",
    rng: Optional[np.random.Generator] = None,
    progress: bool = False,
    guard: Optional[InputGuard] = None,
) -> Dict[str, Any]:
    """Early exit vs the monolithic model (and the oracle exit, when given), one sample at a time.

    For every sample the variants run back to back in a shuffled order, ``passes`` times over
    the data; a sample's latency is its median over passes, and means are over samples.
    """
    rng = rng or np.random.default_rng(0)
    n = len(tensors)
    num = runner.num_stages
    ee_ms = np.zeros((passes, n))
    full_ms = np.zeros((passes, n))
    oracle_ms = np.zeros((passes, n))
    decision_ms = np.zeros((passes, n))
    ee_exit = np.zeros(n, dtype=np.int64)
    ee_class = np.zeros(n, dtype=np.int64)
    full_class = np.zeros(n, dtype=np.int64)
    order = ["ee", "full", "oracle"] if oracle_exit is not None else ["ee", "full"]
    steps: Any = range(passes * n)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="batch-1 early exit vs full", unit="sample", leave=False)
    for step in steps:
        p, i = divmod(step, n)
        x = tensors[i : i + 1]
        rng.shuffle(order)
        for name in order:
            begin = time.perf_counter()
            if name == "ee":
                results, trace = run_early_exit(runner, policy, x, guard=guard)
                ee_ms[p, i] = (time.perf_counter() - begin) * 1e3
                decision_ms[p, i] = trace.decision_ms
                ee_exit[i] = -1 if results[0].exit is None else int(results[0].exit)
                ee_class[i] = -1 if results[0].class_index is None else int(results[0].class_index)
            elif name == "full":
                full_out = runner.run_full(x)
                full_ms[p, i] = (time.perf_counter() - begin) * 1e3
                full_class[i] = int(np.argmax(full_out.outputs[-1][0])) if exit_kind == "logits" else -1
            else:
                assert oracle_exit is not None
                run_early_exit(runner, policy, x, exit_at=int(oracle_exit[i]))
                oracle_ms[p, i] = (time.perf_counter() - begin) * 1e3
    ee_mean = float(np.median(ee_ms, axis=0).mean())
    full_mean = float(np.median(full_ms, axis=0).mean())
    # The spread the method reports: the same estimate with any one pass left out (jackknife over
    # passes). A pass hit by other processes' load moves it; a steady machine keeps it narrow.
    per_pass = _leave_one_pass_out(ee_ms, full_ms)
    early: Dict[str, Any] = {
        "mean_latency_ms": ee_mean,
        "full_mean_latency_ms": full_mean,
        "speedup": full_mean / ee_mean,
        "speedup_leave_one_pass_out": per_pass,
        "speedup_range": [float(min([*per_pass, full_mean / ee_mean])), float(max([*per_pass, full_mean / ee_mean]))],
        "exit_fractions": (np.bincount(ee_exit, minlength=num) / n).tolist(),
        "passes": passes,
        "samples": n,
        "batch": 1,
        "figure": METHOD_LABEL.format(n=n, passes=passes),
    }
    if labels is not None and exit_kind == "logits":
        early["accuracy"] = float((ee_class == labels).mean())
        early["full_accuracy"] = float((full_class == labels).mean())
        early["accuracy_drop_points"] = 100.0 * (early["full_accuracy"] - early["accuracy"])
    out: Dict[str, Any] = {"early_exit": early, "decision_ms": decision_ms, "exit_index": ee_exit.tolist()}
    if oracle_exit is not None:
        oracle_mean = float(np.median(oracle_ms, axis=0).mean())
        out["oracle"] = {
            "mean_latency_ms": oracle_mean,
            "exit_fractions": (np.bincount(oracle_exit, minlength=num) / n).tolist(),
            "early_exit_vs_oracle": ee_mean / oracle_mean,
        }
    return out


def run_bench(
    bundle: Any,
    *,
    data: Optional[str] = "default:test",
    count: Optional[int] = None,
    calibrate_on: Optional[str] = None,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    seconds: float = 60.0,
    batch: int = 32,
    backend_options: Optional[Dict[str, Any]] = None,
    progress: bool = False,
    seed: int = 0,
    max_drop_points: float = 0.5,
    guard: bool = True,
    threshold_method: str = "certified",
    targets: bool = False,
) -> Dict[str, Any]:
    """Measure everything in the module docstring; returns a JSON-ready report.

    ``data=None`` uses random inputs (latency rows only). ``calibrate_on`` fits thresholds on that
    data first (not written to the bundle); by default an uncalibrated bundle benchmarked on
    ``default:test`` is fitted on ``default:val``, by ``threshold_method`` (certified or empirical).
    ``seconds`` is a rough total time budget. ``targets`` adds the project's own pass/miss goals
    (:data:`TARGETS`) as ``report["targets"]``.
    """
    from hisd_edge.data import load_samples

    rng = np.random.default_rng(seed)
    exit_kind = bundle_exit_kind(bundle.exits)
    num = bundle.num_stages
    labels: Optional[np.ndarray] = None
    if data is None:
        tensors = synthetic_inputs(bundle.preprocessing.input_shape, count or 64, seed)
        data_label = f"random inputs ({len(tensors)})"
    else:
        samples = load_samples(data, count=count)
        tensors = samples.tensors(bundle.preprocessing)
        labels = samples.labels_for(bundle.class_names, data)
        data_label = f"{data} ({len(tensors)} samples)"
    recorded = bundle.policy
    policy_note = "manifest (calibrated)" if recorded.get("calibrated") else "manifest (not calibrated)"
    certificate = certificate_of(recorded)
    input_guard = guard_from_bundle(bundle) if guard and exit_kind == "logits" else None
    if calibrate_on is None and not recorded.get("calibrated") and data == "default:test":
        calibrate_on = "default:val"
    budget = max(seconds, 1.0)
    with create_backend(
        backend, bundle, precision=precision, load_full_model=True, **(backend_options or {})
    ) as runner:
        if calibrate_on is not None:
            calibration, fitted = fit_thresholds(
                bundle,
                calibrate_on,
                policy_kind=recorded.get("kind"),
                write=False,
                max_drop_points=max_drop_points,
                method=threshold_method,
                runner=runner,
                guard_false_alarms=0,  # the bundle's guard is what run uses
            )
            policy: ExitPolicy = calibration.policy
            policy_note = (
                f"fitted on {calibrate_on} for this run ({threshold_method}, max drop {max_drop_points:g} points; "
                "not written)"
            )
            certificate = {
                **calibration.certificate,
                "data": calibrate_on,
                "data_fingerprint": fitted["data_fingerprint"],
            }
        else:
            policy = policy_from_manifest(recorded, num, exit_kind)
        report: Dict[str, Any] = {
            "bundle": str(bundle.root),
            "name": bundle.name,
            "data": data_label,
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or None,
            },
            "policy": policy.to_manifest(),
            "policy_source": policy_note,
            "certificate": certificate,
            "guard": None if input_guard is None else input_guard.describe(),
        }
        report["backend"] = runner.describe()
        report["full_model"] = (
            runner.full_model_label
        )  # what the "full" rows ran (TensorRT may have no monolithic engine)
        if not runner.supports_full_model:
            raise InputError(f"{bundle.root}: no full model in the bundle to compare with; convert again")

        chain = functools.partial(run_chain, runner)

        # Warm-up (first runs allocate and pick kernels).
        for x in (tensors[:1], _tile(tensors, batch)):
            for _ in range(3):
                runner.run_full(x)
                chain(x)

        # 1. chain vs monolithic.
        report["chain"] = []
        for rows in (1, batch):
            x = _tile(tensors, rows)
            probe = _interleaved(
                {"full": functools.partial(runner.run_full, x), "chain": functools.partial(chain, x)}, 2, rng
            )
            one = float(np.median(probe["full"]) + np.median(probe["chain"]))
            reps = _reps_for(budget * 0.2 / 2, one, 5, 2000)
            times = _interleaved(
                {"full": functools.partial(runner.run_full, x), "chain": functools.partial(chain, x)}, reps, rng
            )
            full_ms, chain_ms = float(np.median(times["full"])), float(np.median(times["chain"]))
            # The ratio is the median of per-repetition ratios: each pair ran back to back, so load
            # from other processes (this machine is shared) mostly cancels within a pair.
            paired = float(np.median(np.asarray(times["chain"]) / np.asarray(times["full"])))
            report["chain"].append(
                {
                    "batch": rows,
                    "full_ms": full_ms,
                    "chain_ms": chain_ms,
                    "ratio": paired,
                    "ratio_of_medians": chain_ms / full_ms,
                    "reps": reps,
                }
            )

        # 2. cost of reaching each exit (forced exit, batch 1) next to the full model.
        x1 = tensors[:1]
        variants: Dict[str, Callable[[], Any]] = {"full": lambda: runner.run_full(x1)}
        for k in range(num):
            variants[f"exit{k}"] = functools.partial(run_early_exit, runner, policy, x1, exit_at=k)
        one = sum(float(np.median(v)) for v in _interleaved(variants, 2, rng).values())
        times = _interleaved(variants, _reps_for(budget * 0.15, one, 5, 1000), rng)
        full1 = float(np.median(times["full"]))
        report["exits"] = [
            {
                "exit": k,
                "latency_ms": float(np.median(times[f"exit{k}"])),
                "fraction_of_full": float(np.median(times[f"exit{k}"])) / full1,
            }
            for k in range(num)
        ]

        # 3. early exit vs monolithic vs oracle, per sample at batch 1.
        outputs = collect_exit_outputs(runner, tensors)
        oracle_exit: Optional[np.ndarray] = None
        if labels is not None:
            preds = exit_predictions(outputs, exit_kind, labels)
            right = preds == labels[:, None]
            oracle_exit = np.where(right.any(axis=1), right.argmax(axis=1), num - 1)
        n = len(tensors)
        # Exactly what demo, profile and the report measure (same passes, seed and interleaving): one
        # figure. The oracle gets its own interleaved run, so it does not change that measurement.
        compared = measure_early_exit(
            runner,
            policy,
            tensors,
            labels,
            exit_kind=exit_kind,
            guard=input_guard,
            seed=seed,
            progress=progress,
            details=True,
        )
        if oracle_exit is not None:
            compared["oracle"] = compare_per_sample(
                runner,
                policy,
                tensors,
                labels,
                passes=3,
                oracle_exit=oracle_exit,
                exit_kind=exit_kind,
                rng=rng,
                progress=progress,
                guard=input_guard,
            )["oracle"]
        ee_mean = compared["early_exit"]["mean_latency_ms"]
        early = compared["early_exit"]
        if exit_kind == "embedding" and labels is not None:  # nearest-centroid class at the exit each sample left at
            ee_exit = np.asarray(compared["exit_index"])
            early["accuracy"] = float((preds[np.arange(n), ee_exit] == labels).mean())
            early["full_accuracy"] = float((preds[:, -1] == labels).mean())
            early["accuracy_drop_points"] = 100.0 * (early["full_accuracy"] - early["accuracy"])
        report["early_exit"] = early
        if oracle_exit is not None:
            report["oracle"] = {**compared["oracle"], "accuracy": float(right.any(axis=1).mean())}
        decision_ms = compared["decision_ms"]

        # 4. batch throughput with per-sample exits vs monolithic.
        batches = [np.ascontiguousarray(tensors[s : s + batch]) for s in range(0, n, batch)]
        if n < batch:
            batches = [_tile(tensors, batch)]
        rows_total = sum(len(b) for b in batches)
        ee_batch_decision: List[float] = []

        def ee_all() -> None:
            for b in batches:
                _, trace = run_early_exit(runner, policy, b, guard=input_guard)
                ee_batch_decision.append(trace.decision_ms)

        def full_all() -> None:
            for b in batches:
                runner.run_full(b)

        probe = _interleaved({"ee": ee_all, "full": full_all}, 1, rng)
        one = float(probe["ee"][0] + probe["full"][0])
        times = _interleaved({"ee": ee_all, "full": full_all}, _reps_for(budget * 0.25, one, 2, 50), rng)
        ee_tp = rows_total / (float(np.median(times["ee"])) / 1e3)
        full_tp = rows_total / (float(np.median(times["full"])) / 1e3)
        report["throughput"] = {
            "batch": batch,
            "early_exit_samples_per_s": ee_tp,
            "full_samples_per_s": full_tp,
            "ratio": ee_tp / full_tp,
            "reps": len(times["ee"]),
        }

        # 5. the exit decision itself.
        dec1 = float(np.median(decision_ms))
        decb = float(np.median(ee_batch_decision))
        report["decision"] = {
            "batch1_us": dec1 * 1e3,
            "batch1_share_of_latency": dec1 / ee_mean,
            f"batch{batch}_us": decb * 1e3,
            f"batch{batch}_us_per_sample": decb * 1e3 / batch,
        }

    if targets:
        report["targets"] = _targets(report, batch)
    return report


def _targets(report: Dict[str, Any], batch: int) -> List[Dict[str, Any]]:
    """The project's goals for the default model, met or missed (``bench --targets``)."""
    early = report["early_exit"]
    targets = [
        {
            "name": "chain overhead, batch 1",
            "value": report["chain"][0]["ratio"],
            "target": f"<= {TARGETS['chain_overhead']}",
            "met": report["chain"][0]["ratio"] <= TARGETS["chain_overhead"],
        },
        {
            "name": f"chain overhead, batch {batch}",
            "value": report["chain"][1]["ratio"],
            "target": f"<= {TARGETS['chain_overhead']}",
            "met": report["chain"][1]["ratio"] <= TARGETS["chain_overhead"],
        },
        {
            "name": "early-exit speedup",
            "value": early["speedup"],
            "target": f">= {TARGETS['speedup']}",
            "met": early["speedup"] >= TARGETS["speedup"],
        },
    ]
    if "accuracy_drop_points" in early:
        targets.append(
            {
                "name": "accuracy drop (points)",
                "value": early["accuracy_drop_points"],
                "target": f"<= {TARGETS['accuracy_drop_points']}",
                "met": early["accuracy_drop_points"] <= TARGETS["accuracy_drop_points"],
            }
        )
    if "oracle" in report:
        ratio = report["oracle"]["early_exit_vs_oracle"]
        targets.append(
            {
                "name": "mean latency vs oracle",
                "value": ratio,
                "target": f"<= {TARGETS['vs_oracle']}",
                "met": ratio <= TARGETS["vs_oracle"],
            }
        )
    return targets


def format_bench(report: Dict[str, Any]) -> str:
    """The report as a readable table."""
    b = report["backend"]
    lines = [
        f"bench {report['name']}  ({report['bundle']})",
        f"backend {b.get('backend')} {b.get('precision')} {','.join(b.get('providers', []))} threads={b.get('intra_op_threads')}"
        f"  machine: {report['machine']['cpu_count']} CPUs, {report['machine']['platform']}",
        f"data {report['data']}; policy {report['policy']['kind']} "
        + ",".join("never" if t is None else f"{t:.4g}" for t in report["policy"]["thresholds"][:-1])
        + f" ({report['policy_source']})",
        certificate_text(report.get("certificate") or {}),
        (report.get("guard") or "input guard: none") + " (on in the early-exit rows, as in run)",
        "",
        f"{report.get('full_model', 'monolithic full model')} vs all stages chained (median ms per call of the given batch)",
    ]
    for row in report["chain"]:
        lines.append(
            f"  batch {row['batch']:>3}: full {row['full_ms']:9.3f}  chain {row['chain_ms']:9.3f}  ratio {row['ratio']:.3f}x  ({row['reps']} reps)"
        )
    lines.append("cost of reaching each exit (forced exit, median ms per call at batch 1, fraction of the full model)")
    for row in report["exits"]:
        lines.append(f"  exit {row['exit']}: {row['latency_ms']:9.3f}  ({100 * row['fraction_of_full']:.1f}%)")
    e = report["early_exit"]
    lines.append(f"early exit vs monolithic: {e.get('figure', 'per sample at batch 1')}")
    acc = ""
    if "accuracy" in e:
        acc = f"  accuracy {100 * e['accuracy']:.2f}% vs {100 * e['full_accuracy']:.2f}% (drop {e['accuracy_drop_points']:.2f} points)"
    lines.append(
        f"  early exit {e['mean_latency_ms']:.3f} ms vs full {e['full_mean_latency_ms']:.3f} ms per sample: "
        f"speedup {speedup_text(e)}{acc}"
    )
    lines.append("  exits " + ", ".join(f"{k}: {100 * f:.1f}%" for k, f in enumerate(e["exit_fractions"])))
    if "oracle" in report:
        o = report["oracle"]
        lines.append(
            f"oracle exit: {o['mean_latency_ms']:.3f} ms mean, accuracy {100 * o['accuracy']:.2f}%, "
            f"early exit / oracle latency {o['early_exit_vs_oracle']:.3f}x; exits "
            + ", ".join(f"{k}: {100 * f:.1f}%" for k, f in enumerate(o["exit_fractions"]))
        )
    t = report["throughput"]
    lines.append(
        f"throughput at batch {t['batch']} (samples per second, median over {t['reps']} interleaved repetitions): "
        f"early exit {t['early_exit_samples_per_s']:.0f}/s vs full {t['full_samples_per_s']:.0f}/s ({t['ratio']:.2f}x)"
    )
    d = report["decision"]
    batch = report["throughput"]["batch"]
    lines.append(
        f"exit decision cost: {d['batch1_us']:.1f} us per sample at batch 1 ({100 * d['batch1_share_of_latency']:.1f}% of its latency); "
        f"{d[f'batch{batch}_us']:.1f} us per batch of {batch}"
    )
    if "targets" not in report:
        return "\n".join(lines)
    lines.append("")
    lines.append("targets (the project's goals for the default model)")
    for row in report["targets"]:
        lines.append(f"  {row['name']:<28} {row['value']:8.3f}  {row['target']:<8} {'met' if row['met'] else 'MISSED'}")
    return "\n".join(lines)


# -- batch-1 designs side by side (issue 17) ---------------------------------------------------------
DESIGN_BLOCK = 20  # consecutive samples one design runs before the next (batch-1 designs)
DESIGN_TARGETS = {
    "chain_vs_oracle": 1.02,
    "chain_vs_ingraph": 1.0,
    "all_stages_vs_full": 1.02,
    "python_us_per_stage": 2.0,
}


def _bare_chain(backend: Any, x: np.ndarray, last: int) -> None:
    """Stages 0..last on ``x`` through the ONNX Runtime backend's bound sessions and nothing else:
    the floor any loop around the same sessions can reach (the oracle knows where to stop)."""
    stages = backend._stages
    value = x
    for k in range(last + 1):
        stage = stages[k]
        outs = stage.run(value)
        if stage.feat_index >= 0:
            value = outs[stage.feat_index]


def _bare_chain_rows(backend: Any, x: np.ndarray, exits: np.ndarray) -> None:
    """A batch where every row's exit is known: each stage runs on the rows that need it (the
    compaction a per-row early exit needs, without deciding anything)."""
    stages = backend._stages
    value, active = x, exits
    for k in range(int(exits.max()) + 1):
        stage = stages[k]
        outs = stage.run(value)
        if stage.feat_index < 0:
            break
        keep = np.flatnonzero(active > k)
        if len(keep) == 0:
            break
        feat = outs[stage.feat_index]
        value = feat if len(keep) == len(active) else stage.gather(feat, keep)
        active = active[keep]


def _design_rows(
    bundle: Any,
    tensors: np.ndarray,
    policy: ExitPolicy,
    never: ExitPolicy,
    count: int,
    batch: int,
    budget: float,
    precision: str,
    backend_options: Optional[Dict[str, Any]],
    rng: np.random.Generator,
    progress: bool,
) -> List[Dict[str, Any]]:
    """:func:`run_designs`'s two rows (batch 1, batch ``batch``) for one intra-op thread count."""
    num = bundle.num_stages
    n = len(tensors)
    out: List[Dict[str, Any]] = []
    options = {**(backend_options or {}), "intra_op_threads": count}
    with create_backend(
        "onnxruntime", bundle, precision=precision, load_full_model=True, ingraph=False, **options
    ) as chain, create_backend("onnxruntime", bundle, precision=precision, ingraph=True, **options) as graph:
        ort_chain: Any = chain  # the ONNX Runtime backend: its monolithic session, bare
        full = ort_chain._load_full()
        why_not = graph.ingraph_unavailable(policy)
        rows = [np.ascontiguousarray(tensors[i : i + 1]) for i in range(n)]
        exits = np.array([run_early_exit(chain, policy, x)[0][0].exit for x in rows], dtype=np.int64)
        for x in rows[:3]:  # warm-up
            full.run(x)
            run_early_exit(graph, policy, x)
            _bare_chain(chain, x, num - 1)
        variants: Dict[str, Callable[[int], Any]] = {
            "chain": lambda i: run_early_exit(chain, policy, rows[i]),
            "monolithic": lambda i: full.run(rows[i]),
            "oracle": lambda i: _bare_chain(chain, rows[i], int(exits[i])),
            "chain_all_stages": lambda i: run_early_exit(chain, never, rows[i]),
            "bare_all_stages": lambda i: _bare_chain(chain, rows[i], num - 1),
        }
        if why_not is None:
            variants["in_graph"] = lambda i: run_early_exit(graph, policy, rows[i])
        probe = time.perf_counter()
        for name in variants:
            variants[name](0)
        one_ms = (time.perf_counter() - probe) * 1e3
        passes = max(3, min(25, int(budget * 0.6 * 1e3 / max(one_ms * n, 1e-3))))
        # Interleaved by blocks of consecutive samples, not sample by sample: a stream runs one
        # design, so each design gets its caches warm for a block, as it would in use (per-sample
        # interleaving penalised whichever design shares no weights with the others).
        blocks = [list(range(s, min(s + DESIGN_BLOCK, n))) for s in range(0, n, DESIGN_BLOCK)]
        per = {name: np.zeros((passes, n)) for name in variants}
        names = list(variants)
        steps: Any = range(passes * len(blocks))
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"designs, batch 1, {count} thread(s)", unit="block", leave=False)
        for step in steps:
            p, b = divmod(step, len(blocks))
            rng.shuffle(names)
            for name in names:
                run = variants[name]
                for i in blocks[b]:
                    begin = time.perf_counter()
                    run(i)
                    per[name][p, i] = (time.perf_counter() - begin) * 1e6
        us = {name: float(np.median(per[name], axis=0).mean()) for name in variants}
        row1: Dict[str, Any] = {
            "threads": count,
            "batch": 1,
            "us_per_sample": us,
            "passes": passes,
            "exit_fractions": (np.bincount(exits, minlength=num) / n).tolist(),
            "in_graph": why_not or "used",
            "python_us_per_stage": (us["chain_all_stages"] - us["bare_all_stages"]) / num,
            "chain_vs_oracle": us["chain"] / us["oracle"],
            "all_stages_vs_full": us["chain_all_stages"] / us["monolithic"],
            "chain_vs_in_graph": us["chain"] / us["in_graph"] if "in_graph" in us else None,
        }
        out.append(row1)
        # batch `batch`: per-row exits vs monolithic vs oracle
        starts = list(range(0, n - batch + 1, batch)) or [0]
        batches = [np.ascontiguousarray(_tile(tensors[s : s + batch], batch)) for s in starts]
        batch_exits = [_tile(exits[s : s + batch, None], batch)[:, 0] for s in starts]
        bvariants: Dict[str, Callable[[int], Any]] = {
            "chain": lambda j: run_early_exit(chain, policy, batches[j]),
            "monolithic": lambda j: full.run(batches[j]),
            "oracle": lambda j: _bare_chain_rows(chain, batches[j], batch_exits[j]),
        }
        for name in bvariants:
            bvariants[name](0)
        probe = time.perf_counter()
        for name in bvariants:
            bvariants[name](0)
        one_ms = (time.perf_counter() - probe) * 1e3
        reps = max(2, min(25, int(budget * 0.4 * 1e3 / max(one_ms * len(batches), 1e-3))))
        bper: Dict[str, List[float]] = {name: [] for name in bvariants}
        bnames = list(bvariants)
        for _ in range(reps):
            for j in range(len(batches)):
                rng.shuffle(bnames)
                for name in bnames:
                    begin = time.perf_counter()
                    bvariants[name](j)
                    bper[name].append((time.perf_counter() - begin) * 1e6 / batch)
        bus = {name: float(np.median(values)) for name, values in bper.items()}
        out.append(
            {
                "threads": count,
                "batch": batch,
                "us_per_sample": bus,
                "reps": reps,
                "batches": len(batches),
                "in_graph": "not applicable: one graph cannot let rows of a batch leave at different exits",
                "chain_vs_oracle": bus["chain"] / bus["oracle"],
                "throughput_vs_monolithic": bus["monolithic"] / bus["chain"],
            }
        )
    return out


def run_designs(
    bundle: Any,
    tensors: np.ndarray,
    policy: ExitPolicy,
    *,
    threads: Sequence[int] = (1, 2),
    batch: int = 32,
    seconds: float = 60.0,
    precision: str = "fp32",
    backend_options: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    progress: bool = False,
) -> Dict[str, Any]:
    """The ways to run one bundle's early exit, side by side per thread count (ONNX Runtime, no guard):

    * batch 1, per sample (mean over samples of the median over passes, in microseconds): the
      **in-graph** artifact (one call, the decision inside the graph), the **chain** (the runtime's
      batch-1 loop), the **monolithic** model, the **oracle** (bare sessions run exactly to the exit
      the policy takes, known in advance, nothing decided), and every stage through the chain vs
      through a bare loop (the Python the loop adds per stage); interleaved by blocks of
      ``DESIGN_BLOCK`` samples;
    * batch ``batch``: the chain with per-row exits, the monolithic model and the oracle (bare
      sessions, each stage on the rows that need it), per sample.

    The variants take turns in a fresh random order per block (batch 1) or batch, every pass.
    """
    from hisd_edge.runtime.policies import make_policy

    rng = np.random.default_rng(seed)
    num = bundle.num_stages
    never = make_policy(policy.kind, [None] * num, num, policy.exit_kind)  # every stage, same loop
    n = len(tensors)
    report: Dict[str, Any] = {
        "bundle": str(bundle.root),
        "name": bundle.name,
        "samples": n,
        "policy": policy.to_manifest(),
        "precision": precision,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "rows": [],
    }
    budget = max(seconds, 1.0) / max(len(threads), 1)
    for count in threads:
        report["rows"] += _design_rows(
            bundle, tensors, policy, never, count, batch, budget, precision, backend_options, rng, progress
        )
    targets = []
    for row in report["rows"]:
        if row["batch"] != 1:
            continue
        t = row["threads"]
        checks = [
            (f"{t} thread(s): chain / oracle, batch 1", row["chain_vs_oracle"], DESIGN_TARGETS["chain_vs_oracle"]),
            (
                f"{t} thread(s): chain, every stage / monolithic",
                row["all_stages_vs_full"],
                DESIGN_TARGETS["all_stages_vs_full"],
            ),
            (f"{t} thread(s): Python us per stage", row["python_us_per_stage"], DESIGN_TARGETS["python_us_per_stage"]),
        ]
        if row["chain_vs_in_graph"] is not None:
            checks.append(
                (f"{t} thread(s): chain / in-graph", row["chain_vs_in_graph"], DESIGN_TARGETS["chain_vs_ingraph"])
            )
        targets += [{"name": a, "value": v, "target": f"<= {b:g}", "met": v <= b} for a, v, b in checks]
    report["targets"] = targets
    return report


def format_designs(report: Dict[str, Any]) -> str:
    """The designs report as a table (microseconds per sample)."""
    order = ["in_graph", "chain", "monolithic", "oracle", "chain_all_stages", "bare_all_stages"]
    lines = [
        f"designs {report['name']} ({report['bundle']}), {report['precision']}, {report['samples']} samples, "
        f"{report['machine']['cpu_count']} CPUs; policy {report['policy']['kind']} "
        + ",".join("never" if v is None else f"{v:.4g}" for v in report["policy"]["thresholds"][:-1]),
        "us per sample (batch 1: mean over samples of the median over passes; batched: median per batch / rows)",
        f"  {'threads':>7} {'batch':>5} " + " ".join(f"{name:>16}" for name in order),
    ]
    for row in report["rows"]:
        cells = [
            f"{row['us_per_sample'][name]:16.1f}" if name in row["us_per_sample"] else f"{'-':>16}" for name in order
        ]
        lines.append(f"  {row['threads']:>7} {row['batch']:>5} " + " ".join(cells))
    for row in report["rows"]:
        if row["batch"] == 1:
            lines.append(
                f"  {row['threads']} thread(s), batch 1: chain/oracle {row['chain_vs_oracle']:.3f}x, every stage chain/"
                f"monolithic {row['all_stages_vs_full']:.3f}x, Python {row['python_us_per_stage']:.2f} us/stage, "
                + (
                    f"chain/in-graph {row['chain_vs_in_graph']:.3f}x"
                    if row["chain_vs_in_graph"] is not None
                    else f"in-graph: {row['in_graph']}"
                )
                + "; exits "
                + ", ".join(f"{k}: {100 * f:.1f}%" for k, f in enumerate(row["exit_fractions"]))
            )
        else:
            lines.append(
                f"  {row['threads']} thread(s), batch {row['batch']}: chain/oracle {row['chain_vs_oracle']:.3f}x, "
                f"throughput {row['throughput_vs_monolithic']:.2f}x the monolithic model ({row['reps']} reps)"
            )
    lines.append("targets (printed, not asserted)")
    for row in report["targets"]:
        lines.append(f"  {row['name']:<46} {row['value']:8.3f}  {row['target']:<7} {'met' if row['met'] else 'MISSED'}")
    return "\n".join(lines)


def designs_from_args(bundle: Any, args: Any, options: Dict[str, Any]) -> Any:
    """``bench --designs THREADS``: its data, policy (the manifest's) and thread counts; (report, text)."""
    from hisd_edge.data import load_samples

    try:
        threads = [int(v) for v in str(args.designs).split(",") if v.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise InputError(f"--designs {args.designs!r}: give intra-op thread counts >= 1, e.g. --designs 1,2")
    if args.backend != "onnxruntime" or args.precision == "mixed":
        raise InputError("--designs compares ONNX Runtime designs of one precision; use --backend onnxruntime")
    if args.data == "random":
        tensors = synthetic_inputs(bundle.preprocessing.input_shape, args.samples or 64)
    else:
        tensors = load_samples(args.data, count=args.samples).tensors(bundle.preprocessing)
    policy = policy_from_manifest(bundle.policy, bundle.num_stages, bundle_exit_kind(bundle.exits))
    options = {k: v for k, v in options.items() if k != "intra_op_threads"}
    report = run_designs(
        bundle,
        tensors,
        policy,
        threads=threads,
        batch=args.batch_size,
        seconds=args.seconds,
        precision=args.precision,
        backend_options=options,
        progress=not args.no_progress and not args.json,
    )
    return report, format_designs(report)
