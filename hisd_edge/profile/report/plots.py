"""PNG plots of a profile (matplotlib, Agg backend, imported lazily).

* accuracy vs mean latency, and vs mean dynamic energy (total where there is no dynamic figure),
  across the threshold sweep, Pareto front marked, the current thresholds and the "always exit k"
  points shown for reference;
* the exit distribution at the current thresholds;
* per exit: latency and energy with their confidence intervals, energy per rail;
* the model check: the real early-exit pass against the per-exit prediction;
* the per-stage latency and energy breakdown (with intervals);
* the power trace with the measuring windows and the discarded settling times marked;
* for comparisons: the trade-off curves and per-exit costs of several profiles on shared axes.

Each function returns PNG bytes, or None when the profile lacks what the plot needs (say, energy
with no power source); the caller notes why.
"""

from __future__ import annotations

import io
from typing import Any, Dict, List, Optional, Sequence

from hisd_edge.errors import DependencyError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise DependencyError("plots need matplotlib: pip install 'hisd-edge[report]' (or matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _log_if_spread(ax: Any, axis: str, values: Sequence[Optional[float]], decades: float = 1.0) -> None:
    """A log axis when the positive values span more than ``decades`` decades (one outlier would
    flatten everything else on a linear axis); says so in the axis label."""
    positive = [float(v) for v in values if v is not None and v > 0]
    if len(positive) < 2 or max(positive) / min(positive) < 10**decades:
        return
    if axis == "x":
        ax.set_xscale("log")
        ax.set_xlabel(ax.get_xlabel() + " (log scale)")
    else:
        ax.set_yscale("log")
        ax.set_ylabel(ax.get_ylabel() + " (log scale)")


def matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _exit_points(profile: Dict[str, Any], cost_key: str) -> List[tuple]:
    """(cost, top-1, k) of running every sample to exit k, where both are known."""
    top1 = (profile.get("accuracy") or {}).get("per_exit_top1") or []
    points = []
    for e, acc in zip(profile.get("exits") or [], top1):
        cost = _exit_cost(e, cost_key)
        if cost is not None and acc is not None:
            points.append((cost, acc, e["index"]))
    return points


def _exit_cost(e: Dict[str, Any], cost_key: str) -> Optional[float]:
    if cost_key == "mean_latency_ms":
        return (e.get("latency_ms") or {}).get("p50")
    energy = e.get("energy_mj")
    field = "dynamic" if cost_key == "mean_dynamic_energy_mj" else "total"
    return energy.get(field) if isinstance(energy, dict) else None


_PARETO = {
    "mean_latency_ms": "pareto_latency",
    "mean_energy_mj": "pareto_energy",
    "mean_dynamic_energy_mj": "pareto_dynamic_energy",
}
_UNITS = {
    "mean_latency_ms": "mean latency per call (ms)",
    "mean_energy_mj": "mean total energy per sample (mJ)",
    "mean_dynamic_energy_mj": "mean dynamic energy per sample (mJ, above idle)",
}


def energy_key(profile: Dict[str, Any]) -> str:
    """Dynamic energy where the sweep has it (what a fixed-frame-rate deployment pays), else total."""
    sweep = (profile.get("accuracy") or {}).get("sweep") or []
    return (
        "mean_dynamic_energy_mj"
        if any(p.get("mean_dynamic_energy_mj") is not None for p in sweep)
        else "mean_energy_mj"
    )


def tradeoff(profile: Dict[str, Any], cost_key: str = "mean_latency_ms") -> Optional[bytes]:
    """Accuracy vs ``mean_latency_ms``, ``mean_energy_mj`` or ``mean_dynamic_energy_mj`` across the sweep."""
    accuracy = profile.get("accuracy") or {}
    sweep = [p for p in accuracy.get("sweep") or [] if p.get(cost_key) is not None and p.get("accuracy") is not None]
    if not sweep:
        return None
    pareto_flag = _PARETO[cost_key]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = [p[cost_key] for p in sweep]
    ys = [100.0 * p["accuracy"] for p in sweep]
    ax.scatter(xs, ys, s=14, color="#9aa5b1", label="threshold sweep", zorder=2)
    front = sorted((p for p in sweep if p.get(pareto_flag)), key=lambda p: p[cost_key])
    if front:
        ax.plot(
            [p[cost_key] for p in front],
            [100.0 * p["accuracy"] for p in front],
            "-o",
            color="#d9480f",
            ms=4,
            label="Pareto front",
            zorder=3,
        )
    current = accuracy.get("current") or {}
    if current.get(cost_key) is not None and current.get("accuracy") is not None:
        ax.scatter(
            [current[cost_key]],
            [100.0 * current["accuracy"]],
            marker="*",
            s=180,
            color="#1971c2",
            label="current thresholds",
            zorder=4,
        )
    for cost, acc, k in _exit_points(profile, cost_key):
        ax.scatter([cost], [100.0 * acc], marker="s", s=26, color="#2b8a3e", zorder=3)
        ax.annotate(f"exit {k} only", (cost, 100.0 * acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if cost_key == "mean_latency_ms":  # the report's table names these points and how to deploy each
        for p in sweep:
            if p.get("label"):
                ax.annotate(
                    p["label"],
                    (p[cost_key], 100.0 * p["accuracy"]),
                    textcoords="offset points",
                    xytext=(-4, 6),
                    fontsize=8,
                    color="#d9480f",
                    fontweight="bold",
                )
    unit = _UNITS[cost_key]
    quantity = ((profile.get("power") or {}).get("total") or "") if cost_key != "mean_latency_ms" else ""
    ax.set_xlabel(f"{unit}{', ' + quantity if quantity else ''}, batch {profile.get('batch', 1)}")
    ax.set_ylabel("top-1 accuracy (%)")
    _log_if_spread(ax, "x", xs + [c for c, _a, _k in _exit_points(profile, cost_key)])
    title = (
        f"{profile['bundle'].get('name', '')}: accuracy vs {'latency' if cost_key == 'mean_latency_ms' else 'energy'}"
    )
    swept_on, measured_on = accuracy.get("sweep_data"), (profile.get("settings") or {}).get("data")
    if swept_on and swept_on != measured_on:  # say which points come from which data
        title += f"\nsweep on {swept_on}; current thresholds and single exits on {measured_on}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def exit_distribution(profile: Dict[str, Any]) -> Optional[bytes]:
    current = (profile.get("accuracy") or {}).get("current") or {}
    fractions = current.get("exit_fraction")
    if not fractions:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ks = list(range(len(fractions)))
    bars = ax.bar(ks, [100.0 * f for f in fractions], color="#1971c2")
    for bar, f in zip(bars, fractions):
        ax.annotate(
            f"{100.0 * f:.1f}%",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(ks)
    ax.set_xlabel("exit")
    ax.set_ylabel("samples leaving here (%)")
    thresholds = ", ".join("-" if t is None else f"{t:.3g}" for t in current.get("thresholds") or [])
    ax.set_title(f"exit distribution at thresholds [{thresholds}]", fontsize=10)
    ax.set_ylim(0, 110)
    return _png(fig)


def _whiskers(values: Sequence[Optional[float]], cis: Sequence[Any]) -> List[List[float]]:
    low, high = [], []
    for v, ci in zip(values, cis):
        if v is None or not ci:
            low.append(0.0)
            high.append(0.0)
        else:
            low.append(max(0.0, v - ci[0]))
            high.append(max(0.0, ci[1] - v))
    return [low, high]


def exit_costs(profile: Dict[str, Any]) -> Optional[bytes]:
    """Per exit: mean latency, and dynamic energy (total quantity and each rail), with 95 % intervals."""
    exits = profile.get("exits") or []
    if not exits:
        return None
    plt = _pyplot()
    has_energy = any(isinstance(e.get("energy_mj"), dict) for e in exits)
    fig, axes = plt.subplots(1, 2 if has_energy else 1, figsize=(10.4 if has_energy else 5.2, 3.8))
    axes = list(axes) if has_energy else [axes]
    ks = [e["index"] for e in exits]
    lat = [(e.get("latency_ms") or {}).get("mean") for e in exits]
    axes[0].bar(ks, [v or 0.0 for v in lat], color="#1971c2")
    axes[0].errorbar(
        ks,
        [v or 0.0 for v in lat],
        yerr=_whiskers(lat, [(e.get("latency_ms") or {}).get("ci") for e in exits]),
        fmt="none",
        ecolor="#212529",
        capsize=4,
    )
    axes[0].set_xticks(ks)
    axes[0].set_xlabel("exit")
    axes[0].set_ylabel(f"mean latency per call (ms), batch {profile.get('batch', 1)}")
    axes[0].set_title("latency to each exit (95% interval)", fontsize=10)
    if has_energy:
        total_label = (profile.get("power") or {}).get("total") or "total"
        series = [(f"{total_label} (total)", [e.get("energy_mj") or {} for e in exits])]
        rails = sorted({r for e in exits for r in (e.get("rails_mj") or {})})
        for rail in rails:
            if rail == total_label:
                continue  # the input rail is the total: already drawn
            series.append((rail, [((e.get("rails_mj") or {}).get(rail) or {}) for e in exits]))
        width = 0.8 / len(series)
        for i, (label, entries) in enumerate(series):
            values = [x.get("dynamic") for x in entries]
            xs = [k - 0.4 + width * (i + 0.5) for k in ks]
            axes[1].bar(xs, [v or 0.0 for v in values], width, color=f"C{i}", label=label)
            axes[1].errorbar(
                xs,
                [v or 0.0 for v in values],
                yerr=_whiskers(values, [x.get("dynamic_ci") for x in entries]),
                fmt="none",
                ecolor="#212529",
                capsize=3,
            )
        axes[1].set_xticks(ks)
        axes[1].set_xlabel("exit")
        axes[1].set_ylabel("dynamic energy per sample (mJ, above idle)")
        axes[1].set_title("energy to each exit, per rail (95% interval)", fontsize=10)
        axes[1].axhline(0.0, color="#343a40", lw=0.6)
        axes[1].legend(fontsize=7)
    return _png(fig)


def model_check(profile: Dict[str, Any]) -> Optional[bytes]:
    """The real early-exit pass (measured) against the sum over exits of fraction x cost (predicted)."""
    check = profile.get("model_check") or {}
    panels = [
        (name, entry)
        for name, entry in (
            ("latency per call (ms)", check.get("latency_ms")),
            ("dynamic energy per sample (mJ)", (check.get("energy_mj") or {}).get("dynamic")),
            ("total energy per sample (mJ)", (check.get("energy_mj") or {}).get("total")),
        )
        if entry and entry.get("measured") is not None and entry.get("predicted") is not None
    ]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4))
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, (name, entry) in zip(axes, panels):
        values = [entry["predicted"], entry["measured"]]
        ax.bar([0, 1], values, color=["#adb5bd", "#2b8a3e"])
        ax.errorbar(
            [0, 1],
            values,
            yerr=_whiskers(values, [entry.get("predicted_ci"), entry.get("measured_ci")]),
            fmt="none",
            ecolor="#212529",
            capsize=4,
        )
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["predicted\n(sum of f_k x cost_k)", "measured\n(early-exit pass)"], fontsize=8)
        ratio = entry.get("ratio")
        ax.set_title(f"{name}\nmeasured/predicted {ratio:.3f}" if ratio else name, fontsize=9)
    fig.suptitle(f"model check at the current thresholds, batch {check.get('batch', 1)}", fontsize=10)
    return _png(fig)


def stage_breakdown(profile: Dict[str, Any]) -> Optional[bytes]:
    stages = profile.get("stages") or []
    if not stages:
        return None
    energies = [s.get("energy_mj") for s in stages]
    has_energy = any(isinstance(e, dict) and e.get("total") is not None for e in energies)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if has_energy else 1, figsize=(9.6 if has_energy else 5.2, 3.6))
    axes = list(axes) if has_energy else [axes]
    ks = [s["index"] for s in stages]
    p50 = [(s.get("latency_ms") or {}).get("p50") or 0.0 for s in stages]
    p99 = [(s.get("latency_ms") or {}).get("p99") or 0.0 for s in stages]
    axes[0].bar(ks, p50, color="#1971c2", label="p50")
    axes[0].errorbar(
        ks,
        p50,
        yerr=[[0.0] * len(ks), [max(0.0, b - a) for a, b in zip(p50, p99)]],
        fmt="none",
        ecolor="#343a40",
        capsize=3,
        label="to p99",
    )
    axes[0].set_xticks(ks)
    axes[0].set_xlabel("stage")
    axes[0].set_ylabel(f"latency per call (ms), batch {profile.get('batch', 1)}")
    _log_if_spread(axes[0], "y", [v for v in p50 + p99 if v])
    axes[0].set_title("per-stage latency", fontsize=10)
    axes[0].legend(fontsize=8)
    if has_energy:
        total = [(e or {}).get("total") or 0.0 for e in energies]
        dynamic = [(e or {}).get("dynamic") for e in energies]
        width = 0.38
        axes[1].bar([k - width / 2 for k in ks], total, width, color="#d9480f", label="total")
        axes[1].errorbar(
            [k - width / 2 for k in ks],
            total,
            yerr=_whiskers(total, [(e or {}).get("total_ci") for e in energies]),
            fmt="none",
            ecolor="#212529",
            capsize=3,
        )
        if any(d is not None for d in dynamic):
            axes[1].bar(
                [k + width / 2 for k in ks], [d or 0.0 for d in dynamic], width, color="#f08c00", label="dynamic"
            )
            axes[1].errorbar(
                [k + width / 2 for k in ks],
                [d or 0.0 for d in dynamic],
                yerr=_whiskers(dynamic, [(e or {}).get("dynamic_ci") for e in energies]),
                fmt="none",
                ecolor="#212529",
                capsize=3,
            )
        axes[1].set_xticks(ks)
        axes[1].set_xlabel("stage")
        axes[1].set_ylabel("energy per sample (mJ)")
        axes[1].set_title("per-stage energy", fontsize=10)
        axes[1].axhline(0.0, color="#343a40", lw=0.6)
        axes[1].legend(fontsize=8)
    return _png(fig)


def compare_tradeoff(profiles: Sequence[Dict[str, Any]], labels: Sequence[str], cost_key: str) -> Optional[bytes]:
    """The Pareto fronts (and current points) of several profiles on one set of axes.

    Energy fronts are drawn only for profiles whose total measures the same quantity as the first's:
    a module-input figure and an AGX rail sum on one axis would mislead.
    """
    series = []
    quantity = None
    for profile, label in zip(profiles, labels):
        if cost_key != "mean_latency_ms":
            q = ((profile.get("power") or {}).get("total_rule") or {}).get("quantity")
            if quantity is None:
                quantity = q
            elif q != quantity:
                continue
        sweep = [p for p in (profile.get("accuracy") or {}).get("sweep") or [] if p.get(cost_key) is not None]
        if sweep:
            series.append((label, profile, sweep))
    if not series:
        return None
    pareto_flag = _PARETO[cost_key]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for i, (label, profile, sweep) in enumerate(series):
        color = f"C{i}"
        front = sorted((p for p in sweep if p.get(pareto_flag)), key=lambda p: p[cost_key]) or sweep
        ax.plot(
            [p[cost_key] for p in front], [100.0 * p["accuracy"] for p in front], "-o", ms=3, color=color, label=label
        )
        current = (profile.get("accuracy") or {}).get("current") or {}
        if current.get(cost_key) is not None and current.get("accuracy") is not None:
            ax.scatter([current[cost_key]], [100.0 * current["accuracy"]], marker="*", s=150, color=color, zorder=4)
    ax.set_xlabel(_UNITS[cost_key])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Pareto fronts (stars: current thresholds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def compare_exits(profiles: Sequence[Dict[str, Any]], labels: Sequence[str], cost_key: str) -> Optional[bytes]:
    """Grouped bars: cost to reach each exit, one colour per profile."""
    rows = []
    for profile, label in zip(profiles, labels):
        costs = [_exit_cost(e, cost_key) for e in profile.get("exits") or []]
        if any(c is not None for c in costs):
            rows.append((label, costs))
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    width = 0.8 / len(rows)
    for i, (label, costs) in enumerate(rows):
        ax.bar(
            [k - 0.4 + width * (i + 0.5) for k in range(len(costs))],
            [c or 0.0 for c in costs],
            width,
            color=f"C{i}",
            label=label,
        )
    ax.set_xticks(range(max(len(c) for _, c in rows)))
    ax.set_xlabel("exit")
    ax.set_ylabel(
        "p50 latency to exit (ms)"
        if cost_key == "mean_latency_ms"
        else ("dynamic" if cost_key == "mean_dynamic_energy_mj" else "total") + " energy to exit per sample (mJ)"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def power_trace(profile: Dict[str, Any]) -> Optional[bytes]:
    """Power over the run (total and rails), each block's measuring window shaded, settling hatched."""
    power = profile.get("power") or {}
    trace = power.get("trace") or {}
    times, powers = trace.get("time_s") or [], trace.get("total_mw") or []
    if len(times) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10.4, 3.4))
    colors = {"idle": "#74c0fc", "early": "#8ce99a"}
    for block in profile.get("blocks") or []:
        ax.axvspan(block["settle_start_s"], block["start_s"], color="#868e96", alpha=0.35, hatch="//", lw=0)
        color = colors.get(block["kind"], f"C{(block.get('exit') or 0) + 1}")
        ax.axvspan(block["start_s"], block["end_s"], color=color, alpha=0.18, lw=0)
        label = "idle" if block["kind"] == "idle" else ("early" if block["kind"] == "early" else f"e{block['exit']}")
        if block.get("batch") != profile.get("batch"):
            label = f"{label}\nb{block.get('batch')}"
        ax.annotate(
            label,
            ((block["start_s"] + block["end_s"]) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            fontsize=5,
        )
    ax.plot(times, powers, lw=0.8, color="#d9480f", label=f"total ({power.get('total', '')})")
    for i, (rail, values) in enumerate((trace.get("rails_mw") or {}).items()):
        if rail == power.get("total"):
            continue
        ax.plot(times, values, lw=0.6, color=["#1971c2", "#2b8a3e", "#862e9c", "#e67700"][i % 4], alpha=0.8, label=rail)
    idle = (profile.get("idle") or {}).get("power_mw")
    if idle is not None:
        ax.axhline(idle, color="#1971c2", lw=0.8, ls="--", label=f"idle mean {idle:.0f} mW")
    for gap in power.get("gaps") or []:
        ax.axvspan(
            gap["start_s"] - (power.get("trace_origin_s") or 0.0),
            ax.get_xlim()[1] if gap.get("end_s") is None else gap["end_s"] - (power.get("trace_origin_s") or 0.0),
            color="#e03131",
            alpha=0.15,
        )
    ax.set_xlabel("time since the first sample (s); shaded: measuring windows, hatched: settling (discarded)")
    ax.set_ylabel("power (mW)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=3)
    return _png(fig)
