"""TEST DOUBLE: an in-process stand-in for the ``tensorrt`` Python module. Never shipped.

``make_tensorrt(generation, cuda)`` returns a module object with the API surface hisd-edge uses,
shaped like one TensorRT generation (the differences come from TENSORRT-JETSON-FACTS.md section 1
and NVIDIA/TensorRT ``pyCore.cpp``):

=========  =================================================================================
8.5 / 8.6  ``EXPLICIT_BATCH`` needed for ONNX; no ``STRONGLY_TYPED``; ``FP16``/``INT8`` flags;
           calibrators; ``device_memory_size`` only; ``builder_optimization_level`` from 8.6
10.3       ``EXPLICIT_BATCH`` ignored; ``STRONGLY_TYPED``; flags (refused on strongly typed
           networks); calibrators; ``device_memory_size`` and ``_v2``
10.13      as 10.3, plus ``DataType.E8M0`` (10.12+: weak typing deprecated)
10.16      as 10.13, plus ``get_engine_stat`` / ``EngineStat``
11.1       no ``EXPLICIT_BATCH``, no ``FP16``/``INT8`` flags, no calibrators or
           ``int8_calibrator``; always strongly typed; ``device_memory_size_v2`` only
=========  =================================================================================

Its "engines" are the stage ONNX serialized into a small plan format (magic, JSON header with
the TensorRT version, device compute capability and I/O table, then the ONNX bytes) and they
execute with ONNX Runtime, reading inputs from and writing outputs to the addresses bound with
``set_tensor_address`` in the fake CUDA address space (:mod:`cuda_double`), on the stream passed to
``execute_async_v3``. Deserializing checks the magic, truncation, TensorRT version and compute
capability, logging messages worded like TensorRT's. The builder enforces the rules our recipes
rely on (dynamic inputs need a profile; no precision flags on strongly typed networks; weakly
typed Q/DQ networks need INT8; DLA needs fp16/int8 and a core that exists; workspace larger than
free memory is out of memory). Every build is logged in ``module.builds`` for assertions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


def _load_cuda_double() -> Any:
    name = "hisd_test_cuda_double"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "cuda" / "cuda_double.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cuda_double = _load_cuda_double()

GENERATIONS = {
    "8.5": "8.5.2.2",
    "8.6": "8.6.1.6",
    "10.3": "10.3.0.26",
    "10.13": "10.13.0.35",
    "10.16": "10.16.1.11",
    "11.1": "11.1.0.7",
}
MAGIC = b"hisd-fake-trt-plan\x00"
_ONNX_DTYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_NP = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


# -- enums ------------------------------------------------------------------------------------------
class _Member:
    def __init__(self, enum: str, name: str, value: int):
        self._enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Member) and other._enum == self._enum and other.value == self.value

    def __hash__(self) -> int:
        return hash((self._enum, self.value))

    def __repr__(self) -> str:
        return f"<{self._enum}.{self.name}: {self.value}>"


def _enum(name: str, members: List[str], values: Optional[Dict[str, int]] = None) -> type:
    attrs: Dict[str, Any] = {}
    for i, member in enumerate(members):
        attrs[member] = _Member(name, member, (values or {}).get(member, i))
    attrs["__members__"] = dict(attrs)
    return type(name, (), attrs)


class Dims(tuple):
    def __new__(cls, shape: Any = ()) -> Dims:
        return super().__new__(cls, (int(d) for d in shape))


class HostMemory(bytes):
    """IHostMemory: supports the buffer protocol (bytes(), memoryview()), like TensorRT's."""

    @property
    def nbytes(self) -> int:
        return len(self)


class ParserError:
    def __init__(self, desc: str, node: int = -1, op: str = "", name: str = "", code: int = 8):
        self._desc, self._node, self._op, self._name, self._code = desc, node, op, name, code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_operator(self) -> str:
        return self._op

    def node_name(self) -> str:
        return self._name

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return f"In node {self._node} ({self._op}): {self._desc}"


def make_tensorrt(
    generation: str = "10.13", cuda: Any = None, *, num_dla_cores: int = 0, free_memory_bytes: Optional[int] = None
) -> types.ModuleType:
    """A fake ``tensorrt`` module of ``generation`` working on the fake CUDA backend ``cuda``."""
    if generation not in GENERATIONS:
        raise ValueError(f"unknown generation {generation}; known: {', '.join(GENERATIONS)}")
    major = int(generation.split(".")[0])
    minor = int(generation.split(".")[1])
    version = GENERATIONS[generation]
    cuda = cuda if cuda is not None else cuda_double.FakeCuda()
    device = cuda.device
    if free_memory_bytes is not None:
        cuda.free_memory_bytes = free_memory_bytes
    free_bytes = cuda.free_memory_bytes
    has_strong = major >= 10
    always_strong = major >= 11
    has_flags = major < 11
    has_calibrators = major < 11
    patch = int(version.split(".")[2])
    cache_tag = major * (10000 if major >= 10 else 1000) + minor * 100 + patch  # calibration cache header

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__file__ = f"<fake tensorrt {version}, tests/engine/trt_double.py>"
    trt.builds = []  # one dict per build_serialized_network call
    trt.cuda = cuda

    # -- enums per generation ---------------------------------------------------------------------
    flags = ["STRONGLY_TYPED"] if has_strong else []
    if major < 11:
        flags.insert(0, "EXPLICIT_BATCH")
    trt.NetworkDefinitionCreationFlag = _enum(
        "NetworkDefinitionCreationFlag", flags, {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    )
    builder_flags = ["GPU_FALLBACK", "REFIT", "DEBUG", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS"]
    if has_flags:
        builder_flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
        if (major, minor) >= (8, 6):
            builder_flags += ["FP8"]
        if major >= 10:
            builder_flags += ["BF16"]
    if (major, minor) >= (8, 6):
        builder_flags += ["VERSION_COMPATIBLE"]
    trt.BuilderFlag = _enum("BuilderFlag", builder_flags)
    data_types = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8"] + (["INT64", "BF16", "FP8"] if major >= 10 else [])
    if (major, minor) >= (10, 12):
        data_types.append("E8M0")
    trt.DataType = _enum("DataType", data_types)
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"])
    trt.DeviceType = _enum("DeviceType", ["GPU", "DLA"])
    severity = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])
    trt.Dims = Dims
    if major >= 11 or (major, minor) >= (10, 14):
        trt.EngineStat = _enum("EngineStat", ["TOTAL_WEIGHTS_SIZE", "STRIPPED_WEIGHTS_SIZE"])

    def nptype(dtype: Any) -> Any:
        return _NP[dtype.name]

    trt.nptype = nptype

    class ILogger:
        Severity = severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (
            severity.INTERNAL_ERROR,
            severity.ERROR,
            severity.WARNING,
            severity.INFO,
            severity.VERBOSE,
        )

        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:
            pass

    class Logger(ILogger):
        def __init__(self, min_severity: Any = None) -> None:
            super().__init__()

    trt.ILogger, trt.Logger = ILogger, Logger

    def _error(logger: Any, msg: str) -> None:
        logger.log(ILogger.ERROR, msg)

    if has_calibrators:

        class IInt8Calibrator:
            def __init__(self) -> None:
                pass

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            pass

        class IInt8MinMaxCalibrator(IInt8Calibrator):
            pass

        trt.IInt8Calibrator, trt.IInt8EntropyCalibrator2, trt.IInt8MinMaxCalibrator = (
            IInt8Calibrator,
            IInt8EntropyCalibrator2,
            IInt8MinMaxCalibrator,
        )

    # -- network and parser -----------------------------------------------------------------------
    class Tensor:
        def __init__(self, name: str, shape: Tuple[int, ...], dtype: Any):
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class INetworkDefinition:
        def __init__(self, flags: int):
            known = sum(1 << int(m) for m in trt.NetworkDefinitionCreationFlag.__members__.values())
            if flags & ~known:
                raise TypeError(f"unknown network creation flags {flags:#x}")
            self.flags = flags
            self.explicit_batch = major >= 10 or bool(flags & 1)
            self.strongly_typed = always_strong or (has_strong and bool(flags & (1 << 1)))
            self.onnx: Optional[bytes] = None
            self.inputs: List[Tensor] = []
            self.outputs: List[Tensor] = []
            self.has_qdq = False

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

    def _tensors(values: Any, skip: set) -> List[Tensor]:
        out = []
        for value in values:
            if value.name in skip:
                continue
            ttype = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
            out.append(Tensor(value.name, dims, getattr(trt.DataType, _ONNX_DTYPES.get(ttype.elem_type, "FLOAT"))))
        return out

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Any):
            self.network, self.logger = network, logger
            self._errors: List[ParserError] = []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, i: int) -> ParserError:
            return self._errors[i]

        def clear_errors(self) -> None:
            self._errors = []

        def parse_from_file(self, path: str) -> bool:
            return self.parse(Path(path).read_bytes(), path)

        def parse(self, model: Any, path: Optional[str] = None) -> bool:
            import onnx
            import onnx.defs

            self._errors = []
            try:
                proto = onnx.load_model_from_string(bytes(model))
                if not proto.graph.node:
                    raise ValueError("empty graph")
            except Exception:
                self._errors.append(
                    ParserError("Failed to parse ONNX model from file: the model is not a valid ONNX protobuf", code=3)
                )
                return False
            if not self.network.explicit_batch:
                self._errors.append(
                    ParserError("The ONNX parser only supports networks with an explicit batch dimension", code=4)
                )
                return False
            for i, node in enumerate(proto.graph.node):
                if not onnx.defs.has(node.op_type, node.domain or ""):
                    self._errors.append(
                        ParserError(
                            f"No importer registered for op: {node.op_type}. Attempting to import as plugin. "
                            "Plugin not found, are the plugin name, version, and namespace correct?",
                            node=i,
                            op=node.op_type,
                            name=node.name,
                        )
                    )
            if self._errors:
                return False
            initializers = {t.name for t in proto.graph.initializer}
            self.network.onnx = bytes(model)
            self.network.inputs = _tensors(proto.graph.input, initializers)
            self.network.outputs = _tensors(proto.graph.output, set())
            self.network.has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
            return True

    trt.INetworkDefinition, trt.OnnxParser, trt.ParserError = INetworkDefinition, OnnxParser, ParserError

    # -- builder ----------------------------------------------------------------------------------
    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: Dict[str, Tuple[Tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            for dims in (lo, opt, hi):
                if not isinstance(dims, (Dims, tuple, list)):
                    raise TypeError("set_shape takes Dims")
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        def get_shape(self, name: str) -> List[Dims]:
            return [Dims(s) for s in self.shapes[name]]

    class ITimingCache:
        def __init__(self, data: Dict[str, Any]):
            self.data = data

        def serialize(self) -> HostMemory:
            return HostMemory(b"hisd-fake-timing-cache\n" + json.dumps(self.data).encode())

        def combine(self, other: ITimingCache, ignore_mismatch: bool) -> bool:
            self.data["entries"] = sorted(set(self.data["entries"]) | set(other.data["entries"]))
            return True

    config_attrs: Dict[str, Any] = {}

    class _BuilderConfigBase:
        def __init__(self) -> None:
            self.flags_set: set = set()
            self.pools: Dict[Any, int] = {}
            self.profiles: List[IOptimizationProfile] = []
            self.timing_cache: Optional[ITimingCache] = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self._calibrator: Any = None
            self._calibration_profile: Any = None
            self._opt_level = 3

        def set_flag(self, flag: Any) -> None:
            self.flags_set.add(flag.name)

        def get_flag(self, flag: Any) -> bool:
            return flag.name in self.flags_set

        def clear_flag(self, flag: Any) -> None:
            self.flags_set.discard(flag.name)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            if not isinstance(size, int) or size <= 0:
                raise TypeError("pool size must be a positive int")
            self.pools[pool] = size

        def get_memory_pool_limit(self, pool: Any) -> int:
            return self.pools.get(pool, device.total_memory_bytes)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: Any) -> Optional[ITimingCache]:
            blob = bytes(blob)
            if not blob:
                return ITimingCache({"version": version, "cc": list(device.compute_capability), "entries": []})
            prefix = b"hisd-fake-timing-cache\n"
            if not blob.startswith(prefix):
                return None
            return ITimingCache(json.loads(blob[len(prefix) :]))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            mismatch = cache.data["version"] != version or cache.data["cc"] != list(device.compute_capability)
            if mismatch and not ignore_mismatch:
                return False
            if mismatch:
                cache = ITimingCache({"version": version, "cc": list(device.compute_capability), "entries": []})
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> Optional[ITimingCache]:
            return self.timing_cache

    if has_calibrators:

        def _get_cal(self: Any) -> Any:
            return self._calibrator

        def _set_cal(self: Any, value: Any) -> None:
            if value is not None and not isinstance(value, trt.IInt8Calibrator):
                raise TypeError("int8_calibrator must be an IInt8Calibrator")
            self._calibrator = value

        def _set_calibration_profile(self: Any, profile: Any) -> bool:
            self._calibration_profile = profile
            return True

        config_attrs["int8_calibrator"] = property(_get_cal, _set_cal)
        config_attrs["set_calibration_profile"] = _set_calibration_profile
    if (major, minor) >= (8, 6):

        def _get_level(self: Any) -> int:
            return self._opt_level

        def _set_level(self: Any, value: int) -> None:
            self._opt_level = int(value)

        config_attrs["builder_optimization_level"] = property(_get_level, _set_level)
    IBuilderConfig = type("IBuilderConfig", (_BuilderConfigBase,), config_attrs)
    trt.IBuilderConfig = IBuilderConfig
    trt.IOptimizationProfile, trt.ITimingCache = IOptimizationProfile, ITimingCache

    class Builder:
        def __init__(self, logger: Any):
            self.logger = logger

        @property
        def num_DLA_cores(self) -> int:
            return num_dla_cores

        @property
        def platform_has_fast_fp16(self) -> bool:
            return True

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            return INetworkDefinition(flags)

        def create_builder_config(self) -> Any:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: Any) -> Optional[HostMemory]:
            entry = {
                "network_flags": [
                    m.name
                    for m in trt.NetworkDefinitionCreationFlag.__members__.values()
                    if network.flags & (1 << int(m))
                ],
                "strongly_typed": network.strongly_typed,
                "builder_flags": sorted(config.flags_set),
                "workspace_bytes": config.pools.get(trt.MemoryPoolType.WORKSPACE),
                "profiles": [p.shapes for p in config.profiles],
                "calibrated": False,
                "dla_core": config.DLA_core if config.default_device_type == trt.DeviceType.DLA else None,
                "timing_cache": config.timing_cache is not None,
                "ok": False,
            }
            trt.builds.append(entry)
            fail = lambda msg: (_error(self.logger, msg), None)[1]  # noqa: E731
            if network.onnx is None:
                return fail("Network must have at least one output (the ONNX was never parsed)")
            for tensor in network.inputs:
                if any(d < 0 for d in tensor.shape):
                    profile = next((p for p in config.profiles if tensor.name in p.shapes), None)
                    if profile is None:
                        return fail(
                            "4: [network.cpp::validate] Error Code 4: Internal Error (Network has dynamic or shape "
                            "inputs, but no optimization profile has been defined.)"
                        )
                    lo, opt, hi = profile.shapes[tensor.name]
                    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                        return fail(
                            f"4: [optimizationProfile.cpp::setDimensions] Error Code 4: API Usage Error "
                            f"({tensor.name}: min <= opt <= max violated)"
                        )
                    for dims in (lo, opt, hi):
                        if len(dims) != len(tensor.shape) or any(s >= 0 and s != d for s, d in zip(tensor.shape, dims)):
                            return fail(
                                f"4: Error Code 4: API Usage Error (profile shape {dims} does not match "
                                f"{tensor.name} {tuple(tensor.shape)})"
                            )
            precision = {"FP16", "INT8", "BF16", "FP8"} & config.flags_set
            if network.strongly_typed and precision:
                return fail(
                    f"4: [builderConfig.cpp] Error Code 4: API Usage Error (BuilderFlag::k{sorted(precision)[0]} "
                    f"must not be set for a strongly typed network)"
                )
            int8 = "INT8" in config.flags_set
            if not network.strongly_typed and network.has_qdq and not int8:
                return fail("4: Error Code 4: Internal Error (the network has Q/DQ layers but INT8 is not enabled)")
            calibrator = getattr(config, "_calibrator", None)
            if int8 and calibrator is not None:
                cache = calibrator.read_calibration_cache()
                algorithm = (
                    "EntropyCalibration2"
                    if isinstance(calibrator, trt.IInt8EntropyCalibrator2)
                    else "MinMaxCalibration"
                )
                if cache and bytes(cache).split(b"\n", 1)[0].decode(errors="replace") != f"TRT-{cache_tag}-{algorithm}":
                    cache = None  # TensorRT ignores a cache written for another version or algorithm
                if not cache:
                    batch = calibrator.get_batch([t.name for t in network.inputs])
                    if batch is None:
                        return fail(
                            "1: Error Code 1: Calibration failure occurred with no scaling factors detected. "
                            "This could be due to no int8 calibrator or insufficient custom scales for network layers."
                        )
                elif not bytes(cache).startswith(b"TRT-"):
                    return fail("1: Error Code 1: Calibration cache is not a TensorRT calibration table")
                entry["calibrated"] = True
            elif int8 and not network.has_qdq:
                return fail(
                    "2: Error Code 2: Internal Error (INT8 requested but there is no calibrator, Q/DQ layers or "
                    "dynamic ranges)"
                )
            if config.default_device_type == trt.DeviceType.DLA:
                if not 0 <= config.DLA_core < num_dla_cores:
                    return fail(
                        f"1: Error Code 1: DLA core {config.DLA_core} is not available ({num_dla_cores} DLA cores)"
                    )
                if not (network.strongly_typed or precision):
                    return fail("2: Error Code 2: DLA requires FP16 or INT8 layer precision")
            workspace = config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)
            if workspace > free_bytes:
                _error(self.logger, "1: [defaultAllocator.cpp::allocate] Error Code 1: Cuda Runtime (out of memory)")
                return fail(
                    f"2: [executionContext.cpp] Error Code 2: OutOfMemory (Requested amount of GPU memory "
                    f"({workspace} bytes) could not be allocated. There may not be enough free memory for "
                    "allocation to succeed.)"
                )
            onnx_bytes = network.onnx
            if config.timing_cache is not None:
                config.timing_cache.data["entries"] = sorted(
                    set(config.timing_cache.data["entries"]) | {hashlib.sha256(onnx_bytes).hexdigest()[:16]}
                )
            io = [
                {"name": t.name, "mode": "INPUT", "dtype": t.dtype.name, "shape": list(t.shape)} for t in network.inputs
            ]
            io += [
                {"name": t.name, "mode": "OUTPUT", "dtype": t.dtype.name, "shape": list(t.shape)}
                for t in network.outputs
            ]
            profile = next((p for p in config.profiles), None)
            header = {
                "version": version,
                "device": device.name,
                "cc": list(device.compute_capability),
                "io": io,
                "profile": {k: [list(s) for s in v] for k, v in (profile.shapes if profile else {}).items()},
                "strongly_typed": network.strongly_typed,
                "flags": sorted(config.flags_set),
                "device_memory_size": 1 << 20,
                "weights": len(onnx_bytes),
                "onnx_bytes": len(onnx_bytes),
                "has_qdq": network.has_qdq,
            }
            raw = json.dumps(header).encode()
            entry["ok"] = True
            return HostMemory(MAGIC + struct.pack("<Q", len(raw)) + raw + onnx_bytes)

    trt.Builder = Builder

    # -- runtime ----------------------------------------------------------------------------------
    engine_attrs: Dict[str, Any] = {}
    if major < 11:
        engine_attrs["device_memory_size"] = property(lambda self: int(self.header["device_memory_size"]))
    if major >= 10:
        engine_attrs["device_memory_size_v2"] = property(lambda self: int(self.header["device_memory_size"]))
    if hasattr(trt, "EngineStat"):

        def get_engine_stat(self: Any, stat: Any) -> int:
            return int(self.header["weights"]) if stat == trt.EngineStat.TOTAL_WEIGHTS_SIZE else 0

        engine_attrs["get_engine_stat"] = get_engine_stat

    class _EngineBase:
        def __init__(self, header: Dict[str, Any], onnx_bytes: bytes, plan: bytes):
            self.header, self.onnx, self.plan = header, onnx_bytes, plan
            self.io = {t["name"]: t for t in header["io"]}
            self.names = [t["name"] for t in header["io"]]
            self._session: Any = None
            self.contexts_created = 0

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        @property
        def num_optimization_profiles(self) -> int:
            return 1 if self.header["profile"] else 0

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return getattr(trt.TensorIOMode, self.io[name]["mode"]) if name in self.io else trt.TensorIOMode.NONE

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(trt.DataType, self.io[name]["dtype"])

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self.io[name]["shape"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Dims]:
            return [Dims(s) for s in self.header["profile"][name]]

        def serialize(self) -> HostMemory:
            return HostMemory(self.plan)

        def create_execution_context(self, *args: Any) -> IExecutionContext:
            self.contexts_created += 1
            return IExecutionContext(self)

        def session(self) -> Any:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                if self.header.get("has_qdq"):
                    # Q/DQ executed as written (like the ONNX Runtime backend for int8): ONNX Runtime's
                    # fused QLinear kernels round differently.
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                self._session = ort.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
            return self._session

    ICudaEngine = type("ICudaEngine", (_EngineBase,), engine_attrs)
    trt.ICudaEngine = ICudaEngine

    class IExecutionContext:
        def __init__(self, engine: Any):
            self.engine = engine
            self.shapes: Dict[str, Tuple[int, ...]] = {}
            self.addresses: Dict[str, int] = {}
            self.warm_key: Any = None
            self.executions = 0

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            return index == 0

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(int(d) for d in shape)
            spec = self.engine.io.get(name)
            if spec is None or spec["mode"] != "INPUT" or len(shape) != len(spec["shape"]):
                return False
            lo, _, hi = self.engine.header["profile"].get(name, [spec["shape"]] * 3)
            if any(s >= 0 and s != d for s, d in zip(spec["shape"], shape)) or not all(
                a <= d <= b for a, d, b in zip(lo, shape, hi)
            ):
                return False
            self.shapes[name] = shape
            return True

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if name not in self.engine.io or not isinstance(ptr, int) or ptr <= 0:
                return False
            self.addresses[name] = ptr
            return True

        def get_tensor_address(self, name: str) -> int:
            return self.addresses.get(name, 0)

        def get_tensor_shape(self, name: str) -> Dims:
            spec = self.engine.io[name]
            if spec["mode"] == "INPUT":
                return Dims(self.shapes.get(name, spec["shape"]))
            batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
            return Dims([batch if d < 0 else d for d in spec["shape"]])

        def execute_async_v3(self, stream_handle: int) -> bool:
            stream = cuda.stream_for(stream_handle)
            inputs = [n for n in self.engine.names if self.engine.io[n]["mode"] == "INPUT"]
            if any(n not in self.shapes for n in inputs) or any(n not in self.addresses for n in self.engine.names):
                return False
            key = (tuple(sorted(self.shapes.items())), tuple(sorted(self.addresses.items())))
            if stream.capture is not None and key != self.warm_key:
                # TensorRT may allocate or set up on the first enqueue after a change: not capturable
                # (trtexec runs once before capturing for this reason).
                return False
            if stream.capture is None:
                self.warm_key = key
            # Like TensorRT, enqueue stages shape-dependent launch data in memory the context owns and
            # the work reads it when it executes; a CUDA graph replays that read, so a graph captured
            # for one shape is wrong once the context has enqueued another shape eagerly.
            self.staged = [
                (n, self.addresses[n], tuple(self.get_tensor_shape(n)), _NP[self.engine.io[n]["dtype"]])
                for n in self.engine.names
            ]

            def run() -> None:
                plan = self.staged
                feed = {n: cuda.memory.read(ptr, shape, dtype) for n, ptr, shape, dtype in plan if n in inputs}
                session = self.engine.session()
                names = [o.name for o in session.get_outputs()]
                for name, value in zip(names, session.run(names, feed)):
                    _, ptr, shape, dtype = next(p for p in plan if p[0] == name)
                    value = np.asarray(value, dtype=dtype)
                    if value.shape != shape:
                        raise cuda_double.FakeCudaError(f"output {name} has shape {value.shape}, context says {shape}")
                    cuda.memory.write(ptr, value)
                cuda.stats["trt_executions"] += 1

            self.executions += 1
            cuda.enqueue(stream, run, "kernel")
            return True

    trt.IExecutionContext = IExecutionContext

    class Runtime:
        def __init__(self, logger: Any):
            self.logger = logger

        def deserialize_cuda_engine(self, data: Any) -> Any:
            blob = bytes(data)
            if not blob.startswith(MAGIC):
                _error(
                    self.logger,
                    "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: Serialization "
                    "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)",
                )
                _error(
                    self.logger,
                    "4: [runtime.cpp::deserializeCudaEngine::65] Error Code 4: Internal Error "
                    "(Engine deserialization failed.)",
                )
                return None
            start = len(MAGIC) + 8
            (length,) = struct.unpack("<Q", blob[len(MAGIC) : start]) if len(blob) >= start else (1 << 62,)
            try:
                header = json.loads(blob[start : start + length])
                complete = len(blob) == start + length + int(header["onnx_bytes"])
            except (ValueError, KeyError):
                complete = False
            if not complete:
                _error(
                    self.logger,
                    "1: [stdArchiveReader.cpp::StdArchiveReader::42] Error Code 1: Serialization "
                    "(Serialization assertion size == expected failed.Serialized engine is truncated)",
                )
                return None
            if header["version"] != version:
                _error(
                    self.logger,
                    f"6: The engine plan file is not compatible with this version of TensorRT, expecting "
                    f"library version {version} got {header['version']}, please rebuild.",
                )
                return None
            if header["cc"] != list(device.compute_capability):
                _error(
                    self.logger,
                    f"6: The engine plan file is generated on an incompatible device, expecting compute "
                    f"{device.compute_capability_str} got compute {header['cc'][0]}.{header['cc'][1]}, "
                    "please rebuild.",
                )
                return None
            return ICudaEngine(header, blob[start + length :], blob)

    trt.Runtime = Runtime
    return trt
