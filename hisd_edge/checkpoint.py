"""Checkpoints: one ``.safetensors`` file holding the weights and a JSON metadata record.

safetensors is a flat header plus raw tensors, so loading never executes code (a pickle is
refused, not unpickled). The file is untrusted input: the header is checked before use, the
metadata against its published schema (``hisd_edge/schemas/checkpoint-metadata-v1.schema.json``,
which bounds every model dimension), and the architecture is first built without memory (torch's
``meta`` device) and compared with the tensors in the file, so a small file cannot make the
toolkit allocate a model larger than the weights it holds. The metadata says everything later steps need: the architecture record
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

from hisd_edge import __version__, atomic, schemas
from hisd_edge.errors import CheckpointError, InputError

FORMAT = "hisd-edge-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "hisd_edge"
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_FIX = "the checkpoint is damaged or was not written by hisd-edge; train it again or re-save it with save_checkpoint"


def _header(path: Path) -> Dict[str, Any]:
    """Parse and sanity-check the safetensors header of ``path``."""
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint file; check the path (hisd-edge train writes *.safetensors)")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a device or pipe); give a checkpoint file")
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
        header = schemas.loads(raw.decode("utf-8"))
    except ValueError:  # also UnicodeDecodeError
        raise CheckpointError(f"{path}: corrupt safetensors header; not a hisd-edge checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header; not a hisd-edge checkpoint")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: safetensors __metadata__ must map names to strings; {_FIX}")
    data_end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        valid = (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            and isinstance(entry.get("dtype"), str)
        )
        if not valid or offsets is None:
            raise CheckpointError(f"{path}: tensor {key[:80]!r} has a malformed safetensors entry; {_FIX}")
        data_end = max(data_end, int(offsets[1]))
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path}: truncated ({size} bytes, header promises {8 + header_len + data_end}); copy the file again"
        )
    return header


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checkpoint's metadata record, validated; needs neither torch nor safetensors."""
    path = Path(path)
    meta = _metadata(path, _header(path))
    return meta


def _metadata(path: Path, header: Dict[str, Any]) -> Dict[str, Any]:
    meta_raw = header.get("__metadata__", {}).get(_META_KEY)
    if meta_raw is None:
        raise CheckpointError(
            f"{path}: a safetensors file without hisd-edge metadata; wrap your model with hisd_edge.models and "
            "save it with hisd_edge.checkpoint.save_checkpoint, or convert an ONNX model directly"
        )
    try:
        meta = schemas.loads(meta_raw)
    except ValueError as exc:
        raise CheckpointError(f"{path}: hisd-edge metadata is not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: metadata format {found!r} is not {FORMAT!r}")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this hisd-edge ({__version__}) reads; "
            "upgrade hisd-edge"
        )
    schemas.validate(meta, schemas.CHECKPOINT_METADATA, what=str(path), fix=_FIX, error=CheckpointError)
    arch_exits = _arch_exits(meta.get("arch"))
    if arch_exits is not None and arch_exits != len(meta["exits"]):
        raise CheckpointError(
            f"{path}: metadata lists {len(meta['exits'])} exit(s) but its architecture has {arch_exits}; {_FIX}"
        )
    config = (meta.get("arch") or {}).get("config", {})
    classes = config.get("num_classes")
    kind = meta.get("exit_output", config.get("exit_output", "logits"))
    if kind == "logits" and classes is not None and meta["class_names"] and len(meta["class_names"]) != classes:
        raise CheckpointError(
            f"{path}: metadata names {len(meta['class_names'])} classes but the architecture has {classes}; {_FIX}"
        )
    return meta


def _arch_exits(arch: Optional[Dict[str, Any]]) -> Optional[int]:
    """How many exits the architecture record builds (None when it does not say)."""
    config = (arch or {}).get("config", {})
    if arch and arch.get("family") == "cnn" and isinstance(config.get("widths"), list):
        return len(config["widths"])
    if arch and arch.get("family") == "transformer" and isinstance(config.get("exit_blocks"), list):
        return len(config["exit_blocks"])
    return None


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
        save_file(state, str(tmp), metadata={_META_KEY: json.dumps(meta, allow_nan=False)})
    return path


def load_checkpoint(path: Union[str, os.PathLike], model: Any = None) -> Tuple[Any, Dict[str, Any]]:
    """(model in eval mode, metadata). ``model`` is needed only for wrapped backbones (``arch`` null)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hisd_edge.models import build_from_arch

    path = Path(path)
    header = _header(path)
    meta = _metadata(path, header)
    if model is None:
        if not meta["arch"]:
            raise CheckpointError(f"{path}: this checkpoint wraps a custom backbone; pass the model to load_checkpoint")
        _check_weights_fit(path, meta["arch"], header)
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


def _check_weights_fit(path: Path, arch: Dict[str, Any], header: Dict[str, Any]) -> None:
    """Build the architecture without memory (torch's meta device) and compare it with the file's tensors.

    Refuses, before anything is allocated, an architecture record that would need other (or more)
    weights than the file holds: a small file claiming huge widths cannot exhaust memory.
    """
    import torch

    from hisd_edge.models import build_from_arch

    with torch.device("meta"):
        skeleton = build_from_arch(arch)
    wanted = {name: list(t.shape) for name, t in skeleton.state_dict().items()}
    stored = {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
    for name, shape in wanted.items():
        if stored.get(name) != shape:
            found = stored.get(name, "absent")
            raise CheckpointError(
                f"{path}: weights do not fit the recorded architecture ({name}: the architecture needs {shape}, "
                f"the file has {found}); {_FIX}"
            )
    extra = sorted(set(stored) - set(wanted))
    if extra:
        raise CheckpointError(
            f"{path}: weights do not fit the recorded architecture (the file has {len(extra)} unexpected tensor(s), "
            f"e.g. {extra[0]}); {_FIX}"
        )


def default_checkpoint_path() -> Path:
    """The trained default model shipped inside the package."""
    return Path(__file__).resolve().parent / "default_model" / "mnist_cnn_hisd.safetensors"
