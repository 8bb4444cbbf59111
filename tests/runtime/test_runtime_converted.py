"""Bundles from the real converter: the runtime's exit decisions equal a torch reference's."""

import numpy as np
import pytest
import torch

from hisd_edge.bundle import Bundle
from hisd_edge.runtime import make_policy, open_runtime


@pytest.fixture(scope="module")
def reference(converted_bundle, tiny_checkpoint, val_samples):
    """Torch outputs of the checkpoint the bundle was converted from, on the validation split."""
    from hisd_edge.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    x = val_samples.tensors(Bundle.open(converted_bundle).preprocessing)[:200]
    with torch.no_grad():
        outputs = [o.numpy().astype(np.float64) for o in model(torch.from_numpy(x))]
    return x, outputs


@pytest.mark.parametrize("kind", ["max_prob", "entropy", "margin", "patience"])
def test_exit_decisions_match_torch(converted_bundle, reference, kind):
    x, outputs = reference
    policy = make_policy(kind, [None] * 3)
    scores = policy.all_scores([None] * 3, outputs)  # torch logits; max_prob from the host softmax
    if kind == "patience":
        stored = [2.0, 2.0]
    else:
        stored = [policy.to_stored(float(np.quantile(scores[:, k], 0.4))) for k in range(2)]
    policy = make_policy(kind, [*stored, None])
    leave = scores[:, :2] >= np.array([policy.score_threshold(0), policy.score_threshold(1)])
    expected_exit = np.where(leave.any(1), leave.argmax(1), 2)
    with open_runtime(converted_bundle, policy=policy) as rt:
        results, _ = rt.infer_tensors(x)
    got_exit = np.array([r.exit for r in results])
    # A decision may flip only where torch's score sits within float noise of the threshold.
    margin = np.array(
        [abs(scores[i, min(e, 1)] - policy.score_threshold(min(e, 1))) for i, e in enumerate(expected_exit)]
    )
    differs = got_exit != expected_exit
    assert not (differs & (margin > 1e-4)).any()
    assert len(set(expected_exit.tolist())) > 1
    same = ~differs
    want_class = np.array([np.argmax(outputs[e][i]) for i, e in enumerate(expected_exit)])
    np.testing.assert_array_equal(np.array([r.class_index for r in results])[same], want_class[same])
    for i in np.flatnonzero(same)[:20]:
        if results[i].confidence is not None:
            p = np.exp(outputs[results[i].exit][i] - outputs[results[i].exit][i].max())
            assert results[i].confidence == pytest.approx(p.max() / p.sum(), abs=1e-4)


def test_converted_bundle_fp32_and_int8_through_the_cli(cli, converted_bundle, copy_of):
    root = copy_of(converted_bundle)
    proc = cli(
        "thresholds",
        str(root),
        "--count",
        "120",
        "--method",
        "empirical",
        "--no-progress",
        "--sweep-csv",
        str(root.parent / "s.csv"),
    )
    assert proc.returncode == 0, proc.stderr
    assert Bundle.open(root).policy["calibrated"]
    accuracy = {}
    for precision in ("fp32", "int8"):
        proc = cli("run", str(root), "default:test", "--precision", precision)
        assert proc.returncode == 0, proc.stderr
        summary = proc.stdout.splitlines()[-1]
        accuracy[precision] = float(summary.split("accuracy ")[1].split("%")[0])
    # 1,000 test digits with early exit: the tiny model's level, and INT8 (Q/DQ as written, calibrated on
    # 32 images) within 2 points of fp32.
    assert accuracy["fp32"] > 85.0, accuracy
    assert abs(accuracy["int8"] - accuracy["fp32"]) <= 2.0, accuracy


def test_chain_equals_full_model_of_converted_bundle(converted_bundle, reference):
    from hisd_edge.runtime import create_backend

    x, outputs = reference
    with create_backend("onnxruntime", Bundle.open(converted_bundle)) as backend:
        full = backend.run_full(x).outputs
        backend.start(x)
        for k in range(3):
            chained = backend.run_stage(k).exit_output()
            np.testing.assert_allclose(chained, full[k], atol=1e-5)
            np.testing.assert_allclose(chained, outputs[k], atol=1e-4)
