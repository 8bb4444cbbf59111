"""hisd-edge build: build one TensorRT engine per bundle stage, on the target device."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build TensorRT engines for this device from a bundle (run on the target)",
        description="Build one TensorRT engine per stage of BUNDLE for this GPU and TensorRT version (8.5 to 11.x, "
        "detected by feature) and store them in the bundle under engines/<device>/trt-<version>/<precision>/ with a "
        "build record in the manifest. Prints the equivalent trtexec command per stage. The bundle is left unchanged "
        "if anything fails.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (made by hisd-edge convert)")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8", "best"],
        default="fp16",
        help="fp16 (default), int8 (from the Q/DQ ONNX), best (lowest precision the bundle and TensorRT allow) or fp32",
    )
    p.add_argument(
        "--dla-core",
        type=int,
        default=None,
        metavar="N",
        help="build for DLA core N with GPU fallback (Jetson Xavier/Orin; TensorRT <= 10.7 or >= 11.4.1)",
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
        default="1,8,32",
        metavar="MIN,OPT,MAX",
        help="optimization profile for the dynamic batch dimension (default 1,8,32); the runtime accepts "
        "batches up to MAX",
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
    p.add_argument("--json", action="store_true", help="print the build record and trtexec commands as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hisd_edge.bundle import Bundle
    from hisd_edge.engine import BuildOptions, build_engines, parse_batch

    options = BuildOptions(
        precision=args.precision,
        batch=parse_batch(args.batch),
        workspace_mib=args.workspace_mib,
        dla_core=args.dla_core,
        timing_cache=args.timing_cache,
        legacy_int8=args.legacy_int8,
        optimization_level=args.opt_level,
        progress=not args.no_progress,
    )
    options.validate()
    bundle = Bundle.open(args.bundle)
    result = build_engines(bundle, options)
    record = result.record
    if args.json:
        print(json.dumps({"record": record, "trtexec": result.trtexec, "seconds": round(result.seconds, 2)}))
        return 0
    device = record["device"]
    print(
        f"built {len(record['files'])} {record['precision']} engine(s) for {device['name']} (sm {device['compute_capability']}) "
        f"with TensorRT {record['tensorrt_version']} ({result.recipe.typing}ly typed, from the "
        f"{result.recipe.onnx_precision} ONNX) in {result.seconds:.1f} s"
    )
    for note in result.recipe.notes:
        print(f"note: {note}")
    for entry, stage in zip(record["files"], record["stages"]):
        print(
            f"  stage {stage['index']}: {entry['path']}  {entry['bytes'] / 1024:.1f} KiB, "
            f"scratch {stage['device_memory_bytes'] / (1 << 20):.1f} MiB, {stage['build_seconds']:.2f} s"
        )
    print(f"timing cache: {result.timing_cache}")
    print("equivalent trtexec commands:")
    for line in result.trtexec:
        print(f"  {line}")
    return 0
