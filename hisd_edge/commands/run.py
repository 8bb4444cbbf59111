"""hisd-edge run: early-exit inference on images, folders, videos, cameras, pipelines or arrays."""

from __future__ import annotations

import argparse
from pathlib import Path

from hisd_edge.commands import add_threads_argument
from hisd_edge.errors import HisdError

DEFAULT_BATCH_SIZE = 16  # files, folders and arrays; videos, cameras and streams run frame by frame (1)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="early-exit inference on images, folders, videos, cameras, GStreamer pipelines or .npy",
        description="Run a bundle stage by stage and stop at the first confident exit. INPUT is an image file, a folder "
        "of images, a video file, a camera index (0), a device (/dev/video0), a GStreamer pipeline ending in appsink "
        "(quote it; needs OpenCV with GStreamer), a stream URL, a .npy/.npz array, or default[:split]. Images are "
        "preprocessed with the bundle's preprocessing. Prints a table, or JSON lines with --json. Latency is per "
        "sample: the time of each batch's early-exit call divided among its rows (at batch 1, each input's own "
        "time); videos, cameras and streams also get frames per second. Inputs with labels (default[:split], a "
        "folder with one sub-folder per class named as the model's classes, a labelled .npz) get an accuracy.",
    )
    p.add_argument("bundle", help="bundle directory (engines/NAME) written by hisd-edge convert")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="what to classify (see above)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"], help="default: onnxruntime")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "int8", "mixed"],
        help="stage files to run (default fp32); mixed: the per-stage plan of convert --precision mixed",
    )
    p.add_argument(
        "--providers",
        default=None,
        help="ONNX Runtime execution providers, comma-separated: cpu, cuda, tensorrt, or auto (default cpu)",
    )
    add_threads_argument(p)
    p.add_argument(
        "--allow-spinning",
        action="store_true",
        help="let ONNX Runtime's idle threads spin (lower latency on a dedicated CPU, much worse on a busy one)",
    )
    p.add_argument(
        "--policy",
        default=None,
        help="exit policy (max_prob, entropy, margin, patience, stability); default: the manifest's",
    )
    p.add_argument(
        "--thresholds",
        default=None,
        help="comma-separated threshold per exit, 'none' for never leave there (overrides the manifest); the last "
        "exit always accepts, so K-1 values are enough, e.g. 0.9,0.8 on a 3-exit model",
    )
    p.add_argument(
        "--exit-at", type=int, default=None, metavar="K", help="force every input to leave at exit K (fixed budget)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"inputs per batch (rows that exit leave the batch); default {DEFAULT_BATCH_SIZE} for files, folders "
        "and arrays, 1 for videos, cameras and streams (each frame as soon as it arrives)",
    )
    p.add_argument(
        "--frames", type=int, default=None, help="at most this many frames from each video, camera or stream"
    )
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame of videos, cameras and streams")
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="turn off the bundle's input guard (on by default once calibrated: inputs it flags as out of "
        "distribution may not leave early and carry the flag out_of_distribution)",
    )
    p.add_argument(
        "--abstain", action="store_true", help="inputs the guard flags stop at exit 0 with no class (flag abstained)"
    )
    p.add_argument(
        "--audit",
        type=int,
        default=None,
        metavar="N",
        help="also run the full model on a seeded 1-in-N sample of inputs and track how often early exits disagree "
        "with it (with a confidence interval); warn when that exceeds what the thresholds were certified for",
    )
    p.add_argument("--audit-seed", type=int, default=0, help="seed of the audit's sample (default 0)")
    p.add_argument(
        "--input-scale",
        default="auto",
        choices=["auto", "0-255", "0-1", "normalized"],
        help="scale of float arrays (default auto: refuse values that contradict the bundle's 0..255 pixels; "
        "0-1: multiply by 255; normalized: already the network's input)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per input (JSON lines)")
    p.set_defaults(func=run)


def parse_thresholds(text: str) -> list:
    from hisd_edge.errors import InputError

    out: list = []
    for raw in text.split(","):
        part = raw.strip().lower()
        if part in ("none", "null", "never", "-"):
            out.append(None)
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise InputError(
                f"--thresholds {text!r}: give comma-separated numbers or 'none', e.g. 0.9,0.8,none"
            ) from None
    return out


def _is_stream(spec: str) -> bool:
    """Videos, cameras, devices, pipelines and URLs: inputs that arrive frame by frame."""
    from hisd_edge import data
    from hisd_edge.runtime.sources import is_live_source

    if is_live_source(spec) and not Path(spec).is_file():
        return True
    try:
        return data.source_kind(spec) == "video"
    except HisdError:
        return False  # open_inputs says what is wrong with it


def _row(result, width: int, per_sample_ms: float) -> str:
    name = result.name if len(result.name) <= width else "…" + result.name[-(width - 1) :]
    if not result.ok:
        return f"{name:<{width}}  error: {result.error}"
    if result.class_name is not None:
        what = result.class_name
    else:
        what = f"embedding[{len(result.embedding)}]" if result.embedding is not None else "-"
    conf = (
        f"{result.confidence:.3f}" if result.confidence is not None and result.confidence == result.confidence else "-"
    )
    marks = list(result.flags)
    if result.audit is not None:
        marks.append("audit:agrees" if result.audit["agrees"] else f"audit:final={result.audit['final_class']}")
    flags = ",".join(marks)
    return f"{name:<{width}}  {result.exit:>4}  {what:>10}  {conf:>6}  {per_sample_ms:>13.3f}  {flags}"


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    import numpy as np

    from hisd_edge.bundle import Bundle
    from hisd_edge.errors import InputError
    from hisd_edge.runtime.audit import LiveAudit, audit_reference
    from hisd_edge.runtime.early_exit import EarlyExitRuntime
    from hisd_edge.runtime.risk import certificate_of, certificate_text
    from hisd_edge.runtime.sources import batched, open_inputs

    streams = [spec for spec in args.inputs if _is_stream(spec)]
    batch_size = args.batch_size if args.batch_size is not None else (1 if streams else DEFAULT_BATCH_SIZE)
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if args.frames is not None and args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if args.exit_at is not None and args.thresholds:
        raise InputError("--exit-at and --thresholds conflict: --exit-at K ignores every threshold; give one of them")
    options = {"intra_op_threads": args.threads, "allow_spinning": args.allow_spinning}
    if args.providers:
        options["providers"] = [p.strip() for p in args.providers.split(",") if p.strip()]
    thresholds = parse_thresholds(args.thresholds) if args.thresholds else None
    bundle = Bundle.open(args.bundle)
    if args.exit_at is not None and not 0 <= args.exit_at < bundle.num_stages:
        raise InputError(f"--exit-at {args.exit_at}: the bundle has exits 0..{bundle.num_stages - 1}")
    if thresholds is not None and len(thresholds) not in (bundle.num_stages - 1, bundle.num_stages):
        raise InputError(
            f"--thresholds {args.thresholds!r}: the bundle has {bundle.num_stages} exits; give "
            f"{bundle.num_stages - 1} values (the last exit always accepts), 'none' for never leave there"
        )
    recorded = bundle.policy
    from_manifest = thresholds is None and args.policy in (None, recorded.get("kind"))
    audit = None
    if args.audit is not None:
        certificate = certificate_of(recorded)
        audit = LiveAudit(
            args.audit,
            audit_reference(recorded) if from_manifest else None,
            confidence=float(certificate.get("confidence") or 0.9),
            seed=args.audit_seed,
            reference_source=f"{certificate.get('method')} thresholds, risk {certificate.get('risk')}",
        )
    runtime = EarlyExitRuntime(
        bundle,
        backend=args.backend,
        precision=args.precision,
        policy=args.policy,
        thresholds=thresholds,
        exit_at=args.exit_at,
        guard=not args.no_guard,
        abstain=args.abstain,
        audit=audit,
        input_scale=args.input_scale,
        **options,
    )
    items = open_inputs(args.inputs, max_frames=args.frames, every=args.every, class_names=bundle.class_names)
    # What the thresholds promise, and the guard: shown before the table (after the summary with --json).
    if not from_manifest:
        notes = ["thresholds given on the command line: no calibration, no guarantee"]
    elif not recorded.get("calibrated"):
        notes = ["warning: thresholds are convert's uncalibrated defaults (no guarantee); run hisd-edge thresholds"]
    else:
        notes = [certificate_text(certificate_of(recorded))]
    if runtime.guard is not None:
        notes.append(runtime.guard.describe() + ("; flagged inputs abstain" if args.abstain else ""))
    width = 36
    warned = False
    done = errors = correct = labelled = 0
    exit_counts = [0] * runtime.bundle.num_stages
    per_sample_ms: list = []  # each input's share of its batch's call
    call_ms_total = 0.0
    with runtime:  # activate first: a backend that cannot start fails before anything is printed
        if not args.json:  # with --json these go to stderr after the summary, so errors stay one line
            print("\n".join(notes))
        if not args.json:
            print(f"{'input':<{width}}  {'exit':>4}  {'class':>10}  {'conf':>6}  {'ms per sample':>13}  flags")
        started = time.perf_counter()
        for batch in batched(items, batch_size):
            results, trace = runtime.infer_items(batch, first_index=done)
            ran = sum(1 for r in results if r.ok)
            # The batch's early-exit call, divided among the rows that ran in it: what one input costs.
            batch_ms = trace.total_ms if trace is not None else 0.0
            share_ms = batch_ms / ran if ran else 0.0
            call_ms_total += batch_ms
            for item, result in zip(batch, results):
                if result.ok and result.exit is not None:
                    exit_counts[result.exit] += 1
                    per_sample_ms.append(share_ms)
                    if item.label is not None and result.class_index is not None:
                        labelled += 1
                        correct += int(result.class_index == item.label)
                else:
                    errors += 1
                if args.json:
                    record = result.to_dict()
                    if result.ok:
                        record["latency_ms"] = round(share_ms, 4)
                        record["batch_latency_ms"] = round(batch_ms, 4)
                        record["batch_rows"] = ran
                    if item.label is not None:
                        record["label"] = item.label
                    print(json.dumps(record), flush=True)
                else:
                    print(_row(result, width, share_ms), flush=True)
            done += len(batch)
            if audit is not None and audit.warnings and not warned:
                print("warning: " + audit.warnings[0].text(), file=sys.stderr, flush=True)
                warned = True
        wall_s = time.perf_counter() - started
    ok = done - errors
    summary = [f"{done} input(s), {ok} ran, {errors} error(s)"]
    if ok:
        dist = ", ".join(f"exit {k}: {100 * c / ok:.1f}%" for k, c in enumerate(exit_counts))
        summary.append(
            f"exits {dist}; mean latency {np.mean(per_sample_ms):.3f} ms per sample at batch {batch_size} "
            f"(each batch's early-exit call divided among its rows, {ok} samples)"
        )
        if streams and wall_s > 0:
            summary.append(
                f"{ok / wall_s:.1f} FPS end to end (decoding included; {ok / (call_ms_total / 1e3):.1f} FPS "
                "of inference alone)"
                if call_ms_total > 0
                else f"{ok / wall_s:.1f} FPS end to end (decoding included)"
            )
    if labelled:
        summary.append(f"accuracy {100 * correct / labelled:.2f}% on {labelled} labelled input(s)")
    print("; ".join(summary), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print("\n".join(notes), file=sys.stderr)
    if audit is not None:
        print(audit.text(), file=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps({"audit": audit.summary()}), flush=True)
    if done and not ok:
        raise InputError(f"none of the {done} input(s) could be used (first error above); check the inputs")
    return 0
