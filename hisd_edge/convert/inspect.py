"""``hisd-edge inspect``: what is in a bundle, readable at a glance (or as JSON).

Reads only the manifest (and file sizes): no onnx, no torch, so it works on the target too.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from hisd_edge.bundle import PRECISIONS, Bundle


def _macs(value: Any, complete: Any) -> str:
    """A MAC count, marked as a lower bound when some layers could not be counted."""
    return _human(value) if complete or value is None else f">={_human(value)}"


def _human(count: Optional[float], unit: str = "") -> str:
    if count is None:
        return "-"
    value = float(count)
    for suffix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000.0 or suffix == "T":
            text = f"{value:.0f}" if suffix == "" else f"{value:.2f}{suffix}"
            return text + unit
        value /= 1000.0
    return f"{value}{unit}"  # pragma: no cover


def _kib(size_bytes: Optional[int]) -> str:
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 1024:.1f}KiB" if size_bytes < 1024 * 1024 else f"{size_bytes / (1024 * 1024):.2f}MiB"


def _shape(record: Dict[str, Any]) -> str:
    dims = ["b" if d == "batch" else ("?" if d is None else str(d)) for d in record.get("shape") or []]
    return f"{record['name']}[{','.join(dims)}]"


def _guard_summary(guard: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The guard entry without its matrices (they are numbers for the runtime, not for people)."""
    if not guard:
        return None
    return {k: v for k, v in guard.items() if k not in ("center", "projection", "means_whitened", "whitening")}


def summarize_bundle(bundle: Bundle) -> Dict[str, Any]:
    """The facts ``inspect`` shows, as a JSON-able dict."""
    manifest = bundle.manifest
    stages = []
    for stage in manifest.get("stages", []):
        stages.append(
            {
                "index": stage["index"],
                "inputs": stage.get("inputs", []),
                "outputs": stage.get("outputs", []),
                "params": stage.get("params"),
                "macs": stage.get("macs"),
                "macs_complete": bool(stage.get("macs_complete", True)),
                "file_bytes": {p: rec.get("bytes") for p, rec in stage.get("files", {}).items()},
                "calibration_cache": bool(stage.get("files", {}).get("int8", {}).get("calibration_cache")),
            }
        )
    total_macs = [s.get("macs") or 0 for s in manifest.get("stages", [])]
    cumulative = [sum(total_macs[: k + 1]) for k in range(len(total_macs))]
    complete = [bool(s.get("macs_complete", True)) for s in manifest.get("stages", [])]
    return {
        "name": bundle.name,
        "path": str(bundle.root),
        "schema_version": manifest.get("schema_version"),
        "model": manifest.get("model"),
        "class_names": manifest.get("class_names"),
        "preprocessing": manifest.get("preprocessing"),
        "precisions": bundle.precisions(),
        "stages": stages,
        "exits": manifest.get("exits"),
        "macs_to_reach_exit": cumulative,
        "macs_to_reach_exit_complete": [all(complete[: k + 1]) for k in range(len(complete))],
        "policy": manifest.get("policy"),
        "guard": _guard_summary(manifest.get("guard")),
        "validation": manifest.get("validation"),
        "mixed_precision": manifest.get("mixed_precision"),
        "calibration": manifest.get("calibration"),
        "engines": manifest.get("engines", []),
        "provenance": manifest.get("provenance"),
    }


def _trust_lines(manifest_policy: Dict[str, Any], guard: Optional[Dict[str, Any]]) -> List[str]:
    """What the thresholds promise (certificate) and whether an input guard is calibrated."""
    from hisd_edge.runtime.risk import certificate_of, certificate_text

    lines = ["  " + certificate_text(certificate_of(manifest_policy))]
    if guard:
        lines.append(
            f"input guard: Mahalanobis on {guard.get('features')}, "
            f"{100 * float(guard.get('false_alarm_rate', 0)):g}% false alarms, calibrated on {guard.get('calibration_count')} "
            f"samples of {guard.get('data')} by {guard.get('calibrated_by')}"
        )
    else:
        lines.append("input guard: none (hisd-edge thresholds calibrates one)")
    return lines


def format_bundle(bundle: Bundle) -> str:
    """A readable multi-line summary of the bundle."""
    from hisd_edge.convert.validate import format_validation_table

    info = summarize_bundle(bundle)
    model = info.get("model") or {}
    arch = (model.get("arch") or {}).get("name") if isinstance(model.get("arch"), dict) else None
    pre = info.get("preprocessing") or {}
    lines: List[str] = [
        f"bundle {info['name']}  ({info['path']}, schema {info['schema_version']})",
        f"model: {arch or model.get('source', '?')}, {len(info.get('exits') or [])} exits, "
        f"{len(info.get('class_names') or [])} classes, precisions {', '.join(info['precisions']) or '-'}",
        f"preprocessing: {pre.get('input_size')} {pre.get('color_order')} ({pre.get('channels')} ch), "
        f"mean {pre.get('mean')} std {pre.get('std')}, resize {pre.get('resize')}",
        "",
    ]
    precisions = [p for p in PRECISIONS if any(p in s["file_bytes"] for s in info["stages"])]
    header = ["stage", "input", "outputs", "params", "MACs", *precisions]
    rows = [header]
    for stage in info["stages"]:
        rows.append(
            [
                str(stage["index"]),
                ", ".join(_shape(r) for r in stage["inputs"]),
                ", ".join(_shape(r) for r in stage["outputs"]),
                _human(stage.get("params")),
                _macs(stage.get("macs"), stage.get("macs_complete", True)),
            ]
            + [_kib(stage["file_bytes"].get(p)) for p in precisions]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
    lines.append("")
    lines.append("exit  stage  output  confidence  kind     MACs to reach")
    for _k, exit_record in enumerate(info.get("exits") or []):
        reach = (
            info["macs_to_reach_exit"][exit_record["stage"]]
            if exit_record["stage"] < len(info["macs_to_reach_exit"])
            else None
        )
        reach_complete = (info.get("macs_to_reach_exit_complete") or [True] * (exit_record["stage"] + 1))[
            min(exit_record["stage"], len(info.get("macs_to_reach_exit_complete") or [True]) - 1)
        ]
        lines.append(
            f"{exit_record['index']:>4}  {exit_record['stage']:>5}  {exit_record['output']:6s}  "
            f"{exit_record.get('confidence_output') or '-'!s:10s}  {exit_record.get('kind', 'logits'):7s}  "
            f"{_macs(reach, reach_complete)}"
        )
    if not all(s.get("macs_complete", True) for s in info["stages"]):
        lines.append("MACs marked >= are lower bounds: shape inference left some layer shapes unknown")
    policy = info.get("policy") or {}
    thresholds = ", ".join("-" if t is None else f"{t:.6g}" for t in policy.get("thresholds") or [])
    lines.append("")
    lines.append(
        f"policy: {policy.get('kind')} thresholds [{thresholds}] ({'calibrated' if policy.get('calibrated') else 'default, not calibrated'})"
    )
    lines.extend(_trust_lines(manifest_policy=policy, guard=bundle.manifest.get("guard")))
    if info.get("mixed_precision"):
        mixed = info["mixed_precision"]
        lines.append(f"mixed precision: {', '.join(mixed['stages'])} (max drop {mixed.get('max_drop_pp')} points)")
    calibration = info.get("calibration")
    if calibration:
        lines.append(
            f"calibration: {calibration.get('count')} images from {calibration.get('source')} ({calibration.get('method')}), "
            f"{calibration.get('skipped', 0)} skipped; TensorRT caches for {calibration.get('trt_cache_version')}"
        )
    lines.append("")
    lines.append(format_validation_table(info.get("validation") or {}))
    engines = info.get("engines") or []
    lines.append("")
    lines.append(
        f"engines: {len(engines)} built"
        + (" (" + ", ".join(str(e.get("device", e.get("key", "?"))) for e in engines[:4]) + ")" if engines else "")
    )
    provenance = info.get("provenance") or {}
    lines.append(
        f"created {provenance.get('created')} by hisd-edge {provenance.get('toolkit_version')} "
        f"(onnx {provenance.get('onnx_version')}, onnxruntime {provenance.get('onnxruntime_version')}, "
        f"torch {provenance.get('torch_version')}, opset {provenance.get('opset')})"
    )
    if provenance.get("checkpoint_sha256"):
        lines.append(f"source sha256 {provenance['checkpoint_sha256']}")
    lines.append(f"command: {provenance.get('command')}")
    return "\n".join(lines)
