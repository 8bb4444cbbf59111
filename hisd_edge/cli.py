"""``hisd-edge``: one verb per step of the flow.

Each verb lives in ``hisd_edge.commands.<verb>`` with ``register(subparsers)`` (pure argparse,
cheap) and ``run(args) -> int`` (imports what it needs). A :class:`~hisd_edge.errors.HisdError`
is the user's to fix: one line on stderr, exit status 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from hisd_edge import __version__
from hisd_edge.errors import HisdError

# Order shown in --help: the data flow.
VERBS = ["train", "convert", "inspect", "check", "build", "run", "thresholds", "bench", "profile", "report", "demo"]


def _available_verbs() -> List[str]:
    found = []
    for verb in VERBS:
        try:
            importlib.import_module(f"hisd_edge.commands.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hisd_edge.commands.{verb}":
                continue  # verb not implemented in this version
            raise
        found.append(verb)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hisd-edge",
        description="Multi-exit (HiSD) networks from training to early-exit inference on NVIDIA Jetson.",
    )
    parser.add_argument("--version", action="version", version=f"hisd-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in _available_verbs():
        importlib.import_module(f"hisd_edge.commands.{verb}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="hisd-edge: %(levelname)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except HisdError as exc:
        message = " ".join(str(exc).split())
        print(f"hisd-edge {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hisd-edge {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `hisd-edge inspect ... | head`): stop quietly, like other CLI tools.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
