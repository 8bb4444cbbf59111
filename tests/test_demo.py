"""``hisd-edge demo``, the headline command, run end to end (the quick sizes: same steps, fewer samples)."""

import re

from hisd_edge.bundle import Bundle
from hisd_edge.cli import main


def test_quick_demo_runs_every_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    for title in (
        "== 1. The embedded default model ==",
        "== 2. Convert to a bundle: engines/mnist_cnn_hisd ==",
        "== 3. Early exit on this CPU",
        "== 4. Profile per exit on this machine: reports/mnist_cnn_hisd ==",
    ):
        assert title in out, out
    # The shipped model's per-exit top-1 on the 1,000 test digits, as the README reports them.
    for k, params, top1 in ((0, "6,394", "97.50%"), (2, "543,770", "98.20%")):
        assert re.search(rf"^\s+{k}\s+{params}\s.*\s{re.escape(top1)}$", out, re.M), out
    assert "int8 with 32 calibration images" in out and "early exit on default:test (200 samples" in out
    bundle = Bundle.open(tmp_path / "engines" / "mnist_cnn_hisd")  # every checksum verified
    assert bundle.precisions() == ["fp32", "fp16", "int8"] and bundle.policy["calibrated"]
    assert (tmp_path / "reports" / "mnist_cnn_hisd" / "report.html").is_file()
    assert out.rstrip().endswith("reports/mnist_cnn_hisd/report.html")
