"""CLI verbs: each module has ``register(subparsers)`` and a ``run(args)`` set as ``func``.

Keep the top of every module free of heavy imports (torch, onnx, tensorrt): ``hisd-edge --help``
imports all of them, and the target side has no torch.
"""


def add_threads_argument(parser) -> None:
    """``--threads`` for the verbs that run ONNX Runtime stage sessions (run, thresholds, bench)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: 1 for models under 50 M MACs per sample, "
        "where a second thread per stage costs more than it saves; else one per physical core)",
    )


def add_hidden_alias(parser, old: str, dest: str, **kwargs) -> None:
    """Accept an old flag spelling for one release without showing it in ``--help``.

    The alias writes to the new flag's ``dest``; its default is suppressed so the new flag's
    default stands when neither is given.
    """
    import argparse

    parser.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_samples_argument(parser, what: str = "samples") -> None:
    """``--samples N``: a seeded subset of the data (one name in every verb; ``--count`` still accepted)."""
    parser.add_argument(
        "--samples", type=int, default=None, metavar="N", help=f"use a seeded subset of N {what} (default: all)"
    )
    add_hidden_alias(parser, "--count", "samples", type=int)


def add_verbose_argument(parser) -> None:
    """``-v/--verbose`` after the verb too (``hisd-edge run -v ...``): debug logging of what the verb does."""
    import argparse

    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug details to stderr"
    )
