"""The hostile-input catalogue: what an attacker (or an accident) feeds each verb, and what must happen.

Every case runs the real CLI (in this process, as ``hisd-edge`` would) against a fresh copy of one
small converted bundle and asserts the rule: exit status 2, exactly one line on stderr naming the
problem, no traceback, and nothing anywhere in the case's directory changed (the previous bundle
or report byte-identical, nothing created, nothing outside touched). A few cases also run as real
subprocesses (tests/hostile/test_subprocess.py) where only a real process shows the output.

``HISD_HOSTILE_TABLE=path pytest tests/hostile/test_catalogue.py`` also writes the catalogue as a
Markdown table (case, verb, the line the user got).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
from hostile_helpers import PROFILE_FAST, World, assert_refused

B = "engines/tiny"
VERB_ARGS: Dict[str, List[str]] = {
    "run": ["run", B, "default:test"],
    "build": ["build", B, "--no-progress"],
    "thresholds": ["thresholds", B, "--data", "default:val", "--count", "40", "--method", "empirical", "--no-progress"],
    "thresholds --dry-run": [
        "thresholds",
        B,
        "--data",
        "default:val",
        "--count",
        "40",
        "--method",
        "empirical",
        "--no-progress",
        "--dry-run",
    ],
    "bench": ["bench", B, "--data", "random", "--seconds", "1", "--no-progress"],
    "profile": ["profile", B, "--data", "default:test", "--samples", "8", *PROFILE_FAST, "--out", "reports/p"],
    "inspect": ["inspect", B],
    "check": ["check", B],
}
ALL_BUNDLE_VERBS = ["run", "build", "thresholds", "bench", "profile", "inspect", "check"]


@dataclasses.dataclass
class Kit:
    """What a case's setup may use besides the world."""

    world: World
    checkpoint: Path
    png_bomb: Path


@dataclasses.dataclass
class Case:
    name: str
    verb: str
    setup: Callable[[Kit], Optional[Sequence[str]]]  # changes the world; returns argv (None: VERB_ARGS[verb])
    needles: Sequence[str]
    memory_note: str = ""  # what the case used to cost, for the table


def _sha(path: Path) -> Dict[str, Any]:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


# -- bundle attacks --------------------------------------------------------------------------------
def traversal_stage(kit: Kit) -> None:
    kit.world.edit(
        lambda m: m["stages"][0]["files"].update(
            fp32={"path": "../../outside/secret.onnx", **_sha(kit.world.outside / "secret.onnx")}
        )
    )


def absolute_stage(kit: Kit) -> None:
    secret = kit.world.outside / "secret.onnx"
    kit.world.edit(lambda m: m["stages"][0]["files"].update(fp32={"path": str(secret), **_sha(secret)}))


def symlink_stage(kit: Kit) -> None:
    (kit.world.bundle / "stage0.onnx").unlink()
    (kit.world.bundle / "stage0.onnx").symlink_to(kit.world.outside / "secret.onnx")


def symlink_manifest(kit: Kit) -> None:
    kit.world.manifest_path.unlink()
    kit.world.manifest_path.symlink_to(kit.world.outside / "manifest.json")


def symlink_folder(kit: Kit) -> None:
    target = kit.world.outside / "stages"
    target.mkdir()
    shutil.copy2(kit.world.bundle / "stage0.onnx", target / "stage0.onnx")
    (kit.world.bundle / "sub").symlink_to(target)
    kit.world.edit(lambda m: m["stages"][0]["files"]["fp32"].update(path="sub/stage0.onnx"))


def traversal_full_model(kit: Kit) -> None:
    kit.world.edit(
        lambda m: m.update(full_model={"path": "../../outside/secret.onnx", **_sha(kit.world.outside / "secret.onnx")})
    )


def traversal_cache(kit: Kit) -> None:
    kit.world.edit(
        lambda m: m["stages"][0]["files"]["int8"].update(
            calibration_cache={"path": "../../outside/notes.txt", **_sha(kit.world.outside / "notes.txt")}
        )
    )


def traversal_engine(kit: Kit) -> None:
    record = {
        "device": {"key": "orin-sm87-16sm", "name": "Orin"},
        "tensorrt_version": "10.3.0",
        "precision": "fp16",
        "files": [{"path": "engines/../../../outside/notes.txt", "stage": 0, **_sha(kit.world.outside / "notes.txt")}],
    }
    kit.world.edit(lambda m: m.update(engines=[record]))


def set_name(value: Any) -> Callable[[Kit], None]:
    def setup(kit: Kit) -> None:
        kit.world.edit(lambda m: m.update(name=value))

    return setup


def set_stage_path(value: str) -> Callable[[Kit], None]:
    def setup(kit: Kit) -> None:
        kit.world.edit(lambda m: m["stages"][0]["files"]["fp32"].update(path=value))

    return setup


# -- manifest format ---------------------------------------------------------------------------------
def raw_manifest(text: str) -> Callable[[Kit], None]:
    def setup(kit: Kit) -> None:
        kit.world.manifest_path.write_text(text)

    return setup


def edit(change: Callable[[Dict[str, Any]], None]) -> Callable[[Kit], None]:
    def setup(kit: Kit) -> None:
        kit.world.edit(change)

    return setup


def huge_manifest(kit: Kit) -> None:
    kit.world.edit(lambda m: m["provenance"].update(padding="x" * (17 << 20)))


def nested_manifest(kit: Kit) -> None:
    text = kit.world.manifest_path.read_text()
    deep = "[" * 100000 + "]" * 100000
    kit.world.manifest_path.write_text(text.replace('"provenance": {', f'"deep": {deep}, "provenance": {{', 1))


def manifest_is_directory(kit: Kit) -> None:
    kit.world.manifest_path.unlink()
    kit.world.manifest_path.mkdir()


def manifest_is_fifo(kit: Kit) -> None:
    kit.world.manifest_path.unlink()
    os.mkfifo(kit.world.manifest_path)


def nan_threshold(kit: Kit) -> None:
    text = json.dumps(kit.world.manifest())
    kit.world.manifest_path.write_text(text.replace('"thresholds": [0.9,', '"thresholds": [NaN,', 1))


def overflow_threshold(kit: Kit) -> None:
    text = json.dumps(kit.world.manifest())
    kit.world.manifest_path.write_text(text.replace('"thresholds": [0.9,', '"thresholds": [1e999,', 1))


def threshold(value: Any) -> Callable[[Kit], None]:
    return edit(lambda m: m["policy"].update(thresholds=[value, 0.9, None]))


def sparse_stage(kit: Kit) -> None:
    path = kit.world.bundle / "stage0.onnx"
    with open(path, "r+b") as handle:
        handle.truncate(1 << 40)  # 1 TiB, sparse: costs nothing on disk


def sparse_stage_recorded(kit: Kit) -> None:
    sparse_stage(kit)
    kit.world.edit(lambda m: m["stages"][0]["files"]["fp32"].update(bytes=1 << 40))


def truncated_stage(kit: Kit) -> None:
    path = kit.world.bundle / "stage1.onnx"
    path.write_bytes(path.read_bytes()[:100])


def missing_stage(kit: Kit) -> None:
    (kit.world.bundle / "stage1.onnx").unlink()


def fifo_stage(kit: Kit) -> None:
    (kit.world.bundle / "stage0.onnx").unlink()
    os.mkfifo(kit.world.bundle / "stage0.onnx")


def directory_stage(kit: Kit) -> None:
    (kit.world.bundle / "stage0.onnx").unlink()
    (kit.world.bundle / "stage0.onnx").mkdir()


# -- inputs --------------------------------------------------------------------------------------------
def with_file(name: str, make: Callable[[Path], None], args: Sequence[str]) -> Callable[[Kit], Sequence[str]]:
    """Create ``name`` in the world (``make(path)``) and return ``args`` with ``{f}`` replaced by it."""

    def setup(kit: Kit) -> Sequence[str]:
        path = kit.world.root / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        return [a.replace("{f}", str(path)) for a in args]

    return setup


def npy_header_only(shape: Sequence[int], descr: str = "|u1") -> Callable[[Path], None]:
    """A .npy whose header claims ``shape`` but that holds only a few bytes of data."""

    def make(path: Path) -> None:
        header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
        header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
        path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64)

    return make


def npy_array(array: Any) -> Callable[[Path], None]:
    return lambda path: np.save(path, array)


def npz_arrays(**arrays: Any) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def pickled_npz(path: Path) -> None:
    np.savez(path, images=np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def copy_bomb(kit: Kit) -> Callable[[Path], None]:
    return lambda path: shutil.copy2(kit.png_bomb, path)


def bomb_input(args: Sequence[str], folder: bool = False) -> Callable[[Kit], Sequence[str]]:
    def setup(kit: Kit) -> Sequence[str]:
        name = "labelled/3/bomb.png" if folder else "bomb.png"
        argv = with_file(name, copy_bomb(kit), args)(kit)
        return [a.replace("{d}", str(kit.world.root / "inputs" / "labelled")) for a in argv]

    return setup


# -- checkpoints ---------------------------------------------------------------------------------------
def _read_safetensors(path: Path):  # type: ignore[no-untyped-def]
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write_safetensors(path: Path, header: Dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def checkpoint_with(
    change: Callable[[Dict[str, Any], Dict[str, Any]], None], extra: Sequence[str] = ()
) -> Callable[[Kit], Sequence[str]]:
    """A copy of the tiny checkpoint whose header (and metadata) ``change(header, meta)`` edits in place."""

    def setup(kit: Kit) -> Sequence[str]:
        header, data = _read_safetensors(kit.checkpoint)
        meta = json.loads(header["__metadata__"]["hisd_edge"])
        change(header, meta)
        metadata = header.get("__metadata__")
        if isinstance(metadata, dict) and isinstance(metadata.get("hisd_edge"), str):
            metadata["hisd_edge"] = json.dumps(meta)
        path = kit.world.root / "hostile.safetensors"
        _write_safetensors(path, header, data)
        return ["convert", str(path), "--out", "engines/new", "--precision", "fp32", "--no-progress", *extra]

    return setup


def meta_config(**config: Any) -> Callable[[Dict[str, Any], Dict[str, Any]], None]:
    return lambda header, meta: meta["arch"]["config"].update(config)


def pickle_checkpoint(kit: Kit) -> Sequence[str]:
    path = kit.world.root / "model.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    return ["convert", str(path), "--out", "engines/new"]


# -- profiles and costs --------------------------------------------------------------------------------
def costs_file(make: Callable[[Path], None]) -> Callable[[Kit], Sequence[str]]:
    def setup(kit: Kit) -> Sequence[str]:
        path = kit.world.root / "costs" / "profile.json"
        path.parent.mkdir()
        make(path)
        return [*VERB_ARGS["thresholds"], "--costs", str(path)]

    return setup


def costs_json(body: Any) -> Callable[[Path], None]:
    return lambda path: path.write_text(body if isinstance(body, str) else json.dumps(body))


def stages_costs(*values: Any) -> Callable[[Path], None]:
    return costs_json({"stages": [{"index": k, "latency_ms": {"p50": v}} for k, v in enumerate(values)]})


def bad_profile(change: Callable[[Dict[str, Any]], Any], raw: Optional[str] = None) -> Callable[[Kit], Sequence[str]]:
    """A damaged copy of a real profile.json; the command asks to replace an earlier, intact report."""

    def setup(kit: Kit) -> Sequence[str]:
        previous = kit.world.root / "reports" / "previous"
        shutil.copytree(kit.report, previous)  # type: ignore[attr-defined]
        damaged = kit.world.root / "damaged"
        damaged.mkdir()
        profile = json.loads((previous / "profile.json").read_text())
        change(profile)
        (damaged / "profile.json").write_text(raw if raw is not None else json.dumps(profile))
        return ["report", str(damaged), "--out", str(previous)]

    return setup


def profile_fifo(kit: Kit) -> Sequence[str]:
    damaged = kit.world.root / "damaged"
    damaged.mkdir()
    os.mkfifo(damaged / "profile.json")
    return ["report", str(damaged), "--out", "reports/new"]


def _two_singletons(kit: Kit) -> Sequence[str]:
    import cv2

    for name, value in (("a", 0), ("b", 255)):
        (kit.world.root / "tiny-data" / name).mkdir(parents=True)
        cv2.imwrite(str(kit.world.root / "tiny-data" / name / "1.png"), np.full((28, 28), value, np.uint8))
    return ["train", "--data", "tiny-data", "--arch", "tiny_cnn", "--epochs", "1", "--out", "m.safetensors"]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CASES: List[Case] = [
    # 1. confinement: every verb, every way out
    *[
        Case("stage path ../ to a file outside (checksum matches)", v, traversal_stage, ["inside the bundle"])
        for v in ALL_BUNDLE_VERBS
    ],
    *[Case("stage file is a symlink to a file outside", v, symlink_stage, ["symbolic link"]) for v in ALL_BUNDLE_VERBS],
    *[
        Case("manifest.json is a symlink", v, symlink_manifest, ["manifest.json", "symbolic link"])
        for v in ALL_BUNDLE_VERBS
    ],
    Case("stage path absolute (checksum matches)", "run", absolute_stage, ["inside the bundle"]),
    Case("stage path absolute (checksum matches)", "check", absolute_stage, ["inside the bundle"]),
    Case("stage folder is a symlink to outside", "run", symlink_folder, ["sub", "symbolic link"]),
    Case("stage folder is a symlink to outside", "inspect", symlink_folder, ["sub", "symbolic link"]),
    Case("full_model path ../", "bench", traversal_full_model, ["inside the bundle"]),
    Case("calibration cache path ../", "build", traversal_cache, ["inside the bundle"]),
    Case("engine file path engines/../../", "run", traversal_engine, ["inside the bundle"]),
    Case(
        "name ../../escape (wrote reports/<name> anywhere)",
        "thresholds --dry-run",
        set_name("../../escape"),
        ["field name"],
    ),
    Case("name ../../escape", "thresholds", set_name("../../escape"), ["field name"]),
    Case("name absolute", "thresholds --dry-run", set_name("/tmp/hisd-escape"), ["field name"]),
    Case("name ..", "profile", set_name(".."), ["field name"]),
    Case("name with a slash", "inspect", set_name("a/b"), ["field name"]),
    Case(
        "stage path with a backslash",
        "inspect",
        set_stage_path("..\\..\\outside\\secret.onnx"),
        ["stages[0].files.fp32.path"],
    ),
    Case(
        "stage path with a NUL byte", "inspect", set_stage_path("stage0.onnx\u0000.txt"), ["stages[0].files.fp32.path"]
    ),
    Case("stage path with ./ segments", "run", set_stage_path("./stage0.onnx"), ["stages[0].files.fp32.path"]),
    # 3. the manifest's schema and consistency
    Case("manifest is not JSON", "inspect", raw_manifest("{not json"), ["not valid JSON"]),
    Case("manifest holds NaN", "run", nan_threshold, ["NaN"]),
    Case("manifest threshold 1e999 (overflows to inf)", "run", overflow_threshold, ["overflows"]),
    Case("manifest of 17 MiB", "inspect", huge_manifest, ["MiB"]),
    Case("manifest nested 100000 deep", "inspect", nested_manifest, ["nested"]),
    Case("manifest.json is a directory", "run", manifest_is_directory, ["manifest.json", "directory"]),
    Case("manifest.json is a FIFO (must not hang)", "inspect", manifest_is_fifo, ["not a regular file"]),
    Case("manifest without stages", "run", edit(lambda m: m.pop("stages")), ["field stages is missing"]),
    Case(
        "stage index is a string",
        "run",
        edit(lambda m: m["stages"][0].update(index="0")),
        ["stages[0].index", "string"],
    ),
    Case(
        "stage without an fp32 file",
        "run",
        edit(lambda m: m["stages"][1]["files"].pop("fp32")),
        ["stages[1].files.fp32 is missing"],
    ),
    Case(
        "sha256 is not hex",
        "inspect",
        edit(lambda m: m["stages"][0]["files"]["fp32"].update(sha256="z" * 64)),
        ["sha256"],
    ),
    Case(
        "file size negative",
        "inspect",
        edit(lambda m: m["stages"][0]["files"]["fp32"].update(bytes=-1)),
        ["bytes", ">= 0"],
    ),
    Case(
        "file size 1 TiB recorded", "run", sparse_stage_recorded, ["bytes", "<="], "hashed a 1 TiB sparse file forever"
    ),
    Case("exits missing a stage", "run", edit(lambda m: m["exits"].pop()), ["exits for 3 stages"]),
    Case("kind is not a bundle", "inspect", edit(lambda m: m.update(kind="model")), ["not a hisd-edge bundle"]),
    Case("threshold -5", "run", threshold(-5), ["policy.thresholds[0]", ">= 0"]),
    Case("threshold 7", "thresholds", threshold(7), ["policy.thresholds[0]", "<= 1"]),
    Case("threshold true", "run", threshold(True), ["policy.thresholds[0]", "boolean"]),
    Case("threshold a string", "bench", threshold("0.9"), ["policy.thresholds[0]", "string"]),
    Case("policy kind unknown", "run", edit(lambda m: m["policy"].update(kind="evil")), ["policy.kind"]),
    Case(
        "thresholds for 2 of 3 exits",
        "run",
        edit(lambda m: m["policy"].update(thresholds=[0.9, None])),
        ["policy.thresholds has 2"],
    ),
    Case(
        "preprocessing 30000x30000",
        "run",
        edit(lambda m: m["preprocessing"].update(input_size=[30000, 30000])),
        ["preprocessing.input_size[", "<= 4096"],
        "21 GB peak before the error",
    ),
    Case(
        "preprocessing std 0",
        "thresholds",
        edit(lambda m: m["preprocessing"].update(std=[0])),
        ["preprocessing.std[0]"],
    ),
    Case(
        "stage tensor of 2^40 elements per sample",
        "bench",
        edit(lambda m: m["stages"][1]["inputs"][0].update(shape=["batch", 1024, 1048576, 1048576])),
        ["elements per sample"],
    ),
    Case(
        "stage 0 input shape does not match the preprocessing",
        "run",
        edit(lambda m: m["stages"][0]["inputs"][0].update(shape=["batch", 3, 28, 28])),
        ["stage 0 takes samples of shape [3, 28, 28]"],
    ),
    Case(
        "class_names is a string",
        "run",
        edit(lambda m: m.update(class_names="0123456789")),
        ["class_names", "must be array"],
    ),
    # 2. bounds before work: files named by the manifest
    Case(
        "stage file replaced by a 1 TiB sparse file",
        "run",
        sparse_stage,
        ["stage0.onnx", "1099511627776 bytes"],
        "hashing never ended",
    ),
    Case("stage file truncated", "run", truncated_stage, ["stage1.onnx", "checksum mismatch"]),
    Case("stage file missing", "thresholds", missing_stage, ["stage1.onnx", "missing"]),
    Case("stage file is a FIFO (must not hang)", "run", fifo_stage, ["stage0.onnx", "not a regular file"]),
    Case("stage file is a directory", "run", directory_stage, ["stage0.onnx", "not a regular file"]),
    # 2. bounds before work: inputs
    Case(
        "20000x20000 PNG of 1 MB",
        "run",
        bomb_input(["run", B, "{f}"]),
        ["20000x20000 pixels", "HISD_EDGE_MAX_IMAGE_PIXELS"],
        "7.5 GB peak",
    ),
    Case(
        "20000x20000 PNG in a labelled folder",
        "thresholds",
        bomb_input(["thresholds", B, "--data", "{d}", "--no-progress"], folder=True),
        ["none of its 1 image files", "20000x20000 pixels"],
    ),
    Case(
        ".npy header claiming 10^11 rows",
        "run",
        with_file("rows.npy", npy_header_only((10**11, 28, 28)), ["run", B, "{f}"]),
        ["header claims", "more than"],
    ),
    Case(
        ".npy header claiming 10^11 rows",
        "thresholds",
        with_file(
            "rows.npy",
            npy_header_only((10**11, 28, 28)),
            ["thresholds", B, "--data", "{f}", "--no-progress"],
        ),
        ["header claims"],
    ),
    Case(
        ".npy header larger than the file",
        "run",
        with_file("short.npy", npy_header_only((64, 28, 28)), ["run", B, "{f}"]),
        ["the file holds"],
    ),
    Case(
        "pickled .npz (object array)",
        "run",
        with_file("pickled.npz", pickled_npz, ["run", B, "{f}"]),
        ["never unpickles"],
    ),
    Case(
        "string .npy",
        "run",
        with_file("strings.npy", npy_array(np.array([["a" * 28] * 28] * 2)), ["run", B, "{f}"]),
        ["dtype <U28"],
    ),
    Case(
        "complex .npy",
        "run",
        with_file("complex.npy", npy_array(np.zeros((2, 28, 28), np.complex64)), ["run", B, "{f}"]),
        ["complex64"],
    ),
    Case(
        "bool .npy",
        "run",
        with_file("bool.npy", npy_array(np.zeros((2, 28, 28), bool)), ["run", B, "{f}"]),
        ["dtype bool"],
    ),
    Case(
        "labels 99",
        "thresholds",
        with_file(
            "l99.npz",
            npz_arrays(images=np.zeros((4, 28, 28), np.uint8), labels=np.array([1, 2, 3, 99])),
            ["thresholds", B, "--data", "{f}", "--no-progress"],
        ),
        ["labels go up to 99"],
    ),
    Case(
        "labels -1",
        "thresholds",
        with_file(
            "lneg.npz",
            npz_arrays(images=np.zeros((4, 28, 28), np.uint8), labels=np.array([1, 2, 3, -1])),
            ["thresholds", B, "--data", "{f}", "--no-progress"],
        ),
        ["label -1 is negative"],
    ),
    Case(
        "labels NaN",
        "thresholds",
        with_file(
            "lnan.npz",
            npz_arrays(images=np.zeros((4, 28, 28), np.uint8), labels=np.array([1.0, np.nan, 2, 3])),
            ["thresholds", B, "--data", "{f}", "--no-progress"],
        ),
        ["labels must be", "integer"],
    ),
    Case(
        "image path is a FIFO (must not hang)",
        "run",
        with_file("pipe.png", fifo, ["run", B, "{f}"]),
        ["not a regular file"],
    ),
    # bounds and schema: checkpoints
    Case(
        "metadata input size 20000",
        "convert",
        checkpoint_with(meta_config(input_size=[20000, 20000])),
        ["arch.config.input_size[", "<= 4096"],
    ),
    Case(
        "metadata widths 10^6 (tried to allocate 360 GB)",
        "convert",
        checkpoint_with(meta_config(widths=[10**6, 10**6, 10**6])),
        ["arch.config.widths[", "<= 16384"],
        "tried to allocate 360 GB",
    ),
    Case(
        "metadata widths 16384 (in range, not the file's weights)",
        "convert",
        checkpoint_with(meta_config(widths=[16384, 16384, 16384])),
        ["weights do not fit"],
    ),
    Case(
        "metadata claims 1 exit for a 3-exit model",
        "convert",
        checkpoint_with(lambda h, m: m.update(exits=m["exits"][:1])),
        ["1 exit(s) but its architecture has 3"],
    ),
    Case(
        "__metadata__ is a list",
        "convert",
        checkpoint_with(lambda h, m: h.update(__metadata__=["x"])),
        ["__metadata__"],
    ),
    Case(
        "metadata is a number, not JSON text",
        "convert",
        checkpoint_with(lambda h, m: h["__metadata__"].update(hisd_edge=7)),
        ["__metadata__"],
    ),
    Case(
        "tensor data_offsets are strings",
        "convert",
        checkpoint_with(
            lambda h, m: next(v for k, v in h.items() if k != "__metadata__").update(data_offsets=["0", "9"])
        ),
        ["malformed safetensors entry"],
    ),
    Case(
        "metadata class_names is a string",
        "convert",
        checkpoint_with(lambda h, m: m.update(class_names="0123")),
        ["class_names"],
    ),
    Case(
        "metadata without preprocessing",
        "convert",
        checkpoint_with(lambda h, m: m.pop("preprocessing")),
        ["field preprocessing is missing"],
    ),
    Case(
        "metadata format_version a string",
        "convert",
        checkpoint_with(lambda h, m: m.update(format_version="x")),
        ["format_version"],
    ),
    Case(
        "metadata 3 class names for 10 classes",
        "convert",
        checkpoint_with(lambda h, m: m.update(class_names=["a", "b", "c"])),
        ["3 classes", "has 10"],
    ),
    Case("a pickle named .safetensors", "convert", pickle_checkpoint, ["never unpickles"]),
    Case(
        "convert --out on a filesystem that refuses writes",
        "convert",
        lambda kit: ["convert", str(kit.checkpoint), "--out", "/sys/hisd-out", "--precision", "fp32"],
        ["cannot write"],
    ),
    # train
    Case(
        "train --out is a directory (lost an epoch)",
        "train",
        lambda kit: ["train", "--arch", "tiny_cnn", "--epochs", "1", "--out", str(kit.world.outside)],
        ["is a directory"],
    ),
    Case(
        "train --out unwritable",
        "train",
        lambda kit: ["train", "--arch", "tiny_cnn", "--epochs", "1", "--out", "/sys/m.safetensors"],
        ["cannot write"],
    ),
    Case(
        "train on 2 classes of 1 image (traceback after loading)",
        "train",
        lambda kit: _two_singletons(kit),
        ["too few images"],
    ),
    # 3. costs files (thresholds --costs)
    Case("costs nested 100000 deep", "thresholds", costs_file(costs_json(nested(100000))), ["nested"]),
    Case("costs is a directory", "thresholds", costs_file(lambda p: p.mkdir()), ["is a directory"]),
    Case("costs is a FIFO (must not hang)", "thresholds", costs_file(fifo), ["not a regular file"]),
    Case(
        "costs is /dev/zero",
        "thresholds",
        lambda kit: [*VERB_ARGS["thresholds"], "--costs", "/dev/zero"],
        ["not a regular file"],
    ),
    Case(
        "costs of 0 (wrote Infinity into manifest.json)", "thresholds", costs_file(stages_costs(0, 0, 0)), ["positive"]
    ),
    Case("costs of 1e308", "thresholds", costs_file(stages_costs(1e308, 1e308, 1e308)), ["<= 1000000000"]),
    Case(
        "costs NaN",
        "thresholds",
        costs_file(costs_json('{"stages": [{"latency_ms": NaN}, {"latency_ms": 1}, {"latency_ms": 1}]}')),
        ["NaN"],
    ),
    Case("costs negative", "thresholds", costs_file(stages_costs(1, -2, 1)), [">= 0"]),
    Case("costs a string", "thresholds", costs_file(stages_costs("fast", 1, 1)), ["stages[0].latency_ms"]),
    Case("costs for 2 of 3 stages", "thresholds", costs_file(stages_costs(1, 2)), ["2 stages but the bundle has 3"]),
    # 3. profiles given to report (the previous report stays byte-identical)
    Case("profile.json not JSON", "report", bad_profile(lambda p: None, raw="{oops"), ["not valid JSON"]),
    Case("profile without stages", "report", bad_profile(lambda p: p.pop("stages")), ["field stages is missing"]),
    Case(
        "profile stages an object",
        "report",
        bad_profile(lambda p: p.update(stages={"0": 1})),
        ["field stages", "must be array"],
    ),
    Case(
        "profile latency a string",
        "report",
        bad_profile(lambda p: p["exits"][0].update(latency_ms="fast")),
        ["exits[0].latency_ms"],
    ),
    Case(
        "profile sweep fractions strings",
        "report",
        bad_profile(lambda p: p["accuracy"]["sweep"][0].update(exit_fraction=["x"])),
        ["accuracy.sweep[0].exit_fraction[0]"],
    ),
    Case(
        "profile holds Infinity",
        "report",
        bad_profile(lambda p: None, raw='{"schema_version": 1, "kind": "hisd-edge-profile", "batch": Infinity}'),
        ["Infinity"],
    ),
    Case("profile nested 100000 deep", "report", bad_profile(lambda p: None, raw=nested(100000)), ["nested"]),
    Case("profile.json is a FIFO (must not hang)", "report", profile_fifo, ["no profile.json there"]),
    Case(
        "profile --out on a filesystem that refuses writes",
        "profile",
        lambda kit: [*VERB_ARGS["profile"][:-1], "/sys/hisd-report"],
        ["cannot write"],
    ),
    Case(
        "bench --out on a filesystem that refuses writes",
        "bench",
        lambda kit: [*VERB_ARGS["bench"], "--out", "/sys/b.json"],
        ["cannot write"],
    ),
    # run --thresholds: the same range check as the manifest
    Case(
        "--thresholds 7",
        "run",
        lambda kit: [*VERB_ARGS["run"], "--thresholds", "7,0.5,none"],
        ["thresholds[0]", "<= 1"],
    ),
    Case("--thresholds inf", "run", lambda kit: [*VERB_ARGS["run"], "--thresholds", "inf,0.5,none"], ["thresholds[0]"]),
    Case("--thresholds nan", "run", lambda kit: [*VERB_ARGS["run"], "--thresholds", "nan,0.5,none"], ["not a number"]),
]

_TABLE: List[str] = []


def _case_id(case: Case) -> str:
    return f"{case.verb}: {case.name}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_hostile_case(case: Case, world: World, tiny_checkpoint, png_bomb, base_report, hisd):
    kit = Kit(world=world, checkpoint=tiny_checkpoint, png_bomb=png_bomb)
    kit.report = base_report  # type: ignore[attr-defined]
    argv = case.setup(kit) or VERB_ARGS[case.verb]
    before = world.snapshot()
    result = hisd(*argv)
    line = assert_refused(result, *case.needles, verb=case.verb.split()[0])
    assert world.snapshot() == before, "a refused command changed files"
    _TABLE.append(f"| {case.name} | {case.verb} | exit 2: `{line[len('hisd-edge ') :][:150]}` |")


def test_catalogue_is_large_enough():
    assert len(CASES) >= 60
    assert {c.verb.split()[0] for c in CASES} >= {
        "run",
        "build",
        "thresholds",
        "bench",
        "profile",
        "inspect",
        "check",
        "report",
        "convert",
        "train",
    }


def teardown_module(module: Any) -> None:
    target = os.environ.get("HISD_HOSTILE_TABLE")
    if target and _TABLE:
        Path(target).write_text("| case | verb | outcome |\n|---|---|---|\n" + "\n".join(_TABLE) + "\n")
