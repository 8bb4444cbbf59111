"""Threshold search, cost readers and writing the policy into the manifest."""

import csv
import itertools
import json

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.errors import InputError
from hisd_edge.runtime.thresholds import ExitOutputs, calibrate, fit_thresholds, read_profile_costs, write_sweep_csv


def synthetic(n=200, num=3, classes=4, seed=0):
    """Exit outputs where deeper exits are right more often and confidence tracks correctness."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    outputs, confs = [], []
    for k in range(num):
        right = rng.random(n) < 0.7 + 0.12 * k
        pred = np.where(right, labels, (labels + 1 + rng.integers(0, classes - 1, n)) % classes)
        strength = np.where(right, rng.uniform(1.0, 5.0, n), rng.uniform(0.0, 2.0, n))
        logits = rng.normal(0, 0.1, (n, classes))
        logits[np.arange(n), pred] += strength
        outputs.append(logits)
        p = np.exp(logits - logits.max(1, keepdims=True))
        confs.append((p.max(1) / p.sum(1)).astype(np.float32))
    return ExitOutputs(outputs=outputs, confidences=confs), labels


def simulate(policy, outputs, labels, costs):
    scores = policy.all_scores(outputs.confidences, outputs.outputs)
    num = scores.shape[1]
    leave = scores[:, :-1] >= np.array([policy.score_threshold(k) for k in range(num - 1)])[None, :]
    exits = np.where(leave.any(axis=1), leave.argmax(axis=1), num - 1)
    preds = np.stack([np.argmax(o, 1) for o in outputs.outputs], 1)[np.arange(len(labels)), exits]
    return float((preds == labels).mean()), float(np.cumsum(costs)[exits].mean())


@pytest.mark.parametrize("kind", ["max_prob", "entropy", "margin", "patience"])
def test_chosen_thresholds_are_feasible_and_cheapest_on_the_grid(kind):
    outputs, labels = synthetic()
    costs = [1.0, 2.0, 4.0]
    cal = calibrate(kind, outputs, labels, costs, max_drop_points=2.0, grid=12)
    acc, cost = simulate(cal.policy, outputs, labels, costs)
    assert acc == pytest.approx(cal.accuracy) and cost == pytest.approx(cal.expected_cost)
    final = float((np.argmax(outputs.outputs[-1], 1) == labels).mean())
    assert cal.final_accuracy == pytest.approx(final)
    assert cal.accuracy >= final - 0.02 - 1e-9
    feasible = [row for row in cal.sweep_rows if row[cal.sweep_header.index("feasible")]]
    assert min(r[cal.sweep_header.index("expected_cost")] for r in feasible) == pytest.approx(cal.expected_cost)
    assert sum(cal.exit_fractions) == pytest.approx(1.0)
    assert cal.speedup == pytest.approx(7.0 / cal.expected_cost)


def test_exhaustive_search_beats_every_grid_point_by_brute_force():
    outputs, labels = synthetic(n=80, seed=3)
    costs = [1.0, 1.0, 5.0]
    cal = calibrate("max_prob", outputs, labels, costs, max_drop_points=1.0, grid=6)
    scores = cal.policy.all_scores(outputs.confidences, outputs.outputs)
    grids = [np.concatenate([np.unique(scores[:, k]), [np.inf]]) for k in range(2)]
    floor = cal.final_accuracy - 0.01 - 1e-12
    best = np.inf
    for t0, t1 in itertools.product(*[np.unique(np.concatenate([g, [g[0]]])) for g in grids]):
        policy = type(cal.policy)([None if np.isinf(t0) else t0, None if np.isinf(t1) else t1, None])
        acc, cost = simulate(policy, outputs, labels, costs)
        if acc >= floor:
            best = min(best, cost)
    # the grid is a subset of all distinct scores, so the full search can only be as good or better
    assert cal.expected_cost >= best - 1e-9
    assert cal.expected_cost <= simulate(type(cal.policy)([None, None, None]), outputs, labels, costs)[1]


def test_zero_drop_and_more_exits_use_coordinate_descent():
    outputs, labels = synthetic(n=150, num=6, seed=1)
    costs = [1.0] * 6
    cal = calibrate("max_prob", outputs, labels, costs, max_drop_points=0.0, grid=8)
    assert cal.accuracy >= cal.final_accuracy - 1e-12
    assert len(cal.policy.thresholds) == 6 and cal.policy.thresholds[-1] is None
    acc, cost = simulate(cal.policy, outputs, labels, costs)
    assert acc == pytest.approx(cal.accuracy) and cost == pytest.approx(cal.expected_cost)


def test_unlabelled_data_uses_agreement_with_the_last_exit():
    outputs, _ = synthetic()
    cal = calibrate("max_prob", outputs, None, [1, 1, 1], max_drop_points=5.0)
    assert cal.label_source == "final exit" and cal.final_accuracy == 1.0 and cal.accuracy >= 0.95


def test_bad_arguments():
    outputs, labels = synthetic(n=20)
    with pytest.raises(InputError, match="max-drop"):
        calibrate("max_prob", outputs, labels, [1, 1, 1], max_drop_points=-1)
    with pytest.raises(InputError, match="stage costs"):
        calibrate("max_prob", outputs, labels, [1, 1], max_drop_points=1)


def test_profile_reader(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(
            {
                "device": "orin",
                "stages": [
                    {"index": 1, "latency_ms": {"p50": 2.0, "p99": 9}, "energy_mj": 5},
                    {"index": 0, "latency_ms": 1.0, "energy_mj": {"mean": 3.0}},
                ],
            }
        )
    )
    assert read_profile_costs(path, 2, "latency")[0] == [1.0, 2.0]
    values, meta = read_profile_costs(path, 2, "energy")
    assert values == [3.0, 5.0] and meta["device"] == "orin"
    path.write_text(
        json.dumps({"batch_size": 4, "exits": [{"index": 0, "latency_ms": 4.0}, {"index": 1, "latency_ms": 10.0}]})
    )
    assert read_profile_costs(path, 2, "latency")[0] == [1.0, 1.5]  # cumulative, per batch of 4
    with pytest.raises(InputError, match="no 'energy_mj'"):
        read_profile_costs(path, 2, "energy")
    # The shape hisd-edge profile writes (hisd_edge/profile/schema.py): stats dicts, energy total/dynamic
    # or null with a reason, a batch-1 entry under "batches".
    stats = lambda p50: {"p50": p50, "p90": 2 * p50, "mean": 1.1 * p50, "count": 50}  # noqa: E731
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "kind": "hisd-edge-profile",
                "device": {"model": "Jetson Orin Nano"},
                "batch": 8,
                "stages": [
                    {
                        "index": k,
                        "latency_ms": stats(8.0 * (k + 1)),
                        "energy_mj": None,
                        "energy_unavailable_reason": "no power sensor",
                    }
                    for k in range(2)
                ],
                "batches": [
                    {"batch": 8, "stages": []},
                    {
                        "batch": 1,
                        "stages": [
                            {"index": k, "latency_ms": stats(k + 0.5), "energy_mj": {"total": 3.0 + k, "dynamic": 1.0}}
                            for k in range(2)
                        ],
                    },
                ],
            }
        )
    )
    values, meta = read_profile_costs(path, 2, "latency")
    assert values == [0.5, 1.5] and meta["device"] == "Jetson Orin Nano" and meta["batch"] == 1
    assert read_profile_costs(path, 2, "energy")[0] == [3.0, 4.0]
    report = json.loads(path.read_text())
    del report["batches"]
    path.write_text(json.dumps(report))
    assert read_profile_costs(path, 2, "latency")[0] == [1.0, 2.0]  # per batch of 8, amortised
    with pytest.raises(InputError, match="no power sensor"):
        read_profile_costs(path, 2, "energy")
    with pytest.raises(InputError, match="profiles 2 stages but the bundle has 3"):
        read_profile_costs(path, 3, "latency")
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_profile_costs(path, 2, "latency")
    with pytest.raises(InputError, match="no such profile"):
        read_profile_costs(tmp_path / "missing.json", 2, "latency")


def test_sweep_csv(tmp_path):
    outputs, labels = synthetic(n=50)
    cal = calibrate("margin", outputs, labels, [1, 2, 3], max_drop_points=1, grid=5)
    path = tmp_path / "out" / "sweep.csv"
    write_sweep_csv(path, cal)
    with open(path) as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == cal.sweep_header and len(rows) == 1 + len(cal.sweep_rows) == 1 + 5 * 5
    assert not list(path.parent.glob(".*tmp"))


def test_fit_writes_the_policy_atomically(tiny_bundle, copy_of):
    root = copy_of(tiny_bundle)
    bundle = Bundle.open(root)
    cal, details = fit_thresholds(bundle, "default:val", max_drop_points=1.0, count=120, method="empirical")
    reopened = Bundle.open(root)  # checksums still verify
    policy = reopened.policy
    assert policy["calibrated"] is True and policy["kind"] == "max_prob"
    assert policy["thresholds"] == cal.policy.thresholds
    assert policy["calibration"]["count"] == 120 and policy["calibration"]["costs"]["source"] == "measured here"
    assert len(details["stage_cost"]) == 3 and all(c > 0 for c in details["stage_cost"])
    before = (root / "manifest.json").read_bytes()
    with pytest.raises(InputError):
        fit_thresholds(Bundle.open(root), "default:val", policy_kind="stability", count=20)
    with pytest.raises(InputError, match="needs measured energy"):
        fit_thresholds(Bundle.open(root), "default:val", objective="energy", count=20)
    assert (root / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_embedding_exits_calibrate_stability_with_class_centroids(embedding_bundle, copy_of):
    root = copy_of(embedding_bundle)
    cal, _details = fit_thresholds(
        Bundle.open(root), "default:val", max_drop_points=5.0, count=80, grid=10, method="empirical"
    )
    assert cal.policy.kind == "stability" and cal.policy.thresholds[-1] is None
    assert cal.accuracy >= cal.final_accuracy - 0.05 - 1e-9
    # exit 0 has no previous embedding: its score is -inf, so it can never be chosen to leave there
    assert cal.exit_fractions[0] == 0.0
    assert Bundle.open(root).policy["kind"] == "stability"
    with pytest.raises(InputError, match="labelled"):
        from hisd_edge.runtime.thresholds import exit_predictions

        exit_predictions(ExitOutputs([np.ones((2, 3))], [None]), "embedding", None)


def test_a_folder_of_some_classes_is_scored_in_the_model_class_order(converted_bundle, tmp_path):
    """Sub-folders '3' and '7' are labels 0 and 1 to the folder, classes 3 and 7 to the model."""
    import cv2

    from hisd_edge.data import load_samples

    val = load_samples("default:val")
    for cls in (3, 7):
        (tmp_path / str(cls)).mkdir()
        for i in np.flatnonzero(val.labels == cls)[:20]:
            cv2.imwrite(str(tmp_path / str(cls) / f"{i}.png"), val.images[i])
    cal, _ = fit_thresholds(
        Bundle.open(converted_bundle), str(tmp_path), max_drop_points=0.0, write=False, method="empirical"
    )
    assert cal.final_accuracy > 0.8  # scored against classes 0/1 it would be ~0
