"""Which layers cost INT8 accuracy, and keeping the worst of them out of INT8.

For every quantizable layer of every stage, the stage is quantized with that layer alone (the
same Q/DQ placement and calibrated ranges as the real INT8 file) and run on real inputs the stage
saw during calibration; the report says how far its outputs move from fp32 and how many exit
decisions (top-1) flip. ``--keep-fp16 N`` leaves the N worst layers without Q/DQ, so TensorRT
runs them in fp16 (fp32 under strong typing) while the rest stays INT8.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple


def rank_layers(
    stages: Sequence[Any], calibrations: Sequence[Any], keep: int, measure: bool, threads: int = 2
) -> Tuple[List[Dict[str, Any]], Dict[int, List[str]]]:
    """(sensitivity rows over all stages, worst first; per stage, the layers to keep float)."""
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
            calibration.inputs,
            stage.outputs,
            lambda m: open_session(m, threads, "int8"),  # basic level: Q/DQ as the float math it defines
            exclude=confidence_nodes(stage.model),
            input_means=calibration.input_means(),
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
