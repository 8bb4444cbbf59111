"""Batch-1 early exit as one ONNX graph: the exit decisions made in the graph by ``If`` nodes.

The chain runs one session per stage and decides in Python between them; at batch 1 that
costs several microseconds of Python per stage, and on a GPU a host synchronisation per stage.
This step builds, from the bundle's stage graphs of one precision, a single graph::

    stage 0 -> score_0 -> If(score_0 >= t_0) then (exit0 logits, 0, score_0)
                                             else  stage 1 -> score_1 -> If(...) ... else last stage

The contract (input and output names, the policy codes) is :mod:`hisd_edge.runtime.ingraph`.
Each stage's nodes and weights are copied unchanged into the branch where they run (names
prefixed ``s{k}/``), so the graph computes the stage graphs' own arithmetic. Everything is float32
and int32, so TensorRT can take the graph as it is (no float64 or int64 graph inputs or outputs).
max_prob reads the fused ``conf{k}``, as the runtime does, and the runtime feeds each threshold
rounded up to float32 (:func:`hisd_edge.runtime.ingraph.thresholds_f32`), which makes the
float32 comparison decide exactly like the chain's float64 one. Entropy and margin are computed
in float32 here and in float64 on the host, so their scores cannot match bit for bit (with a
float64 graph they were still 1-2 ulp apart on half the samples: numpy's and ONNX Runtime's exp
and sums differ); verification records that and the runtime runs them on the chain.

:func:`verify_ingraph` then runs the graph and the stage sessions (real ONNX Runtime sessions,
batch 1, as the runtime runs them) on validation samples: for every policy and every exit, the
graph's logits must equal the chain's bit for bit and its score must equal the host score bit
for bit (thresholds forcing each exit in turn, at each exit's median score, and exactly at the
sample's own scores), and the exit taken must be the chain's. Bit-identical scores at every exit mean identical decisions
for *any* thresholds. Policies that pass are recorded; the runtime uses the graph only for them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.runtime import ingraph as contract

LOG = logging.getLogger("hisd_edge.convert")

VERIFY_SAMPLES = 500  # at most this many validation samples through both paths (each: (K + 2) x 3 graph runs)
VERIFY_MACS = 20_000_000_000  # ... and about this many multiply-accumulates of graph runs in all (min 16 samples)


class _Names:
    """Unique node names within the whole graph (branches included)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"


def _stage_part(model: Any, k: int, outer_input: str) -> Tuple[List[Any], List[Any], Dict[str, str]]:
    """Stage ``k``'s nodes and initializers with every name prefixed ``s{k}/`` (its input renamed to
    ``outer_input``), and the map from its output names to the new ones."""
    import onnx

    graph = model.graph
    stage_input = graph.input[0].name
    prefix = f"s{k}/"

    def rename(name: str) -> str:
        if not name:
            return name  # an omitted optional input
        return outer_input if name == stage_input else prefix + name

    nodes = []
    for node in graph.node:
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            raise ValueError(f"stage {k} has a control-flow node ({node.op_type}); not folded into one graph")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + (node.name or node.op_type)
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        nodes.append(copy)
    inits = []
    for init in graph.initializer:
        copy_init = onnx.TensorProto()
        copy_init.CopyFrom(init)
        copy_init.name = prefix + init.name
        inits.append(copy_init)
    return nodes, inits, {o.name: prefix + o.name for o in graph.output}


def _axes_node(op: str, data: str, out: str, opset: int, keepdims: int, name: Any, inits: List[Any]) -> Any:
    """A Reduce* node over axis 1 (axes as an input from opset 18, 13 for ReduceSum)."""
    from onnx import helper, numpy_helper

    axes_as_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    if axes_as_input:
        axes = name("axes1")
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
        return helper.make_node(op, [data, axes], [out], name=name(op), keepdims=keepdims)
    return helper.make_node(op, [data], [out], name=name(op), axes=[1], keepdims=keepdims)


def _score_nodes(
    kind: str, k: int, logits: str, conf: Optional[str], classes: int, opset: int, name: Any
) -> Tuple[List[Any], List[Any], str]:
    """Nodes computing exit k's policy score (float32, shape (1,)) as the runtime does on the host."""
    from onnx import helper, numpy_helper

    nodes: List[Any] = []
    inits: List[Any] = []
    p = f"score{k}/{kind}/"
    if kind == "max_prob" and conf is not None:  # the fused conf{k}, as the runtime reads it
        nodes.append(helper.make_node("Identity", [conf], [p + "score"], name=name("Identity")))
        return nodes, inits, p + "score"
    if kind == "max_prob":  # runtime.backend.softmax_max: float32 1 / sum(exp(z - max z))
        nodes.append(_axes_node("ReduceMax", logits, p + "max", opset, 1, name, inits))
        nodes.append(helper.make_node("Sub", [logits, p + "max"], [p + "z"], name=name("Sub")))
        nodes.append(helper.make_node("Exp", [p + "z"], [p + "e"], name=name("Exp")))
        nodes.append(_axes_node("ReduceSum", p + "e", p + "sum", opset, 0, name, inits))
        nodes.append(helper.make_node("Reciprocal", [p + "sum"], [p + "score"], name=name("Reciprocal")))
        return nodes, inits, p + "score"
    # policies.softmax (z - max, exp, divided by the sum), in float32: what TensorRT can run
    nodes.append(_axes_node("ReduceMax", logits, p + "max", opset, 1, name, inits))
    nodes.append(helper.make_node("Sub", [logits, p + "max"], [p + "z"], name=name("Sub")))
    nodes.append(helper.make_node("Exp", [p + "z"], [p + "e"], name=name("Exp")))
    nodes.append(_axes_node("ReduceSum", p + "e", p + "sum", opset, 1, name, inits))
    nodes.append(helper.make_node("Div", [p + "e", p + "sum"], [p + "p"], name=name("Div")))
    if kind == "entropy":  # -(h / log C) with h = -sum(p log p, p > 0): the same value as sum(p log p) / log C
        zero, log_c = name("zero"), name("log_classes")
        inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), zero))
        inits.append(numpy_helper.from_array(np.array(math.log(max(classes, 2)), dtype=np.float32), log_c))
        nodes.append(helper.make_node("Log", [p + "p"], [p + "logp"], name=name("Log")))
        nodes.append(helper.make_node("Mul", [p + "p", p + "logp"], [p + "plogp"], name=name("Mul")))
        nodes.append(helper.make_node("Greater", [p + "p", zero], [p + "pos"], name=name("Greater")))
        nodes.append(helper.make_node("Where", [p + "pos", p + "plogp", zero], [p + "terms"], name=name("Where")))
        nodes.append(_axes_node("ReduceSum", p + "terms", p + "negh", opset, 0, name, inits))
        nodes.append(helper.make_node("Div", [p + "negh", log_c], [p + "score"], name=name("Div")))
        return nodes, inits, p + "score"
    if kind == "margin":  # top-1 minus top-2 probability
        two, first, second = name("two"), name("i0"), name("i1")
        inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), two))
        inits.append(numpy_helper.from_array(np.array(0, dtype=np.int64), first))
        inits.append(numpy_helper.from_array(np.array(1, dtype=np.int64), second))
        nodes.append(helper.make_node("TopK", [p + "p", two], [p + "top", p + "topi"], name=name("TopK"), axis=1))
        nodes.append(helper.make_node("Gather", [p + "top", first], [p + "p1"], name=name("Gather"), axis=1))
        nodes.append(helper.make_node("Gather", [p + "top", second], [p + "p2"], name=name("Gather"), axis=1))
        nodes.append(helper.make_node("Sub", [p + "p1", p + "p2"], [p + "score"], name=name("Sub")))
        return nodes, inits, p + "score"
    raise ValueError(f"policy {kind} has no in-graph score")


def _policy_score(
    k: int, logits: str, conf: Optional[str], classes: int, opset: int, name: Any
) -> Tuple[List[Any], List[Any], str]:
    """Exit k's score for the policy the ``policy_kind`` input names: nested Ifs, only one computed."""
    from onnx import TensorProto, helper

    kinds = list(contract.INGRAPH_POLICIES)
    out = f"score{k}"

    def chain(i: int, target: str) -> Tuple[List[Any], List[Any]]:
        nodes, inits, value = _score_nodes(kinds[i], k, logits, conf, classes, opset, name)
        nodes.append(helper.make_node("Identity", [value], [target], name=name("Identity")))
        if i == len(kinds) - 1:
            return nodes, inits
        other_nodes, other_inits = chain(i + 1, f"{target}/not_{kinds[i]}")
        then_graph = helper.make_graph(
            nodes, f"{target}_{kinds[i]}", [], [helper.make_tensor_value_info(target, TensorProto.FLOAT, [1])], inits
        )
        else_out = f"{target}/not_{kinds[i]}"
        else_graph = helper.make_graph(
            other_nodes,
            f"{target}_not_{kinds[i]}",
            [],
            [helper.make_tensor_value_info(else_out, TensorProto.FLOAT, [1])],
            other_inits,
        )
        node = helper.make_node(
            "If",
            [f"is_{kinds[i]}"],
            [f"{target}/chosen"],
            name=name("If"),
            then_branch=then_graph,
            else_branch=else_graph,
        )
        return [node, helper.make_node("Identity", [f"{target}/chosen"], [target], name=name("Identity"))], []

    nodes, inits = chain(0, out)
    return nodes, inits, out


def build_ingraph(stage_models: Sequence[Any], confidence: Sequence[Optional[str]], num_classes: int) -> Any:
    """The in-graph early-exit ``ModelProto`` from stage graphs (shallowest first) of one precision.

    ``confidence[k]`` names stage k's fused ``conf{k}`` output (None: the score is computed from
    the logits, as the runtime then does). Every exit must give (N, classes) logits.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    num = len(stage_models)
    if num < 2:
        raise ValueError("one exit: nothing to decide")
    first = stage_models[0]
    opset = next(int(e.version) for e in first.opset_import if e.domain in ("", "ai.onnx"))
    name = _Names()
    graph_out = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes]),
        helper.make_tensor_value_info("exit_index", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, [1]),
    ]

    def level(k: int, outer_input: str) -> Tuple[List[Any], List[Any], List[str]]:
        """Nodes and initializers from stage k on; returns the names of (logits, exit_index, score)."""
        nodes, inits, outputs = _stage_part(stage_models[k], k, outer_input)
        logits = outputs[f"exit{k}"]
        conf_name = confidence[k]
        conf = outputs.get(conf_name) if conf_name else None
        score_nodes, score_inits, score = _policy_score(k, logits, conf, num_classes, opset, name)
        nodes += score_nodes
        inits += score_inits
        if k == num - 1:
            index = name("exit_index")
            inits.append(numpy_helper.from_array(np.array([k], dtype=np.int32), index))
            return nodes, inits, [logits, index, score]
        # leave = score_k >= score_thresholds[k], as a scalar bool (If wants one element; TensorRT a 0-D one)
        pos, scalar = name("k"), name("scalar_shape")
        inits.append(numpy_helper.from_array(np.array(k, dtype=np.int64), pos))
        inits.append(numpy_helper.from_array(np.array([], dtype=np.int64), scalar))
        t_k, ge, cond = f"t{k}", f"leave{k}/ge", f"leave{k}"
        nodes.append(helper.make_node("Gather", [contract.SCORE_THRESHOLDS, pos], [t_k], name=name("Gather"), axis=0))
        nodes.append(helper.make_node("GreaterOrEqual", [score, t_k], [ge], name=name("GreaterOrEqual")))
        nodes.append(helper.make_node("Reshape", [ge, scalar], [cond], name=name("Reshape")))
        index = name("exit_index")
        then_outs = [f"exit{k}/logits", f"exit{k}/index", f"exit{k}/score"]
        then_nodes = [
            helper.make_node("Identity", [logits], [then_outs[0]], name=name("Identity")),
            helper.make_node(
                "Constant",
                [],
                [then_outs[1]],
                name=name("Constant"),
                value=numpy_helper.from_array(np.array([k], dtype=np.int32), index),
            ),
            helper.make_node("Identity", [score], [then_outs[2]], name=name("Identity")),
        ]
        else_nodes, else_inits, else_outs = level(k + 1, outputs[f"feat{k}"])
        branch_outs = [f"after{k}/logits", f"after{k}/index", f"after{k}/score"]
        else_nodes += [
            helper.make_node("Identity", [src], [dst], name=name("Identity"))
            for src, dst in zip(else_outs, branch_outs)
        ]

        def outs(names: Sequence[str]) -> List[Any]:
            return [
                helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [1, num_classes]),
                helper.make_tensor_value_info(names[1], TensorProto.INT32, [1]),
                helper.make_tensor_value_info(names[2], TensorProto.FLOAT, [1]),
            ]

        then_graph = helper.make_graph(then_nodes, f"leave_at_exit{k}", [], outs(then_outs))
        else_graph = helper.make_graph(else_nodes, f"continue_after_exit{k}", [], outs(branch_outs), else_inits)
        results = [f"decided{k}/logits", f"decided{k}/index", f"decided{k}/score"]
        nodes.append(
            helper.make_node("If", [cond], results, name=name("If"), then_branch=then_graph, else_branch=else_graph)
        )
        return nodes, inits, results

    nodes, inits, results = level(0, contract.INPUT)
    codes = []
    for code, kind in enumerate(contract.INGRAPH_POLICIES[:-1]):  # the last kind is the final else
        value = name(f"code_{kind}")
        inits.append(numpy_helper.from_array(np.array(code, dtype=np.int32), value))
        codes.append(helper.make_node("Equal", [contract.POLICY_KIND, value], [f"is_{kind}"], name=name("Equal")))
    nodes = codes + nodes
    nodes += [
        helper.make_node("Identity", [src], [dst.name], name=name("Identity")) for src, dst in zip(results, graph_out)
    ]
    shape = [d.dim_value for d in first.graph.input[0].type.tensor_type.shape.dim[1:]]
    graph_in = [
        helper.make_tensor_value_info(contract.INPUT, TensorProto.FLOAT, [1, *shape]),
        helper.make_tensor_value_info(contract.POLICY_KIND, TensorProto.INT32, []),
        helper.make_tensor_value_info(contract.SCORE_THRESHOLDS, TensorProto.FLOAT, [num - 1]),
    ]
    graph = helper.make_graph(nodes, "hisd_ingraph_early_exit", graph_in, graph_out, inits)
    model = helper.make_model(graph, opset_imports=list(first.opset_import), producer_name="hisd-edge")
    model.ir_version = first.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


# -- verification ------------------------------------------------------------------------------
@dataclasses.dataclass
class IngraphCheck:
    """What :func:`verify_ingraph` found for one precision."""

    samples: int
    policies: List[str]  # the policies whose scores, logits and decisions matched bit for bit
    by_policy: Dict[str, Dict[str, Any]]

    def to_dict(self) -> Dict[str, Any]:
        return {"samples": self.samples, "policies": list(self.policies), "by_policy": self.by_policy}


def _host_scores(kind: str, num: int, exit_outputs: List[np.ndarray], confs: List[Optional[np.ndarray]]) -> List[float]:
    """The runtime's float64 scores at every exit for one sample (its exact host code)."""
    from hisd_edge.runtime.backend import softmax_max
    from hisd_edge.runtime.policies import make_policy

    policy = make_policy(kind, [None] * num, num)
    state = policy.init_state(1)
    scores = []
    for k in range(num):
        given = confs[k]
        conf = given if given is not None else softmax_max(exit_outputs[k])
        scores.append(float(policy.step(k, conf.astype(np.float32).reshape(-1), exit_outputs[k], state)[0]))
    return scores


def _same(a: float, b: float) -> bool:
    return np.float64(a).tobytes() == np.float64(b).tobytes() or (math.isnan(a) and math.isnan(b))


def verify_ingraph(
    model_bytes: bytes,
    stage_paths: Sequence[Path],
    exit_outputs: Sequence[str],
    confidence: Sequence[Optional[str]],
    inputs: np.ndarray,
    precision: str,
) -> IngraphCheck:
    """Run the graph and the chain (batch 1, one thread each, as the runtime runs small models) on
    ``inputs`` and compare exits taken, logits and scores bit for bit, per policy."""
    from hisd_edge.runtime.ort_session import open_session

    num = len(stage_paths)
    graph = open_session(model_bytes, 1, precision)
    stages = [open_session(str(p), 1, precision) for p in stage_paths]
    in_names = [s.get_inputs()[0].name for s in stages]
    wanted: List[List[str]] = [[exit_outputs[k]] + [c for c in [confidence[k]] if c] for k in range(num)]
    feat_names = [f"feat{k}" for k in range(num)]
    per_sample: List[Tuple[List[np.ndarray], List[Optional[np.ndarray]]]] = []
    for x in inputs:
        value = x[None].astype(np.float32)
        logits_k: List[np.ndarray] = []
        conf_k: List[Optional[np.ndarray]] = []
        for k, session in enumerate(stages):
            names = wanted[k] + ([feat_names[k]] if k < num - 1 else [])
            outs = dict(zip(names, session.run(names, {in_names[k]: value})))
            logits_k.append(outs[exit_outputs[k]])
            conf_k.append(outs[str(confidence[k])] if confidence[k] else None)
            if k < num - 1:
                value = outs[feat_names[k]]
        per_sample.append((logits_k, conf_k))
    by_policy: Dict[str, Dict[str, Any]] = {}
    for code, kind in enumerate(contract.INGRAPH_POLICIES):
        host = [_host_scores(kind, num, logits_k, conf_k) for logits_k, conf_k in per_sample]
        medians = [float(np.median([s[k] for s in host])) for k in range(num - 1)]
        settings = [[math.inf] * k + [-math.inf] + [math.inf] * (num - 2 - k) for k in range(num - 1)]
        settings += [[math.inf] * (num - 1), medians]
        decisions = logits_equal = scores_equal = 0
        worst_score = worst_logits = 0.0
        runs = 0
        for i, ((logits_k, _), scores) in enumerate(zip(per_sample, host)):
            x = inputs[i][None].astype(np.float32)
            # + a knife edge: each threshold exactly at this sample's own score (it must leave at
            # exit 0: >=, not >; and the float32 threshold must round up, not to nearest)
            for thresholds in [*settings, [v if v == v else math.inf for v in scores[: num - 1]]]:
                expected = next((k for k in range(num - 1) if scores[k] >= thresholds[k]), num - 1)
                got_logits, got_index, got_score = graph.run(
                    list(contract.OUTPUTS),
                    {
                        contract.INPUT: x,
                        contract.POLICY_KIND: np.array(code, dtype=np.int32),
                        contract.SCORE_THRESHOLDS: contract.thresholds_f32(thresholds),
                    },
                )
                runs += 1
                taken = int(got_index[0])
                decisions += taken == expected
                ref = logits_k[expected]
                same_logits = got_logits.shape == ref.shape and got_logits.tobytes() == ref.tobytes()
                logits_equal += same_logits
                if got_logits.shape == ref.shape:
                    with np.errstate(invalid="ignore"):
                        worst_logits = max(worst_logits, float(np.nan_to_num(np.abs(got_logits - ref)).max()))
                same_score = _same(float(got_score[0]), scores[expected])
                scores_equal += same_score
                if not same_score and math.isfinite(got_score[0]) and math.isfinite(scores[expected]):
                    worst_score = max(worst_score, abs(float(got_score[0]) - scores[expected]))
        exact = decisions == logits_equal == scores_equal == runs
        by_policy[kind] = {
            "runs": runs,
            "decisions_equal": decisions,
            "logits_bit_identical": logits_equal,
            "scores_bit_identical": scores_equal,
            "max_abs_logit_diff": worst_logits,
            "max_abs_score_diff": worst_score,
            "exact": exact,
        }
    policies = [kind for kind in contract.INGRAPH_POLICIES if by_policy[kind]["exact"]]
    return IngraphCheck(samples=len(per_sample), policies=policies, by_policy=by_policy)


def write_ingraph(
    stage_paths: Dict[str, List[Path]],
    exit_outputs: Sequence[str],
    confidence: Sequence[Optional[str]],
    num_classes: int,
    inputs: Optional[np.ndarray],
    tmp: Path,
) -> Optional[Dict[str, Any]]:
    """Build, verify and write the artifact for each precision in ``stage_paths``; the manifest's
    ``ingraph`` record, or None when no precision passed (the chain is then the only path).

    A precision whose graph cannot be built, or whose max_prob decisions differ from the chain's,
    gets no artifact (a warning says why): the artifact is an accelerator, the chain stays the
    reference, so a bundle is never refused for lacking it.
    """
    import onnx

    from hisd_edge import atomic
    from hisd_edge.bundle import file_record

    if inputs is None or len(inputs) == 0 or len(exit_outputs) < 2 or num_classes < 2:
        return None
    from hisd_edge.convert.stats import graph_stats

    files: Dict[str, Any] = {}
    for precision, paths in stage_paths.items():
        stage_models = [onnx.load(str(p)) for p in paths]
        macs = sum(graph_stats(m).macs for m in stage_models)  # per sample through every stage
        runs = 3 * (len(paths) + 2)
        samples = inputs[: int(min(VERIFY_SAMPLES, max(16, VERIFY_MACS // max(macs * runs, 1))))]
        try:
            model = build_ingraph(stage_models, confidence, num_classes)
        except Exception as exc:  # the stage graphs are valid; a graph this step cannot fold is reported
            LOG.warning("in-graph early exit (%s): not built (%s); batch 1 uses the chain", precision, exc)
            continue
        data = model.SerializeToString()
        check = verify_ingraph(data, paths, exit_outputs, confidence, samples, precision)
        if "max_prob" not in check.policies:
            # fp32 must match (a bug otherwise); fp16 does not at ONNX Runtime's "all" level, whose CPU
            # layout rewrites reach the stage graphs but not the If branches: expected, said under -v
            (LOG.warning if precision == "fp32" else LOG.info)(
                "in-graph early exit (%s): decisions or logits differ from the chain's (%s); not written",
                precision,
                check.by_policy["max_prob"],
            )
            continue
        filename = contract.INGRAPH_FILE[precision]
        atomic.write_bytes(tmp / filename, data)
        files[precision] = {**file_record(tmp, filename), "policies": check.policies, "verification": check.to_dict()}
    if not files:
        return None
    return {
        "batch": 1,
        "inputs": [contract.INPUT, contract.POLICY_KIND, contract.SCORE_THRESHOLDS],
        "outputs": list(contract.OUTPUTS),
        "policy_codes": list(contract.INGRAPH_POLICIES),
        "files": files,
    }
