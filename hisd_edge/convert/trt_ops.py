"""Which ONNX operators TensorRT's ONNX parser imports, per TensorRT version family.

Transcribed from onnx-tensorrt's ``docs/operators.md`` (the "Supported: Y" rows) at TensorRT
8.5 and 10.15; 8.6 is 8.5 plus LayerNormalization (its INormalizationLayer arrived in 8.6);
11.x is taken as 10.15's list (the 11 parser kept the operator set and removed only implicit
INT8 and the precision flags). Restrictions on attributes are not modelled, only operator types
and the opset range; ``hisd-edge check`` is a readiness screen, the final word is the parser on
the target (``hisd-edge build``).
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

_TRT85 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul
Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

_TRT86 = _TRT85 | {"LayerNormalization"}

_TRT10 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


class Family:
    """One TensorRT version family: supported operators, opset range, INT64 and INT8 behaviour."""

    def __init__(self, name: str, label: str, ops: FrozenSet[str], opsets: Tuple[int, int], native_int64: bool,
                 implicit_int8: bool):
        self.name = name
        self.label = label
        self.ops = ops
        self.opsets = opsets
        self.native_int64 = native_int64  # 8.x casts INT64 tensors down to INT32 (clamping)
        self.implicit_int8 = implicit_int8  # calibration caches usable (removed in 11)


FAMILIES: Dict[str, Family] = {
    "8.5": Family("8.5", "TensorRT 8.5 (JetPack 5)", _TRT85, (7, 17), native_int64=False, implicit_int8=True),
    "8.6": Family("8.6", "TensorRT 8.6 (JetPack 6.0)", _TRT86, (7, 17), native_int64=False, implicit_int8=True),
    "10": Family("10", "TensorRT 10.x (JetPack 6.1+/7)", _TRT10, (9, 24), native_int64=True, implicit_int8=True),
    "11": Family("11", "TensorRT 11.x", _TRT10, (9, 24), native_int64=True, implicit_int8=False),
}


def family(name: str) -> Family:
    """``"8.5"``, ``"8.6"``, ``"10"``/``"10.3"``, ``"11"``/``"11.1"`` -> its family."""
    text = str(name).strip().lower()
    for prefix in ("tensorrt", "trt"):
        if text.startswith(prefix):
            text = text[len(prefix):].lstrip("- ")
    if text in FAMILIES:
        return FAMILIES[text]
    major = text.split(".")[0]
    if major in ("10", "11"):
        return FAMILIES[major]
    from hisd_edge.errors import InputError

    raise InputError(f"unknown TensorRT version {name!r}; choose from {', '.join(FAMILIES)} (e.g. 8.5, 10.3, 11)")
