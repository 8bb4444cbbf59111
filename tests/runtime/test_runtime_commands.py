"""The run / thresholds / bench verbs: help, output, and every bad-input path (one line, exit 2)."""

import csv
import json

import numpy as np
import pytest

from hisd_edge.bundle import MANIFEST, Bundle


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("verb", ["run", "thresholds", "bench"])
def test_help(cli, verb):
    proc = cli(verb, "--help")
    assert proc.returncode == 0 and f"usage: hisd-edge {verb}" in proc.stdout


@pytest.fixture()
def images(tmp_path, val_samples):
    import cv2

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / f"d{i}.png"), val_samples.images[i])
    cv2.imwrite(
        str(folder / "sub" / "big.jpg"), np.repeat(cv2.resize(val_samples.images[3], (64, 48))[:, :, None], 3, 2)
    )
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def test_run_table_json_and_per_item_errors(cli, tiny_bundle, images, tmp_path):
    proc = cli("run", str(tiny_bundle), str(images), "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("warning: thresholds are convert's uncalibrated defaults")
    assert lines[1].split()[:4] == ["input", "exit", "class", "conf"]
    assert any("broken.png" in line and "error: cannot be decoded" in line for line in lines)
    assert "5 input(s), 4 ran, 1 error(s)" in lines[-1]
    proc = cli("run", str(tiny_bundle), str(images), "--json", "--exit-at", "1")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 5 and [r["index"] for r in records] == list(range(5))
    good = [r for r in records if r["error"] is None]
    assert len(good) == 4 and {r["exit"] for r in good} == {1}
    assert all(len(r["stage_latency_ms"]) == 2 and r["class_name"] in "0123456789" for r in good)


def test_run_arrays_nan_and_labels(cli, tiny_bundle, tmp_path, val_samples):
    raw = np.stack(val_samples.images[:4]).astype(np.float32)
    raw[2, 5, 5] = np.nan
    np.save(tmp_path / "raw.npy", raw)
    proc = cli("run", str(tiny_bundle), str(tmp_path / "raw.npy"), "--json")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and len(records) == 4
    assert "nonfinite_input" in records[2]["flags"] and records[0]["flags"] == []
    np.savez(tmp_path / "lab.npz", images=np.stack(val_samples.images[:10]), labels=val_samples.labels[:10])
    proc = cli("run", str(tiny_bundle), str(tmp_path / "lab.npz"), "--thresholds", "none,none,none")
    assert proc.returncode == 0 and "accuracy" in proc.stdout.splitlines()[-1]
    assert "exit 2: 100.0%" in proc.stdout


def test_run_video(cli, tiny_bundle, tmp_path, val_samples):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (28, 28))
    assert writer.isOpened(), "this OpenCV cannot write MJPG video (a broken install: CI's opencv-python-headless can)"
    for i in range(6):
        writer.write(cv2.cvtColor(val_samples.images[i], cv2.COLOR_GRAY2BGR))
    writer.release()
    proc = cli("run", str(tiny_bundle), str(path), "--json", "--frames", "4", "--every", "1")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and [r["name"].rsplit("#", 1)[1] for r in records] == [
        "frame0",
        "frame1",
        "frame2",
        "frame3",
    ]


def test_run_bad_inputs(cli, tiny_bundle, tmp_path, copy_of):
    one_line_error(cli("run", str(tiny_bundle), "97"), "camera 97 cannot be opened")
    one_line_error(cli("run", str(tiny_bundle), "videotestsrc ! appsink"), "GStreamer")
    one_line_error(cli("run", str(tiny_bundle), str(tmp_path / "nothing.png")), "no such file")
    one_line_error(cli("run", str(tmp_path / "nobundle"), "default:test"), "no such bundle directory")
    np.save(tmp_path / "pre.npy", np.zeros((2, 1, 32, 32), np.float32))
    one_line_error(cli("run", str(tiny_bundle), str(tmp_path / "pre.npy")), "expects (1, 28, 28)")
    one_line_error(cli("run", str(tiny_bundle), "default:test", "--exit-at", "5"), "--exit-at 5")
    one_line_error(cli("run", str(tiny_bundle), "default:test", "--thresholds", "high,low"), "--thresholds")
    one_line_error(cli("run", str(tiny_bundle), "default:test", "--policy", "wild"), "unknown exit policy")
    one_line_error(cli("run", str(tiny_bundle), "default:test", "--providers", "cuda"), "onnxruntime-gpu")
    one_line_error(cli("run", str(tiny_bundle), "default:test", "--precision", "int8"), "no int8 stage files")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    one_line_error(cli("run", str(tiny_bundle), str(bad)), "none of the 1 input(s)")


def test_damaged_bundles(cli, tiny_bundle, copy_of, tmp_path):
    import shutil

    altered = copy_of(tiny_bundle)
    with open(altered / "stage1.fp32.onnx", "ab") as handle:
        handle.write(b"\0")
    one_line_error(cli("run", str(altered), "default:val"), "stage1.fp32.onnx", "checksum mismatch")
    (altered / "stage1.fp32.onnx").unlink()
    one_line_error(cli("thresholds", str(altered)), "stage1.fp32.onnx", "missing")
    future = tmp_path / "future"
    shutil.copytree(tiny_bundle, future)
    manifest = json.loads((future / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (future / MANIFEST).write_text(json.dumps(manifest))
    one_line_error(cli("bench", str(future)), "schema version 99")


def test_thresholds_writes_policy_and_sweep(cli, tiny_bundle, copy_of, tmp_path):
    root = copy_of(tiny_bundle)
    sweep = tmp_path / "sweep.csv"
    profile = tmp_path / "profile.json"
    profile.write_text(
        json.dumps({"stages": [{"latency_ms": {"p50": v}, "energy_mj": 2 * v} for v in (1.0, 2.0, 5.0)]})
    )
    proc = cli(
        "thresholds",
        str(root),
        "--count",
        "150",
        "--method",
        "empirical",
        "--max-drop",
        "1",
        "--costs",
        str(profile),
        "--objective",
        "energy",
        "--sweep-csv",
        str(sweep),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cost_unit"] == "mJ" and out["stage_cost"] == [2.0, 4.0, 10.0] and out["written"]
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["policy"]["thresholds"] == out["policy"]["thresholds"]
    assert manifest["policy"]["calibration"]["objective"] == "energy"
    rows = list(csv.reader(sweep.read_text().splitlines()))
    assert rows[0][:2] == ["threshold0", "threshold1"] and len(rows) > 2
    proc = cli(
        "thresholds",
        str(root),
        "--count",
        "100",
        "--method",
        "empirical",
        "--policy",
        "entropy",
        "--dry-run",
        "--sweep-csv",
        str(sweep),
        "--no-progress",
    )
    assert proc.returncode == 0 and "manifest unchanged" in proc.stdout and "speedup" in proc.stdout
    assert json.loads((root / MANIFEST).read_text())["policy"]["kind"] == "max_prob"


def test_thresholds_bad_inputs_leave_the_manifest_alone(cli, tiny_bundle, copy_of, tmp_path):
    root = copy_of(tiny_bundle)
    before = (root / MANIFEST).read_bytes()
    one_line_error(cli("thresholds", str(root), "--objective", "energy"), "--costs")
    one_line_error(cli("thresholds", str(root), "--costs", str(tmp_path / "none.json")), "no such profile report")
    (tmp_path / "short.json").write_text(json.dumps({"stages": [{"latency_ms": 1}]}))
    one_line_error(
        cli("thresholds", str(root), "--costs", str(tmp_path / "short.json"), "--count", "20"), "profiles 1 stages"
    )
    one_line_error(cli("thresholds", str(root), "--max-drop", "-1", "--count", "20"), "--max-drop")
    one_line_error(cli("thresholds", str(root), "--data", str(tmp_path / "nowhere")), "no such file")
    assert (root / MANIFEST).read_bytes() == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_bench_quick_json(cli, tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli(
        "bench",
        str(tiny_bundle),
        "--samples",
        "40",
        "--seconds",
        "2",
        "--batch-size",
        "8",
        "--targets",
        "--json",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert [row["batch"] for row in report["chain"]] == [1, 8]
    assert all(row["full_ms"] > 0 and row["chain_ms"] > 0 for row in report["chain"])
    assert len(report["exits"]) == 3 and report["policy_source"].startswith("fitted on default:val")
    early = report["early_exit"]
    # The accuracies and exit shares are what the runtime does with that policy on those 40 digits,
    # recomputed here sample by sample (as bench runs them).
    from hisd_edge.data import load_samples
    from hisd_edge.runtime import open_runtime, run_chain

    samples = load_samples("default:test", count=40)
    x = samples.tensors(Bundle.open(tiny_bundle).preprocessing)
    with open_runtime(tiny_bundle, policy=report["policy"]) as runtime:
        results = [runtime.infer_tensors(x[i : i + 1])[0][0] for i in range(40)]
        every_exit = np.stack(
            [[r.exit_output()[0].argmax() for r in run_chain(runtime.backend, x[i : i + 1])] for i in range(40)]
        )
    assert early["accuracy"] == pytest.approx(np.mean([r.class_index for r in results] == samples.labels))
    assert early["full_accuracy"] == pytest.approx(np.mean(every_exit[:, -1] == samples.labels))
    assert early["exit_fractions"] == pytest.approx(np.bincount([r.exit for r in results], minlength=3) / 40)
    assert report["oracle"]["accuracy"] == pytest.approx(np.mean((every_exit == samples.labels[:, None]).any(1)))
    assert report["throughput"]["early_exit_samples_per_s"] > 0 and report["decision"]["batch1_us"] >= 0
    assert {t["name"] for t in report["targets"]} >= {"early-exit speedup", "mean latency vs oracle"}
    # the one measurement method: per sample at batch 1, with the leave-one-pass-out spread and the sample count
    assert early["samples"] == 40 and early["batch"] == 1 and early["passes"] >= 3
    low, high = early["speedup_range"]
    assert len(early["speedup_leave_one_pass_out"]) == early["passes"] and low <= early["speedup"] <= high
    assert "per sample at batch 1" in early["figure"] and "40 samples" in early["figure"]


def test_bench_random_inputs_text(cli, tiny_bundle):
    proc = cli(
        "bench", str(tiny_bundle), "--data", "random", "--count", "8", "--seconds", "1", "--batch", "4", "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    assert "monolithic full model vs all stages chained" in proc.stdout and "oracle" not in proc.stdout
    # the old spellings --count/--batch still work (hidden), and the goals block needs --targets
    assert "targets" not in proc.stdout and "MISSED" not in proc.stdout
