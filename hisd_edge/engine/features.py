"""Which TensorRT API generation is installed, detected by feature (``hasattr``), never by version.

TensorRT versions in the field span 8.5 (JetPack 5) to 11.x. What changes between them, and the
attribute that tells us (checked against NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` and the
release notes; see TENSORRT-JETSON-FACTS.md section 1):

=====================================  =========================================================
``NetworkDefinitionCreationFlag``      ``EXPLICIT_BATCH`` required in 8.x, ignored in 10.x,
                                       gone in 11.x (referencing it raises AttributeError)
``NetworkDefinitionCreationFlag``      ``STRONGLY_TYPED`` from 9/10; a no-op in 11 (always strong)
``BuilderFlag.FP16`` / ``INT8``        weak-typing precision flags; removed in 11.x
``IBuilderConfig.int8_calibrator``     implicit INT8 calibration; deprecated 10.1, removed in 11.x
``DataType.E8M0``                      arrived with MXFP8 in 10.12, the release that deprecated
                                       weak typing: our marker for "prefer strong typing"
``ICudaEngine.device_memory_size_v2``  10.x; the non-v2 property is gone in 11.x
``ICudaEngine.get_engine_stat``        10.14+
``builder_optimization_level``         8.6+
=====================================  =========================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from hisd_edge.errors import DependencyError, InputError

TENSORRT_INSTALL_HINT = (
    "on JetPack: sudo apt install python3-libnvinfer python3-libnvinfer-dev and use a venv created with "
    "--system-site-packages; on a workstation: pip install tensorrt (from NVIDIA's index, --extra-index-url https://pypi.nvidia.com)"
)


def import_tensorrt() -> Any:
    """``import tensorrt``, or a one-line DependencyError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        detail = "" if isinstance(exc, ModuleNotFoundError) and exc.name == "tensorrt" else f" ({exc})"
        raise DependencyError(f"TensorRT's Python package is not importable{detail}; {TENSORRT_INSTALL_HINT}") from None
    if not hasattr(tensorrt, "Builder"):
        # A bare ``tensorrt/`` directory (the tensorrt-stubs type stubs, or a broken install)
        # imports as an empty namespace package: that is not TensorRT.
        where = ", ".join(getattr(tensorrt, "__path__", [])) or "?"
        raise DependencyError(
            f"'tensorrt' at {where} is not TensorRT itself (only type stubs or an incomplete install); {TENSORRT_INSTALL_HINT}"
        )
    return tensorrt


@dataclasses.dataclass(frozen=True)
class TrtFeatures:
    """The API surface of the installed TensorRT, as booleans the recipes branch on."""

    version: str
    explicit_batch_flag: bool
    strongly_typed_flag: bool
    precision_flags: bool  # BuilderFlag.FP16 / INT8 (weak typing)
    int8_calibrator: bool  # IBuilderConfig.int8_calibrator + IInt8EntropyCalibrator2
    weak_typing_deprecated: bool  # 10.12+ (see module docstring)
    device_memory_size_v2: bool
    legacy_device_memory_size: bool
    engine_stat: bool
    builder_optimization_level: bool

    @property
    def prefer_strong_typing(self) -> bool:
        """Strong typing where it exists and weak typing is deprecated (10.12+) or gone (11.x)."""
        return self.strongly_typed_flag and (self.weak_typing_deprecated or not self.precision_flags)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def detect_features(trt: Any) -> TrtFeatures:
    flags = trt.NetworkDefinitionCreationFlag
    builder_flag = trt.BuilderFlag
    return TrtFeatures(
        version=str(getattr(trt, "__version__", "unknown")),
        explicit_batch_flag=hasattr(flags, "EXPLICIT_BATCH"),
        strongly_typed_flag=hasattr(flags, "STRONGLY_TYPED"),
        precision_flags=hasattr(builder_flag, "FP16") and hasattr(builder_flag, "INT8"),
        int8_calibrator=hasattr(trt.IBuilderConfig, "int8_calibrator") and hasattr(trt, "IInt8EntropyCalibrator2"),
        weak_typing_deprecated=hasattr(trt.DataType, "E8M0"),
        device_memory_size_v2=hasattr(trt.ICudaEngine, "device_memory_size_v2"),
        legacy_device_memory_size=hasattr(trt.ICudaEngine, "device_memory_size"),
        engine_stat=hasattr(trt.ICudaEngine, "get_engine_stat") and hasattr(trt, "EngineStat"),
        builder_optimization_level=hasattr(trt.IBuilderConfig, "builder_optimization_level"),
    )


def engine_device_memory_bytes(engine: Any, features: TrtFeatures) -> int:
    """Scratch memory a context of ``engine`` needs (``device_memory_size_v2`` where it exists)."""
    if features.device_memory_size_v2:
        return int(engine.device_memory_size_v2)
    if features.legacy_device_memory_size:
        return int(engine.device_memory_size)
    return 0


def engine_weights_bytes(trt: Any, engine: Any, features: TrtFeatures) -> Any:
    """Total weight bytes from ``get_engine_stat`` (TensorRT 10.14+), else None."""
    if not features.engine_stat:
        return None
    # EngineStat is newer than the 10.13 stubs: typed getattr keeps mypy honest.
    stat = getattr(trt.EngineStat, "TOTAL_WEIGHTS_SIZE", None)
    if stat is None:
        return None
    return int(engine.get_engine_stat(stat))


def dims_to_tuple(dims: Any) -> Tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints (indexing, which every version supports)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


# The API surface of each TensorRT generation in the field, for planning a build on a machine
# without TensorRT (``hisd-edge build --dry-run --trt GEN``). The conformance test
# (tests/engine/test_real_bindings.py) checks each row against detect_features() on NVIDIA's real
# bindings of that generation (8.6.1, 10.3.0, 10.13.3, 10.16.1, 11.4.0; there is no 8.5 wheel:
# 8.5 is 8.6 without builder_optimization_level, which arrived in 8.6).
def _generation(version: str, **flags: bool) -> TrtFeatures:
    base = {field.name: False for field in dataclasses.fields(TrtFeatures) if field.name != "version"}
    return TrtFeatures(version=version, **{**base, **flags})


_WEAK_8 = {
    "explicit_batch_flag": True,
    "precision_flags": True,
    "int8_calibrator": True,
    "legacy_device_memory_size": True,
}
_TEN = {**_WEAK_8, "strongly_typed_flag": True, "device_memory_size_v2": True, "builder_optimization_level": True}
GENERATIONS: Dict[str, TrtFeatures] = {
    "8.5": _generation("8.5.2", **_WEAK_8),
    "8.6": _generation("8.6.1", **_WEAK_8, builder_optimization_level=True),
    "10.3": _generation("10.3.0", **_TEN),
    "10.13": _generation("10.13.3", **_TEN, weak_typing_deprecated=True),
    "10.16": _generation("10.16.1", **_TEN, weak_typing_deprecated=True, engine_stat=True),
    "11": _generation(
        "11.4.0",
        strongly_typed_flag=True,
        weak_typing_deprecated=True,
        device_memory_size_v2=True,
        engine_stat=True,
        builder_optimization_level=True,
    ),
}


def generation_features(name: str) -> TrtFeatures:
    """The features of TensorRT generation ``name`` ("8.5", "10.13", "11", ...) without TensorRT installed."""
    parts = name.strip().split(".")
    key = "11" if parts[0] == "11" else ".".join(parts[:2])  # "10.13.3" -> "10.13"; "11", "11.4" -> "11"
    if key not in GENERATIONS:
        raise InputError(
            f"--trt {name}: unknown TensorRT generation; choose one of {', '.join(GENERATIONS)} "
            "(8.5 JetPack 5, 8.6/10.3 JetPack 6, 10.13/10.16 JetPack 7, 11 desktop)"
        )
    return GENERATIONS[key]


# numpy has no type for these TensorRT data types: an engine tensor of one of them cannot be fed or read
# by the runtime (the bundle's stages keep float32 I/O, so a build from it never has them).
def numpy_dtype(trt: Any, dtype: Any) -> Optional[Any]:
    """The numpy dtype of a TensorRT ``DataType``, or None where numpy has none (BF16, FP8, INT4, FP4, E8M0).

    ``trt.nptype`` raises a bare TypeError for those; callers turn None into a one-line error that
    names the tensor.
    """
    import numpy as np

    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError):
        return None


def dtype_name(dtype: Any) -> str:
    """``BF16`` for ``trt.DataType.BF16`` (pybind11 enums and the test double alike)."""
    return str(getattr(dtype, "name", dtype)).split(".")[-1]
