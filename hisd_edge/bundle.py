"""The bundle: the portable unit that leaves the workstation (``engines/<name>/``).

A bundle is a directory with ``manifest.json`` and the files it names. The manifest is the
contract between the converter (writes it), the runtime, ``build`` and the profiler (read it and
add to it). Only numpy-free standard library code here: the target reads bundles without torch.

Manifest, schema version 1 (keys in order of appearance)::

    schema_version   1
    kind             "hisd-edge-bundle"
    name             bundle name
    model            {"arch": {...} | null, "source": "checkpoint" | "onnx", "exit_output": "logits" | "embedding"}
    class_names      [str, ...]
    preprocessing    hisd_edge.preprocess.Preprocessing.to_dict()
    stages           [{
        index        k (0-based)
        inputs       [{"name": "input" | "feat{k-1}", "shape": ["batch", C, H, W], "dtype": "float32"}]
        outputs      [{"name": "feat{k}" (not for the last stage)}, {"name": "exit{k}"}, {"name": "conf{k}"} (optional fused confidence)]
        files        {"fp32": {"path", "sha256", "bytes", "io_dtype"}, "fp16": {...}, "int8": {..., "calibration_cache": {"path", "sha256", "bytes"}}}
        params, macs per-sample multiply-accumulates of the stage (exit head included)
    }, ...]
    exits            [{"index": k, "stage": k, "output": "exit{k}", "confidence_output": "conf{k}" | null, "kind": "logits" | "embedding"}]
    full_model       {"path", "sha256", "bytes"}: the monolithic fp32 ONNX (all exits as outputs), for verification and benchmarks
    policy           {"kind": "max_prob" | "entropy" | "margin" | "patience" | "stability",
                      "thresholds": [float | null per exit; the last exit always accepts],
                      "calibrated": bool (false: convert's defaults, no guarantee),
                      "certificate": {...} (written by ``hisd-edge thresholds``, see below),
                      "calibration": {...} (what the thresholds did on the calibration data)}
    validation       {"data", "count", "rows": [{"exit", "precision", "top1", "agreement_with_fp32"}]}
    engines          [build records added on the target by ``hisd-edge build`` (hisd_edge.engine.store), one per
                      (device key, TensorRT version, precision); a rebuild replaces its record:
        device             {"name", "compute_capability": "8.7", "integrated", "multiprocessor_count": 16 (0: unknown),
                            "key": "orin-sm87-16sm" (without "-<n>sm" when the count is unknown)}
        tensorrt_version   trt.__version__ of the build; precision "fp32" | "fp16" | "int8"; requested_precision (+ "best")
        recipe             {"typing": "strong" | "weak", "onnx_precision", "network_flags", "builder_flags",
                            "calibration_cache", "dla_core", "notes", ...}
        batch              {"min", "opt", "max"}: the optimization profile of the dynamic batch
        workspace_mib, dla_core, builder_optimization_level, cuda_binding, features (detected TensorRT API)
        files              [{"path": "engines/<key>/trt-<version>/<precision>/stage<k>.plan", "sha256", "bytes", "stage": k}]
        stages             [{"index", "onnx_precision", "onnx", "onnx_sha256" (engines from an older ONNX are refused),
                             "plan_sha256", "build_seconds", "device_memory_bytes", "weights_bytes" (TRT 10.14+),
                             "io": [{"name", "mode", "dtype", "shape"}]}]
        timing_cache       where the timing cache was read from and saved (bundle-relative when inside it)
        toolkit_version, created
    ]
    provenance       {"checkpoint_sha256", "toolkit_version", "torch_version", "onnx_version",
                      "onnxruntime_version", "opset", "command", "created"}

Added by the converter (additive; readers must not require them):

    model            + "num_exits"; "source" may also be "module" (Python API, an in-memory nn.Module)
    stages[k]        + "macs_complete" (false: some shape was unknown, MACs are a lower bound)
    files[p]         "io_dtype" is "float32" for every precision (fp16 keeps fp32 I/O, so any precision
                     of stage k chains with any precision of stage k+1); fp16 + "compute_dtype";
                     int8 + "quantization" {"format": "QDQ", ...}; calibration_cache + "trt_version",
                     "algorithm" (header of the TensorRT text cache; retarget with
                     hisd_edge.convert.calib_cache.retarget), "tensors" (lines in the cache)
    exits[k]         + "name" (the model's own name for the exit, e.g. the ONNX tensor name)
    validation       + "labelled", "int8_execution" (how INT8 was evaluated), "mixed_plan";
                     rows of embedding exits have "cosine_with_fp32" instead of top1/agreement
    calibration      {"source", "count", "method", "seed", "recipe", "trt_cache_version", "skipped",
                      "skipped_files"} or null when no INT8 was made
    verification     {"samples", "chain_max_abs_diff": [per exit], "torch_max_abs_diff": [per exit] | null,
                      "chain_tolerance", "torch_tolerance"}
    mixed_precision  {"stages": ["int8" | "fp16" | "fp32" per stage], "max_drop_pp"}: only with
                     --precision mixed; the per-stage plan a runtime should use for "mixed"
    provenance       + "source_path"
    guard            the input guard (hisd_edge.runtime.guard), written by convert (on its validation data)
                     and again by thresholds (on the calibration data); absent or null: no guard.
                     {"score": "mahalanobis", "features": "feat0_pooled+input_mean_std" | "exit0+input_mean_std", "threshold": float (flag above),
                      "false_alarm_rate": (0, 1), "center": [D floats], "projection": [[d floats] x D] | null,
                      "means_whitened": [[d floats] x classes], "whitening": [[d floats] x d],
                      "fit_count", "calibration_count", "data", "data_fingerprint": "sha256:<hex>",
                      "calibrated_by": "hisd-edge convert" | "hisd-edge thresholds", "created"}

Added by ``hisd-edge thresholds`` (hisd_edge.runtime.thresholds, hisd_edge.runtime.risk):

    policy.certificate   {"method": "certified" | "empirical",
                          "guarantee": str (what is promised; "none: ..." for empirical),
                          "risk": "accuracy" | "disagreement",
                          "max_drop_points": X (the bound, in accuracy points),
                          "confidence": (0, 1) | null (empirical),
                          "count": n (calibration samples), "data": source string,
                          "data_fingerprint": "sha256:<hex>" of the preprocessed calibration tensors (+ labels),
                          certified only: "test", "family", "candidates_certified", "calibration_risk_points",
                          "best_certifiable_points" (smallest X this data could certify),
                          "audit_reference_points" (disagreement rate ``run --audit`` compares with)}
    policy.calibration   + "data_fingerprint"

Every file the manifest names carries a sha256; :meth:`Bundle.open` verifies them and names the
first file that is missing or altered.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from hisd_edge import atomic
from hisd_edge.errors import BundleError, InputError

SCHEMA_VERSION = 1
KIND = "hisd-edge-bundle"
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")


def _file_entries(manifest: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Every {"path", "sha256"} record in the manifest (stage files, caches, full model, engines)."""
    for stage in manifest.get("stages", []):
        for record in stage.get("files", {}).values():
            yield record
            if isinstance(record.get("calibration_cache"), dict):
                yield record["calibration_cache"]
    if isinstance(manifest.get("full_model"), dict):
        yield manifest["full_model"]
    for engine in manifest.get("engines", []):
        for record in engine.get("files", []):
            yield record


def file_record(root: Path, relpath: str, **extra: Any) -> Dict[str, Any]:
    """A manifest file entry for ``root/relpath`` with its checksum and size."""
    path = root / relpath
    return {"path": relpath, "sha256": atomic.sha256_file(path), "bytes": path.stat().st_size, **extra}


class Bundle:
    """An opened bundle: the parsed manifest plus paths resolved against its directory."""

    def __init__(self, root: Path, manifest: Dict[str, Any]):
        self.root = root
        self.manifest = manifest

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Union[str, os.PathLike[str]], verify: bool = True) -> Bundle:
        root = Path(path)
        if root.is_file() and root.name == MANIFEST:
            root = root.parent
        manifest_path = root / MANIFEST
        if not root.exists():
            raise InputError(f"{root}: no such bundle directory; create one with hisd-edge convert")
        if not manifest_path.is_file():
            raise BundleError(f"{root}: not a bundle (no {MANIFEST}); create one with hisd-edge convert")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(
                f"{manifest_path}: not valid JSON ({exc.__class__.__name__}); the bundle is damaged, convert again"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
            raise BundleError(f"{manifest_path}: not a hisd-edge bundle manifest")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{manifest_path}: manifest schema version {version!r} is not supported by this hisd-edge "
                f"(reads version {SCHEMA_VERSION}); convert the model again with this version"
            )
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every file the manifest names exists and matches its sha256."""
        for record in _file_entries(self.manifest):
            path = self.root / record["path"]
            if not path.is_file():
                raise BundleError(f"{path}: missing from the bundle; copy the whole bundle again or re-run convert")
            if atomic.sha256_file(path) != record["sha256"]:
                raise BundleError(
                    f"{path}: checksum mismatch (file altered or truncated); copy it again or re-run convert"
                )

    # -- views -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.root.name))

    @property
    def stages(self) -> List[Dict[str, Any]]:
        return list(self.manifest["stages"])

    @property
    def num_stages(self) -> int:
        return len(self.manifest["stages"])

    @property
    def exits(self) -> List[Dict[str, Any]]:
        return list(self.manifest["exits"])

    @property
    def class_names(self) -> List[str]:
        return list(self.manifest.get("class_names", []))

    @property
    def policy(self) -> Dict[str, Any]:
        return dict(self.manifest.get("policy") or {})

    @property
    def preprocessing(self):
        from hisd_edge.preprocess import Preprocessing

        return Preprocessing.from_dict(self.manifest["preprocessing"])

    def precisions(self) -> List[str]:
        """Precisions every stage has a file for."""
        return [p for p in PRECISIONS if all(p in s["files"] for s in self.manifest["stages"])]

    def stage_path(self, index: int, precision: str = "fp32") -> Path:
        files = self.manifest["stages"][index]["files"]
        if precision not in files:
            raise BundleError(
                f"{self.root}: stage {index} has no {precision} file (has {', '.join(files)}); "
                f"convert with --precision {precision}"
            )
        return self.root / files[precision]["path"]

    def full_model_path(self) -> Optional[Path]:
        record = self.manifest.get("full_model")
        return self.root / record["path"] if record else None

    # -- updating --------------------------------------------------------------------------
    def update(self, change: Callable[[Dict[str, Any]], None]) -> None:
        """Apply ``change`` to a copy of the manifest and write it atomically.

        On any exception the manifest on disk (and in memory) is left as it was.
        """
        updated = copy.deepcopy(self.manifest)
        change(updated)
        write_manifest(self.root, updated)
        self.manifest = updated


def write_manifest(root: Path, manifest: Dict[str, Any]) -> None:
    """Write ``root/manifest.json`` atomically."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        **{k: v for k, v in manifest.items() if k not in ("schema_version", "kind")},
    }
    atomic.write_json(root / MANIFEST, manifest)
