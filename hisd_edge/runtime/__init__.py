"""The early-exit runtime (target side): numpy plus one backend; never torch or onnx-graphsurgeon.

Public API::

    from hisd_edge.runtime import open_runtime
    with open_runtime("engines/mnist", backend="onnxruntime") as rt:
        results = rt.infer(images)            # raw images -> ExitResult per image, input order
        results, trace = rt.infer_tensors(x)  # preprocessed NCHW float32

Modules: ``backend`` (the backend interface), ``ort_session`` (the one ONNX Runtime session
factory and whole-array chain runner, shared with the converter), ``ort_backend`` (ONNX Runtime),
``tensorrt_backend`` (TensorRT), ``policies`` (exit policies), ``early_exit`` (the loop and the
runtime), ``sources`` (inputs: files, folders, videos, cameras, GStreamer), ``thresholds``
(calibration from validation data and measured costs), ``bench`` (the side-by-side benchmark),
``evaluate`` (fit + test summary for the demo).
"""

from hisd_edge.runtime.backend import (
    BACKENDS,
    Backend,
    FullResult,
    StageResult,
    create_backend,
    run_chain,
    softmax_max,
)
from hisd_edge.runtime.early_exit import BatchTrace, EarlyExitRuntime, ExitResult, open_runtime, run_early_exit
from hisd_edge.runtime.evaluate import EarlyExitSummary, evaluate_early_exit, format_early_exit
from hisd_edge.runtime.policies import POLICY_KINDS, ExitPolicy, make_policy, policy_from_manifest

__all__ = [
    "BACKENDS",
    "POLICY_KINDS",
    "Backend",
    "BatchTrace",
    "EarlyExitRuntime",
    "EarlyExitSummary",
    "ExitPolicy",
    "ExitResult",
    "FullResult",
    "StageResult",
    "create_backend",
    "evaluate_early_exit",
    "format_early_exit",
    "make_policy",
    "open_runtime",
    "policy_from_manifest",
    "run_chain",
    "run_early_exit",
    "softmax_max",
]
