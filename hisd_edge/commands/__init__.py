"""CLI verbs: each module has ``register(subparsers)`` and a ``run(args)`` set as ``func``.

Keep the top of every module free of heavy imports (torch, onnx, tensorrt): ``hisd-edge --help``
imports all of them, and the target side has no torch.
"""
