"""CSV tables of a profile: per-exit and per-stage costs for every batch size, and the sweep.

Column names carry units. Empty cells mean "not measured" (e.g. energy with no power source).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Dict, List, Optional


def _get(d: Optional[Dict[str, Any]], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _csv(header: List[str], rows: List[List[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_fmt(v) for v in row])
    return out.getvalue()


def _batches(profile: Dict[str, Any]) -> List[Dict[str, Any]]:
    return profile.get("batches") or [
        {"batch": profile.get("batch", 1), "stages": profile["stages"], "exits": profile["exits"]}
    ]


def exits_csv(profile: Dict[str, Any]) -> str:
    header = [
        "batch",
        "exit",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p99_ms",
        "latency_mean_ms",
        "energy_total_mj",
        "energy_dynamic_mj",
        "mean_power_mw",
        "idle_power_mw",
        "energy_window_s",
        "power_samples",
        "sampling_period_ms",
        "energy_complete",
        "energy_unavailable_reason",
    ]
    rows = []
    for block in _batches(profile):
        for e in block["exits"]:
            lat, en, det = e.get("latency_ms") or {}, e.get("energy_mj"), e.get("energy")
            rows.append(
                [
                    block["batch"],
                    e["index"],
                    lat.get("p50"),
                    lat.get("p90"),
                    lat.get("p99"),
                    lat.get("mean"),
                    _get(en, "total"),
                    _get(en, "dynamic"),
                    _get(det, "mean_power_mw"),
                    _get(det, "idle_power_mw"),
                    _get(det, "window_s"),
                    _get(det, "samples"),
                    _get(det, "sampling_period_ms"),
                    _get(det, "complete"),
                    e.get("energy_unavailable_reason"),
                ]
            )
    return _csv(header, rows)


def stages_csv(profile: Dict[str, Any]) -> str:
    header = [
        "batch",
        "stage",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p99_ms",
        "latency_mean_ms",
        "energy_total_mj",
        "energy_dynamic_mj",
        "model_bytes",
    ]
    rows = []
    for block in _batches(profile):
        for s in block["stages"]:
            lat, en = s.get("latency_ms") or {}, s.get("energy_mj")
            rows.append(
                [
                    block["batch"],
                    s["index"],
                    lat.get("p50"),
                    lat.get("p90"),
                    lat.get("p99"),
                    lat.get("mean"),
                    _get(en, "total"),
                    _get(en, "dynamic"),
                    s.get("model_bytes"),
                ]
            )
    return _csv(header, rows)


def sweep_csv(profile: Dict[str, Any]) -> str:
    sweep = _get(profile, "accuracy", "sweep") or []
    n = len(profile.get("exits") or [])
    header = ["threshold", "accuracy", "mean_latency_ms", "mean_energy_mj", "pareto_latency", "pareto_energy"] + [
        f"exit{k}_fraction" for k in range(n)
    ]
    rows = []
    for point in sweep:
        fractions = list(point.get("exit_fraction") or [])
        rows.append(
            [
                point.get("threshold"),
                point.get("accuracy"),
                point.get("mean_latency_ms"),
                point.get("mean_energy_mj"),
                point.get("pareto_latency"),
                point.get("pareto_energy"),
            ]
            + fractions
            + [None] * (n - len(fractions))
        )
    return _csv(header, rows)


def power_trace_csv(profile: Dict[str, Any]) -> Optional[str]:
    trace = _get(profile, "power", "trace")
    if not trace or not trace.get("time_s"):
        return None
    return _csv(["time_s", "total_mw"], [[t, p] for t, p in zip(trace["time_s"], trace["total_mw"])])


TABLE_NAMES = ("exits.csv", "stages.csv", "sweep.csv", "power_trace.csv")  # every name all_tables may return


def all_tables(profile: Dict[str, Any]) -> Dict[str, str]:
    """{file name: CSV text}; the names are among :data:`TABLE_NAMES`."""
    tables = {"exits.csv": exits_csv(profile), "stages.csv": stages_csv(profile)}
    if _get(profile, "accuracy", "sweep"):
        tables["sweep.csv"] = sweep_csv(profile)
    trace = power_trace_csv(profile)
    if trace:
        tables["power_trace.csv"] = trace
    return tables
