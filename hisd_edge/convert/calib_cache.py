"""TensorRT's text calibration cache: per-tensor INT8 scales for implicit quantization.

TensorRT < 11 (and DLA, which needs EntropyCalibrator2) can build INT8 engines from a cache
instead of running a calibrator on the device. The format TensorRT's calibrators write and read::

    TRT-8502-EntropyCalibration2
    input: 3c010a14
    feat0: 3d8c1a2b
    ...

The header names the TensorRT version that wrote it (``major*1000 + minor*100 + patch`` before
TensorRT 10, ``major*10000 + minor*100 + patch`` from 10 on) and the calibration algorithm; each
line is an ONNX tensor name (TensorRT's ONNX parser keeps them; names may contain ':' as in
``onnx::Conv_12``, so a line splits at its last colon) and the per-tensor scale
``amax / 127`` as the big-endian hex of its float32 bits. TensorRT skips a cache whose header does
not match it, so :func:`retarget` rewrites the header for the TensorRT found on the target.

Standard library only: ``hisd-edge build`` on a Jetson reads and retargets these without numpy.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Dict, Mapping, Tuple

from hisd_edge.errors import BundleError, InputError

DEFAULT_TRT_VERSION = "8.5.2"  # JetPack 5, the main user of implicit (cache-based) INT8
DEFAULT_ALGORITHM = "EntropyCalibration2"  # what DLA requires; the scales are ours whatever the name
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
INT8_MAX = 127.0
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


def version_tag(version: str) -> int:
    """The number TensorRT writes into the cache header for ``version`` ("10.3.0" -> 100300)."""
    parts = re.findall(r"\d+", str(version))
    if not parts:
        raise InputError(f"TensorRT version {version!r} is not like 8.5.2 or 10.3.0")
    major, minor, patch = (int(p) for p in ([*parts, "0", "0"])[:3])
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def scale_hex(scale: float) -> str:
    """float32 bits of ``scale``, big-endian, as 8 hex digits (TensorRT's encoding)."""
    return struct.pack(">f", float(scale)).hex()


def hex_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text.strip().zfill(8)))[0])


def amax_to_scale(amax: float) -> float:
    """Symmetric INT8 scale; a tensor that was always 0 gets scale 1 (as ONNX Runtime does)."""
    amax = abs(float(amax))
    if not math.isfinite(amax) or amax <= 0.0:
        return 1.0
    return amax / INT8_MAX


def format_cache(
    amax_by_tensor: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION, algorithm: str = DEFAULT_ALGORITHM
) -> str:
    """The cache text for per-tensor absolute maxima (in the order given)."""
    if algorithm not in ALGORITHMS:
        raise InputError(f"calibration algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    lines = [f"TRT-{version_tag(trt_version)}-{algorithm}"]
    for name, amax in amax_by_tensor.items():
        if "\n" in name or "\r" in name:
            raise InputError(
                f"tensor name {name!r} cannot be written to a TensorRT calibration cache (contains a newline)"
            )
        lines.append(f"{name}: {scale_hex(amax_to_scale(amax))}")
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> Tuple[int, str, Dict[str, float]]:
    """(version tag, algorithm, {tensor: scale}) of a cache text."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BundleError("calibration cache is empty")
    match = _HEADER.match(lines[0].strip())
    if not match:
        raise BundleError(f"calibration cache header {lines[0][:60]!r} is not like TRT-8502-EntropyCalibration2")
    scales: Dict[str, float] = {}
    for line in lines[1:]:
        name, sep, value = line.rpartition(":")
        if not sep or not re.fullmatch(r"\s*[0-9a-fA-F]{1,8}\s*", value):
            raise BundleError(f"calibration cache line {line[:60]!r} is not 'tensor: hexscale'")
        scales[name.strip()] = hex_scale(value)
    return int(match.group(1)), match.group(2), scales


def retarget(text: str, trt_version: str, algorithm: str = "") -> str:
    """The same cache with its header rewritten for ``trt_version`` (and optionally ``algorithm``)."""
    _tag, old_algorithm, _ = parse_cache(text)
    algorithm = algorithm or old_algorithm
    if algorithm not in ALGORITHMS:
        raise InputError(f"calibration algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    body = text.split("\n", 1)[1] if "\n" in text else ""
    return f"TRT-{version_tag(trt_version)}-{algorithm}\n{body}"
