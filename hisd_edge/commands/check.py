"""hisd-edge check: TensorRT readiness of a bundle's stage files."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="check a bundle's stage files against TensorRT's ONNX support",
        description="Screen every stage file for what TensorRT would reject: operators outside its ONNX "
        "support for the targeted versions, non-zero or uint8 zero points, missing shapes, INT64 weights, "
        "dynamic dims other than the batch. Exits 1 when a problem is found.",
    )
    p.add_argument("bundle", help="bundle directory")
    p.add_argument(
        "--trt",
        default="8.5,8.6,10,11",
        metavar="VERSIONS",
        help="TensorRT version families to check against (default: 8.5,8.6,10,11)",
    )
    p.add_argument(
        "--precision", default=None, metavar="P,...", help="only these precisions (default: all in the bundle)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hisd_edge.convert.check import check_bundle, format_check

    targets = [t.strip() for t in args.trt.split(",") if t.strip()]
    precisions = [p.strip() for p in args.precision.split(",")] if args.precision else None
    report = check_bundle(args.bundle, targets=targets, precisions=precisions)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_check(report))
    return 0 if report.ok else 1
