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
* **Optional CUDA graphs** per stage (``cuda_graphs=True``): a graph fixes shapes, addresses and
  what TensorRT staged for them, so a stage's graph is captured on the second consecutive run with
  the same (rows, input address) (the first lets TensorRT set up, as trtexec does) and replayed
  while that stays the same: steady streams (batch 1 video, fixed batches where nobody exits)
  benefit; batches whose exits vary from one to the next run without graphs.

Options: ``cuda`` ("auto", "pycuda", "cuda-python" or a :class:`~hisd_edge.cuda.CudaBackend`),
``device`` (CUDA device index), ``zero_copy`` ("auto", True, False), ``cuda_graphs`` (False),
``spin_wait`` (False: lowest wake-up latency at the cost of a busy CPU), ``max_batch`` (default:
the engines' profile maximum).

I/O buffers are allocated once, at the maximum batch; running out of memory there is a one-line
DeviceError suggesting a smaller ``max_batch``. :meth:`TensorRTBackend.memory_info` reports what
the engines and buffers take (``hisd-edge profile`` records it).

The scratch memory TensorRT needs per context is allocated by TensorRT itself (one per stage);
sharing one scratch buffer across the stages (USER_MANAGED contexts) is left for later.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

import numpy as np

from hisd_edge.errors import BundleError, DeviceError, InputError
from hisd_edge.runtime.backend import Backend, StageResult, pool_features, softmax_max

if TYPE_CHECKING:
    import tensorrt as trt

    from hisd_edge.cuda.api import CudaBackend, DeviceBuffer, Event, Graph, HostBuffer, Stream
    from hisd_edge.engine.loader import LoadedEngines


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


class TensorRTBackend(Backend):
    """Runs a bundle's TensorRT engines (built on this device with ``hisd-edge build``)."""

    name = "tensorrt"

    def __init__(self, bundle: Any, precision: str = "fp16", **options: Any):
        super().__init__(bundle, precision, **options)
        self._cuda: Optional[CudaBackend] = None
        self._owns_cuda = False
        self._loaded: Optional[LoadedEngines] = None
        self._stages: List[_Stage] = []
        self._allocations: List[Any] = []
        self._graphs: Dict[int, Tuple[Tuple[int, int], Graph]] = {}  # stage -> ((rows, input address), graph)
        self._last_key: Dict[int, Tuple[int, int]] = {}
        self._uncapturable: Set[Tuple[int, int, int]] = set()
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
        self.max_batch = 0

    # -- lifetime ------------------------------------------------------------------------------
    def check_precision(self) -> None:
        """Engines, not stage ONNX files, are what runs: a weakly typed "fp16" build comes from the fp32
        ONNX, so the bundle need not hold fp16 files. Which builds exist for this device and TensorRT
        version is checked (with the build command to run) when the engines are loaded."""
        from hisd_edge.bundle import PRECISIONS

        if self.precision not in PRECISIONS:
            raise InputError(
                f"precision {self.precision!r}: TensorRT engines are built as {', '.join(PRECISIONS)}; "
                f"pick one of those with --precision"
            )

    def activate_impl(self) -> None:
        from hisd_edge.cuda import CudaBackend, open_cuda
        from hisd_edge.engine.features import dims_to_tuple, import_tensorrt
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
        self._loaded = loaded = load_engines(self.bundle, self.precision, cuda.device)
        import tensorrt as trt

        zero_copy = self.options.get("zero_copy", "auto")
        self.zero_copy = cuda.zero_copy_preferred if zero_copy == "auto" else bool(zero_copy)
        if self.zero_copy and not cuda.device.can_map_host_memory:
            raise InputError(f"zero_copy: {cuda.device.name} cannot map host memory; use zero_copy='auto' or False")

        def tensor(engine: trt.ICudaEngine, name: str) -> _Tensor:
            dims = dims_to_tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in dims[1:]):
                raise BundleError(
                    f"{self.bundle.root}: engine tensor {name} has dynamic dimensions besides the batch {dims}; "
                    f"rebuild with hisd-edge build"
                )
            return _Tensor(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), dims[1:])

        # Discover and check every stage's I/O against the manifest and the chain.
        engines = loaded.engines
        ios = []
        profile_max = []
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
            ios.append({n: tensor(engine, n) for n in names})
            dims = dims_to_tuple(engine.get_tensor_shape(want_in))
            if dims[0] >= 0:
                profile_max.append(dims[0])
            else:
                profile_max.append(dims_to_tuple(engine.get_tensor_profile_shape(want_in, 0)[2])[0])
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
        self.max_batch = min(profile_max)
        if self.options.get("max_batch") is not None:
            wanted = int(self.options["max_batch"])
            if not 1 <= wanted <= self.max_batch:
                raise InputError(
                    f"max_batch {wanted}: the engines accept 1 to {self.max_batch} rows (rebuild with --batch to change)"
                )
            self.max_batch = wanted

        # Buffers, once, at the maximum batch.
        n = self.max_batch
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
            context = engine.create_execution_context()
            if context is None:
                raise DeviceError(
                    f"TensorRT could not create an execution context for stage {k} (out of device memory?)"
                )
            exit_out = self._output(ios[k][meta["output"]], n)
            conf_name = meta.get("confidence_output")
            conf = self._output(ios[k][conf_name], n) if conf_name and conf_name in ios[k] else None
            feat = ios[k][f"feat{k}"] if k < len(engines) - 1 else None
            stage = _Stage(
                k,
                engine,
                context,
                ios[k][self.bundle.stages[k]["inputs"][0]["name"]],
                feat,
                exit_out,
                conf,
                self._own(cuda.create_event()),
                self._own(cuda.create_event()),
            )
            bound = {exit_out.tensor.name: exit_out.ptr}
            if conf is not None:
                bound[conf.tensor.name] = conf.ptr
            if feat is not None:
                bound[feat.name] = self._feat_ptrs[k]
            for name, t in ios[k].items():  # every output needs an address, even one nobody reads
                if name != stage.input.name and name not in bound:
                    bound[name] = self._device(n * t.row_bytes).ptr
            for name, ptr in bound.items():
                if not context.set_tensor_address(name, ptr):
                    raise DeviceError(f"TensorRT refused the address of {name} for stage {k}")
            self._stages.append(stage)

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
        for _, graph in self._graphs.values():
            graph.free()
        self._graphs, self._last_key, self._uncapturable = {}, {}, set()
        self._feat_hosts = {}
        self._stages = []  # contexts before engines before the runtime
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
            "max_batch": self.max_batch,
            "engine_precision": record.get("precision"),
            "typing": record.get("recipe", {}).get("typing"),
        }

    def memory_info(self) -> Dict[str, int]:
        """Memory this backend holds, in bytes (for ``hisd-edge profile``; keys carry their units).

        Per stage (``stage<k>_...``) and in total: ``device_memory_bytes`` (the scratch TensorRT
        allocates per execution context, from the build record), ``weights_bytes`` (TensorRT 10.14+
        records it; absent otherwise) and ``plan_bytes`` (the engine file); then the I/O buffers this
        backend allocated (``device_buffers_bytes``, pinned or mapped ``host_buffers_bytes``) and CUDA's
        ``cuda_free_bytes`` / ``cuda_total_bytes`` where the binding tells (on a Jetson: shared DRAM).
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

    def _enqueue(self, stage: _Stage, rows: int) -> bool:
        assert self._cuda is not None and self._stream is not None
        if not stage.context.execute_async_v3(self._stream.handle):
            return False
        if stage.conf is not None and not stage.conf.mapped:
            self._cuda.copy_dtoh_async(stage.conf.host.array[:rows], stage.conf.ptr, self._stream)
        return True

    def _run_enqueue(self, stage: _Stage, rows: int, src: int) -> None:
        """The stage's work on the stream: a graph launch where one is valid, else a plain enqueue.

        A graph bakes in the shapes and addresses *and* whatever TensorRT staged for them at
        enqueue time, so a stage's graph is only replayed while the context keeps running the
        same (rows, input address); any other combination drops it. It is captured on the second
        consecutive run of a combination: the first, plain run lets TensorRT finish its setup
        (trtexec does the same before capturing).
        """
        assert self._cuda is not None and self._stream is not None
        k, key = stage.index, (rows, src)
        current = self._graphs.get(k)
        if current is not None and current[0] != key:
            current[1].free()
            del self._graphs[k]
            current = None
        if (
            current is None
            and self.cuda_graphs
            and self._last_key.get(k) == key
            and (k, rows, src) not in self._uncapturable
        ):
            self._cuda.begin_capture(self._stream)
            graph: Optional[Graph] = None
            try:
                captured = self._enqueue(stage, rows)
            finally:
                try:
                    graph = self._cuda.end_capture(self._stream)
                except Exception:
                    graph, captured = None, False
            if captured and graph is not None:
                current = self._graphs[k] = (key, graph)
            else:
                if graph is not None:
                    graph.free()
                self._uncapturable.add((k, rows, src))
        self._last_key[k] = key
        if current is not None:
            current[1].launch(self._stream)
            return
        if not self._enqueue(stage, rows):
            errors = "; ".join(self._loaded.logger.errors()[-2:]) if self._loaded is not None else ""
            raise DeviceError(
                f"TensorRT could not run stage {stage.index} on {rows} rows ({errors or 'no reason given'})"
            )

    def run_stage_impl(self, k: int, keep_rows: Optional[np.ndarray]) -> StageResult:
        assert self._cuda is not None and self._stream is not None and self._scratch is not None
        stage = self._stages[k]
        src, rows = self._held_ptr, self._held_count
        stage.start.record(self._stream)
        if keep_rows is not None:
            self._gather(src, self._scratch.ptr, keep_rows, stage.input.row_bytes)
            src, rows = self._scratch.ptr, len(keep_rows)
        context = stage.context
        if not context.set_input_shape(stage.input.name, (rows, *stage.input.sample_shape)):
            raise DeviceError(f"TensorRT refused input shape {(rows, *stage.input.sample_shape)} for stage {k}")
        if not context.set_tensor_address(stage.input.name, src):
            raise DeviceError(f"TensorRT refused the input address for stage {k}")
        self._run_enqueue(stage, rows, src)
        stage.end.record(self._stream)
        stage.end.synchronize()  # the one wait per stage: for the confidences, not for the whole device
        latency_ms = stage.end.elapsed_ms(stage.start)
        self._held_ptr = self._feat_ptrs[k] if stage.feat is not None else 0
        self._held_count = rows

        fetch = self._fetcher(stage, rows)
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

    def _fetcher(self, stage: _Stage, rows: int) -> Any:
        """Reads this stage's exit output buffer. Results of an earlier batch never get here:
        :meth:`StageResult.exit_output` refuses them (the base class's batch id)."""
        out = stage.exit

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
