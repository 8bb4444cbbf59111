"""Load a bundle's engines for *this* device and TensorRT version, or refuse with the fix.

Refusals, each one line: no engines yet; engines built for another device or TensorRT version
(the record's key does not match); engines built from an older stage ONNX; a missing, truncated
or replaced plan file (size and sha256 against the record); and a plan TensorRT itself will not
deserialize (foreign file, or a mismatch the record could not show), quoting TensorRT's reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from hisd_edge.bundle import Bundle
from hisd_edge.cuda.api import DeviceInfo
from hisd_edge.engine.builder import make_logger
from hisd_edge.engine.features import TrtFeatures, detect_features, import_tensorrt
from hisd_edge.engine.store import plan_entry, read_plan, require_record
from hisd_edge.errors import BundleError


@dataclasses.dataclass
class LoadedEngines:
    record: Dict[str, Any]
    features: TrtFeatures
    runtime: Any  # trt.Runtime: keep it alive as long as the engines
    engines: List[Any]  # trt.ICudaEngine per stage
    logger: Any
    full_engine: Optional[Any] = None  # the monolithic model's engine, when asked for and built
    full_model_note: str = ""  # why there is none
    ingraph_engine: Optional[Any] = None  # the in-graph early-exit engine, when asked for and built
    ingraph_note: str = ""  # why there is none


def load_engines(
    bundle: Bundle, precision: str, device: DeviceInfo, full_model: bool = False, ingraph: bool = False
) -> LoadedEngines:
    """The stage engines of the ``precision`` build for ``device`` (and the full model's with ``full_model``,
    the in-graph early-exit engine with ``ingraph`` when the build made one)."""
    import_tensorrt()
    import tensorrt as trt

    features = detect_features(trt)
    record = require_record(bundle, device, features.version, precision)
    logger = make_logger()
    runtime = trt.Runtime(logger)
    if record.get("dla_core") is not None:  # DLA engines run on the core the runtime is set to
        runtime.DLA_core = int(record["dla_core"])

    def load(stage: Optional[int], kind: str = "full_plan") -> Any:
        data = read_plan(bundle, record, stage, kind)
        logger.clear()
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            entry = plan_entry(record, stage, kind)
            path = bundle.root / (entry or {}).get("path", "?")
            reason = "; ".join(logger.errors()[-2:]) or "no reason given"
            raise BundleError(
                f"{path}: TensorRT {features.version} cannot load this engine ({reason}); it is truncated, not a TensorRT "
                f"plan, or built for another device or TensorRT version: run hisd-edge build {bundle.root} --precision "
                f"{precision} on this device"
            )
        return engine

    engines = [load(k) for k in range(bundle.num_stages)]
    loaded = LoadedEngines(record=record, features=features, runtime=runtime, engines=engines, logger=logger)
    if full_model:
        full_info = record.get("full_model") or {}
        manifest_full = bundle.manifest.get("full_model") or {}
        if plan_entry(record, None) is None:
            loaded.full_model_note = full_info.get("reason") or "this build has no full-model engine"
        elif full_info.get("onnx_sha256") and full_info["onnx_sha256"] != manifest_full.get("sha256"):
            loaded.full_model_note = "its full-model engine was built from an older full model (converted again)"
        else:
            loaded.full_engine = load(None)
    if ingraph:
        info = record.get("ingraph") or {}
        artifact = ((bundle.manifest.get("ingraph") or {}).get("files") or {}).get(info.get("onnx_precision", ""), {})
        if plan_entry(record, None, "ingraph_plan") is None:
            loaded.ingraph_note = info.get("reason") or "this build has no in-graph engine (built before it existed)"
        elif info.get("onnx_sha256") != artifact.get("sha256"):
            loaded.ingraph_note = "its in-graph engine was built from an older in-graph ONNX (converted again)"
        else:
            loaded.ingraph_engine = load(None, "ingraph_plan")
    return loaded
