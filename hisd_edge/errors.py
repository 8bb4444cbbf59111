"""The one family of user-facing errors.

Anything raised as a :class:`HisdError` is the user's to fix (a path, a flag, a file): the CLI
prints its message on one line and exits with status 2. Any other exception is a bug in hisd-edge
and keeps its traceback. Messages name the failing thing and say what to do about it.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its class name): what a one-line error quotes
    of a library's multi-line complaint."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


class HisdError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class InputError(HisdError):
    """A path, image, dataset or flag value that cannot be used."""


class CheckpointError(HisdError):
    """A file that is not a valid hisd-edge checkpoint."""


class BundleError(HisdError):
    """A bundle (manifest, stage files, engines) that is missing, altered or inconsistent."""


class ConversionError(HisdError):
    """Export, split, verification or quantization refused to produce a bundle."""


class DependencyError(HisdError):
    """An optional dependency (TensorRT, CUDA, ONNX Runtime, ...) is missing."""


class DeviceError(HisdError):
    """The target device or one of its telemetry sources cannot be used."""
