"""The live audit: run the full model on a seeded sample of inputs and watch the disagreement rate.

A certificate holds for data like the calibration data; a camera's world drifts. With
``run --audit N`` each input is audited with probability 1/N (a seeded Bernoulli draw, so a
periodic pattern in a video cannot line up with the sample): if it left early, the rest of the
chain runs on it too, and the class it left with is compared with the final exit's. That gives,
on the device and without labels, the live rate at which early exits disagree with the full
model: the risk the label-free certificate bounds (and an upper bound of the accuracy drop).

Reported: the rate with a two-sided Clopper-Pearson interval at the audit's confidence. Warned
about: a rate that is *significantly* above the reference (the certified disagreement bound, or
for an accuracy certificate an upper bound of the disagreement on its calibration data). A stream
never ends, and a fixed-level test repeated on it would eventually cry wolf; so the warning uses
an anytime-valid union bound: every ``check_every`` audited inputs is a check, and the j-th check
spends ``(1 - confidence) * 6 / (pi^2 j^2)`` of the error budget (the series sums to it), split
between the whole stream and a sliding window of the last ``window`` audited inputs (which sees a
drift long after the start without the early history diluting it). Checking at intervals rather
than after every input keeps j small, so each check can spend more and a real drift is seen
sooner. With probability >= ``confidence`` no warning is ever raised while the true rate stays
within the reference.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Deque, Dict, List, Optional

import numpy as np

from hisd_edge.errors import InputError
from hisd_edge.runtime.risk import import_scipy_stats, two_sided_interval


@dataclasses.dataclass
class AuditWarning:
    index: int  # input index at which the warning was raised
    audited: int
    scope: str  # "stream" or "window"
    rate: float
    lower_bound: float
    reference: float

    def text(self) -> str:
        where = "since the start" if self.scope == "stream" else "over the last audited inputs"
        return (
            f"audit: early exits disagree with the full model on {100 * self.rate:.2f}% of audited inputs {where} "
            f"(at least {100 * self.lower_bound:.2f}% with high confidence) > the {100 * self.reference:.3g}% the "
            "thresholds were certified for: the inputs have drifted from the calibration data; recalibrate "
            "(hisd-edge thresholds --risk disagreement on recent frames)"
        )


class LiveAudit:
    """Seeded 1-in-``every`` sampling, counts, interval and drift warnings (see the module docstring)."""

    def __init__(
        self,
        every: int,
        reference: Optional[float],
        *,
        confidence: float = 0.9,
        seed: int = 0,
        window: int = 200,
        check_every: int = 25,
        reference_source: str = "",
    ):
        if every < 1:
            raise InputError(f"--audit must be >= 1 (audit one input in N), got {every}")
        if not 0.0 < confidence < 1.0:
            raise InputError(f"audit confidence must be strictly between 0 and 1, got {confidence}")
        import_scipy_stats()  # fail now, not at the first audited input
        self.every = every
        self.reference = reference
        self.reference_source = reference_source
        self.confidence = confidence
        self.window = window
        self.check_every = max(1, check_every)
        self.rng = np.random.default_rng(seed)
        self._picks = np.zeros(0, dtype=bool)
        self._next = 0
        self.seed = seed
        self.seen = 0
        self.audited = 0
        self.disagreements = 0
        self.recent: Deque[int] = collections.deque(maxlen=window)
        self.warnings: List[AuditWarning] = []

    def choose(self, count: int) -> np.ndarray:
        """Which of the next ``count`` inputs to audit (boolean mask).

        Drawn ahead in blocks, so the sample depends only on the seed and the input's position in
        the stream (not on the batch sizes), and a batch of one costs a slice, not a generator call.
        """
        self.seen += count
        if self.every == 1:
            return np.ones(count, dtype=bool)
        while self._next + count > len(self._picks):
            fresh = self.rng.random(max(4096, count)) < 1.0 / self.every
            self._picks = np.concatenate([self._picks[self._next :], fresh])
            self._next = 0
        picks = self._picks[self._next : self._next + count]
        self._next += count
        return picks

    def record(self, agrees: bool, index: int) -> Optional[AuditWarning]:
        """Count one audited input; returns a warning the first time the reference is exceeded."""
        self.audited += 1
        self.disagreements += int(not agrees)
        self.recent.append(int(not agrees))
        if self.reference is None or self.warnings or self.audited % self.check_every:
            return None
        stats = import_scipy_stats()
        check = self.audited // self.check_every
        spend = (1.0 - self.confidence) * 6.0 / (math.pi**2 * check**2) / 2.0
        for scope, count, n in (
            ("stream", self.disagreements, self.audited),
            ("window", int(sum(self.recent)), len(self.recent)),
        ):
            if count == 0:
                continue
            lower = float(stats.beta.ppf(spend, count, n - count + 1))
            if lower > self.reference:
                warning = AuditWarning(index, self.audited, scope, count / n, lower, self.reference)
                self.warnings.append(warning)
                return warning
        return None

    @property
    def rate(self) -> float:
        return self.disagreements / self.audited if self.audited else float("nan")

    def summary(self) -> Dict[str, Any]:
        low, high = two_sided_interval(self.disagreements, self.audited, self.confidence)
        window = list(self.recent)
        first = self.warnings[0] if self.warnings else None
        return {
            "every": self.every,
            "seed": self.seed,
            "inputs": self.seen,
            "audited": self.audited,
            "disagreements": self.disagreements,
            "disagreement_rate": None if not self.audited else self.rate,
            "interval": [low, high],
            "confidence": self.confidence,
            "window": {"size": len(window), "disagreements": int(sum(window))},
            "reference": self.reference,
            "reference_source": self.reference_source,
            "exceeded": first is not None,
            "first_exceeded_at": None if first is None else first.index,
            "warning": None if first is None else first.text(),
        }

    def text(self) -> str:
        if not self.audited:
            return f"audit: none of {self.seen} input(s) was sampled (1 in {self.every})"
        low, high = two_sided_interval(self.disagreements, self.audited, self.confidence)
        ref = "" if self.reference is None else f"; certified for {100 * self.reference:.3g}% ({self.reference_source})"
        return (
            f"audit: {self.audited} of {self.seen} inputs also ran the full model; early exits disagreed on "
            f"{self.disagreements} ({100 * self.rate:.2f}%, {100 * self.confidence:g}% interval "
            f"{100 * low:.2f}-{100 * high:.2f}%){ref}" + ("; EXCEEDED" if self.warnings else "")
        )


def audit_reference(policy_record: Dict[str, Any]) -> Optional[float]:
    """The disagreement rate a bundle's thresholds were certified (or measured) for, as a fraction."""
    certificate = (policy_record or {}).get("certificate") or {}
    value = certificate.get("audit_reference_points")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) / 100.0
    return None
