"""The demo's early-exit step: fit on one split, measure on another."""

import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.runtime import evaluate_early_exit, format_early_exit, open_runtime


def test_evaluate_fits_writes_and_measures(tiny_bundle, copy_of, tmp_path):
    import numpy as np

    from hisd_edge.data import load_samples

    root = copy_of(tiny_bundle)
    test = load_samples("default:test")
    np.savez(tmp_path / "test.npz", images=np.stack(test.images[:60]), labels=test.labels[:60])
    summary = evaluate_early_exit(root, test=str(tmp_path / "test.npz"), max_drop_points=1.0)
    assert Bundle.open(root).policy["thresholds"] == summary.policy["thresholds"]
    assert summary.count == 60 and sum(summary.exit_fractions) == pytest.approx(1.0)
    # The figures are what the runtime and the full model do on those 60 digits, recomputed here.
    labels = test.labels[:60]
    x = test.tensors(Bundle.open(root).preprocessing)[:60]
    with open_runtime(root, policy=summary.policy) as runtime:
        results = [runtime.infer_tensors(x[i : i + 1])[0][0] for i in range(60)]  # one at a time, as measured
        full = runtime.backend.run_full(x).outputs[-1]
    assert summary.accuracy == pytest.approx(np.mean([r.class_index for r in results] == labels))
    assert summary.full_accuracy == pytest.approx(np.mean(full.argmax(axis=1) == labels))
    assert summary.exit_fractions == pytest.approx(np.bincount([r.exit for r in results], minlength=3) / 60)
    assert summary.full_accuracy > 0.85  # the tiny model, trained 3 epochs (~93% on default:val)
    assert summary.accuracy_drop_points <= 5.0  # thresholds fitted for a 1-point drop, measured on 60 samples
    assert summary.mean_latency_ms > 0 and summary.speedup == pytest.approx(
        summary.full_mean_latency_ms / summary.mean_latency_ms
    )
    text = format_early_exit(summary)
    for needle in ("exit distribution", "accuracy", "mean latency", "speedup"):
        assert needle in text
    assert summary.to_dict()["accuracy_drop_points"] == pytest.approx(summary.accuracy_drop_points)
