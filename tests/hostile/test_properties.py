"""Property tests: generated manifests, checkpoint metadata, costs files, profiles and array headers.

Each parser gets valid documents with random damage (values replaced by arbitrary JSON, keys
deleted or added, at any depth) and arbitrary JSON, and must either accept the input or refuse
it with the user-error family (HisdError): never another exception, never unbounded memory (a
hostile size in a header must be refused, not allocated; the peak RSS of the whole run is
checked).
"""

from __future__ import annotations

import copy
import json
import resource
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisd_edge.errors import HisdError

SETTINGS: Dict[str, Any] = {
    "max_examples": 40,
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 2**31, 2**40, 2**63, 30000, 10**11])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["..", "../x", "/etc/passwd", "a/../../b", "stage0.onnx", "fp32", "batch", "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def damaged(draw: Any, document: Any) -> Any:
    """``document`` with 1-4 random edits at random depths."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 4))):
        node, parent, key = doc, None, None
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if parent is None:
            if action == "replace":
                doc = draw(json_values)
            continue
        if action == "replace":
            parent[key] = draw(json_values)
        elif action == "delete":
            del parent[key]
        elif isinstance(node, dict):
            node[draw(st.text(max_size=8))] = draw(json_values)
        elif isinstance(node, list):
            node.append(draw(json_values))
    return doc


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def peak_guard():
    """The whole module's peak RSS may grow by at most 1 GiB (a hostile size allocated would be many)."""
    before = _peak_mib()
    yield
    assert _peak_mib() - before < 1024, f"peak RSS grew from {before:.0f} to {_peak_mib():.0f} MiB"


# -- manifests -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest_home(base_bundle, tmp_path_factory):
    home = tmp_path_factory.mktemp("manifests") / "bundle"
    shutil.copytree(base_bundle, home)
    return home, json.loads((base_bundle / "manifest.json").read_text())


def _exercise_bundle(home: Path, document: Any) -> None:
    from hisd_edge.bundle import Bundle
    from hisd_edge.runtime.policies import bundle_exit_kind, policy_from_manifest

    (home / "manifest.json").write_text(json.dumps(document))
    try:
        bundle = Bundle.open(home)
        bundle.verify()
        bundle.preprocessing  # noqa: B018 - builds the Preprocessing
        if bundle.policy:
            policy_from_manifest(bundle.policy, bundle.num_stages, bundle_exit_kind(bundle.exits))
    except HisdError:
        pass


@settings(**SETTINGS)
@given(data=st.data())
def test_damaged_manifests_open_or_refuse(manifest_home, peak_guard, data):
    home, manifest = manifest_home
    _exercise_bundle(home, data.draw(damaged(manifest)))


@settings(**SETTINGS)
@given(document=json_values)
def test_arbitrary_json_as_a_manifest_is_refused(manifest_home, peak_guard, document):
    home, _ = manifest_home
    _exercise_bundle(home, document)


# -- checkpoint metadata ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_parts(tiny_checkpoint):
    raw = tiny_checkpoint.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return header, raw[8 + length :], json.loads(header["__metadata__"]["hisd_edge"])


def _exercise_checkpoint(header: Any, data: bytes) -> None:
    from hisd_edge import checkpoint

    text = json.dumps(header).encode()
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + data)
        handle.flush()
        path = Path(handle.name)
        try:
            meta = checkpoint.read_metadata(path)
            if meta["arch"]:
                checkpoint._check_weights_fit(path, meta["arch"], checkpoint._header(path))
        except HisdError:
            pass


@settings(**SETTINGS)
@given(data=st.data())
def test_damaged_checkpoint_metadata_reads_or_refuses(checkpoint_parts, peak_guard, data):
    header, weights, meta = checkpoint_parts
    header = copy.deepcopy(header)
    header["__metadata__"]["hisd_edge"] = json.dumps(data.draw(damaged(meta)))
    _exercise_checkpoint(header, weights)


@settings(**SETTINGS)
@given(data=st.data())
def test_damaged_safetensors_headers_read_or_refuse(checkpoint_parts, peak_guard, data):
    header, weights, _ = checkpoint_parts
    _exercise_checkpoint(data.draw(damaged(header)), weights)


# -- costs files and profiles ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def profile_document(base_report):
    return json.loads((base_report / "profile.json").read_text())


def _exercise_costs(document: Any) -> None:
    from hisd_edge.runtime.thresholds import read_profile_costs

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profile.json"
        path.write_text(json.dumps(document))
        for objective in ("latency", "energy"):
            try:
                values, _ = read_profile_costs(path, 3, objective)
            except HisdError:
                continue
            assert len(values) == 3 and all(0 < v < float("inf") for v in values)


@settings(**SETTINGS)
@given(data=st.data())
def test_damaged_costs_files_read_or_refuse(profile_document, peak_guard, data):
    _exercise_costs(data.draw(damaged(profile_document)))


@settings(**SETTINGS)
@given(document=json_values)
def test_arbitrary_json_as_costs_is_refused_or_read(peak_guard, document):
    _exercise_costs(document)


@settings(**SETTINGS)
@given(
    stages=st.lists(
        st.fixed_dictionaries({"index": st.integers(-2, 4), "latency_ms": json_values, "energy_mj": json_values}),
        max_size=5,
    )
)
def test_generated_cost_entries(peak_guard, stages):
    _exercise_costs({"stages": stages})


@settings(**{**SETTINGS, "max_examples": 8})
@given(data=st.data())
def test_damaged_profiles_render_or_refuse(profile_document, peak_guard, data):
    """What ``hisd-edge report`` does: load (schema), then render HTML, CSV and plots."""
    from hisd_edge.profile.report import write_report
    from hisd_edge.profile.schema import load_profile

    document = data.draw(damaged(profile_document))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "in").mkdir()
        (Path(folder) / "in" / "profile.json").write_text(json.dumps(document))
        try:
            profile = load_profile(Path(folder) / "in")
            write_report(profile, Path(folder) / "out")
        except HisdError:
            pass


@pytest.mark.parametrize(
    "field, value",
    [("flags", 5), ("flags", [1]), ("nvpmodel_start", 3), ("jetson_clocks_end", "on"), ("trusted", "yes")],
)
def test_profile_conditions_of_the_wrong_type_are_refused(profile_document, tmp_path, field, value):
    """Found by the property above: a report crashed on conditions fields of the wrong type."""
    from hisd_edge.profile.schema import load_profile

    document = copy.deepcopy(profile_document)
    document.setdefault("conditions", {})
    document["conditions"] = {**(document["conditions"] or {}), field: value}
    (tmp_path / "profile.json").write_text(json.dumps(document))
    with pytest.raises(HisdError, match="conditions"):
        load_profile(tmp_path)


# -- array headers ---------------------------------------------------------------------------------
DESCRS = [
    "|u1", "<u2", "<f4", "<f8", ">f4", "<i8", "|i1", "<f2", "|b1", "<c8", "|O", "<U5", "|S3", "|V8", "<M8[s]",
    [("a", "<f4")], "<f4x", "zz", 7,
]  # fmt: skip


def _npy(descr: Any, shape: Any, fortran: Any, payload: bytes, version: int) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("utf-8")
    prefix = 10 if version == 1 else 12
    header += b" " * ((64 - (prefix + len(header) + 1) % 64) % 64) + b"\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + payload


headers = st.builds(
    _npy,
    descr=st.sampled_from(DESCRS),
    shape=st.one_of(
        st.lists(st.sampled_from([0, 1, 2, 3, 28, 10**11, 2**62, -1]), max_size=6).map(tuple),
        json_values,
    ),
    fortran=st.sampled_from([False, True, "yes", None]),
    payload=st.binary(max_size=256),
    version=st.sampled_from([1, 2]),
)


def _exercise_array(blob: bytes, suffix: str) -> None:
    from hisd_edge import data

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"a{suffix}"
        if suffix == ".npz":
            import zipfile

            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("images.npy", blob)
                archive.writestr("labels.npy", blob)
        else:
            path.write_bytes(blob)
        try:
            data.numpy_file(path)
        except HisdError:
            pass


@settings(**{**SETTINGS, "max_examples": 120})
@given(blob=headers, suffix=st.sampled_from([".npy", ".npz"]))
def test_generated_array_headers_load_or_refuse(peak_guard, blob, suffix):
    _exercise_array(blob, suffix)


@settings(**SETTINGS)
@given(blob=st.binary(max_size=512))
def test_arbitrary_bytes_as_npy_are_refused(peak_guard, blob):
    _exercise_array(b"\x93NUMPY" + blob, ".npy")


def test_arrays_that_should_load_do(tmp_path):
    """The property tests must not pass by refusing everything."""
    from hisd_edge import data

    good: List[Any] = [np.zeros((3, 28, 28), np.uint8), np.ones((2, 1, 28, 28), np.float32)]
    for i, array in enumerate(good):
        np.save(tmp_path / f"{i}.npy", array)
        samples = data.numpy_file(tmp_path / f"{i}.npy")
        assert len(samples) == len(array)
    np.savez(tmp_path / "l.npz", images=good[0], labels=np.array([0, 1, 2]))
    assert list(data.numpy_file(tmp_path / "l.npz").labels) == [0, 1, 2]
