"""Per-stage costs for ``hisd-edge thresholds --costs``: point estimates, their intervals, and what they cannot tell.

Objectives:

* ``latency``: the stages' p50 latency (per batch; a batch > 1 is amortised per sample);
* ``dynamic-energy``: energy above idle per sample (mJ): what an inference adds on a board that runs
  at a fixed frame rate and idles in between, the usual edge deployment;
* ``total-energy`` (alias ``energy``): all the board draws per sample while inferring back to back.

A profile written by ``hisd-edge profile`` (schema 2) gives each stage's and each exit's figure with a
confidence interval. Two rules follow from the intervals:

* a stage's point estimate can come out negative when its true cost is within the noise of zero (a
  cheap last stage, a short window): it is priced at zero and noted, never refused;
* consecutive exits whose cumulative-cost intervals overlap cannot be told apart by this profile: the
  search may still prefer one, but on a difference the measurement does not support, and that is said.

Older or hand-written files (plain numbers, ``p50``/``median``/``mean``/``total`` objects, ``exits``
instead of ``stages``) are read as before, without intervals.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hisd_edge.errors import InputError

OBJECTIVE_NAMES = ("latency", "dynamic-energy", "total-energy", "energy")
# objective -> (key of the entry, field in an energy object, unit)
_SPEC = {
    "latency": ("latency_ms", None, "ms"),
    "dynamic-energy": ("energy_mj", "dynamic", "mJ"),
    "total-energy": ("energy_mj", "total", "mJ"),
    "energy": ("energy_mj", "total", "mJ"),
}


def _number(value: Any, path: str, field: Optional[str]) -> float:
    """A plain number (taken as given); or from an object its ``field`` (an energy object's "dynamic" or
    "total"), else its p50 / median / mean / total, the first present."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        found = value.get(field) if field else None
        if isinstance(found, (int, float)) and not isinstance(found, bool):
            return float(found)
        if field == "dynamic":
            raise InputError(
                f"{path}: no dynamic energy (the profile had no idle baseline); use --objective total-energy "
                "or profile again"
            )
        for key in ("p50", "median", "mean", "total"):
            if isinstance(value.get(key), (int, float)) and not isinstance(value.get(key), bool):
                return float(value[key])
    raise InputError(f"{path}: expected a number or an object with p50/median/mean/total; fix the profile report")


def _interval(value: Any, field: Optional[str]) -> Optional[List[float]]:
    if not isinstance(value, dict):
        return None
    ci = value.get(f"{field}_ci") if field else value.get("ci")
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def _load(path: Path) -> Dict[str, Any]:
    """The costs file, read as untrusted input: a regular file, size-capped, strict JSON, checked against
    the published costs schema (hisd_edge/schemas/costs-v1.schema.json)."""
    from hisd_edge import schemas

    fix = "give the profile.json that hisd-edge profile wrote (run it on the target), or leave out --costs"
    if not os.path.lexists(path):
        raise InputError(f"{path}: no such profile report; run hisd-edge profile on the target, or leave out --costs")
    report = schemas.read_json(path, max_bytes=schemas.MAX_REPORT_BYTES, what=f"--costs {path}", fix=fix)
    if not isinstance(report, dict):
        raise InputError(f"--costs {path}: not a profile report object; {fix}")
    schemas.validate(report, schemas.COSTS, what=f"--costs {path}", fix=fix)
    return report


def _ordered(entries: Sequence[Any]) -> List[Any]:
    if all(isinstance(e, dict) and "index" in e for e in entries):
        return sorted(entries, key=lambda e: e["index"])
    return list(entries)


def read_costs(path: Path, num_stages: int, objective: str = "latency") -> Tuple[List[float], Dict[str, Any]]:
    """(per-stage costs per sample, details) for ``objective``; see the module docstring.

    Details: ``source``, ``device``, ``precision``, ``key``, ``batch``, ``objective``, ``unit``,
    ``quantity`` (what the total energy measures on that board), ``stage_interval`` and
    ``exit_interval`` (per stage / exit, or None), ``exit_cost`` (cumulative), ``indistinguishable``
    (pairs of exits), ``notes``.
    """
    if objective not in _SPEC:
        raise InputError(f"objective {objective!r} is not one of {', '.join(OBJECTIVE_NAMES)}")
    key, field, unit = _SPEC[objective]
    report = _load(path)
    source: Dict[str, Any] = report
    batch = report.get("batch", report.get("batch_size", 1))
    for entry in report.get("batches") or []:
        if isinstance(entry, dict) and entry.get("batch") == 1 and isinstance(entry.get("stages"), list):
            source, batch = entry, 1
            break
    stages = source.get("stages")
    exits = source.get("exits")
    cumulative = False
    entries = stages
    if not isinstance(entries, list):
        entries, cumulative = exits, True
    if not isinstance(entries, list):
        raise InputError(f"{path}: no 'stages' (or 'exits') list; give the profile.json that hisd-edge profile wrote")
    if len(entries) != num_stages:
        raise InputError(f"{path}: profiles {len(entries)} stages but the bundle has {num_stages}; profile this bundle")
    entries = _ordered(entries)
    values: List[float] = []
    intervals: List[Optional[List[float]]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get(key) is None:
            why = entry.get("energy_unavailable_reason") if isinstance(entry, dict) else None
            hint = (
                f" ({why})"
                if why
                else (" (measure energy on the target with hisd-edge profile)" if key == "energy_mj" else "")
            )
            raise InputError(f"{path}: stage {i} has no {key!r}{hint}")
        values.append(_number(entry[key], f"{path}: stage {i} {key}", field))
        intervals.append(_interval(entry[key], field))
    if cumulative:
        values = [values[0]] + [values[i] - values[i - 1] for i in range(1, len(values))]
        intervals = [intervals[0]] + [None] * (len(values) - 1)
    if any(not math.isfinite(v) for v in values):
        raise InputError(f"{path}: {key} values must be finite numbers (got {values})")
    bare = [i for i, ci in enumerate(intervals) if ci is None and values[i] <= 0]
    if bare or values[0] <= 0:
        # Only an estimate with an interval may fall to (or below) zero within its noise; a bare figure of 0
        # (or a stage 0 that costs nothing, which every input runs) would make early exit look free.
        shown = ", ".join(f"{v:.4g}" for v in values)
        raise InputError(
            f"{path}: {key} per stage must be positive (got {shown}); re-run hisd-edge profile on the target"
        )
    notes: List[str] = []
    priced = []
    for i, (v, ci) in enumerate(zip(values, intervals)):
        if v < 0:
            clear = ci is not None and ci[1] < 0
            notes.append(
                f"stage {i}'s {objective} came out negative ({v:.4g} {unit}"
                + (f", interval [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
                + "): priced at 0"
                + (
                    "; the interval excludes 0, so the profile is suspect (a drifting baseline?): profile again"
                    if clear
                    else ", it is within the noise of zero"
                )
            )
        priced.append(max(v, 0.0))
    if objective == "latency" and isinstance(batch, (int, float)) and batch > 1:
        priced = [v / float(batch) for v in priced]
    exit_intervals: List[Optional[List[float]]] = [None] * num_stages
    if isinstance(exits, list) and len(exits) == num_stages:
        for k, entry in enumerate(_ordered(exits)):
            if isinstance(entry, dict) and entry.get(key) is not None:
                exit_intervals[k] = _interval(entry[key], field)
                if (
                    exit_intervals[k] is not None
                    and objective == "latency"
                    and isinstance(batch, (int, float))
                    and batch > 1
                ):
                    exit_intervals[k] = [v / float(batch) for v in exit_intervals[k]]  # type: ignore[union-attr]
    pairs = []
    for k in range(num_stages - 1):
        a, b = exit_intervals[k], exit_intervals[k + 1]
        if a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]:
            pairs.append([k, k + 1])
            notes.append(
                f"exits {k} and {k + 1} cannot be told apart by {objective}: their intervals "
                f"[{a[0]:.3g}, {a[1]:.3g}] and [{b[0]:.3g}, {b[1]:.3g}] {unit} overlap; a choice between them rests "
                "on a difference the profile does not support"
            )
    device = report.get("device")
    if isinstance(device, dict):
        device = device.get("model") or device.get("hostname")
    power: Dict[str, Any] = report["power"] if isinstance(report.get("power"), dict) else {}
    quantity = (power.get("total_rule") or {}).get("quantity") if key == "energy_mj" else None
    cum = []
    running = 0.0
    for v in priced:
        running += v
        cum.append(running)
    meta = {
        "source": str(path),
        "device": device,
        "precision": report.get("precision"),
        "key": key,
        "batch": batch,
        "objective": "total-energy" if objective == "energy" else objective,
        "unit": unit,
        "quantity": quantity,
        "stage_interval": intervals,
        "exit_interval": exit_intervals,
        "exit_cost": cum,
        "indistinguishable": pairs,
        "notes": notes,
    }
    return priced, meta
