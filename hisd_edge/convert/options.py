"""What ``hisd-edge convert`` can be told, and what a conversion produced.

:class:`ConvertOptions` holds every option with the CLI's defaults and checks them before any
work starts; :class:`ConvertResult` is what the pipeline returns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from hisd_edge.bundle import PRECISIONS
from hisd_edge.errors import InputError

DEFAULT_THRESHOLD = 0.9
DEFAULT_MAX_DROP_PP = 0.5
VERIFY_SAMPLES = 64


@dataclasses.dataclass
class ConvertOptions:
    """Everything ``hisd-edge convert`` can be told (defaults match the CLI)."""

    precisions: Tuple[str, ...] = ("fp32", "fp16", "int8")
    max_drop_pp: Optional[float] = None  # set: also choose a per-stage "mixed" plan within this drop
    calib: Optional[str] = None  # source string or calibration/*.json; None: the model's own default
    calib_count: Optional[int] = None  # None: the recipe's (256)
    calib_method: Optional[str] = None  # None: the recipe's (percentile)
    val: Optional[str] = None  # held-out data; None: the checkpoint's validation split
    val_count: Optional[int] = None
    opset: int = 17
    strict: bool = False  # undecodable images are fatal instead of skipped
    force: bool = False  # replace an existing bundle (atomically)
    threads: int = 2  # ONNX Runtime intra-op threads per session
    verify_count: int = VERIFY_SAMPLES
    trt_version: str = "8.5.2"  # TensorRT version named in the calibration caches' header
    confidence: bool = True  # fuse softmax->max as conf{k} outputs
    # keep this many of the most INT8-sensitive layers out of INT8; "auto": as many as the measured
    # INT8 agreement needs (hisd_edge.convert.sensitivity.auto_keep)
    keep_fp16: Union[int, str] = "auto"
    sensitivity: bool = False  # measure every layer's INT8 sensitivity (done anyway when keep_fp16 > 0)
    threshold: float = DEFAULT_THRESHOLD  # default max-prob threshold of every exit but the last
    name: Optional[str] = None  # bundle name; default: the output directory's name
    progress: bool = False
    command: Optional[str] = None  # recorded in provenance

    def __post_init__(self) -> None:
        precisions = tuple(dict.fromkeys(self.precisions))
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise InputError(
                f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)} or 'mixed'"
            )
        if "fp32" not in precisions:
            precisions = ("fp32", *precisions)  # the reference every other precision is judged against
        self.precisions = tuple(p for p in PRECISIONS if p in precisions)
        if self.max_drop_pp is not None and self.max_drop_pp < 0:
            raise InputError(f"--max-drop must be >= 0 percentage points, got {self.max_drop_pp}")
        self.keep_fp16 = parse_keep_fp16(self.keep_fp16)
        if self.threads <= 0 or self.verify_count <= 0:
            raise InputError("threads and verify count must be positive")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise InputError(f"threshold must be in (0, 1], got {self.threshold}")
        if int(self.opset) < 13:
            raise InputError(f"--opset {self.opset}: needs 13 or newer (per-channel Q/DQ)")


def parse_keep_fp16(value: Union[int, str]) -> Union[int, str]:
    """``--keep-fp16``: ``"auto"`` or a number of layers >= 0."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise InputError(f"--keep-fp16 takes a number of layers or 'auto', got {value!r}") from None
    if count < 0:
        raise InputError(f"--keep-fp16 must be >= 0 layers (or 'auto'), got {value}")
    return count


def parse_precisions(text: str) -> Tuple[Tuple[str, ...], bool]:
    """``"fp32,fp16,int8"`` or ``"mixed"`` -> (precisions to write, mixed requested)."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not parts:
        raise InputError("--precision is empty; give e.g. fp32,fp16,int8 or mixed")
    mixed = "mixed" in parts
    parts = [p for p in parts if p != "mixed"]
    if mixed:
        parts = list(PRECISIONS)
    unknown = [p for p in parts if p not in PRECISIONS]
    if unknown:
        raise InputError(f"--precision: unknown {', '.join(unknown)}; choose from {', '.join(PRECISIONS)} or mixed")
    return tuple(parts), mixed


@dataclasses.dataclass
class ConvertResult:
    """What a conversion produced: where, the validation table and what it cost."""

    bundle: Path
    manifest: Dict[str, Any]
    validation: Dict[str, Any]
    verification: Dict[str, Any]
    calibration: Dict[str, Any]
    timings_s: Dict[str, float]
    sensitivity: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # INT8 cost per layer, worst first

    def table(self) -> str:
        from hisd_edge.convert.validate import format_validation_table

        return format_validation_table(self.validation)


def options_from(options: Dict[str, Any]) -> ConvertOptions:
    """:class:`ConvertOptions` from keyword arguments (``precisions`` may be a string like the CLI's)."""
    if options.get("calib_count") is not None and int(options["calib_count"]) <= 0:
        raise InputError(f"--calib-samples must be positive, got {options['calib_count']}")
    if options.get("val_count") is not None and int(options["val_count"]) <= 0:
        raise InputError(f"--val-samples must be positive, got {options['val_count']}")
    if isinstance(options.get("precisions"), str):
        precisions, mixed = parse_precisions(options["precisions"])
        options = {**options, "precisions": precisions}
        if mixed and options.get("max_drop_pp") is None:
            options["max_drop_pp"] = DEFAULT_MAX_DROP_PP
    known = {f.name for f in dataclasses.fields(ConvertOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown conversion option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return ConvertOptions(**options)
