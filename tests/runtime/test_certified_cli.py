"""thresholds (certified / empirical / label-free), what the manifest records, how inspect, run and bench
show it, and every bad input of issue 12 as a one-line error."""

import json

import numpy as np
import pytest

from hisd_edge.bundle import MANIFEST, Bundle

pytest.importorskip("scipy.stats")


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_certified_thresholds_record_the_certificate_and_are_shown(cli, tiny_bundle, copy_of, tmp_path):
    root = copy_of(tiny_bundle)
    proc = cli(
        "thresholds",
        str(root),
        "--max-drop",
        "2",
        "--confidence",
        "0.8",
        "--sweep-csv",
        str(tmp_path / "s.csv"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    cert = Bundle.open(root).policy["certificate"]
    assert cert == {**out["certificate"], "data": "default:val", "data_fingerprint": out["data_fingerprint"]}
    assert cert["method"] == "certified" and cert["risk"] == "accuracy" and cert["max_drop_points"] == 2.0
    assert cert["confidence"] == 0.8 and cert["count"] == 500 and cert["data_fingerprint"].startswith("sha256:")
    assert "Learn-then-Test" in cert["test"] and "shared max_prob threshold" in cert["family"]
    assert Bundle.open(root).manifest["guard"]["calibrated_by"] == "hisd-edge thresholds"
    inspect = cli("inspect", str(root))
    assert "certified: accuracy drop <= 2.0 points with confidence 0.8" in inspect.stdout
    assert "input guard: Mahalanobis on feat0_pooled+input_mean_std, 1% false alarms" in inspect.stdout
    digits = tmp_path / "digits.npy"
    from hisd_edge.data import load_samples

    np.save(digits, np.stack(load_samples("default:test").images[:5]))
    run = cli("run", str(root), str(digits))
    assert run.returncode == 0 and run.stdout.splitlines()[0].startswith("certified: accuracy drop <= 2.0 points")
    assert run.stdout.splitlines()[1].startswith("input guard:")
    run = cli("run", str(root), str(digits), "--json")
    assert "certified: accuracy drop" in run.stderr and all(json.loads(line) for line in run.stdout.splitlines())
    bench = cli("bench", str(root), "--count", "30", "--seconds", "1", "--batch", "4", "--json")
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["certificate"]["method"] == "certified" and report["guard"].startswith("input guard:")


def test_empirical_fit_says_no_guarantee_everywhere(cli, tiny_bundle, copy_of, tmp_path):
    root = copy_of(tiny_bundle)
    proc = cli(
        "thresholds", str(root), "--method", "empirical", "--max-drop", "1", "--sweep-csv", str(tmp_path / "s.csv")
    )
    assert proc.returncode == 0, proc.stderr
    assert "thresholds fitted empirically on 500 samples of default:val: no guarantee" in proc.stdout
    cert = Bundle.open(root).policy["certificate"]
    assert cert["method"] == "empirical" and cert["confidence"] is None and cert["guarantee"].startswith("none")
    assert "no guarantee" in cli("inspect", str(root)).stdout
    assert "no guarantee" in cli("bench", str(root), "--count", "20", "--seconds", "1", "--batch", "4").stdout


def test_label_free_calibration_on_a_folder_of_frames(cli, tiny_bundle, copy_of, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from hisd_edge.data import load_samples

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(load_samples("default:val").images):
        cv2.imwrite(str(frames / f"f{i:04d}.png"), image)
    root = copy_of(tiny_bundle)
    proc = cli(
        "thresholds", str(root), "--data", str(frames), "--max-drop", "3", "--sweep-csv", str(tmp_path / "s.csv")
    )
    assert proc.returncode == 0, proc.stderr
    assert "certified: disagreement with the final exit <= 3.0 points" in proc.stdout
    assert "(accuracy = agreement with the last exit: no labels)" in proc.stdout
    cert = Bundle.open(root).policy["certificate"]
    assert cert["risk"] == "disagreement" and cert["count"] == 500 and cert["audit_reference_points"] == 3.0
    one_line_error(
        cli("thresholds", str(root), "--data", str(frames), "--risk", "accuracy"),
        "has no labels but --risk accuracy needs them",
        "--risk disagreement",
    )


def test_bad_inputs_are_one_line_and_leave_the_manifest_alone(cli, tiny_bundle, embedding_bundle, copy_of, tmp_path):
    root = copy_of(tiny_bundle)
    before = (root / MANIFEST).read_bytes()
    one_line_error(
        cli("thresholds", str(root), "--count", "60", "--max-drop", "1"),
        "60 calibration samples can certify at best",
        "needs at least 230 samples",
    )
    one_line_error(cli("thresholds", str(root), "--confidence", "1.2"), "--confidence must be strictly between 0 and 1")
    one_line_error(cli("thresholds", str(root), "--confidence", "0"), "--confidence must be strictly between 0 and 1")
    one_line_error(cli("thresholds", str(root), "--max-drop", "-0.5"), "--max-drop must be >= 0")
    one_line_error(cli("thresholds", str(root), "--max-drop", "0"), "--max-drop 0 cannot be certified")
    one_line_error(cli("thresholds", str(root), "--guard-false-alarms", "2"), "--guard-false-alarms")
    labelled = tmp_path / "labelled.npz"
    images = np.zeros((40, 28, 28), np.uint8)
    np.savez(labelled, images=images, labels=np.r_[np.zeros(39, np.int64), [-1]])
    one_line_error(
        cli("thresholds", str(root), "--data", str(labelled)), "label -1 is negative", "class indices from 0"
    )
    np.savez(labelled, images=images, labels=np.r_[np.zeros(39, np.int64), [12]])
    one_line_error(cli("thresholds", str(root), "--data", str(labelled)), "labels go up to 12")
    floats = tmp_path / "floats.npy"
    np.save(floats, np.random.default_rng(0).random((40, 28, 28)).astype(np.float32))
    one_line_error(
        cli("thresholds", str(root), "--data", str(floats)), "expects raw pixels 0..255", "--input-scale 0-1"
    )
    assert (root / MANIFEST).read_bytes() == before
    emb = copy_of(embedding_bundle)
    one_line_error(
        cli("thresholds", str(emb), "--count", "50"), "exits give embeddings, not classes", "--method empirical"
    )


def test_run_refuses_arrays_on_another_scale_in_one_line(cli, tiny_bundle, tmp_path, val_samples):
    raw = np.stack(val_samples.images[:6]).astype(np.float32)
    path = tmp_path / "unit.npy"
    np.save(path, raw / 255.0)
    one_line_error(
        cli("run", str(tiny_bundle), str(path)), "lie in 0..1", "expects raw pixels 0..255", "--input-scale 0-1"
    )
    converted = cli("run", str(tiny_bundle), str(path), "--input-scale", "0-1", "--json")
    np.save(tmp_path / "raw.npy", raw)
    plain = cli("run", str(tiny_bundle), str(tmp_path / "raw.npy"), "--json")
    assert converted.returncode == 0 and plain.returncode == 0
    strip = lambda out: [(r["exit"], r["class_index"]) for r in map(json.loads, out.splitlines())]  # noqa: E731
    assert strip(converted.stdout) == strip(plain.stdout)
    normed = tmp_path / "normed.npy"
    np.save(normed, (raw / 255.0 - 0.1307) / 0.3081)
    one_line_error(cli("run", str(tiny_bundle), str(normed)), "go down to", "--input-scale normalized")
    assert strip(cli("run", str(tiny_bundle), str(normed), "--input-scale", "normalized", "--json").stdout) == strip(
        plain.stdout
    )
    nchw = tmp_path / "nchw.npy"
    np.save(nchw, raw[:, None])
    one_line_error(cli("run", str(tiny_bundle), str(nchw)), "outside the normalised range", "--input-scale 0-255")
    one_line_error(cli("run", str(tiny_bundle), str(path), "--audit", "0"), "--audit must be >= 1")
