"""Engines built elsewhere (``trtexec``) brought into the bundle: ``hisd-edge build --import-engines DIR``.

``DIR`` holds ``stage<k>.plan`` for every stage (and optionally ``full.plan``), as the commands of
``build --dry-run`` write them. Each plan is checked before anything is stored:

* it deserializes with *this* TensorRT on *this* device (TensorRT itself refuses a plan from
  another GPU model or TensorRT version; its reason is quoted);
* its I/O matches the manifest: the stage's input name and per-sample shape, the output names,
  data types the runtime can map, and the chain (``feat{k}`` written by stage k is what stage k+1
  reads, dtype and shape);
* the full model's plan takes stage 0's input and has every exit as an output.

The build record says ``"external": true`` with where the plans came from; its recipe is unknown
(``typing: "external"``), and its stages carry no ``onnx_sha256`` (nothing ties them to the ONNX).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hisd_edge.bundle import Bundle
from hisd_edge.cuda.api import CudaBackend
from hisd_edge.engine.builder import BuildOptions, BuildResult, make_logger, stage_precisions
from hisd_edge.engine.features import (
    detect_features,
    dims_to_tuple,
    dtype_name,
    engine_device_memory_bytes,
    engine_weights_bytes,
    import_tensorrt,
    numpy_dtype,
)
from hisd_edge.engine.recipe import BuildRecipe
from hisd_edge.engine.store import new_record, publish
from hisd_edge.errors import BundleError, InputError

IMPORTABLE = ("fp32", "fp16", "int8", "mixed")


def _io(trt: Any, engine: Any, path: Path) -> Dict[str, Dict[str, Any]]:
    """name -> {"mode", "dtype" (numpy name), "shape"} of a plan, refusing types numpy cannot hold."""
    io: Dict[str, Dict[str, Any]] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        trt_dtype = engine.get_tensor_dtype(name)
        dtype = numpy_dtype(trt, trt_dtype)
        if dtype is None:
            raise BundleError(
                f"{path}: tensor {name} is {dtype_name(trt_dtype)}, a type the runtime cannot map to numpy; build the plan "
                "from the bundle's stage ONNX (float32 inputs and outputs) without --inputIOFormats/--outputIOFormats"
            )
        io[name] = {
            "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output",
            "dtype": dtype.name,
            "shape": list(dims_to_tuple(engine.get_tensor_shape(name))),
        }
    return io


def _rows(engine: Any, name: str) -> Tuple[int, int, int]:
    dims = dims_to_tuple(engine.get_tensor_shape(name))
    if dims[0] >= 0:
        return dims[0], dims[0], dims[0]
    lo, opt, hi = (dims_to_tuple(d)[0] for d in engine.get_tensor_profile_shape(name, 0))
    return lo, opt, hi


def _check_stage(bundle: Bundle, k: int, io: Dict[str, Dict[str, Any]], path: Path) -> None:
    stage = bundle.stages[k]
    want_in = stage["inputs"][0]["name"]
    want_shape = [int(d) for d in stage["inputs"][0]["shape"][1:]]
    want_out = sorted(o["name"] for o in stage["outputs"])
    inputs = [n for n, t in io.items() if t["mode"] == "input"]
    outputs = sorted(n for n, t in io.items() if t["mode"] == "output")
    if inputs != [want_in] or outputs != want_out:
        raise BundleError(
            f"{path}: the plan has inputs {inputs} and outputs {outputs}, the manifest's stage {k} has {[want_in]} and "
            f"{want_out}; build stage{k}.plan from stage {k}'s ONNX (the commands of hisd-edge build --dry-run)"
        )
    shape = io[want_in]["shape"][1:]
    if shape != want_shape:
        raise BundleError(
            f"{path}: input {want_in} takes per-sample shape {tuple(shape)}, the manifest's stage {k} takes "
            f"{tuple(want_shape)}; build stage{k}.plan from stage {k}'s ONNX"
        )


def import_engines(
    bundle: Bundle, directory: str, options: BuildOptions, cuda: Optional[CudaBackend] = None
) -> BuildResult:
    """Check and store the plans in ``directory`` as an external build (see the module docstring)."""
    begin = time.perf_counter()
    folder = Path(directory)
    if options.precision not in IMPORTABLE:
        raise InputError(
            f"--import-engines with --precision {options.precision}: say which precision the plans were built at "
            f"({', '.join(IMPORTABLE)})"
        )
    if not folder.is_dir():
        raise InputError(f"--import-engines {folder}: no such folder; give the folder the trtexec commands wrote to")
    paths = [folder / f"stage{k}.plan" for k in range(bundle.num_stages)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"--import-engines {folder}: missing {', '.join(missing)} (one plan per stage, named as the commands of "
            f"hisd-edge build --dry-run name them)"
        )
    precisions = stage_precisions(bundle, options.precision)
    import_tensorrt()
    import tensorrt as trt

    features = detect_features(trt)
    owns_cuda = cuda is None
    if cuda is None:
        from hisd_edge.cuda import open_cuda

        cuda = open_cuda()
    try:
        device = cuda.device
        logger = make_logger()
        runtime = trt.Runtime(logger)
        if options.dla_core is not None:
            runtime.DLA_core = int(options.dla_core)

        def load(path: Path) -> Tuple[bytes, Any]:
            data = path.read_bytes()
            logger.clear()
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                reason = "; ".join(logger.errors()[-2:]) or "no reason given"
                raise BundleError(
                    f"{path}: TensorRT {features.version} cannot load this plan on this {device.name} "
                    f"(sm {device.compute_capability_str}) ({reason}); a plan runs only on the GPU model and TensorRT "
                    "version that built it: build it on this device with the commands of hisd-edge build --dry-run"
                )
            return data, engine

        plans: List[bytes] = []
        stage_records: List[Dict[str, Any]] = []
        ios = []
        for k, path in enumerate(paths):
            data, engine = load(path)
            io = _io(trt, engine, path)
            _check_stage(bundle, k, io, path)
            ios.append(io)
            lo, opt, hi = _rows(engine, bundle.stages[k]["inputs"][0]["name"])
            record_k: Dict[str, Any] = {
                "index": k,
                "precision": precisions[k],
                "external": True,
                "plan_sha256": hashlib.sha256(data).hexdigest(),
                "batch": {"min": lo, "opt": opt, "max": hi},
                "io": [{"name": n, **t} for n, t in io.items()],
                "device_memory_bytes": engine_device_memory_bytes(engine, features),
            }
            weights = engine_weights_bytes(trt, engine, features)
            if weights is not None:
                record_k["weights_bytes"] = weights
            stage_records.append(record_k)
            plans.append(data)
            del engine
        for k in range(bundle.num_stages - 1):
            out, nxt = ios[k][f"feat{k}"], ios[k + 1][f"feat{k}"]
            if out["dtype"] != nxt["dtype"] or out["shape"][1:] != nxt["shape"][1:]:
                raise BundleError(
                    f"{paths[k]}: writes feat{k} as {out['dtype']} {tuple(out['shape'][1:])}, but {paths[k + 1].name} "
                    f"reads {nxt['dtype']} {tuple(nxt['shape'][1:])}; build both plans from one bundle"
                )
        full_plan: Optional[bytes] = None
        full_record: Dict[str, Any] = {"built": False, "reason": f"no full.plan in {folder}"}
        full_path = folder / "full.plan"
        if full_path.is_file():
            full_plan, engine = load(full_path)
            io = _io(trt, engine, full_path)
            want_in = bundle.stages[0]["inputs"][0]["name"]
            exits = [e["output"] for e in bundle.exits]
            inputs = [n for n, t in io.items() if t["mode"] == "input"]
            lacking = [n for n in exits if io.get(n, {}).get("mode") != "output"]
            if inputs != [want_in] or lacking:
                raise BundleError(
                    f"{full_path}: the plan has inputs {inputs} and lacks outputs {lacking}; the full model takes "
                    f"{want_in} and has every exit ({', '.join(exits)}) as an output: build it from the bundle's full model"
                )
            lo, opt, hi = _rows(engine, want_in)
            full_record = {
                "built": True,
                "external": True,
                "plan_sha256": hashlib.sha256(full_plan).hexdigest(),
                "batch": {"min": lo, "opt": opt, "max": hi},
                "io": [{"name": n, **t} for n, t in io.items()],
                "device_memory_bytes": engine_device_memory_bytes(engine, features),
            }
            del engine
        label = options.precision
        recipe = BuildRecipe(
            precision=label,
            requested=label,
            onnx_precision="unknown",
            typing="external",
            network_flags=(),
            builder_flags=(),
            calibration_cache=False,
            dla_core=options.dla_core,
            notes=(f"imported from {folder} (built outside hisd-edge, e.g. with trtexec)",),
        )
        record = new_record(
            device,
            features.version,
            recipe.to_dict(),
            external=True,
            imported_from=str(folder),
            batch=stage_records[0]["batch"],
            dla_core=options.dla_core,
            cuda_binding=cuda.name,
            features=features.to_dict(),
            stages=stage_records,
            full_model=full_record,
        )
        stored = publish(bundle, record, plans, full_plan=full_plan)
        return BuildResult(
            record=stored,
            recipe=recipe,
            trtexec=[],
            timing_cache="",
            seconds=time.perf_counter() - begin,
            recipes=[recipe] * bundle.num_stages,
        )
    finally:
        if owns_cuda:
            cuda.close()
