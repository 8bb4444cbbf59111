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


def test_directories_are_exchanged_in_one_step(tmp_path):
    """renameat2(RENAME_EXCHANGE): the new directory takes the old one's place, never a missing --out."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    inode_a = a.stat().st_ino
    assert atomic.exchange(a, b)  # ext4/tmpfs/xfs/btrfs: supported
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"
    assert b.stat().st_ino == inode_a


def test_replace_uses_the_exchange(tmp_path, monkeypatch):
    calls = []
    real = atomic.exchange
    monkeypatch.setattr(atomic, "exchange", lambda x, y: calls.append((x, y)) or real(x, y))
    target = tmp_path / "bundle"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("one")
    with atomic.atomic_dir(target, replace=True) as tmp:
        (tmp / "f").write_text("two")
    assert len(calls) == 1 and calls[0][1] == target
    assert (target / "f").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["bundle"]


def test_fallback_when_the_filesystem_refuses_the_exchange(tmp_path, monkeypatch):
    real = atomic._renameat2
    monkeypatch.setattr(
        atomic, "_renameat2", lambda a, b, flags: False if flags == atomic.RENAME_EXCHANGE else real(a, b, flags)
    )
    target = tmp_path / "bundle"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("one")
    with atomic.atomic_dir(target, replace=True) as tmp:
        (tmp / "f").write_text("two")
    assert (target / "f").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["bundle"]


def test_a_kill_between_the_fallback_renames_is_repaired_by_the_next_run(tmp_path):
    target = tmp_path / "bundle"
    old = tmp_path / ".bundle.x1y2.old"  # what a fallback replace left when killed after its first rename
    old.mkdir()
    (old / "f").write_text("old")
    half = tmp_path / ".bundle.z3.tmp"
    half.mkdir()
    (half / "f").write_text("new, complete or not")
    assert sorted(p.name for p in atomic.remove_leftovers(target)) == sorted([half.name, old.name])
    assert (target / "f").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["bundle"]


def test_leftovers_of_dead_writers_go_those_of_live_ones_stay(tmp_path):
    import fcntl

    target = tmp_path / "m.json"
    target.write_text("{}")
    dead = tmp_path / ".m.json.abc.tmp"
    dead.write_text("half")
    live = tmp_path / ".m.json.def.tmp"
    live.write_text("being written")
    with open(live) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        atomic.write_json(target, {"v": 2})
        assert live.exists() and not dead.exists()
    assert sorted(os.listdir(tmp_path)) == [".m.json.def.tmp", "m.json"]


def test_new_directory_never_replaces_one_that_appeared(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(FileExistsError), atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("new")
        target.mkdir()  # an empty directory appeared meanwhile: rename(2) alone would replace it
    assert list(target.iterdir()) == []


def test_json_is_written_strictly(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        atomic.write_json(tmp_path / "x.json", {"cost": float("inf")})
    assert not (tmp_path / "x.json").exists()
    assert os.listdir(tmp_path) == []


def test_published_lists_what_was_written(tmp_path):
    atomic.reset_published()
    atomic.write_text(tmp_path / "a", "x")
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    assert atomic.published() == [str(tmp_path / "a"), str(tmp_path / "d")]
    atomic.reset_published()
    assert atomic.published() == []


def test_check_writable(tmp_path):
    from hisd_edge.errors import InputError

    atomic.check_writable(tmp_path / "new" / "deeper" / "out")  # creates nothing
    assert os.listdir(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        atomic.check_writable(tmp_path / "file" / "out")
    with pytest.raises(InputError, match="cannot write"):
        atomic.check_writable("/sys/hisd-edge-out")  # sysfs refuses new files, even to root


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
