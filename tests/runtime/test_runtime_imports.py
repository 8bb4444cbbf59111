"""The runtime is target-side: it must import and run with torch, onnx and onnx-graphsurgeon absent."""

import subprocess
import sys

BLOCKER = """
import sys
BLOCKED = ('torch', 'onnx_graphsurgeon', 'onnx')
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('blocked for this test: ' + name)
        return None
sys.meta_path.insert(0, _Block())
def check():
    leaked = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
    assert not leaked, leaked
"""

MODULES = [
    "hisd_edge.runtime",
    "hisd_edge.runtime.backend",
    "hisd_edge.runtime.ort_backend",
    "hisd_edge.runtime.ort_session",
    "hisd_edge.runtime.policies",
    "hisd_edge.runtime.early_exit",
    "hisd_edge.runtime.sources",
    "hisd_edge.runtime.thresholds",
    "hisd_edge.runtime.risk",
    "hisd_edge.runtime.guard",
    "hisd_edge.runtime.audit",
    "hisd_edge.runtime.bench",
    "hisd_edge.runtime.evaluate",
    "hisd_edge.commands.run",
    "hisd_edge.commands.thresholds",
    "hisd_edge.commands.bench",
]


def _python(code):
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300)


def test_runtime_modules_and_verb_help_import_without_torch_onnx_graphsurgeon():
    code = f"""
import importlib, contextlib, io
for name in {MODULES!r}:
    importlib.import_module(name)
from hisd_edge.cli import main
for verb in ('run', 'thresholds', 'bench'):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([verb, '--help'])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    assert 'usage: hisd-edge ' + verb in out.getvalue()
check()
print('ok')
"""
    proc = _python(code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_the_blocker_really_blocks():
    proc = _python("import torch")
    assert proc.returncode != 0 and "blocked for this test: torch" in proc.stderr


def test_run_and_thresholds_work_without_torch(tiny_bundle, copy_of):
    root = copy_of(tiny_bundle)
    code = f"""
from hisd_edge.cli import main
assert main(['run', {str(root)!r}, 'default:val', '--json', '--batch-size', '8']) == 0
assert main(['thresholds', {str(root)!r}, '--count', '60', '--method', 'empirical', '--dry-run', '--no-progress',
             '--sweep-csv', {str(root / "sweep.csv")!r}]) == 0
check()
print('ok')
"""
    proc = _python(code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
