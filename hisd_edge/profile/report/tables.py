"""CSV tables of a profile: per-exit and per-stage costs for every batch size (with their confidence
intervals), per-rail energy, the measured blocks, the model check, and the sweep.

Column names carry units; ``*_ci_low``/``*_ci_high`` bound the interval of the column before them.
Empty cells mean "not measured" (e.g. energy with no power source, an interval from one round).
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


def _ci(d: Optional[Dict[str, Any]], key: str) -> List[Any]:
    ci = _get(d, key)
    return [ci[0], ci[1]] if isinstance(ci, list) and len(ci) == 2 else [None, None]


def exits_csv(profile: Dict[str, Any]) -> str:
    header = [
        "batch",
        "exit",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p99_ms",
        "latency_mean_ms",
        "latency_mean_ci_low_ms",
        "latency_mean_ci_high_ms",
        "energy_total_mj",
        "energy_total_ci_low_mj",
        "energy_total_ci_high_mj",
        "energy_dynamic_mj",
        "energy_dynamic_ci_low_mj",
        "energy_dynamic_ci_high_mj",
        "energy_rounds",
        "mean_power_mw",
        "idle_power_mw",
        "energy_window_s",
        "power_samples",
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
                    *_ci(lat, "ci"),
                    _get(en, "total"),
                    *_ci(en, "total_ci"),
                    _get(en, "dynamic"),
                    *_ci(en, "dynamic_ci"),
                    _get(en, "rounds"),
                    _get(det, "mean_power_mw"),
                    _get(det, "idle_power_mw"),
                    _get(det, "window_s"),
                    _get(det, "samples"),
                    e.get("energy_unavailable_reason"),
                ]
            )
    return _csv(header, rows)


def rails_csv(profile: Dict[str, Any]) -> Optional[str]:
    """Per batch, exit and rail: total and dynamic energy per sample with intervals, and what the rail covers."""
    covers = {r.get("rail"): r for r in (_get(profile, "power", "rails_covered") or []) if isinstance(r, dict)}
    rows = []
    for block in _batches(profile):
        for e in block["exits"]:
            for rail, en in (e.get("rails_mj") or {}).items():
                rows.append(
                    [
                        block["batch"],
                        e["index"],
                        rail,
                        _get(en, "total"),
                        *_ci(en, "total_ci"),
                        _get(en, "dynamic"),
                        *_ci(en, "dynamic_ci"),
                        (covers.get(rail) or {}).get("in_total"),
                        (covers.get(rail) or {}).get("covers"),
                    ]
                )
    if not rows:
        return None
    header = [
        "batch",
        "exit",
        "rail",
        "energy_total_mj",
        "energy_total_ci_low_mj",
        "energy_total_ci_high_mj",
        "energy_dynamic_mj",
        "energy_dynamic_ci_low_mj",
        "energy_dynamic_ci_high_mj",
        "in_total",
        "covers",
    ]
    return _csv(header, rows)


def blocks_csv(profile: Dict[str, Any]) -> Optional[str]:
    """Every measured block in run order: what ran, its window (s from the first power sample), power."""
    blocks = profile.get("blocks") or []
    if not blocks:
        return None
    rails = sorted({r for b in blocks for r in (b.get("rails_mean_power_mw") or {})})
    header = [
        "batch",
        "round",
        "kind",
        "exit",
        "settle_start_s",
        "start_s",
        "end_s",
        "calls",
        "inferences",
        "mean_power_mw",
        "coverage",
        "power_samples",
    ] + [f"{r}_mean_power_mw" for r in rails]
    rows = [
        [
            b.get("batch"),
            b.get("round"),
            b.get("kind"),
            b.get("exit"),
            b.get("settle_start_s"),
            b.get("start_s"),
            b.get("end_s"),
            b.get("calls"),
            b.get("samples"),
            b.get("mean_power_mw"),
            b.get("coverage"),
            b.get("power_samples"),
        ]
        + [(b.get("rails_mean_power_mw") or {}).get(r) for r in rails]
        for b in blocks
    ]
    return _csv(header, rows)


def model_check_csv(profile: Dict[str, Any]) -> Optional[str]:
    """Measured early-exit pass vs the per-exit prediction, per quantity, with intervals."""
    check = profile.get("model_check") or {}
    rows = []
    for name, entry in (
        ("latency_ms_per_call", check.get("latency_ms")),
        ("dynamic_energy_mj_per_sample", _get(check, "energy_mj", "dynamic")),
        ("total_energy_mj_per_sample", _get(check, "energy_mj", "total")),
    ):
        if not entry:
            continue
        rows.append(
            [
                check.get("batch"),
                name,
                entry.get("measured"),
                *_ci(entry, "measured_ci"),
                entry.get("predicted"),
                *_ci(entry, "predicted_ci"),
                entry.get("difference"),
                *_ci(entry, "difference_ci"),
                entry.get("ratio"),
            ]
        )
    if not rows:
        return None
    header = [
        "batch",
        "quantity",
        "measured",
        "measured_ci_low",
        "measured_ci_high",
        "predicted",
        "predicted_ci_low",
        "predicted_ci_high",
        "difference",
        "difference_ci_low",
        "difference_ci_high",
        "ratio",
    ]
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
        "energy_total_ci_low_mj",
        "energy_total_ci_high_mj",
        "energy_dynamic_mj",
        "energy_dynamic_ci_low_mj",
        "energy_dynamic_ci_high_mj",
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
                    *_ci(en, "total_ci"),
                    _get(en, "dynamic"),
                    *_ci(en, "dynamic_ci"),
                    s.get("model_bytes"),
                ]
            )
    return _csv(header, rows)


def thresholds_arg(thresholds: List[Any]) -> str:
    """A threshold setting as ``--thresholds`` takes it: the K-1 non-final exits, 'none' for never."""
    return ",".join("none" if t is None else f"{float(t):.6g}" for t in list(thresholds)[:-1])


def sweep_csv(profile: Dict[str, Any]) -> str:
    sweep = _get(profile, "accuracy", "sweep") or []
    n = len(profile.get("exits") or [])
    header = [
        "threshold",
        "thresholds",
        "label",
        "accuracy",
        "mean_latency_ms",
        "mean_energy_mj",
        "mean_dynamic_energy_mj",
        "pareto_latency",
        "pareto_energy",
        "pareto_dynamic_energy",
    ] + [f"exit{k}_fraction" for k in range(n)]
    rows = []
    for point in sweep:
        fractions = list(point.get("exit_fraction") or [])
        rows.append(
            [
                point.get("threshold"),  # blank: per-exit thresholds, or never leave early
                thresholds_arg(point.get("thresholds") or []),
                point.get("label"),
                point.get("accuracy"),
                point.get("mean_latency_ms"),
                point.get("mean_energy_mj"),
                point.get("mean_dynamic_energy_mj"),
                point.get("pareto_latency"),
                point.get("pareto_energy"),
                point.get("pareto_dynamic_energy"),
            ]
            + fractions
            + [None] * (n - len(fractions))
        )
    return _csv(header, rows)


def power_trace_csv(profile: Dict[str, Any]) -> Optional[str]:
    trace = _get(profile, "power", "trace")
    if not trace or not trace.get("time_s"):
        return None
    rails = trace.get("rails_mw") or {}
    names = list(rails)
    rows = [
        [t, p] + [rails[name][i] for name in names] for i, (t, p) in enumerate(zip(trace["time_s"], trace["total_mw"]))
    ]
    return _csv(["time_s", "total_mw"] + [f"{name}_mw" for name in names], rows)


# every name all_tables may return
TABLE_NAMES = (
    "exits.csv",
    "stages.csv",
    "rails.csv",
    "blocks.csv",
    "model_check.csv",
    "sweep.csv",
    "power_trace.csv",
)


def all_tables(profile: Dict[str, Any]) -> Dict[str, str]:
    """{file name: CSV text}; the names are among :data:`TABLE_NAMES`."""
    tables = {"exits.csv": exits_csv(profile), "stages.csv": stages_csv(profile)}
    for name, make in (
        ("rails.csv", rails_csv),
        ("blocks.csv", blocks_csv),
        ("model_check.csv", model_check_csv),
        ("power_trace.csv", power_trace_csv),
    ):
        text = make(profile)
        if text:
            tables[name] = text
    if _get(profile, "accuracy", "sweep"):
        tables["sweep.csv"] = sweep_csv(profile)
    return tables
