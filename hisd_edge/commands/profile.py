"""hisd-edge profile: per-exit latency, memory and energy of a bundle on this device, and the report."""

from __future__ import annotations

import argparse
import json
import sys

# Kept here so --help imports nothing heavy (any hisd_edge.profile module loads the whole profiler);
# tests/profile/test_profile_cli.py asserts it equals hisd_edge.profile.power.POWER_CHOICES.
POWER_CHOICES = ("auto", "ina3221", "tegrastats", "jtop", "nvml", "rapl", "none")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure per-exit latency, memory and energy; write profile.json, CSV, plots and an HTML report",
        description="Profile a bundle on this device: for each exit, the latency to reach it (p50/p90/p99) and "
        "per stage, memory, and energy per inference (power sampled in the background, trapezoid integration, "
        "idle baseline subtracted; reported as unavailable when there is no power source), plus accuracy and "
        "exit distribution at the current thresholds and across a threshold sweep.",
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
        "--batch",
        default="1",
        help="comma-separated batch sizes, e.g. 1,8,32 (default 1); the smallest is the headline that thresholds read",
    )
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
        "--period-ms",
        type=float,
        default=20.0,
        help="power sampling period (default 20; never faster than the sensor updates)",
    )
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per batch size (default 10)")
    p.add_argument("--repeats", type=int, default=100, help="timed runs per exit and batch size (default 100)")
    p.add_argument(
        "--energy-seconds", type=float, default=2.0, help="minimum length of each steady energy loop (default 2)"
    )
    p.add_argument("--energy-inferences", type=int, default=50, help="minimum calls in each energy loop (default 50)")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="idle baseline length (default 2)")
    p.add_argument(
        "--overhead-pairs",
        type=int,
        default=10,
        help="alternating (sampler off, on) block pairs that measure the sampler's overhead (default 10; 0 skips)",
    )
    p.add_argument("--sweep-points", type=int, default=41, help="threshold sweep points (default 41)")
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
        raise InputError(f"--batch {text!r}: give comma-separated positive batch sizes, e.g. 1,8,32")
    return values


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hisd_edge.errors import InputError
    from hisd_edge.profile.profiler import ProfileConfig, format_summary, run_profile

    batches = _batches(args.batch)
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
        sysfs_root=args.sysfs_root,
        tegrastats_log=args.tegrastats_log,
        tegrastats_interval_ms=args.tegrastats_interval_ms,
        gpu_index=args.gpu,
        sampling_period_ms=args.period_ms,
        warmup=args.warmup,
        repeats=args.repeats,
        energy_min_s=args.energy_seconds,
        energy_min_inferences=args.energy_inferences,
        idle_s=args.idle_seconds,
        sweep_points=args.sweep_points,
        overhead_blocks=args.overhead_pairs,
        progress=not args.no_progress and not args.json,
        command=" ".join(["hisd-edge", *sys.argv[1:]]),
    )
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
        "exits": [
            {"index": e["index"], "latency_ms": e["latency_ms"], "energy_mj": e["energy_mj"]} for e in profile["exits"]
        ],
        "accuracy_at_current_thresholds": current.get("accuracy"),
        "exit_fraction": current.get("exit_fraction"),
        "sampler_overhead_pct": ((profile.get("overhead") or {}).get("sampler") or {}).get("overhead_pct"),
        "notes": profile["notes"] + report["notes"],
    }
