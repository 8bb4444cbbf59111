"""Bundle.verify: every file the manifest names is checked, the calibration caches included."""

import json

import pytest

from hisd_edge.bundle import MANIFEST, Bundle, file_record, write_manifest
from hisd_edge.errors import BundleError


def _bundle(root):
    """A two-stage bundle with every kind of file record the manifest has (contents are stand-ins)."""
    root.mkdir()
    files = {
        "stage0.onnx": b"stage 0 fp32",
        "stage1.onnx": b"stage 1 fp32",
        "stage0.int8.onnx": b"stage 0 int8",
        "stage1.int8.onnx": b"stage 1 int8",
        "stage0.int8.cache": b"TRT-8502-EntropyCalibration2\ninput: 3c010a14\n",
        "stage1.int8.cache": b"TRT-8502-EntropyCalibration2\nfeat0: 3d8b2e4a\n",
        "full.onnx": b"monolithic",
        "engines/dev/stage0.plan": b"plan 0",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    stages = []
    for k in range(2):
        int8 = file_record(root, f"stage{k}.int8.onnx")
        int8["calibration_cache"] = file_record(root, f"stage{k}.int8.cache")
        stages.append({"index": k, "files": {"fp32": file_record(root, f"stage{k}.onnx"), "int8": int8}})
    engine = {"files": [{**file_record(root, "engines/dev/stage0.plan"), "stage": 0}]}
    write_manifest(
        root, {"name": "b", "stages": stages, "full_model": file_record(root, "full.onnx"), "engines": [engine]}
    )
    return root


@pytest.mark.parametrize(
    "name",
    [
        "stage1.onnx",
        "stage0.int8.onnx",
        "stage1.int8.cache",
        "stage0.int8.cache",
        "full.onnx",
        "engines/dev/stage0.plan",
    ],
)
def test_a_tampered_file_is_refused_by_name(tmp_path, name):
    root = _bundle(tmp_path / "b")
    Bundle.open(root).verify()  # intact: passes
    path = root / name
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped, same size
    with pytest.raises(BundleError, match="checksum mismatch") as info:
        Bundle.open(root, verify=False).verify()
    assert name.split("/")[-1] in str(info.value)


def test_a_missing_cache_is_refused_by_name(tmp_path):
    root = _bundle(tmp_path / "b")
    (root / "stage1.int8.cache").unlink()
    with pytest.raises(BundleError, match=r"stage1\.int8\.cache: missing"):
        Bundle.open(root, verify=False).verify()


def test_open_verifies_by_default(tmp_path):
    root = _bundle(tmp_path / "b")
    (root / "stage0.onnx").write_bytes(b"altered")
    with pytest.raises(BundleError, match="stage0.onnx"):
        Bundle.open(root)


def test_update_rewrites_the_manifest_and_keeps_it_on_failure(tmp_path):
    root = _bundle(tmp_path / "b")
    bundle = Bundle.open(root)
    before = (root / MANIFEST).read_text()
    with pytest.raises(RuntimeError):
        bundle.update(lambda m: (m.__setitem__("name", "half"), (_ for _ in ()).throw(RuntimeError("crash"))))
    assert (root / MANIFEST).read_text() == before and bundle.name == "b"
    bundle.update(lambda m: m.__setitem__("name", "renamed"))
    assert json.loads((root / MANIFEST).read_text())["name"] == "renamed" and Bundle.open(root).name == "renamed"
