"""Report rendering from a hand-made profile, and the threshold trade-off arithmetic."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest

from hisd_edge.errors import InputError
from hisd_edge.profile import tradeoff
from hisd_edge.profile.report import write_comparison, write_report
from hisd_edge.profile.schema import load_profile


def _lat(p50):
    return {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50 * 1.05, "min": p50 * 0.9, "count": 100}


def make_profile(energy=True, name="mnist"):
    exits, stages = [], []
    for k, (lat, mj) in enumerate([(1.0, 2.0), (2.0, 3.5), (3.0, 6.0)]):
        exits.append(
            {
                "index": k,
                "latency_ms": _lat(lat),
                "energy_mj": {"total": mj, "dynamic": mj / 2} if energy else None,
                **({} if energy else {"energy_unavailable_reason": "no power source"}),
                "energy": {
                    "window_s": 2.0,
                    "samples": 100,
                    "sampling_period_ms": 20.0,
                    "mean_power_mw": 5000.0,
                    "idle_power_mw": 2500.0,
                    "complete": True,
                }
                if energy
                else None,
            }
        )
        stages.append(
            {
                "index": k,
                "latency_ms": _lat(1.0),
                "energy_mj": {"total": 2.0, "dynamic": 1.0} if energy else None,
                "model_bytes": 1000 * (k + 1),
            }
        )
    sweep = [
        {
            "threshold": t,
            "thresholds": [t, t, None],
            "accuracy": a,
            "exit_fraction": f,
            "mean_latency_ms": float(np.dot(f, [1, 2, 3])),
            "mean_energy_mj": float(np.dot(f, [2, 3.5, 6])) if energy else None,
            "pareto_latency": p,
            "pareto_energy": p and energy,
        }
        for t, a, f, p in [
            (0.5, 0.90, [0.8, 0.1, 0.1], True),
            (0.9, 0.95, [0.5, 0.3, 0.2], True),
            (0.99, 0.94, [0.2, 0.3, 0.5], False),
            (None, 0.97, [0.0, 0.0, 1.0], True),
        ]
    ]
    return {
        "schema_version": 1,
        "kind": "hisd-edge-profile",
        "created": "2026-01-01T00:00:00+00:00",
        "toolkit_version": "0.1.0",
        "command": "hisd-edge profile x",
        "bundle": {"name": name, "path": "engines/x", "stages": 3, "exits": 3},
        "device": {
            "model": "NVIDIA Jetson Orin Nano Developer Kit",
            "nvpmodel": {"mode_name": "15W", "mode_id": 0},
            "jetson_clocks": {"state": "on"},
        },
        "backend": {"backend": "tensorrt", "precision": "fp16"},
        "precision": "fp16",
        "power": {
            "source": "ina3221-hwmon",
            "available": energy,
            "reason": None if energy else "no power source",
            "rails": ["VDD_IN"],
            "total": "VDD_IN",
            "sampling_period_ms": 20.0,
        },
        "policy": {"kind": "max_prob", "thresholds": [0.9, 0.9, None], "calibrated": True, "note": None},
        "settings": {"repeats": 100},
        "batch": 1,
        "stages": stages,
        "exits": exits,
        "batches": [{"batch": 1, "stages": stages, "exits": exits}, {"batch": 8, "stages": stages, "exits": exits}],
        "idle": {"power_mw": 2500.0},
        "memory": {
            "before": {"rss_mib": 100.0},
            "after_load": {"rss_mib": 150.0},
            "load": {"rss_delta_mib": 50.0},
            "model_bytes": 6000,
        },
        "accuracy": {
            "samples": 100,
            "labelled": True,
            "per_exit_top1": [0.9, 0.95, 0.97],
            "current": {
                "thresholds": [0.9, 0.9, None],
                "accuracy": 0.95,
                "exit_fraction": [0.5, 0.3, 0.2],
                "mean_latency_ms": 1.7,
                "mean_energy_mj": 3.25 if energy else None,
            },
            "sweep": sweep,
        },
        "overhead": {"sampler": {"overhead_pct": 0.4}},
        "notes": ["a note <with> markup"],
    }


def test_report_directory_is_complete_and_self_contained(tmp_path):
    result = write_report(make_profile(), tmp_path / "r")
    out = tmp_path / "r"
    for name in (
        "profile.json",
        "exits.csv",
        "stages.csv",
        "sweep.csv",
        "report.html",
        "accuracy_vs_latency.png",
        "accuracy_vs_energy.png",
        "exit_costs.png",
        "exit_distribution.png",
        "stage_breakdown.png",
    ):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r'(src|href)="(http|//)', page)  # nothing fetched from anywhere
    assert "a note &lt;with&gt; markup" in page and "nvpmodel 15W (0)" in page and "Batch 8" in page
    assert result["notes"] == []
    assert load_profile(out)["precision"] == "fp16"


def test_csv_tables_carry_units_and_blanks_for_unmeasured(tmp_path):
    write_report(make_profile(energy=False), tmp_path / "r")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r" / "exits.csv").read_text())))
    assert len(rows) == 6 and rows[0]["latency_p50_ms"] == "1" and rows[0]["energy_total_mj"] == ""
    assert rows[0]["energy_unavailable_reason"] == "no power source"
    sweep = list(csv.DictReader(io.StringIO((tmp_path / "r" / "sweep.csv").read_text())))
    assert sweep[1]["exit0_fraction"] == "0.5" and sweep[-1]["threshold"] == ""
    assert not (tmp_path / "r" / "accuracy_vs_energy.png").exists()


def test_rewriting_replaces_a_report_but_never_a_foreign_directory(tmp_path):
    out = tmp_path / "r"
    write_report(make_profile(), out)
    write_report(make_profile(energy=False), out)
    assert json.loads((out / "profile.json").read_text())["power"]["available"] is False
    assert not (out / "accuracy_vs_energy.png").exists()  # the old file did not survive
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not a hisd-edge report"):
        write_report(make_profile(), foreign)


def test_comparison_of_three(tmp_path):
    profiles = [make_profile(name="a"), make_profile(energy=False, name="b"), make_profile(name="c")]
    result = write_comparison(profiles, ["runs/maxn", "runs/15w/profile.json", "runs/maxn"], tmp_path / "cmp")
    assert result["labels"] == ["maxn", "15w", "maxn#2"]
    assert any("15w: energy not measured" in n for n in result["notes"])
    assert any("different bundles" in n for n in result["notes"])
    assert {"compare_accuracy_vs_latency.png", "compare_exit_energy.png"} <= set(result["files"])
    with pytest.raises(InputError):
        write_comparison(profiles[:1], ["x"], tmp_path / "one")


# -- trade-off arithmetic --------------------------------------------------------------------------
SCORES = np.array([[0.95, 0.99, 0.99], [0.50, 0.92, 0.99], [0.40, 0.60, 0.70], [0.91, 0.10, 0.10]])
CORRECT = np.array([[True, True, True], [False, True, True], [False, False, True], [False, True, True]])


def test_exit_indices_and_evaluate_by_hand():
    assert tradeoff.exit_indices(SCORES, [0.9, 0.9, None]).tolist() == [0, 1, 2, 0]
    assert tradeoff.exit_indices(SCORES, [None, 0.9, None]).tolist() == [1, 1, 2, 2]
    assert tradeoff.exit_indices(SCORES, [0.0, 0.0, 0.0]).tolist() == [0, 0, 0, 0]
    point = tradeoff.evaluate(SCORES, CORRECT, [0.9, 0.9, None], [1.0, 2.0, 3.0], [10.0, 20.0, None])
    assert point["exit_fraction"] == [0.5, 0.25, 0.25]
    assert point["accuracy"] == 0.75  # rows 0, 1, 2 right; row 3 wrong at exit 0
    assert point["mean_latency_ms"] == pytest.approx(0.5 * 1 + 0.25 * 2 + 0.25 * 3)
    assert point["mean_energy_mj"] is None  # one exit's energy unknown: no mean is invented
    assert tradeoff.evaluate(SCORES, None, [0.9, 0.9, None], [1, 2, 3], [1, 2, 3])["accuracy"] is None


def test_pareto_flags():
    costs = [1.0, 2.0, 2.0, 3.0, None]
    accs = [0.5, 0.7, 0.6, 0.7, 0.9]
    assert tradeoff.pareto_flags(costs, accs) == [True, True, False, False, False]


def test_sweep_is_monotone_in_depth_and_flags_pareto():
    points = tradeoff.sweep(SCORES, CORRECT, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], grid=[0.0, 0.5, 0.9, 0.95, 1.01])
    last_fraction = [p["exit_fraction"][-1] for p in points]
    assert last_fraction == sorted(last_fraction)  # a higher threshold never sends fewer samples to the end
    assert points[-1]["exit_fraction"] == [0.0, 0.0, 1.0] and points[-1]["accuracy"] == 1.0
    assert points[0]["exit_fraction"] == [1.0, 0.0, 0.0] and points[0]["pareto_latency"]
    assert all(set(p) >= {"threshold", "pareto_energy"} for p in points)
    grid = tradeoff.default_grid(11)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and len(grid) == 11


# -- what a report directory may hold (review fixes) --------------------------------------------------
def test_a_profile_json_next_to_a_users_file_is_not_replaced(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "profile.json").write_text(json.dumps(make_profile()))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"'notes\.txt'.*choose another --out or remove them") as caught:
        write_report(make_profile(), out)
    assert "\n" not in str(caught.value)
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == [
        "notes.txt",
        "profile.json",
    ]
    with pytest.raises(InputError, match="notes.txt"):
        write_comparison([make_profile(), make_profile(name="b")], ["a", "b"], out)
    assert (out / "notes.txt").read_text() == "mine"


def test_every_file_the_writers_produce_is_replaceable(tmp_path):
    from hisd_edge.profile.report import WRITTEN_NAMES, check_replaceable

    profile = make_profile()
    profile["power"]["trace"] = {
        "time_s": [0.0, 0.02, 0.04],
        "total_mw": [5000.0, 5100.0, 5050.0],
    }  # power_trace.csv/.png
    out = tmp_path / "r"
    first = write_report(profile, out)
    assert {"power_trace.csv", "power_trace.png"} <= set(first["files"])
    assert set(first["files"]) <= WRITTEN_NAMES and {p.name for p in out.iterdir()} == set(first["files"])
    check_replaceable(out)
    write_report(make_profile(energy=False), out)  # an earlier report is still replaced
    cmp_out = tmp_path / "cmp"
    result = write_comparison([profile, make_profile(name="b")], ["a", "b"], cmp_out)
    assert set(result["files"]) <= WRITTEN_NAMES and {p.name for p in cmp_out.iterdir()} == set(result["files"])
    write_comparison([profile, make_profile(name="c")], ["a", "c"], cmp_out)


def test_sweep_with_a_none_grid_value_never_leaves_early():
    points = tradeoff.sweep(SCORES, CORRECT, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], grid=[0.5, None])
    never = points[-1]
    assert never["threshold"] is None and never["thresholds"] == [None, None, None]
    assert never["exit_fraction"] == [0.0, 0.0, 1.0] and never["accuracy"] == 1.0 and never["mean_latency_ms"] == 3.0
    # the most accurate setting is on both fronts; flags come from sweep itself, over every point
    assert never["pareto_latency"] and never["pareto_energy"]
    assert points[0]["accuracy"] == 0.25 and points[0]["mean_latency_ms"] == 1.25 and points[0]["pareto_latency"]


def test_report_says_when_the_source_kept_running_during_the_overhead_blocks(tmp_path):
    profile = make_profile()
    profile["overhead"] = {"sampler": {"overhead_pct": 0.4, "source": "tegrastats", "source_kept_running": True}}
    write_report(profile, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    assert "the ina3221-hwmon source kept running while polling was paused" in page
    write_report(make_profile(), tmp_path / "r2")
    assert "sampling thread only" not in (tmp_path / "r2" / "report.html").read_text()


def test_comparison_never_puts_two_meanings_of_total_in_one_column(tmp_path):
    nano, orin = make_profile(name="a"), make_profile(name="b")
    nano["power"]["total_rule"] = {"quantity": "module_input", "meaning": "module input"}
    orin["power"].update(total="AGX Orin rail sum", total_rule={"quantity": "agx_orin_rail_sum", "meaning": "sum"})
    for i, p in enumerate((nano, orin)):
        (tmp_path / f"p{i}").mkdir()
        (tmp_path / f"p{i}" / "profile.json").write_text(json.dumps(p))
    result = write_comparison([nano, orin], [str(tmp_path / "p0"), str(tmp_path / "p1")], tmp_path / "cmp")
    assert any("measures different things" in n and "AGX Orin rail sum" in n for n in result["notes"])
    header = (tmp_path / "cmp" / "compare_exits.csv").read_text().splitlines()[0].split(",")
    assert "p0_energy_total_mj_module_input" in header and "p1_energy_total_mj_agx_orin_rail_sum" in header
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "dynamic mJ (VDD_IN)" in page and "dynamic mJ (AGX Orin rail sum)" in page
