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
