"""Fit thresholds on one split, then measure early exit on another: the demo's early-exit step.

:func:`evaluate_early_exit` calibrates the bundle's thresholds on ``default:val`` (written into the
manifest), runs ``default:test`` one sample at a time through the early-exit runtime and through
the monolithic full model, interleaved, and returns the exit distribution, accuracy, mean latency
and speedup; :func:`format_early_exit` renders it as text.
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
    policy_kind: Optional[str] = None,
    backend: str = "onnxruntime",
    write: bool = True,
    passes: int = 1,
    progress: bool = False,
    backend_options: Optional[Dict[str, Any]] = None,
    val_count: Optional[int] = None,
    test_count: Optional[int] = None,
) -> EarlyExitSummary:
    """Calibrate on ``val`` (written to the manifest when ``write``), then measure on ``test``.

    ``val_count`` / ``test_count`` take a seeded subset of that many samples (default: all).
    """
    from hisd_edge.data import load_samples
    from hisd_edge.runtime.backend import create_backend
    from hisd_edge.runtime.bench import compare_per_sample
    from hisd_edge.runtime.policies import bundle_exit_kind
    from hisd_edge.runtime.thresholds import fit_thresholds

    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    samples = load_samples(test, count=test_count)
    tensors = samples.tensors(opened.preprocessing)
    exit_kind = bundle_exit_kind(opened.exits)
    with create_backend(backend, opened, load_full_model=True, **(backend_options or {})) as runner:
        calibration, _details = fit_thresholds(
            opened,
            val,
            max_drop_points=max_drop_points,
            policy_kind=policy_kind,
            count=val_count,
            write=write,
            progress=progress,
            runner=runner,
        )
        for _ in range(3):  # warm-up
            runner.run_full(tensors[:1])
        compared = compare_per_sample(
            runner,
            calibration.policy,
            tensors,
            samples.labels_for(opened.class_names, test),
            passes=passes,
            exit_kind=exit_kind,
            progress=progress,
        )
        full_model = runner.full_model_label
    early = compared["early_exit"]
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
    )


def format_early_exit(summary: EarlyExitSummary) -> str:
    """A few lines for the demo."""
    thresholds = ", ".join("never" if t is None else f"{t:.3g}" for t in summary.policy["thresholds"][:-1])
    lines = [
        f"thresholds ({summary.policy['kind']}) fitted on {summary.val_data}: {thresholds}",
        f"early exit on {summary.test_data} ({summary.count} samples, one at a time):",
        "  exit distribution  " + "  ".join(f"exit {k}: {100 * f:.1f}%" for k, f in enumerate(summary.exit_fractions)),
    ]
    if not np.isnan(summary.accuracy):
        lines.append(
            f"  accuracy           {100 * summary.accuracy:.2f}% (full model {100 * summary.full_accuracy:.2f}%, "
            f"drop {summary.accuracy_drop_points:.2f} points)"
        )
    lines.append(
        f"  mean latency       {summary.mean_latency_ms:.3f} ms (full model {summary.full_mean_latency_ms:.3f} ms)"
    )
    lines.append(
        f"  speedup            {summary.speedup:.2f}x over the {summary.full_model} "
        f"(calibration predicted {summary.expected_speedup_val:.2f}x on the validation split, "
        f"relative to running every stage)"
    )
    return "\n".join(lines)
