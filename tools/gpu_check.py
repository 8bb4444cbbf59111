#!/usr/bin/env python3
"""What hisd-edge can only check on a real GPU, in one run, with a short verdict table.

For a machine with an NVIDIA GPU, CUDA and PyTorch but no network (no installs, no downloads);
run from the repository root::

    python tools/gpu_check.py            # table; exit 1 if a check FAILED (SKIP is not failure)
    python tools/gpu_check.py --json     # the same as JSON

Checks, each independent, each bounded in time (the whole run stops before ``--budget-s``,
default 450 s, i.e. well under 8 minutes):

1. ``gpu``: a CUDA device visible to cuda-python (``cuda.bindings.runtime``);
2. ``cuda tests``: ``tests/cuda/test_cuda_real.py`` for every installed CUDA binding (buffers,
   copies at row offsets, events, mapped pinned memory, CUDA-graph capture and replay); pycuda's
   graph path through cuda-python is part of it where pycuda is installed;
3. ``nvml power``: the profiler's NVML power source (``hisd_edge.profile.power``) sampled by its
   ``PowerSampler`` while the GPU works (torch matmuls) and while it idles, the window energy
   integrated as the profiler does it;
4. ``ort cuda``: ONNX Runtime's CUDA execution provider, if this onnxruntime has it, running the
   packaged default model's bundle (converted here if torch, onnx and onnxruntime are present)
   with the same exit decisions as the CPU provider;
5. ``profile + nvml``: ``hisd-edge profile`` on that bundle with ``--power nvml`` and the CUDA
   provider (a short run), energy per exit reported.

Without a GPU every check says why it did not run, and the run exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class Check:
    def __init__(self, name: str):
        self.name, self.verdict, self.detail, self.seconds = name, SKIP, "", 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {"check": self.name, "verdict": self.verdict, "detail": self.detail, "seconds": round(self.seconds, 1)}


class Run:
    """The checks, in order, under one time budget."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s
        self.checks: List[Check] = []
        self.state: Dict[str, Any] = {}

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, name: str, fn: Callable[[Check], None], needs_s: float) -> Check:
        item = Check(name)
        self.checks.append(item)
        if self.left_s() < needs_s:
            item.detail = f"not started: {self.left_s():.0f} s left of the budget, it needs ~{needs_s:.0f} s"
            return item
        begin = time.monotonic()
        try:
            fn(item)
        except Exception as exc:  # a check that breaks is a failure with its reason, never a crash of the run
            item.verdict, item.detail = FAIL, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        item.seconds = time.monotonic() - begin
        return item


# -- the checks ------------------------------------------------------------------------------------
def check_gpu(run: Run, item: Check) -> None:
    try:
        from cuda.bindings import runtime
    except ImportError:
        item.detail = "cuda-python is not installed (pip install cuda-python); no way to see a GPU"
        run.state["gpu"] = False
        return
    err, count = runtime.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        name = runtime.cudaGetErrorName(err)[1] if int(err) != 0 else b"0 devices"
        item.detail = f"no GPU: cudaGetDeviceCount says {name.decode() if isinstance(name, bytes) else name}"
        run.state["gpu"] = False
        return
    err, prop = runtime.cudaGetDeviceProperties(0)
    label = bytes(prop.name).split(b"\0", 1)[0].decode(errors="replace") if int(err) == 0 else "?"
    run.state["gpu"] = True
    item.verdict, item.detail = PASS, f"{count} device(s); 0: {label} (sm {prop.major}.{prop.minor})"


def check_cuda_tests(run: Run, item: Check) -> None:
    if not run.state.get("gpu"):
        item.detail = "no GPU"
        return
    timeout = min(180.0, run.left_s() - 5)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/cuda/test_cuda_real.py", "-s"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-200:]
    timings = [line.strip() for line in lines if " us" in line and ":" in line][:3]
    item.verdict = PASS if proc.returncode == 0 and "passed" in summary else FAIL
    item.detail = summary + ("; " + "; ".join(timings) if timings else "")


def _gpu_load(seconds: float) -> Optional[str]:
    """Keep the GPU busy for ``seconds`` with torch matmuls; None when torch has no CUDA here."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    a = torch.randn(4096, 4096, device="cuda")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a * 1e-3)
        torch.cuda.synchronize()
    return None


def check_nvml(run: Run, item: Check) -> None:
    from hisd_edge.errors import HisdError
    from hisd_edge.profile.energy import integrate_window
    from hisd_edge.profile.power.discover import open_power_source
    from hisd_edge.profile.sampler import PowerSampler

    try:
        source, _notes = open_power_source("nvml")
        sampler = PowerSampler(source, period_s=0.05)
        sampler.start()
    except HisdError as exc:
        item.detail = str(exc)
        return
    try:
        idle_begin = time.perf_counter()
        time.sleep(1.5)
        idle_end = busy_begin = time.perf_counter()
        why_not = _gpu_load(3.0)
        busy_end = time.perf_counter()
        time.sleep(0.3)
    finally:
        trace = sampler.stop()
    powers = [s.total_mw for s in trace.samples]
    if len(powers) < 10:
        item.verdict, item.detail = FAIL, f"only {len(powers)} NVML samples in ~5 s (gaps: {trace.gaps[:1]})"
        return
    idle = integrate_window(trace, idle_begin, idle_end)
    detail = f"{len(powers)} samples, {min(powers) / 1e3:.1f}-{max(powers) / 1e3:.1f} W; idle {idle.energy_mj / (idle_end - idle_begin) / 1e3:.1f} W"
    if why_not is None:
        busy = integrate_window(trace, busy_begin, busy_end)
        busy_w = busy.energy_mj / (busy_end - busy_begin) / 1e3
        detail += f", under load {busy_w:.1f} W ({busy.energy_mj / 1e3:.1f} J over {busy_end - busy_begin:.1f} s)"
    else:
        detail += f" (no load: {why_not})"
    item.verdict, item.detail = PASS, detail


def _bundle(run: Run) -> Optional[Path]:
    """The packaged default model as a bundle (fp32, converted once), or None with the reason in state."""
    if "bundle" in run.state:
        return run.state["bundle"]
    run.state["bundle"] = None
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        run.state["bundle_why"] = f"cannot convert the default model here ({exc.name} is not installed)"
        return None
    from hisd_edge.checkpoint import default_checkpoint_path
    from hisd_edge.convert import convert_checkpoint

    out = Path(tempfile.mkdtemp(prefix="hisd-gpu-check-")) / "mnist"
    convert_checkpoint(default_checkpoint_path(), out, precisions=("fp32",), val_count=64, verify_count=8)
    run.state["bundle"] = out
    return out


def check_ort_cuda(run: Run, item: Check) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        item.detail = "onnxruntime is not installed"
        return
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        item.detail = f"this onnxruntime has no CUDA provider ({', '.join(ort.get_available_providers())})"
        return
    if not run.state.get("gpu"):
        item.detail = "no GPU"
        return
    path = _bundle(run)
    if path is None:
        item.detail = run.state.get("bundle_why", "no bundle")
        return
    from hisd_edge.bundle import Bundle
    from hisd_edge.data import load_samples
    from hisd_edge.runtime import open_runtime

    x = load_samples("default:test", count=256).tensors(Bundle.open(path).preprocessing)
    decisions = {}
    for providers in (["cpu"], ["cuda"]):
        with open_runtime(path, backend="onnxruntime", providers=providers) as rt:
            results, _ = rt.infer_tensors(x)
            decisions[providers[0]] = [(r.exit, r.class_index) for r in results]
            used = rt.backend.describe()["providers"]
    same = sum(a == b for a, b in zip(decisions["cpu"], decisions["cuda"]))
    item.verdict = PASS if same >= len(x) - 2 else FAIL  # a sample within float noise of a threshold may flip
    item.detail = f"providers {used}; {same}/{len(x)} exit decisions equal to the CPU provider's"


def check_profile_nvml(run: Run, item: Check, power: str = "nvml") -> None:
    if not run.state.get("gpu"):
        item.detail = "no GPU"
        return
    path = _bundle(run)
    if path is None:
        item.detail = run.state.get("bundle_why", "no bundle")
        return
    try:
        import onnxruntime as ort

        providers = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    except ImportError:
        providers = "cpu"
    out = path.parent / "report"
    proc = subprocess.run(
        [
            sys.executable, "-m", "hisd_edge.cli", "profile", str(path), "--data", "default:test", "--samples", "128",
            "--power", power, "--providers", providers, "--warmup", "3", "--repeats", "20", "--energy-inferences", "30",
            "--idle-seconds", "1", "--out", str(out), "--json", "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=min(240.0, run.left_s() - 5),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        item.verdict, item.detail = FAIL, (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return
    text = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    try:
        summary = json.loads(text)
    except ValueError:
        summary = {}
    energy = json.dumps(summary)[:200] if summary else "report written"
    item.verdict, item.detail = PASS, f"--providers {providers} --power {power}: {energy} ({out})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting checks after this (default 450)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    args = parser.parse_args(argv)
    run = Run(args.budget_s)
    run.check("gpu", lambda item: check_gpu(run, item), 5)
    run.check("cuda tests", lambda item: check_cuda_tests(run, item), 30)
    run.check("nvml power", lambda item: check_nvml(run, item), 15)
    run.check("ort cuda", lambda item: check_ort_cuda(run, item), 60)
    run.check("profile + nvml", lambda item: check_profile_nvml(run, item), 90)
    rows = [c.to_dict() for c in run.checks]
    if args.json:
        print(json.dumps({"checks": rows}))
    else:
        width = max(len(r["check"]) for r in rows)
        print(f"{'check':<{width}}  verdict  {'s':>5}  detail")
        for r in rows:
            print(f"{r['check']:<{width}}  {r['verdict']:<7}  {r['seconds']:5.1f}  {r['detail']}")
    return 1 if any(c.verdict == FAIL for c in run.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
