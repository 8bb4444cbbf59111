"""Conformance with NVIDIA's real TensorRT Python bindings: 8.6.1, 10.3.0, 10.13.3, 10.16.1, 11.4.0.

The real ``tensorrt_bindings`` wheels are fetched from PyPI into a cache (skipped, with the reason,
when the index is unreachable), loaded over a null libnvinfer compiled here (``trt_shim.c``), and
probed in one subprocess per generation (``real_probe.py``). On each:

* hisd-edge's feature detection and recipe choice, run on the real module, give the expected
  answer (and the same answer as on the test double of that generation); the generation table
  ``build --dry-run --trt`` plans with is the real module's features;
* every TensorRT name hisd-edge uses exists there with a compatible pybind11 signature: the
  double records each use (``trt_double.RECORDED``) while the build and backend tests run, and
  a scenario here (every recipe, DLA, mixed, import, the backend with graphs, padding and the
  full model, on every generation) makes sure nothing depends on which tests ran; each use is
  then replayed on the real classes;
* the double's surface for that generation is a subset of the real one (read-only stays
  read-only), and its enums are the real members and values;
* hisd-edge's logger and calibrator subclass the real base classes, the logger filters and keeps
  a bounded number of messages, and every real ``DataType`` maps to a numpy type or to None;
* deliberately wrong uses (canaries: a wrong argument type, one argument too many, a name that
  does not exist, an enum member that does not exist, a property set with the wrong type, a
  read-only property set) are reported, so a checker that accepted everything fails here.

Cost: the first run downloads ~6 MB (five wheels, in parallel: ~15 s here) and compiles the shim;
from the cache the five probes take a few seconds and the recording scenario ~10-20 s.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REAL = ["8.6", "10.3", "10.13", "10.16", "11.4"]
ALL = ["fp32", "fp16", "int8"]
# (requested, onnx files, options) -> what every recipe is checked for on the real module
RECIPE_CASES: List[Dict[str, Any]] = [{"requested": p, "onnx": ALL} for p in ("fp32", "fp16", "int8", "best")] + [
    {"requested": "fp16", "onnx": ["fp32"]},
    {"requested": "fp16", "onnx": ALL, "dla": 0},
    {"requested": "int8", "onnx": ALL, "dla": 0, "cache": True},
    {"requested": "int8", "onnx": ALL, "cache": True, "legacy": True},
]
# (typing, onnx precision) of fp16, int8 and best per real generation: the answer we expect
EXPECTED = {
    "8.6": {"fp16": ("weak", "fp32"), "int8": ("weak", "int8"), "best": ("weak", "int8")},
    "10.3": {"fp16": ("weak", "fp32"), "int8": ("weak", "int8"), "best": ("weak", "int8")},
    "10.13": {"fp16": ("strong", "fp16"), "int8": ("strong", "int8"), "best": ("strong", "int8")},
    "10.16": {"fp16": ("strong", "fp16"), "int8": ("strong", "int8"), "best": ("strong", "int8")},
    "11.4": {"fp16": ("strong", "fp16"), "int8": ("strong", "int8"), "best": ("strong", "int8")},
}
CANARIES: List[Dict[str, Any]] = [
    {"kind": "call", "owner": "IExecutionContext", "name": "execute_async_v3", "args": [{"t": "str"}]},
    {
        "kind": "call",
        "owner": "IExecutionContext",
        "name": "set_input_shape",
        "args": [{"t": "str"}, {"t": "seq", "items": [{"t": "int"}] * 4}, {"t": "int"}],
    },
    {"kind": "call", "owner": "IExecutionContext", "name": "execute_async_v4", "args": [{"t": "int"}]},
    {"kind": "class_attr", "owner": "BuilderFlag", "name": "FP64", "args": []},
    {"kind": "set", "owner": "IBuilderConfig", "name": "DLA_core", "args": [{"t": "str"}]},
    {"kind": "set", "owner": "ICudaEngine", "name": "num_io_tensors", "args": [{"t": "int"}]},
]


@pytest.fixture(scope="session")
def real(real_bindings_module):
    rb = real_bindings_module
    try:
        found = rb.fetch(REAL)
        shim = rb.build_shim()
    except rb.Unavailable as exc:
        pytest.skip(str(exc))
    return rb, found, shim


@pytest.fixture(scope="session")
def recorded(trt_double, trt_bundle, tmp_path_factory):
    """Every use of the double by hisd-edge, after a scenario that exercises each code path on each generation."""
    for generation in trt_double.GENERATIONS:
        _scenario(trt_double, generation, trt_bundle, tmp_path_factory.mktemp(f"scenario-{generation}"))
    records = [json.loads(r) for r in sorted(trt_double.RECORDED)]
    by_real: Dict[str, List[Dict[str, Any]]] = {g: [] for g in REAL}
    seen = set()
    for rec in records:
        real_generation = {"8.5": "8.6"}.get(rec["generation"], rec["generation"])
        key = json.dumps({k: v for k, v in rec.items() if k != "generation"}, sort_keys=True)
        if (real_generation, key) not in seen:
            seen.add((real_generation, key))
            by_real[real_generation].append({k: v for k, v in rec.items() if k != "generation"})
    return by_real


def _scenario(trt_double: Any, generation: str, bundle_path: Path, tmp: Path) -> None:
    """Every build path and the backend (graphs, compaction, padding, full model), then an import."""
    import hisd_edge.cuda
    from hisd_edge.bundle import Bundle
    from hisd_edge.engine import BuildOptions, build_engines
    from hisd_edge.engine.importer import import_engines
    from hisd_edge.runtime import create_backend

    cuda = trt_double.cuda_double.FakeCuda(trt_double.cuda_double.JETSON_ORIN)
    trt = trt_double.make_tensorrt(generation, cuda, num_dla_cores=1)
    weak = generation.startswith("8") or generation == "10.3"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "tensorrt", trt)
        mp.setattr(hisd_edge.cuda, "open_cuda", lambda *a, **k: cuda)
        path = tmp / "bundle"
        shutil.copytree(bundle_path, path)
        Bundle.open(path).update(lambda m: m.__setitem__("mixed_precision", {"stages": ["int8", "fp16", "fp32"]}))
        options = [BuildOptions(precision=p, progress=False) for p in ("fp16", "int8", "best", "mixed", "fp32")]
        if generation != "11.4":
            options.append(BuildOptions(precision="int8", legacy_int8=True, progress=False))
        if generation != "10.16":  # the DLA build last: its fp16 record replaces the GPU one
            options.append(
                BuildOptions(
                    precision="fp16", dla_core=0, dla_stages=(0,) if weak else None, batch=(1, 4, 4), progress=False
                )
            )
        for option in options:
            build_engines(Bundle.open(path), option, cuda=cuda)
        x = np.random.default_rng(0).normal(size=(6, 1, 28, 28)).astype(np.float32)
        for precision, graphs in (("fp32", True), ("mixed", False), ("fp16", False)):
            if precision == "fp16" and generation == "10.16":
                continue
            bundle = Bundle.open(path)
            with create_backend(
                "tensorrt", bundle, precision=precision, cuda=cuda, cuda_graphs=graphs, load_full_model=True
            ) as backend:
                for _ in range(3):
                    backend.start(x[:4])
                    backend.run_stage(0).exit_output([0, 1])
                    backend.run_stage(1, keep_rows=[2, 0]).exit_output()
                    backend.run_stage(2, keep_rows=[1])
                backend.run_full(x[:3])
                backend.memory_info()
        record = next(r for r in Bundle.open(path).manifest["engines"] if r["precision"] == "fp32")
        plans = tmp / "plans"
        plans.mkdir()
        for entry in record["files"]:
            if entry["kind"] in ("plan", "full_plan"):
                shutil.copyfile(path / entry["path"], plans / Path(entry["path"]).name)
        other = tmp / "imported"
        shutil.copytree(bundle_path, other)
        import_engines(Bundle.open(other), str(plans), BuildOptions(precision="fp32"), cuda=cuda)


@pytest.fixture(scope="session")
def answers(real, recorded, trt_double):
    """The probe's answer per real generation (one subprocess each, two at a time)."""
    import concurrent.futures

    rb, found, shim = real
    jobs = {}
    for generation in REAL:
        owners = sorted(
            {
                name
                for g, r in rb.DOUBLE_TO_REAL.items()
                if r == generation
                for name in trt_double.double_surface(trt_double.make_tensorrt(g))
            }
        )
        jobs[generation] = {
            "records": recorded[generation] + [{**c, "canary": True} for c in CANARIES],
            "recipes": RECIPE_CASES,
            "owners": owners,
        }
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {g: pool.submit(rb.probe, found[g], shim, job) for g, job in jobs.items()}
        return {g: f.result() for g, f in futures.items()}


@pytest.mark.parametrize("generation", REAL)
def test_feature_detection_and_recipes_on_the_real_module(answers, trt_double, generation):
    from hisd_edge.engine.features import GENERATIONS, detect_features
    from hisd_edge.engine.recipe import choose_recipe
    from hisd_edge.errors import HisdError

    answer = answers[generation]
    features = answer["features"]
    # the generation table build --dry-run plans with is what the real module detects
    table = GENERATIONS["11" if generation == "11.4" else generation].to_dict()
    assert {k: v for k, v in features.items() if k != "version"} == {k: v for k, v in table.items() if k != "version"}
    assert features["version"].startswith(table["version"])
    by_case = {json.dumps(case, sort_keys=True): recipe for case, recipe in zip(RECIPE_CASES, answer["recipes"])}
    for requested, (typing, onnx) in EXPECTED[generation].items():
        recipe = by_case[json.dumps({"requested": requested, "onnx": ALL}, sort_keys=True)]
        assert (recipe["typing"], recipe["onnx_precision"]) == (typing, onnx), requested
    assert "missing" not in json.dumps(answer["recipes"])  # every flag a recipe names exists here
    # the double of the same generation chooses exactly the same recipes
    double = detect_features(trt_double.make_tensorrt(generation))
    for case, recipe in zip(RECIPE_CASES, answer["recipes"]):
        try:
            mine: Dict[str, Any] = choose_recipe(
                double,
                case["requested"],
                case["onnx"],
                has_calibration_cache=case.get("cache", False),
                dla_core=case.get("dla"),
                legacy_int8=case.get("legacy", False),
            ).to_dict()
        except HisdError:
            mine = {"error": True}
        assert ("error" in mine) is ("error" in recipe), case
        if "error" not in mine:
            assert mine == recipe, case


@pytest.mark.parametrize("generation", REAL)
def test_every_recorded_use_exists_with_a_compatible_signature(answers, recorded, generation):
    replay = [r for r in answers[generation]["replay"] if not r.get("canary")]
    assert len(replay) == len(recorded[generation]) > 40  # the scenario reached the whole API surface
    calls = [r for r in replay if r["kind"] in ("call", "init", "set")]
    assert len(calls) > 20
    failures = [r for r in replay if r["result"] != "ok"]
    assert not failures, json.dumps(failures, indent=1)


@pytest.mark.parametrize("generation", REAL)
def test_canaries_are_caught(answers, generation):
    canaries = [r for r in answers[generation]["replay"] if r.get("canary")]
    assert len(canaries) == len(CANARIES)
    results = {(r["owner"], r["name"], json.dumps(r["args"])): r["result"] for r in canaries}
    assert all(result != "ok" for result in results.values()), results
    assert results[("IExecutionContext", "execute_async_v3", '[{"t": "str"}]')] == "rejected"  # wrong type
    assert results[("IBuilderConfig", "DLA_core", '[{"t": "str"}]')] == "rejected"
    assert results[("ICudaEngine", "num_io_tensors", '[{"t": "int"}]')] == "read-only"
    assert results[("BuilderFlag", "FP64", "[]")] == "missing"


@pytest.mark.parametrize("generation", REAL)
def test_the_double_is_a_subset_of_the_real_module(real, answers, trt_double, generation):
    rb = real[0]
    real_surface = answers[generation]["surface"]
    for double_generation in [g for g, r in rb.DOUBLE_TO_REAL.items() if r == generation]:
        double = trt_double.make_tensorrt(double_generation)
        for owner, names in trt_double.double_surface(double).items():
            theirs = real_surface.get(owner)
            assert theirs is not None, f"{double_generation}: the real module has no {owner}"
            missing = sorted(set(names) - set(theirs))
            assert not missing, f"{double_generation}: {owner} has {missing}, the real one does not"
            writable = sorted(n for n, kind in names.items() if kind == "property_rw" and theirs[n] != "property_rw")
            assert not writable, f"{double_generation}: {owner}.{writable} are read-only in the real module"


@pytest.mark.parametrize("generation", REAL)
def test_the_double_takes_its_enums_from_the_real_module(real, answers, trt_double, generation):
    rb = real[0]
    snapshot = json.loads(rb.SNAPSHOT.read_text())[generation]
    answer = answers[generation]
    assert snapshot == {"version": answer["version"], "enums": answer["enums"]}, (
        "trt_real_enums.json is stale: python tests/engine/real_bindings.py --write-snapshot"
    )
    for double_generation in [g for g, r in rb.DOUBLE_TO_REAL.items() if r == generation]:
        double = trt_double.make_tensorrt(double_generation)
        for name, members in answer["enums"].items():
            enum = double.ILogger.Severity if name == "Severity" else getattr(double, name, None)
            if enum is None:
                continue
            mine = {m: int(v) for m, v in enum.__members__.items()}
            if double_generation == "8.5":  # 8.6 without what 8.6 added
                assert mine.items() <= members.items() and set(members) - set(mine) == trt_double.ADDED_IN_86.get(
                    name, set()
                ), name
            else:
                assert mine == members, name


@pytest.mark.parametrize("generation", REAL)
def test_logger_calibrator_and_dtype_guard_on_the_real_module(answers, generation):
    answer = answers[generation]
    logger = answer["logger"]
    assert logger["is_ilogger"]
    assert logger["errors_kept"] == 32 and logger["last_error"] == "error 99"  # bounded, newest kept
    assert logger["others_kept"] == 32 and logger["verbose_kept"] == 0 and logger["info_kept"] == 0  # filtered
    if generation == "11.4":
        assert "calibrator" not in logger  # 11.x has no calibrators
    else:
        assert logger["calibrator"] == {
            "is_entropy2": True,
            "batch_size": 4,
            "cache": "TRT-8601-EntropyCalibration2\n",
        }
    dtypes = answer["dtypes"]
    assert {k: dtypes[k] for k in ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8")} == {
        "FLOAT": "float32",
        "HALF": "float16",
        "INT8": "int8",
        "INT32": "int32",
        "BOOL": "bool",
        "UINT8": "uint8",
    }
    unmappable = {"BF16", "FP8", "INT4", "FP4", "E8M0"} & set(dtypes)
    assert unmappable and all(dtypes[k] is None for k in unmappable)
    assert dtypes.get("INT64", "int64") == "int64"


def test_no_index_or_no_compiler_is_a_skip_reason(real_bindings_module, tmp_path, monkeypatch):
    """Where PyPI cannot be reached (or there is no C compiler) the conformance tests skip, saying why."""
    import subprocess

    rb = real_bindings_module
    monkeypatch.setenv("HISD_TRT_BINDINGS_CACHE", str(tmp_path))
    no_index = subprocess.CompletedProcess(
        [], 1, "", "ERROR: Could not find a version that satisfies the requirement tensorrt-bindings==8.6.1\n"
    )
    monkeypatch.setattr(rb.subprocess, "run", lambda *args, **kwargs: no_index)
    with pytest.raises(rb.Unavailable, match=r"cannot download tensorrt-bindings==8\.6\.1 .*Could not find a version"):
        rb.fetch(["8.6"])
    monkeypatch.setattr(rb.shutil, "which", lambda name: None)
    with pytest.raises(rb.Unavailable, match="no C compiler"):
        rb.build_shim()
