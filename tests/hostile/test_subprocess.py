"""Hostile inputs through a real ``hisd-edge`` process: what the terminal shows, exactly.

In process, logging and C libraries' output do not reach the captured stderr the way they reach a
terminal; these cases run the real command so that warnings printed by OpenCV, libpng or FFmpeg
ahead of the error, or a traceback from any layer, would be seen.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import List

import numpy as np
import pytest
from hostile_helpers import Result, assert_refused, tree_snapshot

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def hisd_process(*argv: object, cwd: Path) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "hisd_edge", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=600,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _png_with_libpng_warning(path: Path) -> Path:
    """A valid 28x28 PNG with a malformed iCCP chunk: libpng decodes it and prints 'libpng warning: iCCP: ...'."""
    import cv2

    data = bytes(cv2.imencode(".png", np.full((28, 28), 128, np.uint8))[1])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(data[:33] + chunk(b"iCCP", b"xxx\0\0" + zlib.compress(b"not a profile")) + data[33:])
    return path


def test_library_warnings_stay_behind_verbose(base_bundle, tmp_path):
    """libpng's warning does not reach the terminal; with -v it does (in the debug log)."""
    image = _png_with_libpng_warning(tmp_path / "iccp.png")
    quiet = hisd_process("run", base_bundle, image, cwd=tmp_path)
    assert quiet.code == 0, quiet.err
    assert "libpng" not in quiet.err and quiet.err.strip() == "", quiet.err
    loud = hisd_process("-v", "run", base_bundle, image, cwd=tmp_path)
    assert loud.code == 0 and "libpng warning" in loud.err, loud.err


def test_broken_video_is_one_line(base_bundle, tmp_path):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42" + os.urandom(4096))
    assert_refused(hisd_process("run", base_bundle, video, cwd=tmp_path), "cannot be opened as a video", verb="run")


def test_broken_images_in_a_folder_are_one_line_each_way(base_bundle, tmp_path, png_bomb):
    folder = tmp_path / "calib" / "3"
    folder.mkdir(parents=True)
    shutil.copy2(png_bomb, folder / "bomb.png")
    (folder / "garbage.png").write_bytes(b"not an image")
    result = hisd_process("thresholds", base_bundle, "--data", tmp_path / "calib", "--no-progress", cwd=tmp_path)
    assert_refused(result, "none of its 2 image files", verb="thresholds")


@pytest.mark.parametrize(
    "argv_of",
    [
        lambda w: ["inspect", w["symlinked"]],
        lambda w: ["run", w["bundle"], w["bomb"]],
        lambda w: ["thresholds", w["bundle"], "--costs", "/dev/zero", "--no-progress"],
        lambda w: ["report", w["garbage_profile"]],
        lambda w: ["convert", w["pickle"], "--out", w["root"] / "out"],
        lambda w: ["build", w["symlinked"], "--no-progress"],
        lambda w: ["bench", w["symlinked"], "--data", "random", "--seconds", "1"],
        lambda w: ["profile", w["symlinked"], "--data", "default:test", "--out", w["root"] / "r"],
        lambda w: ["check", w["symlinked"]],
    ],
    ids=["inspect", "run", "thresholds", "report", "convert", "build", "bench", "profile", "check"],
)
def test_real_process_one_line_nothing_changed(base_bundle, png_bomb, tmp_path, argv_of):
    bundle = tmp_path / "bundle"
    shutil.copytree(base_bundle, bundle)
    symlinked = tmp_path / "symlinked"
    shutil.copytree(base_bundle, symlinked)
    (symlinked / "stage1.onnx").unlink()
    (symlinked / "stage1.onnx").symlink_to(bundle / "stage1.onnx")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "profile.json").write_text('{"schema_version": 1, "kind": "hisd-edge-profile"}')
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04" + b"\0" * 64)
    shutil.copy2(png_bomb, tmp_path / "bomb.png")
    world = {
        "root": tmp_path,
        "bundle": bundle,
        "symlinked": symlinked,
        "bomb": tmp_path / "bomb.png",
        "garbage_profile": tmp_path / "garbage",
        "pickle": tmp_path / "model.safetensors",
    }
    argv: List[object] = argv_of(world)
    before = tree_snapshot(tmp_path)
    assert_refused(hisd_process(*argv, cwd=tmp_path), verb=str(argv[0]))
    assert tree_snapshot(tmp_path) == before


def _unshare_available() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="needs root and unshare -m to mount a tiny filesystem")
@pytest.mark.parametrize("condition", ["full", "read-only"])
def test_convert_on_a_full_or_read_only_filesystem(tiny_checkpoint, base_bundle, tmp_path, condition):
    """A real tmpfs in a private mount namespace: ENOSPC while writing, or read-only before any work.

    The previous bundle stays byte-identical and nothing is left behind.
    """
    mount = tmp_path / "mnt"
    mount.mkdir()
    size_kib = sum(p.stat().st_size for p in base_bundle.iterdir()) // 1024 + 64
    options = f"size={size_kib}k"
    convert = [
        sys.executable, "-m", "hisd_edge", "convert", str(tiny_checkpoint), "--out", f"{mount}/tiny", "--force",
        "--precision", "fp32", "--val-count", "16", "--no-progress",
    ]  # fmt: skip
    script = (
        f"mount -t tmpfs -o {options} tmpfs {mount} && cp -a {base_bundle} {mount}/tiny && "
        f"sha256sum {mount}/tiny/* > {tmp_path}/before.txt && "
        + (f"mount -o remount,ro {mount} && " if condition == "read-only" else "")
        + " ".join(convert)
        + f" 2> {tmp_path}/err.txt; echo $? > {tmp_path}/rc.txt; sha256sum {mount}/tiny/* > {tmp_path}/after.txt; "
        f"ls -A {mount} > {tmp_path}/ls.txt"
    )
    subprocess.run(["unshare", "-m", "sh", "-c", script], env=ENV, timeout=900, check=True)
    err = (tmp_path / "err.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() == "2", err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    expected = "no space left" if condition == "full" else "cannot write"
    assert expected in lines[0], lines[0]
    assert (tmp_path / "before.txt").read_text() == (tmp_path / "after.txt").read_text()
    assert (tmp_path / "ls.txt").read_text().split() == ["tiny"]  # no temporary left next to it
