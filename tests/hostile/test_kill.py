"""SIGKILL at every point of replacing a bundle, and a real ``convert --force`` killed mid-write.

The write step of ``convert --force`` (:func:`hisd_edge.convert.writer.bundle_dir`, which is
:func:`hisd_edge.atomic.atomic_dir` with a check in front) is instrumented in a forked child:
every file system operation it makes (creating, writing, chmod, flock, renames and the atomic
exchange, deleting) is counted, and the child kills itself with SIGKILL at operation N, for
every N until the write completes. After each kill, ``--out`` must be the old bundle or the new
one, byte for byte, and the next write must remove every leftover. Both ways of switching are
covered: the atomic exchange, and the two-rename fallback for filesystems that refuse it (where
the next run puts the old bundle back if the kill fell between the renames).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import pytest
from hostile_helpers import tree_snapshot

from hisd_edge import atomic
from hisd_edge.convert import writer


def _instrument(monkeypatch: pytest.MonkeyPatch, kill_at: int) -> None:
    """Count the file system operations of the write step; SIGKILL this process at number ``kill_at``."""
    count = [0]

    def step() -> None:
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            step()
            result = real(*args, **kwargs)
            step()
            return result

        monkeypatch.setattr(owner, name, wrapped)

    for owner, name in [
        (os, "rename"),
        (os, "replace"),
        (os, "rmdir"),
        (os, "chmod"),
        (os, "unlink"),
        (shutil, "copy2"),
        (shutil, "rmtree"),
        (atomic, "_renameat2"),
        (atomic, "_lock"),
        (atomic.tempfile, "mkdtemp"),
        (atomic.tempfile, "mkstemp"),
    ]:
        wrap(owner, name)


def _write_new_bundle(new_files: Path, out: Path) -> None:
    """The write step of convert --force: assemble in the temporary directory, then switch."""
    with writer.bundle_dir(out, force=True) as tmp:
        for path in sorted(new_files.iterdir()):
            shutil.copy2(path, tmp / path.name)


def _child(action: Callable[[], None]) -> int:
    """Run ``action`` in a forked child; its exit status (or -signal)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            action()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.fixture()
def old_and_new(base_bundle, tmp_path) -> Tuple[Path, Path, Path, Dict[str, Any], Dict[str, Any]]:
    """(--out, a pristine copy of the old bundle, the new bundle's files, old tree, new tree)."""
    out = tmp_path / "engines" / "tiny"
    old = tmp_path / "old-copy"
    shutil.copytree(base_bundle, old)
    new = tmp_path / "new-files"
    shutil.copytree(base_bundle, new)
    (new / "stage0.onnx").write_bytes((new / "stage0.onnx").read_bytes() + b"new")
    (new / "extra.txt").write_text("only in the new bundle\n")
    return out, old, new, tree_snapshot(old), tree_snapshot(new)


@pytest.mark.parametrize("switch", ["exchange", "two renames"])
def test_sigkill_at_every_point_of_the_write_leaves_old_or_new(old_and_new, monkeypatch, switch):
    out, old, new, old_tree, new_tree = old_and_new
    if switch == "two renames":  # a filesystem that refuses RENAME_EXCHANGE
        real = atomic._renameat2
        monkeypatch.setattr(
            atomic, "_renameat2", lambda a, b, flags: False if flags == atomic.RENAME_EXCHANGE else real(a, b, flags)
        )
    outcomes = {"old": 0, "new": 0, "repaired": 0}
    kill_at = 0
    while True:
        kill_at += 1
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(old, out)

        def action() -> None:
            _instrument(monkeypatch, kill_at)  # noqa: B023 - runs in the child, now
            _write_new_bundle(new, out)

        status = _child(action)
        assert status in (0, -signal.SIGKILL), f"kill at {kill_at}: the write failed ({status})"
        if not out.exists():  # killed between the two renames of the fallback: the next run repairs it
            assert switch == "two renames", f"kill at operation {kill_at}: --out is missing"
            outcomes["repaired"] += 1
        atomic.remove_leftovers(out)  # what the next run does first
        seen = tree_snapshot(out)
        assert seen in (old_tree, new_tree), f"kill at operation {kill_at}: --out is neither the old nor the new bundle"
        outcomes["old" if seen == old_tree else "new"] += 1
        assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"], f"leftovers after a kill at {kill_at}"
        if status == 0:
            break
    print(f"{switch}: {kill_at} kill points, outcomes {outcomes}")
    assert outcomes["old"] >= 10 and outcomes["new"] >= 2, outcomes
    assert (outcomes["repaired"] > 0) == (switch == "two renames"), outcomes


def test_scratch_directories_of_killed_runs_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.tempfile, "tempdir", str(tmp_path))

    def killed() -> None:
        with writer.scratch_dir() as scratch:
            (scratch / "calibration.npy").write_bytes(b"x" * 100)
            os.kill(os.getpid(), signal.SIGKILL)

    assert _child(killed) == -signal.SIGKILL
    assert [p.name.startswith("hisd-convert-") for p in tmp_path.iterdir()] == [True]
    with writer.scratch_dir() as scratch:  # the next convert
        assert list(tmp_path.iterdir()) == [scratch]
    assert list(tmp_path.iterdir()) == []


def test_a_running_writer_s_temporaries_are_left_alone(tmp_path):
    """Leftover cleanup removes only what dead writers left: a live one holds its lock."""
    target = tmp_path / "b"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("x")
        assert atomic.remove_leftovers(target) == []
        assert tmp.exists()
    assert (target / "f").read_text() == "x"


KILL_CONVERT = """
import os, signal, sys
from hisd_edge import atomic
point = sys.argv[1]
real_exchange = atomic.exchange
def exchange(a, b):
    if point == "before-exchange":
        os.kill(os.getpid(), signal.SIGKILL)
    done = real_exchange(a, b)
    if point == "after-exchange":
        os.kill(os.getpid(), signal.SIGKILL)
    return done
atomic.exchange = exchange
from hisd_edge.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("point", ["before-exchange", "after-exchange"])
def test_real_convert_force_killed_around_the_switch(base_bundle, tiny_checkpoint, tmp_path, point):
    from hisd_edge.bundle import Bundle
    from hisd_edge.convert import convert_checkpoint

    out = tmp_path / "engines" / "tiny"
    shutil.copytree(base_bundle, out)
    old_tree = tree_snapshot(out)
    argv = ["convert", str(tiny_checkpoint), "--out", str(out), "--force", "--precision", "fp32", "--val-count", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_CONVERT, point, *argv, "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    bundle = Bundle.open(out)
    bundle.verify()  # complete, whichever it is
    if point == "before-exchange":
        assert tree_snapshot(out) == old_tree
    else:
        assert list(bundle.manifest["stages"][0]["files"]) == ["fp32"]  # the new one (fp32 only)
    assert [p for p in out.parent.iterdir() if p.name != "tiny"], "the killed convert left its temporary directory"
    # The next convert recognises the dead run's leftovers and removes them.
    convert_checkpoint(tiny_checkpoint, out, precisions=("fp32",), val_count=16, force=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]
