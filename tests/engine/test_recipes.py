"""Feature detection and build recipes per TensorRT generation (no TensorRT needed: the double's
module shapes, then the pure recipe function)."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from hisd_edge.engine import choose_recipe, detect_features, render_trtexec
from hisd_edge.errors import InputError

ALL = ("fp32", "fp16", "int8")


@pytest.mark.parametrize(
    "generation, expected",
    [
        (
            "8.5",
            {
                "explicit_batch_flag": True,
                "strongly_typed_flag": False,
                "precision_flags": True,
                "int8_calibrator": True,
                "weak_typing_deprecated": False,
                "device_memory_size_v2": False,
                "engine_stat": False,
                "builder_optimization_level": False,
            },
        ),
        (
            "8.6",
            {
                "explicit_batch_flag": True,
                "strongly_typed_flag": False,
                "precision_flags": True,
                "builder_optimization_level": True,
            },
        ),
        (
            "10.3",
            {
                "explicit_batch_flag": True,
                "strongly_typed_flag": True,
                "precision_flags": True,
                "int8_calibrator": True,
                "weak_typing_deprecated": False,
                "device_memory_size_v2": True,
                "legacy_device_memory_size": True,
            },
        ),
        (
            "10.13",
            {
                "strongly_typed_flag": True,
                "precision_flags": True,
                "weak_typing_deprecated": True,
                "engine_stat": False,
            },
        ),
        ("10.16", {"weak_typing_deprecated": True, "engine_stat": True}),
        (
            "11.4",
            {
                "explicit_batch_flag": False,
                "strongly_typed_flag": True,
                "precision_flags": False,
                "int8_calibrator": False,
                "device_memory_size_v2": True,
                "legacy_device_memory_size": False,
                "engine_stat": True,
            },
        ),
    ],
)
def test_features_are_detected_from_the_api_surface(trt_double, generation, expected):
    features = detect_features(trt_double.make_tensorrt(generation))
    for name, value in expected.items():
        assert getattr(features, name) is value, name
    assert features.version == trt_double.GENERATIONS[generation]


@pytest.mark.parametrize(
    "generation, precision, typing, onnx, network_flags, builder_flags",
    [
        # every weak FP16 recipe pins the confidence head to fp32 (per-layer precision + OBEY)
        ("8.5", "fp16", "weak", "fp32", ["EXPLICIT_BATCH"], ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        ("8.5", "int8", "weak", "int8", ["EXPLICIT_BATCH"], ["INT8"]),  # weakly typed Q/DQ still needs INT8
        ("8.5", "best", "weak", "int8", ["EXPLICIT_BATCH"], ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        ("8.6", "fp32", "weak", "fp32", ["EXPLICIT_BATCH"], []),
        # before 10.12: weak typing is not deprecated
        ("10.3", "fp16", "weak", "fp32", ["EXPLICIT_BATCH"], ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        ("10.13", "fp16", "strong", "fp16", ["EXPLICIT_BATCH", "STRONGLY_TYPED"], []),
        ("10.13", "int8", "strong", "int8", ["EXPLICIT_BATCH", "STRONGLY_TYPED"], []),
        ("11.4", "fp16", "strong", "fp16", ["STRONGLY_TYPED"], []),
        ("11.4", "best", "strong", "int8", ["STRONGLY_TYPED"], []),
    ],
)
def test_recipe_per_generation(trt_double, generation, precision, typing, onnx, network_flags, builder_flags):
    recipe = choose_recipe(detect_features(trt_double.make_tensorrt(generation)), precision, ALL)
    assert (recipe.typing, recipe.onnx_precision) == (typing, onnx)
    assert list(recipe.network_flags) == network_flags
    assert list(recipe.builder_flags) == builder_flags
    assert recipe.fp32_head is ("FP16" in builder_flags)
    assert not recipe.calibration_cache


def test_best_picks_the_lowest_precision_the_bundle_has(trt_double):
    strong = detect_features(trt_double.make_tensorrt("11.4"))
    assert choose_recipe(strong, "best", ("fp32", "fp16")).precision == "fp16"
    assert choose_recipe(strong, "best", ("fp32",)).precision == "fp32"
    weak = detect_features(trt_double.make_tensorrt("8.5"))
    recipe = choose_recipe(weak, "best", ("fp32",))
    assert (recipe.precision, recipe.onnx_precision, recipe.builder_flags) == (
        "fp16",
        "fp32",
        ("FP16", "OBEY_PRECISION_CONSTRAINTS"),
    )


def test_fp16_without_fp16_onnx(trt_double):
    # 10.13 still has the FP16 flag: fall back to a weakly typed build, and say so
    recipe = choose_recipe(detect_features(trt_double.make_tensorrt("10.13")), "fp16", ("fp32",))
    assert (recipe.typing, recipe.builder_flags) == ("weak", ("FP16", "OBEY_PRECISION_CONSTRAINTS")) and recipe.notes
    # 11.x takes precision from the ONNX only
    with pytest.raises(InputError, match="convert with --precision fp16"):
        choose_recipe(detect_features(trt_double.make_tensorrt("11.4")), "fp16", ("fp32",))


def test_int8_with_layers_kept_float_runs_them_in_fp16_where_flags_exist(trt_double):
    weak = detect_features(trt_double.make_tensorrt("8.5"))
    plain = choose_recipe(weak, "int8", ALL)
    mixed = choose_recipe(weak, "int8", ALL, int8_float_layers=True)
    assert "FP16" not in plain.builder_flags
    assert {"INT8", "FP16"} <= set(mixed.builder_flags) and mixed.fp32_head and mixed.precision == "int8"
    strong = choose_recipe(detect_features(trt_double.make_tensorrt("11.4")), "int8", ALL, int8_float_layers=True)
    assert strong.typing == "strong" and "FP16" not in strong.builder_flags
    assert any("fp32" in note for note in strong.notes)


def test_int8_needs_the_qdq_onnx(trt_double):
    with pytest.raises(InputError, match="no int8 stage ONNX"):
        choose_recipe(detect_features(trt_double.make_tensorrt("10.3")), "int8", ("fp32", "fp16"))


def test_legacy_int8_uses_the_calibration_cache_before_11_and_is_refused_on_11(trt_double):
    recipe = choose_recipe(
        detect_features(trt_double.make_tensorrt("8.6")), "int8", ALL, has_calibration_cache=True, legacy_int8=True
    )
    assert recipe.calibration_cache and recipe.onnx_precision == "fp32" and "INT8" in recipe.builder_flags
    with pytest.raises(InputError, match="removed in 11"):
        choose_recipe(
            detect_features(trt_double.make_tensorrt("11.4")), "int8", ALL, has_calibration_cache=True, legacy_int8=True
        )
    with pytest.raises(InputError, match="calibration caches"):
        choose_recipe(
            detect_features(trt_double.make_tensorrt("10.3")),
            "int8",
            ALL,
            has_calibration_cache=False,
            legacy_int8=True,
        )
    with pytest.raises(InputError, match="int8 engines"):
        choose_recipe(
            detect_features(trt_double.make_tensorrt("10.3")), "fp16", ALL, has_calibration_cache=True, legacy_int8=True
        )


def test_dla_recipes(trt_double):
    features = detect_features(trt_double.make_tensorrt("10.3"))
    fp16 = choose_recipe(features, "fp16", ALL, dla_core=0)
    assert fp16.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK") and fp16.dla_core == 0
    int8 = choose_recipe(features, "int8", ALL, dla_core=1, has_calibration_cache=True)
    assert int8.calibration_cache and "GPU_FALLBACK" in int8.builder_flags  # the calibrator is DLA's INT8 path
    # 10.13 would prefer strong typing, but DLA keeps the weak-typing flags where they exist
    assert choose_recipe(detect_features(trt_double.make_tensorrt("10.13")), "fp16", ALL, dla_core=0).typing == "weak"
    # 11.x (DLA is back in 11.4.1): strongly typed + GPU fallback
    eleven = choose_recipe(detect_features(trt_double.make_tensorrt("11.4")), "int8", ALL, dla_core=0)
    assert (eleven.typing, eleven.builder_flags) == ("strong", ("GPU_FALLBACK",))
    with pytest.raises(InputError, match="fp16 or int8"):
        choose_recipe(features, "fp32", ALL, dla_core=0)


def test_unknown_precision_is_refused(trt_double):
    with pytest.raises(InputError, match="not one of"):
        choose_recipe(detect_features(trt_double.make_tensorrt("10.3")), "fp8", ALL)


def test_trtexec_command_mirrors_the_recipe(trt_double):
    features = detect_features(trt_double.make_tensorrt("10.3"))
    recipe = choose_recipe(features, "int8", ALL, dla_core=0, has_calibration_cache=True)
    line = render_trtexec(
        "/b/stage 1.fp32.onnx",
        "/b/e/stage1.plan",
        recipe,
        {"feat0": (8, 14, 14)},
        (1, 4, 16),
        workspace_mib=256,
        timing_cache="/b/t.cache",
        calibration_cache="/b/s1.calib",
        optimization_level=4,
    )
    args = shlex.split(line)
    assert args[0] == "trtexec" and "--onnx=/b/stage 1.fp32.onnx" in args  # quoted path survives the shell
    for expected in (
        "--minShapes=feat0:1x8x14x14",
        "--optShapes=feat0:4x8x14x14",
        "--maxShapes=feat0:16x8x14x14",
        "--int8",
        "--fp16",
        "--calib=/b/s1.calib",
        "--useDLACore=0",
        "--allowGPUFallback",
        "--memPoolSize=workspace:256",
        "--timingCacheFile=/b/t.cache",
        "--builderOptimizationLevel=4",
    ):
        assert expected in args
    strong = choose_recipe(detect_features(trt_double.make_tensorrt("11.4")), "fp16", ALL)
    args = shlex.split(render_trtexec("a.onnx", "a.plan", strong, {"input": (1, 28, 28)}, (1, 8, 32)))
    assert "--stronglyTyped" in args and "--fp16" not in args and not any(a.startswith("--useDLACore") for a in args)
    assert dataclasses.asdict(strong)["network_flags"] == ("STRONGLY_TYPED",)
