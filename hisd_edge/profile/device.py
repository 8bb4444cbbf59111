"""What machine and mode a profile was taken on: model, L4T release, nvpmodel, jetson_clocks.

Every energy or latency figure depends on the power mode and clocks, so they are recorded with
every run. Sources, read under the configurable sysfs root where they are files:

* ``/proc/device-tree/model`` - board name ("NVIDIA Jetson Orin Nano Developer Kit");
* ``/etc/nv_tegra_release`` - L4T release ("# R35 (release), REVISION: 4.1, ...");
* ``nvpmodel -q`` - "NV Power Mode: MAXN" then the mode id (only on the live machine);
* jetson_clocks state - "on" when every CPU's and the GPU's minimum frequency equals its
  maximum and the EMC is held at its maximum (what ``jetson_clocks`` sets); per part in
  :mod:`hisd_edge.profile.conditions`, which also reads clocks, temperatures and throttling.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from hisd_edge.profile.power.base import sysfs_root as _sysfs_root
from hisd_edge.profile.power.base import under


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def parse_l4t_release(text: str) -> Optional[str]:
    """``# R35 (release), REVISION: 4.1, ...`` -> ``35.4.1``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def parse_nvpmodel_query(text: str) -> Optional[Dict[str, Any]]:
    """``nvpmodel -q`` output -> {"mode_name": "MAXN", "mode_id": 0}; None if unrecognised."""
    name_match = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not name_match:
        return None
    mode_id = None
    after = text[name_match.end() :]
    id_match = re.search(r"^\s*(\d+)\s*$", after, flags=re.MULTILINE)
    if id_match:
        mode_id = int(id_match.group(1))
    return {"mode_name": name_match.group(1), "mode_id": mode_id}


def query_nvpmodel(timeout_s: float = 5.0) -> Dict[str, Any]:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return {"mode_name": None, "mode_id": None, "reason": "nvpmodel not on PATH (not a Jetson)"}
    try:
        done = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"mode_name": None, "mode_id": None, "reason": f"nvpmodel -q failed ({exc})"}
    parsed = parse_nvpmodel_query(done.stdout + "\n" + done.stderr)
    if parsed is None:
        return {
            "mode_name": None,
            "mode_id": None,
            "reason": f"nvpmodel -q printed nothing recognisable (status {done.returncode})",
        }
    return parsed


def jetson_clocks_state(root: Path) -> Dict[str, Any]:
    """Whether jetson_clocks holds CPU, GPU and EMC (see :func:`hisd_edge.profile.conditions.jetson_clocks_state`)."""
    from hisd_edge.profile.conditions import jetson_clocks_state as state

    return state(root)


def _cpu_model(root: Path) -> Optional[str]:
    text = _read(under(root, "/proc/cpuinfo")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "hardware") and value.strip():
            return value.strip()
    return None


def device_info(sysfs_root: Optional[str] = None, run_tools: Optional[bool] = None) -> Dict[str, Any]:
    """The device block of profile.json.

    ``run_tools`` (default: only when reading the live root) allows ``nvpmodel -q``; a recorded
    sysfs tree cannot answer for the live machine's tools.
    """
    root = _sysfs_root(sysfs_root)
    live = os.path.realpath(str(root)) == "/"
    if run_tools is None:
        run_tools = live
    model = _read(under(root, "/proc/device-tree/model"))
    release_text = _read(under(root, "/etc/nv_tegra_release"))
    is_jetson = release_text is not None or (model is not None and "jetson" in model.lower())
    info: Dict[str, Any] = {
        "hostname": socket.gethostname() if live else None,
        "model": model or _cpu_model(root) or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "is_jetson": is_jetson,
        "l4t_release": parse_l4t_release(release_text) if release_text else None,
        "sysfs_root": str(root),
    }
    if is_jetson:
        info["nvpmodel"] = (
            query_nvpmodel()
            if run_tools
            else {"mode_name": None, "mode_id": None, "reason": "not queried: reading a recorded sysfs root"}
        )
        info["jetson_clocks"] = jetson_clocks_state(root)
    else:
        info["nvpmodel"] = None
        info["jetson_clocks"] = None
    return info
