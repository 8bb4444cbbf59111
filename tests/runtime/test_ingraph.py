"""The in-graph early-exit path (hisd_edge.runtime.ingraph): the chain's decisions, where it is used, fallbacks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.errors import InputError
from hisd_edge.runtime import ingraph
from hisd_edge.runtime.backend import create_backend
from hisd_edge.runtime.early_exit import EarlyExitRuntime, run_early_exit
from hisd_edge.runtime.guard import InputGuard, guard_record_for_convert
from hisd_edge.runtime.policies import make_policy


@pytest.fixture(scope="module")
def val_inputs(converted_bundle, val_samples) -> np.ndarray:
    return val_samples.tensors(Bundle.open(converted_bundle).preprocessing)[:150]


@pytest.fixture(autouse=True)
def _fresh_log_once():
    """The runtime says each fallback reason once per process; every test here wants to hear it."""
    from hisd_edge.runtime import early_exit

    early_exit._LOGGED.clear()


def _spy(backend):  # type: ignore[no-untyped-def]
    """Count the in-graph calls of ``backend`` (the real method still runs)."""
    calls = []
    real = backend.run_ingraph

    def counting(policy):  # type: ignore[no-untyped-def]
        calls.append(policy.kind)
        return real(policy)

    backend.run_ingraph = counting
    return calls


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ingraph_decisions_equal_the_chain(converted_bundle, val_inputs, precision):
    """Same exits, classes, scores and confidences as the chain, at thresholds that use every exit;
    and the in-graph path is what ran."""
    bundle = Bundle.open(converted_bundle)
    entry = bundle.manifest["ingraph"]["files"].get(precision)
    if entry is None:
        pytest.fail(f"the converter wrote no {precision} in-graph artifact: {bundle.manifest.get('ingraph')}")
    num = bundle.num_stages
    chain = create_backend("onnxruntime", bundle, precision).activate()  # the default: the chain
    fast = create_backend("onnxruntime", bundle, precision, ingraph=True).activate()
    calls = _spy(fast)
    confs = []
    for x in val_inputs[:40]:
        chain.start(x[None])
        results = [chain.run_stage(k) for k in range(num)]
        confs.append([float(r.confidence[0]) for r in results[:-1]])
    medians = np.median(np.array(confs), axis=0)
    exits_seen = set()
    for thresholds in ([*medians, None], [0.999, 0.5, None], [None, None, None], [0.0, 0.0, None]):
        policy = make_policy("max_prob", thresholds, num)
        for i, x in enumerate(val_inputs):
            ref, _ = run_early_exit(chain, policy, x[None])
            got, _ = run_early_exit(fast, policy, x[None])
            a, b = ref[0], got[0]
            assert (a.exit, a.class_index, a.score, a.confidence, a.flags) == (
                b.exit,
                b.class_index,
                b.score,
                b.confidence,
                b.flags,
            ), (i, thresholds)
            exits_seen.add(b.exit)
    assert exits_seen == set(range(num))
    assert len(calls) == 4 * len(val_inputs)


def test_knife_edge_thresholds_decide_like_the_chain(converted_bundle, val_inputs):
    """A threshold exactly at a sample's exit-0 confidence leaves; one 1e-12 above it does not, in both
    paths (float32 thresholds rounded to nearest would let the second one leave)."""
    bundle = Bundle.open(converted_bundle)
    chain = create_backend("onnxruntime", bundle, ingraph=False).activate()
    fast = create_backend("onnxruntime", bundle, ingraph=True).activate()
    for x in val_inputs[:20]:
        chain.start(x[None])
        conf = float(chain.run_stage(0).confidence[0])
        for threshold, leaves in ((conf, True), (conf + 1e-12, False)):
            policy = make_policy("max_prob", [threshold, None, None], 3)
            ref, _ = run_early_exit(chain, policy, x[None])
            got, _ = run_early_exit(fast, policy, x[None])
            assert (ref[0].exit == 0) is leaves
            assert got[0].exit == ref[0].exit


def test_ingraph_logits_bit_identical(converted_bundle, val_inputs):
    bundle = Bundle.open(converted_bundle)
    num = bundle.num_stages
    chain = create_backend("onnxruntime", bundle, ingraph=False).activate()
    fast = create_backend("onnxruntime", bundle, ingraph=True).activate()
    for k in range(num):  # force exit k: -inf there, +inf before it
        thresholds = [None] * k + [0.0] + [None] * (num - 1 - k)
        policy = make_policy("max_prob", thresholds[:num], num)
        for x in val_inputs[:30]:
            chain.start(x[None])
            expected = [chain.run_stage(j) for j in range(k + 1)][-1].exit_output()
            fast.start(x[None])
            logits, taken, _, _ = fast.run_ingraph(policy)
            assert taken == k
            assert logits.tobytes() == expected.tobytes()


def test_runtime_falls_back_where_the_graph_cannot_decide(converted_bundle, val_inputs, val_samples, caplog):
    """The input guard, a forced exit, a batch, a policy with state or whose scores were not
    bit-identical at convert: the chain, said once under -v."""
    caplog.set_level(logging.DEBUG, logger="hisd_edge.runtime")
    bundle = Bundle.open(converted_bundle)
    fit_inputs = val_samples.tensors(bundle.preprocessing)[:400]
    record = guard_record_for_convert(bundle.stage_path(0), fit_inputs, "default:val")
    assert record is not None
    with EarlyExitRuntime(bundle, guard=InputGuard.from_manifest(record), ingraph=True) as runtime:
        calls = _spy(runtime.backend)
        runtime.infer_tensors(val_inputs[:1])
        runtime.infer_tensors(val_inputs[:1], exit_at=1)
        runtime.infer_tensors(val_inputs[:8])
        assert calls == []
    assert "input guard" in caplog.text
    with EarlyExitRuntime(bundle, guard=False, ingraph=True) as runtime:
        calls = _spy(runtime.backend)
        runtime.infer_tensors(val_inputs[:1])
        assert calls == ["max_prob"]
    with EarlyExitRuntime(bundle, guard=False) as runtime:  # the default: the chain (measured faster on CPU)
        calls = _spy(runtime.backend)
        runtime.infer_tensors(val_inputs[:1])
        assert calls == [] and "only when asked" in runtime.backend.describe()["ingraph"]
    verified = bundle.manifest["ingraph"]["files"]["fp32"]["policies"]
    for kind in ("entropy", "margin", "patience"):
        if kind in verified:
            continue
        policy = make_policy(kind, [0.5 if kind != "patience" else 2, 0.5 if kind != "patience" else 2, None], 3)
        with EarlyExitRuntime(bundle, policy=policy, guard=False, ingraph=True) as runtime:
            calls = _spy(runtime.backend)
            results = runtime.infer_tensors(val_inputs[:2])[0] + runtime.infer_tensors(val_inputs[2:3])[0]
            assert calls == [] and all(r.ok for r in results)
        assert f"policy {kind}" in caplog.text


def test_bundle_without_the_artifact_runs_the_chain(tiny_bundle, val_samples, caplog):
    """Bundles made before the artifact existed: the chain, no error, the reason under -v."""
    caplog.set_level(logging.DEBUG, logger="hisd_edge.runtime")
    bundle = Bundle.open(tiny_bundle)
    assert "ingraph" not in bundle.manifest
    x = val_samples.tensors(bundle.preprocessing)[:3]
    with EarlyExitRuntime(bundle, guard=False, ingraph=True) as runtime:
        results = [runtime.infer_tensors(x[i : i + 1])[0][0] for i in range(3)]
        assert all(r.ok and r.exit is not None for r in results)
        assert "converted before it existed" in runtime.backend.describe()["ingraph"]
    assert "converted before it existed" in caplog.text


def test_thresholds_of_wrong_count_or_range_are_refused():
    policy = make_policy("max_prob", [0.5, 0.5, None], 3)
    code, thresholds = ingraph.feed(policy, 3)
    assert int(code) == 0 and thresholds.dtype == np.float32 and thresholds.tolist() == [0.5, 0.5]
    up = ingraph.thresholds_f32([0.9, 0.5, np.inf, -np.inf])  # rounded up: float32 s >= up(t) iff s >= t
    assert float(up[0]) >= 0.9 and float(np.nextafter(up[0], np.float32(0))) < 0.9 and float(up[1]) == 0.5
    assert up[2] == np.inf and up[3] == -np.inf
    with pytest.raises(InputError, match="takes 3 thresholds") as info:
        ingraph.feed(policy, 4)
    assert "\n" not in str(info.value)
    policy._score_thresholds = [1.5, 0.5, -np.inf]  # what a tampered policy would feed the graph
    with pytest.raises(InputError, match="out of range"):
        ingraph.feed(policy, 3)
    policy._score_thresholds = [float("nan"), 0.5, -np.inf]
    with pytest.raises(InputError, match="out of range"):
        ingraph.feed(policy, 3)
    with pytest.raises(InputError, match="cannot run in the in-graph"):
        ingraph.feed(make_policy("patience", [2, 2, None], 3), 3)


def test_usable_policy_reasons():
    manifest = {"ingraph": {"files": {"fp32": {"policies": ["max_prob"]}}}}
    assert ingraph.usable_policy(manifest, "fp32", "max_prob")[0] is not None
    assert "not bit-identical" in ingraph.usable_policy(manifest, "fp32", "entropy")[1]
    assert "per-exit state" in ingraph.usable_policy(manifest, "fp32", "patience")[1]
    assert "no fp16 in-graph" in ingraph.usable_policy(manifest, "fp16", "max_prob")[1]
    assert "converted before" in ingraph.usable_policy({}, "fp32", "max_prob")[1]


@pytest.mark.parametrize("use_ingraph", [False, True])
def test_batch1_paths_flag_nonfinite_input_and_output(converted_bundle, val_inputs, use_ingraph):
    """The lean chain's fused non-finite check and the in-graph path both flag NaN in and NaN out,
    and a clean sample gets no flag."""
    bundle = Bundle.open(converted_bundle)
    backend = create_backend("onnxruntime", bundle, ingraph=use_ingraph).activate()
    calls = _spy(backend)
    policy = make_policy("max_prob", [0.5, 0.5, None], 3)
    bad = val_inputs[:1].copy()
    bad[0, 0, :, :] = np.nan
    got, _ = run_early_exit(backend, policy, bad)
    assert {"nonfinite_input", "nonfinite_output"} <= set(got[0].flags)
    assert got[0].exit == 2  # NaN never leaves early
    big = val_inputs[:1] * np.float32(1e30)  # finite, but its sum of squares overflows: the exact check decides
    got, _ = run_early_exit(backend, policy, np.ascontiguousarray(big))
    assert "nonfinite_input" not in got[0].flags
    clean, _ = run_early_exit(backend, policy, val_inputs[:1])
    assert clean[0].flags == []
    assert len(calls) == (3 if use_ingraph else 0)


def test_bench_designs_rows(converted_bundle, tmp_path):
    """bench --designs: every design measured per thread count at batch 1 and --batch, targets printed."""
    import json

    from hisd_edge.cli import main

    out = tmp_path / "designs.json"
    code = main(
        [
            "bench",
            str(converted_bundle),
            "--designs",
            "1,2",
            "--samples",
            "12",
            "--batch-size",
            "4",
            "--seconds",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert [(r["threads"], r["batch"]) for r in report["rows"]] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    one = report["rows"][0]
    assert set(one["us_per_sample"]) == {
        "in_graph",
        "chain",
        "monolithic",
        "oracle",
        "chain_all_stages",
        "bare_all_stages",
    }
    assert one["in_graph"] == "used" and all(v > 0 for v in one["us_per_sample"].values())
    assert abs(sum(one["exit_fractions"]) - 1) < 1e-9
    assert set(report["rows"][1]["us_per_sample"]) == {"chain", "monolithic", "oracle"}
    assert {t["name"].split(": ", 1)[1] for t in report["targets"]} == {
        "chain / oracle, batch 1",
        "chain, every stage / monolithic",
        "Python us per stage",
        "chain / in-graph",
    }
    assert main(["bench", str(converted_bundle), "--designs", "0"]) == 2  # one line, exit status 2


def test_shared_thread_pool_runs_every_stage_session_on_one_pool(converted_bundle, val_inputs, tmp_path):
    """thread_pool='shared': every session on the process-wide pool, the same results as per-session
    pools (computed here); a second size in that process is refused in one line. In a subprocess:
    ONNX Runtime allows no per-session pool in a process once the shared one exists."""
    import json
    import subprocess
    import sys

    policy = make_policy("max_prob", [0.6, 0.6, None], 3)
    own = create_backend("onnxruntime", Bundle.open(converted_bundle), intra_op_threads=2).activate()
    want = [list(_decided(run_early_exit(own, policy, val_inputs[i : i + 1])[0][0])) for i in range(5)]
    x = tmp_path / "x.npy"
    np.save(x, val_inputs[:5])
    script = f"""
import json
import numpy as np
from hisd_edge.bundle import Bundle
from hisd_edge.errors import InputError
from hisd_edge.runtime.backend import create_backend
from hisd_edge.runtime.early_exit import run_early_exit
from hisd_edge.runtime.policies import make_policy
bundle = Bundle.open({str(converted_bundle)!r})
x = np.load({str(x)!r})
policy = make_policy("max_prob", [0.6, 0.6, None], 3)
shared = create_backend("onnxruntime", bundle, thread_pool="shared", intra_op_threads=2).activate()
assert all(not s.session.get_session_options().use_per_session_threads for s in shared._stages)
got = [run_early_exit(shared, policy, x[i : i + 1])[0][0] for i in range(len(x))]
try:
    create_backend("onnxruntime", bundle, thread_pool="shared", intra_op_threads=1).activate()
except InputError as exc:
    assert "already runs ONNX Runtime's shared thread pool with 2 threads" in str(exc), str(exc)
else:
    raise SystemExit("a second pool size was accepted")
print(json.dumps([[r.exit, r.class_index, r.score] for r in got]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == want


def _decided(result):  # type: ignore[no-untyped-def]
    return result.exit, result.class_index, result.score
