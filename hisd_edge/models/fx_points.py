"""Name every intermediate value of a network with torch.fx, the way torchvision's
``get_graph_node_names`` / ``create_feature_extractor`` do, so exits and split points can be
attached anywhere, reused modules and functional calls included.

One naming scheme serves :func:`~hisd_edge.models.list_exit_points`, ``hisd-edge convert
--list-points`` and ``--split-at``:

* a leaf module's output is named by its qualified name (``features.3.conv``);
* a container module's output (what its ``forward`` returns) by its qualified name too
  (``layer1``, ``stages.0``), so whole blocks can be named without knowing their last op;
* a function or tensor method called inside module ``m`` is ``m.<op>`` (``layer1.0.add``,
  ``flatten`` at the top level);
* the second and later uses of one name get ``_1``, ``_2``, ... in call order (a ReLU module
  called three times gives ``act``, ``act_1``, ``act_2``), so every value has its own name and
  its own shape (found by running the traced graph on an example with ``ShapeProp``).

A network that torch.fx cannot trace (data-dependent control flow) falls back to forward hooks on
modules; then only modules called exactly once are offered (a reused module's hook would
capture an ambiguous call).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn

from hisd_edge.errors import InputError, first_line


@dataclasses.dataclass
class TracedPoints:
    """A traced network and the names of its values, in execution order."""

    module: fx.GraphModule
    nodes: Dict[str, fx.Node]  # point name -> the FX node holding that value
    shapes: Dict[str, Tuple[int, ...]]  # point name -> shape on the example (tensor values only)
    order: List[str]  # point names in execution order


class _NamingTracer(fx.Tracer):
    """Records a qualified, call-order-unique name for every node and every module call."""

    def __init__(self) -> None:
        super().__init__()
        self._hisd_scopes: List[str] = []
        self.names: Dict[fx.Node, str] = {}  # node -> point name
        self.module_outputs: List[Tuple[str, Any]] = []  # (point name, returned proxy) per container call
        self.seen: Dict[str, int] = {}

    def unique(self, base: str) -> str:
        count = self.seen.get(base, 0)
        self.seen[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        self._hisd_scopes.append(qualname)
        try:
            out = super().call_module(m, forward, args, kwargs)
        finally:
            self._hisd_scopes.pop()
        if isinstance(out, fx.Proxy) and qualname:
            self.module_outputs.append((self.unique(qualname), out))
        return out

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **more: Any) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **more)
        node = proxy.node
        if kind == "call_module":
            base = str(target)
        elif kind in ("call_function", "call_method"):
            op = target if isinstance(target, str) else getattr(target, "__name__", "op")
            op = re.sub(r"^_+|_+$", "", str(op)) or "op"
            scope = self._hisd_scopes[-1] if self._hisd_scopes else ""
            base = f"{scope}.{op}" if scope else op
        else:
            return proxy  # placeholders, attributes, output
        self.names[node] = self.unique(base)
        return proxy


def trace_points(model: nn.Module, example: torch.Tensor) -> TracedPoints:
    """Trace ``model`` with torch.fx and name (and shape) every value; InputError if it cannot be traced."""
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise InputError(
            f"torch.fx cannot trace {type(model).__name__} ({first_line(exc)}); exit points fall back to module outputs"
        ) from None
    module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    nodes: Dict[str, fx.Node] = {}
    for node in graph.nodes:
        if node in tracer.names:
            nodes[tracer.names[node]] = node
    for name, proxy in tracer.module_outputs:
        nodes.setdefault(name, proxy.node)
    shapes = _node_shapes(module, example)
    position = {node: i for i, node in enumerate(graph.nodes)}
    order = sorted(nodes, key=lambda n: (position[nodes[n]], -n.count(".")))  # a block after its last op
    return TracedPoints(
        module=module,
        nodes=nodes,
        shapes={n: shapes[nodes[n]] for n in order if nodes[n] in shapes},
        order=order,
    )


def _node_shapes(module: fx.GraphModule, example: torch.Tensor) -> Dict[fx.Node, Tuple[int, ...]]:
    """Run the traced graph on ``example`` and record every tensor-valued node's shape."""
    shapes: Dict[fx.Node, Tuple[int, ...]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                shapes[n] = tuple(value.shape)
            return value

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            Recorder(module).run(example)
    finally:
        module.train(was_training)
    return shapes


def _hooked_points(model: nn.Module, example: torch.Tensor) -> List[Tuple[str, Tuple[int, ...]]]:
    """Fallback for untraceable networks: module outputs, only for modules called exactly once."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    calls: Dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                shapes.setdefault(name, tuple(out.shape))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [(n, s) for n, s in shapes.items() if calls.get(n) == 1]


def feature_points(model: nn.Module, example: torch.Tensor) -> List[Tuple[str, Tuple[int, ...]]]:
    """Names of values shaped like feature maps (N,C,H,W) or token sequences (N,T,D), in call order."""
    try:
        traced = trace_points(model, example)
    except InputError:
        return [(n, s) for n, s in _hooked_points(model, example) if len(s) in (3, 4)]
    return [(n, traced.shapes[n]) for n in traced.order if n in traced.shapes and len(traced.shapes[n]) in (3, 4)]


class PointCapture(nn.Module):
    """``model`` rebuilt so ``forward`` returns ``(model's own output, [value of each point])``.

    The traced module shares the original's parameters and sub-modules (no copy); it is kept out
    of this module's registered children so a state dict never holds the weights twice.
    """

    def __init__(self, model: nn.Module, points: Sequence[str], example: torch.Tensor):
        super().__init__()
        traced = trace_points(model, example)
        unknown = [p for p in points if p not in traced.nodes]
        if unknown:
            valid = [n for n in traced.order if len(traced.shapes.get(n, ())) in (3, 4)]
            raise InputError(f"unknown point(s) {', '.join(unknown)}; valid names: {', '.join(valid)}")
        graph = traced.module.graph
        output = next(n for n in graph.nodes if n.op == "output")
        original = output.args[0]
        with graph.inserting_before(output):
            graph.output((original, [traced.nodes[p] for p in points]))
        graph.erase_node(output)
        graph.lint()
        traced.module.recompile()
        self.__dict__["_traced"] = traced.module  # not a registered child: see the class docstring
        self.points = list(points)
        self.shapes = {p: traced.shapes.get(p) for p in points}

    def forward(self, x: torch.Tensor) -> Tuple[Any, List[torch.Tensor]]:
        return self.__dict__["_traced"](x)


def resolve_points(model: nn.Module, example: torch.Tensor, points: Sequence[str]) -> Optional[PointCapture]:
    """A :class:`PointCapture` for ``points``, or None when the model cannot be traced."""
    try:
        return PointCapture(model, points, example)
    except InputError as exc:
        if "torch.fx cannot trace" in str(exc):
            return None
        raise
