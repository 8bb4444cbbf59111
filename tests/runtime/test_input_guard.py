"""The input guard: the estimator, conformal calibration, the manifest record, and the runtime's use of it."""

import json
import math

import numpy as np
import pytest

from hisd_edge.bundle import MANIFEST, Bundle
from hisd_edge.errors import BundleError, InputError
from hisd_edge.runtime import guard as g
from hisd_edge.runtime.early_exit import open_runtime


def test_ledoit_wolf_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(0)
    for n, dim in ((20, 12), (300, 5), (50, 50)):
        x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
        x -= x.mean(axis=0)
        expected, _ = covariance.ledoit_wolf(x, assume_centered=True)
        np.testing.assert_allclose(g.ledoit_wolf(x), expected, rtol=1e-10, atol=1e-12)


def test_conformal_threshold_and_p_values_agree():
    rng = np.random.default_rng(1)
    cal = rng.normal(size=499)
    rate = 0.05
    threshold = g.conformal_threshold(cal, rate)
    test = rng.normal(size=5000) * 1.5
    flagged = test > threshold
    np.testing.assert_array_equal(flagged, g.conformal_p_values(test, cal) <= rate)
    with pytest.raises(InputError, match="needs at least 99 calibration scores"):
        g.conformal_threshold(cal[:50], 0.01)


def gaussian_features(n, rng, shift=0.0):
    """In-distribution: 3 classes in 6 dimensions (correlated), the class known from the first columns."""
    mixing = np.array([[1.0, 0.5, 0, 0, 0, 0], [0, 1.0, 0.3, 0, 0, 0], [0, 0, 1, 0, 0, 0.2]] + [[0] * 6] * 3)
    mixing[3:, 3:] = np.eye(3)
    classes = rng.integers(0, 3, n)
    centres = np.eye(6)[classes] * 4.0
    return rng.normal(size=(n, 6)) @ mixing + centres + shift, classes


@pytest.mark.parametrize("rate", [0.05, 0.01])
def test_false_alarm_rate_holds_over_repeated_calibrations(rate):
    """Split conformal: over calibration draws, in-distribution inputs are flagged at most ``rate``
    of the time on average, and not far less (the guard is not needlessly conservative).
    Fitting and calibrating on the same half would flag about twice as often (caught here)."""
    rng = np.random.default_rng(2)
    rates = []
    for _ in range(40):
        features, classes = gaussian_features(600, rng)
        guard = g.fit_guard(features, classes, rate)
        fresh, _ = gaussian_features(4000, rng)
        rates.append(guard.flags(guard.scores(fresh)).mean())
    mean = float(np.mean(rates))
    assert mean <= rate + 3 * math.sqrt(rate / (300 * 40)) + 0.002
    assert mean >= 0.5 * rate
    shifted, _ = gaussian_features(2000, rng, shift=3.0)
    assert guard.flags(guard.scores(shifted)).mean() > 0.9


def test_manifest_round_trip_and_a_damaged_record():
    rng = np.random.default_rng(3)
    features, classes = gaussian_features(800, rng)
    guard = g.fit_guard(features, classes, 0.01, data="somewhere")
    record = json.loads(json.dumps(guard.to_manifest()))
    again = g.InputGuard.from_manifest(record)
    probe, _ = gaussian_features(50, rng, shift=1.0)
    np.testing.assert_allclose(again.scores(probe), guard.scores(probe), rtol=1e-6)
    assert again.threshold == guard.threshold and again.record["data"] == "somewhere"
    assert record["fit_count"] == 400 and record["calibration_count"] == 400
    broken = dict(record, whitening=[[1.0, 2.0]])
    with pytest.raises(BundleError, match="input guard is damaged") as info:
        g.InputGuard.from_manifest(broken)
    assert "--no-guard" in str(info.value) and "\n" not in str(info.value)


def test_wide_features_are_projected_to_keep_the_manifest_small():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(600, 100))
    guard = g.fit_guard(features, None, 0.05)
    assert guard.projection is not None and guard.projection.shape == (100, g.MAX_GUARD_DIMENSIONS)
    assert guard.whitening.shape == (64, 64) and guard.means_whitened.shape == (1, 64)
    assert guard.flags(guard.scores(rng.normal(size=(2000, 100)) * 3)).mean() > 0.9


def test_too_little_data_for_the_rate():
    with pytest.raises(InputError, match="needs at least 198 in-distribution samples"):
        g.fit_guard(np.zeros((100, 4)), None, 0.01)
    with pytest.raises(InputError, match="between 0 and 1"):
        g.fit_guard(np.zeros((100, 4)), None, 1.5)


def _noise_and_blanks(count=8, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
    blank = np.zeros((count, 28, 28), np.uint8)
    white = np.full((count, 28, 28), 255, np.uint8)
    return np.concatenate([noise, blank, white])


@pytest.fixture(scope="module")
def guarded_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a guard calibrated on default:val (as convert and thresholds do)."""
    import shutil

    from hisd_edge.runtime.thresholds import fit_thresholds

    root = tmp_path_factory.mktemp("guarded") / "tiny"
    shutil.copytree(tiny_bundle, root)
    fit_thresholds(Bundle.open(root), "default:val", method="empirical", max_drop_points=1.0, count=400)
    return root


def test_flagged_inputs_may_not_leave_early(guarded_bundle, val_samples):
    bundle = Bundle.open(guarded_bundle)
    assert bundle.manifest["guard"]["calibrated_by"] == "hisd-edge thresholds"
    weird = _noise_and_blanks()
    spec = bundle.preprocessing
    from hisd_edge.preprocess import preprocess_batch

    x_weird = preprocess_batch(list(weird), spec)
    x_ok = val_samples.tensors(spec)[400:500]  # not the samples the guard was calibrated on
    everyone_leaves = [0.0, 0.0, None]
    with open_runtime(guarded_bundle, thresholds=everyone_leaves) as rt:
        results, _ = rt.infer_tensors(np.concatenate([x_weird, x_ok]))
        single = [rt.infer_tensors(x_weird[i : i + 1])[0][0] for i in range(len(x_weird))]
    weird_results, ok_results = results[: len(x_weird)], results[len(x_weird) :]
    assert all("out_of_distribution" in r.flags and r.exit == 2 for r in weird_results)
    assert [(r.exit, r.class_index, r.flags) for r in single] == [
        (r.exit, r.class_index, r.flags) for r in weird_results
    ]
    flagged_ok = [r for r in ok_results if "out_of_distribution" in r.flags]
    assert len(flagged_ok) <= 5  # 1 % false alarms on data like default:val (noise allowed)
    assert all(r.exit == 0 for r in ok_results if r not in flagged_ok)
    assert all(r.ood_score is not None for r in results)
    with open_runtime(guarded_bundle, thresholds=everyone_leaves, guard=False) as rt:
        unguarded, _ = rt.infer_tensors(x_weird)
    assert all(r.exit == 0 and not r.flags and r.ood_score is None for r in unguarded)


def test_abstain_stops_at_exit_0_without_a_class(guarded_bundle):
    from hisd_edge.preprocess import preprocess_batch

    spec = Bundle.open(guarded_bundle).preprocessing
    x = preprocess_batch(list(_noise_and_blanks(3)), spec)
    with open_runtime(guarded_bundle, thresholds=[0.999, 0.999, None], abstain=True) as rt:
        batch, trace = rt.infer_tensors(x)
        one = rt.infer_tensors(x[:1])[0][0]
    for r in [*batch, one]:
        assert r.exit == 0 and r.class_index is None and r.confidence is None
        assert r.flags == ["out_of_distribution", "abstained"]
    assert trace.stage_rows == [len(x)]  # nobody went on


def test_the_guard_needs_pooled_features_only_at_stage_0(guarded_bundle, val_samples):
    """The backend interface's pooled features equal the mean of feat0 over its spatial axes."""
    from hisd_edge.runtime.backend import create_backend

    bundle = Bundle.open(guarded_bundle)
    x = val_samples.tensors(bundle.preprocessing)[:6]
    with create_backend("onnxruntime", bundle) as backend:
        backend.start(x)
        r0 = backend.run_stage(0)
        pooled = r0.pooled_features()
        r1 = backend.run_stage(1, keep_rows=[1, 3])
        pooled1 = r1.pooled_features()
        r2 = backend.run_stage(2)
        with pytest.raises(RuntimeError, match="passes no features on"):
            r2.pooled_features()
        backend.start(x[:2])
        with pytest.raises(RuntimeError, match="earlier batch"):
            r0.pooled_features()
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle.stage_path(0)), providers=["CPUExecutionProvider"])
    feat0 = session.run(["feat0"], {"input": x})[0]
    np.testing.assert_allclose(pooled, feat0.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert pooled1.shape[0] == 2


def test_convert_calibrates_a_guard_on_its_validation_data(converted_bundle, val_samples):
    """convert's one call: stage 0 on the validation inputs; with too few of them, no guard (and a warning)."""
    bundle = Bundle.open(converted_bundle)
    assert bundle.manifest["validation"]["count"] == 64 and bundle.manifest["guard"] is None  # 64 < 198 needed
    x = val_samples.tensors(bundle.preprocessing)[:300]
    record = g.guard_record_for_convert(bundle.stage_path(0), x, "default:val")
    assert record is not None
    assert record["features"] == "feat0_pooled+input_mean_std" and record["calibrated_by"] == "hisd-edge convert"
    assert record["false_alarm_rate"] == g.DEFAULT_FALSE_ALARM_RATE and record["calibration_count"] == 150
    assert record["data_fingerprint"].startswith("sha256:") and record["data"] == "default:val"
    guard = g.InputGuard.from_manifest(record)
    # the same scores the runtime computes from the backend's pooled features
    from hisd_edge.runtime.backend import create_backend

    with create_backend("onnxruntime", bundle) as backend:
        backend.start(x[:20])
        runtime_scores = guard.score_batch(x[:20], backend.run_stage(0))
    import onnxruntime as ort

    feat0 = ort.InferenceSession(str(bundle.stage_path(0)), providers=["CPUExecutionProvider"]).run(
        ["feat0"], {"input": x[:20]}
    )[0]
    np.testing.assert_allclose(
        runtime_scores, guard.scores(g.guard_features(x[:20], feat0.mean(axis=(2, 3)))), rtol=1e-6
    )
    assert g.guard_record_for_convert(bundle.stage_path(0), x[:50], "default:val") is None


def test_run_cli_flags_and_no_guard(cli, guarded_bundle, tmp_path):
    path = tmp_path / "weird.npy"
    np.save(path, _noise_and_blanks(2))
    proc = cli("run", str(guarded_bundle), str(path), "--json", "--thresholds", "0,0,none")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all("out_of_distribution" in r["flags"] and r["exit"] == 2 for r in records)
    assert all(isinstance(r["ood_score"], float) for r in records)
    proc = cli("run", str(guarded_bundle), str(path), "--json", "--thresholds", "0,0,none", "--no-guard")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(r["exit"] == 0 and r["flags"] == [] and r["ood_score"] is None for r in records)
    proc = cli("run", str(guarded_bundle), str(path), "--abstain")
    assert proc.returncode == 0 and "flagged inputs abstain" in proc.stdout
    assert proc.stdout.count("out_of_distribution,abstained") == 6


def test_damaged_guard_and_abstain_without_a_guard(cli, guarded_bundle, tiny_bundle, copy_of, tmp_path):
    digits = tmp_path / "digits.npy"
    np.save(digits, np.zeros((2, 28, 28), np.uint8))
    proc = cli("run", str(tiny_bundle), str(digits), "--abstain")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--abstain needs the bundle's input guard" in lines[0]
    root = copy_of(guarded_bundle)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["guard"]["whitening"] = "nonsense"
    (root / MANIFEST).write_text(json.dumps(manifest))
    proc = cli("run", str(root), str(digits))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "input guard is damaged" in lines[0]
    proc = cli("run", str(root), str(digits), "--no-guard")
    assert proc.returncode == 0, proc.stderr
