"""The cuda-python backend and pycuda's graph path against NVIDIA's real cuda-python, without a GPU.

cuda-bindings (and cuda-pathfinder, which it imports) are fetched from PyPI into the same cache
as the TensorRT bindings (skipped, saying why, when the index is unreachable) and imported in a
subprocess (``cuda_python_probe.py``). With no driver every runtime call returns an error code, so
each of the project's calls runs for real up to the call itself: an argument of the wrong kind is
a TypeError from cuda-python, anything else is accepted. Two canaries make sure a wrong argument
is seen. First run: ~9 MB, a few seconds; then ~1 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WHEELS = {
    "cuda-bindings": ("13.5.0", "cuda/bindings/runtime.pxd"),
    "cuda-pathfinder": ("1.9.1", "cuda/pathfinder/__init__.py"),
}


def _real_bindings():
    name = "hisd_test_real_bindings"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "engine" / "real_bindings.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def outcomes():
    rb = _real_bindings()
    try:
        paths = [rb.download(name, version, marker) for name, (version, marker) in WHEELS.items()]
    except rb.Unavailable as exc:
        pytest.skip(str(exc))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT)]), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "cuda_python_probe.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_cuda_python_call_the_project_makes_is_accepted(outcomes):
    calls = {name: result for name, result in outcomes.items() if not name.startswith("canary")}
    assert len(calls) >= 20
    assert all(result == "ok" for result in calls.values()), json.dumps(calls, indent=1)


def test_the_canaries_are_caught(outcomes):
    canaries = {name: result for name, result in outcomes.items() if name.startswith("canary")}
    assert len(canaries) == 2 and all(result.startswith("TypeError") for result in canaries.values()), canaries
