"""hisd-edge thresholds: certified (or empirical) per-exit thresholds from calibration data and measured costs."""

from __future__ import annotations

import argparse

from hisd_edge.commands import add_samples_argument, add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "thresholds",
        help="choose certified per-exit thresholds from calibration data and measured costs; write them into the bundle",
        description="Run every stage on the calibration data once, then choose the cheapest thresholds (expected cost "
        "per sample) for which, with probability >= --confidence over the draw of the calibration data, the accuracy "
        "drop against the last exit on new data from the same distribution is <= --max-drop points (Learn-then-Test: "
        "exact binomial p-values, fixed-sequence testing over one shared threshold). --risk disagreement needs no "
        "labels (a folder of frames, a video, camera captures) and bounds the drop too. --method empirical is the old "
        "fit: it meets --max-drop on the calibration samples only (no guarantee). Costs are stage latencies measured "
        "here (batch 1), or a profile report from the target (--costs). Also recalibrates the input guard on the same "
        "data. Writes policy, certificate and guard into the bundle manifest atomically, and the sweep as CSV into "
        "reports/NAME/thresholds_sweep.csv (the bundle's report directory, which profile and demo also write and "
        "keep it in). --dry-run writes nothing.",
    )
    p.add_argument("bundle", help="bundle directory (engines/NAME)")
    p.add_argument(
        "--data",
        default="default:val",
        help="calibration data: image folder (with class sub-folders for labels), video, .npy/.npz, or default:val "
        "(default); unlabelled data calibrates the disagreement risk",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="bound on the top-1 drop vs the last exit, in accuracy points (default 0.5)",
    )
    p.add_argument(
        "--method",
        default="certified",
        choices=["certified", "empirical"],
        help="certified (default): holds on new data with --confidence; empirical: met on the calibration samples "
        "only, no guarantee",
    )
    p.add_argument(
        "--risk",
        default="auto",
        choices=["auto", "accuracy", "disagreement"],
        help="accuracy: 1[last exit right, taken exit wrong] (needs labels); disagreement: taken exit's class != the "
        "last exit's (no labels; also bounds the drop); auto (default): accuracy when the data has labels",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="probability, over the draw of the calibration data, that the bound holds (default 0.9)",
    )
    p.add_argument(
        "--guard-false-alarms",
        type=float,
        default=None,
        metavar="RATE",
        help="recalibrate the input guard on this data at this false-alarm rate (default: the bundle guard's rate, "
        "else 0.01); 0 leaves the guard as it is",
    )
    p.add_argument(
        "--input-scale",
        default="auto",
        choices=["auto", "0-255", "0-1", "normalized"],
        help="scale of float arrays in --data (default auto: refuse a scale that contradicts the bundle's 0..255)",
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
        help="where to save the sweep (default reports/NAME/thresholds_sweep.csv; with --dry-run only when given)",
    )
    p.add_argument(
        "--grid", type=int, default=40, help="--method empirical: candidate thresholds per exit (default 40)"
    )
    add_samples_argument(p, "calibration samples")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    add_threads_argument(p)
    p.add_argument(
        "--providers", default=None, help="ONNX Runtime providers, comma-separated (cpu, cuda, tensorrt, auto)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the result; write nothing (neither the manifest nor the sweep)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hisd_edge import atomic
    from hisd_edge.bundle import Bundle
    from hisd_edge.errors import InputError
    from hisd_edge.runtime.thresholds import SWEEP_CSV_NAME, fit_thresholds, format_calibration, write_sweep_csv

    if args.samples is not None and args.samples < 1:
        raise InputError(f"--samples {args.samples}: must be >= 1")
    bundle = Bundle.open(args.bundle)
    sweep = Path(args.sweep_csv) if args.sweep_csv else Path("reports") / bundle.name / SWEEP_CSV_NAME
    save_sweep = not args.dry_run or args.sweep_csv is not None
    if save_sweep:
        atomic.check_writable(sweep, "--sweep-csv")  # before the long pass, and before the manifest changes
    options = {"intra_op_threads": args.threads}
    if args.providers:
        options["providers"] = [p.strip() for p in args.providers.split(",") if p.strip()]
    calibration, details = fit_thresholds(
        bundle,
        args.data,
        max_drop_points=args.max_drop,
        method=args.method,
        risk=args.risk,
        confidence=args.confidence,
        guard_false_alarms=args.guard_false_alarms,
        input_scale=args.input_scale,
        policy_kind=args.policy,
        costs=Path(args.costs) if args.costs else None,
        objective=args.objective,
        backend=args.backend,
        precision=args.precision,
        count=args.samples,
        grid=args.grid,
        write=not args.dry_run,
        progress=not args.no_progress and not args.json,
        backend_options=options,
    )
    if save_sweep:
        write_sweep_csv(sweep, calibration)
    if args.json:
        print(
            json.dumps(
                {
                    "policy": calibration.policy.to_manifest(),
                    "certificate": calibration.certificate,
                    "accuracy": calibration.accuracy,
                    "final_accuracy": calibration.final_accuracy,
                    "expected_cost": calibration.expected_cost,
                    "full_cost": calibration.full_cost,
                    "cost_unit": calibration.cost_unit,
                    "speedup": calibration.speedup,
                    "exit_fractions": calibration.exit_fractions,
                    "sweep_csv": str(sweep) if save_sweep else None,
                    "written": not args.dry_run,
                    **details,
                }
            )
        )
    else:
        print(format_calibration(calibration, details))
        if save_sweep:
            print(f"sweep ({len(calibration.sweep_rows)} threshold sets) saved to {sweep}")
        print(
            ("manifest unchanged (--dry-run)" if save_sweep else "nothing written (--dry-run)")
            if args.dry_run
            else f"policy written to {bundle.root / 'manifest.json'}"
        )
    return 0
