"""Means and confidence intervals for the profiler's repeated measurements.

Every interval here is a Student-t interval for a mean over independent repetitions (rounds of the
interleaved design, or repeated latency runs): ``mean +- t(1 - a/2, n - 1) * sd / sqrt(n)``. With
the few rounds an energy profile affords (3-5), the t quantile matters: 4.30 for 3 rounds against
the normal 1.96.

Why not scipy: the runtime core that runs on a Jetson stays numpy-only (scipy is ~40 MB and only
this one quantile is needed). For the integer degrees of freedom that occur here the t CDF has a
closed form (Abramowitz & Stegun 26.7.3-4), inverted by bisection; the test suite checks it against
``scipy.stats.t.ppf``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, Optional, Sequence

DEFAULT_CONFIDENCE = 0.95
LARGE_DF = 2000  # beyond, the quantile's series expansion is exact to 1e-9 and the closed form slow


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1 (closed form, exact to rounding)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        total = 0.0
        if df > 1:
            term = 1.0
            total = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
            total *= math.sin(theta) * math.cos(theta)
        return 0.5 + (theta + total) / math.pi
    term = 1.0
    total = 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return 0.5 + 0.5 * math.sin(theta) * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with integer ``df`` (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df > LARGE_DF:  # Cornish-Fisher expansion around the normal quantile: error O(df^-3)
        z = statistics.NormalDist().inv_cdf(p)
        return z + (z**3 + z) / (4.0 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96.0 * df * df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_ci(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Dict[str, Any]:
    """``{"mean", "ci": [low, high] | None, "sd", "n"}`` over finite ``values``.

    One value has no interval (``ci`` None): nothing says how much it would move on a repeat.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return {"mean": None, "ci": None, "sd": None, "n": 0}
    mean = math.fsum(finite) / n
    if n == 1:
        return {"mean": mean, "ci": None, "sd": None, "n": 1}
    sd = statistics.stdev(finite)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci": [mean - half, mean + half], "sd": sd, "n": n}


def overlap(a: Optional[Sequence[float]], b: Optional[Sequence[float]]) -> bool:
    """Whether two intervals [low, high] share a point (unknown intervals overlap everything)."""
    if not a or not b:
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def excludes_zero(ci: Optional[Sequence[float]]) -> bool:
    return bool(ci) and (ci[0] > 0.0 or ci[1] < 0.0)  # type: ignore[index]
