"""Workstation side: a multi-exit model -> a portable bundle of chained stage graphs.

One module per step: :mod:`~hisd_edge.convert.export` (torch / user ONNX -> one graph, fused
confidence), :mod:`~hisd_edge.convert.normalize` (IR/opset, pinned dims, folded constants and
BatchNormalization), :mod:`~hisd_edge.convert.split` (structural boundaries, stage graphs),
:mod:`~hisd_edge.convert.verify` (chain == monolithic == torch), :mod:`~hisd_edge.convert.calibrate`
(statistics along the chain; histograms in :mod:`~hisd_edge.convert.calib_stats`),
:mod:`~hisd_edge.convert.quantize` (INT8 Q/DQ placed by :mod:`~hisd_edge.convert.qdq`, per-layer
:mod:`~hisd_edge.convert.sensitivity`; fp16),
:mod:`~hisd_edge.convert.calib_cache` (TensorRT's text cache), :mod:`~hisd_edge.convert.validate`
(task-level accuracy per exit and precision), :mod:`~hisd_edge.convert.stats` (params, MACs),
:mod:`~hisd_edge.convert.writer` (manifest, atomic bundle directory), and to run them
:mod:`~hisd_edge.convert.source` (what is converted: checkpoint, ONNX or module),
:mod:`~hisd_edge.convert.options` (what convert can be told) and :mod:`~hisd_edge.convert.pipeline`
(the steps in order), and for existing bundles :mod:`~hisd_edge.convert.inspect` (readable
summary) and :mod:`~hisd_edge.convert.check` (TensorRT readiness).

Importing this package is cheap; the public names below load their modules on first use, so
``hisd_edge.convert.calib_cache`` (standard library only) also works on a target without onnx.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "convert_checkpoint": "pipeline",
    "convert_onnx": "pipeline",
    "convert_model": "pipeline",
    "list_points": "source",
    "parse_precisions": "options",
    "ConvertOptions": "options",
    "ConvertResult": "options",
    "format_validation_table": "validate",
    "check_bundle": "check",
    "format_check": "check",
    "summarize_bundle": "inspect",
    "format_bundle": "inspect",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (a list, built from the lazy-export table)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hisd_edge.convert' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hisd_edge.convert.{module}"), name)
