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
.grid{display:flex;flex-wrap:wrap;gap:1rem}.kv td{text-align:left}.ci{color:#495057;font-size:.8rem}
.flag{background:#fff5f5;border-left:4px solid #e03131;padding:.5rem 1rem;margin:1rem 0}
.headline{background:#edf2ff;border:1px solid #bac8ff;border-radius:6px;padding:.6rem 1.2rem;margin:1rem 0}
.headline .big{font-size:1.6rem;font-weight:600;color:#1c3d99;margin:.2rem 0}.headline p{margin:.3rem 0}
.headline .method{color:#495057;font-size:.82rem}
code{background:#f1f3f5;padding:.05rem .3rem;border-radius:3px;font-size:.85rem;word-break:break-all}
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

    def cell(i: int, c: str) -> str:
        if i < left or c.startswith("<code>"):  # names and command lines read from the left
            return f'<td class="l">{c}</td>'
        return f"<td>{c}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_NA = '<span class="na">n/a</span>'


def _collapse(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A table without its all-n/a columns, and one line naming them (instead of columns of n/a)."""
    keep = [i for i in range(len(header)) if i < left or any(row[i] not in (_NA, "") for row in rows)]
    dropped = [header[i] for i in range(len(header)) if i not in keep]
    table = _table([header[i] for i in keep], [[row[i] for i in keep] for row in rows], left)
    if dropped and rows:
        table += f"<p class='na'>not measured on this run: {_e(', '.join(dropped))}</p>"
    return table


def _img(png: Optional[bytes], alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _energy(entry: Dict[str, Any], key: str) -> Optional[float]:
    energy = entry.get("energy_mj")
    return energy.get(key) if isinstance(energy, dict) else None


def with_ci(value: Any, ci: Any, digits: int = 3) -> str:
    """``value [low, high]``; the interval left out when there is none."""
    if value is None:
        return num(None)
    text = num(value, digits)
    if isinstance(ci, list) and len(ci) == 2 and ci[0] is not None:
        text += f' <span class="ci">[{num(ci[0], digits)}, {num(ci[1], digits)}]</span>'
    return text


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
    total = f" ({power.get('total')})" if power.get("available") and power.get("total") else ""
    return (
        f"{device.get('model', '?')} · {backend.get('backend', '?')} {profile.get('precision', '')} · "
        f"power: {power.get('source', '?')}{total}{'' if power.get('available') else ' (energy unavailable)'} · "
        f"{_mode(device)}"
    )


def _exits_table(profile: Dict[str, Any], block: Dict[str, Any]) -> str:
    accuracy = profile.get("accuracy") or {}
    top1 = accuracy.get("per_exit_top1") or []
    fractions = (accuracy.get("current") or {}).get("exit_fraction") or []
    rows = []
    for e in block["exits"]:
        k = e["index"]
        lat = e.get("latency_ms") or {}
        energy = e.get("energy_mj") or {}
        detail = e.get("energy") or {}
        rows.append(
            [
                str(k),
                num(lat.get("p50")),
                num(lat.get("p99")),
                with_ci(lat.get("mean"), lat.get("ci")),
                with_ci(energy.get("dynamic"), energy.get("dynamic_ci")),
                with_ci(energy.get("total"), energy.get("total_ci")),
                num(energy.get("rounds")),
                num(detail.get("mean_power_mw"), 4),
                pct(top1[k]) if k < len(top1) else pct(None),
                pct(fractions[k]) if k < len(fractions) and block is profile else "",
            ]
        )
    power = profile.get("power") or {}
    total = f" ({power.get('total')})" if power.get("total") else ""
    return _collapse(
        [
            "exit",
            "p50 ms",
            "p99 ms",
            "mean ms [95% CI]",
            f"dynamic mJ{total} [95% CI]",
            f"total mJ{total} [95% CI]",
            "rounds",
            "mean power mW",
            "top-1 (exit only)",
            "leaves here (current)",
        ],
        rows,
    )


def _rails_table(profile: Dict[str, Any]) -> str:
    covered = {r.get("rail"): r for r in (profile.get("power") or {}).get("rails_covered") or []}
    rows = []
    for e in profile.get("exits") or []:
        for rail, found in (e.get("rails_mj") or {}).items():
            en = found or {}
            info = covered.get(rail) or {}
            is_total = rail == (profile.get("power") or {}).get("total")
            rows.append(
                [
                    str(e["index"]),
                    _e(rail) + (" (the total)" if is_total else ""),
                    _e(info.get("covers") or "not documented for this board"),
                    with_ci(en.get("dynamic"), en.get("dynamic_ci")),
                    with_ci(en.get("total"), en.get("total_ci")),
                ]
            )
    if not rows:
        return ""
    return _table(["exit", "rail", "what the rail covers", "dynamic mJ [95% CI]", "total mJ [95% CI]"], rows, left=3)


def _stages_table(block: Dict[str, Any]) -> str:
    rows = []
    for s in block["stages"]:
        lat = s.get("latency_ms") or {}
        energy = s.get("energy_mj") or {}
        rows.append(
            [
                str(s["index"]),
                num(lat.get("p50")),
                num(lat.get("p99")),
                with_ci(energy.get("dynamic"), energy.get("dynamic_ci")),
                with_ci(energy.get("total"), energy.get("total_ci")),
                num(s.get("model_bytes")),
            ]
        )
    return _collapse(["stage", "p50 ms", "p99 ms", "dynamic mJ [95% CI]", "total mJ [95% CI]", "model bytes"], rows)


def _kv(pairs: Sequence[tuple], collapse: bool = False) -> str:
    """A two-column table; with ``collapse``, rows whose value is n/a become one line naming them."""
    if collapse:
        missing = [k for k, v in pairs if v == _NA]
        shown = [(k, v) for k, v in pairs if v != _NA]
        note = f"<p class='na'>not measured on this run: {_e(', '.join(missing))}</p>" if missing else ""
        return _kv(shown) + note
    return (
        '<table class="kv">'
        + "".join(f"<tr><th class='l'>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)
        + "</table>"
    )


def _model_check(profile: Dict[str, Any]) -> str:
    check = profile.get("model_check") or {}
    return _model_check_block(check)


def _model_check_block(check: Dict[str, Any]) -> str:
    rows = []
    for name, entry in (
        ("latency per call (ms)", check.get("latency_ms")),
        ("dynamic energy per sample (mJ)", (check.get("energy_mj") or {}).get("dynamic")),
        ("total energy per sample (mJ)", (check.get("energy_mj") or {}).get("total")),
    ):
        if not entry:
            continue
        rows.append(
            [
                _e(name),
                with_ci(entry.get("predicted"), entry.get("predicted_ci"), 4),
                with_ci(entry.get("measured"), entry.get("measured_ci"), 4),
                with_ci(entry.get("difference"), entry.get("difference_ci"), 3),
                num(entry.get("ratio"), 4),
            ]
        )
    if not rows:
        return "<p class='na'>not measured (--no-model-check, or no early-exit calls)</p>"
    fractions = (check.get("energy_mj") or {}).get("exit_fraction") or (check.get("latency_ms") or {}).get(
        "exit_fraction"
    )
    calls = (check.get("latency_ms") or {}).get("calls")
    head = (
        "<p>The real early-exit loop at the current thresholds, measured, against the prediction the thresholds "
        "search makes: the sum over exits of (fraction leaving there) x (cost of reaching it), with the fractions the "
        "real loop took"
        + (
            f" ({' / '.join(f'{100 * f:.1f}%' for f in fractions)}"
            + (f" over its {calls} calls; the headline's shares come from its own passes" if calls else "")
            + ")"
            if fractions
            else ""
        )
        + f". Batch {_e(check.get('batch'))}.</p>"
        "<p class='sub'>Why they differ: the per-exit costs are stages forced to run with no exit decision; a real "
        "call also scores every exit it passes (softmax, the policy, the input guard), builds its results and "
        "pays the per-call overhead of the Python loop. When a stage takes microseconds (a small model on a CPU) "
        "that overhead is a large share of the call and &quot;measured&quot; sits well above &quot;predicted&quot;; "
        "on a Jetson GPU the stages dominate and the two agree. The headline above times the real call.</p>"
    )
    return (
        head
        + _table(
            ["quantity", "predicted [95% CI]", "measured [95% CI]", "difference [95% CI]", "measured / predicted"], rows
        )
        + f"<p><b>{_e(check.get('verdict', ''))}</b></p>"
    )


def _spread(entry: Any, scale: float = 1.0, unit: str = "") -> str:
    if not isinstance(entry, dict) or entry.get("min") is None:
        return num(None)
    low, high = entry["min"] / scale, entry["max"] / scale
    return _e(f"{low:.4g}{unit}" if low == high else f"{low:.4g}..{high:.4g}{unit}")


def _conditions(profile: Dict[str, Any]) -> str:
    cond = profile.get("conditions") or {}
    summary = cond.get("summary") or {}
    jc = cond.get("jetson_clocks_start") or {}
    jc_end = cond.get("jetson_clocks_end") or {}

    def part(value: Any) -> str:
        return "held" if value is True else "free (DVFS)" if value is False else "unknown"

    rows = [
        (
            "nvpmodel at start / end",
            _e(
                f"{(cond.get('nvpmodel_start') or {}).get('mode_name') or 'n/a'} / {(cond.get('nvpmodel_end') or {}).get('mode_name') or 'n/a'}"
            ),
        ),
        ("jetson_clocks at start / end", _e(f"{jc.get('state', 'n/a')} / {jc_end.get('state', 'n/a')}")),
        (
            "CPU / GPU / EMC clocks",
            _e(f"CPU {part(jc.get('cpu'))}, GPU {part(jc.get('gpu'))}, EMC {part(jc.get('emc'))}")
            + (f" <span class='na'>({_e(jc.get('emc_reason'))})</span>" if jc.get("emc_reason") else ""),
        ),
        (
            "CPU clock over the run (MHz)",
            ", ".join(f"{_e(n)} {_spread(v, 1000.0)}" for n, v in (summary.get("cpu_khz") or {}).items()) or num(None),
        ),
        (
            "GPU clock over the run (MHz)",
            ", ".join(f"{_e(n)} {_spread(v, 1e6)}" for n, v in (summary.get("gpu_hz") or {}).items()) or num(None),
        ),
        ("EMC clock over the run (MHz)", _spread(summary.get("emc_hz"), 1e6)),
        (
            "temperatures over the run (C)",
            ", ".join(f"{_e(n)} {_spread(v)}" for n, v in (summary.get("temps_c") or {}).items()) or num(None),
        ),
        ("throttle events", _e(", ".join(summary.get("throttle_events") or [])) or "none seen"),
        ("snapshots (before and after every window)", num(summary.get("snapshots"))),
        ("flags", _e("; ".join(cond.get("flags") or [])) or "none: one condition throughout"),
    ]
    return _kv(rows, collapse=True)


def _power_section(profile: Dict[str, Any]) -> str:
    power = profile.get("power") or {}
    if not power.get("available"):  # one line, not a table of n/a
        return f"<p>Energy was not measured: {_e(power.get('reason') or 'no power source')}.</p>"
    sensor = profile.get("sensor") or {}
    settings = profile.get("settings") or {}
    design = profile.get("design") or {}
    overhead = profile.get("overhead") or {}
    rule = power.get("total_rule") or {}
    parts = [
        _kv(
            [
                ("power source", _e(power.get("source"))),
                (
                    "sampling",
                    _e(f"{power.get('sampler') or 'n/a'}, every {num(power.get('sampling_period_ms'))} ms")
                    if power.get("available")
                    else num(None),
                ),
                (
                    "total",
                    _e(f"{power.get('total')}: {rule.get('meaning', '')}")
                    if power.get("available")
                    else _e(power.get("reason")),
                ),
                (
                    "sensor",
                    _e(
                        f"{sensor.get('kind')}: samples {sensor.get('samples')}, update_interval "
                        f"{sensor.get('update_interval_ms')} ms ({sensor.get('update_interval_meaning')}), "
                        f"tau {num(sensor.get('tau_s'))} s" + (" (assumed)" if sensor.get("assumed") else "")
                    )
                    if sensor
                    else num(None),
                ),
                ("settling discarded per window (s)", num(settings.get("settle_s"))),
                (
                    "measuring window (s)",
                    _e(
                        f"{num(settings.get('window_s'))} (idle {num(settings.get('idle_s'))}); about {num(settings.get('independent_readings_per_window'))} independent readings each"
                    )
                    if sensor
                    else num(None),
                ),
                (
                    "design",
                    _e(
                        f"{design.get('rounds')} rounds, seed {design.get('seed')}, confidence {settings.get('confidence')}"
                    )
                    if design.get("order")
                    else num(None),
                ),
                ("order (first batch)", _e(" | ".join(", ".join(r) for r in design.get("order") or [])) or num(None)),
                (
                    "warm-up",
                    _e(
                        f"{(design.get('warmup') or {}).get('seconds', 0):.0f} s, steady: {(design.get('warmup') or {}).get('steady')}"
                    )
                    if design.get("warmup")
                    else num(None),
                ),
                (
                    "idle power (mW)",
                    with_ci(
                        (profile.get("idle") or {}).get("power_mw"), (profile.get("idle") or {}).get("power_mw_ci"), 4
                    ),
                ),
                ("idle drift over the run (mW)", num((profile.get("idle") or {}).get("drift_mw"), 3)),
            ]
        )
    ]
    covered = power.get("rails_covered") or []
    if covered:
        parts.append(
            _table(
                ["rail", "in the total", "what it covers"],
                [[_e(r.get("rail")), "yes" if r.get("in_total") else "no", _e(r.get("covers"))] for r in covered],
                left=3,
            )
        )
    kept = overhead.get("source_kept_running") or (overhead.get("sampler") or {}).get("source_kept_running")
    if kept:
        parts.append(
            "<p>"
            + _e(
                f"The sampler-overhead figures cover only the polling: the {power.get('source')} source kept running "
                "while polling was paused, so its own cost is in both blocks of every pair."
            )
            + "</p>"
        )
    per_exit = overhead.get("per_exit") or []
    if per_exit:
        parts.append(
            "<p>Sampler overhead at every exit (alternating paused / polling block pairs; ratio of mean latency minus one):</p>"
            + _table(
                ["exit", "overhead % [95% CI]", "mean ms paused", "mean ms polling", "pairs"],
                [
                    [
                        str(o["exit"]),
                        with_ci(o.get("overhead_pct"), o.get("overhead_pct_ci")),
                        num(o.get("latency_ms_without")),
                        num(o.get("latency_ms_with")),
                        num(o.get("block_pairs")),
                    ]
                    for o in per_exit
                ],
            )
        )
    return "".join(parts)


def _memory_section(memory: Dict[str, Any]) -> str:
    parts = []
    per_exit = memory.get("per_exit") or {}
    static = {e["index"]: e for e in per_exit.get("static") or []}
    measured = {e["index"]: e for e in per_exit.get("measured") or []}
    if static or measured:
        rows = []
        for k in sorted(set(static) | set(measured)):
            st, me = static.get(k) or {}, measured.get(k) or {}
            rows.append(
                [
                    str(k),
                    num(st.get("model_bytes")),
                    num(st.get("plan_bytes")),
                    num(st.get("weights_bytes")),
                    num(st.get("device_memory_bytes")),
                    num(me.get("device_taken_mib"), 4),
                    num(me.get("rss_delta_mib"), 4),
                    num(me.get("nvmap_used_delta_mib"), 4),
                    num(me.get("system_mem_available_taken_mib"), 4),
                ]
            )
        parts.append(
            "<p>Per exit, what running stages 0..k first took. These are <b>process</b> figures (the whole Python "
            "process's resident set, NvMap and system memory), not the backend's own arena: other allocations in "
            "the process move them too, and ONNX Runtime's CPU arena is not reported separately.</p>"
            + _collapse(
                [
                    "exit",
                    "stage files 0..k (bytes)",
                    "TensorRT plans 0..k",
                    "weights 0..k",
                    "context memory 0..k",
                    "device memory taken (MiB)",
                    "process RSS growth (MiB)",
                    "NvMap growth (MiB)",
                    "system-wide MemAvailable taken (MiB)",
                ],
                rows,
            )
            + f"<p class='sub'>{_e(per_exit.get('note', ''))}</p>"
        )
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
    parts.append(
        "<p>Snapshots (RSS is this process's; MemAvailable is system-wide: any process moves it):</p>"
        + _collapse(
            ["when", "process RSS MiB", "peak process RSS MiB", "system MemAvailable MiB", "NvMapMemUsed MiB"], mem_rows
        )
    )
    load = memory.get("load") or {}
    parts.append(
        _kv(
            [
                ("model files (bytes)", num(memory.get("model_bytes"))),
                ("process RSS growth on load (MiB)", num(load.get("rss_delta_mib"), 4)),
                ("system-wide memory taken on load (MiB)", num(load.get("mem_available_taken_mib"), 4)),
                ("NvMap growth on load (MiB)", num(load.get("nvmap_used_delta_mib"), 4)),
                ("backend report", _e(memory.get("backend")) if memory.get("backend") else num(None)),
            ]
        )
    )
    return "".join(parts)


def _certificate_line(certificate: Dict[str, Any]) -> str:
    from hisd_edge.runtime.risk import certificate_text

    return certificate_text(certificate or {})


def _energy_saving(profile: Dict[str, Any]) -> str:
    """Expected energy per sample at the current thresholds against running every stage."""
    current = (profile.get("accuracy") or {}).get("current") or {}
    exits = profile.get("exits") or []
    last = (exits[-1].get("energy_mj") or {}) if exits else {}
    parts = []
    for kind, key in (("dynamic", "mean_dynamic_energy_mj"), ("total", "mean_energy_mj")):
        now, full = current.get(key), last.get(kind)
        if now is not None and full:
            parts.append(f"{100.0 * (1.0 - now / full):.1f}% {kind} ({now:.3g} vs {full:.3g} mJ per sample)")
    if parts:
        return (
            "energy saving vs running every stage: "
            + "; ".join(parts)
            + " (expected from the per-exit energies and the exit shares)"
        )
    return "energy saving: not measured on this run (no power source here: see Power measurement)"


def _headline_box(profile: Dict[str, Any]) -> str:
    """What to deploy and what it saves: speedup, energy, accuracy drop with its certificate, exit shares."""
    head = profile.get("headline") or {}
    if not head:
        return ""
    lines = []
    certificate = _e(_certificate_line(head.get("certificate") or {}))
    if head.get("available"):
        low, high = head.get("speedup_range") or [head["speedup"], head["speedup"]]
        lines.append(
            f"<p class='big'>{head['speedup']:.2f}&times; faster than the {_e(head.get('full_model', 'full model'))}"
            "</p>"
        )
        accuracy = ""
        if head.get("accuracy") is not None:
            accuracy = (
                f" &middot; accuracy {pct(head.get('accuracy'))} vs {pct(head.get('full_accuracy'))}: drop "
                f"<b>{head.get('accuracy_drop_points', 0.0):.2f} points</b>"
            )
        lines.append(
            f"<p><b>{num(head.get('mean_latency_ms'), 3)} ms</b> vs {num(head.get('full_mean_latency_ms'), 3)} ms per "
            f"sample at batch 1{accuracy} &middot; {_e(head.get('samples'))} samples of {_e(head.get('data'))}</p>"
        )
        shares = head.get("exit_fractions") or []
        if shares:
            lines.append(
                "<p>share leaving at each exit: "
                + " &middot; ".join(f"exit {k} <b>{100.0 * f:.1f}%</b>" for k, f in enumerate(shares))
                + "</p>"
            )
        lines.append(f"<p>thresholds: {certificate}</p>")
    else:
        lines.append(f"<p>speedup vs the full model: not measured ({_e(head.get('reason', ''))})</p>")
        lines.append(f"<p>thresholds: {certificate}</p>")
    lines.append(f"<p>{_e(_energy_saving(profile))}</p>")
    if head.get("available"):
        lines.append(
            f"<p class='method'>Measured the way <code>{_e(head.get('bench_command', 'hisd-edge bench'))}</code> "
            f"measures it: {_e(head.get('figure', ''))}; spread {low:.2f}&ndash;{high:.2f}&times; leaving one of "
            f"{_e(head.get('passes'))} passes out.</p>"
        )
    return "<div class='headline'>" + "".join(lines) + "</div>"


def _run_line(profile: Dict[str, Any], thresholds: Sequence[Any]) -> str:
    from hisd_edge.profile.report.tables import thresholds_arg

    bundle = (profile.get("bundle") or {}).get("path") or "engines/NAME"
    return f"hisd-edge run {bundle} INPUT --thresholds {thresholds_arg(list(thresholds))}"


def _pareto_section(profile: Dict[str, Any]) -> str:
    """The labelled Pareto points of the sweep, each with the line that deploys it."""
    accuracy = profile.get("accuracy") or {}
    labelled = [p for p in accuracy.get("sweep") or [] if p.get("label")]
    if not labelled:
        return ""
    rows = [
        [
            f"<b>{_e(p['label'])}</b>",
            pct(p.get("accuracy")),
            num(p.get("mean_latency_ms")),
            num(p.get("mean_dynamic_energy_mj")),
            " / ".join(f"{100.0 * f:.1f}" for f in p.get("exit_fraction") or []),
            f"<code>{_e(_run_line(profile, p.get('thresholds') or []))}</code>",  # left-aligned: see _table
        ]
        for p in labelled
    ]
    data = accuracy.get("sweep_data") or "the profiled data"
    return (
        f"<p>Each non-final exit has its own threshold; accuracy and exit shares on <b>{_e(data)}</b> "
        f"({_e(accuracy.get('sweep_samples', '?'))} samples), costs from the per-exit latencies above (expected, "
        "per call at the profiled batch). Thresholds chosen here carry no certificate: "
        "<code>hisd-edge thresholds BUNDLE --data VAL --max-drop P</code> certifies a bound.</p>"
        + _collapse(
            ["point", "accuracy", "mean latency ms", "mean dynamic mJ", "exit shares %", "deploy it"], rows, left=1
        )
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
    parts.append(_headline_box(profile))
    flags = (profile.get("conditions") or {}).get("flags") or []
    if flags:
        parts.append("<div class='flag'><b>This run is flagged:</b> " + _e("; ".join(flags)) + "</div>")
    all_notes = list(profile.get("notes") or []) + list(notes)
    if all_notes:
        parts.append(
            "<div class='notes'><b>Notes</b><ul>" + "".join(f"<li>{_e(n)}</li>" for n in all_notes) + "</ul></div>"
        )
    current = accuracy.get("current") or {}
    parts.append(
        f"<h2>Per exit (batch {_e(profile.get('batch', 1))}; latency cumulative from the input; energy per sample)</h2>"
    )
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
                    ("expected mean dynamic energy per sample (mJ)", num(current.get("mean_dynamic_energy_mj"))),
                    ("expected mean total energy per sample (mJ)", num(current.get("mean_energy_mj"))),
                ],
                collapse=True,
            )
        )
    parts.append(
        "<h2>Model check: the real early-exit pass against the per-exit prediction</h2>" + _model_check(profile)
    )
    rails = _rails_table(profile)
    if rails:
        parts.append("<h2>Per rail</h2>" + rails)
    parts.append("<h2>Per stage (exit k minus exit k-1, paired within rounds)</h2>" + _stages_table(profile))
    pareto = _pareto_section(profile)
    if pareto:
        parts.append("<h2>Trade-off: Pareto points and how to deploy each</h2>" + pareto)
        parts.append(_img(images.get("accuracy_vs_latency.png"), "accuracy vs latency"))
    parts.append("<h2>Plots</h2><div class='grid'>")
    for name, alt in (
        ("" if pareto else "accuracy_vs_latency.png", "accuracy vs latency"),
        ("exit_costs.png", "latency and energy per exit with intervals"),
        ("model_check.png", "model check"),
        ("accuracy_vs_energy.png", "accuracy vs energy"),
        ("exit_distribution.png", "exit distribution"),
        ("stage_breakdown.png", "per-stage breakdown"),
        ("power_trace.png", "power over the run"),
    ):
        parts.append(_img(images.get(name), alt))
    parts.append("</div>")
    sweep = accuracy.get("sweep") or []
    if sweep:
        from hisd_edge.profile.report.tables import thresholds_arg

        rows = [
            [
                _e(p.get("label") or ""),
                _e(thresholds_arg(p.get("thresholds") or [None])) or "-",
                pct(p.get("accuracy")),
                num(p.get("mean_latency_ms")),
                num(p.get("mean_dynamic_energy_mj")),
                num(p.get("mean_energy_mj")),
                " / ".join(f"{100.0 * f:.1f}" for f in p.get("exit_fraction") or []),
                ("latency " if p.get("pareto_latency") else "")
                + ("energy" if p.get("pareto_dynamic_energy") or p.get("pareto_energy") else ""),
            ]
            for p in sweep
            if p.get("pareto_latency") or p.get("pareto_energy") or p.get("pareto_dynamic_energy")
        ]
        parts.append(
            "<details><summary>Threshold sweep: the "
            + str(len(rows))
            + " Pareto settings of "
            + str(len(sweep))
            + " per-exit settings (all of them in sweep.csv)</summary>"
            + _collapse(
                [
                    "point",
                    "thresholds (exit 0..K-2)",
                    "accuracy",
                    "mean latency ms",
                    "mean dynamic mJ",
                    "mean total mJ",
                    "exit fractions %",
                    "Pareto",
                ],
                rows,
                left=2,
            )
            + "</details>"
        )
    for block in profile.get("batches") or []:
        if block.get("batch") == profile.get("batch"):
            continue
        parts.append(
            f"<h2>Batch {_e(block['batch'])}</h2>"
            + _exits_table(profile, block)
            + _stages_table(block)
            + "<h3>Model check</h3>"
            + _model_check_block(block.get("model_check") or {})
        )
    parts.append("<h2>Conditions (clocks, temperatures, throttling, power mode)</h2>" + _conditions(profile))
    parts.append("<h2>Power measurement</h2>" + _power_section(profile))
    parts.append("<h2>Memory</h2>" + _memory_section(memory))
    parts.append("<h2>Setup</h2>")
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
                ("energy unavailable because", _e(power.get("reason")) if not power.get("available") else "-"),
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

    def total_name(p: Dict[str, Any]) -> str:
        return str((p.get("power") or {}).get("total") or "n/a")

    header = (
        ["exit"]
        + [f"{label} p50 ms" for label in labels]
        + [f"{label} dynamic mJ ({total_name(p)}) [95% CI]" for p, label in zip(profiles, labels)]
    )
    rows = []
    for k in range(n_exits):
        row = [str(k)]
        for p in profiles:
            exits = p.get("exits") or []
            row.append(num((exits[k].get("latency_ms") or {}).get("p50")) if k < len(exits) else "")
        for p in profiles:
            exits = p.get("exits") or []
            energy = (exits[k].get("energy_mj") or {}) if k < len(exits) else {}
            row.append(with_ci(energy.get("dynamic"), energy.get("dynamic_ci")) if k < len(exits) else "")
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
                num(current.get("mean_dynamic_energy_mj")),
                _e(total_name(p)),
                _e("; ".join((p.get("conditions") or {}).get("flags") or []) or "none"),
            ]
        )
    parts.append(
        "<h2>At each profile's current thresholds</h2>"
        + _table(["label", "accuracy", "mean latency ms", "mean dynamic mJ", "energy measures", "flags"], summary)
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
