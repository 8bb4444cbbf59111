"""Exit policies: scores, threshold semantics and per-row state, on hand-made exit outputs."""

import math

import numpy as np
import pytest

from hisd_edge.errors import InputError
from hisd_edge.runtime.policies import POLICY_KINDS, make_policy, policy_from_manifest, softmax


def logits_for(probabilities):
    return np.log(np.asarray(probabilities, dtype=np.float64))


def test_max_prob_uses_the_fused_confidence_when_given():
    policy = make_policy("max_prob", [0.8, 0.6, None])
    out = logits_for([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2]])
    np.testing.assert_allclose(policy.step(0, None, out, {}), [0.9, 0.5])
    np.testing.assert_allclose(policy.step(0, np.array([0.7, 0.1], np.float32), None, {}), [0.7, 0.1], rtol=1e-6)
    assert policy.leaves(0, np.array([0.85, 0.8, 0.79])).tolist() == [True, True, False]
    assert policy.leaves(1, np.array([0.59, 0.6])).tolist() == [False, True]
    assert policy.leaves(2, np.array([0.0, np.nan])).tolist() == [True, True]  # the last exit accepts all
    assert not policy.needs_outputs


def test_entropy_is_normalised_and_leaves_below_the_threshold():
    policy = make_policy("entropy", [0.5, None])
    out = logits_for([[1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01]])
    scores = policy.step(0, None, out, {})
    assert scores[0] == pytest.approx(-1.0)  # uniform: normalised entropy 1
    h = -(0.98 * math.log(0.98) + 2 * 0.01 * math.log(0.01)) / math.log(3)
    assert scores[1] == pytest.approx(-h)
    assert policy.leaves(0, scores).tolist() == [False, True]
    assert policy.to_stored(policy.score_threshold(0)) == pytest.approx(0.5)


def test_margin_is_top1_minus_top2():
    policy = make_policy("margin", [0.3, None])
    scores = policy.step(0, None, logits_for([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]]), {})
    np.testing.assert_allclose(scores, [0.3, 0.05])
    assert policy.leaves(0, scores).tolist() == [True, False]


def test_patience_counts_consecutive_agreeing_exits_and_compacts():
    policy = make_policy("patience", [3, 2, 2, None])
    state = policy.init_state(3)
    a, b = [0.9, 0.1], [0.1, 0.9]
    seq = [logits_for([a, a, a]), logits_for([a, b, a]), logits_for([a, b, b]), logits_for([b, b, b])]
    assert policy.step(0, None, seq[0], state).tolist() == [1, 1, 1]
    assert policy.step(1, None, seq[1], state).tolist() == [2, 1, 2]
    scores = policy.step(2, None, seq[2], state)
    assert scores.tolist() == [3, 2, 1]
    assert policy.leaves(2, scores).tolist() == [True, True, False]
    state = policy.compact(state, np.array([2]))
    assert policy.step(3, None, seq[3][[2]], state).tolist() == [2]


def test_stability_is_the_cosine_of_consecutive_embeddings():
    policy = make_policy("stability", [None, 0.9, None], exit_kind="embedding")
    state = policy.init_state(2)
    first = policy.step(0, None, np.array([[1.0, 0.0], [0.0, 2.0]]), state)
    assert np.isneginf(first).all()  # nothing to compare with at exit 0
    second = policy.step(1, None, np.array([[3.0, 0.0], [1.0, 1.0]]), state)
    np.testing.assert_allclose(second, [1.0, math.sqrt(0.5)])
    assert policy.leaves(1, second).tolist() == [True, False]


def test_none_threshold_never_leaves_and_the_last_always_does():
    policy = make_policy("max_prob", [None, 0.5, 0.99])
    assert policy.thresholds == [None, 0.5, None]
    assert not policy.leaves(0, np.array([1.0])).any()
    assert policy.leaves(2, np.array([0.0])).all()


def test_all_scores_equals_stepping_row_subsets():
    rng = np.random.default_rng(0)
    outs = [rng.standard_normal((12, 5)) for _ in range(3)]
    for kind in ("max_prob", "entropy", "margin", "patience"):
        policy = make_policy(kind, [None] * 3)
        full = policy.all_scores([None] * 3, outs)
        rows = np.array([1, 5, 6, 11])
        state = policy.init_state(len(rows))
        sub = np.stack([policy.step(k, None, outs[k][rows], state) for k in range(3)], axis=1)
        np.testing.assert_allclose(sub, full[rows])


def test_policy_validation():
    assert set(POLICY_KINDS) == {"max_prob", "entropy", "margin", "patience", "stability"}
    with pytest.raises(InputError, match="unknown exit policy"):
        make_policy("greedy", [None])
    with pytest.raises(InputError, match="3 exits; give 2 \\(the last exit always accepts\\) or 3"):
        make_policy("max_prob", [0.5], num_exits=3)
    # K-1 thresholds: the last exit always accepts, so its threshold is implied
    assert make_policy("max_prob", [0.5, None], num_exits=3).thresholds == [0.5, None, None]
    with pytest.raises(InputError, match="use --policy stability"):
        make_policy("entropy", [0.5, None], exit_kind="embedding")
    with pytest.raises(InputError, match="needs embedding exits"):
        make_policy("stability", [0.5, None], exit_kind="logits")
    with pytest.raises(InputError, match="needs embedding exits"):
        make_policy("stability", [0.5, None])  # exits give logits unless said otherwise
    with pytest.raises(InputError, match="not a number"):
        make_policy("max_prob", ["high", None])
    with pytest.raises(InputError, match="no exit policy.*--policy max_prob"):
        policy_from_manifest({}, 2)
    with pytest.raises(InputError, match="no exit policy.*--policy stability"):
        policy_from_manifest({}, 2, exit_kind="embedding")
    assert policy_from_manifest({"kind": "margin", "thresholds": [0.2, None]}, 2).kind == "margin"


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])


def test_score_thresholds_are_the_public_view_of_the_leave_rule():
    policy = make_policy("entropy", [0.2, None, 0.7])  # entropy: leave when it is at most t (score = -entropy)
    assert policy.score_thresholds() == [-0.2, math.inf, -math.inf]  # the last exit always accepts
    scores = np.array([-0.1, -0.2, -0.3])
    for k, t in enumerate(policy.score_thresholds()):
        np.testing.assert_array_equal(policy.leaves(k, scores), scores >= t)
    policy.score_thresholds()[0] = 99.0  # a copy: callers cannot change the policy through it
    assert policy.score_thresholds()[0] == -0.2


def test_scores_are_float64_so_a_float32_confidence_at_the_threshold_does_not_leave():
    policy = make_policy("max_prob", [0.9, None])
    confidence = np.array([0.9, 0.95], dtype=np.float32)  # float32(0.9) is just below 0.9
    scores = policy.step(0, confidence, None, policy.init_state(2))
    assert scores.dtype == np.float64
    assert policy.leaves(0, scores).tolist() == [False, True]  # as calibration, in float64, predicted
