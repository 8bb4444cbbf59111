"""Turn ``profile.json`` into a report directory, and compare reports side by side.

A report directory holds ``profile.json`` (the data), ``exits.csv``/``stages.csv``/``sweep.csv``,
the PNG plots and ``report.html`` (self-contained). It is written atomically as a whole: a failed
run leaves the previous report untouched. ``hisd-edge report`` re-renders everything from the
JSON alone, so a profile taken on a Jetson without matplotlib can be rendered elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from hisd_edge import atomic
from hisd_edge.errors import InputError
from hisd_edge.profile.report import html, plots, tables
from hisd_edge.profile.schema import FILENAME
from hisd_edge.runtime.thresholds import SWEEP_CSV_NAME

HTML_NAME = "report.html"
COMPARE_HTML_NAME = "compare.html"
COMPARE_CSV_NAME = "compare_exits.csv"
SOURCES_NAME = "sources.json"

# {file name: renderer}: the plots of one report, and of a comparison.
REPORT_PLOTS: Dict[str, Callable[[Dict[str, Any]], Optional[bytes]]] = {
    "accuracy_vs_latency.png": lambda p: plots.tradeoff(p, "mean_latency_ms"),
    "accuracy_vs_energy.png": lambda p: plots.tradeoff(p, plots.energy_key(p)),
    "exit_costs.png": plots.exit_costs,
    "model_check.png": plots.model_check,
    "exit_distribution.png": plots.exit_distribution,
    "stage_breakdown.png": plots.stage_breakdown,
    "power_trace.png": plots.power_trace,
}


def _compare_energy_key(profiles: Sequence[Dict[str, Any]]) -> str:
    keys = {plots.energy_key(p) for p in profiles}
    return "mean_dynamic_energy_mj" if keys == {"mean_dynamic_energy_mj"} else "mean_energy_mj"


COMPARE_PLOTS: Dict[str, Callable[[Sequence[Dict[str, Any]], Sequence[str]], Optional[bytes]]] = {
    "compare_accuracy_vs_latency.png": lambda ps, ls: plots.compare_tradeoff(ps, ls, "mean_latency_ms"),
    "compare_accuracy_vs_energy.png": lambda ps, ls: plots.compare_tradeoff(ps, ls, _compare_energy_key(ps)),
    "compare_exit_latency.png": lambda ps, ls: plots.compare_exits(ps, ls, "mean_latency_ms"),
    "compare_exit_energy.png": lambda ps, ls: plots.compare_exits(ps, ls, _compare_energy_key(ps)),
}
# Every name write_report or write_comparison can put in a directory: only these may be replaced.
WRITTEN_NAMES = frozenset(
    (
        FILENAME,
        HTML_NAME,
        COMPARE_HTML_NAME,
        COMPARE_CSV_NAME,
        SOURCES_NAME,
        SWEEP_CSV_NAME,  # written by hisd-edge thresholds into the same directory; kept across reports
        *tables.TABLE_NAMES,
        *tuple(REPORT_PLOTS),
        *tuple(COMPARE_PLOTS),
    )
)


def render_images(profile: Dict[str, Any]) -> Dict[str, Optional[bytes]]:
    """{file name: PNG bytes or None} for one profile; {} when matplotlib is missing."""
    if not plots.matplotlib_available():
        return {}
    return {name: render(profile) for name, render in REPORT_PLOTS.items()}


def _render_notes(profile: Dict[str, Any], images: Dict[str, Optional[bytes]]) -> List[str]:
    notes = []
    if not images:
        notes.append(
            "plots left out: matplotlib is not installed here (pip install matplotlib, then hisd-edge report DIR)"
        )
    elif images.get("accuracy_vs_energy.png") is None and (profile.get("accuracy") or {}).get("sweep"):
        if (profile.get("power") or {}).get("available"):
            notes.append("no accuracy-vs-energy plot: not every exit has an energy figure (see the power gaps)")
        else:
            notes.append("no accuracy-vs-energy plot: energy was not measured on this run")
    return notes


def check_replaceable(out_dir: Path) -> None:
    """Refuse an ``--out`` that is not new, empty or an earlier report/comparison (checked before any work).

    The directory is swapped out as a whole, so it may hold only files a report writes
    (:data:`WRITTEN_NAMES`): a user's file next to a profile.json would otherwise be deleted.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a directory; choose another path")
    names = sorted(p.name for p in out_dir.iterdir())
    if not names:
        return
    foreign = [n for n in names if n not in WRITTEN_NAMES]
    if foreign:
        shown = ", ".join(map(repr, foreign[:5])) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(
            f"--out {out_dir}: not a hisd-edge report (it holds {shown}, which the report would delete); "
            "choose another --out or remove them"
        )
    if FILENAME not in names and COMPARE_HTML_NAME not in names and SWEEP_CSV_NAME not in names:
        raise InputError(
            f"--out {out_dir}: not a hisd-edge report (no {FILENAME} or {COMPARE_HTML_NAME}); "
            "choose a new or empty directory"
        )


def write_report(profile: Dict[str, Any], out_dir: Path) -> Dict[str, Any]:
    """Write profile.json, the CSV tables, the plots and report.html into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    images = render_images(profile)
    notes = _render_notes(profile, images)
    page = html.render_html(profile, images, notes)
    written: List[str] = []
    kept = out_dir / SWEEP_CSV_NAME  # hisd-edge thresholds' sweep lives here too: carried into the new report
    with atomic.atomic_dir(out_dir, replace=True) as tmp:
        if kept.is_file() and not kept.is_symlink():
            (tmp / SWEEP_CSV_NAME).write_bytes(kept.read_bytes())
        (tmp / FILENAME).write_text(atomic.json_text(profile), encoding="utf-8")  # strict JSON: no NaN
        written.append(FILENAME)
        for name, text in tables.all_tables(profile).items():
            (tmp / name).write_text(text, encoding="utf-8")
            written.append(name)
        for name, png in images.items():
            if png:
                (tmp / name).write_bytes(png)
                written.append(name)
        (tmp / HTML_NAME).write_text(page, encoding="utf-8")
        written.append(HTML_NAME)
    return {"out": str(out_dir), "files": written, "html": str(out_dir / HTML_NAME), "notes": notes}


def _labels(profiles: Sequence[Dict[str, Any]], paths: Sequence[str]) -> List[str]:
    """Short distinct labels: the report directory names, made unique."""
    labels: List[str] = []
    for profile, path in zip(profiles, paths):
        p = Path(path)
        base = (p.parent.name if p.name == FILENAME else p.name) or (profile.get("bundle") or {}).get("name", "profile")
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def _quantity(profile: Dict[str, Any]) -> Optional[str]:
    return ((profile.get("power") or {}).get("total_rule") or {}).get("quantity")


def _comparison_notes(profiles: Sequence[Dict[str, Any]], labels: Sequence[str]) -> List[str]:
    notes = []
    quantities = {_quantity(p) for p in profiles if (p.get("power") or {}).get("available")}
    if len(quantities) > 1:
        notes.append(
            "the profiles' total energy measures different things ("
            + "; ".join(f"{label}: {(p.get('power') or {}).get('total')}" for p, label in zip(profiles, labels))
            + "): their energy columns are labelled with what each measures and are not drawn on one axis"
        )
    modes = {((p.get("device") or {}).get("nvpmodel") or {}).get("mode_name") for p in profiles}
    if len(modes) > 1:
        notes.append(
            "power modes differ: " + ", ".join(f"{label}: {_mode_name(p)}" for p, label in zip(profiles, labels))
        )
    for p, label in zip(profiles, labels):
        for flag in (p.get("conditions") or {}).get("flags") or []:
            notes.append(f"{label}: {flag}")
    batches = {p.get("batch") for p in profiles}
    if len(batches) > 1:
        notes.append(
            f"the profiles' headline batch sizes differ ({', '.join(map(str, sorted(b for b in batches if b is not None)))}): "
            "per-call latencies are not directly comparable"
        )
    names = {(p.get("bundle") or {}).get("name") for p in profiles}
    if len(names) > 1:
        notes.append("different bundles: accuracy differences come from the models, not only from the settings")
    for p, label in zip(profiles, labels):
        if not (p.get("power") or {}).get("available"):
            notes.append(f"{label}: energy not measured ({(p.get('power') or {}).get('reason', 'no power source')})")
    return notes


def _mode_name(profile: Dict[str, Any]) -> str:
    nvp = (profile.get("device") or {}).get("nvpmodel") or {}
    return str(nvp.get("mode_name") or "n/a")


def write_comparison(profiles: Sequence[Dict[str, Any]], paths: Sequence[str], out_dir: Path) -> Dict[str, Any]:
    """compare.html (+ plots, + one CSV per cost) for two or more profiles, side by side."""
    if len(profiles) < 2:
        raise InputError("a comparison needs two or more profiles")
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    labels = _labels(profiles, paths)
    images: Dict[str, Optional[bytes]] = {}
    if plots.matplotlib_available():
        images = {name: render(profiles, labels) for name, render in COMPARE_PLOTS.items()}
    notes = _comparison_notes(profiles, labels)
    if not images:
        notes.append("plots left out: matplotlib is not installed here")
    page = html.render_compare_html(profiles, labels, images, notes)

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.#-]", "_", text)

    def energy_column(p: Dict[str, Any], label: str, kind: str) -> str:
        quantity = _quantity(p) or "none"
        return f"{safe(label)}_energy_{kind}_mj_{quantity}"  # the quantity is part of the name: never one name, two meanings

    header = (
        ["exit"]
        + [f"{safe(lab)}_latency_p50_ms" for lab in labels]
        + [energy_column(p, lab, "total") for p, lab in zip(profiles, labels)]
        + [energy_column(p, lab, "dynamic") for p, lab in zip(profiles, labels)]
    )
    lines = [",".join(header)]
    for k in range(max(len(p.get("exits") or []) for p in profiles)):
        cells = [str(k)]
        for key in ("latency", "total", "dynamic"):
            for p in profiles:
                exits = p.get("exits") or []
                value = None
                if k < len(exits):
                    if key == "latency":
                        value = (exits[k].get("latency_ms") or {}).get("p50")
                    elif isinstance(exits[k].get("energy_mj"), dict):
                        value = exits[k]["energy_mj"].get(key)
                cells.append("" if value is None else f"{value:.6g}")
        lines.append(",".join(cells))
    written = []
    with atomic.atomic_dir(out_dir, replace=True) as tmp:
        (tmp / COMPARE_HTML_NAME).write_text(page, encoding="utf-8")
        written.append(COMPARE_HTML_NAME)
        (tmp / COMPARE_CSV_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(COMPARE_CSV_NAME)
        (tmp / SOURCES_NAME).write_text(
            atomic.json_text({"labels": labels, "profiles": list(map(str, paths))}), encoding="utf-8"
        )
        written.append(SOURCES_NAME)
        for name, png in images.items():
            if png:
                (tmp / name).write_bytes(png)
                written.append(name)
    return {
        "out": str(out_dir),
        "files": written,
        "html": str(out_dir / COMPARE_HTML_NAME),
        "labels": labels,
        "notes": notes,
    }


__all__ = [
    "COMPARE_HTML_NAME",
    "HTML_NAME",
    "WRITTEN_NAMES",
    "check_replaceable",
    "render_images",
    "write_comparison",
    "write_report",
]
