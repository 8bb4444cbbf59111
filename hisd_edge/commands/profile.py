"""hisd-edge profile: per-exit latency, memory and energy of a bundle on this device, and the report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from hisd_edge.commands import add_hidden_alias

# Kept here so --help imports nothing heavy (any hisd_edge.profile module loads the whole profiler);
# tests/profile/test_profile_cli.py asserts it equals hisd_edge.profile.power.POWER_CHOICES.
POWER_CHOICES = ("auto", "ina3221", "tegrastats", "jtop", "nvml", "rapl", "none")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure per-exit latency, memory and energy; write profile.json, CSV, plots and an HTML report",
        description="Profile a bundle on this device: for each exit, the latency to reach it and per stage, "
        "memory, and energy per inference, total and dynamic (above idle), per power rail, each with a confidence "
        "interval. Exits, idle brackets and a real early-exit pass run interleaved in a seeded random order, "
        "repeated over --rounds, after a warm-up to thermal steady state; every window first lets the power "
        "sensor settle (5 time constants of its averaging) and is long enough for it (30 s or more on a Jetson's "
        "INA3221). Clocks, temperatures and the power mode are recorded and a run in which they moved is "
        "flagged. Energy is reported as unavailable when there is no power source, never estimated.",
    )
    p.add_argument("bundle", help="bundle directory (engines/NAME) written by hisd-edge convert")
    p.add_argument(
        "--data",
        required=True,
        help="labelled data for accuracy and the sweep: 'default[:split]', an image folder, a video or .npy/.npz",
    )
    p.add_argument("--samples", type=int, default=None, help="use a seeded subset of this many samples (default: all)")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend: onnxruntime (default) or tensorrt")
    p.add_argument("--precision", default="fp32", help="stage files to run: fp32 (default), fp16 or int8")
    p.add_argument(
        "--providers",
        default=None,
        help="onnxruntime execution providers, comma-separated (cpu, cuda, tensorrt, auto); default cpu",
    )
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the backend's)")
    p.add_argument(
        "--batch-size",
        default="1",
        metavar="B[,B...]",
        help="comma-separated batch sizes, e.g. 1,8,32 (default 1); the smallest is the headline that thresholds read",
    )
    add_hidden_alias(p, "--batch", "batch_size")
    p.add_argument(
        "--power",
        default="auto",
        choices=POWER_CHOICES,
        help="power source (default auto: ina3221 hwmon, ina3221 iio, tegrastats, jtop, nvml, rapl, none)",
    )
    p.add_argument(
        "--sysfs-root",
        default=None,
        help="read sys/, proc/device-tree and etc/ under this directory (a recorded tree); "
        "default $HISD_EDGE_SYSFS_ROOT or /",
    )
    p.add_argument(
        "--tegrastats-log", default=None, metavar="FILE", help="replay a recorded tegrastats log as the power source"
    )
    p.add_argument("--tegrastats-interval-ms", type=int, default=100, help="tegrastats --interval (default 100)")
    p.add_argument("--gpu", type=int, default=0, help="GPU index for --power nvml (default 0)")
    p.add_argument(
        "--rails",
        default=None,
        help="INA3221 rails to read, comma-separated (default: every connected rail); fewer rails, fewer I2C reads",
    )
    p.add_argument(
        "--period-ms",
        type=float,
        default=None,
        help="power sampling period (default: a quarter of the sensor's time constant, at least 20 ms)",
    )
    p.add_argument(
        "--sampler",
        default="auto",
        choices=("auto", "process", "thread"),
        help="where power is polled: its own process (auto, for sysfs monitors) or a thread of this one",
    )
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per batch size (default 10)")
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=None,
        help="longest warm-up to thermal steady state on the deepest exit (default 60 on a Jetson sensor, 20 on a "
        "counter; 0 skips)",
    )
    p.add_argument(
        "--repeats", type=int, default=100, help="latency rounds: every exit once per round, seeded order (default 100)"
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="energy rounds: idle bracket + every exit per round (default 3)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the interleaved orders (default 0)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument(
        "--energy-seconds",
        type=float,
        default=None,
        help="measuring window per block, after the sensor settles (default: the sensor's; >= 30 s on a Jetson); "
        "a window too short for the sensor is refused",
    )
    p.add_argument("--energy-inferences", type=int, default=50, help="minimum calls in each energy window (default 50)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle bracket window (default: --energy-seconds)")
    p.add_argument(
        "--no-model-check",
        action="store_true",
        help="skip the real early-exit pass that checks the per-exit prediction",
    )
    p.add_argument(
        "--power-modes",
        default=None,
        metavar="IDS",
        help="profile under each of these nvpmodel modes (comma-separated ids, needs root) into OUT@nvpmodel-ID, "
        "then compare them side by side in OUT; the mode in force before is restored",
    )
    p.add_argument(
        "--overhead-pairs",
        type=int,
        default=10,
        help="alternating (sampler paused, polling) block pairs per exit that measure the sampler's overhead "
        "(default 10; 0 skips)",
    )
    p.add_argument(
        "--sweep-points", type=int, default=41, help="threshold sweep: candidate thresholds per exit (default 41)"
    )
    p.add_argument(
        "--sweep-data",
        default=None,
        metavar="SOURCE",
        help="data for the threshold sweep (default: the data the bundle's thresholds were calibrated on, else "
        "the validation split of --data default:test); never tune thresholds on the data you report",
    )
    p.add_argument("--out", default=None, help="report directory (default reports/BUNDLE_NAME); replaced atomically")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _batches(text: str) -> list:
    from hisd_edge.errors import InputError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise InputError(f"--batch-size {text!r}: give comma-separated positive batch sizes, e.g. 1,8,32")
    return values


def _ids(text: str, flag: str) -> list:
    from hisd_edge.errors import InputError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise InputError(f"{flag} {text!r}: give comma-separated nvpmodel mode ids, e.g. 0,1")
    return values


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hisd_edge.errors import InputError
    from hisd_edge.profile.profiler import ProfileConfig, format_summary, run_profile, run_profile_modes

    batches = _batches(args.batch_size)
    if args.samples is not None and args.samples <= 0:
        raise InputError(f"--samples {args.samples}: must be positive")
    options = {}
    if args.providers:
        options["providers"] = [p.strip() for p in args.providers.split(",") if p.strip()]
    if args.threads is not None:
        options["intra_op_threads"] = args.threads
    out = Path(args.out) if args.out else Path("reports") / Path(args.bundle.rstrip("/")).name
    from hisd_edge import atomic

    atomic.check_writable(out)  # before measuring for minutes
    config = ProfileConfig(
        bundle=args.bundle,
        data=args.data,
        samples=args.samples,
        backend=args.backend,
        precision=args.precision,
        backend_options=options,
        batches=batches,
        power=args.power,
        rails=[r.strip() for r in args.rails.split(",") if r.strip()] if args.rails else None,
        sysfs_root=args.sysfs_root,
        tegrastats_log=args.tegrastats_log,
        tegrastats_interval_ms=args.tegrastats_interval_ms,
        gpu_index=args.gpu,
        sampling_period_ms=args.period_ms,
        sampler=args.sampler,
        warmup=args.warmup,
        warmup_s=args.warmup_seconds,
        repeats=args.repeats,
        rounds=args.rounds,
        seed=args.seed,
        confidence=args.confidence,
        energy_window_s=args.energy_seconds,
        energy_min_inferences=args.energy_inferences,
        idle_s=args.idle_seconds,
        model_check=not args.no_model_check,
        sweep_points=args.sweep_points,
        sweep_data=args.sweep_data,
        overhead_blocks=args.overhead_pairs,
        progress=not args.no_progress and not args.json,
        command=shlex.join(["hisd-edge", *sys.argv[1:]]),
    )
    if args.power_modes:
        modes = _ids(args.power_modes, "--power-modes")
        done = run_profile_modes(config, out, modes)
        compare = done["comparison"]["html"] if done["comparison"] else None
        if args.json:
            reports = [summary(r["profile"], r["report"]) for r in done["results"]]
            print(json.dumps({"modes": modes, "reports": reports, "compare_html": compare}))
            return 0
        for item in done["results"]:
            print(format_summary(item["profile"]))
            for note in item["profile"]["notes"] + item["report"]["notes"]:
                print(f"note: {note}")
            print(f"wrote {item['report']['html']}")
        if compare:
            print(f"wrote {compare}")
        return 0
    result = run_profile(config, out)
    profile, report = result["profile"], result["report"]
    if args.json:
        print(json.dumps(summary(profile, report)))
        return 0
    print(format_summary(profile))
    for note in profile["notes"] + report["notes"]:
        print(f"note: {note}")
    print(f"wrote {report['html']}")
    return 0


def summary(profile: dict, report: dict) -> dict:
    current = (profile.get("accuracy") or {}).get("current") or {}
    return {
        "out": report["out"],
        "html": report["html"],
        "batch": profile["batch"],
        "power_source": profile["power"]["source"],
        "energy_available": profile["power"]["available"],
        "total_quantity": ((profile["power"].get("total_rule") or {}).get("quantity")),
        "exits": [
            {
                "index": e["index"],
                "latency_ms": e["latency_ms"],
                "energy_mj": e.get("energy_mj"),
                "rails_mj": e.get("rails_mj"),
            }
            for e in profile["exits"]
        ],
        "model_check": profile.get("model_check"),
        "conditions_flags": (profile.get("conditions") or {}).get("flags"),
        "accuracy_at_current_thresholds": current.get("accuracy"),
        "exit_fraction": current.get("exit_fraction"),
        "sampler_overhead_pct": [e.get("overhead_pct") for e in ((profile.get("overhead") or {}).get("per_exit") or [])]
        or None,
        "notes": profile["notes"] + report["notes"],
    }
