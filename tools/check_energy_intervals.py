#!/usr/bin/env python3
"""Check the profiler's energy intervals on the simulated board: bias, and how often they miss.

A 95 % interval claims that, over many repeats of the whole measurement, it misses the true value
5 % of the time. This script repeats the measurement: each seed is a whole ``profile`` run on the
simulated Jetson of ``tests/profile/simboard.py`` (INA3221 running average of 512 x 140 us x 3
channels, idle drift with a slow wave, read noise, I2C read cost; virtual time, so each run takes
seconds), with a different noise seed, drift phase and interleaving seed. It prints, per exit, the
mean relative error of the dynamic energy and how many of the intervals covered the true value,
then the same for a naive design (1 s windows, no settling: what the profiler did before).

    .venv/bin/python tools/check_energy_intervals.py [--seeds 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "profile"))  # the simulated board lives with the tests


class _Patch:
    """The tiny part of pytest's monkeypatch that the board uses."""

    def __init__(self) -> None:
        self.undo: List[Any] = []

    def setattr(self, target: Any, name: str, value: Any) -> None:
        self.undo.append((target, name, getattr(target, name)))
        setattr(target, name, value)

    def restore(self) -> None:
        for target, name, value in reversed(self.undo):
            setattr(target, name, value)
        self.undo.clear()


def one_run(bundle: Path, work: Path, seed: int, rounds: int, naive: bool) -> Dict[str, Any]:
    from simboard import SimBackend, SimBoard

    from hisd_edge.profile import sensor
    from hisd_edge.profile.clock import VirtualClock
    from hisd_edge.profile.profiler import ProfileConfig, profile_bundle
    from hisd_edge.runtime import create_backend

    clock = VirtualClock(start=1000.0 + 37.0 * seed)  # a different phase of the idle wave per seed
    board = SimBoard(work / f"board{seed}", clock, seed=seed, wave_period_s=80.0 + 7.0 * (seed % 5))
    patch = _Patch()
    board.install(patch)
    made: Dict[str, Any] = {}

    def open_backend(b: Any, name: str, precision: str, options: Dict[str, Any]) -> Any:
        made["backend"] = SimBackend(create_backend(name, b, precision=precision, **options), board)
        return made["backend"]

    if naive:
        patch.setattr(sensor.SensorTiming, "settle_s", property(lambda self: 0.0))
        patch.setattr(sensor.SensorTiming, "min_window_s", property(lambda self: 0.0))
    config = ProfileConfig(
        bundle=str(bundle),
        data="default:test",
        samples=40,
        sysfs_root=str(board.root),
        repeats=3,
        warmup=1,
        warmup_s=0.0 if naive else None,
        rounds=1 if naive else rounds,
        energy_window_s=1.0 if naive else None,
        idle_s=1.0 if naive else None,
        seed=seed,
        sweep_points=3,
        overhead_blocks=0,
        model_check=False,
        progress=False,
    )
    try:
        profile = profile_bundle(config, clock=clock, open_backend=open_backend)
    finally:
        patch.restore()
    out = []
    for e in profile["exits"]:
        truth = made["backend"].true_exit_mj(e["index"], 1)
        got = e["energy_mj"]
        ci = got.get("dynamic_ci")
        out.append(
            {
                "error": got["dynamic"] / truth - 1.0,
                "covered": None if ci is None else ci[0] <= truth <= ci[1],
            }
        )
    return {"exits": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive-seeds", type=int, default=5)
    args = parser.parse_args()
    from hisd_edge.checkpoint import default_checkpoint_path
    from hisd_edge.convert import convert_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = work / "bundle"
        with contextlib.redirect_stdout(sys.stderr):
            convert_checkpoint(default_checkpoint_path(), bundle, precisions=("fp32",), val_count=64, verify_count=8)
        for label, seeds, naive in (
            ("interleaved design", args.seeds, False),
            ("naive 1 s windows", args.naive_seeds, True),
        ):
            runs = [one_run(bundle, work, seed, args.rounds, naive) for seed in range(seeds)]
            print(f"{label}: {seeds} runs")
            for k in range(len(runs[0]["exits"])):
                errors = [r["exits"][k]["error"] for r in runs]
                covered = [r["exits"][k]["covered"] for r in runs if r["exits"][k]["covered"] is not None]
                spread = statistics.stdev(errors) if len(errors) > 1 else math.nan
                line = f"  exit {k}: dynamic energy error mean {100 * statistics.mean(errors):+.2f} %, sd {100 * spread:.2f} %"
                line += f", max |error| {100 * max(abs(e) for e in errors):.2f} %"
                if covered:
                    line += f"; 95 % interval covered the truth {sum(covered)}/{len(covered)}"
                print(line, flush=True)
            if not naive:
                all_covered = [e["covered"] for r in runs for e in r["exits"] if e["covered"] is not None]
                print(
                    f"  all exits: covered {sum(all_covered)}/{len(all_covered)} ({100 * sum(all_covered) / len(all_covered):.1f} %)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
