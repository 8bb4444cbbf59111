"""The hostile-input catalogue's world: one small real bundle, converted once, and a sandbox per case.

Each case gets a :class:`World`: a copy of the bundle at ``engines/tiny`` under its own temporary
directory (the command's working directory, so default outputs such as ``reports/`` land there
too), an ``outside/`` folder holding what a hostile bundle tries to reach (a copy of a real stage
file, so its checksum matches, and a copy of the manifest), and a snapshot of everything, so a
case can assert that a refused command changed nothing at all.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hostile_helpers, for the test modules too

from hostile_helpers import PROFILE_FAST, Result, World, png_header_bomb


@pytest.fixture(scope="session")
def base_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny CNN through the real converter (fp32 + int8 with calibration caches); read-only."""
    from hisd_edge.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("hostile") / "tiny"
    convert_checkpoint(tiny_checkpoint, out, precisions=("fp32", "int8"), calib_count=16, val_count=32, progress=False)
    return out


@pytest.fixture(scope="session")
def base_report(base_bundle, tmp_path_factory) -> Path:
    """A real profile report of ``base_bundle`` (tiny settings); read-only."""
    from hisd_edge.cli import main

    out = tmp_path_factory.mktemp("hostile-report") / "report"
    code = main(
        ["profile", str(base_bundle), "--data", "default:test", "--samples", "16", *PROFILE_FAST, "--out", str(out)]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def png_bomb(tmp_path_factory) -> Path:
    return png_header_bomb(tmp_path_factory.mktemp("png") / "bomb.png")


@pytest.fixture()
def world(base_bundle, tmp_path, monkeypatch) -> World:
    bundle = tmp_path / "engines" / "tiny"
    shutil.copytree(base_bundle, bundle)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(bundle / "stage0.onnx", outside / "secret.onnx")
    shutil.copy2(bundle / "manifest.json", outside / "manifest.json")
    (outside / "notes.txt").write_text("a user's file that no bundle may touch\n")
    monkeypatch.chdir(tmp_path)
    return World(root=tmp_path, bundle=bundle, outside=outside)


@pytest.fixture()
def hisd(capsys):
    """hisd("run", bundle, ...) -> Result: the CLI in this process (one line and exit status as a user sees them)."""
    from hisd_edge.cli import main

    def call(*argv: Any) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call
