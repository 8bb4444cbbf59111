"""``profile.json``: what one profile run measured, schema version 2 (version 1 is still read).

Written by ``hisd-edge profile``, re-rendered and compared by ``hisd-edge report``, read by
``hisd-edge thresholds --costs``. Every figure carries its unit in its key (``_ms``, ``_mj``,
``_mw``, ``_mib``, ``_bytes``, ``_s``, ``_hz``, ``_khz``, ``_c``) or in the key of the object holding
it (``"latency_ms": {"p50": ...}``). A figure that could not be measured is ``null`` and, for energy,
sits next to an ``energy_unavailable_reason``; nothing is ever estimated to fill a hole. An interval
``[low, high]`` (key ``ci`` or ``<figure>_ci``) is a Student-t confidence interval at
``settings.confidence`` over repetitions (energy: rounds; latency: latency rounds); ``null`` when
there was one repetition.

Changes from version 1 (for the JSON Schema; every v1 key below keeps its meaning unless noted):

* new top-level keys ``sensor``, ``conditions``, ``design``, ``model_check``, ``blocks``;
* ``latency_ms`` objects gain ``ci``; ``energy_mj`` objects gain ``total_ci``, ``dynamic_ci``,
  ``rounds``; exits and stages gain ``rails_mj`` (per rail, the same object shape);
* ``exits[].energy`` gains ``rounds``, ``mean_power_mw_ci``, ``loop_latency_ms``,
  ``loop_latency_ms_ci`` and loses ``sampling_period_ms`` and ``gaps`` (windows with gaps are left
  out; see ``notes``); ``window_s`` is the mean window of the rounds used;
* ``idle`` is the summary of the idle brackets (adds ``power_mw_ci``, ``brackets``,
  ``brackets_used``, ``drift_mw``, ``rails_power_mw``);
* ``power`` gains ``total_rule``, ``rails_covered``, ``sampler``, ``rails_available``,
  ``files_per_reading``, ``sensor``, ``trace.rails_mw``, ``trace_thinned_every``; ``total`` is now a
  label whose meaning is ``total_rule.meaning`` ("AGX Orin rail sum", not "sum of rails");
* ``overhead`` is ``{"sampler": <last exit's entry> | null, "per_exit": [...] | null, "mode",
  "source_kept_running", "reason"}`` (the v1 ``sampler`` entry had ``repeats``; entries now carry
  ``exit``, ``overhead_pct_ci``, ``block_pairs``, ``block_s``, ``runs_without``, ``runs_with``);
* ``memory`` gains ``per_exit``;
* ``settings`` replaces ``energy_min_s`` by ``window_s`` and adds ``rounds``, ``seed``,
  ``confidence``, ``idle_s``, ``settle_s``, ``sampling_period_ms``, ``warmup_max_s``,
  ``warmup_block_s``, ``independent_readings_per_window``, ``clock``;
* ``accuracy.current`` and sweep points gain ``mean_dynamic_energy_mj``; sweep points gain
  ``pareto_dynamic_energy``; ``accuracy.current.measured_mean_latency_ms`` is now the model check's
  measured mean per early-exit call (on the profiler's clock).

Top level (keys in order)::

    schema_version   2
    kind             "hisd-edge-profile"
    created          ISO-8601 UTC time
    toolkit_version  hisd-edge version
    command          the command line
    bundle           {"name", "path", "stages", "exits", "class_names", "stage_bytes": [per stage file size]}
    device           profile.device.device_info(): hostname, model, machine, system, python, cpu_count,
                     is_jetson, l4t_release, sysfs_root, nvpmodel {"mode_name", "mode_id"[, "reason"]} | null,
                     jetson_clocks {"state": "on"|"off"|"unknown", "cpu", "gpu", "emc": bool | null
                                    [, "reason", "emc_reason"]} | null
    backend          backend.describe(): {"backend", "precision", ...backend details}
    precision        "fp32" | "fp16" | "int8"
    power            {"source", "available": bool, "reason" (when not available), "rails": [names read],
                      "rails_available", "total": label ("VDD_IN", "POM_5V_IN", "VIN", "AGX Orin rail sum",
                      "AGX Xavier rail sum", "sum of rails", ...),
                      "total_rule": {"quantity": "module_input" | "board_input" | "agx_orin_rail_sum" |
                                     "agx_xavier_rail_sum" | "rail_sum" | "gpu_board" | "cpu_packages",
                                     "label", "rails", "meaning", "family"},
                      "total_note", "rails_covered": [{"rail", "covers", "in_total": bool, "gpu": bool}],
                      "sensor": SensorTiming (INA3221 sources), "sampling_period_ms", "sampler": "process" |
                      "thread" | "virtual" | null, "discovery": [{"source", "used", "why"}], "samples",
                      "gaps": [{"start_s", "end_s", "reason", "failures"}], "trace_origin_s",
                      "trace": {"time_s": [...], "total_mw": [...], "rails_mw": {rail: [...]}},
                      "trace_thinned_every" (only when thinned), ...source details}
    sensor           {"kind": "averaging" | "counter" | "sampled", "tau_s", "refresh_s", "settle_s",
                      "min_window_s", "samples", "cycle_s", "channels", "update_interval_ms",
                      "update_interval_meaning", "assumed": bool, "origin", "notes": [str]} | null
    conditions       {"nvpmodel_start", "nvpmodel_end", "jetson_clocks_start", "jetson_clocks_end",
                      "summary": {"snapshots", "cpu_khz": {cpu: {"min", "max"}}, "gpu_hz": {...},
                                  "emc_hz": {"min", "max"} | null, "temps_c": {zone: {"min", "max"}},
                                  "clocks_changed": [str], "throttle_events": [str]},
                      "flags": [str], "trusted": bool, "start": snapshot, "end": snapshot}
                     snapshot = {"time_s", "cpu_khz": {cpu: kHz}, "gpu_hz": {node: Hz}, "emc_hz",
                                 "temps_c": {zone: C}, "cooling_state": {device: state}, "oc_events": {name: n}}
    policy           {"kind", "thresholds", "calibrated": bool, "note"}
    settings         {"data", "samples", "batches", "warmup", "repeats", "rounds", "seed", "confidence",
                      "energy_min_inferences", "sweep_points", "clock", "window_s", "idle_s", "settle_s",
                      "sampling_period_ms", "warmup_max_s", "warmup_block_s", "independent_readings_per_window"}
    design           {"rounds", "seed", "order": [[block labels of round r] (first batch)],
                      "warmup": {"seconds", "blocks": [{"end_s", "power_mw", "max_temp_c"}], "steady",
                                 "max_s", "block_s"} | null}
    batch            the batch size the top-level "stages"/"exits" describe (the smallest profiled)
    stages           [{"index": k,
                       "latency_ms": {"p50", "p90", "p99", "mean", "min", "count", "ci"},  backend's per-stage time
                       "energy_mj": {"total", "dynamic", "total_ci", "dynamic_ci", "rounds"} | null,
                                    per sample; exit k minus exit k-1 paired within rounds
                       "rails_mj": {rail: energy_mj-shaped} | null,
                       "model_bytes": size of the stage file}]
    exits            [{"index": k,
                       "latency_ms": {...as above...},              cumulative: input to exit k, profiler's clock
                       "energy_mj": {...as above...} | null,        per sample, loops forced to exit k
                       "energy_unavailable_reason": str (only when energy_mj is null),
                       "dynamic_unavailable_reason": str (when no idle bracket was usable),
                       "rails_mj": {rail: energy_mj-shaped} | null,
                       "energy": {"method", "rounds", "window_s", "covered_s", "coverage", "complete",
                                  "samples" (power samples), "inferences", "mean_power_mw", "mean_power_mw_ci",
                                  "idle_power_mw", "loop_latency_ms", "loop_latency_ms_ci",
                                  "per_call_mj": {"total", "dynamic"}} | null}]
    model_check      {"batch", "latency_ms": check, "energy_mj": {"rounds", "exit_fraction", "total": check,
                      "dynamic": check}, "verdict": str} | null
                     check = {"measured", "measured_ci", "predicted", "predicted_ci", "difference",
                              "difference_ci", "ratio"[, "calls", "exit_fraction"]}
    batches          [{"batch": B, "stages": [...], "exits": [...], "idle", "model_check"}] for every --batch
    idle             {"power_mw", "power_mw_ci", "brackets", "brackets_used", "window_s", "covered_s", "samples",
                      "complete", "gaps", "drift_mw", "rails_power_mw": {rail: mW}} | null
    blocks           [{"kind": "idle" | "exit" | "early", "exit", "batch", "round", "settle_start_s", "start_s",
                       "end_s" (s from trace_origin_s), "calls", "samples" (inferences), "exit_counts",
                       "mean_power_mw", "coverage", "complete", "power_samples", "rails_mean_power_mw"}]
    memory           {"before": {"rss_mib", "rss_peak_mib", "mem_available_mib", "nvmap_used_mib"},
                      "after_load": {...}, "after_run": {...}, "load": {"rss_delta_mib", "mem_available_taken_mib",
                      "nvmap_used_delta_mib"}, "run": {...}, "backend": {...} | null, "model_bytes": total,
                      "per_exit": {"static": [{"index", "model_bytes", "plan_bytes"?, "weights_bytes"?,
                                               "device_memory_bytes"?}],
                                   "measured": [{"index", "rss_delta_mib", "nvmap_used_delta_mib",
                                                 "system_mem_available_taken_mib", "device_taken_mib"}],
                                   "shared_buffers_bytes": {...}, "note"}}
    accuracy         {"samples", "labelled": bool, "per_exit_top1": [...] | null, "policy",
                      "current": {"thresholds", "accuracy", "exit_fraction": [...], "mean_latency_ms",
                                  "mean_energy_mj" | null, "mean_dynamic_energy_mj" | null,
                                  "measured_exit_fraction", "measured_mean_latency_ms"},
                      "sweep": [{"threshold", "thresholds", "accuracy", "exit_fraction", "mean_latency_ms",
                                 "mean_energy_mj", "mean_dynamic_energy_mj", "pareto_latency": bool,
                                 "pareto_energy": bool, "pareto_dynamic_energy": bool}]}
    overhead         {"sampler": entry | null, "per_exit": [entry] | null, "mode", "source_kept_running"[, "reason"]}
                     entry = {"batch", "exit", "latency_ms_without", "latency_ms_with", "overhead_pct",
                              "overhead_pct_ci", "block_pairs", "block_s", "runs_without", "runs_with"}
    notes            [str]: what a reader must know (defaults used, energy unavailable, gaps, windows left
                     out, indistinguishable exits, negative stage estimates, mode or clock changes)

"accuracy" uses the real per-exit outputs on the data; "mean_latency_ms"/"mean_energy_mj" of a
threshold setting are the exit fractions times the measured per-exit costs (batch ``batch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from hisd_edge.errors import InputError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    from hisd_edge import schemas  # the published schemas: hisd_edge/schemas/profile-v{1,2}.schema.json

    p = resolve_profile_path(path)
    data = schemas.read_json(p, max_bytes=schemas.MAX_REPORT_BYTES, fix="re-run hisd-edge profile")
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise InputError(f"{p}: not a hisd-edge profile (kind is not {KIND!r})")
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise InputError(
            f"{p}: profile schema version {data.get('schema_version')!r} is not supported "
            f"(this hisd-edge reads versions {', '.join(map(str, READABLE_VERSIONS))}); re-run hisd-edge profile"
        )
    name = schemas.PROFILE_V1 if data["schema_version"] == 1 else schemas.PROFILE
    schemas.validate(data, name, what=str(p), fix="the file is damaged; re-run hisd-edge profile")
    return data
