"""The report answers "what do I deploy and what do I save", with the bench's figure (issue 13)."""

import json
import subprocess
import sys

import pytest

from tests.profile.conftest import FAST


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "hisd_edge", *args], capture_output=True, text=True, cwd=cwd, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def shared_reports(tiny_bundle_dir, tmp_path_factory):
    """thresholds, then profile, on one bundle copy, both writing into the default reports/NAME."""
    import shutil

    work = tmp_path_factory.mktemp("layout")
    bundle = work / "engines" / "tiny"
    shutil.copytree(tiny_bundle_dir, bundle)
    dry = _cli("thresholds", str(bundle), "--samples", "100", "--method", "empirical", "--dry-run", cwd=work)
    assert dry.returncode == 0, dry.stderr
    assert not (work / "reports").exists() and "nothing written (--dry-run)" in dry.stdout
    done = _cli("thresholds", str(bundle), "--data", "default:val", "--method", "empirical", "--no-progress", cwd=work)
    assert done.returncode == 0, done.stderr
    sweep = (work / "reports" / "tiny" / "thresholds_sweep.csv").read_bytes()
    prof = _cli("profile", str(bundle), "--power", "none", *FAST, cwd=work)
    assert prof.returncode == 0, prof.stderr  # thresholds' file does not make reports/tiny "not a report"
    return work, bundle, sweep


def test_thresholds_and_profile_share_one_report_directory(shared_reports):
    work, bundle, sweep = shared_reports
    report = work / "reports" / "tiny"
    assert (report / "thresholds_sweep.csv").read_bytes() == sweep  # kept when the profile replaced the directory
    again = _cli("profile", str(bundle), "--power", "none", *FAST, cwd=work)  # and a second profile replaces the first
    assert again.returncode == 0, again.stderr
    assert (report / "thresholds_sweep.csv").read_bytes() == sweep


def test_headline_is_the_bench_figure_with_its_certificate(shared_reports):
    work, bundle, _ = shared_reports
    profile = json.loads((work / "reports" / "tiny" / "profile.json").read_text())
    head = profile["headline"]
    assert head["available"] and head["samples"] == 120 and head["batch"] == 1 and head["passes"] == 5
    low, high = head["speedup_range"]
    assert low <= head["speedup"] <= high
    assert head["speedup"] == pytest.approx(head["full_mean_latency_ms"] / head["mean_latency_ms"])
    assert sum(head["exit_fractions"]) == pytest.approx(1.0)
    assert head["certificate"]["method"] == "empirical" and head["certificate"]["data"] == "default:val"
    assert head["bench_command"] == f"hisd-edge bench {bundle} --data default:test --samples 120"
    # the sweep ran on the data the thresholds were calibrated on, never the profiled test split
    assert profile["accuracy"]["sweep_data"] == "default:val"
    page = (work / "reports" / "tiny" / "report.html").read_text()
    assert f"{head['speedup']:.2f}&times; faster" in page and "share leaving at each exit" in page
    assert "thresholds fitted empirically" in page and "energy saving: not measured" in page
    # the labelled Pareto points each carry a line that deploys them
    labelled = [p for p in profile["accuracy"]["sweep"] if p.get("label")]
    from hisd_edge.profile.report.tables import thresholds_arg

    for p in labelled:
        assert f"<b>{p['label']}</b>" in page
        assert f"hisd-edge run {bundle} INPUT --thresholds {thresholds_arg(p['thresholds'])}" in page
    # columns that are all n/a collapse into one note (no power sensor here)
    assert "dynamic mJ" not in page.split("<h2>Per exit")[1].split("</table>")[0]
    assert "not measured on this run: dynamic mJ" in page
    # the recorded command is the command line, re-runnable as it stands
    assert profile["command"].startswith(f"hisd-edge profile {bundle} --power none")


def test_bench_reproduces_the_headline(shared_reports):
    """The report's headline and bench are one measurement: on this tiny model both land close
    (a loaded CI machine moves both; the bound is loose on purpose, the figures are in the note)."""
    work, _bundle, _ = shared_reports
    head = json.loads((work / "reports" / "tiny" / "profile.json").read_text())["headline"]
    proc = _cli(*head["bench_command"].split()[1:], "--seconds", "2", "--json", "--no-progress", cwd=work)
    assert proc.returncode == 0, proc.stderr
    early = json.loads(proc.stdout)["early_exit"]
    assert early["samples"] == head["samples"] and early["passes"] == head["passes"]
    assert early["exit_fractions"] == pytest.approx(head["exit_fractions"])
    assert early["accuracy"] == pytest.approx(head["accuracy"])
    assert early["figure"] == head["figure"]
