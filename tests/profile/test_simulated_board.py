"""The profiler on a simulated board: does it recover per-exit energies a real INA3221 would blur?

The board (tests/profile/simboard.py) follows a known power trace through the sensor's running average
(512 samples x 140 us x 3 channels: tau = 0.43 s) and its conversion cycle, with idle drift, read
noise and an I2C cost per read; the backend spends virtual time at known power for every stage the
profiler runs. The profiler, on the same virtual clock, must recover each exit's dynamic energy within
5 % and cover it with its 95 % interval, with the default 30-second windows (virtual: CI waits for
none of them).
"""

from __future__ import annotations

import pytest

from hisd_edge.profile.clock import VirtualClock
from hisd_edge.profile.profiler import ProfileConfig, profile_bundle

from .simboard import SimBackend, SimBoard


def _simulated(
    tmp_path,
    monkeypatch,
    tiny_bundle_dir,
    *,
    kernel="new",
    steal=False,
    fail=None,
    seed=0,
    stage_ms=None,
    drift=None,
    **config,
):
    clock = VirtualClock(start=1000.0 + 37.0 * seed)  # each seed meets the idle wave at another phase
    clock.jobs_steal_time = steal
    board = SimBoard(
        tmp_path / "board",
        clock,
        kernel=kernel,
        seed=seed,
        wave_period_s=80.0 + 7.0 * (seed % 5),
        drift_mw_per_s=drift,
    )
    board.install(monkeypatch)
    if fail is not None:
        board.fail_between(*fail)
    made = {}

    def open_backend(bundle, name, precision, options):
        from hisd_edge.runtime import create_backend

        real = create_backend(name, bundle, precision=precision, **options)
        made["backend"] = SimBackend(real, board, **({"stage_ms": stage_ms} if stage_ms else {}))
        return made["backend"]

    settings = {
        "bundle": str(tiny_bundle_dir),
        "data": "default:test",
        "samples": 60,
        "sysfs_root": str(board.root),
        "repeats": 20,
        "warmup": 2,
        "rounds": 3,
        "seed": seed,
        "sweep_points": 5,
        "overhead_blocks": 2,
        "progress": False,
    }
    settings.update(config)
    profile = profile_bundle(ProfileConfig(**settings), clock=clock, open_backend=open_backend)
    return profile, made["backend"], board


def test_recovers_every_exits_dynamic_energy_within_5_percent(tmp_path, monkeypatch, tiny_bundle_dir):
    profile, backend, _board = _simulated(tmp_path, monkeypatch, tiny_bundle_dir)
    sensor = profile["sensor"]
    assert sensor["samples"] == 512 and sensor["tau_s"] == pytest.approx(0.5115, rel=1e-3)  # 1 ms cycle as read
    assert profile["settings"]["window_s"] >= 30.0 and profile["settings"]["settle_s"] >= 5 * 0.43
    for e in profile["exits"]:
        truth = backend.true_exit_mj(e["index"], 1)
        got = e["energy_mj"]
        assert got["dynamic"] == pytest.approx(truth, rel=0.05), (e["index"], got, truth)  # the bound
        # tighter, from what the design achieves (tools/check_energy_intervals.py: within 1.5 % on 40 seeds):
        # losing the idle brackets' drift correction alone moves exit 0 by about 4 %
        assert got["dynamic"] == pytest.approx(truth, rel=0.02), (e["index"], got, truth)
        assert got["rounds"] == 3 and got["dynamic_ci"][0] < got["dynamic"] < got["dynamic_ci"][1]
        # per rail too: the GPU/CPU rail carries most of the dynamic energy on this board
        rail = e["rails_mj"]["VDD_CPU_GPU_CV"]
        assert rail["dynamic"] == pytest.approx(backend.true_exit_mj(e["index"], 1, "VDD_CPU_GPU_CV"), rel=0.05)
    # stages from the paired rounds
    for s in profile["stages"]:
        k = s["index"]
        truth = backend.true_exit_mj(k, 1) - (backend.true_exit_mj(k - 1, 1) if k else 0.0)
        assert s["energy_mj"]["dynamic"] == pytest.approx(truth, rel=0.1, abs=0.002)
    # the model check: the real early-exit loop vs the per-exit prediction
    check = profile["model_check"]
    assert check["energy_mj"]["dynamic"]["ratio"] == pytest.approx(1.0, abs=0.05)
    assert check["latency_ms"]["ratio"] == pytest.approx(1.0, abs=0.05)
    assert profile["conditions"]["trusted"] and profile["power"]["sampler"] == "virtual"


def test_a_sampler_inside_the_measured_process_shows_as_overhead(tmp_path, monkeypatch, tiny_bundle_dir):
    quiet, _, _ = _simulated(tmp_path / "a", monkeypatch, tiny_bundle_dir, rounds=1, warmup_s=0)
    stealing, _, _ = _simulated(tmp_path / "b", monkeypatch, tiny_bundle_dir, steal=True, rounds=1, warmup_s=0)
    assert [round(e["overhead_pct"], 6) for e in quiet["overhead"]["per_exit"]] == [0.0, 0.0, 0.0]
    assert all(e["overhead_pct"] > 0.5 for e in stealing["overhead"]["per_exit"])
    assert len(stealing["overhead"]["per_exit"]) == 3  # measured at every exit


def test_a_power_source_that_stops_mid_run_leaves_out_its_windows_and_says_so(tmp_path, monkeypatch, tiny_bundle_dir):
    # the driver goes away for 15 virtual seconds inside round 0's exit-1 window (seed 0's order)
    profile, backend, _board = _simulated(
        tmp_path, monkeypatch, tiny_bundle_dir, rounds=2, warmup_s=0, fail=(1000.0 + 80.0, 1000.0 + 95.0)
    )
    assert profile["power"]["gaps"] and "cannot be read" in profile["power"]["gaps"][0]["reason"]
    assert any("left out of the energy figures" in n for n in profile["notes"])
    used = [e["energy"]["rounds"] for e in profile["exits"]]
    assert used == [2, 1, 2]  # exit 1 lost a round, the others kept both
    assert profile["exits"][1]["energy_mj"]["dynamic_ci"] is None  # one round: no interval, and not invented
    for e in profile["exits"]:  # what was measured is still right
        assert e["energy_mj"]["dynamic"] == pytest.approx(backend.true_exit_mj(e["index"], 1), rel=0.05)


def test_old_kernel_convention_and_batch_compaction_caught_by_the_model_check(tmp_path, monkeypatch, tiny_bundle_dir):
    profile, backend, _board = _simulated(
        tmp_path, monkeypatch, tiny_bundle_dir, kernel="old", rounds=2, warmup_s=0, batches=(4,)
    )
    assert profile["sensor"]["update_interval_meaning"] == "channels x samples x conversions"
    assert profile["sensor"]["tau_s"] == pytest.approx(0.4296, rel=2e-3)
    for e in profile["exits"]:  # per sample at batch 4
        assert e["energy_mj"]["dynamic"] == pytest.approx(backend.true_exit_mj(e["index"], 4), rel=0.05)
    # In a batch of 4 the rows that leave early are dropped, so later stages run on fewer rows, which costs
    # more per row on this board: the real early-exit pass costs more than the per-exit figures predict.
    check = profile["model_check"]
    assert check["batch"] == 4 and check["energy_mj"]["dynamic"]["ratio"] > 1.03
    assert check["energy_mj"]["dynamic"]["difference_ci"][0] > 0 and "additive model is off" in check["verdict"]
    assert any("mis-price this batch size" in n for n in profile["notes"])


def test_windows_that_ignore_the_sensor_lag_are_biased(tmp_path, monkeypatch, tiny_bundle_dir):
    """What the old method did (short windows, no settling) on the same board: the bias the issue measured.

    The sensor check refuses such windows, so this drives the design below it: 1-second windows, no
    settling, idle once at the start, exits in order. The figures come out low by tens of percent.
    """
    from hisd_edge.profile import sensor

    monkeypatch.setattr(sensor.SensorTiming, "settle_s", property(lambda self: 0.0))
    monkeypatch.setattr(sensor.SensorTiming, "min_window_s", property(lambda self: 0.0))
    profile, backend, _board = _simulated(
        tmp_path, monkeypatch, tiny_bundle_dir, rounds=1, warmup_s=0, energy_window_s=1.0, model_check=False
    )
    errors = [e["energy_mj"]["dynamic"] / backend.true_exit_mj(e["index"], 1) - 1.0 for e in profile["exits"]]
    assert max(abs(x) for x in errors) > 0.1, errors  # the lag shows as a >10 % error on some exit


@pytest.mark.slow
def test_the_intervals_cover_the_truth_at_their_nominal_rate(tmp_path, monkeypatch, tiny_bundle_dir):
    """A 95 % interval misses 1 time in 20: count misses over 8 whole profiles (24 intervals), not one.

    Deterministic (fixed seeds); at the nominal rate, 3 or fewer misses in 24 happen 97 % of the time.
    tools/check_energy_intervals.py runs the same experiment at scale (40 profiles: 115/120 covered).
    """
    covered, errors = [], []
    for seed in range(8):
        with monkeypatch.context() as patch:
            profile, backend, _ = _simulated(
                tmp_path / str(seed),
                patch,
                tiny_bundle_dir,
                seed=seed,
                stage_ms=(30.0, 50.0, 80.0),
                repeats=3,
                warmup_s=0,
                overhead_blocks=0,
                model_check=False,
                samples=30,
            )
        for e in profile["exits"]:
            truth = backend.true_exit_mj(e["index"], 1)
            low, high = e["energy_mj"]["dynamic_ci"]
            covered.append(low <= truth <= high)
            errors.append(e["energy_mj"]["dynamic"] / truth - 1.0)
    assert sum(covered) >= 21, (sum(covered), errors)
    assert max(abs(x) for x in errors) < 0.05 and abs(sum(errors) / len(errors)) < 0.01  # no bias


def test_warm_up_runs_until_power_holds_still_and_says_when_it_did_not(tmp_path, monkeypatch, tiny_bundle_dir):
    steady, _, _ = _simulated(tmp_path / "a", monkeypatch, tiny_bundle_dir, rounds=1, warmup_s=120.0)
    warm = steady["design"]["warmup"]
    assert warm["steady"] is True and len(warm["blocks"]) == 2 and warm["seconds"] < 120.0
    assert not any("thermal steady state" in n for n in steady["notes"])
    # a board still heating up fast (idle rising 20 mW/s) never holds still within 30 s
    heating = {"VDD_IN": 20.0, "VDD_CPU_GPU_CV": 10.0, "VDD_SOC": 2.0}
    hot, _, _ = _simulated(tmp_path / "b", monkeypatch, tiny_bundle_dir, rounds=1, warmup_s=30.0, drift=heating)
    assert hot["design"]["warmup"]["steady"] is False
    assert any("did not reach a thermal steady state in 30 s" in n for n in hot["notes"])
