"""Step 5: the reduced-precision variants of each stage.

INT8 is explicit Q/DQ (what TensorRT 11 requires, and what 8.5–10.x accept): ONNX Runtime's
``quantize_static`` in QDQ format with signed INT8 activations and weights, per-channel weights,
per-tensor activations, and *symmetric* ranges for both (``ActivationSymmetric`` defaults to
False, which TensorRT rejects: every zero point must be 0). The ranges come from the chained
calibration (:mod:`hisd_edge.convert.calibrate`), handed to ORT as its calibration cache so the
Q/DQ scales and the TensorRT cache are the same numbers. The fused confidence nodes stay float.

fp16 is ONNX Runtime's ``convert_float_to_float16`` with fp32 I/O (``keep_io_types``), so any
precision of one stage chains with any precision of the next; the confidence head stays fp32.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hisd_edge.errors import ConversionError, first_line

LOG = logging.getLogger("hisd_edge.convert")

# Operators whose inputs get Q/DQ: the MAC-heavy ones plus the residual Add (TensorRT fuses
# conv+add in INT8 when the add's inputs are quantized). Everything else stays float between them.
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")


_CONFIDENCE_NODE = re.compile(r"^conf\d+/(Softmax|ReduceMax)$")


def confidence_nodes(model: Any) -> List[str]:
    """Names of the fused-confidence nodes (kept out of quantization / fp16)."""
    return [node.name for node in model.graph.node if _CONFIDENCE_NODE.match(node.name)]


def _accepts_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: Any, method: str, scratch: Path, exclude_nodes: Sequence[str] = ()
) -> None:
    """Write the Q/DQ INT8 variant of the stage at ``fp32_path`` to ``out_path``.

    ``calibration`` (a :class:`~hisd_edge.convert.calibrate.StageCalibration`) supplies ORT's
    statistics, used as they are when this ONNX Runtime accepts a calibration cache; older ones
    recalibrate on the same stage input (same data and method, same ranges).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from hisd_edge.convert.calibrate import ArrayReader, _as_reader, input_name, ort_method

    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        # TensorRT 8.x accepts only float inputs to DequantizeLinear: weights stay float32 behind a
        # Q/DQ pair (TensorRT folds it at build time) and biases stay float (an int32 bias DQ is
        # rejected by every TensorRT version). The INT8 files are therefore not smaller than fp32.
        "AddQDQPairToWeight": True,
        "QuantizeBias": False,
        # Keep each exit's logits (and the stage's boundary output) float: a Q/DQ on a graph
        # output only costs precision at the one place the runtime reads values.
        "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"],
    }
    kwargs = {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": True,
        "reduce_range": False,
        "op_types_to_quantize": list(QUANTIZED_OP_TYPES),
        "nodes_to_exclude": list(exclude_nodes),
        "calibrate_method": ort_method(method),
        "extra_options": extra,
    }
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), _quiet_ort_logging():
            if _accepts_cache():
                from onnxruntime.quantization.calibrate import save_tensors_data

                cache = scratch / f"{Path(fp32_path).stem}.ranges.json"
                save_tensors_data(calibration.statistics, cache)
                quantize_static(str(fp32_path), str(out_path), None, calibration_cache_path=str(cache), **kwargs)
            else:  # pragma: no cover - older onnxruntime
                reader = ArrayReader(input_name(Path(fp32_path)), calibration.inputs, calibration.batch_size)
                quantize_static(str(fp32_path), str(out_path), _as_reader(reader), **kwargs)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"{Path(fp32_path).name}: INT8 quantization failed ({first_line(exc)})") from None


@contextlib.contextmanager
def _quiet_ort_logging():
    """ORT's quantizer logs a "please pre-process" warning per call on the root logger."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(previous)


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
