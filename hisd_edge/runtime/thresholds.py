"""Per-exit thresholds from calibration data and measured costs: certified, or empirical.

Two methods share one pass over the data and one cost model:

``certified`` (default)  the cheapest thresholds of a fixed family for which, with probability
                         >= ``confidence`` over the draw of the calibration set, the accuracy drop
                         against the final exit (``risk="accuracy"``, needs labels) or the rate of
                         disagreeing with the final exit (``risk="disagreement"``, no labels: a
                         folder of frames, a video, camera captures) on new data from the same
                         distribution is <= ``max_drop`` points. Learn-then-Test; see
                         :mod:`hisd_edge.runtime.risk`.
``empirical``            the grid search below, which meets ``max_drop`` on the calibration
                         samples themselves and promises nothing beyond them ("no guarantee").

Either way the policy is written into the manifest with a ``certificate`` saying which method,
risk, bound, confidence, sample count and data (fingerprint) it rests on, and the input guard
(:mod:`hisd_edge.runtime.guard`) is calibrated again on the same data.

One pass runs every stage on every validation sample (no exits) and keeps all exits' outputs.
From those, each policy's scores at every exit are computed with the same code the runtime uses
(:meth:`ExitPolicy.step`), so every candidate set of thresholds can be evaluated exactly, offline:
which exit each sample would leave at, whether it would be right there, and what it would cost.

The search is a plain grid: the candidate thresholds of exit k are the distinct validation
scores at exit k (quantiles when there are more than ``grid`` of them) plus "never leave here".
With up to 4 exits every combination is evaluated (exhaustive); with more, coordinate descent
over the same grids. The chosen thresholds minimise the expected cost per sample subject to top-1
accuracy no more than ``max_drop`` points below the final exit's; ties go to higher accuracy.

Costs are per stage: latencies measured here with the chosen backend (batch 1), or a profile
report from the target device (see :func:`read_profile_costs` for the JSON it reads).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import itertools
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge import atomic
from hisd_edge.errors import InputError
from hisd_edge.runtime import risk as risk_control
from hisd_edge.runtime.backend import Backend
from hisd_edge.runtime.policies import ExitPolicy, make_policy

OBJECTIVES = {
    "latency": ("latency_ms", "ms"),
    "dynamic-energy": ("energy_mj", "mJ"),
    "total-energy": ("energy_mj", "mJ"),
    "energy": ("energy_mj", "mJ"),  # = total-energy, kept for existing scripts
}
METHODS = ("certified", "empirical")
DEFAULT_CONFIDENCE = 0.9


# -- one pass over the validation data -------------------------------------------------------------
@dataclasses.dataclass
class ExitOutputs:
    """Every exit's outputs on a dataset: ``outputs[k]`` (N, C), ``confidences[k]`` (N,) or None;
    ``pooled0`` (N, D): stage 0's features pooled for the input guard, when collected."""

    outputs: List[np.ndarray]
    confidences: List[Optional[np.ndarray]]
    pooled0: Optional[np.ndarray] = None

    @property
    def count(self) -> int:
        return len(self.outputs[0])


def collect_exit_outputs(
    backend: Backend, tensors: np.ndarray, batch_size: int = 64, progress: bool = False, pooled0: bool = False
) -> ExitOutputs:
    """Run all stages on all rows (no early exit) and keep every exit's outputs and confidences.

    Rows go in chunks of ``batch_size``, or fewer where the backend takes fewer per run
    (``max_batch``: a TensorRT engine's profile maximum, a fixed-batch-1 model). ``pooled0``: also
    keep stage 0's pooled features (for the input guard; exit 0's output for a one-stage bundle).
    """
    if backend.max_batch > 0:
        batch_size = min(batch_size, backend.max_batch)
    num = backend.num_stages
    outputs: List[List[np.ndarray]] = [[] for _ in range(num)]
    confs: List[List[np.ndarray]] = [[] for _ in range(num)]
    pooled: List[np.ndarray] = []
    starts = range(0, len(tensors), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="all-exit pass", unit="batch", leave=False, disable=None)  # no bar off a terminal
    for start in starts:
        backend.start(tensors[start : start + batch_size])
        for k in range(num):
            res = backend.run_stage(k)
            outputs[k].append(res.exit_output())
            if res.confidence is not None:
                confs[k].append(np.array(res.confidence))
            if k == 0 and pooled0:
                pooled.append(res.pooled_features() if num > 1 else res.exit_output())
    return ExitOutputs(
        outputs=[np.concatenate(o) for o in outputs],
        confidences=[np.concatenate(c) if c else None for c in confs],
        pooled0=np.concatenate(pooled) if pooled else None,
    )


def exit_predictions(outputs: ExitOutputs, exit_kind: str, labels: Optional[np.ndarray]) -> np.ndarray:
    """(N, K) predicted class per exit.

    Logits: argmax. Embeddings: nearest class centroid (cosine), centroids from ``labels`` at that exit.
    """
    if exit_kind == "logits":
        return np.stack([np.argmax(o, axis=1) for o in outputs.outputs], axis=1)
    if labels is None:
        raise InputError("calibrating embedding exits needs labelled validation data (class folders, or default:val)")
    preds = []
    classes = np.unique(labels)
    for emb in outputs.outputs:
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        centroids = np.stack([unit[labels == c].mean(axis=0) for c in classes])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        preds.append(classes[np.argmax(unit @ centroids.T, axis=1)])
    return np.stack(preds, axis=1)


# -- costs ------------------------------------------------------------------------------------------
def measure_stage_latency_ms(
    backend: Backend, policy: ExitPolicy, sample: np.ndarray, reps: int = 50, warmup: int = 5
) -> List[float]:
    """Per-stage latency at batch 1 on this machine, as the early-exit path pays it.

    Each exit k is reached through the real loop with a forced exit (``run_early_exit(...,
    exit_at=k)``), so the cost includes what bare stage timings miss: starting the batch, reading
    the confidence, the bookkeeping and building the result. On small models that overhead is a
    large share of an early exit, and leaving it out over-promises the speedup. Repetitions are
    interleaved over the exits to cancel drift; stage k's cost is the difference of the median
    costs of reaching exits k and k-1.
    """
    from hisd_edge.runtime.early_exit import run_early_exit

    sample = sample[:1]
    to_exit: List[List[float]] = [[] for _ in range(backend.num_stages)]
    for rep in range(warmup + reps):
        for k in range(backend.num_stages):
            _, trace = run_early_exit(backend, policy, sample, exit_at=k)
            if rep >= warmup:
                to_exit[k].append(trace.total_ms)
    cumulative = [float(np.median(v)) for v in to_exit]
    stage = [cumulative[0]]
    for k in range(1, len(cumulative)):
        stage.append(max(cumulative[k] - cumulative[k - 1], 1e-6))  # noise must not make a stage free or negative
    return stage


def read_profile_costs(path: Path, num_stages: int, objective: str = "latency") -> Tuple[List[float], Dict[str, Any]]:
    """Per-stage costs per sample from a profile report (``reports/NAME/profile.json``), and details.

    Objectives ``latency``, ``dynamic-energy``, ``total-energy`` (``energy``). The profile's intervals
    are used: a negative stage estimate is priced at zero (noted, never refused), exits whose intervals
    overlap are reported as indistinguishable (``details["notes"]``, also logged as warnings). The
    keys read and the rules: :func:`hisd_edge.profile.costs.read_costs`.
    """
    import logging

    from hisd_edge.profile.costs import read_costs

    values, meta = read_costs(Path(path), num_stages, objective)
    for note in meta.get("notes") or []:
        logging.getLogger("hisd_edge.thresholds").warning("%s: %s", path, note)
    return values, meta


# -- the search -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Calibration:
    """The chosen thresholds, what they are expected to do on the validation data, and the sweep."""

    policy: ExitPolicy
    accuracy: float
    final_accuracy: float
    expected_cost: float
    full_cost: float  # cost of running every stage (leaving at the last exit)
    exit_fractions: List[float]
    cost_unit: str
    sweep_header: List[str]
    sweep_rows: List[List[Any]]
    count: int
    label_source: str  # "labels" or "final exit" (agreement with the last exit when unlabelled)
    certificate: Dict[str, Any] = dataclasses.field(default_factory=dict)  # see policy_record

    @property
    def speedup(self) -> float:
        return self.full_cost / self.expected_cost if self.expected_cost > 0 else float("inf")

    @property
    def accuracy_drop_points(self) -> float:
        return 100.0 * (self.final_accuracy - self.accuracy)


def _candidates(scores: np.ndarray, grid: int) -> np.ndarray:
    """Candidate score-space thresholds for one exit: distinct values (or quantiles), plus +inf."""
    finite = np.unique(scores[np.isfinite(scores)])  # sorted
    if len(finite) > grid - 1:  # evenly spaced ranks of the distinct values (quantiles, "nearest")
        finite = finite[np.unique(np.linspace(0, len(finite) - 1, grid - 1).round().astype(np.int64))]
    return np.concatenate([finite, [np.inf]])


def calibrate(
    policy_kind: str,
    outputs: ExitOutputs,
    labels: Optional[np.ndarray],
    stage_costs: Sequence[float],
    max_drop_points: float,
    *,
    exit_kind: str = "logits",
    grid: int = 40,
    cost_unit: str = "ms",
) -> Calibration:
    """Choose thresholds for ``policy_kind`` (see the module docstring)."""
    num = len(outputs.outputs)
    if len(stage_costs) != num:
        raise InputError(f"{len(stage_costs)} stage costs for {num} stages")
    if max_drop_points < 0:
        raise InputError(f"--max-drop must be >= 0 accuracy points, got {max_drop_points}")
    if grid < 2:
        raise InputError("the grid needs at least 2 candidates per exit")
    probe = make_policy(policy_kind, [None] * num, num, exit_kind)
    scores = probe.all_scores(outputs.confidences, outputs.outputs)  # (N, K), score space
    preds = exit_predictions(outputs, exit_kind, labels)
    label_source = "labels"
    if labels is None:
        labels, label_source = preds[:, -1], "final exit"
    correct = preds == np.asarray(labels)[:, None]
    n = len(correct)
    cum = np.cumsum(np.asarray(stage_costs, dtype=np.float64))
    final_acc = float(correct[:, -1].mean())
    floor = final_acc - max_drop_points / 100.0 - 1e-12
    free = num - 1
    cands = [_candidates(scores[:, k], grid) for k in range(free)]
    header = (
        [f"threshold{k}" for k in range(free)]
        + ["accuracy", "expected_cost", "speedup", "feasible"]
        + [f"exit{k}_fraction" for k in range(num)]
    )
    rows: List[List[Any]] = []
    best: Optional[Tuple[float, float, Tuple[float, ...], np.ndarray]] = None  # (cost, -acc, thresholds, fractions)

    def record(ths: Tuple[float, ...], acc: float, cost: float, counts: np.ndarray) -> None:
        nonlocal best
        feasible = acc >= floor
        fractions = counts / n
        rows.append(
            [("never" if math.isinf(t) else probe.to_stored(t)) for t in ths]
            + [acc, cost, cum[-1] / cost if cost > 0 else float("inf"), feasible]
            + fractions.tolist()
        )
        if feasible and (best is None or (cost, -acc) < (best[0], best[1])):
            best = (cost, -acc, ths, fractions)

    if free == 0:
        record((), final_acc, float(cum[-1]), np.array([float(n)]))
    elif num <= 4:
        # Exhaustive: enumerate the first free-1 exits, vectorise over the last free exit's grid.
        passes = [scores[:, k][:, None] >= cands[k][None, :] for k in range(free)]  # (N, G_k) each
        j = free - 1
        for prefix in itertools.product(*[range(len(c)) for c in cands[:j]]):
            active = np.ones(n, dtype=bool)
            counts = np.zeros(num)
            hits = 0.0
            cost = 0.0
            for k, g in enumerate(prefix):
                leave = active & passes[k][:, g]
                counts[k] = leave.sum()
                hits += correct[leave, k].sum()
                cost += counts[k] * cum[k]
                active &= ~leave
            leave_j = active[:, None] & passes[j]  # (N, G)
            n_j = leave_j.sum(axis=0)
            hits_j = (leave_j & correct[:, j][:, None]).sum(axis=0)
            rest = active.sum() - n_j
            hits_rest = (active & correct[:, -1]).sum() - (leave_j & correct[:, -1][:, None]).sum(axis=0)
            accs = (hits + hits_j + hits_rest) / n
            costs = (cost + n_j * cum[j] + rest * cum[-1]) / n
            for g in range(len(cands[j])):
                counts[j], counts[-1] = n_j[g], rest[g]
                ths = (*tuple(cands[k][prefix[k]] for k in range(j)), cands[j][g])
                record(ths, float(accs[g]), float(costs[g]), counts.copy())
    else:
        # Coordinate descent from "never exit early" over the same grids.
        choice = [len(c) - 1 for c in cands]

        def evaluate(sel: Sequence[int]) -> Tuple[float, float, np.ndarray]:
            exit_idx = np.full(n, num - 1)
            undecided = np.ones(n, dtype=bool)
            for k in range(free):
                leave = undecided & (scores[:, k] >= cands[k][sel[k]])
                exit_idx[leave] = k
                undecided &= ~leave
            acc = float(correct[np.arange(n), exit_idx].mean())
            cost = float(cum[exit_idx].mean())
            return acc, cost, np.bincount(exit_idx, minlength=num).astype(float)

        for _sweep in range(10):
            changed = False
            for k in range(free):
                results = []
                for g in range(len(cands[k])):
                    sel = list(choice)
                    sel[k] = g
                    acc, cost, counts = evaluate(sel)
                    record(tuple(cands[i][sel[i]] for i in range(free)), acc, cost, counts)
                    results.append((acc < floor, cost, -acc, g))
                g_best = min(results)[3]
                if g_best != choice[k]:
                    choice[k], changed = g_best, True
            if not changed:
                break
    if best is None:  # cannot happen: "never exit early" is always feasible
        raise RuntimeError("no feasible thresholds")
    cost, neg_acc, ths, fractions = best
    stored = [probe.to_stored(t) for t in ths] + [None]
    policy = make_policy(policy_kind, stored, num, exit_kind)
    return Calibration(
        policy=policy,
        accuracy=-neg_acc,
        final_accuracy=final_acc,
        expected_cost=cost,
        full_cost=float(cum[-1]),
        exit_fractions=[float(f) for f in fractions],
        cost_unit=cost_unit,
        sweep_header=header,
        sweep_rows=rows,
        count=n,
        label_source=label_source,
        certificate={
            "method": "empirical",
            "guarantee": "none: the drop is met on the calibration samples only",
            "risk": "accuracy" if label_source == "labels" else "disagreement",
            "max_drop_points": max_drop_points,
            "confidence": None,
            "count": n,
        },
    )


def certify(
    policy_kind: str,
    outputs: ExitOutputs,
    labels: Optional[np.ndarray],
    stage_costs: Sequence[float],
    max_drop_points: float,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    risk: str = "accuracy",
    exit_kind: str = "logits",
    cost_unit: str = "ms",
) -> Calibration:
    """The cheapest certified thresholds of the shared family (see :mod:`hisd_edge.runtime.risk`).

    Raises a one-line InputError when the data cannot certify any early exit at ``max_drop_points``,
    saying the smallest bound it can certify and how many samples the requested one needs.
    """
    num = len(outputs.outputs)
    if len(stage_costs) != num:
        raise InputError(f"{len(stage_costs)} stage costs for {num} stages")
    risk_control.check_request(max_drop_points, confidence)
    if exit_kind != "logits":
        raise InputError(
            "the bundle's exits give embeddings, not classes, and the certified risks compare classes; "
            "use --method empirical (no guarantee)"
        )
    if risk not in risk_control.RISKS:
        raise InputError(f"--risk {risk!r} is not one of {', '.join(risk_control.RISKS)}")
    if risk == "accuracy" and labels is None:
        raise InputError(
            "--risk accuracy needs labelled calibration data (class folders, .npz with labels, default:val); "
            "use --risk disagreement for unlabelled data"
        )
    probe = make_policy(policy_kind, [None] * num, num, exit_kind)
    scores = probe.all_scores(outputs.confidences, outputs.outputs)
    preds = exit_predictions(outputs, exit_kind, labels)
    n = len(preds)
    family = risk_control.shared_family(probe, num)
    alpha, delta = max_drop_points / 100.0, 1.0 - confidence
    choice = risk_control.evaluate_family(scores, preds, labels, stage_costs, family, risk, alpha, delta)
    if choice.index is None:
        raise InputError(risk_control.too_few_samples_message(choice, risk, confidence))
    j = choice.index
    stored = [probe.to_stored(float(t)) for t in family[j]] + [None]
    policy = make_policy(policy_kind, stored, num, exit_kind)
    taken = risk_control.exit_indices(scores, family[j : j + 1])[:, 0]
    chosen = preds[np.arange(n), taken]
    truth = labels if labels is not None else preds[:, -1]
    cum = np.cumsum(np.asarray(stage_costs, dtype=np.float64))
    disagreements = int((chosen != preds[:, -1]).sum())
    header = (
        [f"threshold{k}" for k in range(num - 1)]
        + ["losses", "risk_points", "p_value", "certified", "expected_cost", "speedup"]
        + [f"exit{k}_fraction" for k in range(num)]
    )
    rows: List[List[Any]] = []
    for g in range(len(family)):
        rows.append(
            [probe.to_stored(float(t)) for t in family[g]]
            + [
                int(choice.loss_counts[g]),
                100.0 * choice.loss_counts[g] / n,
                float(choice.p_values[g]),
                g < choice.certified,
                float(choice.expected_cost[g]),
                float(cum[-1] / choice.expected_cost[g]),
            ]
            + choice.exit_fractions[g].tolist()
        )
    certificate = {
        "method": "certified",
        "guarantee": f"with probability >= {confidence:g} over the calibration draw, the expected "
        f"{risk_control.RISK_NAMES[risk]} on new data from its distribution is <= {max_drop_points:g} points",
        "risk": risk,
        "max_drop_points": max_drop_points,
        "confidence": confidence,
        "count": n,
        "test": risk_control.METHOD_TEXT,
        "family": risk_control.describe_family(probe, family),
        "candidates_certified": int(choice.certified),
        "calibration_risk_points": round(100.0 * float(choice.loss_counts[j]) / n, 6),
        "best_certifiable_points": round(100.0 * choice.best_alpha, 6),
        "audit_reference_points": max_drop_points
        if risk == "disagreement"
        else round(100.0 * risk_control.upper_bound(disagreements, n, delta), 6),
    }
    return Calibration(
        policy=policy,
        accuracy=float((chosen == truth).mean()),
        final_accuracy=float((preds[:, -1] == truth).mean()),
        expected_cost=float(choice.expected_cost[j]),
        full_cost=float(cum[-1]),
        exit_fractions=[float(f) for f in choice.exit_fractions[j]],
        cost_unit=cost_unit,
        sweep_header=header,
        sweep_rows=rows,
        count=n,
        label_source="labels" if labels is not None else "final exit",
        certificate=certificate,
    )


# The sweep's file name in a bundle's report directory (reports/NAME/): the one layout every verb
# shares; the profile report keeps it when it replaces the directory.
SWEEP_CSV_NAME = "thresholds_sweep.csv"


def write_sweep_csv(path: Path, calibration: Calibration) -> None:
    """The whole sweep (every evaluated threshold set: accuracy vs expected cost), written atomically."""
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(calibration.sweep_header)
        for row in calibration.sweep_rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def policy_record(calibration: Calibration, **details: Any) -> Dict[str, Any]:
    """The manifest ``policy`` entry for a calibration (see hisd_edge.bundle).

    ``certificate`` says what the thresholds promise (method, risk, bound, confidence, sample
    count, data and its fingerprint); ``calibration`` keeps what they did on the calibration data.
    """
    certificate = dict(calibration.certificate)
    for key in ("data", "data_fingerprint"):
        if key in details:
            certificate[key] = details[key]
    return calibration.policy.to_manifest(
        calibrated=True,
        certificate=certificate,
        calibration={
            "count": calibration.count,
            "labels": calibration.label_source,
            "accuracy": round(calibration.accuracy, 6),
            "final_accuracy": round(calibration.final_accuracy, 6),
            "expected_cost": round(calibration.expected_cost, 6),
            "full_cost": round(calibration.full_cost, 6),
            "cost_unit": calibration.cost_unit,
            "speedup": round(calibration.speedup, 4),
            "exit_fractions": [round(f, 6) for f in calibration.exit_fractions],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **details,
        },
    )


def default_policy_kind(bundle: Any, exit_kind: str) -> str:
    recorded = (bundle.policy or {}).get("kind")
    if recorded:
        return str(recorded)
    return "stability" if exit_kind == "embedding" else "max_prob"


def fit_thresholds(
    bundle: Any,
    data_source: str = "default:val",
    *,
    max_drop_points: float = 0.5,
    method: str = "certified",
    risk: str = "auto",
    confidence: float = DEFAULT_CONFIDENCE,
    policy_kind: Optional[str] = None,
    costs: Optional[Path] = None,
    objective: str = "latency",
    backend: str = "onnxruntime",
    precision: str = "fp32",
    count: Optional[int] = None,
    grid: int = 40,
    write: bool = True,
    progress: bool = False,
    backend_options: Optional[Dict[str, Any]] = None,
    runner: Optional[Backend] = None,
    guard_false_alarms: Optional[float] = None,
    input_scale: str = "auto",
) -> Tuple[Calibration, Dict[str, Any]]:
    """Calibrate ``bundle`` on ``data_source`` and (if ``write``) record the policy in its manifest.

    ``method`` "certified" or "empirical" (see the module docstring); ``risk`` "accuracy",
    "disagreement", or "auto" (accuracy when the data has labels, else disagreement).
    ``guard_false_alarms``: also recalibrate the input guard on this data at that false-alarm rate
    (None: the rate the bundle's guard has, or the default; 0 leaves the guard as it is).
    ``bundle`` is an opened :class:`~hisd_edge.bundle.Bundle` or its directory.
    Returns the calibration and the details recorded with it (data, costs and where they came from).
    """
    from hisd_edge.data import load_samples

    if isinstance(bundle, (str, Path)):
        from hisd_edge.bundle import Bundle

        bundle = Bundle.open(bundle)
    from hisd_edge.runtime import guard as guard_mod
    from hisd_edge.runtime.backend import create_backend
    from hisd_edge.runtime.policies import bundle_exit_kind

    if objective not in OBJECTIVES:
        raise InputError(f"--objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if method not in METHODS:
        raise InputError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if risk not in ("auto", *risk_control.RISKS):
        raise InputError(f"--risk {risk!r} is not one of auto, {', '.join(risk_control.RISKS)}")
    risk_control.check_request(max_drop_points, confidence if method == "certified" else None)
    if guard_false_alarms is not None and guard_false_alarms != 0 and not 0.0 < guard_false_alarms < 1.0:
        raise InputError(
            f"--guard-false-alarms must be strictly between 0 and 1 (0: keep the guard), got {guard_false_alarms}"
        )
    if objective != "latency" and costs is None:
        raise InputError(
            f"--objective {objective} needs measured energy: give --costs reports/NAME/profile.json from hisd-edge profile"
        )
    exit_kind = bundle_exit_kind(bundle.exits)
    kind = policy_kind or default_policy_kind(bundle, exit_kind)
    make_policy(kind, [None] * bundle.num_stages, bundle.num_stages, exit_kind)  # validate before the long pass
    if method == "certified":
        if exit_kind != "logits":
            raise InputError(
                "the bundle's exits give embeddings, not classes, and the certified risks compare classes; "
                "use --method empirical (no guarantee)"
            )
        risk_control.import_scipy_stats()  # a missing SciPy fails before the long pass
    profile_costs = read_profile_costs(Path(costs), bundle.num_stages, objective) if costs is not None else None
    samples = load_samples(data_source, count=count)
    tensors = samples.tensors(bundle.preprocessing, input_scale=input_scale)
    labels = samples.labels_for(bundle.class_names, data_source)
    if labels is not None:
        risk_control.check_labels(labels, len(bundle.class_names), data_source)
    if risk == "auto":
        risk = "accuracy" if labels is not None else "disagreement"
    elif risk == "accuracy" and labels is None:
        raise InputError(
            f"{data_source} has no labels but --risk accuracy needs them (class folders, .npz with labels, "
            "default:val); use --risk disagreement (no labels needed)"
        )
    if risk == "disagreement":
        labels = None if method == "certified" else labels
    # An already active backend (``runner``, e.g. bench's) is used as it is instead of opening another.
    opened = (
        contextlib.nullcontext(runner)
        if runner is not None
        else create_backend(backend, bundle, precision=precision, **(backend_options or {}))
    )
    with opened as runner:
        precision = runner.precision
        want_guard = guard_false_alarms != 0
        outputs = collect_exit_outputs(runner, tensors, progress=progress, pooled0=want_guard)
        if profile_costs is None:
            stage_costs = measure_stage_latency_ms(
                runner, make_policy(kind, [None] * bundle.num_stages, bundle.num_stages, exit_kind), tensors[:1]
            )
            cost_meta: Dict[str, Any] = {"source": "measured here", **runner.describe(), "batch_size": 1}
        else:
            stage_costs, cost_meta = profile_costs
    if method == "certified":
        calibration = certify(
            kind,
            outputs,
            labels,
            stage_costs,
            max_drop_points,
            confidence=confidence,
            risk=risk,
            exit_kind=exit_kind,
            cost_unit=OBJECTIVES[objective][1],
        )
    else:
        calibration = calibrate(
            kind,
            outputs,
            labels if risk == "accuracy" else None,
            stage_costs,
            max_drop_points,
            exit_kind=exit_kind,
            grid=grid,
            cost_unit=OBJECTIVES[objective][1],
        )
    fingerprint = risk_control.data_fingerprint(tensors, labels if calibration.label_source == "labels" else None)
    details = {
        "data": data_source,
        "data_fingerprint": fingerprint,
        "precision": precision,
        "max_drop_points": max_drop_points,
        "objective": objective,
        "stage_cost": [round(c, 6) for c in stage_costs],
        "costs": cost_meta,
    }
    guard_record: Optional[Dict[str, Any]] = None
    if want_guard and outputs.pooled0 is not None:
        previous = (bundle.manifest.get("guard") or {}).get("false_alarm_rate")
        rate = guard_false_alarms or previous or guard_mod.DEFAULT_FALSE_ALARM_RATE
        try:
            guard_record = guard_mod.fit_guard(
                guard_mod.guard_features(tensors, outputs.pooled0),
                outputs.outputs[0].argmax(axis=1) if exit_kind == "logits" else None,
                float(rate),
                source=guard_mod.FEAT0 if bundle.num_stages > 1 else guard_mod.EXIT0,
                data=data_source,
                data_fingerprint=fingerprint,
                calibrated_by="hisd-edge thresholds",
            ).to_manifest()
        except InputError as exc:
            details["guard_note"] = f"input guard not recalibrated: {exc}"
    if guard_record is not None:
        details["guard"] = {
            k: guard_record[k] for k in ("score", "features", "false_alarm_rate", "calibration_count", "threshold")
        }
    if write:
        record = policy_record(calibration, **{k: v for k, v in details.items() if k not in ("guard", "guard_note")})

        def change(manifest: Dict[str, Any]) -> None:
            manifest["policy"] = record
            if guard_record is not None:
                manifest["guard"] = guard_record

        bundle.update(change)
    return calibration, details


def format_calibration(calibration: Calibration, details: Dict[str, Any]) -> str:
    """Human-readable summary: what the thresholds promise, exit distribution, accuracy, speedup."""
    policy = calibration.policy
    unit = calibration.cost_unit
    certificate = {
        **calibration.certificate,
        "data": details.get("data"),
        "data_fingerprint": details.get("data_fingerprint"),
    }
    lines = [
        f"policy {policy.kind}: thresholds "
        + ", ".join("never" if t is None else f"{t:.6g}" for t in policy.thresholds[:-1])
        + (", (last exit accepts all)" if len(policy.thresholds) > 1 else "(single exit)"),
        risk_control.certificate_text(certificate),
    ]
    if certificate.get("method") == "certified":
        lines.append(
            f"  {certificate['family']}; {certificate['candidates_certified']} candidates certified; this data "
            f"certifies at best {certificate['best_certifiable_points']:.3g} points at this confidence"
        )
    lines.append(
        f"calibration data: {calibration.count} samples from {details.get('data')}"
        + (" (accuracy = agreement with the last exit: no labels)" if calibration.label_source != "labels" else "")
    )
    cum = np.cumsum(details.get("stage_cost", []))
    lines.append(f"{'exit':>4}  {'expected share':>14}  {'cost to reach':>14}")
    for k, frac in enumerate(calibration.exit_fractions):
        cost = f"{cum[k]:.4g} {unit}" if k < len(cum) else "-"
        lines.append(f"{k:>4}  {100 * frac:>13.1f}%  {cost:>14}")
    lines.append(
        f"on the calibration data: accuracy {100 * calibration.accuracy:.2f}% vs {100 * calibration.final_accuracy:.2f}% "
        f"at the last exit (drop {calibration.accuracy_drop_points:.2f} points, allowed {details.get('max_drop_points')})"
    )
    lines.append(
        f"expected cost {calibration.expected_cost:.4g} {unit} per sample vs {calibration.full_cost:.4g} {unit} "
        f"for all stages: expected speedup {calibration.speedup:.2f}x ({details.get('objective')}, costs "
        f"{details.get('costs', {}).get('source')}); a prediction from per-stage costs without the exit decision's "
        "own cost (hisd-edge bench measures the real one)"
    )
    guard = details.get("guard")
    if guard:
        lines.append(
            f"input guard recalibrated on this data: {guard['score']} on {guard['features']}, "
            f"{100 * guard['false_alarm_rate']:g}% false alarms ({guard['calibration_count']} calibration scores)"
        )
    if details.get("guard_note"):
        lines.append(details["guard_note"])
    return "\n".join(lines)
