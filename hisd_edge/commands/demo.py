"""hisd-edge demo: the main job on the embedded default model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on the embedded default model",
        description="Evaluate the embedded default multi-exit model on the default test split "
        "and print its per-exit accuracy table.",
    )
    p.add_argument("--checkpoint", default=None, help="use this checkpoint instead of the embedded default")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hisd_edge.demo import run_demo

    return run_demo(args.checkpoint)
