"""Build one TensorRT engine per bundle stage, on the target, and store them in the bundle.

The work, in order (nothing in the bundle changes until every stage has built):

1. detect the TensorRT API generation (:mod:`~hisd_edge.engine.features`) and choose the recipe
   (:mod:`~hisd_edge.engine.recipe`);
2. parse every stage's ONNX first and report *all* parser errors, per stage, in one message;
3. build each stage: explicit-batch / strongly typed network as the recipe says, one
   optimization profile over the dynamic batch (min 1, opt, max: every row count from 1 to max
   runs), a workspace limit, the persisted timing cache (tied to device and version like the
   plans), the confidence head pinned to fp32 in weakly typed fp16 recipes, DLA with GPU fallback
   on one fixed batch (DLA takes no dynamic shapes) with the layers TensorRT cannot place on the
   DLA recorded, and the legacy calibration-cache calibrator where asked;
4. build the monolithic full model too where it can have the stages' precision (an fp32-ONNX
   recipe), so ``bench`` and ``evaluate`` compare against it on the target;
5. read each plan back to record its I/O tensors and scratch memory;
6. publish plans + build record (:func:`hisd_edge.engine.store.publish`), then save the timing cache
   (best effort: its path is checked before building; a failed save is a logged warning).

``--precision mixed`` builds each stage at the precision ``convert --precision mixed`` planned for
it (the manifest's ``mixed_precision``), each with its own recipe, under one "mixed" record;
``dla_stages`` puts only some stages on the DLA. :func:`plan_build` does all the choosing without
TensorRT (``build --dry-run --trt GEN``).

Build failures become one-line :class:`EngineBuildError` messages: parser errors per stage; out of
memory with workspace advice; anything else with TensorRT's own error lines.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from hisd_edge import atomic
from hisd_edge.bundle import Bundle
from hisd_edge.cuda.api import CudaBackend
from hisd_edge.engine.features import (
    TrtFeatures,
    detect_features,
    dims_to_tuple,
    dtype_name,
    engine_device_memory_bytes,
    engine_weights_bytes,
    import_tensorrt,
    numpy_dtype,
)
from hisd_edge.engine.head import head_pairs, pin_head_to_fp32
from hisd_edge.engine.recipe import BuildRecipe, choose_recipe
from hisd_edge.engine.store import default_timing_cache, engine_dir, engine_path, new_record, publish
from hisd_edge.engine.trtexec import render_trtexec
from hisd_edge.errors import BundleError, HisdError, InputError

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

DEFAULT_BATCH = (1, 8, 32)
_OOM = re.compile(
    r"out of memory|could not be allocated|insufficient (?:device |gpu )?memory|OutOfMemory|"
    r"cudaErrorMemoryAllocation|failed to allocate",
    re.IGNORECASE,
)


class EngineBuildError(HisdError):
    """TensorRT refused to build (parser errors, out of memory, unsupported layers, ...)."""


@dataclasses.dataclass
class BuildOptions:
    """What ``hisd-edge build`` was asked for."""

    precision: str = "fp16"  # fp32 | fp16 | int8 | best | mixed (the per-stage plan of convert --precision mixed)
    # min, opt, max of the dynamic batch. None: 1,8,32 on the GPU; a fixed batch of 1 on the DLA.
    batch: Optional[Tuple[int, int, int]] = None
    workspace_mib: Optional[int] = None  # None: TensorRT's default (the device's memory)
    dla_core: Optional[int] = None
    dla_stages: Optional[Tuple[int, ...]] = None  # with dla_core: the stages to put on it (None: all)
    timing_cache: Optional[str] = None  # None: <bundle>/engines/<device>/trt-<ver>/timing.cache
    legacy_int8: bool = False
    optimization_level: Optional[int] = None  # builder_optimization_level 0-5 (TensorRT 8.6+)
    full_model: bool = True  # also build the monolithic model where it can match the stages' precision
    ingraph: bool = True  # also build the bundle's in-graph early exit (one engine, IIfConditional) where it can
    progress: bool = True

    def validate(self) -> None:
        if self.batch is not None:
            lo, opt, hi = self.batch
            if not 1 <= lo <= opt <= hi:
                raise InputError(f"--batch {lo},{opt},{hi}: need 1 <= MIN <= OPT <= MAX, e.g. --batch 1,8,32")
            if self.dla_core is None and lo > 1:
                raise InputError(
                    f"--batch {lo},{opt},{hi}: the minimum must be 1, because the runtime runs every row count from 1 "
                    f"to MAX (a single frame, the rows left after an exit, the last partial chunk); e.g. --batch 1,{opt},{hi}"
                )
            if self.dla_core is not None and opt != hi:
                raise InputError(
                    f"--batch {lo},{opt},{hi} with --dla-core: DLA takes no dynamic shapes (layers would silently run on "
                    f"the GPU); give one fixed batch, e.g. --batch {opt} (fewer rows are padded to it)"
                )
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise InputError(
                f"--workspace-mib {self.workspace_mib}: give a positive number of MiB, e.g. --workspace-mib 512"
            )
        if self.dla_core is not None and self.dla_core < 0:
            raise InputError(f"--dla-core {self.dla_core}: DLA cores are numbered from 0")
        if self.dla_stages is not None and self.dla_core is None:
            raise InputError("--dla-stages needs --dla-core N (the DLA core to put those stages on)")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise InputError(f"--opt-level {self.optimization_level}: TensorRT's builder optimization level is 0 to 5")

    def on_dla(self, stage: int) -> bool:
        return self.dla_core is not None and (self.dla_stages is None or stage in self.dla_stages)

    def stage_batch(self, stage: int, num_stages: int) -> Tuple[int, int, int]:
        """The optimization profile of ``stage``: min 1 on the GPU; one fixed size on the DLA (and then
        the GPU stages of the same chain stop at that size too: no more rows ever reach them)."""
        if not any(self.on_dla(k) for k in range(num_stages)):
            return self.batch or DEFAULT_BATCH
        fixed = self.batch[2] if self.batch is not None else 1
        return (fixed, fixed, fixed) if self.on_dla(stage) else (1, fixed, fixed)


@dataclasses.dataclass
class BuildResult:
    record: Dict[str, Any]  # the build record as stored in the manifest
    recipe: BuildRecipe  # stage 0's (every stage's, unless --precision mixed or --dla-stages)
    trtexec: List[str]  # the equivalent trtexec command, one per stage (then the full model's, if built)
    timing_cache: str
    seconds: float
    recipes: List[BuildRecipe] = dataclasses.field(default_factory=list)  # per stage


def parse_batch(text: str) -> Tuple[int, int, int]:
    """``"1,8,32"`` -> (1, 8, 32); a single number N means 1,N,N."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--batch {text!r}: give MIN,OPT,MAX as integers, e.g. --batch 1,8,32") from None
    if len(values) == 1:
        values = [1, values[0], values[0]]
    if len(values) != 3:
        raise InputError(f"--batch {text!r}: give MIN,OPT,MAX as integers, e.g. --batch 1,8,32")
    return values[0], values[1], values[2]


# -- TensorRT objects -------------------------------------------------------------------------------
def make_logger(verbose: bool = False, keep: int = 32) -> Any:
    """A TensorRT logger that keeps the last ``keep`` errors (to quote them) and forwards to ``logging``.

    Severity-filtered and bounded: TensorRT calls ``log`` for every message it has, VERBOSE
    included, and a Python logger cannot stop that crossing; below WARNING (INFO and VERBOSE
    unless ``verbose``) a message is dropped at once, and what is kept sits in fixed-size deques,
    so a long-lived runtime logger does not grow. The ILogger subclass is defined here, not at
    module level, so importing this module never imports TensorRT.
    """
    import tensorrt as trt

    severity = trt.ILogger.Severity
    error_levels = (int(severity.INTERNAL_ERROR), int(severity.ERROR))
    threshold = int(severity.VERBOSE if verbose else severity.WARNING)

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.error_messages: collections.deque = collections.deque(maxlen=keep)
            self.other_messages: collections.deque = collections.deque(maxlen=keep)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = int(severity)
            if level > threshold:
                return
            if level in error_levels:
                self.error_messages.append(msg)
                log.debug("TensorRT error: %s", msg)
            else:
                self.other_messages.append(msg)
                log.debug("TensorRT: %s", msg)

        def errors(self) -> List[str]:
            return [" ".join(m.split()) for m in self.error_messages]

        def clear(self) -> None:
            self.error_messages.clear()
            self.other_messages.clear()

    return CapturingLogger()


def make_cache_calibrator(cache: bytes, batch_size: int = 1) -> Any:
    """An ``IInt8EntropyCalibrator2`` that only serves a stored calibration cache (no data).

    With a complete cache TensorRT never asks for batches; if it does, ``get_batch`` returns None
    and the build fails with TensorRT's own "no scaling factors" error, which we report.
    Defined in a factory so importing this module never touches TensorRT (11.x has no calibrators).
    """
    import tensorrt as trt

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._cache = cache

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: List[str]) -> Any:
            return None  # no calibration data on the target: the cache must cover every tensor

        def read_calibration_cache(self) -> bytes:
            return self._cache

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return CacheCalibrator()


def _parser_error_text(error: Any) -> str:
    """One parser error as text: node index, operator and name where this TensorRT reports them."""
    desc = error.desc() if hasattr(error, "desc") else str(error)
    parts = []
    for attr in ("node", "node_operator", "node_name"):
        if hasattr(error, attr):
            try:
                value = getattr(error, attr)()
            except Exception:
                continue
            if value not in (None, "", -1):
                parts.append(f"{attr.replace('node_', '')} {value}" if attr != "node" else f"node {value}")
    where = f" ({', '.join(parts)})" if parts else ""
    return " ".join(f"{desc}{where}".split())


@dataclasses.dataclass
class _ParsedStage:
    index: Optional[int]  # None: the monolithic full model
    onnx_path: Path
    network: Any
    parser: Any
    inputs: Dict[str, Tuple[int, ...]]  # name -> network shape (-1 for dynamic)
    outputs: List[str]
    what: str = ""  # a label for a model that is neither a stage nor the full model

    @property
    def label(self) -> str:
        return self.what or ("the full model" if self.index is None else f"stage {self.index}")


def _parse_stage(
    builder: trt.Builder, recipe: BuildRecipe, index: Optional[int], onnx_path: Path, logger: Any
) -> Tuple[_ParsedStage, List[str]]:
    import tensorrt as trt

    flags = 0
    for name in recipe.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(onnx_path.read_bytes(), str(onnx_path))
    errors: List[str] = []
    if not ok:
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)] or ["parse failed"]
    inputs: Dict[str, Tuple[int, ...]] = {}
    outputs: List[str] = []
    if ok:
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            inputs[tensor.name] = dims_to_tuple(tensor.shape)
        outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    return _ParsedStage(index, onnx_path, network, parser, inputs, outputs), errors


def _profile_shapes(stage: _ParsedStage, batch: Tuple[int, int, int]) -> Dict[str, List[Tuple[int, ...]]]:
    """min/opt/max shapes per input: the dynamic batch axis takes ``batch``; other axes must be fixed."""
    shapes = {}
    for name, dims in stage.inputs.items():
        if any(d < 0 for d in dims[1:]):
            raise EngineBuildError(
                f"{stage.label}: input {name} of {stage.onnx_path.name} has dynamic dimensions besides the batch "
                f"({dims}); export the stage with fixed C, H, W"
            )
        if dims and dims[0] < 0:
            shapes[name] = [(b, *tuple(dims[1:])) for b in batch]
    return shapes


def _oom_advice(options: BuildOptions, free_bytes: Optional[int], total_bytes: int) -> str:
    """Advice for a build that ran out of device memory: a workspace that fits what is free."""
    if options.workspace_mib:
        suggestion = options.workspace_mib // 2
    else:
        suggestion = total_bytes // (4 << 20)
    if free_bytes is not None:
        suggestion = min(suggestion, free_bytes // (2 << 20))
    free = f" ({free_bytes >> 20} MiB of {total_bytes >> 20} MiB free now)" if free_bytes is not None else ""
    return (
        f"lower the builder workspace with --workspace-mib {max(suggestion, 16)}{free}, close other GPU programs, "
        f"or lower the max batch (--batch)"
    )


def _free_bytes(cuda: CudaBackend) -> Optional[int]:
    try:
        info = cuda.memory_info()
    except Exception:
        return None
    return None if info is None else info[0]


def _dla_placement(config: Any, network: Any, core: int) -> Dict[str, Any]:
    """Which layers TensorRT can place on the DLA (``can_run_on_DLA``, asked with the config as
    built: device type, precision flags, the fixed profile); the rest fall back to the GPU."""
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    fallback = [name for i, name in enumerate(names) if not config.can_run_on_DLA(network.get_layer(i))]
    runs_on = "gpu" if len(fallback) == len(names) else ("dla+gpu" if fallback else "dla")
    return {
        "core": int(core),
        "layers": len(names),
        "layers_on_dla": len(names) - len(fallback),
        "gpu_fallback_layers": fallback[:16],  # the first few, by name; the count is complete
        "gpu_fallback_count": len(fallback),
        "runs_on": runs_on,
    }


@dataclasses.dataclass
class _StageBuild:
    plan: bytes
    fp32_layers: List[str]
    dla: Optional[Dict[str, Any]]


def _build_stage(
    builder: trt.Builder,
    features: TrtFeatures,
    stage: _ParsedStage,
    recipe: BuildRecipe,
    batch: Tuple[int, int, int],
    options: BuildOptions,
    timing_cache_blob: bytes,
    calibration_cache: Optional[bytes],
    logger: Any,
    cuda: CudaBackend,
    exits: List[Dict[str, Any]],
) -> Tuple[_StageBuild, bytes]:
    """Build one stage (or the full model); returns the build and the updated timing cache bytes."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    fp32_layers: List[str] = []
    if recipe.fp32_head:
        fp32_layers = pin_head_to_fp32(trt, stage.network, head_pairs(exits, stage.outputs))
    profile = builder.create_optimization_profile()
    dynamic = _profile_shapes(stage, batch)
    for name, (lo, opt, hi) in dynamic.items():
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    if dynamic:
        config.add_optimization_profile(profile)
    dla: Optional[Dict[str, Any]] = None
    if recipe.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(recipe.dla_core)
        dla = _dla_placement(config, stage.network, recipe.dla_core)
    if recipe.calibration_cache:
        assert calibration_cache is not None
        # int8_calibrator / set_calibration_profile are gone in 11.x (the recipe never gets here there).
        config.int8_calibrator = make_cache_calibrator(calibration_cache, batch_size=batch[1])
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    if options.optimization_level is not None and features.builder_optimization_level:
        config.builder_optimization_level = int(options.optimization_level)
    try:
        cache = config.create_timing_cache(timing_cache_blob)
        usable = cache is not None and config.set_timing_cache(cache, False)
    except Exception:
        usable = False
    if not usable:
        if timing_cache_blob:
            log.warning("timing cache is damaged or from another device / TensorRT version; starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), True)

    logger.clear()
    plan = builder.build_serialized_network(stage.network, config)
    if plan is None:
        errors = logger.errors()
        text = "; ".join(errors[-4:]) or "no error message from TensorRT"
        if any(_OOM.search(e) for e in errors):
            raise EngineBuildError(
                f"{stage.label}: TensorRT ran out of GPU memory while building ({text}); "
                f"{_oom_advice(options, _free_bytes(cuda), cuda.device.total_memory_bytes)}"
            )
        raise EngineBuildError(
            f"{stage.label}: TensorRT could not build an engine from {stage.onnx_path.name} ({text})"
        )
    new_cache = config.get_timing_cache()
    cache_bytes = bytes(memoryview(new_cache.serialize())) if new_cache is not None else timing_cache_blob
    return _StageBuild(bytes(memoryview(plan)), fp32_layers, dla), cache_bytes


def inspect_engine(trt: Any, engine: Any, features: TrtFeatures) -> Dict[str, Any]:
    """I/O tensors (name, mode, dtype, shape), the profile of the batch axis, and memory of an engine."""
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        mapped = numpy_dtype(trt, dtype)
        io.append(
            {
                "name": name,
                "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output",
                "dtype": mapped.name if mapped is not None else dtype_name(dtype),
                "shape": list(dims_to_tuple(engine.get_tensor_shape(name))),
            }
        )
    info: Dict[str, Any] = {"io": io, "device_memory_bytes": engine_device_memory_bytes(engine, features)}
    weights = engine_weights_bytes(trt, engine, features)
    if weights is not None:
        info["weights_bytes"] = weights
    return info


def _inspect_plan(plan: bytes, features: TrtFeatures, logger: Any, dla_core: Optional[int]) -> Dict[str, Any]:
    """I/O tensors and memory of a freshly built plan (deserialized once, here, on the same device)."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError(f"TensorRT built a plan it cannot load back ({'; '.join(logger.errors()[-2:])})")
    info = inspect_engine(trt, engine, features)
    del engine, runtime
    return info


def _calibration_caches(bundle: Bundle, trt_version: str, stages: List[int]) -> Dict[int, bytes]:
    """The TensorRT text calibration cache of each of ``stages``, its header retargeted to this TensorRT.

    TensorRT skips a cache whose header names another version (and then fails for lack of
    calibration data), and our calibrator is an EntropyCalibrator2, the one DLA requires.
    """
    from hisd_edge.convert.calib_cache import retarget  # standard library only

    caches = {}
    for k in stages:
        path = bundle.checked_path(bundle.stages[k]["files"]["int8"]["calibration_cache"])  # confined, size + sha256
        try:
            text = path.read_text(encoding="utf-8")
            caches[k] = retarget(text, trt_version, "EntropyCalibration2").encode("utf-8")
        except (UnicodeDecodeError, BundleError) as exc:
            raise BundleError(
                f"{path}: not a TensorRT calibration cache ({exc}); convert again with --precision int8"
            ) from None
    return caches


def _stage_input_dims(bundle: Bundle, k: Optional[int]) -> Dict[str, Tuple[int, ...]]:
    inputs = bundle.stages[0 if k is None else k]["inputs"]
    if k is None:  # the full model takes what stage 0 takes
        inputs = inputs[:1]
    return {i["name"]: tuple(int(d) for d in i["shape"][1:]) for i in inputs}


# -- choosing: per-stage recipes, with or without TensorRT -----------------------------------------------
def stage_precisions(bundle: Bundle, precision: str) -> List[str]:
    """The precision each stage is built at: ``precision`` for all, or the mixed plan of the bundle."""
    if precision != "mixed":
        return [precision] * bundle.num_stages
    plan = (bundle.manifest.get("mixed_precision") or {}).get("stages")
    if not plan or len(plan) != bundle.num_stages:
        raise InputError(
            f"--precision mixed: {bundle.root} has no per-stage precision plan; convert with --precision mixed "
            "(it chooses one on labelled validation data), or pick fp32, fp16, int8 or best"
        )
    return [str(p) for p in plan]


def choose_recipes(features: TrtFeatures, bundle: Bundle, options: BuildOptions) -> List[BuildRecipe]:
    """One recipe per stage (see :func:`~hisd_edge.engine.recipe.choose_recipe`), naming the stage on refusal."""
    recipes = []
    for k, (stage, precision) in enumerate(zip(bundle.stages, stage_precisions(bundle, options.precision))):
        files = stage["files"]
        try:
            recipes.append(
                choose_recipe(
                    features,
                    precision,
                    list(files),
                    has_calibration_cache="calibration_cache" in files.get("int8", {}),
                    dla_core=options.dla_core if options.on_dla(k) else None,
                    legacy_int8=options.legacy_int8,
                    int8_float_layers=bool(files.get("int8", {}).get("quantization", {}).get("kept_float")),
                )
            )
        except InputError as exc:
            if options.precision != "mixed" and options.dla_stages is None:
                raise
            raise InputError(f"stage {k} ({precision}{', DLA' if options.on_dla(k) else ''}): {exc}") from None
    return recipes


def _full_model_plan(bundle: Bundle, options: BuildOptions, recipes: List[BuildRecipe]) -> Tuple[bool, str]:
    """Whether the monolithic full model gets an engine too (for bench and evaluate), and why not.

    Only where it can have the stages' precision: the full model exists as fp32 ONNX only, so a
    recipe that reads the fp32 ONNX (fp32, or weakly typed fp16) can build it; strongly typed
    fp16/int8 recipes, Q/DQ and calibration-cache int8, mixed plans and DLA cannot.
    """
    first = recipes[0]
    if not options.full_model:
        return False, "not asked for (--no-full-model)"
    if bundle.full_model_path() is None:
        return False, "the bundle has no full model"
    if any(r != first for r in recipes):
        return False, "stages are built at different precisions or devices"
    if first.dla_core is not None:
        return False, "DLA builds are per stage"
    if first.onnx_precision != "fp32" or first.calibration_cache:
        return (
            False,
            f"the full model exists as fp32 ONNX only, and this {first.precision} recipe reads the {first.onnx_precision} ONNX",
        )
    return True, ""


def _ingraph_plan(bundle: Bundle, options: BuildOptions, recipes: List[BuildRecipe]) -> Tuple[Optional[Path], str]:
    """The in-graph early-exit ONNX to build as one engine (hisd_edge.runtime.ingraph), or why not.

    TensorRT's ONNX parser turns its ``If`` nodes into ``IIfConditional`` layers (TensorRT 8.0 and
    later: 8.5 and 8.6 on JetPack 5/6, 10.x, 11.x); only the branch the condition picks runs, and
    the whole frame is one enqueue. Not for DLA builds: conditional layers cannot run on a DLA,
    and the DLA's gain is running the heavy stages there. One recipe for every stage, reading an
    ONNX precision the bundle has an in-graph artifact for (fp32 for fp32 and weakly typed fp16
    builds); legacy INT8 builds from calibration caches have no cache for it.
    """
    first = recipes[0]
    if not options.ingraph:
        return None, "not asked for (BuildOptions.ingraph=False)"
    if any(r != first for r in recipes):
        return None, "stages are built at different precisions or devices"
    if first.dla_core is not None:
        return None, "IIfConditional layers cannot run on the DLA; DLA builds run the chain"
    if first.calibration_cache:
        return None, "a calibration-cache INT8 build has no cache for the in-graph model"
    path = bundle.ingraph_path(first.onnx_precision)
    if path is None:
        return None, f"the bundle has no {first.onnx_precision} in-graph artifact (converted before it existed)"
    return path, ""


# -- the whole build ----------------------------------------------------------------------------------
def build_engines(bundle: Bundle, options: BuildOptions, cuda: Optional[CudaBackend] = None) -> BuildResult:
    """Build and store the engines of every stage of ``bundle`` for this device (see module docstring)."""
    options.validate()
    import_tensorrt()  # a one-line DependencyError when TensorRT is missing
    import tensorrt as trt

    features = detect_features(trt)
    recipes = choose_recipes(features, bundle, options)
    owns_cuda = cuda is None
    if cuda is None:
        from hisd_edge.cuda import open_cuda

        cuda = open_cuda()
    try:
        return _build_all(bundle, options, recipes, features, cuda)
    finally:
        if owns_cuda:
            cuda.close()


def _build_all(
    bundle: Bundle, options: BuildOptions, recipes: List[BuildRecipe], features: TrtFeatures, cuda: CudaBackend
) -> BuildResult:
    import tensorrt as trt

    begin = time.perf_counter()
    device = cuda.device
    trt_version = features.version
    logger = make_logger()
    builder = trt.Builder(logger)
    if options.dla_core is not None and options.dla_core >= builder.num_DLA_cores:
        raise InputError(
            f"--dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA core(s) "
            f"for TensorRT {trt_version}; drop --dla-core or pick a core below {builder.num_DLA_cores}"
        )

    # 1. parse everything first: all parser errors, per stage, in one message
    parsed: List[_ParsedStage] = []
    failures = []
    for k in range(bundle.num_stages):
        onnx_path = bundle.stage_path(k, recipes[k].onnx_precision)
        stage, errors = _parse_stage(builder, recipes[k], k, onnx_path, logger)
        parsed.append(stage)
        if errors:
            failures.append(f"stage {k} ({onnx_path.name}): " + " | ".join(errors))
    if failures:
        raise EngineBuildError(
            f"TensorRT {trt_version}'s ONNX parser rejected {len(failures)} of {bundle.num_stages} stage(s): "
            f"{'; '.join(failures)}; the bundle needs operators this TensorRT supports (re-convert with an older opset or "
            "a newer TensorRT)"
        )
    full: Optional[_ParsedStage] = None
    build_full, why_not = _full_model_plan(bundle, options, recipes)
    if build_full:
        full_path = bundle.full_model_path()
        assert full_path is not None
        full, errors = _parse_stage(builder, recipes[0], None, full_path, logger)
        if errors:  # the stages are what runs; without the full engine bench compares against the chain
            full, why_not = None, f"TensorRT's parser rejected it ({' | '.join(errors)[:200]})"

    graph: Optional[_ParsedStage] = None
    graph_path, why_not_graph = _ingraph_plan(bundle, options, recipes)
    if graph_path is not None:
        graph, errors = _parse_stage(builder, recipes[0], None, graph_path, logger)
        graph.what = "the in-graph early exit"
        if errors:  # the chain still runs; say why there is no one-enqueue engine
            graph, why_not_graph = None, f"TensorRT's parser rejected it ({' | '.join(errors)[:200]})"

    # 2. timing cache: tied to device + TensorRT version, persisted across builds
    cache_path = (
        Path(options.timing_cache)
        if options.timing_cache
        else bundle.resolve(default_timing_cache(device.key, trt_version))  # confined to the bundle
    )
    timing_blob, created_dirs = _open_timing_cache(cache_path)
    try:
        return _build_and_publish(
            bundle,
            options,
            recipes,
            features,
            cuda,
            builder,
            logger,
            parsed,
            full,
            why_not,
            (graph, why_not_graph),
            cache_path,
            timing_blob,
            begin,
        )
    except BaseException:
        for directory in reversed(created_dirs):  # innermost first; only the ones still empty
            try:
                directory.rmdir()
            except OSError:
                pass
        raise


def _open_timing_cache(cache_path: Path) -> Tuple[bytes, List[Path]]:
    """The timing cache's bytes (empty when new), checked before any build work: its parent is
    created here (returned, outermost first, so a failed build can remove them) and a path that
    cannot be read or created is a one-line InputError instead of a failure after the build."""
    if cache_path.is_dir():
        raise InputError(
            f"--timing-cache {cache_path}: is a directory; give a file path, e.g. {cache_path}/timing.cache"
        )
    created = [p for p in reversed(cache_path.parents) if not p.exists()]
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        return (cache_path.read_bytes() if cache_path.is_file() else b""), created
    except OSError as exc:
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError:
                pass
        reason = exc.strerror or type(exc).__name__
        raise InputError(
            f"--timing-cache {cache_path}: cannot read it or create its folder ({reason}); give a readable, "
            f"writable file path or leave --timing-cache out to use the one inside the bundle"
        ) from None


def record_precision(options: BuildOptions, recipes: List[BuildRecipe]) -> str:
    """The label a build is stored and looked up under: "mixed" for a per-stage plan, else the
    precision the recipe resolved to ("best" -> "int8" or "fp16")."""
    return "mixed" if options.precision == "mixed" else recipes[0].precision


def summary_recipe(options: BuildOptions, recipes: List[BuildRecipe]) -> Dict[str, Any]:
    """The record's top-level ``recipe``: the recipe itself when every stage shares it, else a summary
    (each stage record carries its own)."""
    if all(r == recipes[0] for r in recipes) and options.precision != "mixed":
        return recipes[0].to_dict()
    typings = sorted({r.typing for r in recipes})
    return {
        "precision": record_precision(options, recipes),
        "requested": options.precision,
        "onnx_precision": "per stage",
        "typing": typings[0] if len(typings) == 1 else "mixed",
        "network_flags": [],
        "builder_flags": [],
        "calibration_cache": any(r.calibration_cache for r in recipes),
        "dla_core": options.dla_core,
        "notes": sorted({n for r in recipes for n in r.notes}),
        "fp32_head": any(r.fp32_head for r in recipes),
        "stage_precisions": [r.precision for r in recipes],
        "dla_stages": [k for k, r in enumerate(recipes) if r.dla_core is not None],
    }


def _batch_dict(batch: Tuple[int, int, int]) -> Dict[str, int]:
    return {"min": batch[0], "opt": batch[1], "max": batch[2]}


def _build_and_publish(
    bundle: Bundle,
    options: BuildOptions,
    recipes: List[BuildRecipe],
    features: TrtFeatures,
    cuda: CudaBackend,
    builder: Any,
    logger: Any,
    parsed: List[_ParsedStage],
    full: Optional[_ParsedStage],
    why_not_full: str,
    ingraph: Tuple[Optional[_ParsedStage], str],
    cache_path: Path,
    timing_blob: bytes,
    begin: float,
) -> BuildResult:
    device = cuda.device
    trt_version = features.version
    precision = record_precision(options, recipes)
    n = bundle.num_stages
    exits = bundle.exits

    # 3. build every stage, then the full model (nothing written yet)
    plans: List[bytes] = []
    caches = _calibration_caches(bundle, trt_version, [k for k, r in enumerate(recipes) if r.calibration_cache])
    stage_records: List[Dict[str, Any]] = []
    builds: List[_StageBuild] = []
    graph, why_not_graph = ingraph
    progress = _progress(
        n + (full is not None) + (graph is not None), options.progress, f"building {precision} engines"
    )
    try:
        for stage in parsed:
            k = int(stage.index or 0)
            recipe, batch = recipes[k], options.stage_batch(k, n)
            started = time.perf_counter()
            built, timing_blob = _build_stage(
                builder, features, stage, recipe, batch, options, timing_blob, caches.get(k), logger, cuda, exits
            )
            info = _inspect_plan(built.plan, features, logger, recipe.dla_core)
            onnx_record = bundle.stages[k]["files"][recipe.onnx_precision]
            record_k: Dict[str, Any] = {
                "index": k,
                "precision": recipe.precision,
                "onnx_precision": recipe.onnx_precision,
                "onnx": onnx_record["path"],
                "onnx_sha256": onnx_record["sha256"],
                "plan_sha256": hashlib.sha256(built.plan).hexdigest(),
                "build_seconds": round(time.perf_counter() - started, 3),
                "batch": _batch_dict(batch),
                "recipe": recipe.to_dict(),
                **info,
            }
            if built.fp32_layers:
                record_k["fp32_layers"] = built.fp32_layers
            if built.dla is not None:
                record_k["dla"] = built.dla
            stage_records.append(record_k)
            plans.append(built.plan)
            builds.append(built)
            progress.update(1)
        full_plan: Optional[bytes] = None
        full_record: Dict[str, Any] = {"built": False, "reason": why_not_full}
        if full is not None:
            started = time.perf_counter()
            batch = options.stage_batch(0, n)
            built, timing_blob = _build_stage(
                builder, features, full, recipes[0], batch, options, timing_blob, None, logger, cuda, exits
            )
            full_plan = built.plan
            full_record = {
                "built": True,
                "onnx": bundle.manifest["full_model"]["path"],
                "onnx_sha256": bundle.manifest["full_model"]["sha256"],
                "plan_sha256": hashlib.sha256(full_plan).hexdigest(),
                "build_seconds": round(time.perf_counter() - started, 3),
                "batch": _batch_dict(batch),
                **_inspect_plan(full_plan, features, logger, None),
            }
            if built.fp32_layers:
                full_record["fp32_layers"] = built.fp32_layers
            progress.update(1)
        graph_plan: Optional[bytes] = None
        graph_record: Dict[str, Any] = {"built": False, "reason": why_not_graph}
        if graph is not None:
            started = time.perf_counter()
            built, timing_blob = _build_stage(
                builder, features, graph, recipes[0], (1, 1, 1), options, timing_blob, None, logger, cuda, exits
            )
            graph_plan = built.plan
            onnx_record = bundle.manifest["ingraph"]["files"][recipes[0].onnx_precision]
            graph_record = {
                "built": True,
                "onnx": onnx_record["path"],
                "onnx_precision": recipes[0].onnx_precision,
                "onnx_sha256": onnx_record["sha256"],
                "plan_sha256": hashlib.sha256(graph_plan).hexdigest(),
                "build_seconds": round(time.perf_counter() - started, 3),
                **_inspect_plan(graph_plan, features, logger, None),
            }
            progress.update(1)
    finally:
        progress.close()

    # 4. publish plans + record, then the timing cache
    record = new_record(
        device,
        trt_version,
        summary_recipe(options, recipes),
        batch=_batch_dict(options.stage_batch(0, n)),
        workspace_mib=options.workspace_mib,
        dla_core=options.dla_core,
        builder_optimization_level=options.optimization_level,
        cuda_binding=cuda.name,
        features=features.to_dict(),
        stages=stage_records,
        full_model=full_record,
        ingraph=graph_record,
        timing_cache=_relative_if_inside(cache_path, bundle.root),
    )
    if record["precision"] != precision:
        record["precision"] = precision
    stored = publish(bundle, record, plans, caches, full_plan=full_plan, ingraph_plan=graph_plan)
    try:  # the engines are in: a cache that cannot be saved only costs the next build time
        atomic.write_bytes(cache_path, timing_blob)
    except OSError as exc:
        log.warning(
            "could not save the timing cache %s (%s); the engines are built and stored, the next build "
            "starts without the cache",
            cache_path,
            exc.strerror or exc,
        )
    commands = []
    for stage in [*parsed, *([full] if full is not None else [])]:
        index = stage.index
        recipe = recipes[index if index is not None else 0]
        cache_file = None
        if index is not None and recipe.calibration_cache:  # the retargeted copy stored with the engines
            cache_file = str(bundle.root / engine_dir(device.key, trt_version, precision) / f"stage{index}.calib")
        fp32_layers = builds[index].fp32_layers if index is not None else full_record.get("fp32_layers", [])
        commands.append(
            render_trtexec(
                str(stage.onnx_path),
                str(bundle.root / engine_path(device.key, trt_version, precision, index)),
                recipe,
                _stage_input_dims(bundle, index),
                options.stage_batch(index or 0, n),
                workspace_mib=options.workspace_mib,
                timing_cache=str(cache_path),
                calibration_cache=cache_file,
                optimization_level=options.optimization_level,
                fp32_layers=fp32_layers,
            )
        )
    return BuildResult(
        record=stored,
        recipe=recipes[0],
        trtexec=commands,
        timing_cache=str(cache_path),
        seconds=time.perf_counter() - begin,
        recipes=recipes,
    )


def _relative_if_inside(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, desc=desc, unit="stage", leave=False)
