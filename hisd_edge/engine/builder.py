"""Build one TensorRT engine per bundle stage, on the target, and store them in the bundle.

The work, in order (nothing in the bundle changes until every stage has built):

1. detect the TensorRT API generation (:mod:`~hisd_edge.engine.features`) and choose the recipe
   (:mod:`~hisd_edge.engine.recipe`);
2. parse every stage's ONNX first and report *all* parser errors, per stage, in one message;
3. build each stage: explicit-batch / strongly typed network as the recipe says, one
   optimization profile over the dynamic batch (min, opt, max), a workspace limit, the persisted
   timing cache (tied to device and version like the plans), DLA with GPU fallback, and the
   legacy calibration-cache calibrator where asked;
4. read each plan back to record its I/O tensors and scratch memory;
5. publish plans + build record (:func:`hisd_edge.engine.store.publish`), then save the timing cache
   (best effort: its path is checked before building; a failed save is a logged warning).

Build failures become one-line :class:`EngineBuildError` messages: parser errors per stage; out of
memory with workspace advice; anything else with TensorRT's own error lines.
"""

from __future__ import annotations

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
    engine_device_memory_bytes,
    engine_weights_bytes,
    import_tensorrt,
)
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

    precision: str = "fp16"
    batch: Tuple[int, int, int] = DEFAULT_BATCH  # min, opt, max of the dynamic batch dimension
    workspace_mib: Optional[int] = None  # None: TensorRT's default (the device's memory)
    dla_core: Optional[int] = None
    timing_cache: Optional[str] = None  # None: <bundle>/engines/<device>/trt-<ver>/timing.cache
    legacy_int8: bool = False
    optimization_level: Optional[int] = None  # builder_optimization_level 0-5 (TensorRT 8.6+)
    progress: bool = True

    def validate(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise InputError(f"--batch {lo},{opt},{hi}: need 1 <= MIN <= OPT <= MAX, e.g. --batch 1,8,32")
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise InputError(
                f"--workspace-mib {self.workspace_mib}: give a positive number of MiB, e.g. --workspace-mib 512"
            )
        if self.dla_core is not None and self.dla_core < 0:
            raise InputError(f"--dla-core {self.dla_core}: DLA cores are numbered from 0")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise InputError(f"--opt-level {self.optimization_level}: TensorRT's builder optimization level is 0 to 5")


@dataclasses.dataclass
class BuildResult:
    record: Dict[str, Any]  # the build record as stored in the manifest
    recipe: BuildRecipe
    trtexec: List[str]  # the equivalent trtexec command, one per stage
    timing_cache: str
    seconds: float


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
def make_logger(verbose: bool = False) -> Any:
    """A TensorRT logger that keeps every message (to quote errors) and forwards them to ``logging``.

    The ILogger subclass is defined here, not at module level, so importing this module never
    imports TensorRT.
    """
    import tensorrt as trt

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: List[Tuple[Any, str]] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            self.messages.append((severity, msg))
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                log.debug("TensorRT error: %s", msg)
            elif verbose:
                log.debug("TensorRT: %s", msg)

        def errors(self) -> List[str]:
            bad = (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR)
            return [" ".join(m.split()) for s, m in self.messages if s in bad]

        def clear(self) -> None:
            self.messages.clear()

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
    index: int
    onnx_path: Path
    network: Any
    parser: Any
    inputs: Dict[str, Tuple[int, ...]]  # name -> network shape (-1 for dynamic)


def _parse_stage(
    builder: trt.Builder, recipe: BuildRecipe, index: int, onnx_path: Path, logger: Any
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
    if ok:
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            inputs[tensor.name] = dims_to_tuple(tensor.shape)
    return _ParsedStage(index, onnx_path, network, parser, inputs), errors


def _profile_shapes(stage: _ParsedStage, batch: Tuple[int, int, int]) -> Dict[str, List[Tuple[int, ...]]]:
    """min/opt/max shapes per input: the dynamic batch axis takes ``batch``; other axes must be fixed."""
    shapes = {}
    for name, dims in stage.inputs.items():
        if any(d < 0 for d in dims[1:]):
            raise EngineBuildError(
                f"stage {stage.index}: input {name} of {stage.onnx_path.name} has dynamic dimensions besides the batch "
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


def _build_stage(
    builder: trt.Builder,
    features: TrtFeatures,
    stage: _ParsedStage,
    recipe: BuildRecipe,
    options: BuildOptions,
    timing_cache_blob: bytes,
    calibration_cache: Optional[bytes],
    logger: Any,
    cuda: CudaBackend,
) -> Tuple[bytes, bytes]:
    """Build one stage; returns (plan bytes, updated timing cache bytes)."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    dynamic = _profile_shapes(stage, options.batch)
    for name, (lo, opt, hi) in dynamic.items():
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    if dynamic:
        config.add_optimization_profile(profile)
    if recipe.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(recipe.dla_core)
    if recipe.calibration_cache:
        assert calibration_cache is not None
        # int8_calibrator / set_calibration_profile are gone in 11.x (the recipe never gets here there).
        config.int8_calibrator = make_cache_calibrator(calibration_cache, batch_size=options.batch[1])
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
                f"stage {stage.index}: TensorRT ran out of GPU memory while building ({text}); "
                f"{_oom_advice(options, _free_bytes(cuda), cuda.device.total_memory_bytes)}"
            )
        raise EngineBuildError(
            f"stage {stage.index}: TensorRT could not build an engine from {stage.onnx_path.name} ({text})"
        )
    new_cache = config.get_timing_cache()
    cache_bytes = bytes(memoryview(new_cache.serialize())) if new_cache is not None else timing_cache_blob
    return bytes(memoryview(plan)), cache_bytes


def _inspect_plan(plan: bytes, features: TrtFeatures, logger: Any, dla_core: Optional[int]) -> Dict[str, Any]:
    """I/O tensors and memory of a freshly built plan (deserialized once, here, on the same device)."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError(f"TensorRT built a plan it cannot load back ({'; '.join(logger.errors()[-2:])})")
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        try:
            dtype_name = str(trt.nptype(dtype).__name__)
        except TypeError:  # types numpy has no name for (bf16, fp8, ...)
            dtype_name = str(dtype)
        io.append(
            {
                "name": name,
                "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output",
                "dtype": dtype_name,
                "shape": list(dims_to_tuple(engine.get_tensor_shape(name))),
            }
        )
    info = {"io": io, "device_memory_bytes": engine_device_memory_bytes(engine, features)}
    weights = engine_weights_bytes(trt, engine, features)
    if weights is not None:
        info["weights_bytes"] = weights
    del engine, runtime
    return info


def _calibration_caches(bundle: Bundle, trt_version: str) -> List[bytes]:
    """Each stage's TensorRT text calibration cache, its header retargeted to this TensorRT.

    TensorRT skips a cache whose header names another version (and then fails for lack of
    calibration data), and our calibrator is an EntropyCalibrator2, the one DLA requires.
    """
    from hisd_edge.convert.calib_cache import retarget  # standard library only

    caches = []
    for stage in bundle.stages:
        path = bundle.checked_path(stage["files"]["int8"]["calibration_cache"])  # confined, size + sha256
        try:
            text = path.read_text(encoding="utf-8")
            caches.append(retarget(text, trt_version, "EntropyCalibration2").encode("utf-8"))
        except (UnicodeDecodeError, BundleError) as exc:
            raise BundleError(
                f"{path}: not a TensorRT calibration cache ({exc}); convert again with --precision int8"
            ) from None
    return caches


def _stage_input_dims(bundle: Bundle, k: int) -> Dict[str, Tuple[int, ...]]:
    return {i["name"]: tuple(int(d) for d in i["shape"][1:]) for i in bundle.stages[k]["inputs"]}


# -- the whole build ----------------------------------------------------------------------------------
def build_engines(bundle: Bundle, options: BuildOptions, cuda: Optional[CudaBackend] = None) -> BuildResult:
    """Build and store the engines of every stage of ``bundle`` for this device (see module docstring)."""
    options.validate()
    import_tensorrt()  # a one-line DependencyError when TensorRT is missing
    import tensorrt as trt

    features = detect_features(trt)
    stages = bundle.stages
    has_cache = all("calibration_cache" in s["files"].get("int8", {}) for s in stages)
    recipe = choose_recipe(
        features,
        options.precision,
        bundle.precisions(),
        has_calibration_cache=has_cache,
        dla_core=options.dla_core,
        legacy_int8=options.legacy_int8,
    )
    owns_cuda = cuda is None
    if cuda is None:
        from hisd_edge.cuda import open_cuda

        cuda = open_cuda()
    try:
        return _build_all(bundle, options, recipe, features, cuda)
    finally:
        if owns_cuda:
            cuda.close()


def _build_all(
    bundle: Bundle, options: BuildOptions, recipe: BuildRecipe, features: TrtFeatures, cuda: CudaBackend
) -> BuildResult:
    import tensorrt as trt

    begin = time.perf_counter()
    device = cuda.device
    trt_version = features.version
    logger = make_logger()
    builder = trt.Builder(logger)
    if recipe.dla_core is not None and recipe.dla_core >= builder.num_DLA_cores:
        raise InputError(
            f"--dla-core {recipe.dla_core}: this device has {builder.num_DLA_cores} DLA core(s) "
            f"for TensorRT {trt_version}; drop --dla-core or pick a core below {builder.num_DLA_cores}"
        )

    # 1. parse everything first: all parser errors, per stage, in one message
    parsed: List[_ParsedStage] = []
    failures = []
    for k in range(bundle.num_stages):
        onnx_path = bundle.stage_path(k, recipe.onnx_precision)
        stage, errors = _parse_stage(builder, recipe, k, onnx_path, logger)
        parsed.append(stage)
        if errors:
            failures.append(f"stage {k} ({onnx_path.name}): " + " | ".join(errors))
    if failures:
        raise EngineBuildError(
            f"TensorRT {trt_version}'s ONNX parser rejected {len(failures)} of {bundle.num_stages} stage(s): "
            f"{'; '.join(failures)}; the bundle needs operators this TensorRT supports (re-convert with an older opset or "
            "a newer TensorRT)"
        )

    # 2. timing cache: tied to device + TensorRT version, persisted across builds
    cache_path = (
        Path(options.timing_cache)
        if options.timing_cache
        else bundle.resolve(default_timing_cache(device.key, trt_version))  # confined to the bundle
    )
    timing_blob, created_dirs = _open_timing_cache(cache_path)
    try:
        return _build_and_publish(
            bundle, options, recipe, features, cuda, builder, logger, parsed, cache_path, timing_blob, begin
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


def _build_and_publish(
    bundle: Bundle,
    options: BuildOptions,
    recipe: BuildRecipe,
    features: TrtFeatures,
    cuda: CudaBackend,
    builder: Any,
    logger: Any,
    parsed: List[_ParsedStage],
    cache_path: Path,
    timing_blob: bytes,
    begin: float,
) -> BuildResult:
    device = cuda.device
    trt_version = features.version

    # 3. build every stage (nothing written yet)
    plans: List[bytes] = []
    caches = _calibration_caches(bundle, trt_version) if recipe.calibration_cache else []
    stage_records: List[Dict[str, Any]] = []
    progress = _progress(len(parsed), options.progress, f"building {recipe.precision} engines")
    try:
        for stage in parsed:
            calib = caches[stage.index] if caches else None
            started = time.perf_counter()
            plan, timing_blob = _build_stage(
                builder, features, stage, recipe, options, timing_blob, calib, logger, cuda
            )
            info = _inspect_plan(plan, features, logger, recipe.dla_core)
            onnx_record = bundle.stages[stage.index]["files"][recipe.onnx_precision]
            stage_records.append(
                {
                    "index": stage.index,
                    "onnx_precision": recipe.onnx_precision,
                    "onnx": onnx_record["path"],
                    "onnx_sha256": onnx_record["sha256"],
                    "plan_sha256": hashlib.sha256(plan).hexdigest(),
                    "build_seconds": round(time.perf_counter() - started, 3),
                    **info,
                }
            )
            plans.append(plan)
            progress.update(1)
    finally:
        progress.close()

    # 4. publish plans + record, then the timing cache
    record = new_record(
        device,
        trt_version,
        recipe.to_dict(),
        batch={"min": options.batch[0], "opt": options.batch[1], "max": options.batch[2]},
        workspace_mib=options.workspace_mib,
        dla_core=options.dla_core,
        builder_optimization_level=options.optimization_level,
        cuda_binding=cuda.name,
        features=features.to_dict(),
        stages=stage_records,
        timing_cache=_relative_if_inside(cache_path, bundle.root),
    )
    stored = publish(bundle, record, plans, caches)
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
    for stage in parsed:
        k = stage.index
        cache_file = None
        if recipe.calibration_cache:  # the retargeted copy stored with the engines
            cache_file = str(bundle.root / engine_dir(device.key, trt_version, recipe.precision) / f"stage{k}.calib")
        commands.append(
            render_trtexec(
                str(stage.onnx_path),
                str(bundle.root / engine_path(device.key, trt_version, recipe.precision, k)),
                recipe,
                _stage_input_dims(bundle, k),
                options.batch,
                workspace_mib=options.workspace_mib,
                timing_cache=str(cache_path),
                calibration_cache=cache_file,
                optimization_level=options.optimization_level,
            )
        )
    return BuildResult(
        record=stored,
        recipe=recipe,
        trtexec=commands,
        timing_cache=str(cache_path),
        seconds=time.perf_counter() - begin,
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
