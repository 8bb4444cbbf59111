"""``profile.json``: what one profile run measured, schema version 1.

Written by ``hisd-edge profile``, re-rendered and compared by ``hisd-edge report``, read by
``hisd-edge thresholds --costs``. Every figure carries its unit in its key (``_ms``, ``_mj``,
``_mw``, ``_mib``, ``_bytes``, ``_s``) or in the key of the object holding it
(``"latency_ms": {"p50": ...}``). A figure that could not be measured is ``null`` and, for energy,
sits next to an ``energy_unavailable_reason``; nothing is ever estimated to fill a hole.

Top level (keys in order)::

    schema_version   1
    kind             "hisd-edge-profile"
    created          ISO-8601 UTC time
    toolkit_version  hisd-edge version
    command          the command line
    bundle           {"name", "path", "stages", "exits", "class_names", "stage_bytes": [per stage file size]}
    device           profile.device.device_info(): hostname, model, machine, system, python, cpu_count,
                     is_jetson, l4t_release, sysfs_root, nvpmodel {"mode_name", "mode_id"[, "reason"]} | null,
                     jetson_clocks {"state": "on"|"off"|"unknown"[, "reason"]} | null
    backend          backend.describe(): {"backend", "precision", ...backend details}
    precision        "fp32" | "fp16" | "int8"
    power            {"source", "available": bool, "reason" (when not available), "rails", "total"
                      ("VDD_IN" | "POM_5V_IN" | "sum of rails" | ...), "total_note", "sampling_period_ms",
                      "discovery": [{"source", "used", "why"}], "samples", "gaps": [{"start_s", "end_s", "reason", "failures"}],
                      "trace_origin_s", "trace": {"time_s": [...], "total_mw": [...]} (every sample, times from the
                      first, which was taken at trace_origin_s on the gaps' clock), ...source details}
    policy           {"kind", "thresholds", "calibrated": bool, "note"}
    settings         {"data", "samples", "batches", "warmup", "repeats", "energy_min_s", "energy_min_inferences",
                      "idle_s", "sweep_points"}
    batch            the batch size the top-level "stages"/"exits" describe (1 when profiled, else the smallest)
    stages           [{"index": k,
                       "latency_ms": {"p50", "p90", "p99", "mean", "min", "count"},   backend's own per-stage time
                       "energy_mj": {"total", "dynamic"} | null,                    per sample; exit k minus exit k-1
                       "model_bytes": size of the stage file}]
    exits            [{"index": k,
                       "latency_ms": {"p50", "p90", "p99", "mean", "min", "count"},   cumulative: input to exit k, host wall
                       "energy_mj": {"total", "dynamic"} | null,                    per sample, steady loop forced to exit k
                       "energy_unavailable_reason": str (only when energy_mj is null),
                       "energy": {"method", "window_s", "covered_s", "coverage", "complete", "samples",
                                  "sampling_period_ms", "mean_power_mw", "idle_power_mw", "inferences",
                                  "per_call_mj": {"total", "dynamic"}, "gaps"} | null}]
    batches          [{"batch": B, "stages": [...as above...], "exits": [...as above...]}] for every --batch
    idle             {"power_mw", "window_s", "covered_s", "samples", "complete"} | null
    memory           {"before": {"rss_mib", "rss_peak_mib", "mem_available_mib", "nvmap_used_mib"},
                      "after_load": {...}, "after_run": {...}, "load": {"rss_delta_mib", "mem_available_taken_mib",
                      "nvmap_used_delta_mib"}, "run": {...}, "backend": {...} | null, "model_bytes": total}
    accuracy         {"samples", "labelled": bool, "per_exit_top1": [...] | null,
                      "current": {"thresholds", "accuracy", "exit_fraction": [...], "mean_latency_ms",
                                  "mean_energy_mj" | null, "measured_mean_latency_ms"},
                      "sweep": [{"threshold", "thresholds", "accuracy", "exit_fraction", "mean_latency_ms",
                                 "mean_energy_mj", "pareto_latency": bool, "pareto_energy": bool}]}
    overhead         {"sampler": {"latency_ms_without", "latency_ms_with", "overhead_pct", "repeats", "source",
                                  "source_kept_running": bool (the source ran on in the "off" blocks)} | null}
    notes            [str]: what a reader must know (defaults used, energy unavailable, gaps, mode changes)

"accuracy" uses the real per-exit outputs on the data; "mean_latency_ms"/"mean_energy_mj" of a
threshold setting are the exit fractions times the measured per-exit costs (batch ``batch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from hisd_edge.errors import InputError

SCHEMA_VERSION = 1
KIND = "hisd-edge-profile"
FILENAME = "profile.json"


def resolve_profile_path(path: Union[str, Path]) -> Path:
    """A report directory or a profile.json path -> the profile.json path."""
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise InputError(
            f"{path}: no {FILENAME} there; give a report directory written by hisd-edge profile, or its profile.json"
        )
    return p


def load_profile(path: Union[str, Path]) -> Dict[str, Any]:
    """Read and check a profile.json (or a report directory holding one)."""
    from hisd_edge import schemas  # the published schema: hisd_edge/schemas/profile-v1.schema.json

    p = resolve_profile_path(path)
    data = schemas.read_json(p, max_bytes=schemas.MAX_REPORT_BYTES, fix="re-run hisd-edge profile")
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise InputError(f"{p}: not a hisd-edge profile (kind is not {KIND!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            f"{p}: profile schema version {data.get('schema_version')!r} is not supported "
            f"(this hisd-edge reads version {SCHEMA_VERSION}); re-run hisd-edge profile"
        )
    schemas.validate(data, schemas.PROFILE, what=str(p), fix="the file is damaged; re-run hisd-edge profile")
    return data
