"""Build recipes: which stage ONNX to parse and which flags to set, per TensorRT API generation.

The bundle carries one ONNX per stage per precision: fp32, fp16 (casts in the graph) and int8
(explicit Q/DQ), plus a TensorRT text calibration cache per stage for the legacy path. The recipe
picks among them from the *features* of the installed TensorRT (:mod:`hisd_edge.engine.features`):

* strongly typed (TensorRT 10.12+ and 11.x): precision comes from the ONNX alone: the fp16 ONNX
  for fp16, the Q/DQ ONNX for int8, no precision flags (11.x has none; 10.x refuses them on a
  strongly typed network);
* weakly typed (8.5, 8.6, 10.0-10.11): the fp32 ONNX with ``FP16``; the Q/DQ ONNX with ``INT8``
  (weakly typed builds still need the flag for Q/DQ networks) and, for ``best``, ``FP16`` too;
* legacy implicit INT8 (DLA, or ``--legacy-int8``; TensorRT < 11 only): the fp32 ONNX with
  ``INT8`` (+ ``FP16``) and a calibrator that serves the bundle's calibration cache;
* DLA: ``GPU_FALLBACK`` always; weak typing with flags where they exist (DLA wants fp16/int8);
  the builder gives DLA stages one fixed batch (DLA has no dynamic shapes);
* every weakly typed recipe with ``FP16`` keeps the confidence head in fp32 (``fp32_head``:
  per-layer precision plus ``OBEY_PRECISION_CONSTRAINTS``, see :mod:`hisd_edge.engine.head`), as
  the bundle's fp16 ONNX does, so exit decisions match the calibrated ones.

:func:`choose_recipe` is a pure function of those inputs, so every generation's recipe is tested
without TensorRT.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Dict, List, Optional, Tuple

from hisd_edge.engine.features import TrtFeatures
from hisd_edge.errors import InputError

REQUESTABLE = ("fp32", "fp16", "int8", "best")


@dataclasses.dataclass(frozen=True)
class BuildRecipe:
    """How every stage of one build is made. ``precision`` is the label engines are stored under."""

    precision: str  # fp32 | fp16 | int8
    requested: str  # what was asked for: fp32 | fp16 | int8 | best
    onnx_precision: str  # which stage ONNX is parsed
    typing: str  # "strong" | "weak"
    network_flags: Tuple[str, ...]  # NetworkDefinitionCreationFlag member names
    builder_flags: Tuple[str, ...]  # BuilderFlag member names
    calibration_cache: bool  # legacy implicit INT8 from the bundle's calibration caches
    dla_core: Optional[int] = None
    notes: Tuple[str, ...] = ()
    fp32_head: bool = False  # confidence-head layers pinned to fp32 (weak typing with FP16)

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("network_flags", "builder_flags", "notes"):
            out[key] = list(out[key])
        return out


def choose_recipe(
    features: TrtFeatures,
    requested: str,
    onnx_precisions: Collection[str],
    *,
    has_calibration_cache: bool = False,
    dla_core: Optional[int] = None,
    legacy_int8: bool = False,
    int8_float_layers: bool = False,
) -> BuildRecipe:
    """The recipe for ``requested`` given what TensorRT offers and which ONNX files the bundle has.

    ``int8_float_layers``: the stage's Q/DQ ONNX leaves some layers without Q/DQ (``--keep-fp16``);
    a weakly typed int8 build then also sets ``FP16`` so TensorRT runs them in fp16, not fp32
    (strongly typed builds take the ONNX's float32 for them)."""
    if requested not in REQUESTABLE:
        raise InputError(f"--precision {requested!r} is not one of {', '.join(REQUESTABLE)}")
    available = set(onnx_precisions)
    network_flags: List[str] = []
    if features.explicit_batch_flag:  # required by 8.x parsers; ignored by 10.x; absent in 11.x
        network_flags.append("EXPLICIT_BATCH")
    version = features.version
    notes: List[str] = []
    dla_flags: Tuple[str, ...] = ("GPU_FALLBACK",) if dla_core is not None else ()

    def weak(onnx: str, flags: Tuple[str, ...], precision: str, cache: bool = False) -> BuildRecipe:
        head = "FP16" in flags
        if head:
            notes.append("confidence head (softmax, max) kept in fp32 by per-layer precision, as in the fp16 ONNX")
        return BuildRecipe(
            precision=precision,
            requested=requested,
            onnx_precision=onnx,
            typing="weak",
            network_flags=tuple(network_flags),
            builder_flags=flags + (("OBEY_PRECISION_CONSTRAINTS",) if head else ()) + dla_flags,
            calibration_cache=cache,
            dla_core=dla_core,
            notes=tuple(notes),
            fp32_head=head,
        )

    def strong(onnx: str) -> BuildRecipe:
        flags = tuple(network_flags) + (("STRONGLY_TYPED",) if features.strongly_typed_flag else ())
        return BuildRecipe(
            precision=onnx,
            requested=requested,
            onnx_precision=onnx,
            typing="strong",
            network_flags=flags,
            builder_flags=dla_flags,
            calibration_cache=False,
            dla_core=dla_core,
            notes=tuple(notes),
        )

    def need(precision: str) -> None:
        if precision not in available:
            raise InputError(
                f"the bundle has no {precision} stage ONNX (has {', '.join(sorted(available)) or 'none'}), which TensorRT "
                f"{version} needs for --precision {requested}; convert with --precision {precision} on the workstation"
            )

    if dla_core is not None and requested == "fp32":
        raise InputError("--dla-core: DLA runs fp16 or int8 only; use --precision fp16, int8 or best")
    if dla_core is not None:
        notes.append(
            "DLA takes fixed shapes only: the stage is built for one batch size (--batch N); fewer rows are padded"
        )

    if legacy_int8 or (
        dla_core is not None
        and requested in ("int8", "best")
        and has_calibration_cache
        and features.int8_calibrator
        and features.precision_flags
    ):
        if requested not in ("int8", "best"):
            raise InputError(f"--legacy-int8 builds int8 engines; it does not combine with --precision {requested}")
        if not (features.int8_calibrator and features.precision_flags):
            raise InputError(
                f"--legacy-int8: TensorRT {version} has no implicit INT8 calibration (removed in 11.x); "
                "drop --legacy-int8 to build int8 from the bundle's Q/DQ ONNX"
            )
        if not has_calibration_cache:
            raise InputError(
                "--legacy-int8 needs the bundle's per-stage int8 calibration caches, and it has none; "
                "convert with --precision int8 on the workstation, or drop --legacy-int8"
            )
        need("fp32")
        notes.append("implicit INT8 from the bundle's TensorRT calibration cache (legacy path, TensorRT < 11)")
        return weak("fp32", ("INT8", "FP16"), "int8", cache=True)

    use_strong = features.prefer_strong_typing
    if dla_core is not None and features.precision_flags:
        use_strong = False  # DLA builds keep the weak-typing flags where they exist
        notes.append("DLA: weak typing with precision flags and GPU fallback")

    if requested == "fp32":
        need("fp32")
        return strong("fp32") if use_strong else weak("fp32", (), "fp32")

    if requested == "fp16":
        if use_strong:
            if "fp16" in available:
                return strong("fp16")
            if not features.precision_flags:
                need("fp16")
            notes.append("no fp16 ONNX in the bundle: weakly typed build with the FP16 flag instead")
        need("fp32")
        return weak("fp32", ("FP16",), "fp16")

    if requested == "int8":
        need("int8")
        if use_strong:
            if int8_float_layers:
                notes.append("layers kept out of INT8 run in fp32 (strong typing follows the Q/DQ ONNX's float32)")
            return strong("int8")
        if int8_float_layers:
            notes.append("layers kept out of INT8 (--keep-fp16) run in fp16: FP16 flag with INT8")
            return weak("int8", ("INT8", "FP16"), "int8")
        return weak("int8", ("INT8",), "int8")

    # best: the lowest precision the bundle and this TensorRT allow
    if use_strong:
        for precision in ("int8", "fp16", "fp32"):
            if precision in available:
                return strong(precision)
        need("fp32")
    if "int8" in available:
        return weak("int8", ("INT8", "FP16"), "int8")
    need("fp32")
    return weak("fp32", ("FP16",), "fp16")
