"""The demo's early-exit step: fit on one split, measure on another."""

import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.runtime import evaluate_early_exit, format_early_exit


def test_evaluate_fits_writes_and_measures(tiny_bundle, copy_of, tmp_path):
    import numpy as np

    from hisd_edge.data import load_samples

    root = copy_of(tiny_bundle)
    test = load_samples("default:test")
    np.savez(tmp_path / "test.npz", images=np.stack(test.images[:60]), labels=test.labels[:60])
    summary = evaluate_early_exit(root, test=str(tmp_path / "test.npz"), max_drop_points=1.0)
    assert Bundle.open(root).policy["thresholds"] == summary.policy["thresholds"]
    assert summary.count == 60 and sum(summary.exit_fractions) == pytest.approx(1.0)
    assert 0.0 <= summary.accuracy <= 1.0 and 0.0 <= summary.full_accuracy <= 1.0
    assert summary.mean_latency_ms > 0 and summary.speedup == pytest.approx(
        summary.full_mean_latency_ms / summary.mean_latency_ms
    )
    text = format_early_exit(summary)
    for needle in ("exit distribution", "accuracy", "mean latency", "speedup"):
        assert needle in text
    assert summary.to_dict()["accuracy_drop_points"] == pytest.approx(summary.accuracy_drop_points)
