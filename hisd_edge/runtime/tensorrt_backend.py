"""TensorRT backend: the bundle's stages as chained engines on one CUDA stream.

What happens per batch (see :mod:`hisd_edge.runtime.backend` for the stage-by-stage contract):

* **Name-based I/O** (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), the one
  code path from TensorRT 8.5 to 11.x; engines come from :func:`hisd_edge.engine.load_engines`,
  which refuses engines built for another device or TensorRT version.
* **Chaining on the device.** Stage k's ``feat{k}`` output buffer *is* stage k+1's input buffer:
  both contexts are bound to the same device pointer, and one stream orders them, so features
  never cross to the host.
* **Only the confidence comes back.** After each stage one CUDA event is recorded and waited on;
  the fused ``conf{k}`` (one value per row) is the only thing copied to pinned host memory. Exit
  outputs (logits or embeddings) are copied on demand, only for the rows that leave.
* **Zero-copy on integrated GPUs.** On a Jetson (``integrated``, ``canMapHostMemory``) the input,
  the confidences and the exit outputs live in *mapped* pinned host memory bound directly to the
  engines, so there are no copies at all; features stay in device memory.
* **Per-sample compaction** of the held features to the rows that continue: with no custom kernel
  available, a gather by device-to-device copies of contiguous row runs into a scratch buffer
  (one copy per run of consecutive rows; when nobody exits, nothing is copied).
* **CUDA events** time each stage on the device (compaction, the stage, the confidence copy).
* **Any row count from 1 to the maximum runs.** An engine whose profile minimum is above 1 (a
  DLA stage's fixed batch, a plan imported from ``trtexec``) gets its rows padded up to that
  minimum; the padded rows are never read back (``describe()["padded_runs"]`` counts them).
* **Optional CUDA graphs** per stage (``cuda_graphs=True``): a graph fixes shapes, addresses and
  what TensorRT staged for them in its execution context, so each cached graph owns an execution
  context of its own (a *slot*): a key (rows, input address) is run once plainly on its slot (the
  first run lets TensorRT set up, as trtexec does), captured on its next occurrence and replayed
  from then on. ``graph_slots`` (default 3) bounds the slots per stage: the least recently used
  one is recaptured for a new key, so alternating shapes (full batches and the last partial
  chunk, batch 1 and batch N) keep their graphs, and memory stays bounded (each slot is one more
  context's scratch memory). TensorRT 8.5 gives each optimization profile to one context only,
  so there a dynamic-shape stage keeps one slot. Keys that could not be captured are remembered
  (boundedly) and run without a graph. A CUDA binding that cannot capture (pycuda without
  cuda-python) is refused at activation in one line.
* **The monolithic model** (``load_full_model=True``, for ``bench`` and ``evaluate``): the full
  model's engine when the build made one; otherwise :meth:`run_full` runs every stage without
  early exit, and :attr:`full_model_label` says so.

Options: ``cuda`` ("auto", "pycuda", "cuda-python" or a :class:`~hisd_edge.cuda.CudaBackend`),
``device`` (CUDA device index), ``zero_copy`` ("auto", True, False), ``cuda_graphs`` (False),
``graph_slots`` (3), ``spin_wait`` (False: lowest wake-up latency at the cost of a busy CPU),
``max_batch`` (default: the engines' profile maximum), ``load_full_model`` (False), ``ingraph``
(False: opt in to run batch-1 frames through the build's in-graph early-exit engine, one enqueue
and one synchronisation per frame instead of one per stage; see :class:`_Ingraph` for why it is
opt-in here).
Precision ``mixed`` runs the per-stage plan of ``convert --precision mixed`` (``build --precision mixed``).

I/O buffers are allocated once, at the maximum batch; running out of memory there is a one-line
DeviceError suggesting a smaller ``max_batch``. :meth:`TensorRTBackend.memory_info` reports what
the engines and buffers take (``hisd-edge profile`` records it).

The scratch memory TensorRT needs per context is allocated by TensorRT itself (one per stage);
sharing one scratch buffer across the stages (USER_MANAGED contexts) is left for later.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from hisd_edge.errors import BundleError, DependencyError, DeviceError, InputError
from hisd_edge.runtime.backend import Backend, FullResult, StageResult, pool_features, softmax_max

if TYPE_CHECKING:
    import tensorrt as trt

    from hisd_edge.cuda.api import CudaBackend, DeviceBuffer, Event, Graph, HostBuffer, Stream
    from hisd_edge.engine.loader import LoadedEngines

DEFAULT_GRAPH_SLOTS = 3
_UNCAPTURABLE_KEPT = 64  # keys remembered as not capturable, per backend (oldest forgotten first)


@dataclasses.dataclass
class _Tensor:
    name: str
    dtype: Any  # numpy dtype
    sample_shape: Tuple[int, ...]  # without the batch axis

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass
class _Output:
    """An engine output that the host may read: a device pointer plus a host view of it."""

    tensor: _Tensor
    ptr: int  # what the engine writes to
    host: HostBuffer  # mapped (zero-copy: host.device_ptr == ptr) or pinned staging for copies
    mapped: bool


@dataclasses.dataclass
class _Slot:
    """An execution context that owns one CUDA graph (see the module docstring)."""

    context: Any
    key: Optional[Tuple[int, int]] = None  # (rows, input address) the context is set up for
    graph: Optional[Graph] = None
    last_used: int = 0


@dataclasses.dataclass
class _Stage:
    index: int
    engine: trt.ICudaEngine
    context: trt.IExecutionContext
    input: _Tensor
    feat: Optional[_Tensor]
    exit: _Output
    conf: Optional[_Output]
    start: Event
    end: Event
    min_rows: int = 1  # the profile minimum: fewer rows are padded up to it
    bound: Dict[str, int] = dataclasses.field(default_factory=dict)  # output name -> address
    slots: List[_Slot] = dataclasses.field(default_factory=list)
    dynamic: bool = True


@dataclasses.dataclass
class _Full:
    """The monolithic model's engine: one input, one output per exit (in exit order)."""

    engine: Any
    context: Any
    input: _Tensor
    input_ptr: int
    input_host: HostBuffer
    outputs: List[_Output]
    min_rows: int
    max_rows: int


@dataclasses.dataclass
class _Ingraph:
    """The in-graph early-exit engine (hisd_edge.runtime.ingraph): a whole frame in one enqueue.

    Opt-in (``ingraph=True``): the converter verified the in-graph ONNX bit for bit against the
    stage ONNX in ONNX Runtime, but TensorRT picks kernels per engine, so this engine's logits can
    differ in the last bits from the stage engines', and a confidence within that distance of a
    threshold can then leave at another exit than the chain would. Nothing here has run on real
    TensorRT yet (tested against the TensorRT test double only).
    """

    engine: Any
    context: Any
    input_host: HostBuffer  # (1, C, H, W)
    input_ptr: int
    policy_host: HostBuffer  # int32 scalar, then float32 thresholds: one staging buffer each
    policy_ptr: int
    thresholds_host: HostBuffer
    thresholds_ptr: int
    outputs: List[_Output]  # logits, exit_index, score
    bound_policy: Any = None


_MIB = float(1 << 20)


def _is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure for lack of memory, from either binding: pycuda raises its own
    ``pycuda.driver.MemoryError``; cuda-python's calls raise CudaCallError naming
    ``cudaErrorMemoryAllocation``."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "MemoryError":
        return True
    text = str(exc)
    return "cudaErrorMemoryAllocation" in text or "out of memory" in text.lower()


def row_runs(rows: np.ndarray) -> List[Tuple[int, int, int]]:
    """(source row, destination row, count) for each run of consecutive source rows, in order.

    ``[4, 5, 6, 9, 2, 3]`` -> ``[(4, 0, 3), (9, 3, 1), (2, 4, 2)]``: gathering ``source[rows]``
    takes one contiguous copy per run.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [rows.size]))
    return [(int(rows[s]), int(s), int(e - s)) for s, e in zip(starts, ends)]


def engine_tensor(trt: Any, engine: Any, name: str, where: str, fix: str) -> _Tensor:
    """An engine I/O tensor as (numpy dtype, per-sample shape); a one-line BundleError for a dynamic
    non-batch dimension or a data type numpy cannot hold (BF16, FP8, INT4, FP4, ...)."""
    from hisd_edge.engine.features import dims_to_tuple, dtype_name, numpy_dtype

    dims = dims_to_tuple(engine.get_tensor_shape(name))
    if any(d < 0 for d in dims[1:]):
        raise BundleError(f"{where}: engine tensor {name} has dynamic dimensions besides the batch {dims}; {fix}")
    trt_dtype = engine.get_tensor_dtype(name)
    dtype = numpy_dtype(trt, trt_dtype)
    if dtype is None:
        raise BundleError(
            f"{where}: engine tensor {name} is {dtype_name(trt_dtype)}, a type the runtime cannot map to numpy "
            f"(it moves float32, float16, int8, int32, int64, bool and uint8 tensors); {fix} from the bundle's stage ONNX, "
            "whose inputs and outputs are float32"
        )
    return _Tensor(name, dtype, dims[1:])


def profile_rows(engine: Any, name: str) -> Tuple[int, int]:
    """(min, max) rows an engine input takes: its profile's range on a dynamic batch axis, else the fixed batch."""
    from hisd_edge.engine.features import dims_to_tuple

    dims = dims_to_tuple(engine.get_tensor_shape(name))
    if dims[0] >= 0:
        return dims[0], dims[0]
    lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
    return dims_to_tuple(lo)[0], dims_to_tuple(hi)[0]


class TensorRTBackend(Backend):
    """Runs a bundle's TensorRT engines (built on this device with ``hisd-edge build``)."""

    name = "tensorrt"

    def __init__(self, bundle: Any, precision: str = "fp16", **options: Any):
        super().__init__(bundle, precision, **options)
        self._cuda: Optional[CudaBackend] = None
        self._owns_cuda = False
        self._loaded: Optional[LoadedEngines] = None
        self._stages: List[_Stage] = []
        self._full: Optional[_Full] = None
        self._ingraph: Optional[_Ingraph] = None
        self._allocations: List[Any] = []
        self._uncapturable: collections.OrderedDict = collections.OrderedDict()  # (stage, rows, src) -> None
        self._clock = 0  # bumps on every graph-slot use (least recently used = smallest)
        self._stream: Optional[Stream] = None
        self._input_ptr = 0
        self._input_host: Optional[HostBuffer] = None
        self._scratch: Optional[DeviceBuffer] = None
        self._feat_ptrs: List[int] = []
        self._fetch_event: Optional[Event] = None
        self._feat_hosts: Dict[int, HostBuffer] = {}  # pinned copies of feat{k} for the input guard
        self._held_ptr = 0
        self._held_count = 0
        self.zero_copy = False
        self.cuda_graphs = bool(options.get("cuda_graphs", False))
        self.graph_slots = int(options.get("graph_slots", DEFAULT_GRAPH_SLOTS))
        self.max_batch = 0
        self.padded_runs = 0

    # -- lifetime ------------------------------------------------------------------------------
    def check_precision(self) -> None:
        """Engines, not stage ONNX files, are what runs: a weakly typed "fp16" build comes from the fp32
        ONNX, so the bundle need not hold fp16 files. Which builds exist for this device and TensorRT
        version is checked (with the build command to run) when the engines are loaded."""
        from hisd_edge.bundle import PRECISIONS

        if self.precision not in (*PRECISIONS, "mixed"):
            raise InputError(
                f"precision {self.precision!r}: TensorRT engines are built as {', '.join(PRECISIONS)} or mixed; "
                f"pick one of those with --precision"
            )
        if self.graph_slots < 1:
            raise InputError(f"graph_slots {self.graph_slots}: give at least 1 (CUDA graphs cached per stage)")

    @property
    def supports_full_model(self) -> bool:
        """Always: the full model's engine where the build made one, else every stage without early exit."""
        return True

    @property
    def full_model_label(self) -> str:
        if self._full is not None:
            return "monolithic full model (TensorRT engine)"
        note = self._loaded.full_model_note if self._loaded is not None else ""
        return "all stages chained without early exit" + (f" (no monolithic engine: {note})" if note else "")

    def activate_impl(self) -> None:
        from hisd_edge.cuda import CudaBackend, open_cuda
        from hisd_edge.engine.features import import_tensorrt
        from hisd_edge.engine.loader import load_engines

        import_tensorrt()  # the first thing missing is the first thing said
        choice = self.options.get("cuda", "auto")
        if isinstance(choice, CudaBackend):
            self._cuda = choice
        else:
            self._cuda = open_cuda(
                str(choice), int(self.options.get("device", 0)), spin_wait=bool(self.options.get("spin_wait"))
            )
            self._owns_cuda = True
        cuda = self._cuda
        if self.cuda_graphs and cuda.graphs_unavailable is not None:
            raise DependencyError(f"cuda_graphs: {cuda.graphs_unavailable}")
        self._loaded = loaded = load_engines(
            self.bundle,
            self.precision,
            cuda.device,
            full_model=bool(self.options.get("load_full_model")),
            ingraph=bool(self.options.get("ingraph", False)),
        )
        import tensorrt as trt

        zero_copy = self.options.get("zero_copy", "auto")
        self.zero_copy = cuda.zero_copy_preferred if zero_copy == "auto" else bool(zero_copy)
        if self.zero_copy and not cuda.device.can_map_host_memory:
            raise InputError(f"zero_copy: {cuda.device.name} cannot map host memory; use zero_copy='auto' or False")
        where, fix = str(self.bundle.root), "rebuild with hisd-edge build"

        # Discover and check every stage's I/O against the manifest and the chain.
        engines = loaded.engines
        ios = []
        rows_range = []
        for k, engine in enumerate(engines):
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            stage_meta = self.bundle.stages[k]
            want_in = stage_meta["inputs"][0]["name"]
            want_out = [o["name"] for o in stage_meta["outputs"]]
            if inputs != [want_in] or sorted(outputs) != sorted(want_out):
                raise BundleError(
                    f"{self.bundle.root}: the stage {k} engine has inputs {inputs} and outputs {outputs}, the "
                    f"manifest says {[want_in]} and {want_out}; rebuild with hisd-edge build"
                )
            ios.append({n: engine_tensor(trt, engine, n, f"{where} (stage {k})", fix) for n in names})
            rows_range.append(profile_rows(engine, want_in))
        first = ios[0][self.bundle.stages[0]["inputs"][0]["name"]]
        if first.sample_shape != self.input_shape:
            raise BundleError(
                f"{self.bundle.root}: the stage 0 engine takes {first.sample_shape}, the manifest says "
                f"{self.input_shape}; rebuild with hisd-edge build"
            )
        for k in range(len(engines) - 1):
            out, nxt = ios[k][f"feat{k}"], ios[k + 1][f"feat{k}"]
            if out.dtype != nxt.dtype or out.sample_shape != nxt.sample_shape:
                raise BundleError(
                    f"{self.bundle.root}: stage {k} writes feat{k} as {out.dtype} {out.sample_shape} but stage "
                    f"{k + 1} reads {nxt.dtype} {nxt.sample_shape}; rebuild the engines from one bundle"
                )
        self.max_batch = min(hi for _lo, hi in rows_range)
        if self.options.get("max_batch") is not None:
            wanted = int(self.options["max_batch"])
            if not 1 <= wanted <= self.max_batch:
                raise InputError(
                    f"max_batch {wanted}: the engines accept 1 to {self.max_batch} rows (rebuild with --batch to change)"
                )
            self.max_batch = wanted
        # Buffers, once, for the most rows any engine runs (padding may run more than max_batch).
        n = max(self.max_batch, *(lo for lo, _hi in rows_range))
        self._stream = self._own(cuda.create_stream())
        self._fetch_event = self._own(cuda.create_event(timing=False))
        if self.zero_copy:
            self._input_host = self._host((n, *first.sample_shape), first.dtype, mapped=True)
            self._input_ptr = int(self._input_host.device_ptr or 0)
        else:
            self._input_host = self._host((n, *first.sample_shape), first.dtype, mapped=False)
            self._input_ptr = self._device(n * first.row_bytes).ptr
        self._scratch = self._device(
            n * max(ios[k][self.bundle.stages[k]["inputs"][0]["name"]].row_bytes for k in range(len(engines)))
        )
        self._feat_ptrs = [self._device(n * ios[k][f"feat{k}"].row_bytes).ptr for k in range(len(engines) - 1)]
        for k, engine in enumerate(engines):
            meta = self.bundle.exits[k]
            context = self._context(engine, f"stage {k}")
            exit_out = self._output(ios[k][meta["output"]], n)
            conf_name = meta.get("confidence_output")
            conf = self._output(ios[k][conf_name], n) if conf_name and conf_name in ios[k] else None
            feat = ios[k][f"feat{k}"] if k < len(engines) - 1 else None
            input_tensor = ios[k][self.bundle.stages[k]["inputs"][0]["name"]]
            stage = _Stage(
                k,
                engine,
                context,
                input_tensor,
                feat,
                exit_out,
                conf,
                self._own(cuda.create_event()),
                self._own(cuda.create_event()),
                min_rows=rows_range[k][0],
                dynamic=int(engine.get_tensor_shape(input_tensor.name)[0]) < 0,
            )
            bound = {exit_out.tensor.name: exit_out.ptr}
            if conf is not None:
                bound[conf.tensor.name] = conf.ptr
            if feat is not None:
                bound[feat.name] = self._feat_ptrs[k]
            for name, t in ios[k].items():  # every output needs an address, even one nobody reads
                if name != stage.input.name and name not in bound:
                    bound[name] = self._device(n * t.row_bytes).ptr
            stage.bound = bound
            self._bind_outputs(context, stage)
            if self.cuda_graphs:
                stage.slots = [_Slot(context)]
            self._stages.append(stage)
        if loaded.full_engine is not None:
            self._full = self._setup_full(trt, loaded.full_engine, where, fix)
        if loaded.ingraph_engine is not None:
            self._ingraph = self._setup_ingraph(trt, loaded.ingraph_engine, where, fix)

    def _setup_ingraph(self, trt: Any, engine: Any, where: str, fix: str) -> _Ingraph:
        """Buffers and addresses for the in-graph engine, set once (its shapes are fixed: batch 1)."""
        from hisd_edge.runtime import ingraph

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        wanted = [ingraph.INPUT, ingraph.POLICY_KIND, ingraph.SCORE_THRESHOLDS, *ingraph.OUTPUTS]
        if sorted(names) != sorted(wanted):
            raise BundleError(f"{where}: the in-graph engine has tensors {names}, not {wanted}; {fix}")
        shapes = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in names}
        dtypes = {n: engine_tensor(trt, engine, n, f"{where} (in-graph)", fix).dtype for n in names}
        context = self._context(engine, "the in-graph early exit")
        mapped = self.zero_copy

        def staged(name: str) -> Tuple[HostBuffer, int]:
            host = self._host(shapes[name], dtypes[name], mapped=mapped)
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * np.dtype(dtypes[name]).itemsize
            return host, int(host.device_ptr or 0) if mapped else self._device(max(nbytes, 1)).ptr

        input_host, input_ptr = staged(ingraph.INPUT)
        policy_host, policy_ptr = staged(ingraph.POLICY_KIND)
        thresholds_host, thresholds_ptr = staged(ingraph.SCORE_THRESHOLDS)
        outputs = []
        for name in ingraph.OUTPUTS:
            host, ptr = staged(name)
            outputs.append(_Output(_Tensor(name, dtypes[name], shapes[name][1:]), ptr, host, mapped))
        for name, ptr in [
            (ingraph.INPUT, input_ptr),
            (ingraph.POLICY_KIND, policy_ptr),
            (ingraph.SCORE_THRESHOLDS, thresholds_ptr),
            *((o.tensor.name, o.ptr) for o in outputs),
        ]:
            is_input = name in (ingraph.INPUT, ingraph.POLICY_KIND, ingraph.SCORE_THRESHOLDS)
            if is_input and not context.set_input_shape(name, shapes[name]):
                raise DeviceError(f"TensorRT refused shape {shapes[name]} of {name} for the in-graph engine")
            if not context.set_tensor_address(name, ptr):
                raise DeviceError(f"TensorRT refused the address of {name} for the in-graph engine")
        return _Ingraph(
            engine, context, input_host, input_ptr, policy_host, policy_ptr, thresholds_host, thresholds_ptr, outputs
        )

    def ingraph_unavailable(self, policy: Any) -> Optional[str]:
        from hisd_edge.runtime import ingraph

        if self._ingraph is None:
            if not self.options.get("ingraph", False):
                return "the TensorRT backend runs the in-graph engine only when asked (ingraph=True)"
            return (self._loaded.ingraph_note if self._loaded is not None else "") or "no in-graph engine"
        precision = (
            str((self._loaded.record.get("ingraph") or {}).get("onnx_precision", "fp32")) if self._loaded else ""
        )
        return ingraph.usable_policy(self.bundle.manifest, precision, policy.kind)[1] or None

    def run_ingraph_impl(self, policy: Any) -> Tuple[np.ndarray, int, float]:
        """One frame: the input (and the policy when it changed) to the device, one enqueue, the three
        small outputs back, one synchronisation."""
        from hisd_edge.runtime import ingraph

        graph = self._ingraph
        assert graph is not None and self._cuda is not None and self._stream is not None
        assert self._input_host is not None and self._fetch_event is not None
        cuda, stream = self._cuda, self._stream
        np.copyto(graph.input_host.array, self._input_host.array[:1])
        if not self.zero_copy:
            cuda.copy_htod_async(graph.input_ptr, graph.input_host.array, stream)
        key = (policy, policy.score_thresholds())
        if graph.bound_policy is None or graph.bound_policy[0] is not key[0] or graph.bound_policy[1] != key[1]:
            code, thresholds = ingraph.feed(policy, self.num_stages)
            np.copyto(graph.policy_host.array, code.reshape(graph.policy_host.array.shape))
            np.copyto(graph.thresholds_host.array, thresholds.reshape(graph.thresholds_host.array.shape))
            if not self.zero_copy:
                cuda.copy_htod_async(graph.policy_ptr, graph.policy_host.array, stream)
                cuda.copy_htod_async(graph.thresholds_ptr, graph.thresholds_host.array, stream)
            graph.bound_policy = key
        if not graph.context.execute_async_v3(stream.handle):
            raise DeviceError("TensorRT could not run the in-graph early-exit engine")
        for out in graph.outputs:
            if not out.mapped:
                cuda.copy_dtoh_async(out.host.array, out.ptr, stream)
        self._fetch_event.record(stream)
        self._fetch_event.synchronize()
        logits, index, score = (o.host.array for o in graph.outputs)
        return np.array(logits, dtype=np.float32), int(index.reshape(-1)[0]), float(score.reshape(-1)[0])

    def _context(self, engine: Any, what: str) -> Any:
        context = engine.create_execution_context()
        if context is None:
            raise DeviceError(f"TensorRT could not create an execution context for {what} (out of device memory?)")
        return context

    def _bind_outputs(self, context: Any, stage: _Stage) -> None:
        for name, ptr in stage.bound.items():
            if not context.set_tensor_address(name, ptr):
                raise DeviceError(f"TensorRT refused the address of {name} for stage {stage.index}")

    def _setup_full(self, trt: Any, engine: Any, where: str, fix: str) -> _Full:
        """Buffers for the monolithic engine: its input and every exit output, at the maximum batch."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        exits = [e["output"] for e in self.bundle.exits]
        missing = [name for name in exits if name not in names]
        if len(inputs) != 1 or missing:
            raise BundleError(f"{where}: the full-model engine has inputs {inputs} and lacks outputs {missing}; {fix}")
        tensors = {name: engine_tensor(trt, engine, name, f"{where} (full model)", fix) for name in names}
        lo, hi = profile_rows(engine, inputs[0])
        n = max(self.max_batch, lo)
        context = self._context(engine, "the full model")
        if self.zero_copy:
            host = self._host((n, *tensors[inputs[0]].sample_shape), tensors[inputs[0]].dtype, mapped=True)
            input_ptr = int(host.device_ptr or 0)
        else:
            host = self._host((n, *tensors[inputs[0]].sample_shape), tensors[inputs[0]].dtype, mapped=False)
            input_ptr = self._device(n * tensors[inputs[0]].row_bytes).ptr
        outputs = [self._output(tensors[name], n) for name in exits]
        bound = {o.tensor.name: o.ptr for o in outputs}
        for name, t in tensors.items():
            if name != inputs[0] and name not in bound:
                bound[name] = self._device(n * t.row_bytes).ptr
        for name, ptr in [*bound.items(), (inputs[0], input_ptr)]:
            if not context.set_tensor_address(name, ptr):
                raise DeviceError(f"TensorRT refused the address of {name} for the full model")
        return _Full(engine, context, tensors[inputs[0]], input_ptr, host, outputs, lo, hi)

    def _own(self, obj: Any) -> Any:
        self._allocations.append(obj)
        return obj

    def _device(self, nbytes: int) -> DeviceBuffer:
        assert self._cuda is not None
        try:
            return self._own(self._cuda.alloc_device(nbytes))
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise self._out_of_memory("device", nbytes) from None
            raise

    def _host(self, shape: Tuple[int, ...], dtype: Any, mapped: bool) -> HostBuffer:
        assert self._cuda is not None
        try:
            return self._own(self._cuda.alloc_host(shape, dtype, mapped=mapped))
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise self._out_of_memory(
                    "mapped host" if mapped else "pinned host",
                    int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize,
                ) from None
            raise

    def _out_of_memory(self, kind: str, nbytes: int) -> DeviceError:
        """The one-line error for a buffer that did not fit: how much, what is free, and the fix."""
        free = ""
        try:
            info = self._cuda.memory_info() if self._cuda is not None else None
        except Exception:
            info = None
        if info is not None:
            free = f" ({info[0] / _MIB:.0f} MiB of {info[1] / _MIB:.0f} MiB free)"
        if self.max_batch > 1:
            fix = f"use max_batch={max(1, self.max_batch // 2)} or rebuild with a smaller --batch"
        else:
            fix = "close other GPU programs to free memory"
        return DeviceError(
            f"TensorRT backend: out of {kind} memory allocating {nbytes / _MIB:.1f} MiB for "
            f"{self.max_batch}-row buffers{free}; {fix}"
        )

    def _output(self, tensor: _Tensor, n: int) -> _Output:
        shape = (n, *tensor.sample_shape)
        if self.zero_copy:
            host = self._host(shape, tensor.dtype, mapped=True)
            return _Output(tensor, int(host.device_ptr or 0), host, True)
        return _Output(
            tensor, self._device(n * tensor.row_bytes).ptr, self._host(shape, tensor.dtype, mapped=False), False
        )

    def deactivate_impl(self) -> None:
        for stage in self._stages:
            for slot in stage.slots:
                if slot.graph is not None:
                    slot.graph.free()
        self._uncapturable = collections.OrderedDict()
        self._feat_hosts = {}
        self._stages = []  # contexts before engines before the runtime
        self._full = None
        self._ingraph = None
        self._loaded = None
        while self._allocations:
            try:
                self._allocations.pop().free()
            except Exception:
                pass
        if self._cuda is not None and self._owns_cuda:
            self._cuda.close()
        self._cuda, self._owns_cuda, self._stream = None, False, None

    def describe_impl(self) -> Dict[str, Any]:
        record = self._loaded.record if self._loaded is not None else {}
        device = self._cuda.device.to_dict() if self._cuda is not None else None
        return {
            "tensorrt_version": record.get("tensorrt_version"),
            "cuda_binding": self._cuda.name if self._cuda else None,
            "device": device,
            "zero_copy": self.zero_copy,
            "cuda_graphs": self.cuda_graphs,
            "graph_slots": self.graph_slots if self.cuda_graphs else 0,
            "max_batch": self.max_batch,
            "min_rows": [s.min_rows for s in self._stages],
            "padded_runs": self.padded_runs,
            "engine_precision": record.get("precision"),
            "stage_precisions": [s.get("precision", record.get("precision")) for s in record.get("stages", [])],
            "typing": record.get("recipe", {}).get("typing"),
            "external": bool(record.get("external", False)),
            "full_model": self.full_model_label,
            "ingraph": "loaded" if self._ingraph is not None else (self._loaded.ingraph_note if self._loaded else None),
        }

    def memory_info(self) -> Dict[str, int]:
        """Memory this backend holds, in bytes (for ``hisd-edge profile``; keys carry their units).

        Per stage (``stage<k>_...``) and in total: ``device_memory_bytes`` (the scratch TensorRT
        allocates per execution context, from the build record), ``weights_bytes`` (TensorRT 10.14+
        records it; absent otherwise) and ``plan_bytes`` (the engine file); then the I/O buffers this
        backend allocated (``device_buffers_bytes``, pinned or mapped ``host_buffers_bytes``) and CUDA's
        ``cuda_free_bytes`` / ``cuda_total_bytes`` where the binding tells (on a Jetson: shared DRAM).
        With CUDA graphs each extra graph slot is one more context and its scratch:
        ``graph_contexts_device_memory_bytes`` adds them up.
        """
        from hisd_edge.cuda.api import DeviceBuffer, HostBuffer

        self._check_active()
        assert self._loaded is not None and self._cuda is not None
        record = self._loaded.record
        info: Dict[str, int] = {}
        plan_sizes = {
            int(f["stage"]): int(f["bytes"]) for f in record.get("files", []) if f.get("kind", "plan") == "plan"
        }
        totals: Dict[str, List[int]] = {"device_memory_bytes": [], "weights_bytes": [], "plan_bytes": []}
        for stage in sorted(record.get("stages", []), key=lambda s: int(s["index"])):
            k = int(stage["index"])
            figures = {
                "device_memory_bytes": stage.get("device_memory_bytes"),
                "weights_bytes": stage.get("weights_bytes"),
                "plan_bytes": plan_sizes.get(k),
            }
            for name, value in figures.items():
                if value is not None:
                    info[f"stage{k}_{name}"] = int(value)
                    totals[name].append(int(value))
        for name, values in totals.items():
            if values and len(values) == self.num_stages:  # a total only where every stage is known
                info[name] = sum(values)
        info["device_buffers_bytes"] = sum(int(a.nbytes) for a in self._allocations if isinstance(a, DeviceBuffer))
        info["host_buffers_bytes"] = sum(int(a.nbytes) for a in self._allocations if isinstance(a, HostBuffer))
        if self.cuda_graphs:
            scratch = {int(s["index"]): int(s.get("device_memory_bytes") or 0) for s in record.get("stages", [])}
            info["graph_contexts_device_memory_bytes"] = sum(
                scratch.get(stage.index, 0) * max(0, len(stage.slots) - 1) for stage in self._stages
            )
        try:
            cuda_memory = self._cuda.memory_info()
        except Exception:
            cuda_memory = None
        if cuda_memory is not None:
            info["cuda_free_bytes"], info["cuda_total_bytes"] = int(cuda_memory[0]), int(cuda_memory[1])
        return info

    # -- running -------------------------------------------------------------------------------
    def start_impl(self, batch: np.ndarray) -> None:
        rows = int(batch.shape[0])
        if rows > self.max_batch:
            raise InputError(
                f"a batch of {rows} rows is more than the TensorRT engines take ({self.max_batch}); feed at most "
                f"{self.max_batch} rows at a time or rebuild with hisd-edge build --batch 1,{min(rows, 8)},{rows}"
            )
        assert self._input_host is not None and self._cuda is not None and self._stream is not None
        view = self._input_host.array[:rows]
        np.copyto(view, batch, casting="same_kind" if batch.dtype == view.dtype else "unsafe")
        if not self.zero_copy:
            self._cuda.copy_htod_async(self._input_ptr, view, self._stream)
        self._held_ptr, self._held_count = self._input_ptr, rows

    def _gather(self, src_ptr: int, dst_ptr: int, rows: np.ndarray, row_bytes: int) -> None:
        assert self._cuda is not None and self._stream is not None
        for src_row, dst_row, count in row_runs(rows):
            self._cuda.copy_dtod_async(
                dst_ptr + dst_row * row_bytes, src_ptr + src_row * row_bytes, count * row_bytes, self._stream
            )

    def _enqueue(self, stage: _Stage, context: Any, rows: int) -> bool:
        assert self._cuda is not None and self._stream is not None
        if not context.execute_async_v3(self._stream.handle):
            return False
        if stage.conf is not None and not stage.conf.mapped:
            self._cuda.copy_dtoh_async(stage.conf.host.array[:rows], stage.conf.ptr, self._stream)
        return True

    def _setup(self, stage: _Stage, context: Any, run_rows: int, src: int) -> None:
        if not context.set_input_shape(stage.input.name, (run_rows, *stage.input.sample_shape)):
            raise DeviceError(
                f"TensorRT refused input shape {(run_rows, *stage.input.sample_shape)} for stage {stage.index}"
            )
        if not context.set_tensor_address(stage.input.name, src):
            raise DeviceError(f"TensorRT refused the input address for stage {stage.index}")

    def _failed(self, stage: _Stage, rows: int) -> DeviceError:
        errors = "; ".join(self._loaded.logger.errors()[-2:]) if self._loaded is not None else ""
        return DeviceError(f"TensorRT could not run stage {stage.index} on {rows} rows ({errors or 'no reason given'})")

    def _slot_for(self, stage: _Stage, key: Tuple[int, int]) -> Tuple[_Slot, bool]:
        """The slot already set up for ``key``, else a new or least recently used one (its graph
        dropped). Returns (slot, fresh: it must be set up and run plainly once)."""
        self._clock += 1
        for slot in stage.slots:
            if slot.key == key:
                slot.last_used = self._clock
                return slot, False
        # TensorRT 8.5 gives an optimization profile to one execution context only
        assert self._loaded is not None
        shared_profiles = self._loaded.features.builder_optimization_level or not stage.dynamic
        if len(stage.slots) < self.graph_slots and shared_profiles:
            assert self._stream is not None
            context = self._context(stage.engine, f"stage {stage.index}")
            if stage.dynamic:
                context.set_optimization_profile_async(0, self._stream.handle)
            self._bind_outputs(context, stage)
            slot = _Slot(context)
            stage.slots.append(slot)
        else:
            slot = min(stage.slots, key=lambda s: s.last_used)
            if slot.graph is not None:
                slot.graph.free()
                slot.graph = None
        slot.key, slot.last_used = key, self._clock
        return slot, True

    def _run_with_graphs(self, stage: _Stage, rows: int, run_rows: int, src: int) -> None:
        """The stage's work through its graph slots (see the module docstring)."""
        assert self._cuda is not None and self._stream is not None
        key = (run_rows, src)
        slot, fresh = self._slot_for(stage, key)
        if fresh:  # the first run of a key on its context: plain, so TensorRT sets up outside a capture
            self._setup(stage, slot.context, run_rows, src)
            if not self._enqueue(stage, slot.context, rows):
                raise self._failed(stage, rows)
            return
        marker = (stage.index, run_rows, src)
        if slot.graph is None and marker not in self._uncapturable:
            self._cuda.begin_capture(self._stream)
            graph: Optional[Graph] = None
            try:
                captured = self._enqueue(stage, slot.context, rows)
            finally:
                try:
                    graph = self._cuda.end_capture(self._stream)
                except Exception:
                    graph, captured = None, False
            if captured and graph is not None:
                slot.graph = graph
            else:
                if graph is not None:
                    graph.free()
                self._uncapturable[marker] = None
                while len(self._uncapturable) > _UNCAPTURABLE_KEPT:
                    self._uncapturable.popitem(last=False)
        if slot.graph is not None:
            slot.graph.launch(self._stream)
        elif not self._enqueue(stage, slot.context, rows):
            raise self._failed(stage, rows)

    def run_stage_impl(self, k: int, keep_rows: Optional[np.ndarray]) -> StageResult:
        assert self._cuda is not None and self._stream is not None and self._scratch is not None
        stage = self._stages[k]
        src, rows = self._held_ptr, self._held_count
        stage.start.record(self._stream)
        if keep_rows is not None:
            self._gather(src, self._scratch.ptr, keep_rows, stage.input.row_bytes)
            src, rows = self._scratch.ptr, len(keep_rows)
        run_rows = max(rows, stage.min_rows)  # rows past `rows` are padding: computed, never read
        if run_rows > rows:
            self.padded_runs += 1
        if self.cuda_graphs:
            self._run_with_graphs(stage, rows, run_rows, src)
        else:
            self._setup(stage, stage.context, run_rows, src)
            if not self._enqueue(stage, stage.context, rows):
                raise self._failed(stage, rows)
        stage.end.record(self._stream)
        stage.end.synchronize()  # the one wait per stage: for the confidences, not for the whole device
        latency_ms = stage.end.elapsed_ms(stage.start)
        self._held_ptr = self._feat_ptrs[k] if stage.feat is not None else 0
        self._held_count = rows

        fetch = self._fetcher(stage.exit, rows)
        confidence: Optional[np.ndarray] = None
        if stage.conf is not None:
            confidence = np.array(stage.conf.host.array[:rows], dtype=np.float32).reshape(-1)
        elif self.bundle.exits[k].get("kind", "logits") == "logits":
            confidence = softmax_max(fetch(None))  # no fused confidence in this bundle: all logits come back
        result = StageResult(k, rows, confidence, latency_ms, fetch)
        if stage.feat is not None:
            result.fetch_pooled_features = lambda: self._pooled_features(stage, rows)
        return result

    def _pooled_features(self, stage: _Stage, rows: int) -> np.ndarray:
        """Copy ``feat{k}`` of ``rows`` rows to a pinned host buffer (made on first use) and pool it
        there: for the input guard, once per batch at exit 0."""
        assert stage.feat is not None and self._cuda is not None and self._stream is not None
        assert self._fetch_event is not None
        host = self._feat_hosts.get(stage.index)
        if host is None:
            host = self._feat_hosts[stage.index] = self._host(
                (self.max_batch, *stage.feat.sample_shape), stage.feat.dtype, mapped=False
            )
        self._cuda.copy_dtoh_async(host.array[:rows], self._feat_ptrs[stage.index], self._stream)
        self._fetch_event.record(self._stream)
        self._fetch_event.synchronize()
        return pool_features(host.array[:rows])

    def run_full_impl(self, batch: np.ndarray) -> FullResult:
        """The monolithic engine on ``batch``; without one, every stage in turn (no early exit)."""
        if self._full is None:
            self.start(batch)
            outputs = [self.run_stage(k).exit_output(None) for k in range(self.num_stages)]
            self._next_stage = None  # no batch in progress afterwards
            return FullResult(outputs=[np.array(o, dtype=np.float32) for o in outputs], latency_ms=float("nan"))
        assert self._cuda is not None and self._stream is not None and self._fetch_event is not None
        full = self._full
        rows = len(batch)
        if rows > full.max_rows:
            raise InputError(
                f"a batch of {rows} rows is more than the full-model engine takes ({full.max_rows}); feed at most "
                f"{full.max_rows} rows at a time"
            )
        view = full.input_host.array[:rows]
        np.copyto(view, batch, casting="same_kind" if batch.dtype == view.dtype else "unsafe")
        if not self.zero_copy:
            self._cuda.copy_htod_async(full.input_ptr, view, self._stream)
        run_rows = max(rows, full.min_rows)
        if not full.context.set_input_shape(full.input.name, (run_rows, *full.input.sample_shape)):
            raise DeviceError(f"TensorRT refused input shape {(run_rows, *full.input.sample_shape)} for the full model")
        if not full.context.execute_async_v3(self._stream.handle):
            raise DeviceError("TensorRT could not run the full model")
        for out in full.outputs:
            if not out.mapped:
                self._cuda.copy_dtoh_async(out.host.array[:rows], out.ptr, self._stream)
        self._fetch_event.record(self._stream)
        self._fetch_event.synchronize()
        return FullResult(
            outputs=[np.array(o.host.array[:rows], dtype=np.float32) for o in full.outputs], latency_ms=float("nan")
        )

    def _fetcher(self, out: _Output, rows: int) -> Any:
        """Reads this stage's exit output buffer. Results of an earlier batch never get here:
        :meth:`StageResult.exit_output` refuses them (the base class's batch id)."""

        def fetch(which: Optional[np.ndarray]) -> np.ndarray:
            if not self.is_active:
                raise RuntimeError(
                    "exit outputs are only available while the backend is active; fetch them before deactivate()"
                )
            assert self._cuda is not None and self._stream is not None and self._fetch_event is not None
            index = np.arange(rows) if which is None else np.asarray(which, dtype=np.int64).reshape(-1)
            if out.mapped:  # zero-copy: the engine wrote straight into this host memory
                return np.array(out.host.array[:rows][index], dtype=np.float32)
            staging = out.host.array
            row_bytes = out.tensor.row_bytes
            for src_row, dst_row, count in row_runs(index):
                self._cuda.copy_dtoh_async(
                    staging[dst_row : dst_row + count], out.ptr + src_row * row_bytes, self._stream
                )
            self._fetch_event.record(self._stream)
            self._fetch_event.synchronize()
            return np.array(staging[: len(index)], dtype=np.float32)

        return fetch
