"""The published schemas: valid JSON Schema documents, shipped, listed in the README, one-line messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hisd_edge import schemas
from hisd_edge.errors import BundleError, InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", schemas.NAMES)
def test_documents_are_valid_json_schema(name):
    from jsonschema import Draft202012Validator

    document = schemas.load_schema(name)
    Draft202012Validator.check_schema(document)
    assert document["$id"].startswith("urn:hisd-edge:schema:") and document["title"]


def test_documents_are_shipped_and_listed():
    setup = (ROOT / "setup.cfg").read_text()
    assert "schemas/*.json" in setup
    readme = (ROOT / "README.md").read_text()
    for name in schemas.NAMES:
        assert schemas.schema_path(name).is_file()
        assert f"{name}.schema.json" in readme


def test_messages_name_the_field_in_one_line():
    manifest = {"schema_version": 1, "kind": "hisd-edge-bundle", "name": "x"}
    with pytest.raises(BundleError) as info:
        schemas.validate(manifest, schemas.MANIFEST, what="m.json", fix="convert again", error=BundleError)
    assert str(info.value) == "m.json: field stages is missing; convert again"
    costs = {"stages": [{"latency_ms": {"p50": "fast"}}]}
    with pytest.raises(InputError) as info:
        schemas.validate(costs, schemas.COSTS, what="c.json", fix="fix it")
    assert str(info.value).startswith("c.json: field stages[0].latency_ms") and "\n" not in str(info.value)


def test_policy_ranges_are_one_place():
    schemas.check_policy_thresholds("max_prob", [0.5, None, 1.0])
    schemas.check_policy_thresholds("stability", [-0.5, 0.99, None])
    schemas.check_policy_thresholds("patience", [2, 3, None])
    for kind, bad in [("max_prob", 1.5), ("entropy", -0.1), ("margin", 2), ("stability", -2), ("patience", 100)]:
        with pytest.raises(InputError, match=r"thresholds\[0\]"):
            schemas.check_policy_thresholds(kind, [bad, None])
    with pytest.raises(InputError, match="boolean"):
        schemas.check_policy_thresholds("max_prob", [True, None])


@pytest.mark.parametrize(
    "text,reason",
    [
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1e400}', "overflows"),
        ("[" * 5000 + "]" * 5000, "nested"),
        ('{"a": ' + "[" * 70 + "]" * 70 + "}", "nested"),
        ('{"a": ' + "9" * 5000 + "}", "out of range"),
        ("{oops", "not valid JSON"),
    ],
)
def test_strict_json(text, reason):
    with pytest.raises(ValueError, match=reason):
        schemas.loads(text)


def test_read_json_refuses_what_is_not_a_small_regular_file(tmp_path):
    import os

    (tmp_path / "big.json").write_text(json.dumps({"x": "y" * 2048}))
    with pytest.raises(InputError, match="more than"):
        schemas.read_json(tmp_path / "big.json", max_bytes=1024, fix="f")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(InputError, match="not a regular file"):
        schemas.read_json(tmp_path / "fifo.json", max_bytes=1024, fix="f")
    with pytest.raises(InputError, match="is a directory"):
        schemas.read_json(tmp_path, max_bytes=1024, fix="f")
    (tmp_path / "link.json").symlink_to(tmp_path / "big.json")
    with pytest.raises(InputError, match="symbolic link"):
        schemas.read_json(tmp_path / "link.json", max_bytes=1 << 20, fix="f", follow_symlinks=False)
    assert schemas.read_json(tmp_path / "link.json", max_bytes=1 << 20, fix="f")["x"]
