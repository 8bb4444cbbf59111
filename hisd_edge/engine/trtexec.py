"""The ``trtexec`` command equivalent to one stage's build, for people who want to reproduce it.

``trtexec`` ships with TensorRT (``/usr/src/tensorrt/bin/trtexec`` on JetPack). The flags used
here exist from 8.5 on; ``--memPoolSize=workspace:N`` is in MiB when no unit is given (8.5 to
11.x); ``--stronglyTyped`` is accepted from 10.x (a no-op in 11.x, where typing is always strong);
``--precisionConstraints`` / ``--layerPrecisions`` / ``--layerOutputTypes`` (8.4+) pin the
confidence head to fp32 in weakly typed fp16 builds, as the builder does layer by layer.
"""

from __future__ import annotations

import shlex
from typing import Dict, List, Optional, Sequence, Tuple

from hisd_edge.engine.recipe import BuildRecipe

_FLAG_OPTIONS = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback"}


def _shape(dims: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in dims)


def render_trtexec(
    onnx_path: str,
    engine_path: str,
    recipe: BuildRecipe,
    input_shapes: Dict[str, Tuple[int, ...]],
    batch: Tuple[int, int, int],
    *,
    workspace_mib: Optional[int] = None,
    timing_cache: Optional[str] = None,
    calibration_cache: Optional[str] = None,
    optimization_level: Optional[int] = None,
    fp32_layers: Sequence[str] = (),
) -> str:
    """One shell-quoted ``trtexec`` line; ``input_shapes`` maps input names to per-sample dims;
    ``fp32_layers`` are the confidence-head layers a weakly typed fp16 recipe keeps in fp32."""
    args: List[str] = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    for option, batch_size in zip(("--minShapes", "--optShapes", "--maxShapes"), batch):
        spec = ",".join(f"{name}:{_shape((batch_size, *tuple(dims)))}" for name, dims in input_shapes.items())
        args.append(f"{option}={spec}")
    if "STRONGLY_TYPED" in recipe.network_flags:
        args.append("--stronglyTyped")
    for flag in recipe.builder_flags:
        if flag in _FLAG_OPTIONS and flag != "GPU_FALLBACK":
            args.append(_FLAG_OPTIONS[flag])
    if recipe.fp32_head and fp32_layers:
        args.append("--precisionConstraints=obey")
        args.append("--layerPrecisions=" + ",".join(f"{name}:fp32" for name in fp32_layers))
        args.append("--layerOutputTypes=" + ",".join(f"{name}:fp32" for name in fp32_layers))
    if recipe.calibration_cache and calibration_cache:
        args.append(f"--calib={calibration_cache}")
    if recipe.dla_core is not None:
        args.append(f"--useDLACore={recipe.dla_core}")
        if "GPU_FALLBACK" in recipe.builder_flags:
            args.append("--allowGPUFallback")
    if workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{int(workspace_mib)}")
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if optimization_level is not None:
        args.append(f"--builderOptimizationLevel={int(optimization_level)}")
    return " ".join(shlex.quote(a) for a in args)
