"""Fit thresholds on one split, then measure early exit on another: the demo's early-exit step.

:func:`evaluate_early_exit` calibrates the bundle's thresholds on ``default:val`` (certified by
default; written into the manifest with the input guard), runs ``default:test`` one sample at a
time through the early-exit runtime (with the guard, as ``run`` does) and through the monolithic
full model, interleaved, and returns the exit distribution, accuracy, mean latency, speedup and
what the thresholds promise; :func:`format_early_exit` renders it as text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from hisd_edge.bundle import Bundle


@dataclasses.dataclass
class EarlyExitSummary:
    bundle: str
    policy: Dict[str, Any]
    val_data: str
    test_data: str
    count: int
    exit_fractions: List[float]
    accuracy: float
    full_accuracy: float
    mean_latency_ms: float
    full_mean_latency_ms: float
    expected_speedup_val: float  # what the calibration predicted from stage costs on the validation split
    full_model: str = "monolithic full model"  # what the "full" figures ran (the backend's full_model_label)
    certificate: Dict[str, Any] = dataclasses.field(default_factory=dict)  # policy.certificate (hisd_edge.bundle)
    guard: Optional[str] = None  # the input guard used on the test split (None: none)
    flagged: int = 0  # test samples the guard flagged as out of distribution
    speedup_range: Optional[List[float]] = None  # lowest and highest speedup leaving one pass out (the spread)
    passes: int = 1
    figure: str = ""  # what the latency figures are (hisd_edge.runtime.bench.METHOD_LABEL)

    @property
    def speedup(self) -> float:
        return self.full_mean_latency_ms / self.mean_latency_ms

    @property
    def accuracy_drop_points(self) -> float:
        return 100.0 * (self.full_accuracy - self.accuracy)

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "speedup": self.speedup, "accuracy_drop_points": self.accuracy_drop_points}


def evaluate_early_exit(
    bundle: Union[str, Path, Bundle],
    *,
    val: str = "default:val",
    test: str = "default:test",
    max_drop_points: float = 0.5,
    method: str = "certified",
    confidence: float = 0.9,
    policy_kind: Optional[str] = None,
    backend: str = "onnxruntime",
    write: bool = True,
    passes: Optional[int] = None,
    progress: bool = False,
    backend_options: Optional[Dict[str, Any]] = None,
    val_count: Optional[int] = None,
    test_count: Optional[int] = None,
) -> EarlyExitSummary:
    """Calibrate on ``val`` (written to the manifest when ``write``), then measure on ``test``.

    ``val_count`` / ``test_count`` take a seeded subset of that many samples (default: all).
    Latency and speedup come from :func:`hisd_edge.runtime.bench.measure_early_exit` (the method
    every verb uses; ``passes`` defaults to its ``DEFAULT_PASSES``).
    """
    from hisd_edge.data import load_samples
    from hisd_edge.runtime.backend import create_backend
    from hisd_edge.runtime.bench import DEFAULT_PASSES, measure_early_exit
    from hisd_edge.runtime.early_exit import run_early_exit
    from hisd_edge.runtime.guard import FLAG_OUT_OF_DISTRIBUTION, guard_from_bundle
    from hisd_edge.runtime.policies import bundle_exit_kind
    from hisd_edge.runtime.thresholds import fit_thresholds

    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    samples = load_samples(test, count=test_count)
    tensors = samples.tensors(opened.preprocessing)
    exit_kind = bundle_exit_kind(opened.exits)
    with create_backend(backend, opened, load_full_model=True, **(backend_options or {})) as runner:
        calibration, details = fit_thresholds(
            opened,
            val,
            max_drop_points=max_drop_points,
            method=method,
            confidence=confidence,
            policy_kind=policy_kind,
            count=val_count,
            write=write,
            progress=progress,
            runner=runner,
        )
        guard = guard_from_bundle(opened) if write and exit_kind == "logits" else None
        flagged = 0
        if guard is not None:
            results, _ = run_early_exit(runner, calibration.policy, tensors, guard=guard)
            flagged = sum(FLAG_OUT_OF_DISTRIBUTION in r.flags for r in results)
        early = measure_early_exit(
            runner,
            calibration.policy,
            tensors,
            samples.labels_for(opened.class_names, test),
            passes=DEFAULT_PASSES if passes is None else passes,
            exit_kind=exit_kind,
            progress=progress,
            guard=guard,
        )
        full_model = runner.full_model_label
    accuracy = early.get("accuracy", float("nan"))
    full_accuracy = early.get("full_accuracy", float("nan"))
    return EarlyExitSummary(
        bundle=str(opened.root),
        policy=calibration.policy.to_manifest(),
        val_data=val,
        test_data=test,
        count=len(tensors),
        exit_fractions=[float(f) for f in early["exit_fractions"]],
        accuracy=accuracy,
        full_accuracy=full_accuracy,
        mean_latency_ms=early["mean_latency_ms"],
        full_mean_latency_ms=early["full_mean_latency_ms"],
        expected_speedup_val=calibration.speedup,
        full_model=full_model,
        certificate={**calibration.certificate, "data": val, "data_fingerprint": details["data_fingerprint"]},
        guard=None if guard is None else guard.describe(),
        flagged=flagged,
        speedup_range=early.get("speedup_range"),
        passes=int(early.get("passes", 1)),
        figure=str(early.get("figure", "")),
    )


def format_early_exit(summary: EarlyExitSummary) -> str:
    """A few lines for the demo: what the thresholds promise, then what they did on the test split."""
    from hisd_edge.runtime.risk import RISK_NAMES, certificate_text

    thresholds = ", ".join("never" if t is None else f"{t:.6g}" for t in summary.policy["thresholds"][:-1])
    cert = summary.certificate
    lines = [
        f"thresholds ({summary.policy['kind']}) fitted on {summary.val_data}: {thresholds}",
        certificate_text(cert),
    ]
    if cert.get("method") == "certified":
        lines.append(
            f"  what {summary.val_data} can certify: at best {cert['best_certifiable_points']:.3g} points "
            f"({RISK_NAMES[cert['risk']]}) at confidence {cert['confidence']:g}, from its {cert['count']} samples "
            "(a tighter bound needs more samples)"
        )
    if summary.guard:
        lines.append(
            f"{summary.guard}; flagged {summary.flagged} of {summary.count} test samples (they run to the last exit)"
        )
    lines += [
        f"early exit on {summary.test_data} ({summary.count} samples, one at a time):",
        "  exit distribution  " + "  ".join(f"exit {k}: {100 * f:.1f}%" for k, f in enumerate(summary.exit_fractions)),
    ]
    if not np.isnan(summary.accuracy):
        lines.append(
            f"  accuracy           {100 * summary.accuracy:.2f}% (full model {100 * summary.full_accuracy:.2f}%, "
            f"drop {summary.accuracy_drop_points:.2f} points)"
        )
    lines.append(
        f"  mean latency       {summary.mean_latency_ms:.3f} ms per sample (full model "
        f"{summary.full_mean_latency_ms:.3f} ms per sample)"
    )
    low, high = summary.speedup_range or (summary.speedup, summary.speedup)
    lines.append(
        f"  speedup            {summary.speedup:.2f}x over the {summary.full_model} (spread "
        f"{low:.2f}-{high:.2f}x leaving one of {summary.passes} passes out)"
    )
    if summary.figure:
        lines.append(f"    measured {summary.figure}")
    lines.append(
        f"    calibration predicted {summary.expected_speedup_val:.2f}x on the validation split from per-stage costs "
        "(relative to running every stage, without the guard and the per-call overhead of the exit decision)"
    )
    return "\n".join(lines)
