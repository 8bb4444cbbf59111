"""hisd-edge bench: the early-exit runtime against the monolithic model, side by side, on this machine."""

from __future__ import annotations

import argparse

from hisd_edge.commands import add_hidden_alias, add_samples_argument, add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark early exit vs the monolithic model on this machine (chain overhead, speedup, oracle, throughput)",
        description="In one run, with the compared variants interleaved in shuffled order and medians reported: the "
        "monolithic full ONNX vs all stages chained (batch 1 and --batch-size); the cost of reaching each exit; early "
        "exit at the bundle's thresholds vs monolithic (speedup per sample at batch 1 with its spread, "
        "accuracy); the oracle exit (each sample leaves at the first exit that is right); throughput with per-sample "
        "exits at --batch-size; the cost of the exit decision itself. The early-exit speedup is the same "
        "measurement demo, profile and the report use. Writes nothing unless --out is given.",
    )
    p.add_argument("bundle", help="bundle directory (engines/NAME)")
    p.add_argument(
        "--data",
        default="default:test",
        help="labelled test data (default default:test), or 'random' for random inputs (latency rows only)",
    )
    add_samples_argument(p)
    p.add_argument(
        "--calibrate-on",
        default=None,
        metavar="VAL",
        help="fit thresholds on VAL first (not written); default: default:val when the bundle is not calibrated",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="accuracy drop allowed when bench fits thresholds itself (default 0.5)",
    )
    p.add_argument(
        "--method",
        default="certified",
        choices=["certified", "empirical"],
        help="how bench fits thresholds itself: certified (default; the bound holds at confidence 0.9) "
        "or empirical (the drop on the fitting data only, no guarantee)",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="rough time budget for the measurements (default 60)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size for the batched rows (default 32)")
    add_hidden_alias(p, "--batch", "batch_size", type=int)
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "mixed"])
    add_threads_argument(p)
    p.add_argument(
        "--allow-spinning",
        action="store_true",
        help="let ONNX Runtime's idle threads spin (lower latency on a dedicated CPU, much worse on a busy one)",
    )
    p.add_argument(
        "--providers", default=None, help="ONNX Runtime providers, comma-separated (cpu, cuda, tensorrt, auto)"
    )
    p.add_argument(
        "--graph-optimization",
        default="auto",
        choices=["auto", "all", "extended", "basic", "disable"],
        help="ONNX Runtime graph optimisation level for every session (default auto: all; basic for int8)",
    )
    p.add_argument(
        "--no-guard", action="store_true", help="early-exit rows without the bundle's input guard (run uses it)"
    )
    p.add_argument(
        "--targets",
        action="store_true",
        help="also check the project's goals for the default model (chain overhead <= 1.03x, speedup >= 3x, "
        "drop <= 0.5 points, <= 1.2x the oracle's latency): met or MISSED",
    )
    p.add_argument(
        "--designs",
        default=None,
        metavar="THREADS",
        help="instead: the batch-1 designs side by side (in-graph artifact, chain, monolithic, oracle; batch 1 and "
        "--batch-size) for each intra-op thread count in THREADS, e.g. 1,2 (ONNX Runtime, no guard)",
    )
    p.add_argument("--out", default=None, metavar="PATH", help="also save the JSON report here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from hisd_edge import atomic
    from hisd_edge.bundle import Bundle
    from hisd_edge.errors import InputError
    from hisd_edge.runtime.bench import format_bench, run_bench

    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.seconds <= 0:
        raise InputError(f"--seconds {args.seconds:g}: must be > 0")
    if args.samples is not None and args.samples < 1:
        raise InputError(f"--samples {args.samples}: must be >= 1")
    if args.out:
        atomic.check_writable(args.out)
    bundle = Bundle.open(args.bundle)
    options = {
        "intra_op_threads": args.threads,
        "graph_optimization": args.graph_optimization,
        "allow_spinning": args.allow_spinning,
    }
    if args.providers:
        options["providers"] = [p.strip() for p in args.providers.split(",") if p.strip()]
    if args.designs:
        from hisd_edge.runtime.bench import designs_from_args

        report, text = designs_from_args(bundle, args, options)
        if args.out:
            atomic.write_json(args.out, report)
        print(json.dumps(report) if args.json else text)
        return 0
    report = run_bench(
        bundle,
        data=None if args.data == "random" else args.data,
        count=args.samples,
        calibrate_on=args.calibrate_on,
        backend=args.backend,
        precision=args.precision,
        seconds=args.seconds,
        batch=args.batch_size,
        backend_options=options,
        progress=not args.no_progress and not args.json,
        max_drop_points=args.max_drop,
        threshold_method=args.method,
        guard=not args.no_guard,
        targets=args.targets,
    )
    if args.out:
        atomic.write_json(args.out, report)
    print(json.dumps(report) if args.json else format_bench(report))
    return 0
