"""``hisd-edge profile`` and ``hisd-edge report`` end to end on a real tiny bundle, and their error paths."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hisd_edge.cli import main


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def none_profile(tiny_bundle_dir, tmp_path_factory):
    """One profile with no power source (this machine), batch 1 and 4."""
    out = tmp_path_factory.mktemp("reports") / "tiny_none"
    argv = [
        "profile",
        str(tiny_bundle_dir),
        "--power",
        "none",
        "--batch",
        "1,4",
        "--out",
        str(out),
        "--data",
        "default:test",
        "--samples",
        "120",
        "--repeats",
        "12",
        "--warmup",
        "2",
        "--sweep-points",
        "11",
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    return out, json.loads((out / "profile.json").read_text())


def test_help_of_both_verbs():
    for verb in ("profile", "report"):
        done = subprocess.run(
            [sys.executable, "-m", "hisd_edge", verb, "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and f"usage: hisd-edge {verb}" in done.stdout


def test_profile_without_power_reports_energy_as_unavailable(none_profile):
    out, profile = none_profile
    assert {p.name for p in out.iterdir()} >= {
        "profile.json",
        "report.html",
        "exits.csv",
        "stages.csv",
        "sweep.csv",
        "accuracy_vs_latency.png",
        "exit_distribution.png",
        "stage_breakdown.png",
    }
    assert not (out / "accuracy_vs_energy.png").exists()
    assert profile["schema_version"] == 2 and profile["power"] == {
        **profile["power"],
        "source": "none",
        "available": False,
    }
    for block in profile["batches"]:
        for e in block["exits"]:
            assert e["energy_mj"] is None and e["energy_unavailable_reason"] == "no power source"
        for s in block["stages"]:
            assert s["energy_mj"] is None and s["model_bytes"] > 0
    assert profile["overhead"]["sampler"] is None and profile["overhead"]["per_exit"] is None
    assert profile["sensor"] is None and profile["blocks"] == [] and profile["idle"] is None
    assert any("energy not measured" in n for n in profile["notes"])
    # latency still gets its intervals and the model check its latency part
    assert all(
        e["latency_ms"]["ci"][0] <= e["latency_ms"]["mean"] <= e["latency_ms"]["ci"][1] for e in profile["exits"]
    )
    assert profile["model_check"]["latency_ms"]["calls"] == 12 and "energy_mj" not in profile["model_check"]


def test_latency_figures_are_consistent(none_profile):
    _, profile = none_profile
    assert [b["batch"] for b in profile["batches"]] == [1, 4] and profile["batch"] == 1
    for block in profile["batches"]:
        previous = 0.0
        for e in block["exits"]:
            lat = e["latency_ms"]
            assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] and lat["count"] == 12
            previous = lat["p50"]
        assert previous > 0
        assert all(s["latency_ms"]["count"] >= 12 for s in block["stages"])


def test_accuracy_sweep_and_current_thresholds_match_the_runtime(none_profile, tiny_bundle_dir):
    _, profile = none_profile
    accuracy = profile["accuracy"]
    assert accuracy["labelled"] and accuracy["samples"] == 120
    current = accuracy["current"]
    # the simulated exit distribution equals what the real early-exit loop did on the same data
    assert current["exit_fraction"] == pytest.approx(current["measured_exit_fraction"])
    assert sum(current["exit_fraction"]) == pytest.approx(1.0)
    assert current["thresholds"] == profile["policy"]["thresholds"] == [0.9, 0.9, None]
    sweep = accuracy["sweep"]
    # the sweep runs on the validation split (the bundle is not calibrated, the data is default:test), with
    # one threshold per non-final exit, and names its Pareto points
    assert accuracy["sweep_data"] == "default:val" and accuracy["sweep_samples"] == 500
    assert any(p["thresholds"][0] != p["thresholds"][1] for p in sweep if p["pareto_latency"])
    labelled = [p for p in sweep if p.get("label")]
    assert labelled[0]["label"] == "P1" and all(p["pareto_latency"] for p in labelled)
    never = next(p for p in sweep if p["thresholds"] == [None, None, None])
    assert never["threshold"] is None and never["exit_fraction"][-1] == 1.0
    assert any(p["pareto_latency"] for p in sweep)
    # expected latency = fractions x per-exit p50
    p50 = [e["latency_ms"]["p50"] for e in profile["exits"]]
    for point in sweep:
        assert point["mean_latency_ms"] == pytest.approx(float(np.dot(point["exit_fraction"], p50)))
    # per-exit top-1 recomputed independently with ONNX Runtime on the same samples
    import onnxruntime as ort

    from hisd_edge.bundle import Bundle
    from hisd_edge.data import load_samples

    bundle = Bundle.open(tiny_bundle_dir)
    samples = load_samples("default:test", count=120)
    session = ort.InferenceSession(str(bundle.full_model_path()), providers=["CPUExecutionProvider"])
    outputs = session.run(
        [e["output"] for e in bundle.exits], {session.get_inputs()[0].name: samples.tensors(bundle.preprocessing)}
    )
    top1 = [float((np.argmax(o, axis=1) == samples.labels).mean()) for o in outputs]
    assert accuracy["per_exit_top1"] == pytest.approx(top1)
    # "never leave early" on the sweep's data is the last exit's accuracy there, recomputed the same way
    val = load_samples("default:val")
    last = session.run([bundle.exits[-1]["output"]], {session.get_inputs()[0].name: val.tensors(bundle.preprocessing)})
    assert never["accuracy"] == pytest.approx(float((np.argmax(last[0], axis=1) == val.labels).mean()))


def test_uncalibrated_policy_is_said(none_profile):
    _, profile = none_profile
    assert profile["policy"]["calibrated"] is False
    assert any("not calibrated" in n for n in profile["notes"])


def test_bundle_without_a_policy_is_profiled_with_defaults(bundle_copy, tmp_path, fast_args, capsys):
    bundle = bundle_copy(lambda m: m.pop("policy"))
    out = tmp_path / "report"
    code, stdout, _ = _run(["profile", str(bundle), "--power", "none", "--out", str(out), *fast_args], capsys)
    assert code == 0 and "has no exit policy" in stdout
    profile = json.loads((out / "profile.json").read_text())
    assert profile["policy"] == {
        **profile["policy"],
        "kind": "max_prob",
        "thresholds": [0.9, 0.9, None],
        "calibrated": False,
    }
    assert "has no exit policy" in (out / "report.html").read_text()


def test_profile_with_a_recorded_orin_tree_measures_energy_exactly(
    fast_board, tiny_bundle_dir, tmp_path, fast_args, capsys
):
    root = fast_board("orin_nano_jp6")  # a tree holds still: power is constant, readings follow it at once
    out = tmp_path / "orin"
    code, stdout, _ = _run(
        ["profile", str(tiny_bundle_dir), "--sysfs-root", str(root), "--batch", "2", "--out", str(out), *fast_args],
        capsys,
    )
    assert code == 0, stdout
    profile = json.loads((out / "profile.json").read_text())
    power = profile["power"]
    assert power["source"] == "ina3221-hwmon" and power["total"] == "VDD_IN" and power["available"]
    assert power["sampler"] == "process" and power["total_rule"]["quantity"] == "module_input"
    assert [r["rail"] for r in power["rails_covered"]] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    assert profile["device"]["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    constant_mw = 5064 * 1126 / 1000.0
    assert profile["idle"]["complete"] and profile["idle"]["power_mw"] == pytest.approx(constant_mw)
    assert profile["idle"]["brackets"] == 3  # rounds + 1: one before each round, one after the last
    for e in profile["exits"]:
        detail = e["energy"]
        assert detail["rounds"] == 2 and detail["complete"] and detail["samples"] >= 6
        assert e["energy_mj"]["dynamic"] == pytest.approx(0.0, abs=1e-9)  # nothing above idle on a still tree
        assert e["energy_mj"]["total"] == pytest.approx(constant_mw * detail["loop_latency_ms"] / 1000.0 / 2, rel=1e-6)
        assert detail["inferences"] % 2 == 0  # counted per sample: calls x batch 2
        assert detail["per_call_mj"]["total"] == pytest.approx(2 * e["energy_mj"]["total"])
        vdd_soc = e["rails_mj"]["VDD_SOC"]
        assert vdd_soc["dynamic"] == pytest.approx(0.0, abs=1e-9) and vdd_soc["total"] > 0
    stages = profile["stages"]
    assert sum(s["energy_mj"]["total"] for s in stages) == pytest.approx(profile["exits"][-1]["energy_mj"]["total"])
    per_exit = profile["overhead"]["per_exit"]
    assert [o["exit"] for o in per_exit] == [0, 1, 2] and all(o["block_pairs"] == 1 for o in per_exit)
    assert profile["design"]["order"][0][0] == "idle" and len(profile["design"]["order"]) == 3
    assert {b["kind"] for b in profile["blocks"]} == {"idle", "exit", "early"}
    assert profile["model_check"]["energy_mj"]["rounds"] == 2
    for name in ("accuracy_vs_energy.png", "exit_costs.png", "model_check.png", "power_trace.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trace_rows = (out / "power_trace.csv").read_text().splitlines()
    assert trace_rows[0] == "time_s,total_mw,VDD_IN_mw,VDD_CPU_GPU_CV_mw,VDD_SOC_mw"
    assert len(trace_rows) - 1 == power["samples"] == len(power["trace"]["time_s"])
    assert (out / "rails.csv").read_text().splitlines()[0].startswith("batch,exit,rail,energy_total_mj")
    page = (out / "report.html").read_text()
    for needle in ("Model check", "Per rail", "what the rail covers", "95% CI", "Conditions", "jetson_clocks"):
        assert needle in page


def test_a_window_too_short_for_the_sensor_is_refused_naming_the_minimum(
    board_tree, tiny_bundle_dir, tmp_path, fast_args, capsys
):
    root = board_tree("orin_nano_jp6")  # 512 samples per average, as NVIDIA ships it: tau ~ 0.5 s
    out = tmp_path / "never"
    code, _, err = _run(
        ["profile", str(tiny_bundle_dir), "--sysfs-root", str(root), "--out", str(out), *fast_args], capsys
    )
    _one_line_error(code, err, "--energy-seconds 0.3: too short for this power sensor", "tau = 0.511 s", "or more")
    assert not out.exists()


def test_a_recorded_log_cannot_say_how_the_board_averaged(
    tegrastats_lines, tiny_bundle_dir, tmp_path, fast_args, capsys
):
    log = tmp_path / "tegrastats.log"
    log.write_text("\n".join([tegrastats_lines["orin_nano_jp6"]] * 25) + "\n")
    code, _, err = _run(
        ["profile", str(tiny_bundle_dir), "--tegrastats-log", str(log), "--out", str(tmp_path / "r"), *fast_args],
        capsys,
    )
    _one_line_error(code, err, "--energy-seconds 0.3: too short", "tau = 0.43 s")


def test_unreadable_sysfs_fails_before_work_naming_path_and_fix(
    board_tree, deny_read, tiny_bundle_dir, tmp_path, fast_args, capsys
):
    root = board_tree("agx_orin_jp5")
    path = root / "sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4/curr2_input"
    deny_read(path)
    out = tmp_path / "never"
    code, _, err = _run(
        ["profile", str(tiny_bundle_dir), "--sysfs-root", str(root), "--out", str(out), *fast_args], capsys
    )
    _one_line_error(code, err, str(path), "sudo chmod a+r", "--power tegrastats")
    assert not out.exists()


def test_tegrastats_missing(tiny_bundle_dir, tmp_path, fast_args, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = _run(
        ["profile", str(tiny_bundle_dir), "--power", "tegrastats", "--out", str(tmp_path / "r"), *fast_args], capsys
    )
    _one_line_error(code, err, "tegrastats", "not found on PATH")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--batch", "0,4"], "--batch"),
        (["--batch", "x"], "--batch"),
        (["--samples", "0"], "--samples"),
        (["--backend", "nope"], "unknown backend"),
        (["--rounds", "0"], "--rounds 0"),
        (["--confidence", "1.5"], "--confidence 1.5"),
        (["--repeats", "1"], "--repeats"),
        (["--power-modes", "x"], "--power-modes 'x'"),
        (["--energy-seconds", "-1"], "--energy-seconds -1"),
    ],
)
def test_bad_flags(extra, needle, tiny_bundle_dir, tmp_path, fast_args, capsys):
    code, _, err = _run(
        ["profile", str(tiny_bundle_dir), "--power", "none", "--out", str(tmp_path / "r"), *fast_args, *extra], capsys
    )
    _one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()


def test_missing_bundle_and_foreign_out_dir(tiny_bundle_dir, tmp_path, fast_args, capsys):
    code, _, err = _run(["profile", str(tmp_path / "absent"), "--power", "none", *fast_args], capsys)
    _one_line_error(code, err, "no such bundle")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    code, _, err = _run(["profile", str(tiny_bundle_dir), "--power", "none", "--out", str(foreign), *fast_args], capsys)
    _one_line_error(code, err, "not a hisd-edge report")
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_report_rerenders_and_compares(none_profile, tmp_path, capsys):
    src, profile = none_profile
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(src, copy)
    (copy / "report.html").unlink()
    (copy / "exits.csv").unlink()
    code, stdout, _ = _run(["report", str(copy)], capsys)
    assert code == 0 and (copy / "report.html").is_file() and (copy / "exits.csv").is_file()
    assert json.loads((copy / "profile.json").read_text()) == profile
    # a second profile with another "precision" label stands in for an fp16 run
    other = json.loads(json.dumps(profile))
    other["precision"] = "fp16"
    (tmp_path / "fp16").mkdir()
    (tmp_path / "fp16" / "profile.json").write_text(json.dumps(other))
    out = tmp_path / "cmp"
    code, stdout, _ = _run(
        ["report", str(copy), str(tmp_path / "fp16" / "profile.json"), "--out", str(out), "--json"], capsys
    )
    assert code == 0
    result = json.loads(stdout)
    assert result["labels"] == ["copy", "fp16"] and (out / "compare.html").is_file()
    page = (out / "compare.html").read_text()
    assert "fp16" in page and "<img" in page and "http" not in page.split("<body>")[1]
    header = (out / "compare_exits.csv").read_text().splitlines()[0]
    assert header.startswith("exit,copy_latency_p50_ms,fp16_latency_p50_ms,copy_energy_total_mj_none")
    # a version-1 profile (before intervals) is still rendered
    old = json.loads(json.dumps(profile))
    old["schema_version"] = 1
    for key in ("sensor", "conditions", "design", "model_check", "blocks"):
        old.pop(key)
    old["memory"].pop("per_exit", None)  # version 2 only (a v1 file validates against profile-v1.schema.json)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "profile.json").write_text(json.dumps(old))
    code, _, _ = _run(["report", str(tmp_path / "v1")], capsys)
    assert code == 0 and (tmp_path / "v1" / "report.html").is_file()


def test_report_errors(none_profile, tmp_path, capsys):
    src, profile = none_profile
    code, _, err = _run(["report", str(src), str(src)], capsys)
    _one_line_error(code, err, "--out")
    code, _, err = _run(["report", str(tmp_path)], capsys)
    _one_line_error(code, err, "no profile.json")
    (tmp_path / "profile.json").write_text("{broken")
    code, _, err = _run(["report", str(tmp_path)], capsys)
    _one_line_error(code, err, "not valid JSON")
    future = dict(profile, schema_version=99)
    (tmp_path / "profile.json").write_text(json.dumps(future))
    code, _, err = _run(["report", str(tmp_path)], capsys)
    _one_line_error(code, err, "schema version 99")


def test_demo_entry_point_writes_the_html_and_is_honest_about_energy(tiny_bundle_dir, tmp_path, monkeypatch):
    from hisd_edge.profile import profile_default

    monkeypatch.setenv("PATH", str(tmp_path))  # no tegrastats here, whatever the machine
    result = profile_default(str(tiny_bundle_dir), str(tmp_path / "demo"), samples=60, power="none")
    page = (tmp_path / "demo" / "report.html").read_text()
    assert result["report"]["html"].endswith("report.html") and "energy unavailable" in page
    assert "n/a" in result["summary"].splitlines()[2] and result["profile"]["power"]["available"] is False


def test_policy_resolution_calibrated_and_not(bundle_copy):
    from hisd_edge.bundle import Bundle
    from hisd_edge.profile.runner import resolve_policy

    calibrated = bundle_copy(
        lambda m: m.update(policy={"kind": "margin", "thresholds": [0.3, 0.2, None], "calibrated": True})
    )
    policy, block, note = resolve_policy(Bundle.open(calibrated))
    assert (policy.kind, block["thresholds"], block["calibrated"], note) == ("margin", [0.3, 0.2, None], True, None)


# -- review fixes ---------------------------------------------------------------------------------------
def test_report_refuses_to_swap_out_a_directory_with_a_users_file(none_profile, tmp_path, capsys):
    import shutil

    src, _ = none_profile
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    (copy / "notes.txt").write_text("precious")
    before = sorted(p.name for p in copy.iterdir())
    code, _, err = _run(["report", str(copy / "profile.json")], capsys)
    _one_line_error(code, err, "notes.txt", "choose another --out or remove them")
    assert (copy / "notes.txt").read_text() == "precious" and sorted(p.name for p in copy.iterdir()) == before
    (copy / "notes.txt").unlink()
    code, _, _ = _run(["report", str(copy / "profile.json")], capsys)  # what the report wrote itself is replaceable
    assert code == 0


def test_profile_checks_out_before_measuring(tiny_bundle_dir, tmp_path, monkeypatch):
    from hisd_edge.errors import InputError
    from hisd_edge.profile import profiler

    def must_not_measure(config):
        raise AssertionError("profile_bundle ran before --out was checked")

    monkeypatch.setattr(profiler, "profile_bundle", must_not_measure)
    out = tmp_path / "r"
    out.mkdir()
    (out / "profile.json").write_text("{}")
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="thesis.tex"):
        profiler.run_profile(profiler.ProfileConfig(bundle=str(tiny_bundle_dir), power="none"), out)
    assert (out / "thesis.tex").read_text() == "precious"


def _with_max_batch(monkeypatch, max_batch):
    """Open the real backend but give it a TensorRT-like max_batch; record every batch the all-exit pass feeds."""
    from hisd_edge.profile import runner
    from hisd_edge.runtime import thresholds

    real_open, real_collect = runner.open_backend, thresholds.collect_exit_outputs
    calls = []

    def open_backend(*args, **kwargs):
        backend = real_open(*args, **kwargs)
        real_activate = backend.activate_impl

        def activate_impl():  # the backend sets max_batch when it opens: override it then
            opened = real_activate()
            backend.max_batch = max_batch  # the onnxruntime backend then refuses larger batches, as TensorRT does
            return opened

        backend.activate_impl = activate_impl
        return backend

    def collect(backend, tensors, *args, **kwargs):
        calls.append(len(tensors))
        return real_collect(backend, tensors, *args, **kwargs)

    monkeypatch.setattr(runner, "open_backend", open_backend)
    monkeypatch.setattr(thresholds, "collect_exit_outputs", collect)
    return calls


def test_batch_over_the_backends_max_batch_fails_before_measuring(
    tiny_bundle_dir, tmp_path, fast_args, monkeypatch, capsys
):
    calls = _with_max_batch(monkeypatch, 2)
    code, _, err = _run(
        [
            "profile",
            str(tiny_bundle_dir),
            "--power",
            "none",
            "--batch",
            "1,4",
            "--out",
            str(tmp_path / "r"),
            *fast_args,
        ],
        capsys,
    )
    _one_line_error(code, err, "--batch 1,4", "at most 2 rows", "rebuild with a larger --batch MAX")
    assert calls == [] and not (tmp_path / "r").exists()


def test_all_exit_pass_is_the_runtimes_collect_exit_outputs(tiny_bundle_dir, tmp_path, fast_args, monkeypatch, capsys):
    calls = _with_max_batch(monkeypatch, 4)
    out = tmp_path / "r"
    code, _, _ = _run(
        ["profile", str(tiny_bundle_dir), "--power", "none", "--batch", "1,4", "--out", str(out), *fast_args], capsys
    )
    assert code == 0 and calls == [120, 500]  # the profiled data, then the sweep's (default:val)
    profile = json.loads((out / "profile.json").read_text())
    assert profile["accuracy"]["samples"] == 120 and profile["accuracy"]["sweep"][0]["thresholds"] == [None] * 3


def test_power_choices_match_the_library():
    from hisd_edge.commands.profile import POWER_CHOICES as cli_choices
    from hisd_edge.profile.power import POWER_CHOICES

    assert cli_choices == POWER_CHOICES


def test_several_power_modes_in_one_command_side_by_side(tiny_bundle_dir, tmp_path, fast_args, fake_tool, capsys):
    state = tmp_path / "mode"
    state.write_text("0\n")
    calls = tmp_path / "calls"
    fake_tool(
        "nvpmodel",
        f"""
        echo "$@" >> {calls}
        if [ "$1" = "-q" ]; then echo "NV Power Mode: MODE$(cat {state})"; cat {state}; exit 0; fi
        if [ "$1" = "-m" ]; then echo "$2" > {state}; exit 0; fi
        exit 1
        """,
    )
    out = tmp_path / "modes"
    code, stdout, _ = _run(
        ["profile", str(tiny_bundle_dir), "--power", "none", "--power-modes", "1,2", "--out", str(out), *fast_args],
        capsys,
    )
    assert code == 0, stdout
    assert (tmp_path / "modes@nvpmodel-1" / "report.html").is_file()
    assert (tmp_path / "modes@nvpmodel-2" / "report.html").is_file()
    assert (out / "compare.html").is_file() and "wrote" in stdout
    assert calls.read_text().split("\n")[:4] == ["-q", "-m 1", "-m 2", "-m 0"]  # the mode before is restored
    assert state.read_text().strip() == "0"


def test_power_mode_switch_that_fails_is_one_line(tiny_bundle_dir, tmp_path, fast_args, fake_tool, capsys):
    fake_tool(
        "nvpmodel",
        'if [ "$1" = "-q" ]; then echo "NV Power Mode: MAXN"; echo 0; exit 0; fi\necho "Permission denied" >&2\nexit 1\n',
    )
    argv = ["profile", str(tiny_bundle_dir), "--power", "none", "--power-modes", "1", "--out", str(tmp_path / "m")]
    code, _, err = _run([*argv, *fast_args], capsys)
    _one_line_error(code, err, "nvpmodel -m 1 failed", "Permission denied")
