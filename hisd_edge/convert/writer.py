"""Step 7: the bundle directory, written atomically, and its manifest.

The whole bundle is assembled in a temporary directory next to ``--out`` and renamed into place
only when everything (verification included) succeeded: an interrupted or failed convert leaves
no partial bundle and leaves an existing one byte-identical. ``--force`` replaces an existing
bundle by an atomic exchange of the two directories (:func:`hisd_edge.atomic.atomic_dir`), so
there is no instant at which ``--out`` is missing or mixed, and a process killed at any point
leaves the old bundle or the new one, complete; the next convert removes what a killed one left
(``.NAME.*.tmp`` next to ``--out``, the scratch directory in the temp folder). It refuses to
replace a non-empty directory that is not a bundle, so a mistyped ``--out`` cannot delete
unrelated files, and an ``--out`` it cannot write before doing any work.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, List

from hisd_edge import atomic
from hisd_edge.bundle import MANIFEST
from hisd_edge.errors import InputError

STAGE_FILE = {"fp32": "stage{k}.onnx", "fp16": "stage{k}.fp16.onnx", "int8": "stage{k}.int8.onnx"}
CACHE_FILE = "stage{k}.int8.cache"
FULL_MODEL_FILE = "full.onnx"


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` unless ``force`` and it is a bundle (or empty), or an unwritable one; before any work."""
    out = Path(out)
    if not out.exists():
        if out.parent.exists() and not out.parent.is_dir():
            raise InputError(f"{out.parent}: is a file; --out needs a directory path")
        atomic.check_writable(out)
        return
    if not out.is_dir():
        raise InputError(f"{out}: exists and is a file, not a bundle directory; choose another --out")
    if not force:
        raise InputError(f"{out}: already exists; choose another --out, or pass --force to replace it (atomically)")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise InputError(
            f"{out}: exists, is not empty and is not a bundle (no {MANIFEST}); refusing to replace it even with --force"
        )
    atomic.check_writable(out)


def scratch_dir() -> Any:
    """The converter's scratch directory (temp folder), removed afterwards, and by the next run if killed."""
    return atomic.scratch_dir(prefix="hisd-convert-")


@contextlib.contextmanager
def bundle_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary directory that becomes ``out`` when the block succeeds."""
    check_output_dir(out, force)
    try:
        with atomic.atomic_dir(out, replace=force) as tmp:
            yield tmp  # atomic_dir gives the published bundle the modes the user's umask would
    except FileExistsError:
        raise InputError(f"{out}: appeared while converting; choose another --out, or pass --force") from None


def tensor_records(infos: Any) -> List[Dict[str, Any]]:
    """[{"name", "shape", "dtype"}] for ONNX value infos; symbolic dims keep their names."""
    from onnx import helper

    records = []
    for info in infos:
        tensor_type = info.type.tensor_type
        shape: List[Any] = []
        for dim in tensor_type.shape.dim:
            shape.append(int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or None))
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)) if tensor_type.elem_type else None
        records.append({"name": info.name, "shape": shape, "dtype": dtype})
    return records


def stage_file(k: int, precision: str) -> str:
    return STAGE_FILE[precision].format(k=k)


def cache_file(k: int) -> str:
    return CACHE_FILE.format(k=k)
