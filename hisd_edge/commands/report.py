"""hisd-edge report: re-render a profile report from its JSON, or compare several side by side."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="re-render a profile report (HTML, CSV, plots) or compare several",
        description="Re-render the report of one profile (profile.json -> CSV tables, PNG plots, report.html) or "
        "compare two or more profiles side by side (power modes, fp16 vs int8, boards) into compare.html.",
    )
    p.add_argument(
        "profiles",
        nargs="+",
        metavar="PROFILE",
        help="report directory written by hisd-edge profile, or its profile.json",
    )
    p.add_argument(
        "--out", default=None, help="output directory (one profile: default its own directory; two or more: required)"
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hisd_edge import atomic
    from hisd_edge.errors import InputError
    from hisd_edge.profile.report import write_comparison, write_report
    from hisd_edge.profile.schema import load_profile, resolve_profile_path

    profiles = [load_profile(p) for p in args.profiles]
    if args.out:
        atomic.check_writable(Path(args.out))
    if len(profiles) == 1:
        out = Path(args.out) if args.out else resolve_profile_path(args.profiles[0]).parent
        result = write_report(profiles[0], out)
    else:
        if not args.out:
            raise InputError("comparing profiles needs --out DIR for compare.html, e.g. --out reports/compare")
        result = write_comparison(profiles, args.profiles, Path(args.out))
    if args.json:
        print(json.dumps(result))
    else:
        for note in result.get("notes") or []:
            print(f"note: {note}")
        print(f"wrote {result['html']}")
    return 0
