"""tools/gpu_check.py: runs cleanly without a GPU (every check says why it did not run), and its
GPU-side steps work where they can be exercised without one (NVML through a fake pynvml, the
profile command line with --power none on the CPU provider)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("hisd_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_gpu() -> bool:
    try:
        from cuda.bindings import runtime

        err, count = runtime.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:
        return False


def test_without_a_gpu_every_check_says_why_and_the_run_passes():
    if _has_gpu():
        pytest.skip("a GPU is present: this checks the no-GPU report")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    checks = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}
    assert list(checks) == ["gpu", "cuda tests", "nvml power", "ort cuda", "profile + nvml"]
    assert all(c["verdict"] == "SKIP" and c["detail"] for c in checks.values())
    assert checks["cuda tests"]["detail"] == "no GPU" and checks["profile + nvml"]["detail"] == "no GPU"
    table = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300).stdout
    assert table.splitlines()[0].split() == ["check", "verdict", "s", "detail"] and len(table.splitlines()) == 6


def _fake_pynvml(energy_per_read_mj=250.0):
    fake = types.ModuleType("pynvml")
    state = {"energy": 1000.0}

    class NVMLError(Exception):
        pass

    def energy(handle):
        state["energy"] += energy_per_read_mj
        return state["energy"]

    fake.NVMLError = NVMLError
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: "gpu0"
    fake.nvmlDeviceGetName = lambda h: b"Fake GPU"
    fake.nvmlDeviceGetTotalEnergyConsumption = energy
    fake.nvmlDeviceGetPowerUsage = lambda h: 5000
    return fake


def test_the_nvml_check_samples_the_profilers_power_source(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    tool = _load()
    run = tool.Run(60)
    item = run.check("nvml power", lambda item: tool.check_nvml(run, item), 5)
    assert item.verdict == "PASS", item.detail
    assert "samples, 5.0-5.0 W; idle" in item.detail


@pytest.mark.slow
def test_the_profile_step_runs_on_the_cpu(tmp_path):
    tool = _load()
    run = tool.Run(300)
    run.state["gpu"] = True  # pretend, to drive the step; --power none and the CPU provider need no GPU
    item = run.check("profile", lambda item: tool.check_profile_nvml(run, item, power="none"), 5)
    assert item.verdict == "PASS", item.detail
    assert "--providers cpu --power none" in item.detail
