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
import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

from hisd_edge import __version__, atomic
from hisd_edge.bundle import MANIFEST, file_record
from hisd_edge.errors import InputError

if TYPE_CHECKING:
    from hisd_edge.convert.options import ConvertOptions
    from hisd_edge.convert.source import ModelSource

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


def build_manifest(
    source: ModelSource,
    stages: List[Any],
    paths: Dict[str, List[Path]],
    caches: List[Dict[str, Any]],
    confidence: List[Optional[str]],
    proto: Any,
    tmp: Path,
    out: Path,
    opts: ConvertOptions,
    recipe: Any,
    calibration: Any,
    report: Any,
    validation: Dict[str, Any],
    kept_float: Optional[Dict[int, List[str]]] = None,
    keep_record: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The manifest of the bundle assembled in ``tmp`` (schema: :mod:`hisd_edge.bundle`), every file
    recorded with its sha256; the policy starts uncalibrated at ``opts.threshold``. ``kept_float``:
    per stage, the layers ``--keep-fp16`` kept out of INT8; ``keep_record``: how they were chosen."""
    import onnx
    import onnxruntime

    from hisd_edge.convert import export, stats

    kept_float = kept_float or {}
    stage_records = []
    for stage in stages:
        graph_stats = stats.graph_stats(stage.model)
        files: Dict[str, Any] = {}
        for precision, stage_paths in paths.items():
            record = file_record(tmp, stage_paths[stage.index].name, io_dtype="float32")
            if precision == "fp16":
                record["compute_dtype"] = "float16"
            if precision == "int8":
                cache = dict(caches[stage.index])
                record["calibration_cache"] = {**file_record(tmp, cache.pop("path")), **cache}
                record["quantization"] = {
                    "format": "QDQ",
                    "placement": "tensorrt (inputs of Conv/Gemm/MatMul and residual Add skips)",
                    "activations": "int8 per-tensor symmetric",
                    "weights": "int8 per-channel symmetric",
                    "weight_rounding": recipe.weight_rounding,
                    "calibration": recipe.method,
                    "kept_float": list(kept_float.get(stage.index, [])),
                }
            files[precision] = record
        stage_records.append(
            {
                "index": stage.index,
                "inputs": tensor_records(stage.model.graph.input),
                "outputs": tensor_records(stage.model.graph.output),
                "files": files,
                "params": graph_stats.params,
                "macs": graph_stats.macs,
                "macs_complete": graph_stats.macs_complete,
            }
        )
    exits = [
        {
            "index": k,
            "stage": k,
            "output": export.exit_name(k),
            "confidence_output": confidence[k],
            "kind": source.kinds[k],
            "name": source.exit_names[k] if k < len(source.exit_names) else f"exit{k}",
        }
        for k in range(source.num_exits)
    ]
    policy_kind = "max_prob" if all(kind == "logits" for kind in source.kinds) else "stability"
    thresholds: List[Optional[float]] = [float(opts.threshold)] * (source.num_exits - 1) + [None]
    manifest: Dict[str, Any] = {
        "name": opts.name or out.name,
        "model": {**source.model_record, "num_exits": source.num_exits},
        "class_names": list(source.class_names),
        "preprocessing": source.spec.to_dict(),
        "stages": stage_records,
        "exits": exits,
        "full_model": file_record(tmp, FULL_MODEL_FILE),
        "policy": {"kind": policy_kind, "thresholds": thresholds, "calibrated": False},
        "validation": validation,
        "engines": [],
        "calibration": None,
        "verification": report.to_dict(),
        "provenance": {
            "checkpoint_sha256": source.source_sha256,
            "source_path": source.source_path,
            "toolkit_version": __version__,
            "torch_version": _torch_version(),
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "opset": export.model_opset(proto),
            "command": opts.command or "hisd_edge.convert (Python API)",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    if calibration is not None:
        manifest["calibration"] = {
            "source": calibration.source,
            "count": len(calibration.inputs),
            "method": recipe.method,
            "seed": recipe.seed,
            "recipe": recipe.name,
            "trt_cache_version": opts.trt_version,
            "skipped": len(calibration.skipped),
            "skipped_files": [name for name, _ in calibration.skipped[:20]],
            "weight_rounding": recipe.weight_rounding,
        }
        if keep_record:
            manifest["calibration"]["keep_fp16"] = keep_record
    if validation.get("mixed_plan"):
        manifest["mixed_precision"] = {"stages": list(validation["mixed_plan"]), "max_drop_pp": opts.max_drop_pp}
    return manifest


def _torch_version() -> Optional[str]:
    torch = sys.modules.get("torch")
    return getattr(torch, "__version__", None) if torch is not None else None
