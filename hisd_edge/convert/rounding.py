"""Error-compensating INT8 weight rounding (GPTQ), from the calibration data's input statistics.

Rounding each weight to the nearest of its channel's 255 levels ignores what the layer's input
looks like. Where many taps meet correlated inputs (a 3x3 depthwise filter over a smooth image,
whose BatchNormalization-folded taps are large and nearly cancel, as in EfficientNet's first
block) the rounding errors add up in the output instead of averaging out. GPTQ (Frantar et al.,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2023; the
Optimal Brain Quantization of Frantar & Alistarh, 2022) rounds the weights of one output channel
one input position at a time and moves the not-yet-rounded weights to cancel the error each
rounding causes, weighted by the input's second moment ``H = E[x x^T]``. It minimizes the
layer's output error ``E[((W_q - W) x)^2]`` on the calibration data, not the weights' own error.

What ships is still a plain TensorRT Q/DQ graph: the rounded weight is written as ``scale * q``
with the same per-channel symmetric scale (the channel's max |w| / 127), so the weight's
QuantizeLinear reproduces ``q`` exactly and TensorRT folds it as before; fp32 and fp16 stages keep
the original weights.

This module holds the two halves: :class:`InputMoments` accumulates ``sum x x^T`` of a weighted
layer's input patches batch by batch during calibration (its size is fixed by the layer, not by
the image count), and :func:`gptq_round` turns a weight and those moments into the rounded
weight. Written here rather than taken from a library: the GPTQ implementations that exist
(AutoGPTQ, Model Optimizer's) work on torch Linear layers of LLMs, not on ONNX Conv/Gemm weights.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

INT8_MAX = 127.0
DAMPING = 0.01  # fraction of the mean diagonal added to H (GPTQ's default): keeps H invertible
MAX_ROWS_PER_BATCH = 16384  # input patches per layer per batch that enter H (an even subsample)
MAX_PATCH_VALUES = 2**23  # and at most this many patch values per batch (32 MiB of float32)
MAX_DIM = 2304  # a layer whose patch has more entries keeps plain rounding (H is D^2 float64: 42 MiB at most)


class InputMoments:
    """Running ``sum x x^T`` over a Conv's input patches (or a Gemm's input rows), per group.

    ``node`` is the ONNX node (Conv or Gemm); ``weight_shape`` its weight's shape. Geometry the
    accumulator cannot follow (``auto_pad``, a transposed Gemm input) leaves it ``usable = False``
    and the layer keeps plain rounding.
    """

    def __init__(self, node: Any, weight_shape: Tuple[int, ...]):
        attrs = {a.name: a for a in node.attribute}
        self.op = node.op_type
        self.usable = True
        self.rows = 0
        if self.op == "Conv" and len(weight_shape) == 4:
            self.group = int(attrs["group"].i) if "group" in attrs else 1
            self.kernel = tuple(int(k) for k in weight_shape[2:])
            self.strides = tuple(attrs["strides"].ints) if "strides" in attrs else (1, 1)
            self.dilations = tuple(attrs["dilations"].ints) if "dilations" in attrs else (1, 1)
            self.pads = tuple(attrs["pads"].ints) if "pads" in attrs else (0, 0, 0, 0)
            auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
            if auto_pad not in ("NOTSET", "VALID") or len(self.strides) != 2:
                self.usable = False
            self.dim = int(np.prod(weight_shape[1:]))
        elif self.op == "Gemm" and len(weight_shape) == 2:
            if "transA" in attrs and attrs["transA"].i:
                self.usable = False
            self.group = 1
            trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
            self.dim = int(weight_shape[1] if trans_b else weight_shape[0])
        else:
            self.usable = False
            self.group, self.dim = 1, 0
        if self.dim > MAX_DIM:
            self.usable = False
        self.sum: Optional[np.ndarray] = None

    def update(self, values: np.ndarray) -> None:
        """Add one batch of the layer's input (NCHW for Conv, [N, K] for Gemm)."""
        if not self.usable:
            return
        patches = self._patches(np.asarray(values, dtype=np.float32))  # [G, M, D]
        if patches is None:
            self.usable = False
            return
        moment = np.matmul(patches.transpose(0, 2, 1), patches).astype(np.float64)
        self.sum = moment if self.sum is None else self.sum + moment
        self.rows += patches.shape[1]

    def _patches(self, x: np.ndarray) -> Optional[np.ndarray]:
        """The batch's input patches, [G, M, D] in the weight's flattening order ([C/G, kh, kw]),
        at most about :data:`MAX_ROWS_PER_BATCH` of them and :data:`MAX_PATCH_VALUES` values:
        output positions are taken on an even grid (every f-th output row, then every f-th
        sample) before any copy is made."""
        if self.op == "Gemm":
            if x.ndim != 2 or x.shape[1] != self.dim:
                return None
            return x[None, :: max(1, -(-x.shape[0] // MAX_ROWS_PER_BATCH))]
        if x.ndim != 4 or x.shape[1] % self.group:
            return None
        top, left, bottom, right = self.pads
        kh, kw = self.kernel
        dh, dw = self.dilations
        sh, sw = self.strides
        span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        height, width = x.shape[2] + top + bottom, x.shape[3] + left + right
        if height < span_h or width < span_w:
            return None
        out_h, out_w = (height - span_h) // sh + 1, (width - span_w) // sw + 1
        cap = max(1, min(MAX_ROWS_PER_BATCH, MAX_PATCH_VALUES // (self.group * self.dim)))
        factor = max(1, -(-x.shape[0] * out_h * out_w // cap))
        row_step = min(factor, out_h)
        sample_step = max(1, -(-x.shape[0] * -(-out_h // row_step) * out_w // cap))
        x = x[::sample_step]
        if any(self.pads):
            x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        if (kh, kw) == (1, 1):
            cols = x[:, :, :: sh * row_step, ::sw]  # [N, C, Ho', Wo]
            n, c = cols.shape[:2]
            cols = cols.reshape(n, self.group, c // self.group, -1)  # [N, G, C/G, L]
            patches = cols.transpose(1, 0, 3, 2).reshape(self.group, -1, c // self.group)
        else:
            windows = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(2, 3))
            windows = windows[:, :, :: sh * row_step, ::sw, ::dh, ::dw]  # [N, C, Ho', Wo, kh, kw]
            n, c, rows_h, rows_w = windows.shape[:4]
            windows = windows.reshape(n, self.group, c // self.group, rows_h * rows_w, kh * kw)
            patches = windows.transpose(1, 0, 3, 2, 4).reshape(self.group, n * rows_h * rows_w, -1)
        if patches.shape[2] != self.dim:
            return None
        return np.ascontiguousarray(patches)

    def hessian(self) -> Optional[np.ndarray]:
        """``E[x x^T]`` per group, [G, D, D]; None when nothing usable was seen."""
        if not self.usable or self.sum is None or self.rows == 0:
            return None
        return self.sum / self.rows


def layer_moments(model: Any) -> Dict[str, Tuple[str, InputMoments]]:
    """Per quantizable layer of ``model`` (label as in :func:`~hisd_edge.convert.qdq.node_label`),
    the tensor it reads and an empty accumulator for its input's moments: every Conv and Gemm with
    a float initializer weight."""
    from onnx import TensorProto

    from hisd_edge.convert.qdq import node_label

    weights = {i.name: tuple(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    found: Dict[str, Tuple[str, InputMoments]] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        if node.input[0] in weights:
            continue
        moments = InputMoments(node, weights[node.input[1]])
        if moments.usable:
            found[node_label(node, index)] = (node.input[0], moments)
    return found


def round_layer(node: Any, weight: np.ndarray, axis: Optional[int], moments: InputMoments) -> Optional[np.ndarray]:
    """``node``'s weight rounded by :func:`gptq_round` in its own shape, or None where GPTQ does not
    apply (per-tensor scales, no statistics)."""
    from hisd_edge.convert.qdq import weight_scale

    hessian = moments.hessian()
    if hessian is None or axis is None:
        return None
    weight = np.asarray(weight, dtype=np.float32)
    transposed = node.op_type == "Gemm" and axis == 1  # [K, N]: one scale per column
    matrix = weight.T if transposed else weight.reshape(weight.shape[0], -1)
    if matrix.shape[1] != hessian.shape[-1] or matrix.shape[0] % moments.group:
        return None
    rounded = gptq_round(matrix, weight_scale(weight, axis), hessian, moments.group)
    return (rounded.T if transposed else rounded).reshape(weight.shape)


def gptq_round(weight: np.ndarray, scale: np.ndarray, hessian: np.ndarray, group: int) -> np.ndarray:
    """The weight rounded to ``scale * q`` (q integer in [-127, 127]) by GPTQ.

    ``weight`` is [O, D] (one row per output channel; ``scale`` per row) and ``hessian`` [G, D, D]
    with ``O = G * O/G`` (output channel o reads group o // (O/G)). Columns are rounded in order of
    decreasing input energy (GPTQ's "act-order"), each one's error spread over the remaining
    columns through the Cholesky factor of ``H^-1``.
    """
    weight = np.asarray(weight, dtype=np.float64)
    rows, dim = weight.shape
    per_group = rows // group
    w = weight.reshape(group, per_group, dim).copy()
    s = np.asarray(scale, dtype=np.float64).reshape(group, per_group, 1)
    h = np.array(hessian, dtype=np.float64)
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    if dead.any():  # inputs that were always zero: their weights cannot matter
        g_idx, i_idx = np.nonzero(dead)
        h[g_idx, i_idx, i_idx] = 1.0
        w[g_idx, :, i_idx] = 0.0
    order = np.argsort(-np.einsum("gii->gi", h), axis=1, kind="stable")  # [G, D]
    h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], 1), order[:, None, :], 2)
    w = np.take_along_axis(w, order[:, None, :], 2)
    damp = DAMPING * np.mean(np.einsum("gii->gi", h), axis=1)
    h = h + damp[:, None, None] * np.eye(dim)[None]
    try:
        inverse = np.linalg.inv(h)
        upper = np.linalg.cholesky(inverse).transpose(0, 2, 1)  # H^-1 = U^T U, U upper
    except np.linalg.LinAlgError:
        return _nearest(weight, scale)
    q = np.empty_like(w)
    for i in range(dim):
        column = w[:, :, i]
        rounded = np.clip(np.rint(column / s[:, :, 0]), -INT8_MAX, INT8_MAX) * s[:, :, 0]
        q[:, :, i] = rounded
        error = (column - rounded) / upper[:, i, i][:, None]  # [G, O/G]
        w[:, :, i + 1 :] -= error[:, :, None] * upper[:, i, None, i + 1 :]
    inverse_order = np.argsort(order, axis=1)
    q = np.take_along_axis(q, inverse_order[:, None, :], 2)
    return q.reshape(rows, dim).astype(np.float32)


def _nearest(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float64)[:, None]
    return (np.clip(np.rint(np.asarray(weight, dtype=np.float64) / s), -INT8_MAX, INT8_MAX) * s).astype(np.float32)
