"""Step 2: cut the monolithic graph into chained stage graphs at structurally found boundaries.

With ``A_k`` the nodes that exit k's outputs (``exit{k}``, ``conf{k}``) depend on and
``U_k = A_0 ∪ ... ∪ A_k``, the boundary after stage k is the set of *dynamic* tensors (ones that
depend on the input; constants may be duplicated freely) that are produced inside ``U_k`` (or are
the graph input) and consumed by a node that later exits need but ``U_k`` does not hold. Exactly
one tensor is a clean cut: it is renamed ``feat{k}`` and becomes stage k's extra output and stage
k+1's only input. More than one means a later stage needs something from before the boundary (a
skip connection across it, say): that is reported, naming the tensors, instead of producing a
chain that silently differs from the model. Explicit split tensors (``--split-at``) go through the
same check.

The cutting itself is plain onnx-graphsurgeon editing: copy, set inputs/outputs, cleanup,
toposort. Every stage then passes ``onnx.checker`` with full checks.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from hisd_edge.convert.export import (
    BATCH_DIM,
    INPUT_NAME,
    exit_name,
    feat_name,
    infer_shapes,
    model_opset,
    rename_tensor,
)
from hisd_edge.errors import ConversionError, InputError, first_line


@dataclasses.dataclass
class StageGraph:
    """One stage: its ONNX model and the names of its inputs and outputs."""

    index: int
    model: Any
    inputs: List[str]
    outputs: List[str]


def _subgraph_refs(node: Any) -> Set[str]:
    """Outer-scope tensor names referenced inside a node's subgraphs (If/Loop/Scan bodies)."""
    refs: Set[str] = set()
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for sub in graphs:
            produced = (
                {o for n in sub.node for o in n.output}
                | {i.name for i in sub.input}
                | {i.name for i in sub.initializer}
            )
            for inner in sub.node:
                refs.update(name for name in inner.input if name and name not in produced)
                refs.update(r for r in _subgraph_refs(inner) if r not in produced)
    return refs


class GraphIndex:
    """Producer/consumer maps of an ONNX graph and which tensors depend on the input."""

    def __init__(self, model: Any):
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {i.name for i in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.outputs = [o.name for o in graph.output]
        self.producer: Dict[str, int] = {}
        self.node_inputs: List[List[str]] = []
        self.consumers: Dict[str, List[int]] = collections.defaultdict(list)
        for idx, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = idx
            inputs = [name for name in node.input if name] + sorted(_subgraph_refs(node))
            self.node_inputs.append(inputs)
            for name in inputs:
                self.consumers[name].append(idx)
        self.dynamic: Set[str] = set(self.graph_inputs)
        for idx, node in enumerate(self.nodes):  # graph.node is topologically sorted (checker enforces it)
            if any(name in self.dynamic for name in self.node_inputs[idx]):
                self.dynamic.update(o for o in node.output if o)

    def ancestors(self, tensors: Iterable[str]) -> Set[int]:
        """Indices of the nodes the given tensors depend on."""
        seen: Set[int] = set()
        stack = [self.producer[t] for t in tensors if t in self.producer]
        while stack:
            idx = stack.pop()
            if idx in seen:
                continue
            seen.add(idx)
            stack.extend(self.producer[name] for name in self.node_inputs[idx] if name in self.producer)
        return seen

    def crossing(self, inside: Set[int], needed: Set[int]) -> List[str]:
        """Dynamic tensors made inside ``inside`` (or graph inputs) that nodes in ``needed - inside`` read."""
        found: List[str] = []
        for idx in sorted(needed - inside):
            for name in self.node_inputs[idx]:
                if name not in self.dynamic or name in found:
                    continue
                if name in self.graph_inputs or self.producer.get(name) in inside:
                    found.append(name)
        return found

    def exists(self, name: str) -> bool:
        return name in self.producer or name in self.graph_inputs


def stage_output_names(num_exits: int, confidence: Sequence[Optional[str]]) -> List[List[str]]:
    """Per stage, the exit outputs it yields (``exit{k}`` and, if fused, ``conf{k}``)."""
    return [[exit_name(k)] + ([confidence[k]] if confidence[k] else []) for k in range(num_exits)]  # type: ignore[list-item]


@dataclasses.dataclass
class Boundary:
    """A clean cut: the tensor after stage k and the node indices of stages 0..k (before renaming)."""

    tensor: str
    inside: Set[int]


def find_boundaries(
    model: Any, exit_outputs: Sequence[Sequence[str]], split_at: Optional[Sequence[str]] = None
) -> List[Boundary]:
    """The boundary after each stage but the last, checked to be a clean cut."""
    index = GraphIndex(model)
    num = len(exit_outputs)
    if split_at is not None and len(split_at) != num - 1:
        raise InputError(
            f"--split-at needs {num - 1} tensor name(s) for {num} exits (one boundary between consecutive "
            f"exits), got {len(split_at)}"
        )
    if split_at:
        unknown = [name for name in split_at if not index.exists(name)]
        if unknown:
            candidates = [t for t in index.producer if t in index.dynamic]
            shown = ", ".join(candidates[:25]) + (
                f", ... ({len(candidates) - 25} more; list them with --list-points)" if len(candidates) > 25 else ""
            )
            raise InputError(
                f"split tensor(s) {', '.join(unknown)} not in the graph; tensors that depend on the input: {shown}"
            )
    needed = index.ancestors(t for outs in exit_outputs for t in outs)
    boundaries: List[Boundary] = []
    inside: Set[int] = set()
    for k in range(num - 1):
        inside |= index.ancestors(exit_outputs[k])
        if split_at:
            inside |= index.ancestors([split_at[k]])
        later = index.ancestors(t for outs in exit_outputs[k + 1 :] for t in outs)
        if later <= inside:
            raise ConversionError(
                f"exit {k + 1} needs nothing beyond what exit {k} already computes; list the exits shallowest first"
            )
        crossing = index.crossing(inside, needed)
        if split_at:
            wanted = split_at[k]
            extra = [t for t in crossing if t != wanted]
            if wanted not in crossing:
                raise ConversionError(
                    f"split tensor {wanted} is not a boundary between exit {k} and exit {k + 1}: the later stages do not read it "
                    f"(they read {', '.join(crossing) or 'nothing'} from before it)"
                )
            if extra:
                raise ConversionError(
                    f"split at {wanted} is not a clean cut: the stages after it also need {', '.join(extra)} from before it; "
                    "choose a split tensor that everything later depends on alone"
                )
            boundaries.append(Boundary(wanted, set(inside)))
            continue
        order_hint = ""
        if len(index.ancestors(exit_outputs[k + 1])) < len(index.ancestors(exit_outputs[k])):
            order_hint = f" (exit {k + 1} depends on fewer nodes than exit {k}: are the exits listed shallowest first?)"
        if not crossing:
            raise ConversionError(
                f"the stages after exit {k} do not depend on it (parallel branches?); no chain can be cut there"
                + order_hint
            )
        if len(crossing) > 1:
            raise ConversionError(
                f"no clean cut after exit {k}: the later stages need {len(crossing)} tensors from before it "
                f"({', '.join(crossing)}); move the exit or give --split-at explicitly{order_hint}"
            )
        boundaries.append(Boundary(crossing[0], set(inside)))
    return boundaries


def name_boundaries(model: Any, boundaries: Sequence[Boundary]) -> None:
    """Give the boundary tensors their stable names ``feat{k}``, in place.

    Usually a rename. A tensor that is also a graph output (or the graph input) cannot carry a
    second name, so the later stages' consumers are routed through ``feat{k} = Identity(tensor)``.
    """
    from onnx import helper

    graph = model.graph
    protected = {o.name for o in graph.output} | {INPUT_NAME}
    for k, boundary in enumerate(boundaries):
        new = feat_name(k)
        if boundary.tensor == new:
            continue
        taken = (
            {o for node in graph.node for o in node.output}
            | {i.name for i in graph.input}
            | {i.name for i in graph.initializer}
        )
        if new in taken:
            rename_tensor(model, new, f"{new}_orig")
        if boundary.tensor in protected:
            nodes = list(graph.node)  # appending below keeps these indices valid
            for idx, node in enumerate(nodes):
                if idx in boundary.inside:
                    continue
                for i, name in enumerate(node.input):
                    if name == boundary.tensor:
                        node.input[i] = new
            graph.node.append(helper.make_node("Identity", [boundary.tensor], [new], name=f"{new}/Identity"))
        else:
            rename_tensor(model, boundary.tensor, new)
    toposort(model)


def toposort(model: Any) -> None:
    """Reorder the graph's nodes topologically (stable: keeps the original order where it can)."""
    graph = model.graph
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [
        sorted({producer[name] for name in list(n.input) + sorted(_subgraph_refs(n)) if name in producer})
        for n in nodes
    ]
    order: List[int] = []
    state = [0] * len(nodes)  # 0 new, 1 on stack, 2 placed
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            idx, expanded = stack.pop()
            if expanded:
                if state[idx] != 2:
                    state[idx] = 2
                    order.append(idx)
                continue
            if state[idx]:
                continue
            state[idx] = 1
            stack.append((idx, True))
            stack.extend((d, False) for d in reversed(deps[idx]) if not state[d])
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def split_stages(model: Any, exit_outputs: Sequence[Sequence[str]]) -> List[StageGraph]:
    """Cut ``model`` (boundaries already named ``feat{k}``) into one graph per stage."""
    import onnx_graphsurgeon as gs

    num = len(exit_outputs)
    opset = model_opset(model)
    full = gs.import_onnx(model)
    stages: List[StageGraph] = []
    for k in range(num):
        graph = full.copy()
        tensors = graph.tensors()
        in_name = INPUT_NAME if k == 0 else feat_name(k - 1)
        out_names = ([feat_name(k)] if k < num - 1 else []) + list(exit_outputs[k])
        for name in [in_name, *out_names]:
            if name not in tensors:
                raise ConversionError(f"stage {k}: tensor {name} vanished from the graph while splitting")
        stage_input = tensors[in_name]
        if stage_input.dtype is None or stage_input.shape is None:
            raise ConversionError(
                f"stage {k}: boundary tensor {in_name} has no inferred dtype/shape; cannot make it a stage input"
            )
        stage_input.inputs.clear()  # cut it loose from its producer in the previous stage
        graph.inputs = [stage_input]
        graph.outputs = [tensors[name] for name in out_names]
        graph.cleanup(remove_unused_graph_inputs=True).toposort()
        for tensor in graph.inputs + graph.outputs:
            _name_batch_dim(tensor)
        graph.name = f"stage{k}"
        stage_model = gs.export_onnx(graph, do_type_check=True)
        _set_opset(stage_model, model, opset)
        stage_model.producer_name = "hisd-edge"
        stage_model = infer_shapes(stage_model)
        check_model(stage_model, f"stage {k}")
        stages.append(StageGraph(index=k, model=stage_model, inputs=[in_name], outputs=out_names))
    return stages


def _name_batch_dim(tensor: Any) -> None:
    """Call a symbolic leading dim ``batch``: shape inference sometimes loses the name through
    broadcasts and reshapes (``unk__1``), and a dim without a known range blocks a TensorRT build."""
    shape = list(tensor.shape or [])
    if shape and not isinstance(shape[0], int):
        tensor.shape = [BATCH_DIM, *shape[1:]]


def _set_opset(stage_model: Any, source: Any, opset: int) -> None:
    del stage_model.opset_import[:]
    stage_model.opset_import.extend(source.opset_import)
    stage_model.ir_version = source.ir_version


def check_model(model: Any, what: str) -> None:
    """``onnx.checker`` with full checks (strict shape inference included); ConversionError if it fails."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ConversionError(f"{what} fails onnx.checker ({first_line(exc)})") from None
