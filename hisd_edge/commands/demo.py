"""hisd-edge demo: the main job on the embedded default model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on the embedded default model",
        description="The main job end to end on the embedded default model: its per-exit accuracy, a bundle "
        "(fp32, fp16, INT8), thresholds certified on default:val, early exit on default:test against the monolithic "
        "model (the bench's method: per sample at batch 1, interleaved, medians over passes), and a per-exit profile "
        "with an HTML report. Writes, relative to the current directory, and OVERWRITES if present: "
        "engines/NAME/ (the bundle, replaced atomically; any thresholds or engines built there are lost) and "
        "reports/NAME/ (the report; a thresholds_sweep.csv there is kept), NAME being the checkpoint's name "
        "(mnist_cnn_hisd for the embedded model). Nothing else.",
    )
    p.add_argument("--checkpoint", default=None, help="use this checkpoint instead of the embedded default")
    p.add_argument(
        "--quick", action="store_true", help="the same steps on fewer samples: check that everything works here"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hisd_edge.demo import run_demo

    return run_demo(args.checkpoint, quick=args.quick)
