"""PNG plots of a profile (matplotlib, Agg backend, imported lazily).

* accuracy vs mean latency, and vs mean energy, across the threshold sweep, Pareto front marked,
  the current thresholds and the "always exit k" points shown for reference;
* the exit distribution at the current thresholds;
* the per-stage latency and energy breakdown;
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
    return energy.get("total") if isinstance(energy, dict) else None


def tradeoff(profile: Dict[str, Any], cost_key: str = "mean_latency_ms") -> Optional[bytes]:
    """Accuracy vs ``mean_latency_ms`` or ``mean_energy_mj`` across the sweep, Pareto front marked."""
    accuracy = profile.get("accuracy") or {}
    sweep = [p for p in accuracy.get("sweep") or [] if p.get(cost_key) is not None and p.get("accuracy") is not None]
    if not sweep:
        return None
    pareto_flag = "pareto_latency" if cost_key == "mean_latency_ms" else "pareto_energy"
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
    unit = "mean latency per call (ms)" if cost_key == "mean_latency_ms" else "mean energy per sample (mJ)"
    ax.set_xlabel(f"{unit}, batch {profile.get('batch', 1)}")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(
        f"{profile['bundle'].get('name', '')}: accuracy vs {'latency' if cost_key == 'mean_latency_ms' else 'energy'}",
        fontsize=10,
    )
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
    axes[0].set_title("per-stage latency", fontsize=10)
    axes[0].legend(fontsize=8)
    if has_energy:
        total = [(e or {}).get("total") or 0.0 for e in energies]
        dynamic = [(e or {}).get("dynamic") for e in energies]
        width = 0.38
        axes[1].bar([k - width / 2 for k in ks], total, width, color="#d9480f", label="total")
        if any(d is not None for d in dynamic):
            axes[1].bar(
                [k + width / 2 for k in ks], [d or 0.0 for d in dynamic], width, color="#f08c00", label="dynamic"
            )
        axes[1].set_xticks(ks)
        axes[1].set_xlabel("stage")
        axes[1].set_ylabel("energy per sample (mJ)")
        axes[1].set_title("per-stage energy", fontsize=10)
        axes[1].axhline(0.0, color="#343a40", lw=0.6)
        axes[1].legend(fontsize=8)
    return _png(fig)


def compare_tradeoff(profiles: Sequence[Dict[str, Any]], labels: Sequence[str], cost_key: str) -> Optional[bytes]:
    """The Pareto fronts (and current points) of several profiles on one set of axes."""
    series = []
    for profile, label in zip(profiles, labels):
        sweep = [p for p in (profile.get("accuracy") or {}).get("sweep") or [] if p.get(cost_key) is not None]
        if sweep:
            series.append((label, profile, sweep))
    if not series:
        return None
    pareto_flag = "pareto_latency" if cost_key == "mean_latency_ms" else "pareto_energy"
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
    ax.set_xlabel("mean latency per call (ms)" if cost_key == "mean_latency_ms" else "mean energy per sample (mJ)")
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
    ax.set_ylabel("p50 latency to exit (ms)" if cost_key == "mean_latency_ms" else "energy to exit per sample (mJ)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def power_trace(profile: Dict[str, Any]) -> Optional[bytes]:
    """Total power over the whole run (idle baseline, then the loops), when there was a source."""
    trace = (profile.get("power") or {}).get("trace") or {}
    times, powers = trace.get("time_s") or [], trace.get("total_mw") or []
    if len(times) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.6, 2.8))
    ax.plot(times, powers, lw=0.8, color="#d9480f")
    idle = (profile.get("idle") or {}).get("power_mw")
    if idle is not None:
        ax.axhline(idle, color="#1971c2", lw=0.8, ls="--", label=f"idle baseline {idle:.0f} mW")
        ax.legend(fontsize=8, loc="upper right")
    for gap in (profile.get("power") or {}).get("gaps") or []:
        ax.axvspan(
            gap["start_s"] - (profile["power"].get("trace_origin_s") or 0.0),
            ax.get_xlim()[1]
            if gap.get("end_s") is None
            else gap["end_s"] - (profile["power"].get("trace_origin_s") or 0.0),
            color="#adb5bd",
            alpha=0.3,
        )
    ax.set_xlabel("time since the first sample (s)")
    ax.set_ylabel(f"total power (mW), {(profile.get('power') or {}).get('total', '')}")
    ax.grid(alpha=0.3)
    return _png(fig)
