#!/usr/bin/env python3
"""Markdown tables from tools/certify_bench.py reports (what results/CERTIFIED_THRESHOLDS.md shows).

python tools/certify_tables.py results/certify_mnist_heldout.json [--family shared]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def exits(fractions: List[float]) -> str:
    return " / ".join(f"{100 * f:.1f}" for f in fractions)


def table(report: Dict[str, Any], family: str) -> str:
    population = any("population" in r.get("evaluated_on", "") for r in report["results"])
    lines = [
        f"**{report['bundle']}**, pool {', '.join(report['pool'])} ({report['pool_size']} samples; exits' top-1 "
        + " / ".join(f"{100 * a:.1f}" for a in report["pool_exit_accuracy"])
        + f" %), {report['draws']} draws per row, confidence {report['confidence']}, family: {report['family']}; "
        + (
            "risk evaluated exactly on the whole pool (draws with replacement)"
            if population
            else "evaluated on the rest of the pool"
        )
        + f"; stage costs {', '.join(f'{c:.3f}' for c in report['stage_costs_ms'])} ms.",
        "",
        "| n | X (points) | risk | certified: risk > X | drop > X | speedup | exits 0/1/2 % | empirical: risk > X | drop > X | speedup | exits 0/1/2 % |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in report["results"]:
        if row["family"] != family:
            continue
        c, e = row["certified"], row.get("empirical")
        risk = pct(c["risk_violation_rate"])
        if not population and "risk_significant_violation_rate" in c:
            risk += f" ({pct(c['risk_significant_violation_rate'])})"
        cells = [
            str(row["n"]),
            f"{row['max_drop_points']:g}",
            row["risk"],
            risk,
            pct(c["drop_violation_rate"]),
            f"{c['mean_speedup']:.2f}x",
            exits(c["mean_exit_fractions"]),
        ]
        if e:
            erisk = pct(e["risk_violation_rate"])
            if not population and "risk_significant_violation_rate" in e:
                erisk += f" ({pct(e['risk_significant_violation_rate'])})"
            cells += [
                erisk,
                pct(e["drop_violation_rate"]),
                f"{e['mean_speedup']:.2f}x",
                exits(e["mean_exit_fractions"]),
            ]
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_table(report: Dict[str, Any]) -> str:
    """Shared vs split family, certified speedup side by side."""
    rows: Dict[Any, Dict[str, Any]] = {}
    for row in report["results"]:
        rows.setdefault((row["n"], row["max_drop_points"], row["risk"]), {})[row["family"]] = row["certified"]
    lines = [
        "| n | X | risk | shared: speedup | risk > X | split: speedup | risk > X |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for (n, x, risk), fams in rows.items():
        if "split" not in fams:
            continue
        s, p = fams["shared"], fams["split"]
        lines.append(
            f"| {n} | {x:g} | {risk} | {s['mean_speedup']:.2f}x | {pct(s['risk_violation_rate'])} | "
            f"{p['mean_speedup']:.2f}x | {pct(p['risk_violation_rate'])} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--family", default="shared")
    args = parser.parse_args(argv)
    for path in args.reports:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
        print(f"<!-- {path}: {report['command']} -->")
        print(table(report, args.family))
        if any(r["family"] == "split" for r in report["results"]):
            print()
            print(family_table(report))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
