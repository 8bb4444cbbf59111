"""What ``hisd-edge build`` would do for a TensorRT generation, on a machine without TensorRT.

``build --dry-run --trt GEN`` chooses the recipes exactly as a real build would (the generation's
API surface comes from :data:`hisd_edge.engine.features.GENERATIONS`, checked against NVIDIA's real
bindings in CI), and prints per stage the recipe and the equivalent ``trtexec`` command, saving
``stage<k>.plan`` (and ``full.plan``) into one folder. Plans built on the target with those
commands come back in with ``build --import-engines DIR``
(:func:`hisd_edge.engine.importer.import_engines`), which checks them on load.

The confidence-head layer names for ``--layerPrecisions`` are read from the stage ONNX, so a dry
run needs the ``onnx`` package (a workstation has it); without it the commands say so.
"""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Optional

from hisd_edge.bundle import Bundle
from hisd_edge.engine.builder import (
    BuildOptions,
    _full_model_plan,
    _stage_input_dims,
    choose_recipes,
    record_precision,
)
from hisd_edge.engine.features import generation_features
from hisd_edge.engine.head import head_pairs, onnx_head_nodes
from hisd_edge.engine.recipe import BuildRecipe
from hisd_edge.engine.trtexec import render_trtexec

DEFAULT_ENGINES_DIR = "trtexec-engines"


def _head_layers(bundle: Bundle, k: Optional[int], recipe: BuildRecipe, notes: List[str]) -> List[str]:
    if not recipe.fp32_head:
        return []
    path = bundle.full_model_path() if k is None else bundle.stage_path(k, recipe.onnx_precision)
    outputs = (
        [e["output"] for e in bundle.exits] + [str(e.get("confidence_output")) for e in bundle.exits]
        if k is None
        else [o["name"] for o in bundle.stages[k]["outputs"]]
    )
    try:
        return onnx_head_nodes(path, head_pairs(bundle.exits, outputs))
    except ImportError:
        note = "install onnx to list the confidence-head layers that --layerPrecisions keeps in fp32"
        if note not in notes:
            notes.append(note)
        return []


def plan_build(
    bundle: Bundle, options: BuildOptions, generation: str, engines_dir: str = DEFAULT_ENGINES_DIR
) -> Dict[str, Any]:
    """The build of ``bundle`` with ``options`` on TensorRT ``generation``, as a JSON-ready plan."""
    options.validate()
    features = generation_features(generation)
    recipes = choose_recipes(features, bundle, options)
    label = record_precision(options, recipes)
    notes: List[str] = []
    opt_level = options.optimization_level if features.builder_optimization_level else None
    if options.optimization_level is not None and opt_level is None:
        notes.append(f"TensorRT {generation} has no builder optimization level (8.6+): --opt-level is left out")
    n = bundle.num_stages
    rows: List[Dict[str, Any]] = []
    timing_cache = f"{engines_dir}/timing.cache"
    for k in range(n):
        recipe = recipes[k]
        onnx_path = bundle.stage_path(k, recipe.onnx_precision)
        calib = None
        if recipe.calibration_cache:
            calib = str(bundle.root / bundle.stages[k]["files"]["int8"]["calibration_cache"]["path"])
            note = (
                "trtexec reads a calibration cache only when its header names its own TensorRT version; "
                "hisd-edge build retargets the bundle's caches, trtexec does not"
            )
            if note not in notes:
                notes.append(note)
        fp32_layers = _head_layers(bundle, k, recipe, notes)
        batch = options.stage_batch(k, n)
        rows.append(
            {
                "index": k,
                "recipe": recipe.to_dict(),
                "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
                "onnx": str(onnx_path),
                "engine": f"{engines_dir}/stage{k}.plan",
                "fp32_layers": fp32_layers,
                "trtexec": render_trtexec(
                    str(onnx_path),
                    f"{engines_dir}/stage{k}.plan",
                    recipe,
                    _stage_input_dims(bundle, k),
                    batch,
                    workspace_mib=options.workspace_mib,
                    timing_cache=timing_cache,
                    calibration_cache=calib,
                    optimization_level=opt_level,
                    fp32_layers=fp32_layers,
                ),
            }
        )
    build_full, why_not = _full_model_plan(bundle, options, recipes)
    full: Dict[str, Any] = {"built": False, "reason": why_not}
    if build_full:
        full_path = bundle.full_model_path()
        assert full_path is not None
        fp32_layers = _head_layers(bundle, None, recipes[0], notes)
        full = {
            "built": True,
            "onnx": str(full_path),
            "engine": f"{engines_dir}/full.plan",
            "trtexec": render_trtexec(
                str(full_path),
                f"{engines_dir}/full.plan",
                recipes[0],
                _stage_input_dims(bundle, None),
                options.stage_batch(0, n),
                workspace_mib=options.workspace_mib,
                timing_cache=timing_cache,
                optimization_level=opt_level,
                fp32_layers=fp32_layers,
            ),
        }
    command = ["hisd-edge", "build", str(bundle.root), "--import-engines", engines_dir, "--precision", label]
    if options.dla_core is not None:
        command += ["--dla-core", str(options.dla_core)]
    return {
        "generation": generation,
        "tensorrt_version": features.version,
        "features": features.to_dict(),
        "precision": label,
        "stages": rows,
        "full_model": full,
        "import": " ".join(shlex.quote(a) for a in command),
        "notes": sorted({n for r in recipes for n in r.notes}) + notes,
    }


def format_plan(plan: Dict[str, Any]) -> str:
    """The plan as text: per stage the recipe and its trtexec line, then how to bring the plans back."""
    lines = [
        f"dry run: what hisd-edge build does with TensorRT {plan['generation']} ({plan['tensorrt_version']}), "
        f"precision {plan['precision']}; nothing was built",
    ]
    for row in plan["stages"]:
        recipe = row["recipe"]
        flags = ", ".join(recipe["network_flags"] + recipe["builder_flags"]) or "no flags"
        where = f", DLA core {recipe['dla_core']}" if recipe.get("dla_core") is not None else ""
        batch = row["batch"]
        lines.append(
            f"stage {row['index']}: {recipe['precision']}, {recipe['typing']}ly typed from the {recipe['onnx_precision']} "
            f"ONNX ({flags}{where}), batch {batch['min']},{batch['opt']},{batch['max']}"
            + (f", fp32 head: {', '.join(row['fp32_layers'])}" if row["fp32_layers"] else "")
        )
        lines.append(f"  {row['trtexec']}")
    full = plan["full_model"]
    if full["built"]:
        lines.append("full model (for bench and evaluate):")
        lines.append(f"  {full['trtexec']}")
    else:
        lines.append(f"full model: not built ({full['reason']}); bench compares against the chain")
    for note in plan["notes"]:
        lines.append(f"note: {note}")
    lines.append("then, on the target, with the plans in that folder:")
    lines.append(f"  {plan['import']}")
    return "\n".join(lines)
