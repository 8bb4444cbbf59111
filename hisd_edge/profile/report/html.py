"""One self-contained HTML page per profile (and per comparison): tables, notes, plots inline.

Plots are embedded as base64 PNG ``data:`` URIs and the style sheet is inline, so the page can be
mailed or copied off a Jetson as a single file.
"""

from __future__ import annotations

import base64
import html
from typing import Any, Dict, List, Optional, Sequence

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#212529;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dee2e6;padding-bottom:.2rem}
.sub{color:#495057;margin-top:0}table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #dee2e6;padding:.25rem .55rem;text-align:right}th{background:#f1f3f5}
td.l,th.l{text-align:left}.notes{background:#fff4e6;border-left:4px solid #f08c00;padding:.5rem 1rem;margin:1rem 0}
.notes li{margin:.2rem 0}.na{color:#868e96}img{max-width:100%;border:1px solid #e9ecef;margin:.4rem 0}
.grid{display:flex;flex-wrap:wrap;gap:1rem}.kv td{text-align:left}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 3) -> str:
    """A figure for display; 'n/a' (styled) when not measured."""
    if value is None:
        return '<span class="na">n/a</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return '<span class="na">n/a</span>'
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    return _e(value)


def pct(value: Optional[float]) -> str:
    return '<span class="na">n/a</span>' if value is None else f"{100.0 * value:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: Optional[bytes], alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _energy(entry: Dict[str, Any], key: str) -> Optional[float]:
    energy = entry.get("energy_mj")
    return energy.get(key) if isinstance(energy, dict) else None


def _mode(device: Dict[str, Any]) -> str:
    nvp = device.get("nvpmodel") or {}
    clocks = device.get("jetson_clocks") or {}
    parts = []
    if nvp.get("mode_name"):
        parts.append(
            f"nvpmodel {nvp['mode_name']}" + (f" ({nvp['mode_id']})" if nvp.get("mode_id") is not None else "")
        )
    if clocks.get("state"):
        parts.append(f"jetson_clocks {clocks['state']}")
    return ", ".join(parts) or "n/a (not a Jetson)"


def summary_line(profile: Dict[str, Any]) -> str:
    device, backend, power = profile.get("device") or {}, profile.get("backend") or {}, profile.get("power") or {}
    return (
        f"{device.get('model', '?')} · {backend.get('backend', '?')} {profile.get('precision', '')} · "
        f"power: {power.get('source', '?')}{'' if power.get('available') else ' (energy unavailable)'} · {_mode(device)}"
    )


def _exits_table(profile: Dict[str, Any], block: Dict[str, Any]) -> str:
    accuracy = profile.get("accuracy") or {}
    top1 = accuracy.get("per_exit_top1") or []
    fractions = (accuracy.get("current") or {}).get("exit_fraction") or []
    rows = []
    for e in block["exits"]:
        k = e["index"]
        lat = e.get("latency_ms") or {}
        detail = e.get("energy") or {}
        rows.append(
            [
                str(k),
                num(lat.get("p50")),
                num(lat.get("p90")),
                num(lat.get("p99")),
                num(_energy(e, "total")),
                num(_energy(e, "dynamic")),
                num(detail.get("mean_power_mw"), 4),
                num(detail.get("samples")),
                pct(top1[k]) if k < len(top1) else pct(None),
                pct(fractions[k]) if k < len(fractions) and block is profile else "",
            ]
        )
    return _table(
        [
            "exit",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "energy total mJ",
            "energy dynamic mJ",
            "mean power mW",
            "power samples",
            "top-1 (exit only)",
            "leaves here (current)",
        ],
        rows,
    )


def _stages_table(block: Dict[str, Any]) -> str:
    rows = []
    for s in block["stages"]:
        lat = s.get("latency_ms") or {}
        rows.append(
            [
                str(s["index"]),
                num(lat.get("p50")),
                num(lat.get("p90")),
                num(lat.get("p99")),
                num(_energy(s, "total")),
                num(_energy(s, "dynamic")),
                num(s.get("model_bytes")),
            ]
        )
    return _table(["stage", "p50 ms", "p90 ms", "p99 ms", "energy total mJ", "energy dynamic mJ", "model bytes"], rows)


def _kv(pairs: Sequence[tuple]) -> str:
    return (
        '<table class="kv">'
        + "".join(f"<tr><th class='l'>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)
        + "</table>"
    )


def render_html(profile: Dict[str, Any], images: Dict[str, Optional[bytes]], notes: Sequence[str] = ()) -> str:
    bundle, device, power = profile.get("bundle") or {}, profile.get("device") or {}, profile.get("power") or {}
    backend, policy = profile.get("backend") or {}, profile.get("policy") or {}
    accuracy, memory = profile.get("accuracy") or {}, profile.get("memory") or {}
    parts: List[str] = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>hisd-edge profile: {_e(bundle.get('name', ''))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Profile of {_e(bundle.get('name', '?'))}</h1>",
        f"<p class='sub'>{_e(summary_line(profile))}<br>created {_e(profile.get('created', '?'))} · hisd-edge "
        f"{_e(profile.get('toolkit_version', '?'))}</p>",
    ]
    all_notes = list(profile.get("notes") or []) + list(notes)
    if all_notes:
        parts.append(
            "<div class='notes'><b>Notes</b><ul>" + "".join(f"<li>{_e(n)}</li>" for n in all_notes) + "</ul></div>"
        )
    current = accuracy.get("current") or {}
    parts.append(f"<h2>Per exit (batch {_e(profile.get('batch', 1))}; latency cumulative from the input)</h2>")
    parts.append(_exits_table(profile, profile))
    if current:
        thresholds = ", ".join("-" if t is None else f"{t:.4g}" for t in current.get("thresholds") or [])
        parts.append(
            _kv(
                [
                    (
                        "policy",
                        _e(
                            f"{policy.get('kind', '?')} [{thresholds}]"
                            + ("" if policy.get("calibrated") else " (defaults: not calibrated)")
                        ),
                    ),
                    ("accuracy at current thresholds", pct(current.get("accuracy"))),
                    ("expected mean latency per call (ms)", num(current.get("mean_latency_ms"))),
                    (
                        "measured mean latency per call, early exit on (ms)",
                        num(current.get("measured_mean_latency_ms")),
                    ),
                    ("expected mean energy per sample (mJ)", num(current.get("mean_energy_mj"))),
                ]
            )
        )
    parts.append("<h2>Per stage</h2>" + _stages_table(profile))
    parts.append("<h2>Trade-offs</h2><div class='grid'>")
    for name, alt in (
        ("accuracy_vs_latency.png", "accuracy vs latency"),
        ("accuracy_vs_energy.png", "accuracy vs energy"),
        ("exit_distribution.png", "exit distribution"),
        ("stage_breakdown.png", "per-stage breakdown"),
        ("power_trace.png", "power over the run"),
    ):
        parts.append(_img(images.get(name), alt))
    parts.append("</div>")
    sweep = accuracy.get("sweep") or []
    if sweep:
        rows = [
            [
                num(p.get("threshold"), 4) if p.get("threshold") is not None else "never early",
                pct(p.get("accuracy")),
                num(p.get("mean_latency_ms")),
                num(p.get("mean_energy_mj")),
                " / ".join(f"{100.0 * f:.1f}" for f in p.get("exit_fraction") or []),
                ("latency " if p.get("pareto_latency") else "") + ("energy" if p.get("pareto_energy") else ""),
            ]
            for p in sweep
        ]
        parts.append(
            "<details><summary>Threshold sweep ("
            + str(len(sweep))
            + " points)</summary>"
            + _table(["threshold", "accuracy", "mean latency ms", "mean energy mJ", "exit fractions %", "Pareto"], rows)
            + "</details>"
        )
    for block in profile.get("batches") or []:
        if block.get("batch") == profile.get("batch"):
            continue
        parts.append(f"<h2>Batch {_e(block['batch'])}</h2>" + _exits_table(profile, block) + _stages_table(block))
    parts.append("<h2>Memory</h2>")
    mem_rows = []
    for label in ("before", "after_load", "after_run"):
        snap = memory.get(label) or {}
        mem_rows.append(
            [
                _e(label.replace("_", " ")),
                num(snap.get("rss_mib"), 4),
                num(snap.get("rss_peak_mib"), 4),
                num(snap.get("mem_available_mib"), 5),
                num(snap.get("nvmap_used_mib"), 4),
            ]
        )
    parts.append(_table(["when", "RSS MiB", "peak RSS MiB", "MemAvailable MiB", "NvMapMemUsed MiB"], mem_rows))
    load = memory.get("load") or {}
    parts.append(
        _kv(
            [
                ("model files (bytes)", num(memory.get("model_bytes"))),
                ("RSS growth on load (MiB)", num(load.get("rss_delta_mib"), 4)),
                ("system memory taken on load (MiB)", num(load.get("mem_available_taken_mib"), 4)),
                ("NvMap growth on load (MiB)", num(load.get("nvmap_used_delta_mib"), 4)),
                ("backend report", _e(memory.get("backend")) if memory.get("backend") else num(None)),
            ]
        )
    )
    parts.append("<h2>Setup</h2>")
    overhead = (profile.get("overhead") or {}).get("sampler") or {}
    idle = profile.get("idle") or {}
    parts.append(
        _kv(
            [
                ("bundle", _e(bundle.get("path", ""))),
                ("stages / exits", _e(f"{bundle.get('stages')} / {bundle.get('exits')}")),
                ("backend", _e(", ".join(f"{k}={v}" for k, v in backend.items()))),
                ("precision", _e(profile.get("precision"))),
                ("device", _e(device.get("model"))),
                ("L4T", num(device.get("l4t_release"))),
                ("power mode", _e(_mode(device))),
                ("power source", _e(power.get("source"))),
                ("total power from", num(power.get("total"))),
                ("rails", _e(", ".join(power.get("rails") or [])) or num(None)),
                ("sampling period (ms)", num(power.get("sampling_period_ms"))),
                ("idle power (mW)", num(idle.get("power_mw"), 4)),
                ("energy unavailable because", _e(power.get("reason")) if not power.get("available") else "-"),
                (
                    "sampler overhead on latency",
                    (f"{overhead['overhead_pct']:.2f}%" if overhead.get("overhead_pct") is not None else num(None))
                    + (
                        _e(
                            f" (sampling thread only: the {overhead.get('source')} source kept running while the sampler was off)"
                        )
                        if overhead.get("source_kept_running")
                        else ""
                    ),
                ),
                ("settings", _e(", ".join(f"{k}={v}" for k, v in (profile.get("settings") or {}).items()))),
                ("command", _e(profile.get("command", ""))),
            ]
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_compare_html(
    profiles: Sequence[Dict[str, Any]],
    labels: Sequence[str],
    images: Dict[str, Optional[bytes]],
    notes: Sequence[str] = (),
) -> str:
    parts: List[str] = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>hisd-edge profile comparison</title>",
        f"<style>{_STYLE}</style></head><body><h1>Comparison of {len(profiles)} profiles</h1>",
    ]
    parts.append(
        _table(
            ["label", "bundle", "device", "backend", "precision", "power source", "power mode", "batch"],
            [
                [
                    _e(label),
                    _e((p.get("bundle") or {}).get("name")),
                    _e((p.get("device") or {}).get("model")),
                    _e((p.get("backend") or {}).get("backend")),
                    _e(p.get("precision")),
                    _e((p.get("power") or {}).get("source")),
                    _e(_mode(p.get("device") or {})),
                    _e(p.get("batch")),
                ]
                for p, label in zip(profiles, labels)
            ],
            left=8,
        )
    )
    if notes:
        parts.append(
            "<div class='notes'><b>Notes</b><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>"
        )
    n_exits = max(len(p.get("exits") or []) for p in profiles)
    header = ["exit"] + [f"{label} p50 ms" for label in labels] + [f"{label} energy mJ" for label in labels]
    rows = []
    for k in range(n_exits):
        row = [str(k)]
        for p in profiles:
            exits = p.get("exits") or []
            row.append(num((exits[k].get("latency_ms") or {}).get("p50")) if k < len(exits) else "")
        for p in profiles:
            exits = p.get("exits") or []
            row.append(num(_energy(exits[k], "total")) if k < len(exits) else "")
        rows.append(row)
    parts.append("<h2>Cost to reach each exit</h2>" + _table(header, rows))
    summary = []
    for p, label in zip(profiles, labels):
        current = (p.get("accuracy") or {}).get("current") or {}
        summary.append(
            [
                _e(label),
                pct(current.get("accuracy")),
                num(current.get("mean_latency_ms")),
                num(current.get("mean_energy_mj")),
            ]
        )
    parts.append(
        "<h2>At each profile's current thresholds</h2>"
        + _table(["label", "accuracy", "mean latency ms", "mean energy mJ"], summary)
    )
    parts.append("<h2>Plots</h2><div class='grid'>")
    for name in (
        "compare_accuracy_vs_latency.png",
        "compare_accuracy_vs_energy.png",
        "compare_exit_latency.png",
        "compare_exit_energy.png",
    ):
        parts.append(_img(images.get(name), name))
    parts.append("</div></body></html>")
    return "\n".join(parts)
