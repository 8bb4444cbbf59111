"""``hisd-edge build`` through the TensorRT test double: recipes applied per generation, engines and
build records stored and verified, and every failure a one-line error that leaves the bundle as it was."""

from __future__ import annotations

import json
import sys

import pytest

from hisd_edge.bundle import Bundle, file_record
from hisd_edge.cli import main


def _cli(capsys, *args):
    code = main(["build", *map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hisd-edge build: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--precision", "--dla-core", "--workspace-mib", "--batch", "--timing-cache", "--json"):
        assert option in out


@pytest.mark.parametrize("generation", ["8.5", "10.3", "10.13", "11.4"])
def test_build_stores_engines_with_a_verified_record(fake_trt, bundle_copy, capsys, generation):
    trt, cuda = fake_trt(generation)
    code, out, err = _cli(
        capsys, bundle_copy, "--precision", "best", "--batch", "1,4,16", "--workspace-mib", "512", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    record = result["record"]
    bundle = Bundle.open(bundle_copy)  # verifies the sha256 of every plan
    assert bundle.manifest["engines"] == [record]
    assert record["device"]["key"] == cuda.device.key and record["tensorrt_version"] == trt.__version__
    assert record["batch"] == {"min": 1, "opt": 4, "max": 16} and record["workspace_mib"] == 512
    assert [f["path"] for f in record["files"]] == [
        f"engines/{cuda.device.key}/trt-{trt.__version__}/{record['precision']}/stage{k}.plan" for k in range(3)
    ]
    assert len(result["trtexec"]) == 3 and all(line.startswith("trtexec --onnx=") for line in result["trtexec"])
    # what TensorRT was actually asked to do, per stage
    assert len(trt.builds) == 3 and all(b["ok"] for b in trt.builds)
    for k, build in enumerate(trt.builds):
        assert build["workspace_bytes"] == 512 << 20
        name = bundle.stages[k]["inputs"][0]["name"]
        lo, opt, hi = build["profiles"][0][name]
        assert (lo[0], opt[0], hi[0]) == (1, 4, 16) and lo[1:] == tuple(bundle.stages[k]["inputs"][0]["shape"][1:])
        assert build["timing_cache"]
        assert set(build["network_flags"]) == set(record["recipe"]["network_flags"])
        assert build["builder_flags"] == sorted(record["recipe"]["builder_flags"])
    if generation == "11.4":
        assert trt.builds[0]["network_flags"] == ["STRONGLY_TYPED"] and trt.builds[0]["builder_flags"] == []
    if generation == "8.5":
        assert "EXPLICIT_BATCH" in trt.builds[0]["network_flags"] and not trt.builds[0]["strongly_typed"]
    stages = record["stages"]
    assert [s["index"] for s in stages] == [0, 1, 2]
    assert all(s["device_memory_bytes"] > 0 and s["io"] for s in stages)
    assert ("weights_bytes" in stages[0]) == (generation == "11.4")  # get_engine_stat: 10.14+


def test_human_output_lists_plans_and_trtexec(fake_trt, bundle_copy, capsys):
    fake_trt("10.3")
    code, out, err = _cli(capsys, bundle_copy)
    assert code == 0, err
    assert "built 3 fp16 engine(s)" in out and "weakly typed" in out
    assert out.count("trtexec --onnx=") == 4 and "--fp16" in out  # three stages and the full model
    assert "full model: built" in out and "full.fp32.onnx" in out
    # the weak fp16 recipe keeps each stage's confidence head (softmax, max) in fp32, and trtexec is told so
    assert out.count("--precisionConstraints=obey --layerPrecisions=/Softmax:fp32,/ReduceMax:fp32") == 3


def test_rebuild_replaces_the_record_and_reuses_the_timing_cache(fake_trt, bundle_copy, capsys):
    trt, cuda = fake_trt("10.13")
    assert _cli(capsys, bundle_copy, "--precision", "fp16")[0] == 0
    cache = bundle_copy / f"engines/{cuda.device.key}/trt-{trt.__version__}/timing.cache"
    first = json.loads(cache.read_bytes().split(b"\n", 1)[1])
    assert len(first["entries"]) == 3
    assert _cli(capsys, bundle_copy, "--precision", "int8")[0] == 0
    assert _cli(capsys, bundle_copy, "--precision", "fp16")[0] == 0
    records = Bundle.open(bundle_copy).manifest["engines"]
    assert sorted(r["precision"] for r in records) == ["fp16", "int8"]  # one record per key
    assert set(first["entries"]) <= set(json.loads(cache.read_bytes().split(b"\n", 1)[1])["entries"])
    assert not [p for p in bundle_copy.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def test_timing_cache_from_elsewhere_is_replaced_not_fatal(fake_trt, bundle_copy, capsys, tmp_path):
    fake_trt("10.13")
    cache = tmp_path / "other.cache"
    cache.write_bytes(b'hisd-fake-timing-cache\n{"version": "8.6.1.6", "cc": [7, 2], "entries": ["x"]}')
    code, _out, err = _cli(capsys, bundle_copy, "--timing-cache", cache)
    assert code == 0, err
    assert json.loads(cache.read_bytes().split(b"\n", 1)[1])["cc"] != [7, 2]
    cache.write_bytes(b"garbage")
    assert _cli(capsys, bundle_copy, "--timing-cache", cache)[0] == 0


def test_dla_legacy_int8_uses_the_calibration_cache_with_gpu_fallback(fake_trt, bundle_copy, capsys):
    trt, _ = fake_trt("8.6", num_dla_cores=2)
    code, out, err = _cli(capsys, bundle_copy, "--precision", "int8", "--dla-core", "1")
    assert code == 0, err
    assert all(b["calibrated"] and b["dla_core"] == 1 for b in trt.builds)
    assert all({"INT8", "FP16", "GPU_FALLBACK"} <= set(b["builder_flags"]) for b in trt.builds)
    assert "--useDLACore=1" in out
    # the bundle's caches say TRT-8601; the copies stored with the engines (and given to trtexec) say 8.6.1's tag
    record = Bundle.open(bundle_copy).manifest["engines"][0]
    caches = [f for f in record["files"] if f["kind"] == "calibration_cache"]
    assert [c["stage"] for c in caches] == [0, 1, 2]
    assert (bundle_copy / caches[1]["path"]).read_text().startswith("TRT-8601-EntropyCalibration2\n")
    assert f"--calib={bundle_copy / caches[0]['path']}" in out


def test_legacy_int8_retargets_the_cache_header_to_this_tensorrt(fake_trt, bundle_copy, capsys):
    trt, _ = fake_trt("10.3")  # the bundle's caches were written for 8.6.1: TensorRT would ignore them as they are
    code, _out, err = _cli(capsys, bundle_copy, "--precision", "int8", "--legacy-int8")
    assert code == 0, err
    assert all(b["calibrated"] for b in trt.builds)
    record = Bundle.open(bundle_copy).manifest["engines"][0]
    cache = next(f for f in record["files"] if f["kind"] == "calibration_cache")
    assert (bundle_copy / cache["path"]).read_text().startswith("TRT-100300-EntropyCalibration2\n")


def test_parser_errors_are_listed_per_stage_and_the_bundle_is_unharmed(fake_trt, bundle_copy, capsys, tree_digest):
    import onnx
    from onnx import TensorProto, helper

    fake_trt("10.13")
    for k in (0, 2):  # stages 0 and 2 get an operator TensorRT has no importer for
        path = bundle_copy / f"stage{k}.fp16.onnx"
        model = onnx.load(str(path))
        model.graph.node.insert(
            0, helper.make_node("Frobnicate", ["unused"], ["unused_out"], domain="com.example", name="odd_node")
        )
        model.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1]))
        onnx.save(model, str(path))
    bundle = Bundle.open(bundle_copy, verify=False)
    bundle.update(
        lambda m: [
            m["stages"][k]["files"].__setitem__(
                "fp16", file_record(bundle_copy, f"stage{k}.fp16.onnx", io_dtype="float32")
            )
            for k in (0, 2)
        ]
    )
    before = tree_digest(bundle_copy)
    line = _one_line_error(*_cli(capsys, bundle_copy, "--precision", "fp16")[::2])
    assert "2 of 3 stage(s)" in line and "stage 0 (stage0.fp16.onnx)" in line and "stage 2 (stage2.fp16.onnx)" in line
    assert "stage 1" not in line and "Frobnicate" in line and "odd_node" in line
    assert tree_digest(bundle_copy) == before


def test_out_of_memory_advises_on_the_workspace_and_leaves_the_bundle(fake_trt, bundle_copy, capsys, tree_digest):
    fake_trt("10.3", free_memory_bytes=1 << 30)  # 1 GiB free of 24 GiB: the default workspace does not fit
    before = tree_digest(bundle_copy)
    line = _one_line_error(*_cli(capsys, bundle_copy)[::2])
    assert "out of GPU memory" in line and "--workspace-mib" in line and "1024 MiB of 24576 MiB free" in line
    assert tree_digest(bundle_copy) == before
    code, _, err = _cli(capsys, bundle_copy, "--workspace-mib", "256")
    assert code == 0, err


def test_missing_tensorrt_is_one_line_with_the_install_hint(monkeypatch, bundle_copy, capsys, tree_digest):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    before = tree_digest(bundle_copy)
    line = _one_line_error(*_cli(capsys, bundle_copy)[::2])
    assert "python3-libnvinfer" in line and "--system-site-packages" in line and "pip install tensorrt" in line
    assert tree_digest(bundle_copy) == before


def test_missing_cuda_binding_is_one_line_with_the_install_hint(monkeypatch, trt_double, bundle_copy, capsys):
    import hisd_edge.cuda as hc

    monkeypatch.setitem(sys.modules, "tensorrt", trt_double.make_tensorrt("10.3"))
    monkeypatch.setattr(hc, "available_bindings", list)
    line = _one_line_error(*_cli(capsys, bundle_copy)[::2])
    assert "pip install pycuda" in line and "pip install cuda-python" in line


@pytest.mark.parametrize(
    "args, words",
    [
        (["--batch", "8,4,2"], "MIN <= OPT <= MAX"),
        (["--batch", "one"], "MIN,OPT,MAX"),
        (["--workspace-mib", "0"], "positive"),
        (["--dla-core", "-1"], "numbered from 0"),
        (["--dla-core", "0"], "0 DLA core(s)"),  # the device has none
        (["--opt-level", "9"], "0 to 5"),
        (["--precision", "fp32", "--dla-core", "0"], "fp16 or int8"),
    ],
)
def test_bad_values_are_one_line_errors_and_write_nothing(fake_trt, bundle_copy, capsys, tree_digest, args, words):
    fake_trt("10.3")
    before = tree_digest(bundle_copy)
    line = _one_line_error(*_cli(capsys, bundle_copy, *args)[::2])
    assert words in line
    assert tree_digest(bundle_copy) == before


def test_not_a_bundle_and_timing_cache_directory(fake_trt, tmp_path, bundle_copy, capsys, tree_digest):
    fake_trt("10.3")
    assert "no such bundle" in _one_line_error(*_cli(capsys, tmp_path / "nope")[::2])
    before = tree_digest(bundle_copy)
    assert "is a directory" in _one_line_error(*_cli(capsys, bundle_copy, "--timing-cache", tmp_path)[::2])
    assert tree_digest(bundle_copy) == before


def test_a_failed_manifest_update_rolls_the_engines_back(fake_trt, bundle_copy, capsys, tree_digest, monkeypatch):
    fake_trt("10.13")
    assert _cli(capsys, bundle_copy, "--precision", "fp32")[0] == 0
    before = tree_digest(bundle_copy)

    def broken_update(self, change):
        raise OSError("disk full")

    monkeypatch.setattr(Bundle, "update", broken_update)
    with pytest.raises(OSError, match="disk full"):
        main(["build", str(bundle_copy), "--precision", "fp32", "--no-progress"])
    assert tree_digest(bundle_copy) == before


@pytest.mark.parametrize("where", ["/proc/hisd-nope/timing.cache", "manifest.json/timing.cache"])
def test_an_unusable_timing_cache_path_is_one_line_before_building(fake_trt, bundle_copy, capsys, tree_digest, where):
    trt, _ = fake_trt("10.13")
    path = (
        where if where.startswith("/") else str(bundle_copy / where)
    )  # a folder that cannot be made / a file as folder
    manifest = (bundle_copy / "manifest.json").read_bytes()
    before = tree_digest(bundle_copy)
    line = _one_line_error(*_cli(capsys, bundle_copy, "--timing-cache", path)[::2])
    assert f"--timing-cache {path}" in line and "leave --timing-cache out" in line
    assert trt.builds == []  # refused before any engine was built
    assert (bundle_copy / "manifest.json").read_bytes() == manifest and tree_digest(bundle_copy) == before


def test_a_timing_cache_that_cannot_be_saved_is_a_warning_after_publishing(
    fake_trt, bundle_copy, capsys, monkeypatch, caplog
):
    from hisd_edge import atomic

    fake_trt("10.13")
    real_write = atomic.write_bytes

    def failing_write(path, data):
        if str(path).endswith("timing.cache"):
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(atomic, "write_bytes", failing_write)
    code, _out, err = _cli(capsys, bundle_copy, "--precision", "fp32")
    assert code == 0, err
    assert Bundle.open(bundle_copy).manifest["engines"][0]["precision"] == "fp32"  # the engines are in
    assert any(
        "could not save the timing cache" in r.getMessage() and "No space left" in r.getMessage()
        for r in caplog.records
    )
    assert not list((bundle_copy / "engines").rglob("timing.cache"))
