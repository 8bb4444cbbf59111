"""torch.fx exit points: reused modules and functional calls get their own names and shapes."""

import pytest
import torch
from torch import nn

from hisd_edge.convert import export, list_points
from hisd_edge.errors import InputError
from hisd_edge.models import ExitsOnBackbone, create_model, list_exit_points


class SharedAct(nn.Module):
    """One ReLU module called twice, at different shapes, plus functional calls."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        a = self.act(self.conv1(x))
        b = self.act(self.conv2(a))  # second call of the same module
        c = torch.relu(b) + b  # functional calls
        return self.fc(c.mean(dim=(2, 3)))


class FlattenByBatch(nn.Module):
    """EfficientNet-style: the batch size is read from the input at the top and used at the very end."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        bs = x.size(0)
        x = self.pool(self.block(self.stem(x)))
        return self.fc(x.view(bs, -1))


def test_reused_module_calls_have_distinct_names_and_shapes():
    example = torch.randn(1, 1, 16, 16)
    points = dict(list_exit_points(SharedAct(), example))
    assert points["act"] == (1, 4, 16, 16)
    assert points["act_1"] == (1, 8, 8, 8)  # not the first call's shape
    assert "relu" in points and "add" in points  # functional calls are points too


def test_exit_at_the_second_call_captures_the_second_call():
    torch.manual_seed(0)
    backbone = SharedAct().eval()
    example = torch.randn(1, 1, 16, 16)
    model = ExitsOnBackbone(backbone, ["act_1", "act"], num_classes=3, example=example).eval()
    assert model.points == ["act", "act_1"]
    x = torch.randn(2, 1, 16, 16)
    feats, outs = model.forward_features(x)
    with torch.no_grad():
        first = backbone.act(backbone.conv1(x))
        second = backbone.act(backbone.conv2(first))
    torch.testing.assert_close(feats[0], first)
    torch.testing.assert_close(feats[1], second)
    torch.testing.assert_close(outs[-1], backbone(x))
    # the traced graph shares the backbone's weights: nothing is stored twice
    assert set(model.state_dict()) == {f"backbone.{k}" for k in backbone.state_dict()} | {
        f"heads.{k}" for k in model.heads.state_dict()
    }


def test_container_modules_are_points_too():
    model = create_model("tiny_cnn").eval()
    names = [n for n, _ in list_exit_points(model, torch.zeros(1, 1, 28, 28))]
    assert "stages.0" in names and "stages.1" in names and "stages.0.1.relu" in names
    assert names.index("stages.0.1.relu") < names.index("stages.0")  # a block after its last op


def test_one_naming_scheme_for_exit_points_list_points_and_split_points():
    example = torch.randn(1, 1, 16, 16)
    backbone = FlattenByBatch().eval()
    model = ExitsOnBackbone(backbone, ["stem"], num_classes=10, example=example).eval()
    listed = [n for n, _ in list_points(model)]  # used to fail: "cannot tell this module's input shape"
    assert listed == [n for n, _ in list_exit_points(backbone, example)]
    assert not any(n.startswith("backbone.") for n in listed)
    proto, names = export.export_module(model, (1, 16, 16), split_points=["block"])
    assert names == ["block"] and "block" in export.tensor_names(proto)
    assert not any("split@" in n for n in export.tensor_names(proto))
    with pytest.raises(InputError, match="valid names"):
        export.export_module(model, (1, 16, 16), split_points=["backbone.block"])
