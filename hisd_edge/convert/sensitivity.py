"""Which layers cost INT8 accuracy, and keeping the worst of them out of INT8.

For every quantizable layer of every stage, the stage is quantized with that layer alone (the
same Q/DQ placement, calibrated ranges and rounded weights as the real INT8 file) and run on real
inputs the stage saw during calibration; the report says how far its outputs move from fp32 and
how many exit decisions (top-1) flip. ``--keep-fp16 N`` leaves the N worst layers without Q/DQ,
so TensorRT runs them in fp16 (fp32 under strong typing) while the rest stays INT8.

``--keep-fp16 auto`` (the default) decides N from a measurement, the way TensorRT users settle
mixed precision by hand (and Model Optimizer's AutoQuantize by search): the whole INT8 chain runs
on the calibration inputs kept for this (:data:`~hisd_edge.convert.calib_stats.SAMPLE_ROWS`) next
to the fp32 chain; when every classifier exit's top-1 agrees with fp32 on at least
:data:`AUTO_TARGET_AGREEMENT` of them, nothing is kept float (the common case: the default models
pass at once and pay one chain run). Otherwise the layers are ranked as above and tried one at a
time, worst first: a layer stays float only if that lowers the exits' logit error on the same
inputs by :data:`AUTO_MIN_GAIN` (top-1 agreement on a few dozen inputs moves in steps too coarse to
judge one layer), until the target holds or :data:`AUTO_MAX_SHARE` of the quantized layers are
float. What it measured and chose is recorded in the manifest (``calibration.keep_fp16``) and
printed.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

AUTO_TARGET_AGREEMENT = 0.98  # per classifier exit, INT8 top-1 == fp32 top-1 on the sample inputs
AUTO_MAX_SHARE = 0.10  # of the quantized layers, at most this share is kept float by "auto"
AUTO_MIN_GAIN = 0.02  # a layer is kept float by "auto" only if that lowers the logit error by 2 %
SENSITIVITY_ROWS = 32  # inputs per stage for the per-layer measurement
RUN_BATCH = 16  # rows per ONNX Runtime run here: a 224x224 network's arenas stay small


def rank_layers(
    stages: Sequence[Any],
    calibrations: Sequence[Any],
    keep: int,
    measure: bool,
    threads: int = 2,
    batch: Optional[int] = None,
) -> Tuple[List[Dict[str, Any]], Dict[int, List[str]]]:
    """(sensitivity rows over all stages, worst first; per stage, the layers to keep float).
    ``batch``: the model's fixed batch size, if it has one."""
    if keep <= 0 and not measure:
        return [], {}
    from hisd_edge.convert.qdq import layer_sensitivity
    from hisd_edge.convert.quantize import confidence_nodes
    from hisd_edge.runtime.ort_session import open_session

    rows: List[Dict[str, Any]] = []
    for stage, calibration in zip(stages, calibrations):
        found = layer_sensitivity(
            stage.model,
            calibration.amax(),
            _rows(calibration.inputs, SENSITIVITY_ROWS, batch),
            stage.outputs,
            lambda m: open_session(m, threads, "int8"),  # basic level: Q/DQ as the float math it defines
            batch=batch or RUN_BATCH,
            exclude=confidence_nodes(stage.model),
            input_means=calibration.input_means(),
            rounded_weights=calibration.rounded_weights(stage.model),
        )
        rows.extend({"stage": stage.index, **row} for row in found)
    rows.sort(key=lambda r: (-r["top1_flips"], -r["rel_error"]))
    kept: Dict[int, List[str]] = {}
    for row in rows[: max(keep, 0)]:
        kept.setdefault(int(row["stage"]), []).append(str(row["layer"]))
    for row in rows:
        row["kept_float"] = row["layer"] in kept.get(int(row["stage"]), [])
    return rows, kept


def format_sensitivity(rows: Sequence[Dict[str, Any]], limit: int = 10) -> str:
    """The worst ``limit`` layers as a small table."""
    lines = ["INT8 sensitivity (each layer quantized alone, on real stage inputs; worst first):"]
    lines.append("  stage  layer                                     top-1 flips  rel. error  kept float")
    for row in list(rows)[:limit]:
        lines.append(
            f"  {row['stage']:>5}  {str(row['layer'])[:40]:40s}  {100 * row['top1_flips']:10.1f}%  "
            f"{row['rel_error']:10.4f}  {'yes' if row.get('kept_float') else ''}"
        )
    return "\n".join(lines)


def _rows(inputs: Any, count: int, batch: Optional[int]) -> np.ndarray:
    """The first ``count`` rows of ``inputs``, a whole number of ``batch``-row runs when the model's
    batch is fixed (at least one run)."""
    rows = np.asarray(inputs[: max(count, batch or 0)])
    return rows[: len(rows) - len(rows) % batch] if batch else rows


def choose_float_layers(
    stages: Sequence[Any],
    calibrations: Sequence[Any],
    keep: Union[int, str],
    measure: bool,
    kinds: Sequence[str],
    threads: int = 2,
    batch: Optional[int] = None,
) -> Tuple[List[Dict[str, Any]], Dict[int, List[str]], Dict[str, Any]]:
    """What ``--keep-fp16`` (``keep``: a count or ``"auto"``) and ``--sensitivity`` (``measure``)
    ask for: (sensitivity rows, worst first; per stage, the layers kept out of INT8; the record of
    how they were chosen, for the manifest)."""
    if keep == "auto":
        rows, kept, record = auto_keep(stages, calibrations, kinds, threads, batch or 0)
        if measure and not rows:
            rows, _ = rank_layers(stages, calibrations, 0, True, threads, batch)
        return rows, kept, record
    rows, kept = rank_layers(stages, calibrations, int(keep), measure, threads, batch)
    return rows, kept, {"mode": "fixed", "kept_layers": sum(len(v) for v in kept.values())}


def auto_keep(
    stages: Sequence[Any], calibrations: Sequence[Any], kinds: Sequence[str], threads: int = 2, batch: int = 0
) -> Tuple[List[Dict[str, Any]], Dict[int, List[str]], Dict[str, Any]]:
    """``--keep-fp16 auto``: (sensitivity rows, or none when not needed; per stage, the layers kept
    float; the record of what was measured, for the manifest). See the module docstring."""
    inputs = _rows(calibrations[0].inputs, len(calibrations[0].inputs), batch) if calibrations else np.zeros((0,))
    exits = [k for k, kind in enumerate(kinds) if kind == "logits"]
    record: Dict[str, Any] = {
        "mode": "auto",
        "target_agreement": AUTO_TARGET_AGREEMENT,
        "samples": len(inputs),
        "exits": exits,
    }
    if len(inputs) == 0 or not exits:
        record.update(kept_layers=0, reason="no classifier exit to measure" if not exits else "no sample inputs")
        return [], {}, record
    chains = _ChainAgreement(stages, calibrations, inputs, exits, threads, batch or RUN_BATCH)
    kept: Dict[int, List[str]] = {}
    start, error = chains.measure(kept, range(len(stages)))
    record.update(all_int8_agreement=start, all_int8_logit_error=error)
    if min(start) >= AUTO_TARGET_AGREEMENT:
        record.update(kept_layers=0, agreement=start, logit_error=error, met=True)
        return [], {}, record
    rows, _ = rank_layers(stages, calibrations, 0, True, threads, batch or None)
    limit = max(1, math.ceil(AUTO_MAX_SHARE * len(rows)))
    current, tried = start, 0
    # Worst first; a layer stays float only if that measurably lowers the exits' logit error on
    # the sample (top-1 agreement on a few dozen inputs moves in steps too coarse to judge one layer).
    for row in rows[: 2 * limit]:
        if min(current) >= AUTO_TARGET_AGREEMENT or sum(len(v) for v in kept.values()) >= limit:
            break
        stage = int(row["stage"])
        tried += 1
        kept.setdefault(stage, []).append(str(row["layer"]))
        agreement, trial_error = chains.measure(kept, [stage])
        if trial_error < (1.0 - AUTO_MIN_GAIN) * error:
            current, error = agreement, trial_error
        else:
            kept[stage].remove(str(row["layer"]))
            chains.undo()
    kept = {k: v for k, v in kept.items() if v}
    for row in rows:
        row["kept_float"] = row["layer"] in kept.get(int(row["stage"]), [])
    record.update(
        kept_layers=sum(len(v) for v in kept.values()),
        max_layers=limit,
        tried_layers=tried,
        quantized_layers=len(rows),
        agreement=current,
        logit_error=error,
        met=min(current) >= AUTO_TARGET_AGREEMENT,
    )
    return rows, kept, record


class _ChainAgreement:
    """The fp32 chain's exit decisions on fixed inputs, and the INT8 chain's agreement with them
    for a given set of float layers (stages re-quantized only where that set changed)."""

    def __init__(
        self,
        stages: Sequence[Any],
        calibrations: Sequence[Any],
        inputs: np.ndarray,
        exits: Sequence[int],
        threads: int,
        batch: int,
    ):
        from hisd_edge.runtime.ort_session import StageChain

        self.stages, self.calibrations, self.inputs, self.exits = stages, calibrations, inputs, list(exits)
        self.threads, self.batch = threads, batch
        fp32 = StageChain([s.model.SerializeToString() for s in stages], threads=threads, batch_size=batch)
        outputs = fp32.run(inputs)
        self.reference = {k: outputs[f"exit{k}"].astype(np.float64) for k in self.exits}
        self.int8: List[Optional[bytes]] = [None] * len(stages)
        self._previous: Dict[int, Optional[bytes]] = {}

    def quantize(self, kept: Dict[int, List[str]], changed: Sequence[int]) -> None:
        """Set the INT8 graphs of the ``changed`` stages for the layers ``kept`` float (the graphs
        they replace are kept for :meth:`undo`)."""
        from hisd_edge.convert.qdq import apply_qdq, plan_qdq
        from hisd_edge.convert.quantize import confidence_nodes

        self._previous = {k: self.int8[k] for k in changed}
        for k in changed:
            stage, calibration = self.stages[k], self.calibrations[k]
            plan = plan_qdq(stage.model, confidence_nodes(stage.model) + kept.get(k, []))
            model, _ = apply_qdq(
                stage.model,
                plan,
                calibration.amax(),
                calibration.input_means(),
                calibration.rounded_weights(stage.model),
            )
            self.int8[k] = model.SerializeToString()

    def undo(self) -> None:
        """Back to the graphs before the last :meth:`quantize` (no re-quantization, no run)."""
        for k, graph in self._previous.items():
            self.int8[k] = graph
        self._previous = {}

    def measure(self, kept: Dict[int, List[str]], changed: Sequence[int]) -> Tuple[List[float], float]:
        """(per exit, INT8 top-1 agreement with fp32; the mean over exits of the INT8 logits'
        relative L2 error) with the layers ``kept`` float; ``changed``: stages to re-quantize."""
        from hisd_edge.runtime.ort_session import StageChain

        self.quantize(kept, changed)
        chain = StageChain(
            [m for m in self.int8 if m is not None], threads=self.threads, batch_size=self.batch, precision="int8"
        )
        outputs = chain.run(self.inputs)
        agreement, errors = [], []
        for k in self.exits:
            got, ref = outputs[f"exit{k}"].astype(np.float64), self.reference[k]
            agreement.append(round(float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1))), 4))
            errors.append(float(np.linalg.norm(got - ref) / max(float(np.linalg.norm(ref)), 1e-12)))
        return agreement, round(float(np.mean(errors)), 5)
