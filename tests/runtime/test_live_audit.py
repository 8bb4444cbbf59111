"""The live audit: seeded sampling, the interval, anytime-valid drift warnings, and ``run --audit``."""

import json
import math

import numpy as np
import pytest

from hisd_edge.errors import InputError
from hisd_edge.runtime.audit import LiveAudit, audit_reference

pytest.importorskip("scipy.stats")


def test_sampling_is_seeded_and_one_in_n():
    a, b = LiveAudit(10, None, seed=3), LiveAudit(10, None, seed=3)
    picks = np.concatenate([a.choose(100) for _ in range(50)])
    assert np.array_equal(picks, np.concatenate([b.choose(100) for _ in range(50)]))
    assert abs(picks.mean() - 0.1) < 0.015 and a.seen == 5000
    assert not np.array_equal(picks[:100], LiveAudit(10, None, seed=4).choose(100))
    assert LiveAudit(1, None).choose(7).all()
    # the sample depends on the position in the stream, not on how the stream is batched
    c = LiveAudit(10, None, seed=3)
    assert np.array_equal(np.concatenate([c.choose(1) for _ in range(5000)]), picks)
    with pytest.raises(InputError, match="--audit must be >= 1"):
        LiveAudit(0, None)


def test_no_false_warning_while_the_rate_stays_within_the_reference():
    """A check every 25 audited inputs; a fixed-level test would warn on many long streams at the
    reference rate. The union-bound spending keeps warnings below 1 - confidence."""
    rng = np.random.default_rng(0)
    streams, length, reference = 40, 1000, 0.02
    warned = 0
    for _ in range(streams):
        audit = LiveAudit(1, reference, confidence=0.9)
        for i, disagree in enumerate(rng.random(length) < reference):
            audit.record(not disagree, i)
        warned += bool(audit.warnings)
    assert warned / streams <= 0.1 + 3 * math.sqrt(0.09 / streams)


def test_a_drift_is_caught_and_reported_once():
    rng = np.random.default_rng(1)
    audit = LiveAudit(1, 0.02, confidence=0.9, window=100)
    first = None
    for i in range(600):
        rate = 0.01 if i < 300 else 0.25
        warning = audit.record(not (rng.random() < rate), i)
        if warning is not None:
            assert first is None
            first = warning
    assert first is not None and 300 <= first.index < 400 and first.audited % audit.check_every == 0
    assert first.lower_bound > 0.02 and "drifted" in first.text()
    summary = audit.summary()
    assert summary["exceeded"] and summary["first_exceeded_at"] == first.index
    low, high = summary["interval"]
    assert low <= summary["disagreement_rate"] <= high
    assert summary["audited"] == 600 and summary["window"]["size"] == 100


def test_reference_comes_from_the_certificate():
    assert audit_reference({"certificate": {"audit_reference_points": 1.5}}) == pytest.approx(0.015)
    assert audit_reference({"certificate": {"method": "empirical"}}) is None
    assert audit_reference({}) is None


def test_run_audit_compares_with_the_full_model(cli, tiny_bundle, tmp_path, val_samples):
    path = tmp_path / "digits.npy"
    np.save(path, np.stack(val_samples.images[:60]))
    # everyone leaves at exit 0: the audit reruns every sampled input to the last exit
    proc = cli("run", str(tiny_bundle), str(path), "--json", "--thresholds", "0,0,none", "--audit", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    records, summary = lines[:-1], lines[-1]["audit"]
    assert len(records) == 60 and all(r["audit"] is not None for r in records)
    proc_full = cli("run", str(tiny_bundle), str(path), "--json", "--exit-at", "2")
    finals = [json.loads(line)["class_index"] for line in proc_full.stdout.splitlines()]
    assert [r["audit"]["final_class"] for r in records] == finals
    disagreements = sum(r["class_index"] != f for r, f in zip(records, finals))
    assert summary["audited"] == 60 and summary["disagreements"] == disagreements
    assert summary["reference"] is None  # thresholds from the command line: nothing certified to compare with
    proc = cli("run", str(tiny_bundle), str(path), "--audit", "4", "--audit-seed", "2")
    assert proc.returncode == 0 and "audit: " in proc.stdout.splitlines()[-1]


def test_run_audit_warns_when_the_certified_rate_is_exceeded(cli, tiny_bundle, copy_of, tmp_path, val_samples):
    """A bundle certified for 0.1 % disagreement, run on Gaussian-noised digits with the guard off:
    the audit sees the early exits disagree with the full model and warns once, in the JSON too."""
    root = copy_of(tiny_bundle)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["policy"] = {
        "kind": "max_prob",
        "thresholds": [0.5, 0.5, None],
        "calibrated": True,
        "certificate": {
            "method": "certified",
            "risk": "disagreement",
            "max_drop_points": 0.1,
            "confidence": 0.9,
            "count": 500,
            "data": "default:val",
            "audit_reference_points": 0.1,
        },
    }
    manifest_path.write_text(json.dumps(manifest))
    rng = np.random.default_rng(0)
    digits = np.stack(val_samples.images[:300]).astype(np.float32)
    noisy = np.clip(digits + rng.normal(0, 90, digits.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "noisy.npy"
    np.save(path, noisy)
    proc = cli("run", str(root), str(path), "--json", "--audit", "2", "--no-guard")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])["audit"]
    assert summary["exceeded"] and summary["reference"] == pytest.approx(0.001)
    assert summary["disagreement_rate"] > 0.05
    assert proc.stderr.count("warning: audit:") == 1 and "drifted" in proc.stderr
