"""``hisd-edge demo``, the headline command, run end to end (the quick sizes: same steps, fewer samples)."""

import json
import re

from hisd_edge.bundle import Bundle
from hisd_edge.cli import main


def test_quick_demo_runs_every_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    for title in (
        "== 1. The embedded default model ==",
        "== 2. Convert to a bundle: engines/mnist_cnn_hisd (replaced if it exists) ==",
        "== 3. Early exit on this CPU",
        "== 4. Profile per exit on this machine: reports/mnist_cnn_hisd (replaced if it exists) ==",
    ):
        assert title in out, out
    # The shipped model's per-exit top-1 on the 1,000 test digits, as the README reports them.
    for k, params, top1 in ((0, "6,394", "97.50%"), (2, "543,770", "98.20%")):
        assert re.search(rf"^\s+{k}\s+{params}\s.*\s{re.escape(top1)}$", out, re.M), out
    assert "int8 with 32 calibration images" in out and "early exit on default:test (200 samples" in out
    bundle = Bundle.open(tmp_path / "engines" / "mnist_cnn_hisd")  # every checksum verified
    assert bundle.precisions() == ["fp32", "fp16", "int8"] and bundle.policy["calibrated"]
    assert (tmp_path / "reports" / "mnist_cnn_hisd" / "report.html").is_file()
    assert "HTML report: reports/mnist_cnn_hisd/report.html" in out
    # one set of figures: the profile uses step 3's samples, and its headline is step 3's measurement
    profile = json.loads((tmp_path / "reports" / "mnist_cnn_hisd" / "profile.json").read_text())
    assert profile["settings"]["samples"] == 200 and profile["headline"]["samples"] == 200
    assert "report headline: speedup" in out and "the same figure, alone: hisd-edge bench" in out
    rerun = out.rstrip().splitlines()[-1]
    assert rerun.startswith("re-run this profile: hisd-edge profile engines/mnist_cnn_hisd --data default:test")
    assert rerun.endswith("--out reports/mnist_cnn_hisd")


def test_demo_help_says_what_it_writes_and_overwrites(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "OVERWRITES" in text and "engines/NAME/" in text and "reports/NAME/" in text
