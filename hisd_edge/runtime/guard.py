"""The input guard: an out-of-distribution check at exit 0 that keeps strange inputs from leaving early.

Why: an early exit is only as trustworthy as its confidence, and confidence says nothing about
inputs unlike the training data. Uniform noise left the default MNIST model at exit 0 as "8"
with max-prob >= 0.99, blank frames as "1" at 0.999. A flagged input is not allowed to leave
early (it runs to the final exit) and its result carries ``out_of_distribution``; with
``abstain`` it stops at exit 0 with no class at all.

The score: the Mahalanobis distance to the nearest class mean (shared covariance, Ledoit-Wolf
shrinkage) of one small vector per input: exit 0's feature map (``feat0``) averaged over its
spatial axes, plus the preprocessed input's mean and standard deviation. Classes are exit 0's own
predictions, so the same code calibrates on unlabelled target data (embedding bundles: one
mean). Measured on the default MNIST model against max softmax probability, max logit, energy,
and Mahalanobis on exit 0's logits (tools/guard_bench.py, results/INPUT_GUARD.md): the softmax and
energy scores caught 0-40 % of uniform noise, blank frames and Fashion-MNIST at 5 % false alarms;
Mahalanobis on the logits 95-100 % but not one all-black frame; on the pooled features with the
input statistics every case but mild Gaussian noise at 100 %. Reading the pooled features is one
small copy per batch (the backends' ``StageResult.pooled_features``); a one-stage bundle has no
``feat0``, and its guard reads exit 0's output instead. Features wider than
``MAX_GUARD_DIMENSIONS`` are first projected on their leading principal components (fit data), so
the manifest stays small.

Calibration is split conformal (the false-alarm rate holds in expectation over the calibration
draw, for in-distribution inputs exchangeable with the calibration data): the Gaussian is fit on a
seeded half of the in-distribution data, the other half gives the calibration scores, and an
input is flagged when its conformal p-value ``(1 + #{calibration scores >= s}) / (n + 1)`` is <= the
false-alarm rate, i.e. when its score exceeds the ``ceil((n + 1)(1 - rate))``-th smallest
calibration score. Fitting and calibrating on the same samples would make the calibration scores
too small and the false alarms too many.

Manifest entry ``guard`` (see hisd_edge.bundle): score, features, threshold, false_alarm_rate,
center, projection (or null), means_whitened, whitening, fit_count, calibration_count, data,
data_fingerprint, calibrated_by, created.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from hisd_edge.errors import BundleError, InputError

FLAG_OUT_OF_DISTRIBUTION = "out_of_distribution"
FLAG_ABSTAINED = "abstained"
DEFAULT_FALSE_ALARM_RATE = 0.01
MAX_GUARD_DIMENSIONS = 64
# What the guard reads: stage 0's pooled feat0 (or, in a one-stage bundle, exit 0's output), then the
# input's mean and standard deviation. A guard recorded with another definition is refused, not misread.
FEAT0 = "feat0_pooled+input_mean_std"
EXIT0 = "exit0+input_mean_std"
FEATURES = (FEAT0, EXIT0)


def input_statistics(inputs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-sample mean and standard deviation of the preprocessed input (a blank frame has none),
    from the sum and the sum of squares: two reductions, no temporary copies. The inputs are
    normalised, so the variance does not suffer from cancellation."""
    flat = inputs.reshape(len(inputs), -1)
    scale = 1.0 / flat.shape[1]
    mean = flat.sum(axis=1) * scale
    variance = np.einsum("ij,ij->i", flat, flat) * scale - mean * mean
    return mean, np.sqrt(np.maximum(variance, 0.0))


def guard_features(inputs: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """(N, D + 2) float64: the pooled exit-0 vector, then each input's mean and standard deviation."""
    mean, std = input_statistics(inputs)
    return np.concatenate(
        [np.asarray(pooled, dtype=np.float64).reshape(len(inputs), -1), mean[:, None], std[:, None]], 1
    )


def ledoit_wolf(centered: np.ndarray) -> np.ndarray:
    """Shrunk covariance (Ledoit & Wolf 2004) of rows already centred: well conditioned with few samples.

    numpy only (the guard is fit on the target too, without scikit-learn); the same estimator as
    ``sklearn.covariance.ledoit_wolf(X, assume_centered=True)``.
    """
    n, dim = centered.shape
    sample = centered.T @ centered / n
    mu = float(np.trace(sample)) / dim
    delta = float(((sample - mu * np.eye(dim)) ** 2).sum()) / dim
    beta = float(((centered**2).sum(axis=1) ** 2).sum() - n * (sample**2).sum()) / (n * n * dim)
    shrink = 0.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    return (1.0 - shrink) * sample + shrink * mu * np.eye(dim)


def conformal_threshold(calibration_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score above which an input's conformal p-value is <= ``false_alarm_rate``."""
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    n = len(scores)
    rank = math.ceil((n + 1) * (1.0 - false_alarm_rate))
    if rank > n:
        need = math.ceil(1.0 / false_alarm_rate) - 1
        raise InputError(
            f"the input guard needs at least {need} calibration scores for a {100 * false_alarm_rate:g}% false-alarm "
            f"rate, got {n}; give more data or a higher --guard-false-alarms"
        )
    return float(scores[rank - 1])


def conformal_p_values(scores: np.ndarray, calibration_scores: np.ndarray) -> np.ndarray:
    """(1 + #{calibration scores >= s}) / (n + 1) for each score s (small: unlike the calibration data)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    above = len(cal) - np.searchsorted(cal, np.asarray(scores, dtype=np.float64), side="left")
    return (1.0 + above) / (len(cal) + 1.0)


@dataclasses.dataclass
class InputGuard:
    """A calibrated exit-0 out-of-distribution check (build with :func:`fit_guard`)."""

    features: str  # FEAT0 or EXIT0: what is read from stage 0 (see FEATURES)
    threshold: float
    false_alarm_rate: float
    center: np.ndarray  # (D,) subtracted before projecting
    projection: Optional[np.ndarray]  # (D, d) principal components, or None (d = D)
    means_whitened: np.ndarray  # (classes, d): class means times the whitening
    whitening: np.ndarray  # (d, d): W with inverse covariance = W W^T
    record: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._mean_sq = (self.means_whitened**2).sum(axis=1)
        self._means_t = np.ascontiguousarray(self.means_whitened.T)
        # Fold centring, projection and whitening into one affine map, split by feature group so
        # that the runtime scores without building the feature vector.
        self._map = self.whitening if self.projection is None else self.projection @ self.whitening
        self._offset = self.center @ self._map
        self._map_pooled = np.ascontiguousarray(self._map[:-2])
        self._map_mean, self._map_std = self._map[-2], self._map[-1]
        self._means_3d = self.means_whitened[None, :, :]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per row of :func:`guard_features`."""
        w = np.asarray(features, dtype=np.float64) @ self._map - self._offset
        d2 = (w * w).sum(axis=1)[:, None] - 2.0 * (w @ self._means_t) + self._mean_sq[None, :]
        return d2.min(axis=1)

    def score_batch(self, inputs: np.ndarray, stage0: Any) -> np.ndarray:
        """Scores for a batch from its inputs and stage 0's :class:`~hisd_edge.runtime.backend.StageResult`
        (equal to ``scores(guard_features(...))`` in fewer numpy calls: this runs in the early-exit
        loop, where each call costs about a microsecond)."""
        pooled = stage0.pooled_features() if self.features == FEAT0 else stage0.exit_output()
        mean, std = input_statistics(inputs)
        w = pooled @ self._map_pooled
        w += mean[:, None] * self._map_mean
        w += std[:, None] * self._map_std
        w -= self._offset
        diff = w[:, None, :] - self._means_3d
        return np.einsum("nkd,nkd->nk", diff, diff).min(axis=1)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """Boolean per row: out of distribution (NaN scores are flagged: no input we know gives them)."""
        return ~(np.asarray(scores) <= self.threshold)

    def to_manifest(self) -> Dict[str, Any]:
        return {
            "score": "mahalanobis",
            "features": self.features,
            "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate,
            "center": np.round(self.center, 8).tolist(),
            "projection": None if self.projection is None else np.round(self.projection, 8).tolist(),
            "means_whitened": np.round(self.means_whitened, 7).tolist(),
            "whitening": np.round(self.whitening, 9).tolist(),
            **self.record,
        }

    @classmethod
    def from_manifest(cls, record: Dict[str, Any]) -> InputGuard:
        """The guard a bundle records; a damaged entry is a one-line BundleError."""
        try:
            if record.get("score") != "mahalanobis" or record.get("features") not in FEATURES:
                raise ValueError(
                    f"{record.get('score')!r} on {record.get('features')!r}, which this hisd-edge does not know"
                )
            threshold = float(record["threshold"])
            rate = float(record["false_alarm_rate"])
            center = np.asarray(record["center"], dtype=np.float64)
            projection = (
                None if record.get("projection") is None else np.asarray(record["projection"], dtype=np.float64)
            )
            means = np.asarray(record["means_whitened"], dtype=np.float64)
            whitening = np.asarray(record["whitening"], dtype=np.float64)
            dim = whitening.shape[0]
            inner = center.shape[0] if projection is None else projection.shape[1]
            if (
                center.ndim != 1
                or whitening.shape != (dim, dim)
                or inner != dim
                or (projection is not None and projection.shape[0] != center.shape[0])
                or means.ndim != 2
                or means.shape[1] != dim
            ):
                raise ValueError("inconsistent shapes")
            if not math.isfinite(threshold) or not 0.0 < rate < 1.0:
                raise ValueError("threshold or false-alarm rate out of range")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(
                f"the bundle's input guard is damaged ({exc}); recalibrate it with hisd-edge thresholds, or run with --no-guard"
            ) from None
        known = (
            "score",
            "features",
            "threshold",
            "false_alarm_rate",
            "center",
            "projection",
            "means_whitened",
            "whitening",
        )
        extra = {k: v for k, v in record.items() if k not in known}
        return cls(str(record["features"]), threshold, rate, center, projection, means, whitening, extra)

    def describe(self) -> str:
        r = self.record
        return (
            f"input guard: Mahalanobis on {self.features}, {100 * self.false_alarm_rate:g}% false alarms "
            f"on data like {r.get('calibration_count')} samples of {r.get('data')} (calibrated by {r.get('calibrated_by')})"
        )


def fit_guard(
    features: np.ndarray,
    classes: Optional[np.ndarray],
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    *,
    source: str = FEAT0,
    seed: int = 0,
    **record: Any,
) -> InputGuard:
    """Fit on a seeded half of the in-distribution :func:`guard_features`, calibrate on the other half.

    ``classes``: exit 0's predicted class per row (None: one mean for all, as for embedding exits).
    ``record`` (data source, fingerprint, who calibrated) is stored with the guard in the manifest.
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise InputError(f"--guard-false-alarms must be strictly between 0 and 1, got {false_alarm_rate}")
    features = np.asarray(features, dtype=np.float64)
    finite = np.isfinite(features).all(axis=1)
    features = features[finite]
    labels = np.zeros(len(features), dtype=np.int64) if classes is None else np.asarray(classes)[finite]
    n = len(features)
    order = np.random.default_rng(seed).permutation(n)
    fit_rows, cal_rows = order[: n // 2], order[n // 2 :]
    need_cal = math.ceil(1.0 / false_alarm_rate) - 1
    if len(cal_rows) < need_cal or len(fit_rows) < 2:
        raise InputError(
            f"the input guard needs at least {2 * need_cal} in-distribution samples for a {100 * false_alarm_rate:g}% "
            f"false-alarm rate (half to fit it, half to calibrate it), got {n}; give more data or a higher rate"
        )
    guard = fit_mahalanobis(features[fit_rows], labels[fit_rows], false_alarm_rate, source)
    guard.threshold = conformal_threshold(guard.scores(features[cal_rows]), false_alarm_rate)
    guard.record = {
        "fit_count": len(fit_rows),
        "calibration_count": len(cal_rows),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **record,
    }
    return guard


def fit_mahalanobis(
    features: np.ndarray, classes: np.ndarray, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, source: str = FEAT0
) -> InputGuard:
    """The Gaussian part of the guard, fit on ``features`` (threshold not yet calibrated: nan).

    Class means for every class with at least two rows, one shared Ledoit-Wolf covariance of the
    rows around their class means, and (above ``MAX_GUARD_DIMENSIONS``) a projection on the
    leading principal components first.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(classes)
    center = features.mean(axis=0)
    projection = None
    if features.shape[1] > MAX_GUARD_DIMENSIONS:
        _, _, vt = np.linalg.svd(features - center, full_matrices=False)
        projection = vt[:MAX_GUARD_DIMENSIONS].T
    reduced = (features - center) if projection is None else (features - center) @ projection
    kept = [int(c) for c in np.unique(labels) if (labels == c).sum() >= 2]
    if not kept:
        kept = [int(np.bincount(labels).argmax())]
    index_of = {c: i for i, c in enumerate(kept)}
    means = np.stack([reduced[labels == c].mean(axis=0) for c in kept])
    in_kept = np.isin(labels, kept)
    covariance = ledoit_wolf(reduced[in_kept] - means[[index_of[int(c)] for c in labels[in_kept]]])
    inner = covariance.shape[0]
    covariance += 1e-9 * max(float(np.trace(covariance)) / inner, 1e-12) * np.eye(inner)
    whitening = np.linalg.cholesky(np.linalg.inv(covariance))
    return InputGuard(source, float("nan"), false_alarm_rate, center, projection, means @ whitening, whitening)


def guard_from_bundle(bundle: Any) -> Optional[InputGuard]:
    """The bundle's calibrated guard, or None when it has none."""
    record = bundle.manifest.get("guard")
    if not record:
        return None
    return InputGuard.from_manifest(record)


def guard_record_for_convert(
    stage0_path: Any,
    inputs: np.ndarray,
    source: str,
    outputs: Tuple[Optional[str], str] = ("feat0", "exit0"),
    logits: bool = True,
    threads: int = 1,
    batch_size: int = 256,
) -> Optional[Dict[str, Any]]:
    """The manifest ``guard`` entry ``convert`` writes: calibrated on its validation inputs.

    Runs stage 0 (fp32 ONNX) with ONNX Runtime on ``inputs``: ``outputs`` names its feature
    output (None for a one-stage bundle) and its exit output. Returns None, with a logged
    warning, when there are too few inputs: the bundle then has no guard until
    ``hisd-edge thresholds`` calibrates one.
    """
    import logging

    from hisd_edge.runtime.backend import pool_features
    from hisd_edge.runtime.ort_session import open_session
    from hisd_edge.runtime.risk import data_fingerprint

    feat_name, exit_name = outputs
    session = open_session(str(stage0_path), threads)
    name = session.get_inputs()[0].name
    wanted = [exit_name] if feat_name is None else [feat_name, exit_name]
    pooled, exits = [], []
    for start in range(0, len(inputs), batch_size):
        got = session.run(wanted, {name: inputs[start : start + batch_size]})
        exits.append(got[-1])
        pooled.append(pool_features(got[0]) if feat_name is not None else got[-1])
    exit0 = np.concatenate(exits)
    try:
        guard = fit_guard(
            guard_features(inputs, np.concatenate(pooled)),
            exit0.argmax(axis=1) if logits else None,
            source=FEAT0 if feat_name is not None else EXIT0,
            data=source,
            data_fingerprint=data_fingerprint(inputs),
            calibrated_by="hisd-edge convert",
        )
    except InputError as exc:
        logging.getLogger("hisd_edge.convert").warning("no input guard: %s", exc)
        return None
    return guard.to_manifest()
