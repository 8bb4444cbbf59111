"""Confinement below the CLI: the path check itself, engines written by build, manifest updates, and
verification of only the files a run uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile_helpers import tree_snapshot

from hisd_edge.bundle import Bundle, confine
from hisd_edge.errors import BundleError


@pytest.mark.parametrize(
    "relpath",
    ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "", "a\\..\\b", "a\x00b", "a\nb", "a/", ".."],
)
def test_confine_refuses_what_is_not_a_plain_relative_path(tmp_path, relpath):
    with pytest.raises(BundleError, match="not a plain relative path inside the bundle"):
        confine(tmp_path, relpath)


def test_confine_refuses_symlinks_anywhere_on_the_way(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "engines").symlink_to(outside)
    with pytest.raises(BundleError, match="engines: is a symbolic link"):
        confine(root, "engines/deep/missing/stage0.plan")  # a link early on, a missing tail after it
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="symbolic link"):
        confine(root, "dangling")
    assert confine(root, "new/dir/file") == root / "new" / "dir" / "file"  # nothing there yet: fine


def test_build_writes_engines_only_inside_the_bundle(base_bundle, tmp_path):
    """A bundle whose engines/ folder links elsewhere: publishing the plans is refused, nothing lands outside."""
    from hisd_edge.cuda.api import DeviceInfo
    from hisd_edge.engine import store

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(base_bundle, bundle_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (bundle_dir / "engines").symlink_to(outside)
    before = tree_snapshot(tmp_path)
    bundle = Bundle.open(bundle_dir)
    device = DeviceInfo(0, "Orin", (8, 7), True, True, 1 << 30, multiprocessor_count=16)
    record = store.new_record(device, "10.3.0", {"precision": "fp16", "requested": "fp16"})
    with pytest.raises(BundleError, match="engines: is a symbolic link"):
        store.publish(bundle, record, [b"plan0", b"plan1", b"plan2"])
    assert tree_snapshot(tmp_path) == before


def test_build_writes_engines_where_the_record_says(base_bundle, tmp_path):
    from hisd_edge.cuda.api import DeviceInfo
    from hisd_edge.engine import store

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(base_bundle, bundle_dir)
    bundle = Bundle.open(bundle_dir)
    device = DeviceInfo(0, "Orin", (8, 7), True, True, 1 << 30, multiprocessor_count=16)
    record = store.new_record(device, "10.3.0", {"precision": "fp16", "requested": "fp16"})
    stored = store.publish(bundle, record, [b"plan0", b"plan1", b"plan2"])
    assert stored["files"][0]["path"] == "engines/orin-sm87-16sm/trt-10.3.0/fp16/stage0.plan"
    reopened = Bundle.open(bundle_dir)
    reopened.verify()
    assert store.read_plan(reopened, reopened.manifest["engines"][0], 1) == b"plan1"


def test_an_update_that_would_leave_the_bundle_is_refused(base_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(base_bundle, bundle_dir)
    before = (bundle_dir / "manifest.json").read_bytes()
    bundle = Bundle.open(bundle_dir)
    with pytest.raises(BundleError, match="full_model.path"):
        bundle.update(lambda m: m["full_model"].update(path="../elsewhere.onnx"))
    with pytest.raises(BundleError, match="non-finite"):
        bundle.update(lambda m: m["policy"].update(thresholds=[float("nan"), 0.5, None]))
    with pytest.raises(BundleError, match="policy.thresholds"):
        bundle.update(lambda m: m["policy"].update(thresholds=[7, 0.5, None]))
    assert (bundle_dir / "manifest.json").read_bytes() == before


def test_only_the_files_a_run_uses_are_verified(base_bundle, tmp_path):
    """An altered int8 file does not stop an fp32 run; it is named when int8 is used, and by a full verify."""
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(base_bundle, bundle_dir)
    with open(bundle_dir / "stage2.int8.onnx", "ab") as handle:
        handle.write(b"\0")
    (bundle_dir / "full.onnx").unlink()
    bundle = Bundle.open(bundle_dir)
    assert bundle.stage_path(2, "fp32").is_file()
    with pytest.raises(BundleError, match=r"stage2\.int8\.onnx: file is \d+ bytes.*checksum mismatch"):
        bundle.stage_path(2, "int8")
    with pytest.raises(BundleError, match="full.onnx: missing"):
        bundle.full_model_path()
    with pytest.raises(BundleError):
        Bundle.open(bundle_dir).verify()


def test_inspect_verifies_every_file(base_bundle, tmp_path, capsys):
    from hisd_edge.cli import main

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(base_bundle, bundle_dir)
    (bundle_dir / "stage0.int8.cache").write_text("altered")
    assert main(["inspect", str(bundle_dir)]) == 2
    assert "stage0.int8.cache" in capsys.readouterr().err
    assert main(["inspect", str(bundle_dir), "--no-verify"]) == 0


def test_a_converted_manifest_is_valid_against_the_published_schema(base_bundle):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    from hisd_edge import schemas

    documents = [schemas.load_schema(n) for n in schemas.NAMES]
    registry = Registry().with_resources([(d["$id"], Resource.from_contents(d)) for d in documents])
    manifest = json.loads((Path(base_bundle) / "manifest.json").read_text())
    errors = list(Draft202012Validator(schemas.load_schema(schemas.MANIFEST), registry=registry).iter_errors(manifest))
    assert errors == []


def test_the_in_graph_artifact_is_confined_like_every_other_file(base_bundle, tmp_path):
    """The in-graph record (issue 17) goes through the same path check as the stage files."""
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(base_bundle, bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest.get("ingraph", {}).get("files"), "the converted fixture bundle has an in-graph artifact"
    (tmp_path / "outside.onnx").write_bytes(b"not a model")
    (bundle_dir / "linked.onnx").symlink_to(tmp_path / "outside.onnx")
    # refused by the schema's path pattern (naming the field), and by confine() (naming the link)
    for relpath, says in (("../outside.onnx", "ingraph"), ("linked.onnx", "linked.onnx: is a symbolic link")):
        for record in manifest["ingraph"]["files"].values():
            record["path"] = relpath
        (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=says):
            Bundle.open(bundle_dir)
