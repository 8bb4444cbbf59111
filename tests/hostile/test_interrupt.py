"""Ctrl-C during ``thresholds`` and ``profile``: everything as it was and says so, or says exactly what was written.

Real processes get a real SIGINT at times spread over their run (the invariant must hold at every
one), and the critical instants (right after the manifest was replaced, before the sweep CSV) are
hit deterministically in process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest
from hostile_helpers import PROFILE_FAST, tree_snapshot

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _interrupted(argv: List[str], cwd: Path, delay_s: float, done: str) -> Tuple[int, str]:
    """Run ``hisd-edge ARGV``; SIGINT it after ``delay_s``. Exit status 0 when it had finished (``done`` on stdout)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hisd_edge", *argv], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    if proc.returncode == -signal.SIGINT and not err.strip():
        # Python's own start or end, where SIGINT still has its default action: before, nothing was done;
        # after, the command had finished and said so on stdout.
        return (0 if done in out.decode() else -signal.SIGINT), ""
    return proc.returncode, err.decode()


def _check_message(code: int, err: str) -> List[str]:
    """The one line of an interrupted run; returns the paths it says were written."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    if code in (0, -signal.SIGINT):  # finished, or interrupted before it began
        return []
    assert code == 130, err
    assert len(lines) == 1 and lines[0].startswith("hisd-edge"), err
    if "nothing was written, everything is as it was" in lines[0]:
        return []
    assert " wrote " in lines[0], lines[0]
    return lines[0].split(" wrote ", 1)[1].rsplit(" before that", 1)[0].split(", ")


def _full_run_seconds(argv: List[str], cwd: Path) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hisd_edge", *argv], cwd=cwd, env=ENV, capture_output=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return time.monotonic() - started


def test_sigint_during_thresholds(base_bundle, tmp_path):
    bundle = tmp_path / "b"
    argv = ["thresholds", str(bundle), "--data", "default:val", "--count", "300", "--max-drop", "1", "--no-progress"]
    shutil.copytree(base_bundle, bundle)
    total = _full_run_seconds(argv, tmp_path)
    for i in range(6):
        shutil.rmtree(bundle)
        shutil.copytree(base_bundle, bundle)
        if (tmp_path / "reports").exists():
            shutil.rmtree(tmp_path / "reports")
        before = (bundle / "manifest.json").read_bytes()
        code, err = _interrupted(argv, tmp_path, delay_s=0.3 + total * i / 6, done="policy written to")
        written = _check_message(code, err)
        manifest = bundle / "manifest.json"
        sweep = tmp_path / "reports" / "tiny" / "thresholds_sweep.csv"
        if code == 0:
            continue
        assert (manifest.read_bytes() != before) == (str(manifest) in written), (err, written)
        assert sweep.exists() == (str(Path("reports") / "tiny" / "thresholds_sweep.csv") in written), (err, written)
        if str(manifest) in written:
            assert json.loads(manifest.read_text())["policy"]["calibrated"] is True
        assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in base_bundle.iterdir())


def test_interrupt_right_after_the_manifest_is_replaced_says_so(base_bundle, tmp_path, monkeypatch, capsys):
    """The instant that printed "interrupted" over a changed manifest (10 of 20 tries) before."""
    from hisd_edge.cli import main
    from hisd_edge.runtime import thresholds

    bundle = tmp_path / "b"
    shutil.copytree(base_bundle, bundle)
    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(thresholds, "write_sweep_csv", interrupted)
    code = main(
        ["thresholds", str(bundle), "--data", "default:val", "--count", "100", "--method", "empirical", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 130
    assert err == f"hisd-edge thresholds: interrupted; wrote {bundle / 'manifest.json'} before that"
    assert json.loads((bundle / "manifest.json").read_text())["policy"]["calibrated"] is True


def test_interrupt_before_anything_is_written_says_nothing_changed(base_bundle, tmp_path, monkeypatch, capsys):
    from hisd_edge.cli import main
    from hisd_edge.runtime import thresholds

    bundle = tmp_path / "b"
    shutil.copytree(base_bundle, bundle)
    before = tree_snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(thresholds, "calibrate", interrupted)
    assert (
        main(
            [
                "thresholds",
                str(bundle),
                "--data",
                "default:val",
                "--count",
                "100",
                "--method",
                "empirical",
                "--no-progress",
            ]
        )
        == 130
    )
    assert capsys.readouterr().err.strip().endswith("interrupted; nothing was written, everything is as it was")
    assert tree_snapshot(tmp_path) == before


@pytest.mark.slow
def test_sigint_during_profile(base_bundle, base_report, tmp_path):
    out = tmp_path / "reports" / "r"
    argv = ["profile", str(base_bundle), "--data", "default:test", "--samples", "64", *PROFILE_FAST, "--out", str(out)]
    argv[argv.index("--repeats") + 1] = "20"
    shutil.copytree(base_report, out)
    total = _full_run_seconds(argv, tmp_path)
    for i in range(3):
        shutil.rmtree(out)
        shutil.copytree(base_report, out)
        old = tree_snapshot(out)
        code, err = _interrupted(argv, tmp_path, delay_s=0.5 + total * i / 3, done="wrote ")
        written = _check_message(code, err)
        if code == 0:
            continue
        if written:
            assert written == [str(out)]
            assert (out / "profile.json").exists() and (out / "report.html").exists()
        else:
            assert tree_snapshot(out) == old  # the previous report, byte-identical
        assert sorted(p.name for p in out.parent.iterdir()) == ["r"]  # no leftovers next to it
