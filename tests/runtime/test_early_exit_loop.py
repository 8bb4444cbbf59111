"""The early-exit loop: per-sample exits, compaction, input order, forced exits, flags, errors."""

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.errors import InputError
from hisd_edge.runtime import create_backend, make_policy, open_runtime, run_early_exit
from hisd_edge.runtime.early_exit import FLAG_NONFINITE_INPUT, FLAG_NONFINITE_OUTPUT
from hisd_edge.runtime.thresholds import collect_exit_outputs


@pytest.fixture(scope="module")
def setup(tiny_bundle, val_samples):
    bundle = Bundle.open(tiny_bundle)
    x = val_samples.tensors(bundle.preprocessing)[:64]
    with create_backend("onnxruntime", bundle) as backend:
        outputs = collect_exit_outputs(backend, x, batch_size=64)
    return bundle, x, outputs


def _middle_thresholds(outputs, kind):
    """Thresholds at the median score of each exit, so that rows really leave at different exits."""
    policy = make_policy(kind, [None] * len(outputs.outputs))
    scores = policy.all_scores(outputs.confidences, outputs.outputs)
    if kind == "patience":  # counts: leave at exit 1 when exits 0 and 1 agree
        stored = [2.0] * (scores.shape[1] - 1)
    else:
        stored = [policy.to_stored(float(np.median(scores[:, k]))) for k in range(scores.shape[1] - 1)]
    return make_policy(kind, [*stored, None]), scores


def _expected_exits(policy, scores):
    num = scores.shape[1]
    exits = np.full(len(scores), num - 1)
    for row in range(len(scores)):
        for k in range(num - 1):
            if scores[row, k] >= policy.score_threshold(k):
                exits[row] = k
                break
    return exits


@pytest.mark.parametrize("kind", ["max_prob", "entropy", "margin", "patience"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_exits_match_offline_scores_for_any_batching(setup, kind, batch):
    bundle, x, outputs = setup
    policy, scores = _middle_thresholds(outputs, kind)
    expected = _expected_exits(policy, scores)
    assert len(set(expected.tolist())) > 1  # the test really has rows leaving at different exits
    got_exit, got_class, got_index = [], [], []
    with create_backend("onnxruntime", bundle) as backend:
        for start in range(0, len(x), batch):
            results, trace = run_early_exit(
                backend, policy, x[start : start + batch], class_names=bundle.class_names, first_index=start
            )
            assert [r.index for r in results] == list(range(start, start + len(results)))
            assert trace.stage_rows[0] == len(results) and trace.stage_rows == sorted(trace.stage_rows, reverse=True)
            got_exit += [r.exit for r in results]
            got_class += [r.class_index for r in results]
            got_index += [r.index for r in results]
            for r in results:
                assert len(r.stage_latency_ms) == r.exit + 1 and r.latency_ms > 0
    assert got_index == list(range(len(x)))
    np.testing.assert_array_equal(got_exit, expected)
    want_class = [int(np.argmax(outputs.outputs[e][i])) for i, e in enumerate(expected)]
    assert got_class == want_class


def test_result_fields_and_confidence(setup):
    bundle, x, outputs = setup
    policy, _ = _middle_thresholds(outputs, "max_prob")
    with open_runtime(bundle.root, policy=policy) as rt:
        results, _ = rt.infer_tensors(x[:16])
    for i, r in enumerate(results):
        assert r.class_name == bundle.class_names[r.class_index]
        assert r.confidence == pytest.approx(float(outputs.confidences[r.exit][i]), abs=1e-5)
        assert r.score == pytest.approx(r.confidence)
        assert r.ok and r.flags == [] and r.embedding is None
        record = r.to_dict()
        assert record["exit"] == r.exit and record["latency_ms"] > 0


@pytest.mark.parametrize("k", [0, 1, 2])
def test_exit_at_forces_every_row(setup, k):
    bundle, x, outputs = setup
    with open_runtime(bundle.root, exit_at=k) as rt:
        results, trace = rt.infer_tensors(x[:10])
    assert [r.exit for r in results] == [k] * 10
    assert len(trace.stage_latency_ms) == k + 1
    assert [r.class_index for r in results] == np.argmax(outputs.outputs[k][:10], axis=1).tolist()


def test_exit_at_out_of_range(tiny_bundle):
    with pytest.raises(InputError, match="exits 0..2"):
        open_runtime(tiny_bundle, exit_at=3)


def test_nan_and_inf_inputs_are_flagged_and_do_not_disturb_the_others(setup):
    bundle, x, _ = setup
    batch = x[:6].copy()
    batch[1, 0, 3, 3] = np.nan
    batch[4, 0, 0, 0] = np.inf
    with open_runtime(bundle.root) as rt:
        clean, _ = rt.infer_tensors(x[:6])
        dirty, _ = rt.infer_tensors(batch)
    for i in (1, 4):
        assert FLAG_NONFINITE_INPUT in dirty[i].flags
    assert FLAG_NONFINITE_OUTPUT in dirty[1].flags
    assert dirty[1].to_dict()["confidence"] is None  # NaN is not JSON
    for i in (0, 2, 3, 5):
        assert dirty[i].flags == [] and dirty[i].exit == clean[i].exit and dirty[i].class_index == clean[i].class_index


def test_raw_images_errors_and_resizing(tiny_bundle, val_samples):
    images = [
        val_samples.images[0],
        None,
        np.zeros((28, 28, 2), np.uint8),
        np.repeat(np.kron(val_samples.images[3], np.ones((2, 2), np.uint8))[:, :, None], 3, axis=2),
    ]
    with open_runtime(tiny_bundle) as rt:
        results = rt.infer(images, names=["ok", "broken", "two-channel", "big-bgr"])
        alone = rt.infer([val_samples.images[0]])[0]
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.name for r in results] == ["ok", "broken", "two-channel", "big-bgr"]  # each result keeps its name
    assert alone.name == "#0"
    assert results[0].ok and results[0].class_index == alone.class_index and results[0].exit == alone.exit
    assert results[1].error == "cannot be decoded as an image"
    assert "channel count" in results[2].error and "\n" not in results[2].error
    assert results[3].ok  # 56x56 BGR: converted to gray and resized by the manifest's preprocessing


def test_runtime_picks_policy_and_rejects_mismatches(tiny_bundle):
    rt = open_runtime(tiny_bundle)
    assert rt.policy.kind == "max_prob" and rt.policy.thresholds == [0.9, 0.9, None]
    assert open_runtime(tiny_bundle, thresholds=[0.5, None, None]).policy.thresholds == [0.5, None, None]
    assert open_runtime(tiny_bundle, policy="entropy", thresholds=[0.2, 0.2, None]).policy.kind == "entropy"
    with pytest.raises(InputError, match="no thresholds for policy"):
        open_runtime(tiny_bundle, policy="margin")


def test_embedding_exits_with_stability(embedding_bundle, val_samples):
    bundle = Bundle.open(embedding_bundle)
    x = val_samples.tensors(bundle.preprocessing)[:20]
    with create_backend("onnxruntime", bundle) as backend:
        outputs = collect_exit_outputs(backend, x)
    policy = make_policy("stability", [None, None, None], exit_kind="embedding")
    scores = policy.all_scores(outputs.confidences, outputs.outputs)
    tau = float(np.median(scores[:, 1]))
    with open_runtime(embedding_bundle, thresholds=[None, tau, None]) as rt:
        results, _ = rt.infer_tensors(x)
    expected = np.where(scores[:, 1] >= tau, 1, 2)
    assert [r.exit for r in results] == expected.tolist()
    for i, r in enumerate(results):
        assert r.class_index is None and r.confidence is None
        np.testing.assert_allclose(r.embedding, outputs.outputs[r.exit][i], atol=1e-5)


def test_single_input_path_flags_and_matches_the_batched_path(setup, embedding_bundle, val_samples):
    bundle, x, outputs = setup
    policy, _ = _middle_thresholds(outputs, "margin")
    with create_backend("onnxruntime", bundle) as backend:
        batched, _ = run_early_exit(backend, policy, x[:12])
        for i in range(12):
            (one,), trace = run_early_exit(backend, policy, x[i : i + 1], first_index=i)
            assert (one.index, one.exit, one.class_index) == (i, batched[i].exit, batched[i].class_index)
            assert one.score == pytest.approx(batched[i].score, abs=1e-6) and trace.stage_rows == [1] * (one.exit + 1)
        for k in range(3):
            (forced,), trace = run_early_exit(backend, policy, x[:1], exit_at=k)
            assert forced.exit == k and trace.stage_rows == [1] * (k + 1)
            assert forced.class_index == int(np.argmax(outputs.outputs[k][0]))
        bad = x[:1].copy()
        bad[0, 0, 0, 0] = np.inf
        (flagged,), _ = run_early_exit(backend, policy, bad)
        assert FLAG_NONFINITE_INPUT in flagged.flags
    emb = Bundle.open(embedding_bundle)
    with open_runtime(embedding_bundle, thresholds=[None, -1.0, None]) as rt:
        (one,), _ = rt.infer_tensors(val_samples.tensors(emb.preprocessing)[:1])
    assert one.exit == 1 and one.class_index is None and len(one.embedding) == 16


def test_a_result_as_json():
    from hisd_edge.runtime import ExitResult

    result = ExitResult(index=3, name="a.png", exit=1, class_index=7, class_name="7", confidence=0.25, score=0.25)
    result.stage_latency_ms = [0.123456, 1.0000004]
    record = result.to_dict()
    assert record["latency_ms"] == 1.1235 and record["stage_latency_ms"] == [0.1235, 1.0]
    assert record["confidence"] == 0.25 and record["score"] == 0.25 and record["error"] is None
    result.score = float("nan")  # JSON has no NaN: the flags say why it is missing
    result.confidence = float("inf")
    assert result.to_dict()["score"] is None and result.to_dict()["confidence"] is None
    failed = ExitResult(index=0, name="b.png", error="cannot be decoded as an image").to_dict()
    assert failed["latency_ms"] is None and failed["exit"] is None and failed["confidence"] is None


def test_batches_larger_than_the_backend_takes_run_in_chunks(setup):
    bundle, x, outputs = setup
    policy, _ = _middle_thresholds(outputs, "max_prob")
    with open_runtime(bundle.root, policy=policy) as rt:
        whole, _ = rt.infer_tensors(x[:10], names=[f"n{i}" for i in range(10)])
        rt.backend.max_batch = 4  # as a TensorRT profile or a fixed-batch model limits it
        chunked, trace = rt.infer_tensors(x[:10], names=[f"n{i}" for i in range(10)], first_index=5)
    assert [r.index for r in chunked] == list(range(5, 15)) and [r.name for r in chunked] == [r.name for r in whole]
    assert [(r.exit, r.class_index) for r in chunked] == [(r.exit, r.class_index) for r in whole]
    assert trace.stage_rows[0] == 2  # the trace is the last chunk's: rows 8 and 9
