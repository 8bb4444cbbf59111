"""Certified thresholds: the statistics, the choice, what is refused, and validity by repetition."""

import math

import numpy as np
import pytest

from hisd_edge.errors import InputError
from hisd_edge.runtime import risk as rc
from hisd_edge.runtime.policies import make_policy
from hisd_edge.runtime.thresholds import ExitOutputs, certify

stats = pytest.importorskip("scipy.stats")


def test_p_values_are_the_exact_binomial_tail_and_the_bound_inverts_them():
    n, alpha, delta = 400, 0.02, 0.1
    counts = np.arange(0, 20)
    np.testing.assert_allclose(rc.binomial_p_values(counts, n, alpha), stats.binom.cdf(counts, n, alpha))
    for count in (0, 3, 11):
        bound = rc.upper_bound(count, n, delta)
        # the smallest alpha whose p-value reaches delta
        assert stats.binom.cdf(count, n, bound) == pytest.approx(delta, abs=1e-9)
        assert stats.binom.cdf(count, n, bound * 0.999) > delta
    assert rc.upper_bound(n, n, delta) == 1.0
    assert rc.binomial_p_values(np.array([n]), n, 1.0)[0] == 0.0  # risk of a binary loss is never above 1


def test_fixed_sequence_stops_at_the_first_hypothesis_it_cannot_reject():
    assert rc.fixed_sequence([0.01, 0.05, 0.2, 0.01], 0.1) == 2
    assert rc.fixed_sequence([0.5, 0.0], 0.1) == 0
    assert rc.fixed_sequence([0.0, 0.1], 0.1) == 2
    assert rc.fixed_sequence([0.0, float("nan")], 0.1) == 1


def test_samples_needed_is_the_smallest_sample_that_certifies():
    for alpha, delta in ((0.005, 0.1), (0.01, 0.05), (0.2, 0.1)):
        m = rc.samples_needed(alpha, delta)
        assert (1 - alpha) ** m <= delta < (1 - alpha) ** (m - 1)
    m = rc.samples_needed(0.02, 0.1, rate=0.005)
    assert (
        rc.upper_bound(math.floor(0.005 * m), m, 0.1) <= 0.02 < rc.upper_bound(math.floor(0.005 * (m - 1)), m - 1, 0.1)
    )
    assert rc.samples_needed(0.01, 0.1, rate=0.02) is None
    assert rc.samples_needed(0.0, 0.1) is None


def test_both_risks_bound_the_accuracy_drop_sample_by_sample():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 3, (500, 3))
    labels = rng.integers(0, 3, 500)
    taken = rng.integers(0, 3, (500, 4))
    acc = rc.per_sample_losses(preds, taken, labels, "accuracy")
    dis = rc.per_sample_losses(preds, taken, None, "disagreement")
    assert (dis >= acc).all()  # whenever the final is right and the taken exit wrong, they disagree
    chosen = np.take_along_axis(preds, taken, axis=1)
    drop = (preds[:, -1:] == labels[:, None]).mean(axis=0) - (chosen == labels[:, None]).mean(axis=0)
    assert (drop <= acc.mean(axis=0) + 1e-12).all()


def synthetic(n, seed, classes=5):
    """Three exits; deeper ones are right more often; confidence is informative but imperfect."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    outputs, confs = [], []
    for skill in (0.80, 0.90, 0.96):
        right = rng.random(n) < skill
        pred = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
        strength = np.where(right, rng.gamma(3.0, 2.0, n), rng.gamma(1.5, 1.2, n))
        logits = rng.normal(0, 0.3, (n, classes))
        logits[np.arange(n), pred] += strength
        z = np.exp(logits - logits.max(1, keepdims=True))
        outputs.append(logits)
        confs.append((z.max(1) / z.sum(1)).astype(np.float32))
    return ExitOutputs(outputs, confs), labels


COSTS = [1.0, 1.0, 3.0]


def test_certify_takes_the_cheapest_candidate_of_the_certified_prefix():
    outputs, labels = synthetic(2000, 1)
    cal = certify("max_prob", outputs, labels, COSTS, 2.0, confidence=0.9, risk="accuracy")
    policy = make_policy("max_prob", [None] * 3, 3)
    scores = policy.all_scores(outputs.confidences, outputs.outputs)
    preds = np.stack([o.argmax(1) for o in outputs.outputs], 1)
    family = rc.shared_family(policy, 3)
    # brute force, independently of evaluate_family: exits, losses, scipy p-values, prefix, cheapest
    best = None
    for lam in family[:, 0]:
        leave = scores[:, :2] >= lam
        exits = np.where(leave.any(1), leave.argmax(1), 2)
        chosen = preds[np.arange(len(preds)), exits]
        losses = int(((preds[:, -1] == labels) & (chosen != labels)).sum())
        if stats.binom.cdf(losses, len(labels), 0.02) > 0.1:
            break
        cost = np.cumsum(COSTS)[exits].mean()
        if best is None or cost < best[0] - 1e-12:
            best = (cost, lam)
    assert best is not None
    assert cal.expected_cost == pytest.approx(best[0])
    assert cal.policy.thresholds[:2] == [pytest.approx(best[1])] * 2 and cal.policy.thresholds[2] is None
    assert cal.certificate["method"] == "certified" and cal.certificate["risk"] == "accuracy"
    assert cal.certificate["count"] == 2000 and cal.certificate["confidence"] == 0.9
    assert 0 < cal.certificate["best_certifiable_points"] <= 2.0
    assert sum(cal.exit_fractions) == pytest.approx(1.0) and cal.exit_fractions[0] > 0.3
    header = cal.sweep_header
    certified_rows = [r for r in cal.sweep_rows if r[header.index("certified")]]
    assert len(certified_rows) == cal.certificate["candidates_certified"]


@pytest.mark.parametrize("risk", ["accuracy", "disagreement"])
def test_the_guarantee_holds_over_repeated_calibration_draws(risk):
    """200 calibration draws of 400 from a 50,000-sample population: the chosen thresholds' true
    risk exceeds the bound in at most 1 - confidence of the draws (plus binomial noise). Choosing
    the most aggressive thresholds whose *calibration* risk meets the bound (the empirical fit)
    violates it about half the time, which is what this test would catch."""
    population, truth = synthetic(50_000, 7)
    policy = make_policy("max_prob", [None] * 3, 3)
    scores = policy.all_scores(population.confidences, population.outputs)
    preds = np.stack([o.argmax(1) for o in population.outputs], 1)
    family = rc.shared_family(policy, 3)
    labels = truth if risk == "accuracy" else None
    true_risk = rc.per_sample_losses(preds, rc.exit_indices(scores, family), labels, risk).mean(axis=0)
    alpha, delta, n, draws = 0.03, 0.1, 400, 200
    assert true_risk.min() < alpha < true_risk.max()  # the bound cuts through the family
    rng = np.random.default_rng(0)
    violations = naive_violations = 0
    for _ in range(draws):
        idx = rng.choice(len(truth), n, replace=False)
        sub_labels = None if labels is None else labels[idx]
        choice = rc.evaluate_family(scores[idx], preds[idx], sub_labels, COSTS, family, risk, alpha, delta)
        if choice.index is not None:
            violations += true_risk[choice.index] > alpha
        empirical = choice.loss_counts / n
        naive = int(np.flatnonzero(empirical <= alpha).max())
        naive_violations += true_risk[naive] > alpha
    assert violations / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    assert naive_violations / draws > 0.3


def test_too_few_samples_says_what_the_data_can_certify_and_what_the_bound_needs():
    outputs, labels = synthetic(150, 2)
    with pytest.raises(InputError) as info:
        certify("max_prob", outputs, labels, COSTS, 0.5, confidence=0.9, risk="accuracy")
    message = str(info.value)
    assert "\n" not in message
    assert "150 calibration samples can certify at best 1.52 points" in message
    assert f"0.5 points needs at least {rc.samples_needed(0.005, 0.1):,} samples" in message
    assert "--method empirical (no guarantee)" in message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"confidence": 1.0}, "--confidence must be strictly between 0 and 1"),
        ({"confidence": 0.0}, "--confidence must be strictly between 0 and 1"),
        ({"max_drop_points": -0.1}, "--max-drop must be >= 0"),
        ({"max_drop_points": 0.0}, "--max-drop 0 cannot be certified"),
        ({"max_drop_points": 150.0}, "accuracy points (0..100)"),
        ({"risk": "accuracy", "labels": None}, "--risk accuracy needs labelled calibration data"),
        ({"exit_kind": "embedding"}, "give embeddings, not classes"),
    ],
)
def test_bad_requests_are_one_line_errors(kwargs, needle):
    outputs, labels = synthetic(300, 3)
    args = {"labels": labels, "max_drop_points": 2.0, "confidence": 0.9, "risk": "accuracy", "exit_kind": "logits"}
    args.update(kwargs)
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")) as info:
        certify("max_prob", outputs, args.pop("labels"), COSTS, args.pop("max_drop_points"), **args)
    assert "\n" not in str(info.value)


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(InputError, match="labels range -1..3 but the model has classes 0..9"):
        rc.check_labels(np.array([0, 3, -1]), 10, "cal.npz")
    with pytest.raises(InputError, match="labels range 0..12"):
        rc.check_labels(np.array([0, 12]), 10, "cal.npz")
    rc.check_labels(np.array([0, 9]), 10, "cal.npz")


def test_disagreement_needs_no_labels_and_is_at_least_as_strict():
    outputs, labels = synthetic(3000, 4)
    by_labels = certify("max_prob", outputs, labels, COSTS, 2.0, risk="accuracy")
    unlabelled = certify("max_prob", outputs, None, COSTS, 2.0, risk="disagreement")
    assert unlabelled.label_source == "final exit" and unlabelled.certificate["risk"] == "disagreement"
    assert unlabelled.expected_cost >= by_labels.expected_cost - 1e-12  # the stricter loss exits less
    assert unlabelled.certificate["audit_reference_points"] == 2.0
    assert 0 < by_labels.certificate["audit_reference_points"] <= 100


@pytest.mark.parametrize("kind", ["entropy", "margin", "patience"])
def test_other_policies_have_a_data_independent_family(kind):
    outputs, labels = synthetic(3000, 5)
    cal = certify(kind, outputs, labels, COSTS, 3.0, risk="accuracy")
    policy = make_policy(kind, [None] * 3, 3)
    family = rc.shared_family(policy, 3)
    assert (np.diff(family[:, 0]) < 0).all()  # ordered from conservative (high score needed) to aggressive
    assert cal.policy.kind == kind and cal.exit_fractions[-1] < 1.0
    with pytest.raises(InputError, match="--method empirical"):
        rc.shared_family(make_policy("stability", [None] * 3, 3, "embedding"), 3)


def test_fingerprint_names_the_data():
    x = np.zeros((4, 1, 2, 2), np.float32)
    a = rc.data_fingerprint(x, np.array([0, 1, 2, 3]))
    assert a.startswith("sha256:") and len(a) == 7 + 64
    assert rc.data_fingerprint(x, np.array([0, 1, 2, 2])) != a
    y = x.copy()
    y[0, 0, 0, 0] = 1e-3
    assert rc.data_fingerprint(y, np.array([0, 1, 2, 3])) != a
