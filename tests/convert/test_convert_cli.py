"""hisd-edge convert / inspect / check from the command line: results and every bad-input path.

Errors must be one line on stderr with exit status 2 (1 for check's "problems found"), no
traceback, and nothing half-written: a failed convert leaves an existing bundle byte-identical
and no temporary directory behind.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hisd_edge.cli import main


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(capsys, *argv, code=2):
    rc, out, err = _run(capsys, *argv)
    assert rc == code, (rc, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A few real digits as PNG files, plus one file that is not an image."""
    import cv2

    from hisd_edge.data import load_samples

    folder = tmp_path_factory.mktemp("digits")
    samples = load_samples("default:train", count=12)
    for i, image in enumerate(samples.images):
        cv2.imwrite(str(folder / f"digit{i:02d}.png"), np.asarray(image))
    (folder / "broken.png").write_bytes(b"\x89PNG but not really an image")
    return folder


def _no_temp_dirs(parent: Path, name: str) -> None:
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert not leftovers, leftovers


def test_help_of_each_verb(capsys):
    for verb in ("convert", "inspect", "check"):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert f"usage: hisd-edge {verb}" in capsys.readouterr().out


def test_convert_cli_writes_bundle_and_inspect_check_read_it(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "engines" / "tiny"
    rc, stdout, _ = _run(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--precision",
        "fp32,int8",
        "--calib-count",
        "32",
        "--val-count",
        "100",
        "--calib-method",
        "percentile",
        "--timings",
        "--no-progress",
    )
    assert rc == 0
    assert "int8 top-1" in stdout and "wrote" in stdout and "timings:" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["stages"][0]["files"]) == ["fp32", "int8"]
    assert manifest["calibration"]["method"] == "percentile"
    assert manifest["calibration"]["weight_rounding"] == "gptq"
    assert manifest["stages"][0]["files"]["int8"]["quantization"]["weight_rounding"] == "gptq"
    keep = manifest["calibration"]["keep_fp16"]  # the default, --keep-fp16 auto: what it measured
    assert keep["mode"] == "auto" and keep["samples"] == 32 and len(keep["all_int8_agreement"]) == 3
    assert ("INT8 everywhere" in stdout) == (keep["kept_layers"] == 0)
    assert manifest["provenance"]["command"].startswith("hisd-edge convert")

    rc, stdout, _ = _run(capsys, "inspect", str(out))
    assert rc == 0 and "stage" in stdout and "exit0" in stdout and "policy: max_prob" in stdout
    rc, stdout, _ = _run(capsys, "inspect", str(out), "--json")
    summary = json.loads(stdout)
    assert summary["precisions"] == ["fp32", "int8"] and len(summary["stages"]) == 3
    assert summary["macs_to_reach_exit"] == sorted(summary["macs_to_reach_exit"])
    rc, stdout, _ = _run(capsys, "check", str(out), "--json")
    report = json.loads(stdout)
    assert rc == 0 and report["ok"] and report["files_checked"] == 6


def test_mixed_precision_plan(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "mixed"
    rc, stdout, _ = _run(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--precision",
        "mixed",
        "--max-drop",
        "100",
        "--calib-count",
        "32",
        "--val-count",
        "100",
        "--json",
    )
    assert rc == 0
    result = json.loads(stdout)
    # a 100-point budget admits INT8 everywhere: the lowest precision is chosen for every stage
    assert result["validation"]["mixed_plan"] == ["int8", "int8", "int8"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mixed_precision"] == {"stages": ["int8", "int8", "int8"], "max_drop_pp": 100.0}
    assert {r["precision"] for r in manifest["validation"]["rows"]} == {"fp32", "fp16", "int8", "mixed"}
    out0 = tmp_path / "mixed0"
    rc, stdout, _ = _run(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(out0),
        "--precision",
        "mixed",
        "--max-drop",
        "0",
        "--calib-count",
        "32",
        "--val-count",
        "100",
        "--json",
    )
    plan = json.loads(stdout)["validation"]["mixed_plan"]
    rows = {(r["exit"], r["precision"]): r["top1"] for r in json.loads(stdout)["validation"]["rows"]}
    # with no budget, a stage may only go below fp32 where no exit from it on loses anything
    for k, precision in enumerate(plan):
        if precision != "fp32":
            assert rows[(k, precision)] is not None
    assert all(rows[(k, "mixed")] >= rows[(k, "fp32")] - 1e-9 for k in range(3))


def test_undecodable_images_are_skipped_and_counted_or_fatal_with_strict(tiny_checkpoint, digits, tmp_path, capsys):
    out = tmp_path / "fromfolder"
    rc, _stdout, err = _run(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--calib",
        str(digits),
        "--precision",
        "fp32,int8",
        "--val-count",
        "50",
        "--no-progress",
    )
    assert rc == 0
    assert "broken.png" in err and "skipped 1" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["skipped"] == 1 and manifest["calibration"]["count"] == 12
    assert manifest["calibration"]["skipped_files"][0].endswith("broken.png")

    line = _one_line_error(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "strict"),
        "--calib",
        str(digits),
        "--strict",
        "--no-progress",
    )
    assert "broken.png" in line and "--strict" in line
    assert not (tmp_path / "strict").exists()
    _no_temp_dirs(tmp_path, "strict")


def test_corrupt_and_foreign_checkpoints(tiny_checkpoint, tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert "not a" in _one_line_error(capsys, "convert", str(junk), "--out", str(tmp_path / "a"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:-100])
    assert "truncated" in _one_line_error(capsys, "convert", str(truncated), "--out", str(tmp_path / "b"))
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(foreign))
    assert "without hisd-edge metadata" in _one_line_error(
        capsys, "convert", str(foreign), "--out", str(tmp_path / "c")
    )
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    _one_line_error(capsys, "convert", str(pickled), "--out", str(tmp_path / "d"))
    assert "no such file" in _one_line_error(capsys, "convert", str(tmp_path / "absent.safetensors"))
    for name in "abcd":
        assert not (tmp_path / name).exists()


def test_unknown_split_points_and_exits_list_valid_names(tiny_checkpoint, tmp_path, capsys):
    line = _one_line_error(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "x"),
        "--split-at",
        "stages.0,nowhere",
        "--no-progress",
    )
    assert "nowhere" in line and "stages.1" in line
    rc, stdout, _ = _run(capsys, "convert", str(tiny_checkpoint), "--list-points")
    assert rc == 0 and "stages.0" in stdout

    import torch

    from hisd_edge.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    onnx_path = tmp_path / "user.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(onnx_path),
            input_names=["image"],
            output_names=["a", "b", "c"],
            dynamic_axes={"image": {0: "n"}, "a": {0: "n"}, "b": {0: "n"}, "c": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    line = _one_line_error(
        capsys,
        "convert",
        str(onnx_path),
        "--out",
        str(tmp_path / "y"),
        "--exits",
        "a,b,zzz",
        "--calib",
        "default:train",
    )
    assert "zzz" in line and "a, b, c" in line
    assert "--exits" in _one_line_error(capsys, "convert", str(onnx_path), "--out", str(tmp_path / "y"))
    line = _one_line_error(
        capsys,
        "convert",
        str(onnx_path),
        "--out",
        str(tmp_path / "y"),
        "--exits",
        "a,b,c",
        "--split-at",
        "feat_x,feat_y",
        "--calib",
        "default:train",
        "--no-progress",
    )
    assert "feat_x" in line
    rc, stdout, _ = _run(capsys, "convert", str(onnx_path), "--list-points")
    assert rc == 0 and " a " in stdout.replace("\n", " ")
    # and the same ONNX converts, going through the same checks (structural split, verification)
    rc, stdout, _ = _run(
        capsys,
        "convert",
        str(onnx_path),
        "--out",
        str(tmp_path / "fromonnx"),
        "--exits",
        "a,b,c",
        "--calib",
        "default:train",
        "--calib-count",
        "16",
        "--val",
        "default:val",
        "--val-count",
        "50",
        "--preprocessing",
        json.dumps(_mnist_preprocessing(tiny_checkpoint)),
        "--no-progress",
        "--json",
    )
    assert rc == 0
    manifest = json.loads((tmp_path / "fromonnx" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "onnx" and [e["name"] for e in manifest["exits"]] == ["a", "b", "c"]
    assert manifest["verification"]["torch_max_abs_diff"] is None
    assert manifest["class_names"] == [str(i) for i in range(10)]  # from the exits' width when not given


def _mnist_preprocessing(checkpoint):
    from hisd_edge.checkpoint import read_metadata

    return read_metadata(checkpoint)["preprocessing"]


def test_empty_calibration_sources(tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o1"), "--calib", str(empty)
    )
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), dtype=np.uint8))
    _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o2"), "--calib", str(tmp_path / "none.npy")
    )
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "x.png").write_bytes(b"nope")
    assert "could be decoded" in _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o3"), "--calib", str(only_broken)
    )
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3"))


def test_wrong_channel_count(tiny_checkpoint, tmp_path, capsys):
    np.save(tmp_path / "rgb_tensors.npy", np.zeros((4, 3, 28, 28), dtype=np.float32))
    line = _one_line_error(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "o"),
        "--calib",
        str(tmp_path / "rgb_tensors.npy"),
    )
    assert "(1, 28, 28)" in line
    np.save(tmp_path / "two_channel.npy", np.zeros((4, 28, 28, 2), dtype=np.uint8))
    line = _one_line_error(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "o"),
        "--calib",
        str(tmp_path / "two_channel.npy"),
    )
    assert "channel" in line
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused_unless_force_and_failures_leave_it_intact(
    tiny_checkpoint, tiny_bundle, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "existing"
    shutil.copytree(tiny_bundle, out)
    before = _tree(out)
    line = _one_line_error(capsys, "convert", str(tiny_checkpoint), "--out", str(out))
    assert "already exists" in line and "--force" in line
    assert _tree(out) == before

    # A conversion that fails after work has started (here: verification) leaves the old bundle byte-identical.
    from hisd_edge.convert import verify
    from hisd_edge.errors import ConversionError

    def refuse(*args, **kwargs):
        raise ConversionError("chained stages do not reproduce the monolithic ONNX (forced by the test)")

    monkeypatch.setattr(verify, "verify", refuse)
    assert "forced by the test" in _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(out), "--force", "--calib-count", "16", "--no-progress"
    )
    assert _tree(out) == before
    _no_temp_dirs(tmp_path, "existing")
    monkeypatch.undo()

    # An interruption in the middle of quantization: same guarantee.
    from hisd_edge.convert import quantize

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "quantize_int8", interrupt)
    rc, _, err = _run(
        capsys, "convert", str(tiny_checkpoint), "--out", str(out), "--force", "--calib-count", "16", "--no-progress"
    )
    assert rc == 130 and "interrupted" in err
    assert _tree(out) == before
    _no_temp_dirs(tmp_path, "existing")
    monkeypatch.undo()

    # --force replaces it (atomically) with a fresh bundle.
    (out / "stale-marker").write_text("old")
    rc, _, _ = _run(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--force",
        "--precision",
        "fp32",
        "--val-count",
        "50",
        "--no-progress",
    )
    assert rc == 0 and not (out / "stale-marker").exists()
    assert json.loads((out / "manifest.json").read_text())["stages"][0]["files"].keys() == {"fp32"}
    _no_temp_dirs(tmp_path, "existing")

    # --force never deletes a directory that is not a bundle.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    line = _one_line_error(capsys, "convert", str(tiny_checkpoint), "--out", str(precious), "--force")
    assert "not a bundle" in line and (precious / "thesis.tex").exists()


def test_bad_options(tiny_checkpoint, tmp_path, capsys):
    assert "bogus" in _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--precision", "fp32,bogus"
    )
    assert "mixed" in _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--max-drop", "1"
    )
    assert "--calib-samples" in _one_line_error(  # the old spelling still works; the message names the new one
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--calib-count", "0"
    )
    assert "ONNX" in _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--exits", "a,b"
    )
    assert "--keep-fp16 takes a number of layers or 'auto'" in _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--keep-fp16", "most"
    )


def test_inspect_and_check_bad_input(tmp_path, capsys):
    assert "no such bundle" in _one_line_error(capsys, "inspect", str(tmp_path / "missing"))
    (tmp_path / "notabundle").mkdir()
    assert "not a bundle" in _one_line_error(capsys, "inspect", str(tmp_path / "notabundle"))
    assert "not a bundle" in _one_line_error(capsys, "check", str(tmp_path / "notabundle"))


def test_altered_stage_file_is_named(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "altered"
    shutil.copytree(tiny_bundle, out)
    with open(out / "stage1.int8.onnx", "ab") as handle:
        handle.write(b"\x00")
    line = _one_line_error(capsys, "check", str(out))
    assert "stage1.int8.onnx" in line and "checksum" in line


def test_errors_are_one_line_in_a_real_process(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage!" * 8)
    result = subprocess.run(
        [sys.executable, "-m", "hisd_edge", "convert", str(junk), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("hisd-edge convert: error:")


def test_validation_folder_labels_map_by_class_name(tiny_checkpoint, tmp_path, capsys):
    """Sub-folders are matched to the model's classes by name, not by their alphabetical position:
    folders "3" and "7" are classes 3 and 7, not 0 and 1."""
    import cv2

    from hisd_edge.data import load_samples

    samples = load_samples("default:val")
    keep = [i for i, label in enumerate(samples.labels) if label in (3, 7)][:30]
    val = tmp_path / "val"
    for i in keep:
        folder = val / str(int(samples.labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), np.asarray(samples.images[i]))
    np.savez(tmp_path / "same.npz", images=np.stack([samples.images[i] for i in keep]), labels=samples.labels[keep])
    results = {}
    for name, source in (("folder", str(val)), ("npz", str(tmp_path / "same.npz"))):
        rc, stdout, _ = _run(
            capsys,
            "convert",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / name),
            "--precision",
            "fp32",
            "--val",
            source,
            "--json",
        )
        assert rc == 0
        results[name] = sorted(r["top1"] for r in json.loads(stdout)["validation"]["rows"])
    assert results["folder"] == results["npz"]
    (val / "zebra").mkdir()
    cv2.imwrite(str(val / "zebra" / "z.png"), np.asarray(samples.images[0]))
    line = _one_line_error(
        capsys, "convert", str(tiny_checkpoint), "--out", str(tmp_path / "o3"), "--precision", "fp32", "--val", str(val)
    )
    assert "zebra" in line


def test_no_confidence_outputs_on_request(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "noconf"
    rc, _, _ = _run(
        capsys,
        "convert",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--precision",
        "fp32",
        "--no-confidence",
        "--threshold",
        "0.8",
        "--val-count",
        "20",
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(e["confidence_output"] is None for e in manifest["exits"])
    assert [o["name"] for o in manifest["stages"][2]["outputs"]] == ["exit2"]
    assert manifest["policy"]["thresholds"] == [0.8, 0.8, None]


def test_keep_fp16_auto_line_says_what_was_measured_and_kept():
    from hisd_edge.commands.convert import _keep_fp16_line

    base = {"mode": "auto", "target_agreement": 0.98, "samples": 64, "all_int8_agreement": [0.95, 1.0]}
    assert _keep_fp16_line({**base, "kept_layers": 0}).startswith(
        "INT8 everywhere: exit agreement with fp32 95.0 / 100.0"
    )
    met = _keep_fp16_line({**base, "kept_layers": 2, "quantized_layers": 40, "agreement": [0.99, 1.0], "met": True})
    assert "2 of 40 layers kept fp16" in met and "95.0 / 100.0 -> 99.0 / 100.0 %" in met and "not reached" not in met
    missed = {**base, "kept_layers": 3, "quantized_layers": 40, "agreement": [0.97, 1.0], "met": False}
    assert "target not reached (9 worst layers tried, at most 4 kept)" in _keep_fp16_line(
        {**missed, "tried_layers": 9, "max_layers": 4}
    )
    assert _keep_fp16_line({"mode": "fixed", "kept_layers": 3}) == ""
