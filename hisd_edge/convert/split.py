"""Step 2: cut the monolithic graph into chained stage graphs at structurally found boundaries.

With ``A_k`` the nodes that exit k's outputs (``exit{k}``, ``conf{k}``) depend on and
``U_k = A_0 ∪ ... ∪ A_k``, the boundary after stage k is the set of *dynamic* tensors (ones that
depend on the input; constants may be duplicated freely) that are produced inside ``U_k`` (or are
the graph input) and consumed by a node that later exits need but ``U_k`` does not hold. Values
that depend on the input only through its batch size (``Shape -> Gather(0) -> Concat -> Reshape``,
what ``x.view(x.size(0), -1)`` exports to) are not carried: each stage recomputes them from its
own input, whose batch dim is the same. Exactly
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


def _constant_ints(model: Any) -> Dict[str, List[int]]:
    """Small integer constants of the graph (initializers and Constant nodes), flattened."""
    from onnx import TensorProto, numpy_helper

    values: Dict[str, List[int]] = {}
    ints = (TensorProto.INT64, TensorProto.INT32)
    for init in model.graph.initializer:
        if init.data_type in ints and len(init.dims) <= 1:
            values[init.name] = [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in ints and len(attr.t.dims) <= 1:
                    values[node.output[0]] = [int(v) for v in numpy_helper.to_array(attr.t).reshape(-1)]
    return values


def _batch_symbols(model: Any) -> Set[str]:
    """Symbolic names of the input's leading (batch) dim."""
    symbols: Set[str] = set()
    inits = {i.name for i in model.graph.initializer}
    for info in model.graph.input:
        if info.name not in inits and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            if dims and dims[0].dim_param:
                symbols.add(dims[0].dim_param)
    return symbols


def _batch_shape_nodes(model: Any, index: GraphIndex) -> Set[int]:
    """Shape nodes whose value is used only for the batch size.

    That is: the shaped tensor's dim 0 is the input's symbolic batch dim, and the Shape either
    keeps only dim 0 (``start=0, end=1``) or every consumer takes element 0 (``Gather`` with
    constant index 0 on axis 0, ``Slice`` [0:1]). Such a value is the same when computed from any
    stage's own input, so it never has to cross a cut (``x.view(x.size(0), -1)``).
    """
    constants = _constant_ints(model)
    symbols = _batch_symbols(model)
    first_dims: Dict[str, str] = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = info.type.tensor_type.shape.dim if info.type.tensor_type.HasField("shape") else []
        if dims and dims[0].dim_param:
            first_dims[info.name] = dims[0].dim_param
    found: Set[int] = set()
    for idx, node in enumerate(index.nodes):
        if node.op_type != "Shape" or not node.input or first_dims.get(node.input[0]) not in symbols:
            continue
        attrs = {a.name: int(a.i) for a in node.attribute}
        if attrs.get("start", 0) == 0 and attrs.get("end") == 1:
            found.add(idx)
            continue
        uses = index.consumers.get(node.output[0], [])
        if uses and all(_takes_element_zero(index.nodes[u], node.output[0], constants) for u in uses):
            found.add(idx)
    return found


def _takes_element_zero(node: Any, shape: str, constants: Dict[str, List[int]]) -> bool:
    inputs = list(node.input)
    if not inputs or inputs[0] != shape or shape in inputs[1:]:
        return False
    from onnx import AttributeProto

    attrs = {a.name: int(a.i) for a in node.attribute if a.type == AttributeProto.INT}
    if node.op_type == "Gather":
        return attrs.get("axis", 0) == 0 and len(inputs) > 1 and constants.get(inputs[1]) == [0]
    if node.op_type == "Slice" and len(inputs) >= 3:
        starts, ends = constants.get(inputs[1]), constants.get(inputs[2])
        axes = constants.get(inputs[3]) if len(inputs) > 3 and inputs[3] else [0]
        steps = constants.get(inputs[4]) if len(inputs) > 4 and inputs[4] else [1]
        return starts == [0] and ends == [1] and axes in ([0], [-1]) and steps == [1]
    return False


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
        self.batch_shapes: Set[int] = _batch_shape_nodes(model, self)
        self.dynamic: Set[str] = set(self.graph_inputs)
        for idx, node in enumerate(self.nodes):  # graph.node is topologically sorted (checker enforces it)
            if idx in self.batch_shapes:
                continue  # the batch size: every stage recomputes it from its own input
            if any(name in self.dynamic for name in self.node_inputs[idx]):
                self.dynamic.update(o for o in node.output if o)

    def data_inputs(self, idx: int) -> List[str]:
        """The inputs of node ``idx`` whose values it needs (a batch-size Shape needs none)."""
        return [] if idx in self.batch_shapes else self.node_inputs[idx]

    def batch_shape_outputs(self) -> Set[str]:
        """Output names of the Shape nodes that only yield the batch size."""
        return {self.nodes[i].output[0] for i in self.batch_shapes}

    def descendants(self, tensor: str) -> Set[int]:
        """Indices of the nodes that depend on ``tensor``."""
        seen: Set[int] = set()
        stack = list(self.consumers.get(tensor, []))
        while stack:
            idx = stack.pop()
            if idx in seen:
                continue
            seen.add(idx)
            for out in self.nodes[idx].output:
                stack.extend(self.consumers.get(out, []))
        return seen

    def is_clean_cut(self, tensor: str) -> bool:
        """True when everything that depends on ``tensor`` reads nothing else computed before it
        (apart from constants and the batch size), so the graph can be cut at ``tensor`` alone."""
        if tensor not in self.dynamic:
            return False
        after = self.descendants(tensor)
        if not after:
            return False
        produced_after = {o for i in after for o in self.nodes[i].output if o}
        for idx in after:
            for name in self.data_inputs(idx):
                if name != tensor and name in self.dynamic and name not in produced_after:
                    return False
        return True

    def reader(self, tensor: str, among: Set[int]) -> str:
        """Why a tensor is needed: 'read by <op> <node name>' for the first reader among ``among``."""
        for idx in sorted(among):
            if tensor in self.node_inputs[idx]:
                node = self.nodes[idx]
                label = f"{node.op_type} {node.name}".strip()
                if node.op_type == "Shape":
                    return f"read by {label}, which uses its shape beyond the batch dim (fix the other dims: --input-shape)"
                return f"read by {label}"
        return "read later"

    def ancestors(self, tensors: Iterable[str]) -> Set[int]:
        """Indices of the nodes the given tensors depend on."""
        seen: Set[int] = set()
        stack = [self.producer[t] for t in tensors if t in self.producer]
        while stack:
            idx = stack.pop()
            if idx in seen:
                continue
            seen.add(idx)
            stack.extend(self.producer[name] for name in self.data_inputs(idx) if name in self.producer)
        return seen

    def crossing(self, inside: Set[int], needed: Set[int]) -> List[str]:
        """Dynamic tensors made inside ``inside`` (or graph inputs) that nodes in ``needed - inside`` read."""
        found: List[str] = []
        for idx in sorted(needed - inside):
            for name in self.data_inputs(idx):
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
                why = "; ".join(f"{t} ({index.reader(t, needed - inside)})" for t in extra)
                raise ConversionError(
                    f"split at {wanted} is not a clean cut: the stages after it also need {why} from before it; "
                    "choose a split point that everything later depends on alone (--list-points marks clean cuts)"
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
            why = "; ".join(f"{t} ({index.reader(t, needed - inside)})" for t in crossing)
            raise ConversionError(
                f"no clean cut after exit {k}: the later stages need {len(crossing)} tensors from before it "
                f"({why}); move the exit or give --split-at at a clean cut (--list-points marks them){order_hint}"
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
    batch_shapes = GraphIndex(model).batch_shape_outputs()
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
        if k > 0:  # the batch size comes from this stage's own input, not from across the cut
            for name in batch_shapes:
                if name in tensors and tensors[name].inputs:
                    tensors[name].inputs[0].inputs[0] = stage_input
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
