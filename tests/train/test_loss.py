import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hisd_edge.models import create_model
from hisd_edge.train import HisdLossConfig, HisdObjective, kd_kl


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 10)
    assert float(kd_kl(z, z, 3.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_kl(z, torch.randn(4, 10), 3.0)) > 0


def test_kd_matches_definition_and_detaches_teacher():
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5, requires_grad=True)
    t = 2.0
    value = kd_kl(student, teacher, t)
    p = F.softmax(teacher / t, dim=1)
    expected = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(1).mean() * t * t
    torch.testing.assert_close(value, expected)
    value.backward()
    assert teacher.grad is None and student.grad is not None


def _parts(regime, **kw):
    torch.manual_seed(0)
    model = create_model("tiny_cnn")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    feats, _ = model.forward_features(x)
    obj = HisdObjective(model, HisdLossConfig(regime=regime, **kw), [tuple(f.shape) for f in feats])
    loss, parts, logits = obj(x, y)
    return loss, parts, logits, y


def test_regimes_select_their_terms():
    loss, parts, logits, y = _parts("none")
    assert set(parts) == {"ce"}
    torch.testing.assert_close(loss, sum(F.cross_entropy(z, y) for z in logits))
    assert set(_parts("final")[1]) == {"ce", "kd_final"}
    assert set(_parts("hisd")[1]) == {"ce", "kd_final", "kd_next"}
    assert set(_parts("hisd", hint=0.5)[1]) == {"ce", "kd_final", "kd_next", "hint"}


def test_hisd_total_is_the_weighted_sum():
    loss, parts, _, _ = _parts("hisd", alpha=0.3, beta=0.7, exit_weights=(1.0, 2.0, 3.0))
    expected = (torch.tensor([1.0, 2.0, 3.0]) * parts["ce"]).sum() + 0.3 * parts["kd_final"] + 0.7 * parts["kd_next"]
    torch.testing.assert_close(loss.detach(), expected)


def test_bad_config():
    with pytest.raises(ValueError):
        HisdLossConfig(regime="bogus")
    with pytest.raises(ValueError, match="exit weights"):
        _parts("none", exit_weights=(1.0,))


# -- gradients against the textbook formulas --------------------------------------------------
# d/dz_s of T^2 KL(softmax(z_t/T) || softmax(z_s/T)), averaged over N rows, is T/N (q_s - q_t)
# with q = softmax(z/T); the teacher gets nothing (knowledge flows from deep to shallow only).
# d/dz of mean-over-rows cross-entropy is (softmax(z) - onehot(y))/N. The expected gradients below
# are built from these formulas in float64 numpy, not from the code's own parts.


class _LeafExits(torch.nn.Module):
    """A stand-in multi-exit model whose exit logits and features are leaves, to read gradients from."""

    def __init__(self, logits, feats):
        super().__init__()
        self.logits = torch.nn.ParameterList([torch.nn.Parameter(z.clone()) for z in logits])
        self.feats = torch.nn.ParameterList([torch.nn.Parameter(f.clone()) for f in feats])
        self.exit_info = [None] * len(logits)

    def forward_features(self, x):
        return list(self.feats), list(self.logits)


def _softmax(z, t=1.0):
    z = np.asarray(z, dtype=np.float64) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _leaf_objective(regime, num_exits=3, rows=5, classes=4, dim=6, seed=0, **config):
    gen = torch.Generator().manual_seed(seed)
    logits = [3.0 * torch.randn(rows, classes, generator=gen, dtype=torch.float64) for _ in range(num_exits)]
    feats = [torch.randn(rows, dim, generator=gen, dtype=torch.float64) for _ in range(num_exits)]
    y = torch.randint(0, classes, (rows,), generator=gen)
    model = _LeafExits(logits, feats)
    objective = HisdObjective(model, HisdLossConfig(regime=regime, **config), [tuple(f.shape) for f in feats])
    objective = objective.double()
    loss, _, _ = objective(torch.zeros(rows, 1), y)
    loss.backward()
    z = [v.detach().numpy() for v in logits]
    onehot = np.eye(classes)[y.numpy()]
    return model, objective, z, [f.detach().numpy() for f in feats], onehot


@pytest.mark.parametrize("regime", ["none", "final", "hisd"])
def test_exit_logit_gradients_match_the_hisd_formula(regime):
    alpha, beta, t, weights = 0.7, 0.3, 2.0, (1.0, 2.0, 0.5)
    model, _, z, _, onehot = _leaf_objective(regime, alpha=alpha, beta=beta, temperature=t, exit_weights=weights)
    rows, last = len(onehot), len(z) - 1
    q = [_softmax(zk, t) for zk in z]
    for k in range(len(z)):
        expected = weights[k] * (_softmax(z[k]) - onehot) / rows
        if k < last and regime in ("final", "hisd"):
            expected += alpha * t * (q[k] - q[last]) / rows  # the final exit teaches exit k
        if k < last and regime == "hisd":
            expected += beta * t * (q[k] - q[k + 1]) / rows  # exit k+1 teaches exit k
        np.testing.assert_allclose(model.logits[k].grad.numpy(), expected, rtol=1e-9, atol=1e-12, err_msg=f"exit {k}")


def test_distillation_never_pulls_the_final_exit_towards_earlier_ones():
    # With CE switched off at the final exit, distillation alone must leave its logits untouched.
    model, _, _, _, _ = _leaf_objective("hisd", alpha=1.0, beta=1.0, exit_weights=(1.0, 1.0, 0.0))
    assert float(model.logits[-1].grad.abs().max()) == 0.0
    assert float(model.logits[0].grad.abs().max()) > 1e-3


def test_feature_hint_gradients_flow_to_the_student_only():
    gamma = 0.8
    model, objective, _, f, _ = _leaf_objective("hisd", alpha=0.0, beta=0.0, hint=gamma)
    rows, dim = f[0].shape
    weights = [p.weight.detach().numpy() for p in objective.hint.projs]
    expected = [np.zeros_like(v) for v in f]
    for k, w in enumerate(weights):  # term k: mean((f_k W_k^T - f_{k+1})^2); f_{k+1} is the (detached) teacher
        residual = f[k] @ w.T - f[k + 1]
        expected[k] += gamma * 2.0 * residual @ w / (rows * dim)
    for k in range(len(f)):
        grad = model.feats[k].grad  # None: nothing flowed back at all
        got = np.zeros_like(f[k]) if grad is None else grad.numpy()
        np.testing.assert_allclose(got, expected[k], rtol=1e-9, atol=1e-12, err_msg=f"feat {k}")
    assert model.feats[-1].grad is None  # the deepest features are only ever a teacher


def test_loss_value_matches_the_hisd_formula():
    alpha, beta, t, weights = 0.4, 0.9, 3.0, (0.5, 1.0, 2.0)
    gen = torch.Generator().manual_seed(3)
    logits = [2.0 * torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    y = torch.randint(0, 5, (6,), generator=gen)
    model = _LeafExits(logits, [torch.zeros(6, 2, dtype=torch.float64)] * 3)
    objective = HisdObjective(
        model, HisdLossConfig("hisd", alpha=alpha, beta=beta, temperature=t, exit_weights=weights)
    )
    loss, _, _ = objective.double()(torch.zeros(6, 1), y)
    z = [v.numpy() for v in logits]

    def kl(p, q):  # KL(p || q), mean over rows
        return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))

    q = [_softmax(zk, t) for zk in z]
    ce = [float(np.mean(-np.log(_softmax(zk)[np.arange(6), y.numpy()]))) for zk in z]
    expected = sum(w * c for w, c in zip(weights, ce))
    expected += alpha * t * t * sum(kl(q[2], q[k]) for k in range(2))
    expected += beta * t * t * sum(kl(q[k + 1], q[k]) for k in range(2))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-10)
