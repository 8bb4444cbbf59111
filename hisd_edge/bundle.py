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
    ingraph          optional: {"batch": 1, "inputs", "outputs", "policy_codes", "files": {precision: {"path", "sha256",
                      "bytes", "policies": [kinds verified bit-identical], "verification"}}}: batch-1 early exit as one
                      ONNX graph (hisd_edge.runtime.ingraph, hisd_edge.convert.ingraph); absent in older bundles
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
        tensorrt_version   trt.__version__ of the build; precision "fp32" | "fp16" | "int8" | "mixed";
                           requested_precision (+ "best", "mixed")
        recipe             {"typing": "strong" | "weak" | "mixed" | "external", "onnx_precision", "network_flags",
                            "builder_flags", "calibration_cache", "dla_core", "notes", "fp32_head" (confidence head
                            pinned to fp32), ...}; for per-stage builds a summary + "stage_precisions", "dla_stages"
        batch              {"min", "opt", "max"}: the optimization profile of the dynamic batch
        workspace_mib, dla_core, builder_optimization_level, cuda_binding, features (detected TensorRT API)
        files              [{"path": "engines/<key>/trt-<version>/<precision>/stage<k>.plan", "sha256", "bytes", "stage": k,
                             "kind": "plan" | "calibration_cache" | "full_plan" (full.plan, no "stage")}]
        stages             [{"index", "precision", "recipe" (that stage's), "batch" (its profile), "onnx_precision", "onnx",
                             "onnx_sha256" (engines from an older ONNX are refused), "plan_sha256", "build_seconds",
                             "device_memory_bytes", "weights_bytes" (TRT 10.14+), "io": [{"name", "mode", "dtype", "shape"}],
                             "fp32_layers" (head layers pinned to fp32), "dla": {"core", "layers", "layers_on_dla",
                             "gpu_fallback_count", "gpu_fallback_layers", "runs_on": "dla" | "dla+gpu" | "gpu"},
                             "external" (imported)}]
        full_model         {"built": true, "onnx", "onnx_sha256", "plan_sha256", "batch", "io", ...} or
                           {"built": false, "reason"}: the monolithic model's engine (bench, evaluate)
        external, imported_from   plans imported with build --import-engines DIR (checked on load, recipe unknown)
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

The manifest's published JSON Schema is ``hisd_edge/schemas/manifest-v1.schema.json``
(:mod:`hisd_edge.schemas`): known fields are checked for type and range, unknown fields are
allowed (the additions above, and future ones).

A bundle is data from elsewhere (a shared drive, another machine), so :meth:`Bundle.open` treats
it as untrusted: the manifest must be a regular file of bounded size, valid against the schema
and consistent (one exit per stage, thresholds in the policy's range, stage 0 taking what the
preprocessing makes); every path it names must be a plain relative path that stays inside the
bundle with no symbolic link on the way (``name`` a single safe path component). Every file the
manifest names carries its size and sha256: a file is checked when it is first used (size from
``fstat`` before a byte is hashed, then the checksum), so a run verifies only what it runs, and
:meth:`Bundle.verify` checks them all (``hisd-edge inspect``).
"""

from __future__ import annotations

import copy
import errno
import os
import stat
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Union

from hisd_edge import atomic, schemas
from hisd_edge.errors import BundleError, InputError

SCHEMA_VERSION = 1
KIND = "hisd-edge-bundle"
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
MAX_MANIFEST_BYTES = 16 << 20  # a manifest with a thousand engine records is well under 1 MiB
MAX_SAMPLE_ELEMENTS = 1 << 28  # elements of one sample of any stage tensor (1 GiB of float32)
_DAMAGED = "the bundle is damaged or was edited by hand; copy it again or re-run hisd-edge convert"


def _file_entries(manifest: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Every {"path", "sha256", "bytes"} record in the manifest (stage files, caches, full model, engines)."""
    for stage in manifest.get("stages", []):
        for record in stage.get("files", {}).values():
            yield record
            if isinstance(record.get("calibration_cache"), dict):
                yield record["calibration_cache"]
    if isinstance(manifest.get("full_model"), dict):
        yield manifest["full_model"]
    if isinstance(manifest.get("ingraph"), dict):
        yield from (r for r in (manifest["ingraph"].get("files") or {}).values() if isinstance(r, dict))
    for engine in manifest.get("engines", []):
        for record in engine.get("files", []):
            yield record


def confine(root: Path, relpath: Any, what: str = "path") -> Path:
    """``root/relpath``, refused unless ``relpath`` is a plain relative path with no symlink on the way.

    Plain: '/'-separated components, none empty, '.' or '..', no backslash or control characters,
    not absolute. Components that exist below ``root`` must not be symbolic links (``root`` itself
    is the user's choice and may be one). Used for every path a manifest names and every path
    ``hisd-edge build`` writes into a bundle.
    """
    if not isinstance(relpath, str):
        raise BundleError(f"{root}: {what} {relpath!r} is not a path; {_DAMAGED}")
    parts = relpath.split("/")
    bad = (
        not relpath
        or relpath.startswith("/")
        or "\\" in relpath
        or any(ord(c) < 32 for c in relpath)
        or any(part in ("", ".", "..") for part in parts)
    )
    if bad:
        raise BundleError(
            f"{root}: {what} {relpath!r} is not a plain relative path inside the bundle; a bundle may only name "
            f"files inside it ({_DAMAGED})"
        )
    path = root
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return root.joinpath(*parts)  # nothing further exists, so nothing further can be a link
        except OSError as exc:
            raise BundleError(f"{path}: cannot be examined ({exc.strerror}); {_DAMAGED}") from None
        if stat.S_ISLNK(mode):
            raise BundleError(
                f"{path}: is a symbolic link; a bundle's files must be inside it, not links to elsewhere "
                "(replace the link with the real file, or re-run hisd-edge convert)"
            )
    return root.joinpath(*parts)


def file_record(root: Path, relpath: str, **extra: Any) -> Dict[str, Any]:
    """A manifest file entry for ``root/relpath`` with its checksum and size."""
    path = confine(root, relpath)
    return {"path": relpath, "sha256": atomic.sha256_file(path), "bytes": path.stat().st_size, **extra}


def _shape(tensor: Dict[str, Any]) -> Optional[List[Any]]:
    shape = tensor.get("shape")
    return list(shape) if isinstance(shape, list) else None


def _check_consistency(manifest: Dict[str, Any], where: str) -> None:
    """What the schema cannot say: cross-field agreement, and sizes."""
    stages, exits = manifest["stages"], manifest["exits"]
    for k, stage in enumerate(stages):
        if stage["index"] != k:
            raise BundleError(f"{where}: field stages[{k}].index is {stage['index']}, must be {k}; {_DAMAGED}")
    if len(exits) != len(stages):
        raise BundleError(
            f"{where}: {len(exits)} exits for {len(stages)} stages; every stage ends in one exit ({_DAMAGED})"
        )
    for k, exit_ in enumerate(exits):
        if exit_["index"] != k or exit_["stage"] != k:
            raise BundleError(
                f"{where}: field exits[{k}] says index {exit_['index']}, stage {exit_['stage']}; "
                f"exit {k} is on stage {k} ({_DAMAGED})"
            )
    policy = manifest.get("policy")
    if isinstance(policy, dict) and len(policy["thresholds"]) != len(exits):
        raise BundleError(
            f"{where}: field policy.thresholds has {len(policy['thresholds'])} entries for {len(exits)} exits; "
            f"run hisd-edge thresholds {Path(where).parent} to fit them again"
        )
    prep = manifest["preprocessing"]
    channels, expected = prep["channels"], 1 if prep["color_order"] == "gray" else 3
    if channels != expected:
        raise BundleError(
            f"{where}: field preprocessing.channels is {channels} but color_order {prep['color_order']!r} has "
            f"{expected}; {_DAMAGED}"
        )
    if len(prep["mean"]) != channels or len(prep["std"]) != channels:
        raise BundleError(f"{where}: preprocessing mean/std need one value per channel ({channels}); {_DAMAGED}")
    wanted = [channels, *prep["input_size"]]
    for k, stage in enumerate(stages):
        for tensor in stage["inputs"] + stage["outputs"]:
            dims = [d for d in (_shape(tensor) or [])[1:] if isinstance(d, int)]
            elements = 1
            for d in dims:
                elements *= d
            if elements > MAX_SAMPLE_ELEMENTS:
                raise BundleError(
                    f"{where}: stage {k} tensor {tensor['name']!r} has {elements} elements per sample, more than "
                    f"{MAX_SAMPLE_ELEMENTS}; {_DAMAGED}"
                )
    first = _shape(stages[0]["inputs"][0])
    if first is not None and len(first) == 4 and all(isinstance(d, int) for d in first[1:]) and first[1:] != wanted:
        raise BundleError(
            f"{where}: stage 0 takes samples of shape {first[1:]} but the preprocessing makes {wanted}; {_DAMAGED}"
        )
    for k in range(1, len(stages)):
        produced = {t["name"]: _shape(t) for t in stages[k - 1]["outputs"]}
        for tensor in stages[k]["inputs"]:
            made, taken = produced.get(tensor["name"]), _shape(tensor)
            if tensor["name"] not in produced:
                raise BundleError(
                    f"{where}: stage {k} reads {tensor['name']!r}, which stage {k - 1} does not write; {_DAMAGED}"
                )
            if made and taken and len(made) == len(taken):
                mismatch = [
                    i
                    for i in range(1, len(made))
                    if isinstance(made[i], int) and isinstance(taken[i], int) and made[i] != taken[i]
                ]
                if mismatch:
                    raise BundleError(
                        f"{where}: stage {k} takes {tensor['name']!r} of shape {taken[1:]} but stage {k - 1} writes "
                        f"{made[1:]}; {_DAMAGED}"
                    )
    for e, engine in enumerate(manifest.get("engines", [])):
        for record in engine["files"]:
            if record.get("stage") is not None and record["stage"] >= len(stages):  # full_plan has no stage
                raise BundleError(
                    f"{where}: field engines[{e}] names an engine for stage {record['stage']} of a "
                    f"{len(stages)}-stage bundle; {_DAMAGED}"
                )


class Bundle:
    """An opened bundle: the parsed manifest plus paths resolved (and confined) against its directory."""

    def __init__(self, root: Path, manifest: Dict[str, Any], verify: bool = True):
        self.root = root
        self.manifest = manifest
        self.verify_files = verify  # check size + sha256 of each file on first use
        self._verified: Set[str] = set()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Union[str, os.PathLike[str]], verify: bool = True) -> Bundle:
        """Open and check the bundle at ``path`` (its directory, or its manifest.json).

        Refuses (BundleError / InputError, one line) a manifest that is not a regular file, too
        large, not strict JSON, invalid against the schema, inconsistent, or naming any path
        outside the bundle. With ``verify`` (the default) each named file is checked against its
        size and sha256 when first used; ``verify=False`` skips only that.
        """
        root = Path(path)
        if root.name == MANIFEST and not root.is_dir():
            root = root.parent
        if not root.exists():
            raise InputError(f"{root}: no such bundle directory; create one with hisd-edge convert")
        if not root.is_dir():
            raise InputError(f"{root}: not a directory; give the bundle directory (made by hisd-edge convert)")
        manifest_path = root / MANIFEST
        try:
            mode = os.lstat(manifest_path).st_mode
        except FileNotFoundError:
            raise BundleError(f"{root}: not a bundle (no {MANIFEST}); create one with hisd-edge convert") from None
        except OSError as exc:
            raise BundleError(f"{manifest_path}: cannot be read ({exc.strerror})") from None
        if stat.S_ISLNK(mode):
            raise BundleError(
                f"{manifest_path}: is a symbolic link; a bundle's manifest must be a file inside it "
                "(copy the real bundle, or re-run hisd-edge convert)"
            )
        manifest = schemas.read_json(
            manifest_path, max_bytes=MAX_MANIFEST_BYTES, fix=_DAMAGED, error=BundleError, follow_symlinks=False
        )
        if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
            raise BundleError(f"{manifest_path}: not a hisd-edge bundle manifest")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{manifest_path}: manifest schema version {version!r} is not supported by this hisd-edge "
                f"(reads version {SCHEMA_VERSION}); convert the model again with this version"
            )
        schemas.validate(manifest, schemas.MANIFEST, what=str(manifest_path), fix=_DAMAGED, error=BundleError)
        _check_consistency(manifest, str(manifest_path))
        bundle = cls(root, manifest, verify)
        for record in _file_entries(manifest):
            bundle.resolve(record["path"])
        return bundle

    def resolve(self, relpath: str) -> Path:
        """``root/relpath``, confined to the bundle (see :func:`confine`)."""
        return confine(self.root, relpath)

    def checked_path(self, record: Dict[str, Any]) -> Path:
        """The path of a manifest file record, after checking it is the recorded file.

        Refused, with one line naming the file: missing, not a regular file, a symbolic link,
        another size than recorded (checked before a byte is read, so a huge or sparse file
        costs nothing), or another sha256. Each file is hashed once per opened bundle.
        """
        path = self.resolve(record["path"])
        if not self.verify_files or record["path"] in self._verified:
            return path
        self._read(path, record, keep=False)
        self._verified.add(record["path"])
        return path

    def read_verified(self, record: Dict[str, Any], noun: str = "file", fix: Optional[str] = None) -> bytes:
        """The bytes of a manifest file record, checked like :meth:`checked_path` (one read).

        ``noun`` and ``fix`` shape the message (an "engine file" is fixed by building again).
        """
        path = self.resolve(record["path"])
        data = self._read(path, record, keep=True, noun=noun, fix=fix)
        self._verified.add(record["path"])
        return data

    def _read(
        self, path: Path, record: Dict[str, Any], keep: bool, noun: str = "file", fix: Optional[str] = None
    ) -> bytes:
        import hashlib

        fix = fix or "copy the whole bundle again or re-run hisd-edge convert"
        try:
            fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BundleError(f"{path}: missing from the bundle; {fix}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BundleError(f"{path}: is a symbolic link; a bundle's files must be inside it; {fix}") from None
            raise BundleError(f"{path}: cannot be read ({exc.strerror}); {fix}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise BundleError(f"{path}: is not a regular file; {fix}")
        with os.fdopen(fd, "rb") as handle:
            if info.st_size != record["bytes"]:  # refused before a byte is hashed: a huge file costs nothing
                raise BundleError(
                    f"{path}: {noun} is {info.st_size} bytes, the manifest records {record['bytes']} "
                    f"(truncated or replaced: checksum mismatch); {fix}"
                )
            digest = hashlib.sha256()
            chunks: List[bytes] = []
            while True:
                block = handle.read(1 << 20)
                if not block:
                    break
                digest.update(block)
                if keep:
                    chunks.append(block)
                if handle.tell() > info.st_size:
                    raise BundleError(f"{path}: grew while being read; {fix}")
        if digest.hexdigest() != record["sha256"]:
            raise BundleError(f"{path}: {noun} checksum mismatch (altered or replaced); {fix}")
        return b"".join(chunks)

    def verify(self) -> None:
        """Check every file the manifest names exists and matches its size and sha256."""
        for record in _file_entries(self.manifest):
            self._read(self.resolve(record["path"]), record, keep=False)
            self._verified.add(record["path"])

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
        """Stage ``index``'s ONNX of ``precision``, checked (size, sha256) on first use."""
        files = self.manifest["stages"][index]["files"]
        if precision not in files:
            raise BundleError(
                f"{self.root}: stage {index} has no {precision} file (has {', '.join(files)}); "
                f"convert with --precision {precision}"
            )
        return self.checked_path(files[precision])

    def calibration_cache_path(self, index: int) -> Optional[Path]:
        """Stage ``index``'s TensorRT calibration cache (checked), or None when it has none."""
        record = self.manifest["stages"][index]["files"].get("int8", {}).get("calibration_cache")
        return self.checked_path(record) if record else None

    def full_model_path(self) -> Optional[Path]:
        """The monolithic ONNX (checked on first use), or None when the manifest names none."""
        record = self.manifest.get("full_model")
        return self.checked_path(record) if record else None

    def ingraph_path(self, precision: str = "fp32") -> Optional[Path]:
        """The in-graph early-exit ONNX of ``precision`` (checked on first use), or None when the bundle has
        none (bundles converted before it existed; see :mod:`hisd_edge.runtime.ingraph`)."""
        record = ((self.manifest.get("ingraph") or {}).get("files") or {}).get(precision)
        return self.checked_path(record) if isinstance(record, dict) else None

    # -- updating --------------------------------------------------------------------------
    def update(self, change: Callable[[Dict[str, Any]], None]) -> None:
        """Apply ``change`` to a copy of the manifest and write it atomically.

        The changed manifest must still be valid (the schema, confinement); on any exception the
        manifest on disk (and in memory) is left as it was.
        """
        updated = copy.deepcopy(self.manifest)
        change(updated)
        where = str(self.root / MANIFEST)
        try:
            atomic.json_text(updated)
        except ValueError as exc:  # a NaN or infinity from a computation upstream: never written
            raise BundleError(f"{where} (as updated): {exc}; nothing was written") from None
        schemas.validate(
            updated, schemas.MANIFEST, what=f"{where} (as updated)", fix="nothing was written", error=BundleError
        )
        _check_consistency(updated, where)
        for record in _file_entries(updated):
            self.resolve(record["path"])
        write_manifest(self.root, updated)
        self.manifest = updated


def write_manifest(root: Path, manifest: Dict[str, Any]) -> None:
    """Write ``root/manifest.json`` atomically (strict JSON: no NaN or Infinity)."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        **{k: v for k, v in manifest.items() if k not in ("schema_version", "kind")},
    }
    atomic.write_json(root / MANIFEST, manifest)
