"""The early-exit loop, the same for every backend.

Run stage 0 on the whole batch, score exit 0 with the policy, let the confident rows leave (their
exit outputs are fetched now, only for them), compact the batch to the rest, run stage 1 on those,
and so on; the last exit takes whoever is left. Results come back in input order. ``exit_at=K``
forces every row to leave at exit K (a fixed budget).

With an input guard (:mod:`hisd_edge.runtime.guard`, on by default once a bundle has one), every
row is also scored at exit 0 for being out of distribution (from stage 0's pooled features and the
input's statistics): a flagged row may not leave early (it runs to the last exit, or with
``abstain`` stops at once without a class) and its result carries ``out_of_distribution``. With a live audit (:mod:`hisd_edge.runtime.audit`), a seeded sample of
the rows that left early also runs to the last exit, and the two classes are compared.

:class:`EarlyExitRuntime` is the public API: open a bundle (its checksums are verified), pick a
backend, and infer on raw images (preprocessed with the manifest's preprocessing, the function
the converter used) or on already-preprocessed tensors.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from hisd_edge.bundle import Bundle
from hisd_edge.errors import HisdError, InputError
from hisd_edge.preprocess import InputScaleError, check_input_scale, prepare_tensors, preprocess_image
from hisd_edge.runtime.backend import Backend, create_backend, softmax_max
from hisd_edge.runtime.guard import FLAG_ABSTAINED, FLAG_OUT_OF_DISTRIBUTION, InputGuard, guard_from_bundle
from hisd_edge.runtime.policies import ExitPolicy, bundle_exit_kind, make_policy, policy_from_manifest

LOG = logging.getLogger("hisd_edge.runtime")

FLAG_NONFINITE_INPUT = "nonfinite_input"  # NaN or inf in the (preprocessed) input
FLAG_NONFINITE_OUTPUT = "nonfinite_output"  # NaN or inf in the exit output


@dataclasses.dataclass
class ExitResult:
    """The answer for one input.

    ``exit`` is the exit index it left at; ``class_index``/``class_name`` for logits exits,
    ``embedding`` for embedding exits; ``confidence`` the max softmax probability at that exit
    (None for embeddings); ``score`` the policy's score there. ``stage_latency_ms[k]`` is the
    latency of the stage-k run this input took part in (the whole batch's run: rows of one batch
    run together), so ``latency_ms`` (their sum) is the compute time this input waited for.
    ``error`` is set (and everything else empty) when the input could not be used at all.
    ``ood_score`` is the input guard's score (None without a guard); ``audit`` is set for an
    audited input: ``{"final_class": ..., "agrees": ...}``.
    """

    index: int
    name: str
    exit: Optional[int] = None
    class_index: Optional[int] = None
    class_name: Optional[str] = None
    confidence: Optional[float] = None
    score: Optional[float] = None
    embedding: Optional[List[float]] = None
    stage_latency_ms: List[float] = dataclasses.field(default_factory=list)
    flags: List[str] = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    ood_score: Optional[float] = None
    audit: Optional[Dict[str, Any]] = None

    @property
    def latency_ms(self) -> float:
        return float(sum(self.stage_latency_ms))

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["latency_ms"] = round(self.latency_ms, 4) if self.ok else None
        out["stage_latency_ms"] = [round(v, 4) for v in self.stage_latency_ms]
        for key in ("confidence", "score", "ood_score"):
            value = out[key]
            if value is not None and not math.isfinite(value):
                out[key] = None  # JSON has no NaN/inf; the flags say why
        return out


@dataclasses.dataclass
class BatchTrace:
    """What one batch cost: per-stage latency and rows, and the time spent outside the stages
    (policy scoring, compaction and bookkeeping: the price of deciding to exit)."""

    stage_latency_ms: List[float]
    stage_rows: List[int]
    total_ms: float

    @property
    def decision_ms(self) -> float:
        return max(self.total_ms - sum(self.stage_latency_ms), 0.0)


def _nonfinite_rows(array: np.ndarray) -> Optional[np.ndarray]:
    """Boolean per row: NaN or inf anywhere in it; None when every value is finite.

    Fast path: the dot product of the values with themselves is finite when they all are (it can
    also overflow for huge finite values; then the exact check below decides).
    """
    flat = array.reshape(-1)
    if math.isfinite(float(np.dot(flat, flat))):
        return None
    rows = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return rows if rows.any() else None


def run_early_exit(
    backend: Backend,
    policy: ExitPolicy,
    batch: np.ndarray,
    *,
    class_names: Sequence[str] = (),
    exit_at: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
    first_index: int = 0,
    guard: Optional[InputGuard] = None,
    abstain: bool = False,
) -> Tuple[List[ExitResult], BatchTrace]:
    """Run one preprocessed batch with per-sample exits; results in input order.

    The backend must be active. ``exit_at`` forces every row to leave at that exit (the policy
    is not consulted; the guard still flags). ``guard``: rows it flags at exit 0 may not leave
    early, or with ``abstain`` leave there without a class. Written for a small constant cost per
    stage: this loop is the price of early exit (see ``hisd-edge bench``, "exit decision cost").
    """
    begin = time.perf_counter()
    num = backend.num_stages
    if exit_at is not None and not 0 <= exit_at < num:
        raise InputError(f"--exit-at {exit_at}: the bundle has exits 0..{num - 1}")
    backend.start(batch)
    n = len(batch)
    if n == 1 and exit_at is None and guard is None:
        check = getattr(backend, "ingraph_unavailable", None)  # duck-typed backends may lack it
        why_not = check(policy) if check is not None else "the backend has no in-graph path"
        if why_not is None:
            name = names[0] if names else f"#{first_index}"
            return _run_ingraph(backend, policy, batch, begin, class_names, name, first_index)
        _log_once(f"batch 1 runs the chain: {why_not}")
    elif n == 1 and LOG.isEnabledFor(logging.DEBUG):
        _log_once(
            "batch 1 runs the chain: "
            + (
                "a forced exit (--exit-at)"
                if exit_at is not None
                else "the input guard scores stage 0's features between stages"
            )
        )
    if n == 1:
        return _run_one(
            backend,
            policy,
            batch,
            begin,
            class_names,
            names[0] if names else f"#{first_index}",
            first_index,
            exit_at,
            guard,
            abstain,
        )
    nonfinite_in = _nonfinite_rows(batch)
    embedding = policy.exit_kind == "embedding"
    needs_outputs = policy.needs_outputs
    results: List[Optional[ExitResult]] = [None] * n
    active = np.arange(n)  # input positions of the rows still running
    state = policy.init_state(n)
    keep: Optional[np.ndarray] = None
    stage_ms: List[float] = []
    stage_rows: List[int] = []
    last_stage = num - 1 if exit_at is None else exit_at
    ood_scores: Optional[np.ndarray] = None  # per input position
    flagged: Optional[np.ndarray] = None  # per active row; None: nobody flagged
    for k in range(last_stage + 1):
        res = backend.run_stage(k, keep)
        stage_ms.append(res.latency_ms)
        stage_rows.append(res.rows)
        final = k == last_stage
        keep = None  # unless rows leave below, the held features stay as they are
        if k == 0 and guard is not None:
            ood_scores = guard.score_batch(batch, res)
            flagged = guard.flags(ood_scores)
            if not flagged.any():
                flagged = None
        if not final and exit_at is not None and not needs_outputs:
            continue  # forced exit further on and no policy state to update
        outputs = res.exit_output() if (needs_outputs or final) else None
        scores = policy.step(k, res.confidence, outputs, state)
        mask: Optional[np.ndarray] = None
        if not final:
            if exit_at is not None:
                continue
            mask = policy.leaves(k, scores)
            if flagged is not None:
                mask = (mask | flagged) if (abstain and k == 0) else (mask & ~flagged)
            count = int(np.count_nonzero(mask))
            if count == 0:
                continue
            if count == len(active):
                mask = None  # everyone leaves
        if mask is None:
            rows: Any = range(len(active))
            leaving_out = outputs if outputs is not None else res.exit_output()
            conf = res.confidence
        else:
            rows = np.flatnonzero(mask)
            leaving_out = outputs[rows] if outputs is not None else res.exit_output(rows)
            conf = None if res.confidence is None else res.confidence[rows]
        nonfinite_out = _nonfinite_rows(leaving_out)
        classes = None if embedding else leaving_out.argmax(axis=1)
        for j, row in enumerate(rows):
            pos = int(active[row])
            flags = []
            if nonfinite_in is not None and nonfinite_in[pos]:
                flags.append(FLAG_NONFINITE_INPUT)
            if nonfinite_out is not None and nonfinite_out[j]:
                flags.append(FLAG_NONFINITE_OUTPUT)
            item = ExitResult(
                index=first_index + pos,
                name=names[pos] if names else f"#{first_index + pos}",
                exit=k,
                score=float(scores[row]),
                stage_latency_ms=list(stage_ms),
                flags=flags,
                ood_score=None if ood_scores is None else float(ood_scores[pos]),
            )
            if flagged is not None and flagged[row]:
                flags.append(FLAG_OUT_OF_DISTRIBUTION)
                if abstain:
                    flags.append(FLAG_ABSTAINED)
                    results[pos] = item
                    continue
            if classes is not None:
                cls = int(classes[j])
                item.class_index = cls
                item.class_name = class_names[cls] if cls < len(class_names) else str(cls)
                item.confidence = None if conf is None else float(conf[j])
            else:
                item.embedding = leaving_out[j].tolist()
            results[pos] = item
        if mask is None:
            break
        keep = np.flatnonzero(~mask)
        active = active[keep]
        if flagged is not None:
            flagged = flagged[keep]
            if not flagged.any():
                flagged = None
        if state:
            state = policy.compact(state, keep)
    total_ms = (time.perf_counter() - begin) * 1e3
    return [r for r in results if r is not None], BatchTrace(stage_ms, stage_rows, total_ms)


_LOGGED: set = set()


def _log_once(message: str) -> None:
    """Why a path was (not) taken, under -v, once per process and reason (this runs per frame)."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        LOG.debug("early exit: %s", message)


def _one_sample_flags(batch: np.ndarray, out: np.ndarray) -> List[str]:
    """Non-finite flags of one sample's input and output, with one fused check on the fast path:
    finite sums of squares of both mean no NaN or inf on either side."""
    flat_in, row = batch.reshape(-1), out.reshape(-1)
    if math.isfinite(float(np.dot(flat_in, flat_in)) + float(np.dot(row, row))):
        return []
    flags = []
    if _nonfinite_rows(batch) is not None:
        flags.append(FLAG_NONFINITE_INPUT)
    if _nonfinite_rows(out) is not None:
        flags.append(FLAG_NONFINITE_OUTPUT)
    return flags


def _run_ingraph(
    backend: Backend,
    policy: ExitPolicy,
    batch: np.ndarray,
    begin: float,
    class_names: Sequence[str],
    name: str,
    index: int,
) -> Tuple[List[ExitResult], BatchTrace]:
    """One sample through the in-graph artifact: one call, the decision made inside the graph.

    The result has one latency entry (the whole graph; the stages are not timed apart)."""
    logits, k, score, latency_ms = backend.run_ingraph(policy)
    flags = _one_sample_flags(batch, logits)
    cls = int(logits[0].argmax())
    item = ExitResult(
        index=index,
        name=name,
        exit=k,
        class_index=cls,
        class_name=class_names[cls] if cls < len(class_names) else str(cls),
        confidence=float(softmax_max(logits)[0]) if policy.kind != "max_prob" else score,
        score=score,
        stage_latency_ms=[latency_ms],
        flags=flags,
    )
    return [item], BatchTrace([latency_ms], [1], (time.perf_counter() - begin) * 1e3)


def _run_one(
    backend: Backend,
    policy: ExitPolicy,
    batch: np.ndarray,
    begin: float,
    class_names: Sequence[str],
    name: str,
    index: int,
    exit_at: Optional[int],
    guard: Optional[InputGuard] = None,
    abstain: bool = False,
) -> Tuple[List[ExitResult], BatchTrace]:
    """:func:`run_early_exit` for a single input (a camera stream's case), with Python scalars for
    the bookkeeping: the same scores and the same comparison, a third of the overhead."""
    if guard is None and hasattr(backend, "run_stage_lean"):
        return _run_one_lean(backend, policy, batch, begin, class_names, name, index, exit_at)
    last = backend.num_stages - 1 if exit_at is None else exit_at
    state = policy.init_state(1)
    thresholds = policy.score_thresholds()
    needs_outputs = policy.needs_outputs
    stage_ms: List[float] = []
    ood_score: Optional[float] = None
    flagged = False
    for k in range(last + 1):
        res = backend.run_stage(k)
        stage_ms.append(res.latency_ms)
        if k == 0 and guard is not None:
            ood_score = float(guard.score_batch(batch, res)[0])
            flagged = not ood_score <= guard.threshold  # NaN is flagged
            if flagged and abstain:
                score = float("nan")
                break
        scores = policy.step(k, res.confidence, res.exit_output() if needs_outputs else None, state)
        score = float(scores[0])
        if k == last or (exit_at is None and not flagged and score >= thresholds[k]):  # NaN never leaves early
            break
    flags = []
    if _nonfinite_rows(batch) is not None:
        flags.append(FLAG_NONFINITE_INPUT)
    if flagged:
        flags.append(FLAG_OUT_OF_DISTRIBUTION)
        if abstain:
            flags.append(FLAG_ABSTAINED)
            item = ExitResult(
                index, name, exit=k, score=None, stage_latency_ms=stage_ms, flags=flags, ood_score=ood_score
            )
            return [item], BatchTrace(stage_ms, [1] * len(stage_ms), (time.perf_counter() - begin) * 1e3)
    out = res.exit_output()
    if _nonfinite_rows(out) is not None:
        flags.append(FLAG_NONFINITE_OUTPUT)
    item = ExitResult(
        index=index, name=name, exit=k, score=score, stage_latency_ms=stage_ms, flags=flags, ood_score=ood_score
    )
    if policy.exit_kind == "embedding":
        item.embedding = out[0].tolist()
    else:
        cls = int(out[0].argmax())
        item.class_index = cls
        item.class_name = class_names[cls] if cls < len(class_names) else str(cls)
        item.confidence = None if res.confidence is None else float(res.confidence[0])
    total_ms = (time.perf_counter() - begin) * 1e3
    return [item], BatchTrace(stage_ms, [1] * len(stage_ms), total_ms)


def _run_one_lean(
    backend: Backend,
    policy: ExitPolicy,
    batch: np.ndarray,
    begin: float,
    class_names: Sequence[str],
    name: str,
    index: int,
    exit_at: Optional[int],
) -> Tuple[List[ExitResult], BatchTrace]:
    """The batch-1 chain with nothing per stage but the run and the comparison (no guard).

    The same scores as :meth:`ExitPolicy.step` (max_prob reads the confidence float directly: the
    float64 value of the float32 ``conf{k}``, as ``step`` makes it), one non-finite check over
    input and output together, and one result built at the end."""
    last = backend.num_stages - 1 if exit_at is None else exit_at
    thresholds = policy.score_thresholds()
    direct = not policy.needs_outputs and policy.kind == "max_prob"
    state = None if direct else policy.init_state(1)
    run = backend.run_stage_lean
    stage_ms = []
    for k in range(last + 1):
        ms, conf, out = run(k)
        stage_ms.append(ms)
        if direct:
            score = conf
        else:
            assert state is not None
            confidence = None if conf != conf and policy.exit_kind == "embedding" else np.array([conf], np.float32)
            score = float(policy.step(k, confidence, out, state)[0])
        if k == last or (exit_at is None and score >= thresholds[k]):  # NaN never leaves early
            break
    flags = _one_sample_flags(batch, out)
    row = out[0]
    item = ExitResult(index=index, name=name, exit=k, score=score, stage_latency_ms=stage_ms, flags=flags)
    if policy.exit_kind == "embedding":
        item.embedding = row.astype(np.float32).tolist()
    else:
        cls = int(row.argmax())
        item.class_index = cls
        item.class_name = class_names[cls] if cls < len(class_names) else str(cls)
        item.confidence = conf
    total_ms = (time.perf_counter() - begin) * 1e3
    return [item], BatchTrace(stage_ms, [1] * len(stage_ms), total_ms)


class EarlyExitRuntime:
    """A bundle, a backend and an exit policy, ready to infer.

    ``policy`` may be None (use the manifest's), a policy kind (thresholds from the manifest when
    it records that kind), a manifest-style dict, or an :class:`ExitPolicy`. ``guard``: True (the
    default) uses the bundle's calibrated input guard when it has one, False none, or an
    :class:`InputGuard`; ``abstain`` makes flagged inputs stop at exit 0 without a class.
    ``audit``: a :class:`~hisd_edge.runtime.audit.LiveAudit` (``run --audit N``). ``input_scale``:
    how float arrays are scaled (:mod:`hisd_edge.preprocess`). Use as a context manager, or call
    :meth:`activate` / :meth:`deactivate`.
    """

    def __init__(
        self,
        bundle: Union[Bundle, str, Path],
        backend: str = "onnxruntime",
        precision: str = "fp32",
        policy: Union[str, Dict[str, Any], ExitPolicy, None] = None,
        exit_at: Optional[int] = None,
        thresholds: Optional[Sequence[Optional[float]]] = None,
        guard: Union[bool, InputGuard] = True,
        abstain: bool = False,
        audit: Any = None,
        input_scale: str = "auto",
        **backend_options: Any,
    ):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.exit_kind = bundle_exit_kind(self.bundle.exits)
        self.policy = self._resolve_policy(policy, thresholds)
        if isinstance(guard, InputGuard):
            self.guard: Optional[InputGuard] = guard
        else:
            self.guard = guard_from_bundle(self.bundle) if guard and self.exit_kind == "logits" else None
        if abstain and self.guard is None:
            raise InputError(
                "--abstain needs the bundle's input guard; calibrate one with hisd-edge thresholds (and drop --no-guard)"
            )
        self.abstain = abstain
        self.audit = audit
        self.input_scale = check_input_scale(input_scale)
        self.exit_at = exit_at
        if exit_at is not None and not 0 <= exit_at < self.bundle.num_stages:
            raise InputError(f"--exit-at {exit_at}: the bundle has exits 0..{self.bundle.num_stages - 1}")
        self.preprocessing = self.bundle.preprocessing
        self.class_names = self.bundle.class_names
        self.backend: Backend = create_backend(backend, self.bundle, precision=precision, **backend_options)

    def _resolve_policy(self, policy: Any, thresholds: Optional[Sequence[Optional[float]]]) -> ExitPolicy:
        num = self.bundle.num_stages
        if isinstance(policy, ExitPolicy):
            return policy
        if isinstance(policy, dict):
            return policy_from_manifest(policy, num, self.exit_kind)
        recorded = self.bundle.policy
        if isinstance(policy, str):
            make_policy(policy, [None] * num, num, self.exit_kind)  # unknown kind / wrong exit kind: say so first
        if policy is None:
            if thresholds is not None:
                return make_policy(str(recorded.get("kind", "max_prob")), thresholds, num, self.exit_kind)
            return policy_from_manifest(recorded, num, self.exit_kind)
        if thresholds is not None:
            return make_policy(policy, thresholds, num, self.exit_kind)
        if recorded.get("kind") == policy:
            return policy_from_manifest(recorded, num, self.exit_kind)
        raise InputError(
            f"the bundle records no thresholds for policy {policy!r} (it has {recorded.get('kind')!r}); "
            f"run hisd-edge thresholds --policy {policy} or give --thresholds"
        )

    # -- lifetime ------------------------------------------------------------------------------
    def activate(self) -> EarlyExitRuntime:
        self.backend.activate()
        return self

    def deactivate(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> EarlyExitRuntime:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # -- inference -----------------------------------------------------------------------------
    def infer_tensors(
        self,
        batch: np.ndarray,
        names: Optional[Sequence[str]] = None,
        first_index: int = 0,
        exit_at: Optional[int] = None,
    ) -> Tuple[List[ExitResult], BatchTrace]:
        """Preprocessed (N, C, H, W) float32 -> results in input order, plus the batch's trace.

        A batch larger than the backend takes per run (``max_batch``) runs in chunks; the trace is
        then the last chunk's.
        """
        if not self.backend.is_active:
            self.activate()
        exit_at = self.exit_at if exit_at is None else exit_at
        limit = self.backend.max_batch
        if limit <= 0 or len(batch) <= limit:
            results, trace = run_early_exit(
                self.backend,
                self.policy,
                batch,
                class_names=self.class_names,
                exit_at=exit_at,
                names=names,
                first_index=first_index,
                guard=self.guard,
                abstain=self.abstain,
            )
        else:
            results = []
            for start in range(0, len(batch), limit):
                part, trace = run_early_exit(
                    self.backend,
                    self.policy,
                    batch[start : start + limit],
                    class_names=self.class_names,
                    exit_at=exit_at,
                    names=None if names is None else names[start : start + limit],
                    first_index=first_index + start,
                    guard=self.guard,
                    abstain=self.abstain,
                )
                results.extend(part)
        if self.audit is not None:
            self._audit(batch, results)
        return results, trace

    def _audit(self, batch: np.ndarray, results: List[ExitResult]) -> None:
        """Run the sampled rows that left early to the last exit and compare the classes."""
        picks = self.audit.choose(len(results))
        if not picks.any():
            return
        last = self.backend.num_stages - 1
        chosen = np.flatnonzero(picks)
        rerun = []
        for i in chosen:
            taken = results[int(i)].exit
            if taken is not None and taken < last and results[int(i)].class_index is not None:  # abstained: no class
                rerun.append(int(i))
        finals: Dict[int, int] = {}
        limit = self.backend.max_batch if self.backend.max_batch > 0 else len(rerun)
        for start in range(0, len(rerun), max(limit, 1)):
            rows = rerun[start : start + limit]
            full, _ = run_early_exit(self.backend, self.policy, batch[rows], exit_at=last)
            finals.update({row: int(r.class_index) for row, r in zip(rows, full) if r.class_index is not None})
        for i in chosen:
            result = results[int(i)]
            if result.class_index is None:
                continue
            final = finals.get(int(i), result.class_index)
            result.audit = {"final_class": final, "agrees": final == result.class_index}
            self.audit.record(final == result.class_index, result.index)

    def infer(
        self,
        images: Sequence[Union[np.ndarray, str, Path, None]],
        names: Optional[Sequence[str]] = None,
        first_index: int = 0,
    ) -> List[ExitResult]:
        """Raw images (OpenCV convention; None for an image that could not be read) -> one result each.

        Image file paths (str or Path) are read here (``hisd_edge.data.read_image``) and named by
        their path. An image that cannot be read or preprocessed (unreadable, unsupported channel
        count) gets an error result; the others still run.
        """
        from hisd_edge.data import read_image
        from hisd_edge.runtime.sources import InputItem

        if isinstance(images, (str, Path)):
            images = [images]  # one path, not a sequence of characters
        if names is None:
            names = [str(x) if isinstance(x, (str, Path)) else f"#{first_index + i}" for i, x in enumerate(images)]
        decoded: List[Optional[np.ndarray]] = [read_image(Path(x)) if isinstance(x, (str, Path)) else x for x in images]
        names = list(names)
        items = [
            InputItem(name=names[i], image=image, error=None if image is not None else "cannot be decoded as an image")
            for i, image in enumerate(decoded)
        ]
        return self.infer_items(items, first_index=first_index)[0]

    def infer_items(self, items: Sequence[Any], first_index: int = 0) -> Tuple[List[ExitResult], Optional[BatchTrace]]:
        """:class:`~hisd_edge.runtime.sources.InputItem` s -> one result each, in order (errors included)."""
        results: List[Optional[ExitResult]] = [None] * len(items)
        tensors, positions = [], []
        shape = self.preprocessing.input_shape
        for i, item in enumerate(items):
            if item.error is not None:
                results[i] = ExitResult(index=first_index + i, name=item.name, error=item.error)
                continue
            if item.tensor is not None:
                if tuple(item.tensor.shape) != shape:
                    raise InputError(
                        f"{item.name}: preprocessed sample of shape {tuple(item.tensor.shape)}, the model expects "
                        f"{shape}; pass raw images instead"
                    )
                tensor = np.asarray(item.tensor, dtype=np.float32)[None]
                tensors.append(prepare_tensors(tensor, self.preprocessing, item.name, self.input_scale)[0])
                positions.append(i)
                continue
            try:
                tensors.append(preprocess_image(item.image, self.preprocessing, item.name, self.input_scale))
                positions.append(i)
            except InputScaleError:
                raise  # the whole input is on the wrong scale: one line, not one error per item
            except HisdError as exc:
                results[i] = ExitResult(index=first_index + i, name=item.name, error=" ".join(str(exc).split()))
        trace = None
        if tensors:
            ran, trace = self.infer_tensors(np.stack(tensors), names=[items[i].name for i in positions])
            for pos, result in zip(positions, ran):
                result.index = first_index + pos
                results[pos] = result
        return [r for r in results if r is not None], trace

    def infer_one(self, image: np.ndarray, name: str = "#0") -> ExitResult:
        return self.infer([image], [name])[0]


def open_runtime(path: Union[str, Path], backend: str = "onnxruntime", **kwargs: Any) -> EarlyExitRuntime:
    """Open the bundle at ``path`` (verifying its checksums) with the given backend; not yet activated."""
    return EarlyExitRuntime(Bundle.open(path), backend=backend, **kwargs)
