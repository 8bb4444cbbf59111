"""Checkpoints: one ``.safetensors`` file holding the weights and a JSON metadata record.

safetensors is a flat header plus raw tensors, so loading never executes code (a pickle is
refused, not unpickled). The metadata says everything later steps need: the architecture record
(to rebuild the model), exits, class names, preprocessing, per-exit metrics, the training command
and config, and versions. :func:`read_metadata` parses the header with the standard library
only, so the target side can read a checkpoint's metadata without torch.
"""

from __future__ import annotations

import datetime
import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from hisd_edge import __version__, atomic
from hisd_edge.errors import CheckpointError, InputError

FORMAT = "hisd-edge-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "hisd_edge"
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_REQUIRED = ("arch", "exits", "class_names", "preprocessing")


def _header(path: Path) -> Dict[str, Any]:
    """Parse and sanity-check the safetensors header of ``path``."""
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint file; check the path (hisd-edge train writes *.safetensors)")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: file is empty or truncated; not a hisd-edge checkpoint")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len <= 0 or header_len > min(_MAX_HEADER_BYTES, size - 8):
            if prefix[:1] == b"\x80" or prefix[:2] == b"PK":
                raise CheckpointError(
                    f"{path}: looks like a pickle / torch.save file; hisd-edge never unpickles (it can run code). "
                    "Re-save the weights with hisd-edge train or hisd_edge.checkpoint.save_checkpoint"
                )
            raise CheckpointError(f"{path}: not a safetensors file (bad header length); not a hisd-edge checkpoint")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header; not a hisd-edge checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header; not a hisd-edge checkpoint")
    data_end = max(
        (
            entry["data_offsets"][1]
            for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
        ),
        default=0,
    )
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path}: truncated ({size} bytes, header promises {8 + header_len + data_end}); copy the file again"
        )
    return header


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checkpoint's metadata record, validated; needs neither torch nor safetensors."""
    path = Path(path)
    header = _header(path)
    meta_raw = (header.get("__metadata__") or {}).get(_META_KEY)
    if meta_raw is None:
        raise CheckpointError(
            f"{path}: a safetensors file without hisd-edge metadata; wrap your model with hisd_edge.models and "
            "save it with hisd_edge.checkpoint.save_checkpoint, or convert an ONNX model directly"
        )
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: hisd-edge metadata is not valid JSON; the file is corrupt") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata format {meta.get('format')!r} is not {FORMAT!r}")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta.get('format_version')} is newer than this hisd-edge "
            f"({__version__}) reads; upgrade hisd-edge"
        )
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {', '.join(missing)}; the checkpoint is incomplete")
    return meta


def build_metadata(
    model: Any,
    *,
    class_names: list,
    preprocessing: Dict[str, Any],
    metrics: Optional[Dict[str, Any]] = None,
    training: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    import torch

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "exit_output": getattr(model, "exit_output", "logits"),
        "exits": [info.to_dict() for info in model.exit_info],
        "class_names": list(class_names),
        "preprocessing": preprocessing,
        "metrics": metrics or {},
        "training": training or {},
        "toolkit_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save_checkpoint(path: Union[str, os.PathLike], model: Any, meta: Dict[str, Any]) -> Path:
    """Write weights + metadata atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic.atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    return path


def load_checkpoint(path: Union[str, os.PathLike], model: Any = None) -> Tuple[Any, Dict[str, Any]]:
    """(model in eval mode, metadata). ``model`` is needed only for wrapped backbones (``arch`` null)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hisd_edge.models import build_from_arch

    path = Path(path)
    meta = read_metadata(path)
    if model is None:
        if not meta["arch"]:
            raise CheckpointError(f"{path}: this checkpoint wraps a custom backbone; pass the model to load_checkpoint")
        model = build_from_arch(meta["arch"])
    try:
        state = load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: weights cannot be read ({exc}); the file is corrupt") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({first})") from None
    return model.eval(), meta


def default_checkpoint_path() -> Path:
    """The trained default model shipped inside the package."""
    return Path(__file__).resolve().parent / "default_model" / "mnist_cnn_hisd.safetensors"
