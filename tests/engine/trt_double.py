"""TEST DOUBLE: an in-process stand-in for the ``tensorrt`` Python module. Never shipped.

``make_tensorrt(generation, cuda)`` returns a module object with the API surface hisd-edge uses,
shaped like one TensorRT generation. It is kept honest against NVIDIA's real bindings
(``tests/engine/test_real_bindings.py``, on every CI run):

* its **enums** take their members and values from the real modules (``trt_real_enums.json``,
  written from them by ``real_bindings.py --write-snapshot`` and checked against them): 8.6.1,
  10.3.0, 10.13.3, 10.16.1, 11.4.0; 8.5 is 8.6.1 without what 8.6 added (NVIDIA/TensorRT
  ``python/src/infer/pyCore.cpp`` and ``pyGraph.cpp`` at tag 8.5.3);
* its **classes** expose, per generation, a subset of the real classes' public names (a
  read-only real property is read-only here);
* every use of it by hisd-edge's code (module attribute, class attribute, method call with the
  kinds of its arguments, property get or set, constructor, overridden virtual) is **recorded**
  in :data:`RECORDED`, so the conformance test can replay exactly those on the real classes.

=========  =================================================================================
8.5 / 8.6  ``EXPLICIT_BATCH`` needed for ONNX; no ``STRONGLY_TYPED``; ``FP16``/``INT8`` flags;
           calibrators; ``device_memory_size`` only; ``builder_optimization_level`` from 8.6;
           ``ParserError`` without ``node_operator`` / ``node_name``
10.3       ``EXPLICIT_BATCH`` ignored; ``STRONGLY_TYPED``; flags (refused on strongly typed
           networks); calibrators; ``device_memory_size`` and ``_v2``
10.13      as 10.3, plus ``DataType.E8M0`` (10.12+: weak typing deprecated)
10.16      as 10.13, plus ``get_engine_stat`` / ``EngineStat``
11.4       no ``EXPLICIT_BATCH``, no precision flags, calibrators or ``int8_calibrator``; always
           strongly typed; ``device_memory_size_v2`` only; no ``platform_has_fast_fp16``; no
           per-layer precision; ``ITensor.dtype`` read-only
=========  =================================================================================

Its "engines" are the stage ONNX serialized into a small plan format (magic, JSON header with
the TensorRT version, device compute capability, I/O table and how to execute, then the ONNX
bytes) and they execute with ONNX Runtime, reading inputs from and writing outputs to the
addresses bound with ``set_tensor_address`` in the fake CUDA address space (:mod:`cuda_double`),
on the stream passed to ``execute_async_v3``. A weakly typed build with ``FP16`` executes the
network converted to fp16 (``hisd_edge.convert.quantize.convert_fp16``, the converter's own
function) except the layers pinned to fp32 under ``OBEY``/``PREFER_PRECISION_CONSTRAINTS``, so
a head left in fp16 really rounds. Deserializing checks the magic, truncation, TensorRT version
and compute capability, logging messages worded like TensorRT's. The builder enforces the rules
the recipes rely on (dynamic inputs need a profile; no precision flags on strongly typed
networks; weakly typed Q/DQ networks need INT8; DLA needs fp16/int8 and a core that exists; a
layer that cannot run on the DLA needs GPU_FALLBACK; workspace larger than free memory is out of
memory). ``can_run_on_DLA`` says no for dynamic profiles (DLA takes fixed shapes) and for layer
types outside a small DLA set. Every build is logged in ``module.builds`` for assertions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import struct
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent


def _load_cuda_double() -> Any:
    name = "hisd_test_cuda_double"
    if name not in sys.modules:
        path = HERE.parent / "cuda" / "cuda_double.py"
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
    "10.13": "10.13.3.9",
    "10.16": "10.16.1.11",
    "11.4": "11.4.0.106",
}
# which real module each generation's enums come from (trt_real_enums.json)
ENUM_SOURCE = {"8.5": "8.6", "8.6": "8.6", "10.3": "10.3", "10.13": "10.13", "10.16": "10.16", "11.4": "11.4"}
# what 8.6 added over 8.5 (pyCore.cpp / pyGraph.cpp at NVIDIA/TensorRT tag 8.5.3)
ADDED_IN_86 = {
    "BuilderFlag": {"FP8", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"},
    "DataType": {"FP8"},
    "MemoryPoolType": {"TACTIC_DRAM"},
    "LayerType": {"CAST", "NORMALIZATION", "REVERSE_SEQUENCE"},
}
REAL_ENUMS = json.loads((HERE / "trt_real_enums.json").read_text())
MAGIC = b"hisd-fake-trt-plan\x00"
_ONNX_DTYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8", 16: "BF16"}
_NP = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}
# ONNX operator -> TensorRT layer type (what the double's parser makes; unknown ops become IDENTITY)
_LAYER_TYPES = {
    "Conv": "CONVOLUTION",
    "ConvTranspose": "DECONVOLUTION",
    "MaxPool": "POOLING",
    "AveragePool": "POOLING",
    "GlobalAveragePool": "REDUCE",
    "Relu": "ACTIVATION",
    "Sigmoid": "ACTIVATION",
    "Clip": "ACTIVATION",
    "Add": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Div": "ELEMENTWISE",
    "Gemm": "MATRIX_MULTIPLY",
    "MatMul": "MATRIX_MULTIPLY",
    "Softmax": "SOFTMAX",
    "ReduceMax": "REDUCE",
    "ReduceMean": "REDUCE",
    "Flatten": "SHUFFLE",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "Concat": "CONCATENATION",
    "Constant": "CONSTANT",
    "Cast": "CAST",
    "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE",
    "BatchNormalization": "SCALE",
    "Resize": "RESIZE",
}
# layer types the double's DLA takes (a simplification of TensorRT's DLA support matrix)
_DLA_LAYERS = {
    "CONVOLUTION",
    "DECONVOLUTION",
    "POOLING",
    "ACTIVATION",
    "ELEMENTWISE",
    "SCALE",
    "CONCATENATION",
    "SOFTMAX",
    "SHUFFLE",
    "RESIZE",
    "LRN",
}

# -- recording ------------------------------------------------------------------------------------
#: Every use of the double by hisd-edge's code, as JSON strings of
#: {"generation", "kind", "owner", "name", "args"} (see the module docstring).
RECORDED: Set[str] = set()
_THIS = __name__


def _from_hisd_edge(depth: int) -> bool:
    """Whether the frame ``depth`` levels up runs hisd-edge's own code (not the double, not a test)."""
    try:
        frame = sys._getframe(depth + 1)
    except ValueError:
        return False
    return str(frame.f_globals.get("__name__", "")).startswith("hisd_edge")


def _describe(value: Any) -> Dict[str, Any]:
    """The kind of an argument, enough to rebuild one of the same kind for the real API."""
    if value is None:
        return {"t": "none"}
    if isinstance(value, bool):
        return {"t": "bool"}
    if isinstance(value, (int, np.integer)):
        return {"t": "int"}
    if isinstance(value, float):
        return {"t": "float"}
    if isinstance(value, str):
        return {"t": "str"}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"t": "bytes"}
    if isinstance(value, _Member):
        return {"t": "enum", "enum": value._enum, "member": value.name}
    if isinstance(value, Dims):
        return {"t": "dims", "n": len(value)}
    if isinstance(value, (tuple, list)):
        return {"t": "seq", "items": [_describe(v) for v in value]}
    for cls in type(value).__mro__:
        if getattr(cls, "__module__", None) == _THIS and getattr(cls, "_real_name", None):
            return {"t": "obj", "cls": cls._real_name}
    return {"t": "other", "py": type(value).__name__}


class _Recorder:
    def __init__(self, generation: str):
        self.generation = generation

    def add(self, kind: str, owner: str, name: str = "", args: Any = ()) -> None:
        RECORDED.add(
            json.dumps(
                {"generation": self.generation, "kind": kind, "owner": owner, "name": name, "args": list(args)},
                sort_keys=True,
            )
        )


def _wrap_call(recorder: _Recorder, owner: str, name: str, method: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        described = [_describe(a) for a in args] + [_describe(v) for v in kwargs.values()]
        recorder.add("call", owner, name, described)
        return method(*args, **kwargs)

    return call


def _double_definer(cls: type, name: str) -> Optional[type]:
    """The double class (this module's) in ``cls``'s MRO that defines ``name``, if any."""
    for base in cls.__mro__:
        if name in base.__dict__:
            return base if base.__module__ == _THIS else None
    return None


def _real_name_of(cls: type) -> str:
    """The real class name a (possibly hisd-edge-subclassed) double class stands for."""
    for base in cls.__mro__:
        if base.__module__ == _THIS and base.__dict__.get("_real_name"):
            return str(base.__dict__["_real_name"])
    return ""


class _RecordedMeta(type):
    """Records class-level attribute reads, constructor calls and subclass overrides made by hisd-edge."""

    def __getattribute__(cls, name: str) -> Any:
        value = type.__getattribute__(cls, name)
        if name[:1] != "_" and _from_hisd_edge(1):
            recorder = type.__getattribute__(cls, "_recorder")
            real = type.__getattribute__(cls, "_real_name")
            if recorder is not None and real:
                recorder.add("class_attr", real, name)
        return value

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        real = type.__getattribute__(cls, "_real_name")
        recorder = type.__getattribute__(cls, "_recorder")
        if recorder is not None and real and _from_hisd_edge(1) and type.__getattribute__(cls, "__module__") == _THIS:
            recorder.add("init", real, "", [_describe(a) for a in args] + [_describe(v) for v in kwargs.values()])
        return type.__call__(cls, *args, **kwargs)

    def __init__(cls, name: str, bases: Any, namespace: Dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        if str(namespace.get("__module__", "")).startswith("hisd_edge"):
            # a hisd-edge subclass of a double class (the logger, the calibrator): the virtuals it overrides
            for attr, value in namespace.items():
                if attr[:1] == "_" or not callable(value):
                    continue
                for base in cls.__mro__[1:]:
                    definer = _double_definer(base, attr)
                    if definer is not None and definer.__dict__.get("_recorder") is not None:
                        definer.__dict__["_recorder"].add("override", _real_name_of(definer), attr)
                        break


class _Recorded(metaclass=_RecordedMeta):
    """Base of the double's classes: instance attribute reads, method calls and property sets by
    hisd-edge are recorded under ``_real_name`` (the real class's name). On a hisd-edge subclass
    (the logger, the calibrator) only what the double's classes define is API."""

    _real_name = ""
    _recorder: Optional[_Recorder] = None

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name[:1] != "_" and _from_hisd_edge(1):
            cls = type(self)
            recorder, real = cls._recorder, _real_name_of(cls)
            pure = cls.__module__ == _THIS
            definer = _double_definer(cls, name)
            if recorder is not None and real and (pure or definer is not None):
                if inspect.ismethod(value) and value.__self__ is self and definer is not None:
                    return _wrap_call(recorder, real, name, value)
                recorder.add("get", real, name)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name[:1] != "_" and _from_hisd_edge(1):
            cls = type(self)
            recorder, real = cls._recorder, _real_name_of(cls)
            if recorder is not None and real and (cls.__module__ == _THIS or _double_definer(cls, name) is not None):
                recorder.add("set", real, name, [_describe(value)])
        object.__setattr__(self, name, value)


class _RecordingModule(types.ModuleType):
    """The module object: records which of its names hisd-edge reads."""

    def __getattribute__(self, name: str) -> Any:
        value = types.ModuleType.__getattribute__(self, name)
        if name[:1] != "_" and _from_hisd_edge(1):
            recorder = types.ModuleType.__getattribute__(self, "_recorder")
            recorder.add("module", "<module>", name)
            if isinstance(value, types.FunctionType):
                return _wrap_call(recorder, "<module>", name, value)
        return value


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


def _enum(name: str, generation: str, recorder: _Recorder) -> Optional[type]:
    """The enum ``name`` of ``generation`` with the real module's members and values (None if it has none)."""
    members = REAL_ENUMS[ENUM_SOURCE[generation]]["enums"].get(name)
    if members is None:
        return None
    if generation == "8.5":
        members = {m: v for m, v in members.items() if m not in ADDED_IN_86.get(name, set())}
    attrs: Dict[str, Any] = {member: _Member(name, member, value) for member, value in members.items()}
    attrs["__members__"] = dict(attrs)
    attrs["_real_name"] = "ILogger.Severity" if name == "Severity" else name
    attrs["_recorder"] = recorder
    return _RecordedMeta(name, (_Recorded,), attrs)


class Dims(tuple):
    def __new__(cls, shape: Any = ()) -> Dims:
        return super().__new__(cls, (int(d) for d in shape))


class HostMemory(bytes):
    """IHostMemory: supports the buffer protocol (bytes(), memoryview()), like TensorRT's."""

    @property
    def nbytes(self) -> int:
        return len(self)


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
    weak_api = major < 11  # precision flags, calibrators, per-layer precision
    patch = int(version.split(".")[2])
    cache_tag = major * (10000 if major >= 10 else 1000) + minor * 100 + patch  # calibration cache header
    recorder = _Recorder(generation)

    def recorded(cls: type, real_name: Optional[str] = None) -> type:
        """``cls`` as a recorded double class named like the real one."""
        attrs = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        attrs["_real_name"] = real_name or cls.__name__
        attrs["_recorder"] = recorder
        bases = tuple(b for b in cls.__bases__ if b is not object) or (_Recorded,)
        if not any(issubclass(b, _Recorded) for b in bases):
            bases = (*bases, _Recorded)
        return _RecordedMeta(cls.__name__, bases, attrs)

    trt = _RecordingModule("tensorrt")
    trt._recorder = recorder  # type: ignore[attr-defined]
    trt.__version__ = version
    trt.__file__ = f"<fake tensorrt {version}, tests/engine/trt_double.py>"
    trt.builds = []  # one dict per build_serialized_network call
    trt.cuda = cuda

    # -- enums per generation (from the real modules) -------------------------------------------------
    for name in ("NetworkDefinitionCreationFlag", "BuilderFlag", "DataType", "TensorIOMode", "MemoryPoolType"):
        setattr(trt, name, _enum(name, generation, recorder))
    trt.DeviceType = _enum("DeviceType", generation, recorder)
    trt.LayerType = _enum("LayerType", generation, recorder)
    severity = _enum("Severity", generation, recorder)
    engine_stat = _enum("EngineStat", generation, recorder)
    if engine_stat is not None:
        trt.EngineStat = engine_stat
    trt.Dims = Dims
    network_flag = trt.NetworkDefinitionCreationFlag
    explicit_bit = (1 << int(network_flag.EXPLICIT_BATCH)) if hasattr(network_flag, "EXPLICIT_BATCH") else 0
    strong_bit = (1 << int(network_flag.STRONGLY_TYPED)) if hasattr(network_flag, "STRONGLY_TYPED") else 0
    data_type = trt.DataType

    def nptype(dtype: Any) -> Any:
        """As the bindings' own nptype: numpy's type, or TypeError where numpy has none."""
        name = getattr(dtype, "name", "")
        if name in _NP and hasattr(data_type, name):
            return _NP[name]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

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

    ILogger = recorded(ILogger)  # type: ignore[misc]

    class Logger(ILogger):  # type: ignore[valid-type,misc]
        def __init__(self, min_severity: Any = None) -> None:
            ILogger.__init__(self)

    trt.ILogger, trt.Logger = ILogger, recorded(Logger)

    def _error(logger: Any, msg: str) -> None:
        logger.log(ILogger.ERROR, msg)

    if weak_api:

        class IInt8Calibrator:
            def __init__(self) -> None:
                pass

            def get_batch_size(self) -> int:
                return 1

            def get_batch(self, names: List[str]) -> Any:
                return None

            def read_calibration_cache(self) -> Any:
                return None

            def write_calibration_cache(self, cache: Any) -> None:
                return None

        IInt8Calibrator = recorded(IInt8Calibrator)  # type: ignore[misc]

        class IInt8EntropyCalibrator2(IInt8Calibrator):  # type: ignore[valid-type,misc]
            pass

        class IInt8MinMaxCalibrator(IInt8Calibrator):  # type: ignore[valid-type,misc]
            pass

        trt.IInt8Calibrator = IInt8Calibrator
        trt.IInt8EntropyCalibrator2 = recorded(IInt8EntropyCalibrator2)
        trt.IInt8MinMaxCalibrator = recorded(IInt8MinMaxCalibrator)

    # -- network, layers and parser -------------------------------------------------------------------
    tensor_attrs: Dict[str, Any] = {
        "name": property(lambda self: self._name),
        "shape": property(lambda self: self._shape),
    }
    if weak_api:  # 11.x: an ITensor's dtype is read-only (strong typing)

        def _set_dtype(self: Any, value: Any) -> None:
            self._dtype = value

        tensor_attrs["dtype"] = property(lambda self: self._dtype, _set_dtype)
    else:
        tensor_attrs["dtype"] = property(lambda self: self._dtype)

    def _tensor_init(self: Any, name: str, shape: Tuple[int, ...], dtype: Any) -> None:
        self._name, self._shape, self._dtype = name, Dims(shape), dtype

    tensor_attrs["__init__"] = _tensor_init
    tensor_attrs["__module__"] = _THIS
    tensor_attrs["_real_name"] = "ITensor"
    tensor_attrs["_recorder"] = recorder
    Tensor = _RecordedMeta("ITensor", (_Recorded,), tensor_attrs)
    trt.ITensor = Tensor

    layer_attrs: Dict[str, Any] = {}
    if weak_api:  # per-layer precision is weak typing: gone in 11.x

        def _get_precision(self: Any) -> Any:
            return self._precision or data_type.FLOAT

        def _set_precision(self: Any, value: Any) -> None:
            self._precision = value

        def set_output_type(self: Any, index: int, dtype: Any) -> None:
            self._output_types[int(index)] = dtype

        def get_output_type(self: Any, index: int) -> Any:
            return self._output_types.get(int(index), self._outputs[index].dtype)

        layer_attrs["precision"] = property(_get_precision, _set_precision)
        layer_attrs["precision_is_set"] = property(lambda self: self._precision is not None)
        layer_attrs["set_output_type"] = set_output_type
        layer_attrs["get_output_type"] = get_output_type

    class ILayer:
        def __init__(self, network: Any, name: str, op: str, inputs: List[Any], outputs: List[Any]):
            self._network, self._name, self._op = network, name, op
            self._inputs, self._outputs = inputs, outputs
            self._precision: Any = None
            self._output_types: Dict[int, Any] = {}

        @property
        def name(self) -> str:
            return self._name

        @property
        def type(self) -> Any:
            kind = _LAYER_TYPES.get(self._op, "IDENTITY")
            return getattr(trt.LayerType, kind, trt.LayerType.IDENTITY)

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, index: int) -> Any:
            return self._inputs[index]

        def get_output(self, index: int) -> Any:
            return self._outputs[index]

    for key, value in layer_attrs.items():
        setattr(ILayer, key, value)
    ILayer = recorded(ILayer)  # type: ignore[misc]
    trt.ILayer = ILayer

    class INetworkDefinition:
        def __init__(self, flags: int):
            known = sum(1 << int(m) for m in trt.NetworkDefinitionCreationFlag.__members__.values())
            if flags & ~known:
                raise TypeError(f"unknown network creation flags {flags:#x}")
            self._flags = flags
            self._explicit_batch = major >= 10 or bool(flags & explicit_bit)
            self._strongly_typed = always_strong or (has_strong and bool(flags & strong_bit))
            self._onnx: Optional[bytes] = None
            self._inputs: List[Any] = []
            self._outputs: List[Any] = []
            self._layers: List[Any] = []
            self._has_qdq = False

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        def get_input(self, i: int) -> Any:
            return self._inputs[i]

        def get_output(self, i: int) -> Any:
            return self._outputs[i]

        def get_layer(self, i: int) -> Any:
            return self._layers[i]

    INetworkDefinition = recorded(INetworkDefinition)  # type: ignore[misc]
    trt.INetworkDefinition = INetworkDefinition

    class ParserError:
        def __init__(self, desc: str, node: int = -1, op: str = "", name: str = "", code: int = 8):
            self._desc, self._node, self._op, self._name, self._code = desc, node, op, name, code

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def code(self) -> int:
            return self._code

        def __str__(self) -> str:
            return f"In node {self._node} ({self._op}): {self._desc}"

    if major >= 10:  # node_operator / node_name arrived with 10.x's parser

        def node_operator(self: Any) -> str:
            return self._op

        def node_name(self: Any) -> str:
            return self._name

        ParserError.node_operator = node_operator  # type: ignore[attr-defined]
        ParserError.node_name = node_name  # type: ignore[attr-defined]
    ParserError = recorded(ParserError)  # type: ignore[misc]

    def _tensors(values: Any, skip: set) -> List[Any]:
        out = []
        for value in values:
            if value.name in skip:
                continue
            ttype = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
            out.append(Tensor(value.name, dims, getattr(trt.DataType, _ONNX_DTYPES.get(ttype.elem_type, "FLOAT"))))
        return out

    class OnnxParser:
        def __init__(self, network: Any, logger: Any):
            self._network, self._logger = network, logger
            self._errors: List[Any] = []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, i: int) -> Any:
            return self._errors[i]

        def clear_errors(self) -> None:
            self._errors = []

        def parse_from_file(self, path: str) -> bool:
            return bool(self.parse(Path(path).read_bytes(), path))

        def parse(self, model: Any, path: Optional[str] = None) -> bool:
            import onnx
            import onnx.defs

            self._errors = []
            net = self._network
            try:
                proto = onnx.load_model_from_string(bytes(model))
                if not proto.graph.node:
                    raise ValueError("empty graph")
            except Exception:
                self._errors.append(
                    ParserError("Failed to parse ONNX model from file: the model is not a valid ONNX protobuf", code=3)
                )
                return False
            if not net._explicit_batch:
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
            inferred = onnx.shape_inference.infer_shapes(proto)
            infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
            initializers = {t.name for t in proto.graph.initializer}
            net._onnx = bytes(model)
            net._inputs = _tensors(proto.graph.input, initializers)
            net._outputs = _tensors(proto.graph.output, set())
            tensors = {t.name: t for t in [*net._inputs, *net._outputs]}

            def tensor(tname: str) -> Any:
                if tname not in tensors:
                    info = infos.get(tname)
                    elem = info.type.tensor_type.elem_type if info is not None else 1
                    tensors[tname] = Tensor(tname, (), getattr(trt.DataType, _ONNX_DTYPES.get(elem, "FLOAT")))
                return tensors[tname]

            net._layers = [
                ILayer(
                    net,
                    node.name or f"{node.op_type}_{i}",
                    node.op_type,
                    [tensor(t) for t in node.input if t and t not in initializers],
                    [tensor(t) for t in node.output if t],
                )
                for i, node in enumerate(proto.graph.node)
            ]
            net._has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
            return True

    OnnxParser = recorded(OnnxParser)  # type: ignore[misc]
    trt.OnnxParser, trt.ParserError = OnnxParser, ParserError

    # -- builder ----------------------------------------------------------------------------------
    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: Dict[str, Tuple[Tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
            for dims in (min, opt, max):
                if not isinstance(dims, (Dims, tuple, list)):
                    raise TypeError("set_shape takes Dims")
            self._shapes[name] = (tuple(min), tuple(opt), tuple(max))

        def get_shape(self, name: str) -> List[Dims]:
            return [Dims(s) for s in self._shapes[name]]

    IOptimizationProfile = recorded(IOptimizationProfile)  # type: ignore[misc]

    class ITimingCache:
        def __init__(self, data: Dict[str, Any]):
            self._data = data

        def serialize(self) -> HostMemory:
            return HostMemory(b"hisd-fake-timing-cache\n" + json.dumps(self._data).encode())

        def combine(self, other: Any, ignore_mismatch: bool) -> bool:
            self._data["entries"] = sorted(set(self._data["entries"]) | set(other._data["entries"]))
            return True

    ITimingCache = recorded(ITimingCache)  # type: ignore[misc]

    def _dynamic_profile(config: Any, network: Any) -> bool:
        """True when some dynamic network input gets a profile range (min != max): DLA cannot take it."""
        for t in network._inputs:
            if any(d < 0 for d in t.shape):
                profile = next((p for p in config._profiles if t.name in p._shapes), None)
                if profile is None or len(set(profile._shapes[t.name])) > 1:
                    return True
        return False

    class IBuilderConfig:
        def __init__(self) -> None:
            self._flags: set = set()
            self._pools: Dict[Any, int] = {}
            self._profiles: List[Any] = []
            self._timing_cache: Any = None
            self._device_type = trt.DeviceType.GPU
            self._dla_core = -1
            self._calibrator: Any = None
            self._calibration_profile: Any = None
            self._opt_level = 3

        @property
        def default_device_type(self) -> Any:
            return self._device_type

        @default_device_type.setter
        def default_device_type(self, value: Any) -> None:
            self._device_type = value

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            self._dla_core = int(value)

        def set_flag(self, flag: Any) -> None:
            self._flags.add(flag.name)

        def get_flag(self, flag: Any) -> bool:
            return flag.name in self._flags

        def clear_flag(self, flag: Any) -> None:
            self._flags.discard(flag.name)

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            if not isinstance(pool_size, int) or pool_size <= 0:
                raise TypeError("pool size must be a positive int")
            self._pools[pool] = pool_size

        def get_memory_pool_limit(self, pool: Any) -> int:
            return self._pools.get(pool, device.total_memory_bytes)

        def add_optimization_profile(self, profile: Any) -> int:
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def can_run_on_DLA(self, layer: Any) -> bool:
            if _dynamic_profile(self, layer._network):
                return False  # DLA takes fixed shapes only
            precise = layer._network._strongly_typed or bool({"FP16", "INT8"} & self._flags)
            return precise and layer.type.name in _DLA_LAYERS

        def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
            blob = bytes(serialized_timing_cache)
            if not blob:
                return ITimingCache({"version": version, "cc": list(device.compute_capability), "entries": []})
            prefix = b"hisd-fake-timing-cache\n"
            if not blob.startswith(prefix):
                return None
            return ITimingCache(json.loads(blob[len(prefix) :]))

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            mismatch = cache._data["version"] != version or cache._data["cc"] != list(device.compute_capability)
            if mismatch and not ignore_mismatch:
                return False
            if mismatch:
                cache = ITimingCache({"version": version, "cc": list(device.compute_capability), "entries": []})
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> Any:
            return self._timing_cache

    if weak_api:

        def _get_cal(self: Any) -> Any:
            return self._calibrator

        def _set_cal(self: Any, value: Any) -> None:
            if value is not None and not isinstance(value, trt.IInt8Calibrator):
                raise TypeError("int8_calibrator must be an IInt8Calibrator")
            self._calibrator = value

        def set_calibration_profile(self: Any, profile: Any) -> bool:
            self._calibration_profile = profile
            return True

        IBuilderConfig.int8_calibrator = property(_get_cal, _set_cal)  # type: ignore[attr-defined]
        IBuilderConfig.set_calibration_profile = set_calibration_profile  # type: ignore[attr-defined]
    if (major, minor) >= (8, 6):

        def _get_level(self: Any) -> int:
            return self._opt_level

        def _set_level(self: Any, value: int) -> None:
            self._opt_level = int(value)

        IBuilderConfig.builder_optimization_level = property(_get_level, _set_level)  # type: ignore[attr-defined]
    IBuilderConfig = recorded(IBuilderConfig)  # type: ignore[misc]
    trt.IBuilderConfig = IBuilderConfig
    trt.IOptimizationProfile, trt.ITimingCache = IOptimizationProfile, ITimingCache

    def _fp32_nodes(network: Any, config: Any) -> List[str]:
        """Layers a weak fp16 build keeps in fp32: those pinned, when a precision-constraints flag is set."""
        if not ({"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"} & config._flags):
            return []
        return [
            layer._name
            for layer in network._layers
            if layer._precision is not None and layer._precision.name == "FLOAT"
        ]

    class Builder:
        def __init__(self, logger: Any):
            self._logger = logger

        @property
        def num_DLA_cores(self) -> int:
            return num_dla_cores

        def create_network(self, flags: int = 0) -> Any:
            return INetworkDefinition(flags)

        def create_builder_config(self) -> Any:
            return IBuilderConfig()

        def create_optimization_profile(self) -> Any:
            return IOptimizationProfile()

        def build_serialized_network(self, network: Any, config: Any) -> Optional[HostMemory]:
            on_dla = config._device_type == trt.DeviceType.DLA
            layers_on_dla = [layer._name for layer in network._layers if on_dla and config.can_run_on_DLA(layer)]
            entry: Dict[str, Any] = {
                "network_flags": [
                    m.name
                    for m in trt.NetworkDefinitionCreationFlag.__members__.values()
                    if network._flags & (1 << int(m))
                ],
                "strongly_typed": network._strongly_typed,
                "builder_flags": sorted(config._flags),
                "workspace_bytes": config._pools.get(trt.MemoryPoolType.WORKSPACE),
                "profiles": [p._shapes for p in config._profiles],
                "calibrated": False,
                "dla_core": config._dla_core if on_dla else None,
                "dla_layers": layers_on_dla,
                "timing_cache": config._timing_cache is not None,
                "fp32_layers": _fp32_nodes(network, config),
                "ok": False,
            }
            trt.builds.append(entry)
            fail = lambda msg: (_error(self._logger, msg), None)[1]  # noqa: E731
            if network._onnx is None:
                return fail("Network must have at least one output (the ONNX was never parsed)")
            for tensor in network._inputs:
                if any(d < 0 for d in tensor.shape):
                    profile = next((p for p in config._profiles if tensor.name in p._shapes), None)
                    if profile is None:
                        return fail(
                            "4: [network.cpp::validate] Error Code 4: Internal Error (Network has dynamic or shape "
                            "inputs, but no optimization profile has been defined.)"
                        )
                    lo, opt, hi = profile._shapes[tensor.name]
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
            precision = {"FP16", "INT8", "BF16", "FP8"} & config._flags
            if network._strongly_typed and precision:
                return fail(
                    f"4: [builderConfig.cpp] Error Code 4: API Usage Error (BuilderFlag::k{sorted(precision)[0]} "
                    f"must not be set for a strongly typed network)"
                )
            int8 = "INT8" in config._flags
            if not network._strongly_typed and network._has_qdq and not int8:
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
                    batch = calibrator.get_batch([t.name for t in network._inputs])
                    if batch is None:
                        return fail(
                            "1: Error Code 1: Calibration failure occurred with no scaling factors detected. "
                            "This could be due to no int8 calibrator or insufficient custom scales for network layers."
                        )
                elif not bytes(cache).startswith(b"TRT-"):
                    return fail("1: Error Code 1: Calibration cache is not a TensorRT calibration table")
                entry["calibrated"] = True
            elif int8 and not network._has_qdq:
                return fail(
                    "2: Error Code 2: Internal Error (INT8 requested but there is no calibrator, Q/DQ layers or "
                    "dynamic ranges)"
                )
            if on_dla:
                if not 0 <= config._dla_core < num_dla_cores:
                    return fail(
                        f"1: Error Code 1: DLA core {config._dla_core} is not available ({num_dla_cores} DLA cores)"
                    )
                if not (network._strongly_typed or precision):
                    return fail("2: Error Code 2: DLA requires FP16 or INT8 layer precision")
                if len(layers_on_dla) < len(network._layers) and "GPU_FALLBACK" not in config._flags:
                    return fail(
                        "2: Error Code 2: Internal Error (a layer cannot run on DLA and GPU fallback is not enabled)"
                    )
            workspace = config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)
            if workspace > free_bytes:
                _error(self._logger, "1: [defaultAllocator.cpp::allocate] Error Code 1: Cuda Runtime (out of memory)")
                return fail(
                    f"2: [executionContext.cpp] Error Code 2: OutOfMemory (Requested amount of GPU memory "
                    f"({workspace} bytes) could not be allocated. There may not be enough free memory for "
                    "allocation to succeed.)"
                )
            onnx_bytes = network._onnx
            if config._timing_cache is not None:
                config._timing_cache._data["entries"] = sorted(
                    set(config._timing_cache._data["entries"]) | {hashlib.sha256(onnx_bytes).hexdigest()[:16]}
                )
            io = [
                {"name": t.name, "mode": "INPUT", "dtype": t.dtype.name, "shape": list(t.shape)}
                for t in network._inputs
            ]
            io += [
                {"name": t.name, "mode": "OUTPUT", "dtype": t.dtype.name, "shape": list(t.shape)}
                for t in network._outputs
            ]
            profile = next((p for p in config._profiles), None)
            # a weakly typed FP16 build may run any layer in fp16 (except those pinned to fp32); with
            # INT8 or Q/DQ the double runs the graph as written
            fp16 = not network._strongly_typed and "FP16" in config._flags and not int8 and not network._has_qdq
            header = {
                "version": version,
                "device": device.name,
                "cc": list(device.compute_capability),
                "io": io,
                "profile": {k: [list(s) for s in v] for k, v in (profile._shapes if profile else {}).items()},
                "strongly_typed": network._strongly_typed,
                "flags": sorted(config._flags),
                "device_memory_size": 1 << 20,
                "weights": len(onnx_bytes),
                "onnx_bytes": len(onnx_bytes),
                "has_qdq": network._has_qdq,
                "fp16": fp16,
                "fp32_nodes": entry["fp32_layers"],
                "dla_core": entry["dla_core"],
            }
            raw = json.dumps(header).encode()
            entry["ok"] = True
            return HostMemory(MAGIC + struct.pack("<Q", len(raw)) + raw + onnx_bytes)

    if weak_api:  # platform_has_fast_fp16 is gone in 11.x

        def platform_has_fast_fp16(self: Any) -> bool:
            return True

        Builder.platform_has_fast_fp16 = property(platform_has_fast_fp16)  # type: ignore[attr-defined]
    trt.Builder = recorded(Builder)

    # -- runtime ----------------------------------------------------------------------------------
    class ICudaEngine:
        def __init__(self, header: Dict[str, Any], onnx_bytes: bytes, plan: bytes):
            self._header, self._onnx, self._plan = header, onnx_bytes, plan
            self._io = {t["name"]: t for t in header["io"]}
            self._names = [t["name"] for t in header["io"]]
            self._session: Any = None
            self._contexts_created = 0

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        @property
        def num_optimization_profiles(self) -> int:
            return 1 if self._header["profile"] else 0

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str) -> Any:
            return getattr(trt.TensorIOMode, self._io[name]["mode"]) if name in self._io else trt.TensorIOMode.NONE

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(trt.DataType, self._io[name]["dtype"])

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self._io[name]["shape"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Dims]:
            return [Dims(s) for s in self._header["profile"][name]]

        def serialize(self) -> HostMemory:
            return HostMemory(self._plan)

        def create_execution_context(self, *args: Any) -> Any:
            self._contexts_created += 1
            return IExecutionContext(self)

        def _run_session(self) -> Any:
            if self._session is None:
                import onnx
                import onnxruntime as ort

                model = self._onnx
                if self._header.get("fp16"):
                    from hisd_edge.convert.quantize import convert_fp16

                    half = convert_fp16(onnx.load_model_from_string(model), self._header.get("fp32_nodes") or [])
                    model = half.SerializeToString()
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                if self._header.get("has_qdq"):
                    # Q/DQ executed as written (like the ONNX Runtime backend for int8): ONNX Runtime's
                    # fused QLinear kernels round differently.
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            return self._session

    if major < 11:
        ICudaEngine.device_memory_size = property(lambda self: int(self._header["device_memory_size"]))  # type: ignore[attr-defined]
    if major >= 10:
        ICudaEngine.device_memory_size_v2 = property(lambda self: int(self._header["device_memory_size"]))  # type: ignore[attr-defined]
    if engine_stat is not None:

        def get_engine_stat(self: Any, stat: Any) -> int:
            return int(self._header["weights"]) if stat == trt.EngineStat.TOTAL_WEIGHTS_SIZE else 0

        ICudaEngine.get_engine_stat = get_engine_stat  # type: ignore[attr-defined]
    ICudaEngine = recorded(ICudaEngine)  # type: ignore[misc]
    trt.ICudaEngine = ICudaEngine

    class IExecutionContext:
        def __init__(self, engine: Any):
            self._engine = engine
            self._shapes: Dict[str, Tuple[int, ...]] = {}
            self._addresses: Dict[str, int] = {}
            self._warm_key: Any = None
            self._executions = 0
            self._profile = 0
            self._staged: List[Any] = []

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            self._profile = int(profile_index)
            return profile_index == 0

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(int(d) for d in shape)
            spec = self._engine._io.get(name)
            if spec is None or spec["mode"] != "INPUT" or len(shape) != len(spec["shape"]):
                return False
            lo, _, hi = self._engine._header["profile"].get(name, [spec["shape"]] * 3)
            if any(s >= 0 and s != d for s, d in zip(spec["shape"], shape)) or not all(
                a <= d <= b for a, d, b in zip(lo, shape, hi)
            ):
                return False
            self._shapes[name] = shape
            return True

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if name not in self._engine._io or not isinstance(memory, int) or memory <= 0:
                return False
            self._addresses[name] = memory
            return True

        def get_tensor_address(self, name: str) -> int:
            return self._addresses.get(name, 0)

        def get_tensor_shape(self, name: str) -> Dims:
            spec = self._engine._io[name]
            if spec["mode"] == "INPUT":
                return Dims(self._shapes.get(name, spec["shape"]))
            batch = next(iter(self._shapes.values()))[0] if self._shapes else -1
            return Dims([batch if d < 0 else d for d in spec["shape"]])

        def execute_async_v3(self, stream_handle: int) -> bool:
            stream = cuda.stream_for(stream_handle)
            engine = self._engine
            inputs = [n for n in engine._names if engine._io[n]["mode"] == "INPUT"]
            if any(n not in self._shapes for n in inputs) or any(n not in self._addresses for n in engine._names):
                return False
            key = (tuple(sorted(self._shapes.items())), tuple(sorted(self._addresses.items())))
            if stream.capture is not None and key != self._warm_key:
                # TensorRT may allocate or set up on the first enqueue after a change: not capturable
                # (trtexec runs once before capturing for this reason).
                return False
            if stream.capture is None:
                self._warm_key = key
            # Like TensorRT, enqueue stages shape-dependent launch data in memory the context owns and
            # the work reads it when it executes; a CUDA graph replays that read, so a graph captured
            # for one shape is wrong once the context has enqueued another shape eagerly.
            self._staged = [
                (n, self._addresses[n], tuple(self.get_tensor_shape(n)), _NP[engine._io[n]["dtype"]])
                for n in engine._names
            ]

            def run() -> None:
                plan = self._staged
                feed = {n: cuda.memory.read(ptr, shape, dtype) for n, ptr, shape, dtype in plan if n in inputs}
                session = engine._run_session()
                names = [o.name for o in session.get_outputs()]
                for name, value in zip(names, session.run(names, feed)):
                    _, ptr, shape, dtype = next(p for p in plan if p[0] == name)
                    value = np.asarray(value, dtype=dtype)
                    if value.shape != shape:
                        raise cuda_double.FakeCudaError(f"output {name} has shape {value.shape}, context says {shape}")
                    cuda.memory.write(ptr, value)
                cuda.stats["trt_executions"] += 1

            self._executions += 1
            cuda.enqueue(stream, run, "kernel")
            return True

    IExecutionContext = recorded(IExecutionContext)  # type: ignore[misc]
    trt.IExecutionContext = IExecutionContext

    class Runtime:
        def __init__(self, logger: Any):
            self._logger = logger
            self._dla_core = -1

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            self._dla_core = int(value)

        def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
            blob = bytes(serialized_engine)
            if not blob.startswith(MAGIC):
                _error(
                    self._logger,
                    "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: Serialization "
                    "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)",
                )
                _error(
                    self._logger,
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
                    self._logger,
                    "1: [stdArchiveReader.cpp::StdArchiveReader::42] Error Code 1: Serialization "
                    "(Serialization assertion size == expected failed.Serialized engine is truncated)",
                )
                return None
            if header["version"] != version:
                _error(
                    self._logger,
                    f"6: The engine plan file is not compatible with this version of TensorRT, expecting "
                    f"library version {version} got {header['version']}, please rebuild.",
                )
                return None
            if header["cc"] != list(device.compute_capability):
                _error(
                    self._logger,
                    f"6: The engine plan file is generated on an incompatible device, expecting compute "
                    f"{device.compute_capability_str} got compute {header['cc'][0]}.{header['cc'][1]}, "
                    "please rebuild.",
                )
                return None
            return ICudaEngine(header, blob[start + length :], blob)

    trt.Runtime = recorded(Runtime)
    return trt


#: Module attributes that are the double's own (for assertions), not TensorRT's.
DOUBLE_ONLY = {"builds", "cuda"}


def double_surface(trt: Any) -> Dict[str, Dict[str, str]]:
    """Per double class (by its real name): public names -> "property_rw" | "property_ro" | "other"."""
    out: Dict[str, Dict[str, str]] = {}
    for name in dir(trt):
        cls = types.ModuleType.__getattribute__(trt, name)
        if name.startswith("_") or not isinstance(cls, _RecordedMeta) or hasattr(cls, "__members__"):
            continue
        names: Dict[str, str] = {}
        for attr in dir(cls):
            if attr.startswith("_"):
                continue
            value = inspect.getattr_static(cls, attr)
            if isinstance(value, property):
                names[attr] = "property_rw" if value.fset is not None else "property_ro"
            else:
                names[attr] = "other"
        out[type.__getattribute__(cls, "_real_name")] = names
    return out


def module_names(trt: Any) -> List[str]:
    return sorted(n for n in dir(trt) if not n.startswith("_") and n not in DOUBLE_ONLY)
