"""DLA with fixed shapes (and a record of what fell back to the GPU), mixed precision on the target
(``--precision mixed`` in the ONNX Runtime and TensorRT backends, ``build --precision mixed``,
DLA per stage), ``build --dry-run --trt GEN`` without TensorRT, and ``build --import-engines``."""

from __future__ import annotations

import json
import shlex
import shutil
import sys

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.cli import main
from hisd_edge.engine import BuildOptions, build_engines
from hisd_edge.errors import BundleError
from hisd_edge.runtime import create_backend, open_runtime

MIXED = ["int8", "fp16", "fp32"]


@pytest.fixture(scope="session")
def images(trt_bundle):
    from hisd_edge.data import load_samples

    return load_samples("default:val").tensors(Bundle.open(trt_bundle).preprocessing)[:24]


@pytest.fixture()
def install(trt_double, monkeypatch):
    import hisd_edge.cuda

    def go(generation="10.13", **kwargs):
        cuda = trt_double.cuda_double.FakeCuda(trt_double.cuda_double.DISCRETE)
        trt = trt_double.make_tensorrt(generation, cuda, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(hisd_edge.cuda, "open_cuda", lambda *a, **k: cuda)
        return trt, cuda

    return go


def _cli(capsys, *args):
    code = main(["build", *map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hisd-edge build: error: "), err
    return lines[0]


def _with_mixed_plan(path, plan=MIXED):
    Bundle.open(path).update(lambda m: m.__setitem__("mixed_precision", {"stages": list(plan), "max_drop_pp": 0.5}))


# -- DLA ----------------------------------------------------------------------------------------------------
def test_dla_builds_fixed_shapes_and_says_what_fell_back_to_the_gpu(install, bundle_copy, capsys):
    trt, _ = install("8.6", num_dla_cores=1)
    code, out, err = _cli(capsys, bundle_copy, "--precision", "fp16", "--dla-core", "0")
    assert code == 0, err
    for build in trt.builds:  # DLA takes no dynamic shapes: one fixed batch (default 1)
        assert all(lo == opt == hi and lo[0] == 1 for lo, opt, hi in build["profiles"][0].values())
        assert build["dla_core"] == 0 and build["dla_layers"]
    record = Bundle.open(bundle_copy).manifest["engines"][0]
    for stage in record["stages"]:
        dla = stage["dla"]
        assert dla["runs_on"] == "dla+gpu" and dla["gpu_fallback_count"] > 0  # the head's reduce, the classifier
        assert dla["layers_on_dla"] + dla["gpu_fallback_count"] == dla["layers"]
        assert stage["batch"] == {"min": 1, "opt": 1, "max": 1}
    assert out.count("fell back to the GPU") == 3 and "DLA core 0:" in out
    assert "--useDLACore=0" in out and "--minShapes=input:1x1x28x28 --optShapes=input:1x1x28x28" in out


def test_a_dla_stage_with_no_layer_on_the_dla_says_it_runs_on_the_gpu(install, bundle_copy, capsys, monkeypatch):
    trt, _ = install("8.6", num_dla_cores=1)
    monkeypatch.setattr(trt.IBuilderConfig, "can_run_on_DLA", lambda self, layer: False)
    code, out, err = _cli(capsys, bundle_copy, "--precision", "fp16", "--dla-core", "0", "--batch", "8")
    assert code == 0, err
    record = Bundle.open(bundle_copy).manifest["engines"][0]
    assert {s["dla"]["runs_on"] for s in record["stages"]} == {"gpu"}
    assert out.count("layers can run on the DLA; this engine runs on the GPU") == 3


def test_dla_per_stage(install, bundle_copy, capsys):
    trt, _ = install("8.6", num_dla_cores=1)
    code, _out, err = _cli(
        capsys, bundle_copy, "--precision", "fp16", "--dla-core", "0", "--dla-stages", "1", "--batch", "8"
    )
    assert code == 0, err
    assert [b["dla_core"] for b in trt.builds] == [None, 0, None]
    profiles = [next(iter(b["profiles"][0].values())) for b in trt.builds]
    assert [(lo[0], opt[0], hi[0]) for lo, opt, hi in profiles] == [(1, 8, 8), (8, 8, 8), (1, 8, 8)]
    record = Bundle.open(bundle_copy).manifest["engines"][0]
    assert [("dla" in s) for s in record["stages"]] == [False, True, False]
    assert record["recipe"]["dla_stages"] == [1]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dla-core", "0", "--batch", "1,8,32"], "DLA takes no dynamic shapes"),
        (["--dla-stages", "0"], "--dla-stages needs --dla-core"),
        (["--dla-core", "0", "--dla-stages", "7"], "has stages 0 to 2"),
        (["--dla-core", "0", "--dla-stages", "x"], "stage indices"),
        (["--precision", "mixed", "--dla-core", "0", "--dla-stages", "2"], "stage 2 (fp32, DLA)"),
    ],
)
def test_dla_bad_input_is_one_line(install, bundle_copy, capsys, tree_digest, args, words):
    install("8.6", num_dla_cores=1)
    _with_mixed_plan(bundle_copy)
    before = tree_digest(bundle_copy)
    assert words in _one_line(*_cli(capsys, bundle_copy, *args)[::2])
    assert tree_digest(bundle_copy) == before


# -- mixed precision -----------------------------------------------------------------------------------------
def test_onnx_runtime_runs_the_mixed_plan(trt_bundle, bundle_copy, images):
    _with_mixed_plan(bundle_copy)
    bundle = Bundle.open(bundle_copy)
    with create_backend("onnxruntime", bundle, precision="mixed") as mixed:
        assert [s.label for s in mixed._stages] == [
            "stage0.int8.onnx (stage 0)",
            "stage1.fp16.onnx (stage 1)",
            "stage2.fp32.onnx (stage 2)",
        ]
        assert mixed.describe()["graph_optimization"] == "basic"  # an int8 stage: Q/DQ as written
        mixed.start(images)
        r0 = mixed.run_stage(0)
        with create_backend("onnxruntime", bundle, precision="int8") as int8:
            int8.start(images)
            np.testing.assert_array_equal(r0.confidence, int8.run_stage(0).confidence)  # stage 0 is the int8 file
    with pytest.raises(BundleError, match="needs the per-stage plan of convert --precision mixed"):
        create_backend("onnxruntime", Bundle.open(trt_bundle), precision="mixed").activate()


def test_run_verb_with_mixed_precision(bundle_copy, images, tmp_path, capsys):
    _with_mixed_plan(bundle_copy)
    np.save(tmp_path / "x.npy", images[:5])
    code = main(["run", str(bundle_copy), str(tmp_path / "x.npy"), "--precision", "mixed", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len([line for line in out.splitlines() if line.startswith("{")]) == 5


@pytest.mark.parametrize("generation", ["8.6", "11.4"])
def test_build_mixed_builds_each_stage_at_its_planned_precision(install, bundle_copy, images, generation):
    trt, cuda = install(generation)
    _with_mixed_plan(bundle_copy)
    result = build_engines(Bundle.open(bundle_copy), BuildOptions(precision="mixed", progress=False), cuda=cuda)
    record = result.record
    assert record["precision"] == "mixed" and record["recipe"]["stage_precisions"] == MIXED
    assert [s["precision"] for s in record["stages"]] == MIXED
    assert record["full_model"]["built"] is False  # no single precision for the monolithic model
    flags = [set(b["builder_flags"]) for b in trt.builds]
    if generation == "8.6":  # weak: Q/DQ + INT8, fp32 ONNX + FP16 with the head pinned, fp32
        assert [s["onnx_precision"] for s in record["stages"]] == ["int8", "fp32", "fp32"]
        assert flags == [{"INT8"}, {"FP16", "OBEY_PRECISION_CONSTRAINTS"}, set()]
        assert record["stages"][1]["fp32_layers"] == ["/Softmax", "/ReduceMax"]
    else:  # strong: each stage's own ONNX, no flags
        assert [s["onnx_precision"] for s in record["stages"]] == MIXED and flags == [set()] * 3
        thresholds = [0.6, 0.6, None]
        with open_runtime(bundle_copy, backend="onnxruntime", precision="mixed", thresholds=thresholds) as ort:
            want, _ = ort.infer_tensors(images)
        with open_runtime(bundle_copy, backend="tensorrt", precision="mixed", thresholds=thresholds) as rt:
            have, _ = rt.infer_tensors(images)
            assert rt.backend.describe()["stage_precisions"] == MIXED
        assert [(r.exit, r.class_index) for r in have] == [(r.exit, r.class_index) for r in want]
        np.testing.assert_allclose([r.confidence for r in have], [r.confidence for r in want], rtol=0, atol=1e-6)


def test_build_mixed_without_a_plan_is_one_line(install, bundle_copy, capsys):
    install("10.13")
    line = _one_line(*_cli(capsys, bundle_copy, "--precision", "mixed")[::2])
    assert "has no per-stage precision plan" in line and "convert with --precision mixed" in line


# -- build --dry-run ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "generation, present, absent",
    [
        ("8.5", ["--fp16", "--precisionConstraints=obey", "--layerPrecisions=/Softmax:fp32,/ReduceMax:fp32"], ["--stronglyTyped", "--builderOptimizationLevel"]),
        ("8.6", ["--fp16", "--layerOutputTypes=/Softmax:fp32,/ReduceMax:fp32", "--builderOptimizationLevel=4"], ["--stronglyTyped"]),
        ("10.3", ["--fp16", "--precisionConstraints=obey"], ["--stronglyTyped"]),
        ("10.13", ["--stronglyTyped", "stage0.fp16.onnx"], ["--fp16", "--layerPrecisions"]),
        ("10.16", ["--stronglyTyped"], ["--fp16"]),
        ("11", ["--stronglyTyped", "stage2.fp16.onnx"], ["--fp16", "--int8"]),
    ],
)  # fmt: skip
def test_dry_run_plans_every_generation_without_tensorrt(
    monkeypatch, bundle_copy, capsys, tree_digest, generation, present, absent
):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no TensorRT on this machine
    before = tree_digest(bundle_copy)
    code, out, err = _cli(capsys, bundle_copy, "--dry-run", "--trt", generation, "--opt-level", "4")
    assert code == 0, err
    assert f"with TensorRT {generation} (" in out and "nothing was built" in out
    assert out.count("\nstage ") == 3
    commands = [shlex.split(line.strip()) for line in out.splitlines() if line.strip().startswith("trtexec ")]
    weak = generation in ("8.5", "8.6", "10.3")
    assert len(commands) == (4 if weak else 3)  # the full model too where it can have the stages' precision
    assert [c for c in commands[0] if c.startswith("--saveEngine=")] == ["--saveEngine=trtexec-engines/stage0.plan"]
    for word in present:
        assert word in out, word
    for word in absent:
        assert word not in out, word
    assert f"hisd-edge build {bundle_copy} --import-engines trtexec-engines --precision fp16" in out
    assert tree_digest(bundle_copy) == before


def test_dry_run_json_and_dla(monkeypatch, bundle_copy, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, out, err = _cli(capsys, bundle_copy, "--dry-run", "--trt", "8.5", "--dla-core", "0", "--batch", "4", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["tensorrt_version"] == "8.5.2" and len(plan["stages"]) == 3
    assert all(
        s["batch"] == {"min": 4, "opt": 4, "max": 4} and "--useDLACore=0" in s["trtexec"] for s in plan["stages"]
    )
    assert plan["full_model"]["built"] is False and "--dla-core 0" in plan["import"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dry-run", "--trt", "9.2"], "--trt 9.2: unknown TensorRT generation; choose one of 8.5, 8.6, 10.3"),
        (["--dry-run"], "--dry-run needs --trt GEN"),
        (["--trt", "10.3"], "use them with --dry-run"),
        (["--dry-run", "--trt", "10.3", "--import-engines", "x"], "give one of them"),
    ],
)
def test_dry_run_bad_input_is_one_line(monkeypatch, bundle_copy, capsys, args, words):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert words in _one_line(*_cli(capsys, bundle_copy, *args)[::2])


# -- build --import-engines ----------------------------------------------------------------------------------
@pytest.fixture()
def trtexec_plans(install, trt_bundle, tmp_path):
    """plans(generation="10.13", precision="fp32") -> a folder of stage<k>.plan + full.plan, as trtexec would leave it."""

    made = []

    def make(generation="10.13", precision="fp32"):
        _trt, cuda = install(generation)
        made.append(generation)
        elsewhere = tmp_path / f"built-{len(made)}-{generation}-{precision}"
        shutil.copytree(trt_bundle, elsewhere)
        record = build_engines(
            Bundle.open(elsewhere), BuildOptions(precision=precision, progress=False), cuda=cuda
        ).record
        folder = tmp_path / f"plans-{len(made)}-{generation}-{precision}"
        folder.mkdir()
        for entry in record["files"]:
            if entry["kind"] in ("plan", "full_plan"):
                shutil.copyfile(elsewhere / entry["path"], folder / entry["path"].rsplit("/", 1)[1])
        return folder, cuda

    return make


def test_import_checks_and_records_external_plans(trtexec_plans, bundle_copy, images, capsys):
    folder, _cuda = trtexec_plans("10.13")
    code, out, err = _cli(capsys, bundle_copy, "--import-engines", folder, "--precision", "fp32")
    assert code == 0, err
    assert f"imported from {folder} (external plans, checked on load)" in out
    record = Bundle.open(bundle_copy).manifest["engines"][0]
    assert record["external"] is True and record["imported_from"] == str(folder)
    assert record["recipe"]["typing"] == "external" and record["full_model"]["built"] is True
    assert all("onnx_sha256" not in s and s["external"] for s in record["stages"])
    thresholds = [0.6, 0.6, None]
    with open_runtime(bundle_copy, backend="onnxruntime", thresholds=thresholds) as ort:
        want, _ = ort.infer_tensors(images)
    with open_runtime(bundle_copy, backend="tensorrt", precision="fp32", thresholds=thresholds) as rt:
        have, _ = rt.infer_tensors(images)
        assert rt.backend.describe()["external"] is True
    assert [(r.exit, r.class_index) for r in have] == [(r.exit, r.class_index) for r in want]


def test_imported_plans_that_do_not_match_are_one_line(trtexec_plans, bundle_copy, capsys, tree_digest, monkeypatch):
    folder, _ = trtexec_plans("10.13")
    before = tree_digest(bundle_copy)

    def refused(*args):
        line = _one_line(*_cli(capsys, bundle_copy, "--import-engines", *args)[::2])
        assert tree_digest(bundle_copy) == before
        return line

    swapped = folder.parent / "swapped"
    shutil.copytree(folder, swapped)
    (swapped / "stage1.plan").write_bytes((folder / "stage0.plan").read_bytes())
    line = refused(swapped, "--precision", "fp32")
    assert "stage1.plan: the plan has inputs ['input']" in line and "manifest's stage 1 has ['feat0']" in line
    (swapped / "stage2.plan").unlink()
    assert "missing stage2.plan" in refused(swapped, "--precision", "fp32")
    assert "no such folder" in refused(folder.parent / "nope", "--precision", "fp32")
    assert "say which precision" in refused(folder, "--precision", "best")
    old, _ = trtexec_plans("10.3")  # plans of another TensorRT version, on this 10.13 device
    install_again = sys.modules["tensorrt"]  # the 10.3 double is installed now: put a 10.13 one back
    assert install_again.__version__.startswith("10.3")
    trtexec_plans("10.13")
    line = refused(old, "--precision", "fp32")
    assert (
        "stage0.plan: TensorRT 10.13.3.9 cannot load this plan" in line and "not compatible with this version" in line
    )
    trt = sys.modules["tensorrt"]
    real_dtype = trt.ICudaEngine.get_tensor_dtype
    monkeypatch.setattr(
        trt.ICudaEngine,
        "get_tensor_dtype",
        lambda self, name: trt.DataType.BF16 if name == "exit0" else real_dtype(self, name),
    )
    assert "stage0.plan: tensor exit0 is BF16, a type the runtime cannot map to numpy" in refused(
        folder, "--precision", "fp32"
    )
