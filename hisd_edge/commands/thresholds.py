"""hisd-edge thresholds: fit per-exit thresholds on validation data and measured costs."""

from __future__ import annotations

import argparse

from hisd_edge.commands import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "thresholds",
        help="choose per-exit thresholds from validation data and measured costs; write them into the bundle",
        description="Run every stage on the validation data once, then search per-exit thresholds that minimise the "
        "expected cost per sample while keeping top-1 accuracy within --max-drop points of the last exit. Costs are "
        "stage latencies measured here (batch 1), or a profile report from the target (--costs). Writes the policy "
        "into the bundle manifest atomically and the whole sweep (accuracy vs expected cost) as CSV.",
    )
    p.add_argument("bundle", help="bundle directory (engines/NAME)")
    p.add_argument(
        "--data",
        default="default:val",
        help="validation data: image folder with class sub-folders, .npz with labels, or default:val (default)",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="allowed top-1 drop in accuracy points vs the last exit (default 0.5)",
    )
    p.add_argument(
        "--costs",
        default=None,
        metavar="PROFILE.json",
        help="per-stage costs from hisd-edge profile (reports/NAME/profile.json)",
    )
    p.add_argument(
        "--objective",
        default="latency",
        choices=["latency", "dynamic-energy", "total-energy", "energy"],
        help="what to minimise (energy needs --costs; energy = total-energy)",
    )
    p.add_argument(
        "--policy",
        default=None,
        help="max_prob, entropy, margin, patience or stability (default: the manifest's, else max_prob)",
    )
    p.add_argument(
        "--sweep-csv",
        default=None,
        metavar="PATH",
        help="where to save the sweep (default reports/NAME/thresholds_sweep.csv)",
    )
    p.add_argument("--grid", type=int, default=40, help="candidate thresholds per exit (default 40)")
    p.add_argument("--count", type=int, default=None, help="use a seeded subset of this many validation samples")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    add_threads_argument(p)
    p.add_argument(
        "--providers", default=None, help="ONNX Runtime providers, comma-separated (cpu, cuda, tensorrt, auto)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the result but leave the manifest unchanged")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hisd_edge import atomic
    from hisd_edge.bundle import Bundle
    from hisd_edge.runtime.thresholds import fit_thresholds, format_calibration, write_sweep_csv

    bundle = Bundle.open(args.bundle)
    sweep = Path(args.sweep_csv) if args.sweep_csv else Path("reports") / bundle.name / "thresholds_sweep.csv"
    atomic.check_writable(sweep, "--sweep-csv")  # before the long pass, and before the manifest changes
    options = {"intra_op_threads": args.threads}
    if args.providers:
        options["providers"] = [p.strip() for p in args.providers.split(",") if p.strip()]
    calibration, details = fit_thresholds(
        bundle,
        args.data,
        max_drop_points=args.max_drop,
        policy_kind=args.policy,
        costs=Path(args.costs) if args.costs else None,
        objective=args.objective,
        backend=args.backend,
        precision=args.precision,
        count=args.count,
        grid=args.grid,
        write=not args.dry_run,
        progress=not args.no_progress and not args.json,
        backend_options=options,
    )
    write_sweep_csv(sweep, calibration)
    if args.json:
        print(
            json.dumps(
                {
                    "policy": calibration.policy.to_manifest(),
                    "accuracy": calibration.accuracy,
                    "final_accuracy": calibration.final_accuracy,
                    "expected_cost": calibration.expected_cost,
                    "full_cost": calibration.full_cost,
                    "cost_unit": calibration.cost_unit,
                    "speedup": calibration.speedup,
                    "exit_fractions": calibration.exit_fractions,
                    "sweep_csv": str(sweep),
                    "written": not args.dry_run,
                    **details,
                }
            )
        )
    else:
        print(format_calibration(calibration, details))
        print(f"sweep ({len(calibration.sweep_rows)} threshold sets) saved to {sweep}")
        print(
            "manifest unchanged (--dry-run)" if args.dry_run else f"policy written to {bundle.root / 'manifest.json'}"
        )
    return 0
