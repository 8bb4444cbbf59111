"""Energy over a measurement window from a power trace: trapezoid integration, gaps.

Power is sampled in the background at a fixed period with the same clock that times the
inferences. For a steady loop of N inferences forced to exit k over the window [t0, t1]
(T = t1 - t0, after the sensor has settled; see :mod:`hisd_edge.profile.sensor`):

    E_total   = integral of P(t) dt over [t0, t1]          (trapezoid; linear interpolation at t0, t1)
    P_idle    = idle power at the same time, from the idle windows around it (the design's brackets)
    per inference:  total = E_total / N,   dynamic = (E_total - P_idle * T) / N

The same integral runs per rail (``rail=``) for per-rail energy.

Sources with a cumulative energy counter (NVML, RAPL) use counter differences instead of the
integral. Units: mW x s = mJ.

Gaps. A segment between two consecutive samples is *covered* unless the sampler recorded a failure
in it or the samples are further apart than ``max_gap_s`` (default: 3 x the expected interval +
0.1 s). Energy is never interpolated across a gap: over a partly covered window the result is the
mean power of the covered part times T / N, flagged ``complete: false`` with the coverage and the
gaps, and left out (``None``) when nothing of the window is covered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hisd_edge.profile.power.base import PowerSample
from hisd_edge.profile.sampler import Gap, PowerTrace


@dataclasses.dataclass
class WindowEnergy:
    """Energy and coverage of one window [start_s, end_s] of a trace."""

    start_s: float
    end_s: float
    energy_mj: float  # over the covered part only
    covered_s: float
    samples: int  # samples inside the window
    method: str  # "trapezoid" | "counter"
    gaps: List[Dict[str, Any]]  # uncovered stretches inside the window, with reasons

    @property
    def window_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def coverage(self) -> float:
        return self.covered_s / self.window_s if self.window_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        return not self.gaps and self.covered_s >= self.window_s * (1.0 - 1e-9)

    @property
    def mean_power_mw(self) -> Optional[float]:
        return self.energy_mj / self.covered_s if self.covered_s > 0 else None


def _value(sample: PowerSample, counter: bool, rail: Optional[str]) -> Optional[float]:
    if counter:
        return sample.energy_mj
    if rail is None:
        return sample.total_mw
    value = sample.rails_mw.get(rail)
    return None if value is None else float(value)


def _value_at(a: PowerSample, b: PowerSample, t: float, counter: bool, rail: Optional[str] = None) -> float:
    """Power (or counter) at time t by linear interpolation between samples a and b."""
    va = _value(a, counter, rail)
    vb = _value(b, counter, rail)
    assert va is not None and vb is not None
    if b.time_s == a.time_s:
        return float(va)
    return float(va) + (float(vb) - float(va)) * (t - a.time_s) / (b.time_s - a.time_s)


def _segment_gap(gaps: Sequence[Gap], t0: float, t1: float) -> Optional[Gap]:
    for gap in gaps:
        if gap.start_s < t1 and (gap.end_s is None or gap.end_s > t0):
            return gap
    return None


def integrate_window(
    trace: PowerTrace, start_s: float, end_s: float, max_gap_s: Optional[float] = None, rail: Optional[str] = None
) -> WindowEnergy:
    """Energy of ``trace`` over [start_s, end_s] (of one ``rail``, or the total), counting only covered segments."""
    if end_s <= start_s:
        raise ValueError("the window must have positive length")
    if max_gap_s is None:
        max_gap_s = 3.0 * trace.expected_interval_s + 0.1
    samples = trace.samples
    if rail is not None:
        samples = [s for s in samples if rail in s.rails_mw]
    counter = rail is None and bool(samples) and all(s.energy_mj is not None for s in samples)
    energy = 0.0
    covered = 0.0
    uncovered: List[Tuple[float, float, str]] = []

    def mark(u: float, v: float, why: str) -> None:
        if v <= u:
            return
        if uncovered and abs(uncovered[-1][1] - u) < 1e-12 and uncovered[-1][2] == why:
            uncovered[-1] = (uncovered[-1][0], v, why)
        else:
            uncovered.append((u, v, why))

    if not samples:
        reason = trace.gaps[0].reason if trace.gaps else "no power samples"
        mark(start_s, end_s, reason)
    else:
        if samples[0].time_s > start_s:
            mark(start_s, min(end_s, samples[0].time_s), "no samples before this point")
        for a, b in zip(samples, samples[1:]):
            u, v = max(a.time_s, start_s), min(b.time_s, end_s)
            if v <= u:
                continue
            gap = _segment_gap(trace.gaps, a.time_s, b.time_s)
            if gap is not None:
                mark(u, v, gap.reason)
                continue
            if b.time_s - a.time_s > max_gap_s:
                mark(
                    u,
                    v,
                    f"samples {b.time_s - a.time_s:.3f} s apart (expected about {trace.expected_interval_s:.3f} s)",
                )
                continue
            if counter:
                energy += _value_at(a, b, v, True) - _value_at(a, b, u, True)
            else:
                energy += 0.5 * (_value_at(a, b, u, False, rail) + _value_at(a, b, v, False, rail)) * (v - u)
            covered += v - u
        if samples[-1].time_s < end_s:
            open_gap = trace.gaps[-1] if trace.gaps and trace.gaps[-1].end_s is None else None
            mark(
                max(start_s, samples[-1].time_s), end_s, open_gap.reason if open_gap else "no samples after this point"
            )
    inside = sum(1 for s in samples if start_s <= s.time_s <= end_s)
    gaps = [{"start_s": u, "end_s": v, "duration_s": v - u, "reason": why} for u, v, why in uncovered]
    return WindowEnergy(
        start_s=start_s,
        end_s=end_s,
        energy_mj=energy,
        covered_s=covered,
        samples=inside,
        method="counter" if counter else "trapezoid",
        gaps=gaps,
    )


def per_inference(
    window: WindowEnergy, inferences: int, idle_power_mw: Optional[float], period_s: float
) -> Optional[Dict[str, Any]]:
    """Energy per inference (total and dynamic, mJ) from one loop window, with its provenance.

    ``inferences`` counts what the energy is divided by (samples, not calls, when batched).
    Returns None when nothing of the window was covered by samples.
    """
    if inferences <= 0:
        raise ValueError("inferences must be positive")
    mean_power = window.mean_power_mw
    if mean_power is None:
        return None
    seconds_per_inference = window.window_s / inferences
    total = mean_power * seconds_per_inference
    dynamic = (mean_power - idle_power_mw) * seconds_per_inference if idle_power_mw is not None else None
    return {
        "total": total,
        "dynamic": dynamic,
        "detail": {
            "method": window.method,
            "window_s": window.window_s,
            "covered_s": window.covered_s,
            "coverage": window.coverage,
            "complete": window.complete,
            "samples": window.samples,
            "sampling_period_ms": period_s * 1000.0,
            "mean_power_mw": mean_power,
            "idle_power_mw": idle_power_mw,
            "inferences": inferences,
            "gaps": window.gaps,
        },
    }
