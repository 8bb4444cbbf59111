"""``hisd-edge check``: will TensorRT take these stage files? A screen run on the workstation.

For every stage file of a bundle and every targeted TensorRT family it reports, one line each:

* operators TensorRT's ONNX parser does not import, custom domains, an opset outside its range;
* Q/DQ that TensorRT rejects: a non-zero zero point, a uint8 (or omitted, hence uint8) zero point,
  a DequantizeLinear of an INT32 constant (quantized bias), INT8 weight constants (TensorRT 8.x);
* tensors without a shape after shape inference (TensorRT needs every rank);
* INT64 weights (TensorRT 8.x casts INT64 to INT32, clamping out-of-range values);
* dynamic input dims other than the batch (an optimization profile gives only the batch a range);
* (warning) Q/DQ between a Conv/Gemm/MatMul and its ReLU/Clip, which keeps TensorRT from fusing them.

Errors make the command exit non-zero; warnings do not. Reading ONNX needs the ``onnx`` package
(no torch): this runs on the workstation or on a target that has it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from hisd_edge.convert.trt_ops import FAMILIES, Family, family
from hisd_edge.errors import DependencyError, InputError, first_line

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_SHAPE_LIKE_MAX_ELEMENTS = 16  # small INT64 constants are shapes/axes/indices, which TensorRT handles


@dataclasses.dataclass
class Finding:
    severity: str  # "error" | "warning"
    target: str  # TensorRT family ("8.5", ...) or "all"
    stage: Optional[int]
    precision: Optional[str]
    file: str
    code: str  # short machine-readable kind
    message: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CheckReport:
    bundle: str
    targets: List[str]
    files_checked: int
    findings: List[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def ok_for(self, target: str) -> bool:
        return not any(f.severity == "error" and f.target in (target, "all") for f in self.findings)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "bundle": self.bundle,
            "targets": self.targets,
            "files_checked": self.files_checked,
            "ok": self.ok,
            "ok_per_target": {t: self.ok_for(t) for t in self.targets},
            "findings": [f.to_dict() for f in self.findings],
        }


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise DependencyError("hisd-edge check reads ONNX files: pip install onnx") from None
    return onnx


def _opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _array(init: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def check_model(
    model: Any,
    targets: Sequence[Family],
    *,
    stage: Optional[int] = None,
    precision: Optional[str] = None,
    file: str = "",
) -> List[Finding]:
    """All findings for one ONNX model against the targeted families."""
    onnx = _onnx()
    findings: List[Finding] = []

    def add(severity: str, target: str, code: str, message: str) -> None:
        findings.append(Finding(severity, target, stage, precision, file, code, message))

    graph = model.graph
    opset = _opset(model)
    op_counts: Dict[str, int] = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            add(
                "error",
                "all",
                "custom_domain",
                f"node {node.name or node.op_type} uses custom domain {node.domain!r} (needs a TensorRT plugin)",
            )
            continue
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    for fam in targets:
        low, high = fam.opsets
        if not low <= opset <= high:
            add(
                "error",
                fam.name,
                "opset",
                f"opset {opset} is outside {fam.label}'s supported range {low}-{high}; "
                f"convert again with --opset {min(max(opset, low), high)}",
            )
        missing = sorted(op for op in op_counts if op not in fam.ops)
        if missing:
            hint = (
                " (re-convert with --opset 16 so LayerNorm is exported as primitive ops)"
                if "LayerNormalization" in missing
                else ""
            )
            add(
                "error",
                fam.name,
                "unsupported_op",
                f"{fam.label} does not import " + ", ".join(f"{op} (x{op_counts[op]})" for op in missing) + hint,
            )

    # Q/DQ that TensorRT accepts: INT8 with zero point 0, explicitly given.
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            data_type = inits[node.input[0]].data_type
            if data_type == onnx.TensorProto.INT32:
                add(
                    "error",
                    "all",
                    "int32_dequantize",
                    f"{node.name}: DequantizeLinear of an INT32 constant (a quantized bias); "
                    "TensorRT dequantizes only INT8: keep biases float (QuantizeBias=False)",
                )
            else:
                for fam in targets:
                    if not fam.native_int64:  # 8.x: a DequantizeLinear input must be an activation (float Q output)
                        add(
                            "error",
                            fam.name,
                            "int8_weight_constant",
                            f"{node.name}: weights stored as INT8 constants; "
                            f"{fam.label} needs float weights behind a Q/DQ pair (AddQDQPairToWeight=True)",
                        )
        if len(node.input) < 3 or not node.input[2]:
            if node.op_type == "QuantizeLinear":
                add(
                    "error",
                    "all",
                    "uint8_qdq",
                    f"{node.name or node.op_type} has no zero point, so it quantizes to uint8; "
                    "TensorRT needs int8 with zero point 0",
                )
            continue
        zero = _constant_value(node.input[2], inits, constants)
        if zero is None:
            add("error", "all", "dynamic_zero_point", f"{node.name}: zero point {node.input[2]} is not a constant")
            continue
        if zero.dtype == np.uint8:
            add(
                "error",
                "all",
                "uint8_qdq",
                f"{node.name}: uint8 quantization; TensorRT needs int8 (symmetric, zero point 0)",
            )
        if np.any(zero != 0):
            add(
                "error",
                "all",
                "nonzero_zero_point",
                f"{node.name}: zero point {node.input[2]} is not 0 "
                "(TensorRT supports only symmetric quantization; quantize with ActivationSymmetric=True)",
            )

    # Q/DQ placement: a pair between a weighted op and its activation stops TensorRT fusing them.
    producers = {o: n for n in graph.node for o in n.output if o}
    readers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in producers:
            continue
        source = producers[node.input[0]]
        if source.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        dequantized = [d for d in readers.get(node.output[0], []) if d.op_type == "DequantizeLinear"]
        activations = [a for d in dequantized for a in readers.get(d.output[0], []) if a.op_type in ("Relu", "Clip")]
        if activations:
            add(
                "warning",
                "all",
                "qdq_breaks_fusion",
                f"{node.name or node.op_type}: Q/DQ between {source.op_type} {source.name} and its "
                f"{activations[0].op_type}; TensorRT cannot fuse them and the range is the pre-activation one "
                "(quantize the inputs of weighted ops instead, as hisd-edge convert does)",
            )

    # Shapes: every tensor needs at least a known rank.
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        add("error", "all", "shape_inference", f"shape inference fails ({first_line(exc)})")
        inferred = model
    known = {
        v.name
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        if v.type.tensor_type.HasField("shape")
    } | set(inits)
    unshaped = [o for n in inferred.graph.node for o in n.output if o and o not in known and n.op_type != "Constant"]
    if unshaped:
        shown = ", ".join(unshaped[:5]) + (f" and {len(unshaped) - 5} more" if len(unshaped) > 5 else "")
        add("error", "all", "missing_shape", f"{len(unshaped)} tensor(s) without an inferable shape: {shown}")
    for role, infos in (("input", graph.input), ("output", graph.output)):
        for info in infos:
            if info.name not in inits and not info.type.tensor_type.HasField("shape"):
                add("error", "all", "missing_shape", f"graph {role} {info.name} has no shape")

    # Dynamic dims: only the leading batch dim gets a range from the build's optimization profile.
    for info in graph.input:
        if info.name in inits or not info.type.tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if axis > 0 and not dim.HasField("dim_value"):
                label = dim.dim_param or "unknown"
                add(
                    "error",
                    "all",
                    "dynamic_dim",
                    f"input {info.name} dim {axis} is dynamic ({label}); only the batch dim "
                    "gets a range at build time; export with a fixed size",
                )

    # INT64 weights.
    for fam in targets:
        if fam.native_int64:
            continue
        for init in graph.initializer:
            if init.data_type != onnx.TensorProto.INT64:
                continue
            values = _array(init)
            if values.size > _SHAPE_LIKE_MAX_ELEMENTS:
                add(
                    "error",
                    fam.name,
                    "int64_weights",
                    f"INT64 initializer {init.name} ({values.size} values): {fam.label} "
                    "casts INT64 to INT32; store it as INT32 or float",
                )
            elif (
                values.size
                and (values.min() < INT32_MIN or values.max() > INT32_MAX)
                and not _only_slice_bounds(graph, init.name)
            ):
                add(
                    "warning",
                    fam.name,
                    "int64_range",
                    f"INT64 constant {init.name} has values outside INT32; {fam.label} clamps them",
                )
    return findings


def _constant_value(name: str, inits: Dict[str, Any], constants: Dict[str, Any]) -> Optional[np.ndarray]:
    if name in inits:
        return _array(inits[name])
    node = constants.get(name)
    if node is not None:
        from onnx import numpy_helper

        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
    return None


def _only_slice_bounds(graph: Any, name: str) -> bool:
    """INT64_MAX as a Slice end means "to the end"; TensorRT clamps that as intended."""
    uses = [(n.op_type, list(n.input).index(name)) for n in graph.node if name in n.input]
    return bool(uses) and all(op == "Slice" and idx in (1, 2) for op, idx in uses)


def check_bundle(
    path: Any, targets: Optional[Iterable[str]] = None, precisions: Optional[Iterable[str]] = None
) -> CheckReport:
    """Check every stage file of the bundle at ``path`` (checksums verified first)."""
    from hisd_edge.bundle import Bundle

    onnx = _onnx()
    bundle = Bundle.open(path, verify=True)
    families = [family(t) for t in (targets or FAMILIES)]
    wanted = list(precisions) if precisions else bundle.precisions()
    absent = [p for p in wanted if p not in bundle.precisions()]
    if absent:
        raise InputError(
            f"{bundle.root}: no {', '.join(absent)} stage files to check (the bundle has "
            f"{', '.join(bundle.precisions())}); pick from those with --precision"
        )
    findings: List[Finding] = []
    checked = 0
    for stage in bundle.stages:
        for precision, record in stage["files"].items():
            if precision not in wanted:
                continue
            file_path = bundle.stage_path(int(stage["index"]), precision)  # confined, size + sha256
            model = onnx.load(str(file_path))
            findings.extend(
                check_model(model, families, stage=int(stage["index"]), precision=precision, file=record["path"])
            )
            checked += 1
            if precision == "int8" and "calibration_cache" not in record:
                findings.append(
                    Finding(
                        "warning",
                        "all",
                        int(stage["index"]),
                        precision,
                        record["path"],
                        "no_calibration_cache",
                        "no TensorRT calibration cache: implicit INT8 (TensorRT < 11, DLA) cannot use this stage",
                    )
                )
    return CheckReport(
        bundle=str(bundle.root), targets=[f.name for f in families], files_checked=checked, findings=findings
    )


def format_check(report: CheckReport) -> str:
    """Readable report: a verdict per target, then one line per finding."""
    from hisd_edge.convert.trt_ops import FAMILIES as fams

    lines = [f"TensorRT readiness of {report.bundle} ({report.files_checked} stage files)"]
    for target in report.targets:
        errors = sum(1 for f in report.findings if f.severity == "error" and f.target in (target, "all"))
        lines.append(f"  {fams[target].label:34s} {'ready' if errors == 0 else f'{errors} problem(s)'}")
    for f in report.findings:
        where = f.file + (f" [{f.target}]" if f.target != "all" else "")
        lines.append(f"{f.severity}: {where}: {f.message}")
    if report.ok:
        lines.append("no problems found")
    return "\n".join(lines)
