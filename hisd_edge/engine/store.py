"""Engines inside the bundle, keyed by device, TensorRT version and precision.

A TensorRT plan runs only on the GPU model and TensorRT version that built it (hardware- and
version-compatible plans are not available on Jetson), so ``hisd-edge build`` runs on the target
and stores its plans at::

    engines/<device-key>/trt-<tensorrt version>/<precision>/stage<k>.plan   (and full.plan)

where ``<device-key>`` is the GPU name, compute capability and multiprocessor count
(:attr:`DeviceInfo.key`, e.g. ``orin-sm87-16sm``: all Orin modules share name and capability).
Each build appends one *build record* to the manifest's ``engines`` list (the schema is in
:mod:`hisd_edge.bundle`); its ``files`` carry sha256 checksums, so
:meth:`Bundle.open` verifies the plans like every other bundle file. A new build for the same key
replaces the old record and directory.

Publishing is crash-safe for the usual failures: plans are written to a temporary directory
inside the bundle, swapped in, and the manifest is updated last; if the manifest update fails the
swap is undone. A failed *build* never touches the bundle at all.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from hisd_edge import __version__, atomic
from hisd_edge.bundle import Bundle, file_record
from hisd_edge.cuda.api import DeviceInfo
from hisd_edge.errors import BundleError

ENGINES_DIR = "engines"


def engine_dir(device_key: str, trt_version: str, precision: str) -> str:
    """Bundle-relative directory of one build's plans."""
    return f"{ENGINES_DIR}/{device_key}/trt-{trt_version}/{precision}"


def engine_path(device_key: str, trt_version: str, precision: str, stage: Optional[int]) -> str:
    """Bundle-relative path of one plan: ``stage<k>.plan``, or ``full.plan`` (the monolithic model) for None."""
    name = "full.plan" if stage is None else f"stage{stage}.plan"
    return f"{engine_dir(device_key, trt_version, precision)}/{name}"


def default_timing_cache(device_key: str, trt_version: str) -> str:
    """Bundle-relative default timing cache: tied to the device and TensorRT version like the plans."""
    return f"{ENGINES_DIR}/{device_key}/trt-{trt_version}/timing.cache"


def _matches(record: Dict[str, Any], device_key: str, trt_version: str, precision: str) -> bool:
    return (
        record.get("device", {}).get("key") == device_key
        and record.get("tensorrt_version") == trt_version
        and record.get("precision") == precision
    )


def find_record(
    manifest: Dict[str, Any], device_key: str, trt_version: str, precision: str
) -> Optional[Dict[str, Any]]:
    for record in manifest.get("engines", []):
        if _matches(record, device_key, trt_version, precision):
            return record
    return None


def _device_text(name: Any, compute_capability: Any, multiprocessor_count: Any, trt_version: Any) -> str:
    """``Orin (sm 8.7) with 16 SMs and TensorRT 10.3.0``: the SM count tells Orin modules apart."""
    sms = f"with {multiprocessor_count} SMs and" if multiprocessor_count else "with"
    return f"{name} (sm {compute_capability}) {sms} TensorRT {trt_version}"


def _describe(record: Dict[str, Any]) -> str:
    device = record.get("device", {})
    where = _device_text(
        device.get("name", "?"),
        device.get("compute_capability", "?"),
        device.get("multiprocessor_count"),
        record.get("tensorrt_version", "?"),
    )
    return f"{where}, {record.get('precision', '?')}"


def require_record(bundle: Bundle, device: DeviceInfo, trt_version: str, precision: str) -> Dict[str, Any]:
    """The build record for this device, TensorRT version and precision, or a BundleError saying to build."""
    how = f"run hisd-edge build {bundle.root} --precision {precision} on this device"
    record = find_record(bundle.manifest, device.key, trt_version, precision)
    if record is None:
        records = list(bundle.manifest.get("engines", []))
        here = _device_text(device.name, device.compute_capability_str, device.multiprocessor_count, trt_version)
        local = sorted(
            {
                str(r.get("precision"))
                for r in records
                if r.get("device", {}).get("key") == device.key and r.get("tensorrt_version") == trt_version
            }
        )
        if local:
            raise BundleError(
                f"{bundle.root}: no {precision} TensorRT engines for this {here} (built: {', '.join(local)}); "
                f"{how}, or run with --precision {local[0]}"
            )
        others = [r for r in records if r.get("precision") == precision] or records
        if others:
            built = "; ".join(_describe(r) for r in others)
            raise BundleError(
                f"{bundle.root}: its TensorRT engines were built for {built}, not for this {here}; "
                f"TensorRT engines do not move between devices or TensorRT versions: {how}"
            )
        raise BundleError(f"{bundle.root}: no TensorRT engines built yet (this is {here}); {how}")
    # Engines built from stage ONNX that has since been replaced (converted again) are stale.
    for stage in record.get("stages", []):
        k = int(stage["index"])
        onnx = bundle.manifest["stages"][k]["files"].get(stage.get("onnx_precision", ""), {})
        if stage.get("onnx_sha256") and onnx.get("sha256") != stage["onnx_sha256"]:
            raise BundleError(
                f"{bundle.root}: the {precision} engine of stage {k} was built from a different stage ONNX "
                f"(the bundle was converted again); {how}"
            )
    return record


INGRAPH_PLAN = "ingraph.plan"  # the in-graph early-exit engine (hisd_edge.runtime.ingraph), one per build


def plan_entry(
    record: Dict[str, Any], stage: Optional[int], kind_wanted: str = "full_plan"
) -> Optional[Dict[str, Any]]:
    """The record's file entry of stage ``stage``'s plan, or (None) of the full model's, or with
    ``kind_wanted="ingraph_plan"`` of the in-graph early-exit engine's."""
    for entry in record.get("files", []):
        kind = entry.get("kind", "plan")
        if stage is None and kind == kind_wanted:
            return entry
        if stage is not None and kind == "plan" and int(entry.get("stage", -1)) == stage:
            return entry
    return None


def read_plan(bundle: Bundle, record: Dict[str, Any], stage: Optional[int], kind: str = "full_plan") -> bytes:
    """Stage ``stage``'s plan bytes (None: the full model's, or the in-graph engine's with
    ``kind="ingraph_plan"``), checked against the record (missing, truncated, replaced)."""
    entry = plan_entry(record, stage, kind)
    if entry is None:
        what = (
            ("the in-graph early exit" if kind == "ingraph_plan" else "the full model")
            if stage is None
            else f"stage {stage}"
        )
        raise BundleError(
            f"{bundle.root}: the {_describe(record)} build record has no engine for {what}; "
            f"run hisd-edge build {bundle.root} again"
        )
    # Confined to the bundle, its size checked before it is read, then its checksum (hisd_edge.bundle).
    return bundle.read_verified(entry, "engine file", f"run hisd-edge build {bundle.root} on this device")


def new_record(device: DeviceInfo, trt_version: str, recipe: Dict[str, Any], **fields: Any) -> Dict[str, Any]:
    """A build record without ``files`` (added by :func:`publish`)."""
    return {
        "device": device.to_dict(),
        "tensorrt_version": trt_version,
        "precision": recipe["precision"],
        "requested_precision": recipe["requested"],
        "recipe": recipe,
        **fields,
        "toolkit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def publish(
    bundle: Bundle,
    record: Dict[str, Any],
    plans: List[bytes],
    calibration_caches: Optional[Dict[int, bytes]] = None,
    full_plan: Optional[bytes] = None,
    ingraph_plan: Optional[bytes] = None,
) -> Dict[str, Any]:
    """Write ``plans`` (and the calibration caches a legacy INT8 build used, by stage, and the full
    model's plan) under the record's key, then add the record to the manifest, atomically enough.

    Returns the record as stored (with its ``files``: ``kind`` "plan", "calibration_cache", "full_plan" or
    "ingraph_plan").
    """
    calibration_caches = calibration_caches or {}
    device_key, trt_version, precision = record["device"]["key"], record["tensorrt_version"], record["precision"]
    rel_dir = engine_dir(device_key, trt_version, precision)
    target = bundle.resolve(rel_dir)  # confined to the bundle, no symlink on the way
    created_parents = [p for p in reversed(target.parents) if not p.exists() and bundle.root in p.parents]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{precision}.", suffix=".tmp", dir=target.parent))
    old: Optional[Path] = None
    swapped = False
    try:
        for k, plan in enumerate(plans):
            atomic.write_bytes(tmp / f"stage{k}.plan", plan)
        for k, cache in sorted(calibration_caches.items()):
            atomic.write_bytes(tmp / f"stage{k}.calib", cache)
        if full_plan is not None:
            atomic.write_bytes(tmp / "full.plan", full_plan)
        if ingraph_plan is not None:
            atomic.write_bytes(tmp / INGRAPH_PLAN, ingraph_plan)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{precision}.", suffix=".old", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
        swapped = True
        stored = dict(record)
        stored["files"] = [
            file_record(bundle.root, engine_path(device_key, trt_version, precision, k), stage=k, kind="plan")
            for k in range(len(plans))
        ]
        stored["files"] += [
            file_record(bundle.root, f"{rel_dir}/stage{k}.calib", stage=k, kind="calibration_cache")
            for k in sorted(calibration_caches)
        ]
        if full_plan is not None:
            stored["files"].append(
                file_record(bundle.root, engine_path(device_key, trt_version, precision, None), kind="full_plan")
            )
        if ingraph_plan is not None:
            stored["files"].append(file_record(bundle.root, f"{rel_dir}/{INGRAPH_PLAN}", kind="ingraph_plan"))

        def change(manifest: Dict[str, Any]) -> None:
            kept = [r for r in manifest.get("engines", []) if not _matches(r, device_key, trt_version, precision)]
            manifest["engines"] = [*kept, stored]

        bundle.update(change)
    except BaseException:
        if swapped:  # undo: the manifest still names the old plans
            shutil.rmtree(target, ignore_errors=True)
            if old is not None:
                os.replace(old, target)
        elif old is not None and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created_parents):
            try:
                parent.rmdir()
            except OSError:
                pass
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return stored
