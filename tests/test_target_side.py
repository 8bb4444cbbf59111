"""The target side (runtime, build, profile) runs on JetPack 5's Python 3.8 without torch."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hisd_edge"
# Modules a Jetson imports: everything except the workstation-only steps.
TARGET_SIDE = [
    "__init__.py",
    "__main__.py",
    "errors.py",
    "atomic.py",
    "quiet.py",
    "schemas",
    "preprocess.py",
    "data.py",
    "bundle.py",
    "checkpoint.py",
    "cli.py",
    "commands",
    "runtime",
    "engine",
    "cuda",
    "profile",
]


def test_target_side_needs_at_most_python_3_8():
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    assert Path(vermin).exists(), "vermin is not installed: pip install -c constraints.txt vermin (the test extra)"
    paths = [str(PACKAGE / p) for p in TARGET_SIDE if (PACKAGE / p).exists()]
    proc = subprocess.run(
        [vermin, "--no-tips", "-t=3.8-", "--eval-annotations", "--violations", *paths], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx_graphsurgeon'):
            raise ImportError('blocked for this test: ' + name)
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize(
    "module",
    ["hisd_edge", "hisd_edge.bundle", "hisd_edge.data", "hisd_edge.checkpoint", "hisd_edge.cli", "hisd_edge.schemas"],
)
def test_imports_without_torch(module):
    code = BLOCKER + f"import importlib; importlib.import_module({module!r}); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_checkpoint_metadata_readable_without_torch(tiny_checkpoint):
    code = (
        BLOCKER
        + f"from hisd_edge.checkpoint import read_metadata; print(read_metadata({str(tiny_checkpoint)!r})['arch']['name'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "tiny_cnn", proc.stderr[-2000:]
