"""hisd-edge build: build one TensorRT engine per bundle stage, on the target device."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build TensorRT engines for this device from a bundle (run on the target)",
        description="Build one TensorRT engine per stage of BUNDLE for this GPU and TensorRT version (8.5 to 11.x, "
        "detected by feature) and store them in the bundle under engines/<device>/trt-<version>/<precision>/ with a "
        "build record in the manifest; the monolithic full model too where it can have the stages' precision (for "
        "bench and evaluate). Prints the equivalent trtexec command per stage. The bundle is left unchanged if anything "
        "fails. --dry-run --trt GEN shows the recipes and trtexec commands without TensorRT; --import-engines DIR "
        "takes plans built with those commands.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (made by hisd-edge convert)")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8", "best", "mixed"],
        default="fp16",
        help="fp16 (default), int8 (from the Q/DQ ONNX), best (lowest precision the bundle and TensorRT allow), fp32, "
        "or mixed (each stage at the precision convert --precision mixed planned for it)",
    )
    p.add_argument(
        "--dla-core",
        type=int,
        default=None,
        metavar="N",
        help="build for DLA core N with GPU fallback (Jetson Xavier/Orin; TensorRT <= 10.7 or >= 11.4.1); DLA takes "
        "one fixed batch (--batch N, default 1); the layers that fall back to the GPU are reported",
    )
    p.add_argument(
        "--dla-stages",
        default=None,
        metavar="K,...",
        help="with --dla-core: only these stages on the DLA (default all), the others on the GPU",
    )
    p.add_argument(
        "--workspace-mib",
        type=int,
        default=None,
        metavar="M",
        help="builder workspace limit in MiB (default: TensorRT's, the device memory); lower it if the build "
        "runs out of memory",
    )
    p.add_argument(
        "--batch",
        default=None,
        metavar="MIN,OPT,MAX",
        help="optimization profile for the dynamic batch dimension (default 1,8,32; MIN must be 1); the runtime "
        "accepts batches up to MAX. With --dla-core one fixed batch N (default 1)",
    )
    p.add_argument(
        "--timing-cache",
        default=None,
        metavar="PATH",
        help="timing cache file to read and update (default: engines/<device>/trt-<version>/timing.cache in "
        "the bundle)",
    )
    p.add_argument(
        "--legacy-int8",
        action="store_true",
        help="int8 by implicit calibration from the bundle's calibration caches (TensorRT < 11; the DLA path) "
        "instead of the Q/DQ ONNX",
    )
    p.add_argument(
        "--opt-level",
        type=int,
        default=None,
        metavar="N",
        help="builder optimization level 0-5 (TensorRT 8.6+; default 3)",
    )
    p.add_argument(
        "--no-full-model",
        action="store_true",
        help="do not build the monolithic full model (bench then uses the chain)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build nothing: print per stage the recipe and the equivalent trtexec command for --trt GEN (no TensorRT "
        "needed)",
    )
    p.add_argument(
        "--trt",
        default=None,
        metavar="GEN",
        help="with --dry-run: the TensorRT generation to plan for: 8.5 (JetPack 5), 8.6, 10.3 (JetPack 6), 10.13, "
        "10.16 (JetPack 7), 11",
    )
    p.add_argument(
        "--engines-dir",
        default=None,
        metavar="DIR",
        help="with --dry-run: the folder the trtexec commands save plans to (default trtexec-engines)",
    )
    p.add_argument(
        "--import-engines",
        default=None,
        metavar="DIR",
        help="take DIR/stage<k>.plan (and full.plan) built with trtexec, check them against this device, this "
        "TensorRT and the manifest, and record them as external (give --precision as built)",
    )
    p.add_argument("--json", action="store_true", help="print the build record and trtexec commands as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _stages(text: str) -> tuple:
    from hisd_edge.errors import InputError

    try:
        return tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise InputError(
            f"--dla-stages {text!r}: give stage indices separated by commas, e.g. --dla-stages 0,1"
        ) from None


def run(args: argparse.Namespace) -> int:
    from hisd_edge.bundle import Bundle
    from hisd_edge.engine import BuildOptions, build_engines, parse_batch
    from hisd_edge.errors import InputError

    options = BuildOptions(
        precision=args.precision,
        batch=parse_batch(args.batch) if args.batch is not None else None,
        workspace_mib=args.workspace_mib,
        dla_core=args.dla_core,
        dla_stages=_stages(args.dla_stages) if args.dla_stages is not None else None,
        timing_cache=args.timing_cache,
        legacy_int8=args.legacy_int8,
        optimization_level=args.opt_level,
        full_model=not args.no_full_model,
        progress=not args.no_progress,
    )
    options.validate()
    if args.dry_run and args.import_engines:
        raise InputError("--dry-run and --import-engines do different things; give one of them")
    if (args.trt or args.engines_dir) and not args.dry_run:
        raise InputError("--trt and --engines-dir plan a build: use them with --dry-run")
    bundle = Bundle.open(args.bundle)
    if options.dla_stages is not None and any(k >= bundle.num_stages for k in options.dla_stages):
        raise InputError(f"--dla-stages {args.dla_stages}: {bundle.root} has stages 0 to {bundle.num_stages - 1}")
    if args.dry_run:
        return _dry_run(args, bundle, options)
    if args.import_engines:
        from hisd_edge.engine.importer import import_engines

        result = import_engines(bundle, args.import_engines, options)
    else:
        result = build_engines(bundle, options)
    record = result.record
    if args.json:
        print(json.dumps({"record": record, "trtexec": result.trtexec, "seconds": round(result.seconds, 2)}))
        return 0
    device = record["device"]
    plans = [f for f in record["files"] if f.get("kind", "plan") == "plan"]
    how = (
        f"imported from {record['imported_from']} (external plans, checked on load)"
        if record.get("external")
        else f"{result.recipe.typing}ly typed, from the {result.recipe.onnx_precision} ONNX"
        if record["precision"] != "mixed"
        else "per-stage recipes"
    )
    print(
        f"built {len(plans)} {record['precision']} engine(s) for {device['name']} (sm {device['compute_capability']}) "
        f"with TensorRT {record['tensorrt_version']} ({how}) in {result.seconds:.1f} s"
    )
    for note in record["recipe"].get("notes", []):
        print(f"note: {note}")
    for entry, stage in zip(plans, record["stages"]):
        batch = stage.get("batch", record.get("batch", {}))
        print(
            f"  stage {stage['index']}: {entry['path']}  {entry['bytes'] / 1024:.1f} KiB, {stage.get('precision')}, "
            f"batch {batch.get('min')}-{batch.get('max')}, scratch {stage['device_memory_bytes'] / (1 << 20):.1f} MiB"
            + (f", {stage['build_seconds']:.2f} s" if "build_seconds" in stage else "")
        )
        dla = stage.get("dla")
        if dla is not None:
            if dla["runs_on"] == "gpu":
                print(
                    f"    DLA core {dla['core']}: none of its {dla['layers']} layers can run on the DLA; this engine "
                    "runs on the GPU"
                )
            elif dla["gpu_fallback_count"]:
                print(
                    f"    DLA core {dla['core']}: {dla['layers_on_dla']} of {dla['layers']} layers; "
                    f"{dla['gpu_fallback_count']} fell back to the GPU ({', '.join(dla['gpu_fallback_layers'][:4])}"
                    f"{', ...' if dla['gpu_fallback_count'] > 4 else ''})"
                )
            else:
                print(f"    DLA core {dla['core']}: all {dla['layers']} layers")
    full = record.get("full_model") or {}
    if full.get("built"):
        print("  full model: built (bench and evaluate compare against it)")
    elif full:
        print(f"  full model: not built ({full.get('reason')}); bench and evaluate compare against the chain")
    if result.timing_cache:
        print(f"timing cache: {result.timing_cache}")
    if result.trtexec:
        print("equivalent trtexec commands:")
        for line in result.trtexec:
            print(f"  {line}")
    return 0


def _dry_run(args: argparse.Namespace, bundle: Any, options: Any) -> int:
    from hisd_edge.engine.dryrun import DEFAULT_ENGINES_DIR, format_plan, plan_build
    from hisd_edge.errors import InputError

    if not args.trt:
        raise InputError(
            "--dry-run needs --trt GEN, the TensorRT generation to plan for (8.5, 8.6, 10.3, 10.13, 10.16, 11)"
        )
    plan = plan_build(bundle, options, args.trt, args.engines_dir or DEFAULT_ENGINES_DIR)
    print(json.dumps(plan) if args.json else format_plan(plan))
    return 0
