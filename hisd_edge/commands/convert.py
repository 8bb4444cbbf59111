"""hisd-edge convert: a multi-exit checkpoint or ONNX -> a verified stage bundle."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from hisd_edge.commands import add_hidden_alias


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="turn a multi-exit checkpoint or ONNX into a portable bundle of chained stage graphs",
        description="Export the multi-exit model to ONNX, split it at the exits into chained stage graphs, verify the "
        "chain against the full model and torch, add fp16 and INT8 (Q/DQ, calibrated along the chain) variants and "
        "TensorRT calibration caches, validate every exit and precision on held-out data, and write the bundle "
        "(manifest.json + files) atomically.",
    )
    p.add_argument("source", help="checkpoint (*.safetensors from hisd-edge train) or multi-exit model.onnx")
    p.add_argument("--out", default=None, help="bundle directory to write (default: engines/<source name>)")
    p.add_argument(
        "--precision",
        default="fp32,fp16,int8",
        help="comma-separated fp32,fp16,int8, or 'mixed' (per stage the lowest precision within --max-drop "
        "of fp32); fp32 is always written (default: fp32,fp16,int8)",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=None,
        metavar="PP",
        help="with --precision mixed: allowed top-1 drop per exit in percentage points (default 0.5)",
    )
    p.add_argument(
        "--calib",
        default=None,
        metavar="SOURCE",
        help="calibration images: a folder, video, .npy/.npz, default[:split], or a calibration/*.json "
        "definition (default: the checkpoint's training data, default:train for the default model)",
    )
    p.add_argument(
        "--calib-samples", type=int, default=None, metavar="N", help="calibration images to use (default 256)"
    )
    add_hidden_alias(p, "--calib-count", "calib_samples", type=int)
    p.add_argument(
        "--calib-method",
        choices=["entropy", "minmax", "percentile"],
        default=None,
        help="range calibration method (default percentile, 99.999)",
    )
    p.add_argument(
        "--val",
        default=None,
        metavar="SOURCE",
        help="held-out data for the validation table (default: the checkpoint's validation split)",
    )
    p.add_argument("--val-samples", type=int, default=None, metavar="N", help="use at most N validation samples")
    add_hidden_alias(p, "--val-count", "val_samples", type=int)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset for the export (default 17)")
    p.add_argument("--exits", default=None, metavar="NAME,...", help="ONNX input: the exit tensors, shallowest first")
    p.add_argument(
        "--split-at",
        default=None,
        metavar="NAME,...",
        help="boundary after each exit but the last: ONNX tensor names, or module names for a checkpoint "
        "(default: found structurally)",
    )
    p.add_argument(
        "--list-points",
        action="store_true",
        help="list valid --exits/--split-at names (ONNX: marks the clean cuts) and exit",
    )
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="N,C,H,W",
        help="ONNX input: pin dynamic input dims (N keeps the batch dynamic), e.g. N,3,224,224",
    )
    p.add_argument(
        "--keep-fp16",
        default="auto",
        metavar="N|auto",
        help="keep the N layers whose INT8 quantization costs the most out of INT8 (no Q/DQ; TensorRT runs them "
        "in fp16). auto (default): none when every exit's INT8 top-1 agrees with fp32 on >= 98%% of the "
        "calibration sample inputs, else the worst layers one by one until it does (at most 10%% of them); "
        "0: INT8 everywhere",
    )
    p.add_argument(
        "--sensitivity",
        action="store_true",
        help="measure and print each layer's INT8 sensitivity (each layer quantized alone, on real inputs)",
    )
    p.add_argument(
        "--preprocessing",
        default=None,
        metavar="JSON",
        help="ONNX input: preprocessing as JSON or a .json file (keys of hisd_edge.preprocess.Preprocessing); "
        "default: from the input shape, pixels scaled to 0..1",
    )
    p.add_argument(
        "--class-names",
        default=None,
        metavar="A,B,...|FILE",
        help="ONNX input: class names (comma list or a file, one per line)",
    )
    p.add_argument(
        "--exit-kind", choices=["logits", "embedding"], default="logits", help="ONNX input: what the exits output"
    )
    p.add_argument(
        "--trt-cache-version",
        default="8.5.2",
        metavar="X.Y.Z",
        help="TensorRT version written into the calibration caches' header (default 8.5.2; hisd-edge build "
        "rewrites it for the TensorRT it finds)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.9, help="default max-prob threshold of every exit but the last (0.9)"
    )
    p.add_argument("--no-confidence", action="store_true", help="do not fuse softmax->max confidence outputs (conf{k})")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per session (default 2)")
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out (atomically)")
    p.add_argument("--timings", action="store_true", help="print the time of each step")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _preprocessing(text):
    from pathlib import Path

    from hisd_edge.errors import InputError
    from hisd_edge.preprocess import Preprocessing

    if text is None:
        return None
    try:
        raw = Path(text).read_text(encoding="utf-8") if text.endswith(".json") and Path(text).is_file() else text
        return Preprocessing.from_dict(json.loads(raw))
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(
            f"--preprocessing: not a JSON preprocessing description ({exc.__class__.__name__}); e.g. "
            '\'{"input_size": [224, 224], "channels": 3, "color_order": "rgb", "mean": [0.485, 0.456, 0.406], '
            '"std": [0.229, 0.224, 0.225]}\''
        ) from None


def _class_names(text):
    from pathlib import Path

    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return _names(text)


def run(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from hisd_edge.errors import InputError

    source = Path(args.source)
    is_onnx = source.suffix.lower() == ".onnx"
    if not source.exists():
        raise InputError(f"{source}: no such file; give a checkpoint (*.safetensors) or a multi-exit model.onnx")
    from hisd_edge.convert.normalize import parse_input_shape

    input_shape = parse_input_shape(args.input_shape)
    if input_shape is not None and not is_onnx:
        raise InputError("--input-shape applies to ONNX input; a checkpoint records its input shape itself")
    if args.list_points:
        return _list_points(source, is_onnx, input_shape, args.json)
    if not is_onnx and (args.exits or args.preprocessing or args.class_names):
        raise InputError(
            "--exits, --preprocessing and --class-names apply to ONNX input; a checkpoint records them itself"
        )
    if is_onnx and not args.exits:
        raise InputError(
            f"{source}: ONNX input needs --exits NAME,NAME,... (the exit tensors, shallowest first); "
            "list candidates with --list-points"
        )
    from hisd_edge.convert.pipeline import DEFAULT_MAX_DROP_PP, parse_precisions

    precisions, mixed = parse_precisions(args.precision)
    if args.max_drop is not None and not mixed:
        raise InputError("--max-drop applies to --precision mixed")
    out = Path(args.out) if args.out else Path("engines") / source.stem
    argv = sys.argv[sys.argv.index("convert") :] if "convert" in sys.argv else ["convert", args.source]
    options = {
        "precisions": precisions,
        "max_drop_pp": (args.max_drop if args.max_drop is not None else DEFAULT_MAX_DROP_PP) if mixed else None,
        "calib": args.calib,
        "calib_count": args.calib_samples,
        "calib_method": args.calib_method,
        "val": args.val,
        "val_count": args.val_samples,
        "opset": args.opset,
        "strict": args.strict,
        "force": args.force,
        "threads": args.threads,
        "trt_version": args.trt_cache_version,
        "confidence": not args.no_confidence,
        "threshold": args.threshold,
        "keep_fp16": args.keep_fp16,
        "sensitivity": args.sensitivity,
        "progress": not args.no_progress and not args.json,
        "command": "hisd-edge " + " ".join(shlex.quote(a) for a in argv),
    }
    from hisd_edge.convert import pipeline

    if is_onnx:
        result = pipeline.convert_onnx(
            source,
            out,
            _names(args.exits) or [],
            split_at=_names(args.split_at),
            preprocessing=_preprocessing(args.preprocessing),
            class_names=_class_names(args.class_names),
            exit_kind=args.exit_kind,
            input_shape=input_shape,
            **options,
        )
    else:
        result = pipeline.convert_checkpoint(source, out, split_points=_names(args.split_at), **options)
    skipped = (result.calibration or {}).get("skipped", 0)
    if args.json:
        print(
            json.dumps(
                {
                    "bundle": str(result.bundle),
                    "precisions": list(result.manifest["stages"][0]["files"]),
                    "validation": result.validation,
                    "verification": result.verification,
                    "calibration": result.calibration,
                    "timings_s": result.timings_s,
                    "sensitivity": result.sensitivity,
                }
            )
        )
        return 0
    if skipped:
        names = ", ".join(result.calibration.get("skipped_files", [])[:5])
        print(
            f"skipped {skipped} undecodable calibration image(s): {names}{' ...' if skipped > 5 else ''}",
            file=sys.stderr,
        )
    print(result.table())
    keep_line = _keep_fp16_line(result.calibration.get("keep_fp16") or {})
    if keep_line:
        print(keep_line)
    if result.sensitivity:
        from hisd_edge.convert.sensitivity import format_sensitivity

        print(format_sensitivity(result.sensitivity))
    diffs = result.verification
    torch_part = f", ONNX vs torch {max(diffs['torch_max_abs_diff']):.2g}" if diffs.get("torch_max_abs_diff") else ""
    print(
        f"verified on {diffs['samples']} samples: chain vs full ONNX max abs diff {max(diffs['chain_max_abs_diff']):.2g}{torch_part}"
    )
    if args.timings:
        print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings_s.items()))
    stages = len(result.manifest["stages"])
    print(f"wrote {result.bundle} ({stages} stages; {', '.join(result.manifest['stages'][0]['files'])})")
    return 0


def _list_points(source, is_onnx, input_shape, as_json) -> int:
    if is_onnx:
        from hisd_edge.convert.pipeline import list_onnx_points

        rows = list_onnx_points(source, input_shape)
        if as_json:
            print(
                json.dumps(
                    [{"name": n, "shape": list(s) if s is not None else None, "clean_cut": c} for n, s, c in rows]
                )
            )
            return 0
        print("tensors (for --exits / --split-at); * = a clean cut (everything after it needs only this tensor):")
        for name, shape, clean in rows:
            print(f"  {'*' if clean else ' '} {name}  {list(shape) if shape is not None else '?'}")
        return 0
    from hisd_edge.convert import list_points

    points = list_points(source)
    if as_json:
        print(json.dumps([{"name": n, "shape": list(s) if s is not None else None} for n, s in points]))
        return 0
    print("points (for --split-at; torch.fx names, as list_exit_points gives them):")
    for name, shape in points:
        print(f"  {name}  {list(shape) if shape is not None else '?'}")
    return 0


def _keep_fp16_line(record: Dict[str, Any]) -> str:
    """One line on what ``--keep-fp16 auto`` measured and kept out of INT8 (empty when nothing to say)."""
    if record.get("mode") != "auto" or "all_int8_agreement" not in record:
        return ""
    before = " / ".join(f"{100 * a:.1f}" for a in record["all_int8_agreement"])
    target = f"{100 * record['target_agreement']:.0f} %"
    samples = record["samples"]
    if not record.get("kept_layers"):
        return f"INT8 everywhere: exit agreement with fp32 {before} % on {samples} calibration inputs (target {target})"
    after = " / ".join(f"{100 * a:.1f}" for a in record["agreement"])
    verdict = ""
    if not record.get("met"):
        tried = record.get("tried_layers", record["kept_layers"])
        verdict = f"; target not reached ({tried} worst layers tried, at most {record['max_layers']} kept)"
    return (
        f"INT8 with {record['kept_layers']} of {record['quantized_layers']} layers kept fp16 (--keep-fp16 auto): "
        f"exit agreement with fp32 on {samples} calibration inputs {before} -> {after} % (target {target}){verdict}; "
        "--keep-fp16 0 quantizes every layer"
    )
