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


# A crash in the middle of a write must leave the previous version whole: the bytes go to a
# temporary file that is renamed over the target only when complete.
_CRASH_MID_WRITE = """
import resource, signal, sys
from hisd_edge import atomic
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; by default the kernel kills the process
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # ... as it writes past 4 KiB into any file
atomic.write_text(sys.argv[1], "new " * 100_000)
"""


def test_a_process_killed_mid_write_leaves_the_old_file_intact(tmp_path):
    import signal
    import subprocess
    import sys

    target = tmp_path / "manifest.json"
    target.write_text("old and complete")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_MID_WRITE, str(target)], capture_output=True, timeout=120, env=env
    )
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr  # it really died mid-write
    assert target.read_text() == "old and complete"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert all(p.name.startswith(".manifest.json.") for p in leftovers)  # at most a hidden temp file, never the target


def test_a_write_that_fails_half_way_changes_nothing(tmp_path):
    target = tmp_path / "cache.txt"
    atomic.write_text(target, "old")
    with pytest.raises(UnicodeEncodeError):
        atomic.write_text(target, "new text, then a lone surrogate that UTF-8 cannot encode: \ud800")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["cache.txt"]


def test_write_bytes_and_json_replace_whole_files(tmp_path):
    target = tmp_path / "f"
    atomic.write_bytes(target, b"a" * 10)
    atomic.write_bytes(target, b"b")
    assert target.read_bytes() == b"b"
    atomic.write_json(target, {"k": [1, 2]})
    assert target.read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'
