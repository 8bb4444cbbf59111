"""Build TensorRT engines from a bundle, on the target, for TensorRT 8.5 to 11.x.

``build_engines(bundle, BuildOptions(...))`` makes one engine per stage with the recipe the
installed TensorRT calls for (feature-detected, :mod:`~hisd_edge.engine.features` and
:mod:`~hisd_edge.engine.recipe`), stores the plans in the bundle keyed by device, TensorRT version
and precision with a build record (:mod:`~hisd_edge.engine.store`), and renders the equivalent
``trtexec`` commands (:mod:`~hisd_edge.engine.trtexec`). ``load_engines`` is the runtime's way back
in, refusing engines made for another device or TensorRT version. ``plan_build`` does the
choosing without TensorRT (``build --dry-run --trt GEN``); ``import_engines`` takes plans built
with those ``trtexec`` commands, checked on load (``build --import-engines DIR``).

Importing this package imports neither TensorRT nor a CUDA binding.
"""

from hisd_edge.engine.builder import BuildOptions, BuildResult, EngineBuildError, build_engines, parse_batch
from hisd_edge.engine.dryrun import format_plan, plan_build
from hisd_edge.engine.features import (
    TENSORRT_INSTALL_HINT,
    TrtFeatures,
    detect_features,
    generation_features,
    import_tensorrt,
)
from hisd_edge.engine.importer import import_engines
from hisd_edge.engine.loader import LoadedEngines, load_engines
from hisd_edge.engine.recipe import BuildRecipe, choose_recipe
from hisd_edge.engine.store import engine_dir, find_record, require_record
from hisd_edge.engine.trtexec import render_trtexec

__all__ = [
    "TENSORRT_INSTALL_HINT",
    "BuildOptions",
    "BuildRecipe",
    "BuildResult",
    "EngineBuildError",
    "LoadedEngines",
    "TrtFeatures",
    "build_engines",
    "choose_recipe",
    "detect_features",
    "engine_dir",
    "find_record",
    "format_plan",
    "generation_features",
    "import_engines",
    "import_tensorrt",
    "load_engines",
    "parse_batch",
    "plan_build",
    "render_trtexec",
    "require_record",
]
