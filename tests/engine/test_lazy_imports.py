"""The TensorRT side imports nothing heavy until it is used: no TensorRT, CUDA binding, torch or onnx."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorrt', 'pycuda', 'cuda', 'torch', 'onnx', 'onnx_graphsurgeon', 'onnxruntime'):
            raise ImportError('blocked for this test: ' + name)
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize(
    "module", ["hisd_edge.engine", "hisd_edge.cuda", "hisd_edge.runtime.tensorrt_backend", "hisd_edge.commands.build"]
)
def test_imports_without_tensorrt_cuda_torch_or_onnx(module):
    code = BLOCKER + f"import importlib; importlib.import_module({module!r}); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_build_help_and_missing_tensorrt_in_a_bare_environment(tmp_path):
    code = BLOCKER + (
        "from hisd_edge.cli import main\n"
        "import contextlib, io\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['build', '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "assert '--workspace-mib' in out.getvalue()\n"
        f"raise SystemExit(main(['build', {str(tmp_path)!r}, '--no-progress']))\n"
    )
    (tmp_path / "manifest.json").write_text(  # the smallest manifest its schema accepts
        '{"schema_version": 1, "kind": "hisd-edge-bundle", "name": "b", "stages": [{"index": 0, '
        '"inputs": [{"name": "input"}], "outputs": [{"name": "exit0"}], '
        '"files": {"fp32": {"path": "stage0.onnx", "sha256": "' + "0" * 64 + '", "bytes": 1}}}], '
        '"exits": [{"index": 0, "stage": 0, "output": "exit0"}], "preprocessing": {"input_size": [28, 28], '
        '"channels": 1, "color_order": "gray", "mean": [0.5], "std": [0.5]}}'
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "TensorRT's Python package is not importable" in lines[0] and "python3-libnvinfer" in lines[0]


def test_type_stubs_alone_are_not_mistaken_for_tensorrt(tmp_path):
    """tensorrt-stubs installs a bare tensorrt/ directory, which imports as an empty namespace package."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import tensorrt  # the namespace package imports fine...\n"
        "from hisd_edge.engine import import_tensorrt\n"
        "import_tensorrt()  # ...but is refused here\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert (
        "DependencyError" in proc.stderr
        and "not TensorRT itself" in proc.stderr
        and "python3-libnvinfer" in proc.stderr
    )
