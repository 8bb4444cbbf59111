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
