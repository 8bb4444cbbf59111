"""Runs inside a subprocess that imports NVIDIA's real TensorRT bindings (over the null shim); never
imported by the test suite itself. Reads a job (JSON) on stdin, prints one JSON result on stdout.

What it answers (see tests/engine/real_bindings.py for who asks):

* ``version``, ``features`` (hisd-edge's own :func:`detect_features` on the real module), the
  recipes :func:`choose_recipe` picks for the requested cases, and the numpy mapping of every
  real ``DataType`` through :func:`hisd_edge.engine.features.numpy_dtype`;
* ``logger`` / ``calibrator``: hisd-edge's ILogger and calibrator subclasses built on the real
  base classes (trampolines need no native library), and the logger's filtering and bounds;
* ``enums``: members and values of the enums the test double copies;
* ``surface``: for each requested class, its public names and which properties are settable;
* ``replay``: each recorded use of the API (attribute, call with argument kinds, property set,
  constructor) tried on the real classes. Calls go to an instance with a null native pointer in
  a forked child: pybind11 rejects incompatible arguments with a TypeError before any native
  code runs ("rejected"); compatible ones reach native code and crash or return ("accepted").
  Every call also runs a control with surplus arguments, which pybind11 must reject, or the
  check proves nothing ("unchecked").
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any, Dict, List

import tensorrt as trt

ENUMS = {
    "NetworkDefinitionCreationFlag": "NetworkDefinitionCreationFlag",
    "BuilderFlag": "BuilderFlag",
    "DataType": "DataType",
    "TensorIOMode": "TensorIOMode",
    "MemoryPoolType": "MemoryPoolType",
    "DeviceType": "DeviceType",
    "Severity": "ILogger.Severity",
    "EngineStat": "EngineStat",
    "LayerType": "LayerType",
}


def _resolve(path: str) -> Any:
    obj: Any = trt
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def enums() -> Dict[str, Dict[str, int]]:
    out = {}
    for name, path in ENUMS.items():
        try:
            enum = _resolve(path)
        except AttributeError:
            continue
        out[name] = {member: int(value) for member, value in enum.__members__.items()}
    return out


def surface(owners: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for owner in owners:
        cls = getattr(trt, owner, None)
        if cls is None:
            out[owner] = None
            continue
        names: Dict[str, str] = {}
        for name in dir(cls):
            if name.startswith("_"):
                continue
            attr = inspect.getattr_static(cls, name, None)
            if isinstance(attr, property):
                names[name] = "property_rw" if attr.fset is not None else "property_ro"
            else:
                names[name] = "other"
        out[owner] = names
    return out


# -- replay ----------------------------------------------------------------------------------------
def _logger_subclass() -> Any:
    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            pass

    return Logger()


def _calibrator_subclass() -> Any:
    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

    return Calibrator()


ENUM_PATHS = dict(ENUMS)


def _null(cls: Any) -> Any:
    """An instance of ``cls`` with a null native pointer, whose repr() is safe: pybind11 renders every
    argument with repr() when it rejects a call, and a class with a native __str__ (10.x's
    ParserError) would crash doing that on a null pointer."""
    try:
        safe = type(f"Null{cls.__name__}", (cls,), {"__repr__": lambda self: f"<null {cls.__name__}>"})
    except TypeError:  # a final class: no subclass possible
        safe = cls
    return safe.__new__(safe)


def _value(desc: Dict[str, Any]) -> Any:
    kind = desc["t"]
    if kind == "none":
        return None
    if kind == "bool":
        return True
    if kind == "int":
        return 1
    if kind == "float":
        return 1.0
    if kind == "str":
        return "x"
    if kind == "bytes":
        return b"\x00" * 16
    if kind == "enum":
        return getattr(_resolve(ENUM_PATHS.get(desc["enum"], desc["enum"])), desc["member"])
    if kind == "dims":
        return trt.Dims([1] * desc["n"])
    if kind == "seq":
        return tuple(_value(item) for item in desc["items"])
    if kind == "obj":
        if desc["cls"] == "ILogger":
            return _logger_subclass()
        if desc["cls"] in ("IInt8Calibrator", "IInt8EntropyCalibrator2"):
            return _calibrator_subclass()
        return _null(getattr(trt, desc["cls"]))
    return object()


def _attempt(call: Any) -> str:
    """'rejected' when pybind11 refuses the arguments, else 'accepted' (returned, raised otherwise, crashed)."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child: quiet, and gone without running any cleanup
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            call()
        except TypeError as exc:
            text = str(exc)
            os._exit(3 if "incompatible" in text or "takes no arguments" in text else 0)
        except BaseException:
            os._exit(0)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return "rejected" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3 else "accepted"


def _check_call(target: Any, args: List[Any]) -> str:
    outcome = _attempt(lambda: target(*args))
    if outcome == "rejected":
        return "rejected"
    # Surplus arguments: no overload takes four more (one more is not enough: 10.x's
    # build_serialized_network has an overload with an extra ``kernel_text: object``).
    control = _attempt(lambda: target(*args, object(), object(), object(), object()))
    return "ok" if control == "rejected" else "unchecked"


def replay_one(rec: Dict[str, Any]) -> Dict[str, Any]:
    kind, owner, name = rec["kind"], rec["owner"], rec.get("name", "")
    out = dict(rec)
    try:
        if owner == "<module>":
            if not hasattr(trt, name):
                return {**out, "result": "missing"}
            attr = getattr(trt, name)
            if kind == "call":
                if inspect.isfunction(attr):  # a Python helper of the bindings package (nptype, volume)
                    try:  # the arguments fit its signature (what it then does with them is its business)
                        inspect.signature(attr).bind(*[_value(a) for a in rec["args"]])
                    except TypeError:
                        return {**out, "result": "rejected"}
                    return {**out, "result": "ok"}
                return {**out, "result": _check_call(attr, [_value(a) for a in rec["args"]])}
            return {**out, "result": "ok"}
        cls = _resolve(ENUM_PATHS.get(owner, owner))
        if kind == "init":
            return {**out, "result": _check_call(cls, [_value(a) for a in rec["args"]])}
        if kind in ("class_attr", "override"):
            return {**out, "result": "ok" if hasattr(cls, name) else "missing"}
        attr = inspect.getattr_static(cls, name, None)
        if attr is None:
            return {**out, "result": "missing"}
        if kind == "get":
            return {**out, "result": "ok"}
        null = _null(cls)
        if kind == "set":
            if not isinstance(attr, property):
                return {**out, "result": "not a property"}
            if attr.fset is None:
                return {**out, "result": "read-only"}
            return {**out, "result": _check_call(lambda *a: attr.fset(null, *a), [_value(a) for a in rec["args"]])}
        if kind == "call":
            method = getattr(cls, name)
            args = [_value(a) for a in rec["args"]]
            return {**out, "result": _check_call(lambda *a: method(null, *a), args)}
    except AttributeError as exc:
        return {**out, "result": f"missing ({exc})"}
    return {**out, "result": f"unknown kind {kind}"}


# -- hisd-edge's own code on the real module -----------------------------------------------------------
def features_and_recipes(cases: List[Dict[str, Any]]) -> Dict[str, Any]:
    from hisd_edge.engine.features import detect_features
    from hisd_edge.engine.recipe import choose_recipe
    from hisd_edge.errors import HisdError

    features = detect_features(trt)
    recipes = []
    for case in cases:
        try:
            recipe = choose_recipe(
                features,
                case["requested"],
                case["onnx"],
                has_calibration_cache=case.get("cache", False),
                dla_core=case.get("dla"),
                legacy_int8=case.get("legacy", False),
            )
            recipes.append(recipe.to_dict())
            for flag in recipe.network_flags:  # every flag the recipe names must exist here
                getattr(trt.NetworkDefinitionCreationFlag, flag)
            for flag in recipe.builder_flags:
                getattr(trt.BuilderFlag, flag)
        except HisdError as exc:
            recipes.append({"error": str(exc)})
        except AttributeError as exc:
            recipes.append({"missing": str(exc)})
    return {"features": features.to_dict(), "recipes": recipes}


def logger_and_calibrator() -> Dict[str, Any]:
    from hisd_edge.engine.builder import make_cache_calibrator, make_logger

    logger = make_logger()
    for i in range(100):
        logger.log(trt.ILogger.ERROR, f"error {i}")
        logger.log(trt.ILogger.VERBOSE, f"verbose {i}")
        logger.log(trt.ILogger.INFO, f"info {i}")
        logger.log(trt.ILogger.WARNING, f"warning {i}")
    out: Dict[str, Any] = {
        "is_ilogger": isinstance(logger, trt.ILogger),
        "errors_kept": len(logger.errors()),
        "last_error": logger.errors()[-1],
        "others_kept": len(logger.other_messages),
        "verbose_kept": sum("verbose" in m for m in logger.other_messages),
        "info_kept": sum("info" in m for m in logger.other_messages),
    }
    if hasattr(trt, "IInt8EntropyCalibrator2"):
        calibrator = make_cache_calibrator(b"TRT-8601-EntropyCalibration2\n", batch_size=4)
        out["calibrator"] = {
            "is_entropy2": isinstance(calibrator, trt.IInt8EntropyCalibrator2),
            "batch_size": calibrator.get_batch_size(),
            "cache": bytes(calibrator.read_calibration_cache()).decode(),
        }
    return out


def dtypes() -> Dict[str, Any]:
    from hisd_edge.engine.features import numpy_dtype

    out = {}
    for name, member in trt.DataType.__members__.items():
        mapped = numpy_dtype(trt, member)
        out[name] = None if mapped is None else mapped.name
    return out


def main() -> None:
    job = json.loads(sys.stdin.read())
    result: Dict[str, Any] = {"version": trt.__version__, "enums": enums(), "dtypes": dtypes()}
    result.update(features_and_recipes(job.get("recipes", [])))
    result["logger"] = logger_and_calibrator()
    result["surface"] = surface(job.get("owners", []))
    result["replay"] = [replay_one(rec) for rec in job.get("records", [])]
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
