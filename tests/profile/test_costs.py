"""``thresholds --costs``: which figure each objective prices, and what the intervals say."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from hisd_edge.errors import InputError
from hisd_edge.runtime.thresholds import read_profile_costs


def _energy(total, dynamic, width):
    return {
        "total": total,
        "dynamic": dynamic,
        "total_ci": [total - width, total + width],
        "dynamic_ci": [dynamic - width, dynamic + width],
        "rounds": 3,
    }


def _profile(exits, stages, quantity="module_input"):
    """A schema-2 profile reduced to what the costs reader reads."""
    return {
        "schema_version": 2,
        "kind": "hisd-edge-profile",
        "device": {"model": "Jetson Orin Nano"},
        "precision": "fp16",
        "batch": 1,
        "power": {"total": "VDD_IN", "total_rule": {"quantity": quantity}},
        "exits": [
            {"index": k, "latency_ms": {"p50": 1.0 + k, "ci": [0.9 + k, 1.1 + k]}, "energy_mj": e}
            for k, e in enumerate(exits)
        ],
        "stages": [{"index": k, "latency_ms": {"p50": 1.0}, "energy_mj": e} for k, e in enumerate(stages)],
    }


def test_each_objective_prices_its_own_figure(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(
            _profile(
                [_energy(10.0, 2.0, 0.1), _energy(20.0, 5.0, 0.1)],
                [_energy(10.0, 2.0, 0.1), _energy(10.0, 3.0, 0.1)],
            )
        )
    )
    dynamic, meta = read_profile_costs(path, 2, "dynamic-energy")
    assert dynamic == [2.0, 3.0] and meta["unit"] == "mJ" and meta["quantity"] == "module_input"
    assert meta["exit_cost"] == [2.0, 5.0] and meta["indistinguishable"] == [] and meta["notes"] == []
    assert meta["stage_interval"] == [[1.9, 2.1], [2.9, 3.1]] and meta["exit_interval"] == [[1.9, 2.1], [4.9, 5.1]]
    assert read_profile_costs(path, 2, "total-energy")[0] == [10.0, 10.0]
    legacy = read_profile_costs(path, 2, "energy")  # the old name is total energy
    assert legacy[0] == [10.0, 10.0] and legacy[1]["objective"] == "total-energy"
    latency, meta = read_profile_costs(path, 2, "latency")
    assert latency == [1.0, 1.0] and meta["exit_interval"] == [[0.9, 1.1], [1.9, 2.1]]


def test_a_negative_stage_estimate_is_priced_at_zero_and_said_never_refused(tmp_path, caplog):
    path = tmp_path / "profile.json"
    # stage 1's dynamic energy is within the noise of zero and came out negative
    path.write_text(
        json.dumps(
            _profile(
                [_energy(10.0, 2.0, 0.5), _energy(11.0, 1.9, 0.5)],
                [_energy(10.0, 2.0, 0.5), _energy(1.0, -0.1, 0.5)],
            )
        )
    )
    with caplog.at_level(logging.WARNING, logger="hisd_edge.thresholds"):
        values, meta = read_profile_costs(path, 2, "dynamic-energy")
    assert values == [2.0, 0.0]
    assert "stage 1's dynamic-energy came out negative" in meta["notes"][0] and "within the noise" in meta["notes"][0]
    # overlapping exit intervals: the two exits cannot be told apart
    assert meta["indistinguishable"] == [[0, 1]]
    assert "exits 0 and 1 cannot be told apart by dynamic-energy" in meta["notes"][1]
    assert any("cannot be told apart" in r.getMessage() for r in caplog.records)  # the CLI prints warnings


def test_a_clearly_negative_stage_points_at_the_profile(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(_profile([_energy(5, 3, 0.1), _energy(4, 2, 0.1)], [_energy(5, 3, 0.1), _energy(-1, -1, 0.1)]))
    )
    values, meta = read_profile_costs(path, 2, "dynamic-energy")
    assert values == [3.0, 0.0] and "interval excludes 0, so the profile is suspect" in meta["notes"][0]


def test_dynamic_objective_without_a_dynamic_figure_says_what_to_do(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(_profile([{"total": 1.0}, {"total": 2.0}], [{"total": 1.0}, {"total": 1.0}])))
    with pytest.raises(InputError, match="no dynamic energy .* use --objective total-energy"):
        read_profile_costs(path, 2, "dynamic-energy")
    assert read_profile_costs(path, 2, "total-energy")[0] == [1.0, 1.0]
    with pytest.raises(InputError, match="is not one of latency, dynamic-energy, total-energy, energy"):
        read_profile_costs(path, 2, "watts")


def test_thresholds_cli_objective_with_overlapping_intervals(tiny_bundle_dir, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(
            _profile(
                [_energy(10.0, 2.0, 0.3), _energy(11.0, 2.2, 0.3), _energy(30.0, 9.0, 0.3)],
                [_energy(10.0, 2.0, 0.3), _energy(1.0, 0.2, 0.3), _energy(19.0, 6.8, 0.3)],
            )
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hisd_edge",
            "thresholds",
            str(bundle),
            "--count",
            "60",
            "--max-drop",
            "2",
            "--method",
            "empirical",  # what is tested is the objective; 60 samples cannot certify 2 points
            "--costs",
            str(path),
            "--objective",
            "dynamic-energy",
            "--dry-run",
            "--json",
            "--sweep-csv",
            str(tmp_path / "s.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["stage_cost"] == [2.0, 0.2, 6.8] and out["objective"] == "dynamic-energy" and out["cost_unit"] == "mJ"
    assert out["costs"]["indistinguishable"] == [[0, 1]]
    assert "exits 0 and 1 cannot be told apart by dynamic-energy" in done.stderr  # one warning line, not an error
    missing = subprocess.run(
        [sys.executable, "-m", "hisd_edge", "thresholds", str(bundle), "--objective", "dynamic-energy"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "--objective dynamic-energy needs measured energy" in missing.stderr
