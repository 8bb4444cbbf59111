"""The conditions a measurement ran under: clocks, temperatures, throttling, power mode; and their guard.

Energy and latency on a Jetson depend on the clocks (DVFS moves them unless ``jetson_clocks`` pins
them), on the power mode (``nvpmodel``) and on temperature (throttling lowers the clocks). The
profiler snapshots all of them before and after every window (never inside one: each read costs
time) and flags a run in which they moved. Read under the sysfs root, without root where Linux
allows it:

* CPU clocks: ``/sys/devices/system/cpu/cpu*/cpufreq/scaling_{cur,min,max}_freq`` (kHz);
* GPU clock: devfreq ``cur_freq``/``min_freq``/``max_freq`` (Hz) of the GPU node;
* EMC (memory) clock: ``/sys/kernel/debug/bpmp/debug/clk/emc/{rate,min_rate,max_rate,mrq_rate_locked}``
  (JetPack 5+, root only), ``/sys/class/devfreq/bwmgr`` (Thor), ``/sys/kernel/debug/clk/emc/clk_rate``
  (JetPack 4): "unknown" with the reason when unreadable;
* temperatures: ``/sys/class/thermal/thermal_zone*/{type,temp}`` (millidegrees);
* throttling: cooling devices' ``cur_state`` (``/sys/class/thermal/cooling_device*``) and the
  over-current event counters ``/sys/class/hwmon/hwmon*/oc*_event_cnt`` where the board has them.

``jetson_clocks`` pins CPU and GPU minimum = maximum and holds the EMC at its maximum (jetson_stats
checks the EMC as current == maximum; JetPack 5's ``mrq_rate_locked`` says it directly).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hisd_edge.errors import DeviceError
from hisd_edge.profile.power.base import under

GPU_DEVFREQ_GLOBS = (
    "/sys/class/devfreq/*.gpu",
    "/sys/class/devfreq/*.gv11b",
    "/sys/class/devfreq/*.ga10b",
    "/sys/class/devfreq/*.gp10b",
    "/sys/class/devfreq/*.gb10b",
    "/sys/class/devfreq/gpu-gpc-0",
)
EMC_DEBUGFS = "/sys/kernel/debug/bpmp/debug/clk/emc"
EMC_THOR = "/sys/class/devfreq/bwmgr"
EMC_JP4 = "/sys/kernel/debug/clk/emc"
CLOCK_TOLERANCE = 0.01  # a pinned clock that moves by more than 1 % has changed


def _read(path: Path) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().replace("\x00", "").strip()
    except OSError:
        return None


def _int(path: Path) -> Optional[int]:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def gpu_nodes(root: Path) -> List[Path]:
    found: List[Path] = []
    for pattern in GPU_DEVFREQ_GLOBS:
        found.extend(Path(p) for p in sorted(glob.glob(str(under(root, pattern)))))
    return found


def _online_cpus(root: Path) -> List[Path]:
    cpus = []
    for cpufreq in map(Path, sorted(glob.glob(str(under(root, "/sys/devices/system/cpu/cpu[0-9]*/cpufreq"))))):
        if _read(cpufreq.parent / "online") == "0":
            continue
        cpus.append(cpufreq)
    return cpus


def emc_state(root: Path) -> Dict[str, Any]:
    """EMC clock now and whether it is held at its maximum; ``reason`` when it cannot be read."""
    debugfs = under(root, EMC_DEBUGFS)
    if debugfs.is_dir():
        rate, high = _int(debugfs / "rate"), _int(debugfs / "max_rate")
        locked = _int(debugfs / "mrq_rate_locked")
        if rate is None:
            return {"hz": None, "locked": None, "reason": f"{debugfs}/rate is not readable (debugfs needs root)"}
        held = bool(locked) if locked is not None else (high is not None and rate >= high)
        return {"hz": rate, "max_hz": high, "locked": held}
    thor = under(root, EMC_THOR)
    if thor.is_dir():
        rate, high = _int(thor / "cur_freq"), _int(thor / "max_freq")
        if rate is None:
            return {"hz": None, "locked": None, "reason": f"{thor}/cur_freq is not readable"}
        return {"hz": rate, "max_hz": high, "locked": high is not None and rate >= high}
    jp4 = under(root, EMC_JP4)
    if jp4.is_dir():
        rate = _int(jp4 / "clk_rate")
        if rate is None:
            return {"hz": None, "locked": None, "reason": f"{jp4}/clk_rate is not readable (debugfs needs root)"}
        return {"hz": rate, "locked": None, "reason": "JetPack 4 shows no EMC maximum to compare with"}
    return {"hz": None, "locked": None, "reason": "no EMC clock in sysfs/debugfs here"}


def jetson_clocks_state(root: Path) -> Dict[str, Any]:
    """Whether ``jetson_clocks`` holds CPU, GPU and EMC: ``state`` on / off / unknown, per part, reasons."""
    cpu_pinned: List[bool] = []
    for cpufreq in _online_cpus(root):
        low, high = _int(cpufreq / "scaling_min_freq"), _int(cpufreq / "scaling_max_freq")
        if low is not None and high is not None:
            cpu_pinned.append(low == high)
    gpu_pinned: List[bool] = []
    for node in gpu_nodes(root):
        low, high = _int(node / "min_freq"), _int(node / "max_freq")
        if low is not None and high is not None:
            gpu_pinned.append(low == high)
    emc = emc_state(root)
    if not gpu_pinned:
        return {
            "state": "unknown",
            "cpu": all(cpu_pinned) if cpu_pinned else None,
            "gpu": None,
            "emc": emc.get("locked"),
            "reason": "no Jetson GPU devfreq node (/sys/class/devfreq/*.gpu|gv11b|ga10b)",
        }
    cpu = bool(cpu_pinned) and all(cpu_pinned)
    gpu = all(gpu_pinned)
    state: Dict[str, Any] = {"cpu": cpu, "gpu": gpu, "emc": emc.get("locked")}
    if not (cpu and gpu) or emc.get("locked") is False:
        state["state"] = "off"
    else:
        state["state"] = "on"
        if emc.get("locked") is None:
            state["emc_reason"] = emc.get("reason")
    return {"state": state.pop("state"), **state}


def snapshot(root: Path, time_s: Optional[float] = None) -> Dict[str, Any]:
    """Clocks, temperatures and throttle counters now (cheap reads; never inside a measuring window)."""
    cpu_khz = {}
    for cpufreq in _online_cpus(root):
        value = _int(cpufreq / "scaling_cur_freq")
        if value is not None:
            cpu_khz[cpufreq.parent.name] = value
    gpu_hz = {}
    for node in gpu_nodes(root):
        value = _int(node / "cur_freq")
        if value is not None:
            gpu_hz[node.name] = value
    temps_c = {}
    for zone in map(Path, sorted(glob.glob(str(under(root, "/sys/class/thermal/thermal_zone*"))))):
        kind, milli = _read(zone / "type"), _int(zone / "temp")
        if kind and milli is not None and milli > -40000:  # -256 C marks an absent sensor (Orin CV zones)
            temps_c[kind] = milli / 1000.0
    cooling = {}
    for device in map(Path, sorted(glob.glob(str(under(root, "/sys/class/thermal/cooling_device*"))))):
        kind, state = _read(device / "type"), _int(device / "cur_state")
        if kind and state is not None:
            cooling[f"{kind}@{device.name}"] = state
    events = {}
    for counter in map(Path, sorted(glob.glob(str(under(root, "/sys/class/hwmon/hwmon*/oc*_event_cnt"))))):
        value = _int(counter)
        if value is not None:
            events[f"{counter.parent.name}/{counter.name}"] = value
    emc = emc_state(root)
    return {
        "time_s": time_s,
        "cpu_khz": cpu_khz,
        "gpu_hz": gpu_hz,
        "emc_hz": emc.get("hz"),
        "temps_c": temps_c,
        "cooling_state": cooling,
        "oc_events": events,
    }


def _spread(values: Sequence[float]) -> Optional[Dict[str, float]]:
    return {"min": min(values), "max": max(values)} if values else None


def summarize(snapshots: List[Dict[str, Any]], jetson_clocks: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Ranges over the run and what changed: ``flags`` lists every reason not to trust the run as one condition."""
    flags: List[str] = []
    cpu: Dict[str, List[float]] = {}
    gpu: Dict[str, List[float]] = {}
    emc: List[float] = []
    temps: Dict[str, List[float]] = {}
    for snap in snapshots:
        for name, value in (snap.get("cpu_khz") or {}).items():
            cpu.setdefault(name, []).append(value)
        for name, value in (snap.get("gpu_hz") or {}).items():
            gpu.setdefault(name, []).append(value)
        if snap.get("emc_hz") is not None:
            emc.append(snap["emc_hz"])
        for name, value in (snap.get("temps_c") or {}).items():
            temps.setdefault(name, []).append(value)
    pinned = (jetson_clocks or {}).get("state") == "on"

    def moved(values: Sequence[float]) -> bool:
        return bool(values) and max(values) > min(values) * (1.0 + CLOCK_TOLERANCE)

    changed = [f"CPU {n}" for n, v in cpu.items() if moved(v)] + [f"GPU {n}" for n, v in gpu.items() if moved(v)]
    if moved(emc):
        changed.append("EMC")
    if changed and pinned:
        flags.append(f"clocks changed during the run although jetson_clocks was on: {', '.join(changed[:6])}")
    throttled: List[str] = []
    if snapshots:
        first, last = snapshots[0], snapshots[-1]
        for name, count in (last.get("oc_events") or {}).items():
            before = (first.get("oc_events") or {}).get(name)
            if before is not None and count > before:
                throttled.append(f"{name} +{count - before}")
        for name in {k for s in snapshots for k in (s.get("cooling_state") or {})}:
            states = [int(x) for x in ((s.get("cooling_state") or {}).get(name) for s in snapshots) if x is not None]
            if states and max(states) > 0 and len(set(states)) > 1:
                throttled.append(f"{name} state {min(states)}..{max(states)}")
    if throttled:
        flags.append(f"throttling during the run: {', '.join(sorted(throttled)[:6])}")
    return {
        "snapshots": len(snapshots),
        "cpu_khz": {n: _spread(v) for n, v in cpu.items()},
        "gpu_hz": {n: _spread(v) for n, v in gpu.items()},
        "emc_hz": _spread(emc),
        "temps_c": {n: _spread(v) for n, v in temps.items()},
        "clocks_changed": changed,
        "throttle_events": sorted(throttled),
        "flags": flags,
    }


def set_power_mode(mode_id: int, timeout_s: float = 30.0) -> None:
    """``nvpmodel -m ID`` (needs root); a one-line DeviceError naming the fix when it fails."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        raise DeviceError(f"--power-modes {mode_id}: nvpmodel is not on PATH (not a Jetson?); leave out --power-modes")
    try:
        done = subprocess.run(
            [exe, "-m", str(int(mode_id))],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"nvpmodel -m {mode_id} failed ({exc}); run it by hand to see why") from None
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout or "").split())[:160]
        hint = (
            "run as root (sudo) to switch power modes"
            if os.geteuid() != 0
            else "check the mode id with nvpmodel -p --verbose"
        )
        raise DeviceError(f"nvpmodel -m {mode_id} failed (status {done.returncode}: {said or 'no message'}); {hint}")
