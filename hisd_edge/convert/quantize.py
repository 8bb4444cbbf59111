"""Step 5: the reduced-precision variants of each stage.

INT8 is explicit Q/DQ (what TensorRT 11 requires, and what 8.5–10.x accept), placed by
:mod:`hisd_edge.convert.qdq` the way TensorRT fuses: Conv/Gemm/MatMul inputs quantized (weights
per output channel, activations per tensor, both symmetric with zero point 0), the residual input
of an Add after a Conv quantized, nothing between a Conv and its ReLU/Clip. The ranges come from
the chained calibration (:mod:`hisd_edge.convert.calibrate`), the same numbers that go into the
TensorRT calibration cache; the Conv/Gemm biases are corrected for the mean shift that weight
quantization causes (bias correction, from the calibration data's per-channel means), and the
weights are rounded by GPTQ (:mod:`hisd_edge.convert.rounding`, unless the calibration recipe says
``"weight_rounding": "nearest"``); the Q/DQ ONNX carries both, the legacy calibration-cache path
cannot. The fused confidence nodes stay float, and so do layers the caller
excludes (the most sensitive ones, with ``--keep-fp16``).

fp16 is ONNX Runtime's ``convert_float_to_float16`` with fp32 I/O (``keep_io_types``), so any
precision of one stage chains with any precision of the next; the confidence head stays fp32.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hisd_edge.errors import ConversionError, first_line

LOG = logging.getLogger("hisd_edge.convert")

# Operators whose inputs get Q/DQ (plus the skip input of a residual Add after one of them).
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


_CONFIDENCE_NODE = re.compile(r"^conf\d+/(Softmax|ReduceMax)$")


def confidence_nodes(model: Any) -> List[str]:
    """Names of the fused-confidence nodes (kept out of quantization / fp16)."""
    return [node.name for node in model.graph.node if _CONFIDENCE_NODE.match(node.name)]


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: Any, method: str, scratch: Path, exclude_nodes: Sequence[str] = ()
) -> List[str]:
    """Write the Q/DQ INT8 variant of the stage at ``fp32_path`` to ``out_path``.

    ``calibration`` (a :class:`~hisd_edge.convert.calibrate.StageCalibration`) supplies the ranges
    (``amax()``, from ``method``). Returns the labels of the layers that were quantized.
    ``scratch`` is unused (kept for callers of the ONNX Runtime based version).
    """
    import onnx

    from hisd_edge.convert.qdq import apply_qdq, plan_qdq

    try:
        model = onnx.load(str(fp32_path))
        plan = plan_qdq(model, exclude_nodes)
        quantized, skipped = apply_qdq(
            model, plan, calibration.amax(), calibration.input_means(), calibration.rounded_weights(model)
        )
        if skipped:
            LOG.info("%s: left float (no non-zero range seen): %s", Path(fp32_path).name, ", ".join(skipped[:10]))
        onnx.save(quantized, str(out_path))
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"{Path(fp32_path).name}: INT8 quantization failed ({first_line(exc)})") from None
    return list(plan.layers)


def convert_fp16(model: Any, keep_fp32_nodes: Optional[Sequence[str]] = None) -> Any:
    """fp16 copy of a stage with fp32 inputs/outputs (casts at the edges), topologically sorted."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from hisd_edge.convert.split import toposort

    try:
        with warnings_quiet():
            half = convert_float_to_float16(
                model, keep_io_types=True, disable_shape_infer=False, node_block_list=list(keep_fp32_nodes or [])
            )
    except Exception as exc:
        raise ConversionError(f"fp16 conversion failed ({first_line(exc)})") from None
    toposort(half)
    return half


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
