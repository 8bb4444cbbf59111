"""Bundle.verify: every file the manifest names is checked, the calibration caches included."""

import json

import pytest

from hisd_edge.bundle import MANIFEST, Bundle, file_record, write_manifest
from hisd_edge.errors import BundleError
from hisd_edge.preprocess import Preprocessing


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
        inputs = [{"name": "input" if k == 0 else "feat0", "shape": ["batch", 1, 28, 28], "dtype": "float32"}]
        outputs = [{"name": "feat0"}] if k == 0 else []
        stages.append(
            {
                "index": k,
                "inputs": inputs,
                "outputs": [*outputs, {"name": f"exit{k}"}],
                "files": {"fp32": file_record(root, f"stage{k}.onnx"), "int8": int8},
            }
        )
    engine = {
        "device": {"key": "dev"},
        "tensorrt_version": "10.3.0",
        "precision": "fp32",
        "files": [{**file_record(root, "engines/dev/stage0.plan"), "stage": 0}],
    }
    preprocessing = Preprocessing(input_size=(28, 28), channels=1, color_order="gray", mean=(0.5,), std=(0.5,))
    manifest = {
        "schema_version": 1,
        "kind": "hisd-edge-bundle",
        "name": "b",
        "preprocessing": preprocessing.to_dict(),
        "stages": stages,
        "exits": [{"index": k, "stage": k, "output": f"exit{k}"} for k in range(2)],
        "full_model": file_record(root, "full.onnx"),
        "engines": [engine],
    }
    write_manifest(root, manifest)
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


def test_open_verifies_each_file_when_first_used(tmp_path):
    root = _bundle(tmp_path / "b")
    (root / "stage0.onnx").write_bytes(b"altered")
    bundle = Bundle.open(root)  # opening checks the manifest; a file is checked when a run first uses it
    bundle.stage_path(1)  # intact
    with pytest.raises(BundleError, match="stage0.onnx"):
        bundle.stage_path(0)


def test_update_rewrites_the_manifest_and_keeps_it_on_failure(tmp_path):
    root = _bundle(tmp_path / "b")
    bundle = Bundle.open(root)
    before = (root / MANIFEST).read_text()
    with pytest.raises(RuntimeError):
        bundle.update(lambda m: (m.__setitem__("name", "half"), (_ for _ in ()).throw(RuntimeError("crash"))))
    assert (root / MANIFEST).read_text() == before and bundle.name == "b"
    bundle.update(lambda m: m.__setitem__("name", "renamed"))
    assert json.loads((root / MANIFEST).read_text())["name"] == "renamed" and Bundle.open(root).name == "renamed"
