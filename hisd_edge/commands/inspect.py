"""hisd-edge inspect: a readable summary of a bundle."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a bundle's stages, exits, policy and validation",
        description="Print a bundle's stages (params, MACs, file size per precision, shapes), exits, exit "
        "policy, validation table and provenance. Verifies every file's size and checksum first (other verbs check "
        "only the files they use).",
    )
    p.add_argument("bundle", help="bundle directory (or its manifest.json)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every file's size and sha256 (the default; other verbs check only the files they use)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hisd_edge.bundle import Bundle
    from hisd_edge.convert.inspect import format_bundle, summarize_bundle

    bundle = Bundle.open(args.bundle, verify=not args.no_verify)
    if not args.no_verify:
        bundle.verify()  # every file the manifest names (a run checks only those it uses)
    if args.json:
        print(json.dumps(summarize_bundle(bundle)))
    else:
        print(format_bundle(bundle))
    return 0
