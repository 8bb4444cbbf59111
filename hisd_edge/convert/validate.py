"""Step 6: does each precision still do the task? Per exit and precision, on held-out data.

Elementwise tolerances mislead for reduced precision (a logit off by 0.1 rarely changes the
answer; one off by 0.01 near a tie does), so this measures what the runtime relies on: top-1
accuracy (when the data has labels) and top-1 agreement with the fp32 chain. Embedding exits get
the mean cosine similarity to fp32 instead.

INT8 stages are evaluated as their Q/DQ graphs define them: the chains run under the runtime's
session rules (:mod:`hisd_edge.runtime.ort_session`), where INT8 executes Q/DQ as written, the
arithmetic TensorRT implements, and not as ONNX Runtime's fused integer kernels, which saturate
on x86 CPUs without VNNI (a property of that CPU path, not of the bundle).

``mixed`` precision picks, stage by stage (earlier stages fixed at their choice, later ones
fp32), the lowest precision that keeps every exit from that stage on within ``max_drop_pp``
points of fp32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from hisd_edge.errors import InputError
from hisd_edge.runtime.ort_session import INT8_GRAPH_OPTIMIZATION, StageChain, next_stage_input

ORDER_LOW_TO_HIGH = ("int8", "fp16", "fp32")
INT8_EXECUTION = f"qdq-as-written (onnxruntime {INT8_GRAPH_OPTIMIZATION} graph optimizations)"


@dataclasses.dataclass
class ValidationData:
    inputs: np.ndarray
    labels: Optional[np.ndarray]
    source: str


class PrecisionChains:
    """One :class:`~hisd_edge.runtime.ort_session.StageChain` per precision, run in any per-stage mix.

    Results of each plan prefix are cached: choosing a mixed plan tries many plans that share
    their first stages, and those stages run once.
    """

    def __init__(
        self,
        stage_files: Mapping[str, Sequence[Any]],
        stage_outputs: Sequence[Sequence[str]],
        threads: int,
        batch_size: int = 256,
    ):
        self.chains = {
            precision: StageChain([str(path) for path in paths], stage_outputs, threads, batch_size, precision)
            for precision, paths in stage_files.items()
        }
        self._cache: Dict[tuple, Dict[str, np.ndarray]] = {}

    def run(self, plan: Sequence[str], x: np.ndarray) -> Dict[str, np.ndarray]:
        """All stage outputs with stage k in precision ``plan[k]`` (prefix results are cached)."""
        results: Dict[str, np.ndarray] = {}
        value = x
        for k, precision in enumerate(plan):
            key = tuple(plan[: k + 1])
            if key not in self._cache:
                self._cache[key] = self.chains[precision].run_stage(k, value)
            results.update(self._cache[key])
            value = next_stage_input(k, self._cache[key], value)
        return results


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    denom[denom == 0] = 1.0
    return float(np.mean(np.sum(a * b, axis=1) / denom))


def _rows_for(
    plan_name: str,
    outputs: Dict[str, np.ndarray],
    reference: Dict[str, np.ndarray],
    kinds: Sequence[str],
    labels: Optional[np.ndarray],
) -> List[Dict[str, Any]]:
    rows = []
    for k, kind in enumerate(kinds):
        out, ref = outputs[f"exit{k}"], reference[f"exit{k}"]
        row: Dict[str, Any] = {"exit": k, "precision": plan_name}
        if kind == "logits":
            pred = out.argmax(axis=1)
            row["top1"] = None if labels is None else round(float(np.mean(pred == labels)), 6)
            row["agreement_with_fp32"] = round(float(np.mean(pred == ref.argmax(axis=1))), 6)
        else:
            row["top1"] = None
            row["agreement_with_fp32"] = None
            row["cosine_with_fp32"] = round(_cosine(out, ref), 6)
        rows.append(row)
    return rows


def validate(
    chains: PrecisionChains,
    data: ValidationData,
    kinds: Sequence[str],
    precisions: Sequence[str],
    max_drop_pp: Optional[float] = None,
) -> Dict[str, Any]:
    """The validation table (manifest ``validation``) and, with ``max_drop_pp``, the mixed plan."""
    num = len(kinds)
    reference = chains.run(["fp32"] * num, data.inputs)
    rows: List[Dict[str, Any]] = []
    for precision in precisions:
        outputs = reference if precision == "fp32" else chains.run([precision] * num, data.inputs)
        rows.extend(_rows_for(precision, outputs, reference, kinds, data.labels))
    result: Dict[str, Any] = {
        "data": data.source,
        "count": len(data.inputs),
        "labelled": data.labels is not None,
        "int8_execution": INT8_EXECUTION,
        "rows": rows,
    }
    if max_drop_pp is not None:
        plan = choose_mixed(chains, data, kinds, [p for p in ORDER_LOW_TO_HIGH if p in precisions], max_drop_pp)
        rows.extend(_rows_for("mixed", chains.run(plan, data.inputs), reference, kinds, data.labels))
        result["mixed_plan"] = plan
    return result


def _accuracies(outputs: Dict[str, np.ndarray], kinds: Sequence[str], labels: np.ndarray) -> List[float]:
    return [100.0 * float(np.mean(outputs[f"exit{k}"].argmax(axis=1) == labels)) for k in range(len(kinds))]


def choose_mixed(
    chains: PrecisionChains, data: ValidationData, kinds: Sequence[str], candidates: Sequence[str], max_drop_pp: float
) -> List[str]:
    """Per stage, the lowest precision keeping exits k.. within ``max_drop_pp`` points of fp32."""
    if data.labels is None:
        raise InputError(
            f"{data.source}: --precision mixed needs labelled validation data (a folder with one sub-folder per class)"
        )
    if any(kind != "logits" for kind in kinds):
        raise InputError("--precision mixed needs logits exits (accuracy); this model has embedding exits")
    num = len(kinds)
    fp32 = _accuracies(chains.run(["fp32"] * num, data.inputs), kinds, data.labels)
    plan: List[str] = []
    for k in range(num):
        chosen = "fp32"
        for precision in candidates:
            if precision == "fp32":
                break
            trial = plan + [precision] + ["fp32"] * (num - k - 1)
            acc = _accuracies(chains.run(trial, data.inputs), kinds, data.labels)
            if all(fp32[j] - acc[j] <= max_drop_pp + 1e-9 for j in range(k, num)):
                chosen = precision
                break
        plan.append(chosen)
    return plan


def format_validation_table(validation: Dict[str, Any]) -> str:
    """The validation table as aligned text: one line per exit, one column pair per precision."""
    rows = validation.get("rows") or []
    if not rows:
        return "validation: none (no held-out data)"
    precisions: List[str] = []
    for row in rows:
        if row["precision"] not in precisions:
            precisions.append(row["precision"])
    exits = sorted({row["exit"] for row in rows})
    by_key = {(row["exit"], row["precision"]): row for row in rows}
    labelled = bool(validation.get("labelled"))
    head = f"validation on {validation.get('data')} ({validation.get('count')} samples)"
    if validation.get("mixed_plan"):
        head += f"; mixed plan per stage: {', '.join(validation['mixed_plan'])}"
    cols = ["exit"]
    for precision in precisions:
        cols += ([f"{precision} top-1"] if labelled else []) + [f"{precision} agree"]
    widths = [max(4, len(c)) for c in cols]
    lines = [head, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    for k in exits:
        cells = [str(k)]
        for precision in precisions:
            row = by_key.get((k, precision), {})
            if labelled:
                cells.append(_pct(row.get("top1")))
            agree = row.get("agreement_with_fp32")
            cells.append(
                _pct(agree)
                if agree is not None
                else (f"cos {row['cosine_with_fp32']:.4f}" if "cosine_with_fp32" in row else "-")
            )
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"
