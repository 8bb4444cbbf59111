"""``run``'s figures say what they are (per sample, FPS), its flags agree with the other verbs, its
threshold input is K-1 values or K, and labelled folders get an accuracy (issue 13)."""

import json

import numpy as np
import pytest

from tests.runtime.test_runtime_commands import one_line_error


def _video(path, images, count):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (28, 28))
    assert writer.isOpened(), "this OpenCV cannot write MJPG video (CI's opencv-python-headless can)"
    for i in range(count):
        writer.write(cv2.cvtColor(images[i], cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_json_latency_is_the_batch_call_divided_among_its_rows(cli, tiny_bundle, tmp_path, val_samples):
    np.save(tmp_path / "x.npy", np.stack(val_samples.images[:10]).astype(np.uint8))
    proc = cli("run", str(tiny_bundle), str(tmp_path / "x.npy"), "--json", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["batch_rows"] for r in records] == [4] * 8 + [2] * 2
    for r in records:
        assert r["latency_ms"] == pytest.approx(r["batch_latency_ms"] / r["batch_rows"], abs=2e-4)
    assert "ms per sample at batch 4" in proc.stderr and "10 samples" in proc.stderr


def test_streams_default_to_batch_1_and_report_fps(cli, tiny_bundle, tmp_path, val_samples):
    clip = _video(tmp_path / "clip.avi", val_samples.images, 5)
    proc = cli("run", str(tiny_bundle), str(clip), "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 5 and {r["batch_rows"] for r in records} == {1}
    assert "FPS end to end" in proc.stderr and "at batch 1" in proc.stderr
    table = cli("run", str(tiny_bundle), str(clip), "--batch-size", "5")
    assert "FPS end to end" in table.stdout and "at batch 5" in table.stdout and "ms per sample" in table.stdout
    # files keep the batched default
    np.save(tmp_path / "x.npy", np.stack(val_samples.images[:3]).astype(np.uint8))
    assert "FPS" not in cli("run", str(tiny_bundle), str(tmp_path / "x.npy")).stdout


def test_k_minus_1_thresholds_and_none(cli, tiny_bundle, tmp_path, val_samples):
    np.savez(tmp_path / "lab.npz", images=np.stack(val_samples.images[:12]), labels=val_samples.labels[:12])
    short = cli("run", str(tiny_bundle), str(tmp_path / "lab.npz"), "--thresholds", "none,none", "--json")
    full = cli("run", str(tiny_bundle), str(tmp_path / "lab.npz"), "--thresholds", "none,none,none", "--json")
    assert short.returncode == 0 and full.returncode == 0, short.stderr + full.stderr
    assert [json.loads(x)["exit"] for x in short.stdout.splitlines()] == [2] * 12
    assert [json.loads(x)["class_index"] for x in short.stdout.splitlines()] == [
        json.loads(x)["class_index"] for x in full.stdout.splitlines()
    ]
    wrong = one_line_error(cli("run", str(tiny_bundle), "default:val", "--thresholds", "0.9"), "--thresholds")
    assert "give 2 values" in wrong and "'none'" in wrong and "null" not in wrong
    out_of_range = one_line_error(cli("run", str(tiny_bundle), "default:val", "--thresholds", "1.5,0.9"), "1.5")
    assert "none" in out_of_range
    one_line_error(
        cli("run", str(tiny_bundle), "default:val", "--thresholds", "0.9,0.8", "--exit-at", "1"),
        "--exit-at and --thresholds conflict",
    )


def test_labelled_folder_gets_an_accuracy(cli, tiny_bundle, tmp_path, val_samples):
    import cv2

    folder = tmp_path / "labelled"
    for i in range(8):
        label = int(val_samples.labels[i])
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / str(label) / f"{i}.png"), val_samples.images[i])
    proc = cli("run", str(tiny_bundle), str(folder), "--thresholds", "none,none", "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["label"] for r in records) == sorted(int(v) for v in val_samples.labels[:8])
    right = sum(r["label"] == r["class_index"] for r in records)
    assert f"accuracy {100 * right / 8:.2f}% on 8 labelled input(s)" in proc.stderr
    # sub-folders that are not the model's classes are not labels
    other = tmp_path / "other" / "cats"
    other.mkdir(parents=True)
    cv2.imwrite(str(other / "a.png"), val_samples.images[0])
    assert "accuracy" not in cli("run", str(tiny_bundle), str(tmp_path / "other")).stdout


def test_verbose_after_the_verb_logs(cli, tiny_bundle, tmp_path, val_samples):
    np.save(tmp_path / "x.npy", np.stack(val_samples.images[:2]).astype(np.uint8))
    proc = cli("run", str(tiny_bundle), str(tmp_path / "x.npy"), "-v")
    assert proc.returncode == 0, proc.stderr
    assert "hisd-edge: DEBUG: hisd-edge" in proc.stderr and "onnxruntime backend" in proc.stderr
    quiet = cli("run", str(tiny_bundle), str(tmp_path / "x.npy"))
    assert "DEBUG" not in quiet.stderr
    before = cli("-v", "run", str(tiny_bundle), str(tmp_path / "x.npy"))
    assert "DEBUG" in before.stderr


def test_infer_reads_paths(tiny_bundle, tmp_path, val_samples):
    import cv2

    from hisd_edge.runtime import open_runtime

    cv2.imwrite(str(tmp_path / "d.png"), val_samples.images[0])
    with open_runtime(tiny_bundle, thresholds=[None, None]) as rt:
        from_path = rt.infer([str(tmp_path / "d.png")])
        from_array = rt.infer([val_samples.images[0]])
        with pytest.raises(Exception) as missing:
            rt.infer([tmp_path / "nowhere.png"])
    assert from_path[0].ok and from_path[0].name == str(tmp_path / "d.png")
    assert from_path[0].class_index == from_array[0].class_index
    assert "nowhere.png" in str(missing.value) and "\n" not in str(missing.value)
