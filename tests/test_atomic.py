import os

import pytest

from hisd_edge import atomic


def test_atomic_path_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_dir_replace_and_refuse(tmp_path):
    target = tmp_path / "bundle"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("one")
    with pytest.raises(FileExistsError), atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("two")
    assert (target / "f").read_text() == "one"
    with pytest.raises(RuntimeError), atomic.atomic_dir(target, replace=True) as tmp:
        (tmp / "f").write_text("two")
        raise RuntimeError("crash")
    assert (target / "f").read_text() == "one"
    with atomic.atomic_dir(target, replace=True) as tmp:
        (tmp / "f").write_text("three")
    assert (target / "f").read_text() == "three"
    assert sorted(os.listdir(tmp_path)) == ["bundle"]


def test_sha256(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert atomic.sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_artifacts_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        with atomic.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "g").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
