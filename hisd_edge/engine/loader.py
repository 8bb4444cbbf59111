"""Load a bundle's engines for *this* device and TensorRT version, or refuse with the fix.

Refusals, each one line: no engines yet; engines built for another device or TensorRT version
(the record's key does not match); engines built from an older stage ONNX; a missing, truncated
or replaced plan file (size and sha256 against the record); and a plan TensorRT itself will not
deserialize (foreign file, or a mismatch the record could not show), quoting TensorRT's reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

from hisd_edge.bundle import Bundle
from hisd_edge.cuda.api import DeviceInfo
from hisd_edge.engine.builder import make_logger
from hisd_edge.engine.features import TrtFeatures, detect_features, import_tensorrt
from hisd_edge.engine.store import read_plan, require_record
from hisd_edge.errors import BundleError


@dataclasses.dataclass
class LoadedEngines:
    record: Dict[str, Any]
    features: TrtFeatures
    runtime: Any  # trt.Runtime: keep it alive as long as the engines
    engines: List[Any]  # trt.ICudaEngine per stage
    logger: Any


def load_engines(bundle: Bundle, precision: str, device: DeviceInfo) -> LoadedEngines:
    import_tensorrt()
    import tensorrt as trt

    features = detect_features(trt)
    record = require_record(bundle, device, features.version, precision)
    logger = make_logger()
    runtime = trt.Runtime(logger)
    if record.get("dla_core") is not None:  # DLA engines run on the core the runtime is set to
        runtime.DLA_core = int(record["dla_core"])
    engines = []
    for k in range(bundle.num_stages):
        data = read_plan(bundle, record, k)
        logger.clear()
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            path = bundle.root / next(
                f["path"] for f in record["files"] if int(f["stage"]) == k and f.get("kind", "plan") == "plan"
            )
            reason = "; ".join(logger.errors()[-2:]) or "no reason given"
            raise BundleError(
                f"{path}: TensorRT {features.version} cannot load this engine ({reason}); it is truncated, not a TensorRT "
                f"plan, or built for another device or TensorRT version: run hisd-edge build {bundle.root} --precision "
                f"{precision} on this device"
            )
        engines.append(engine)
    return LoadedEngines(record=record, features=features, runtime=runtime, engines=engines, logger=logger)
