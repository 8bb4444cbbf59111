import pytest
import torch
from torch import nn

from hisd_edge.errors import InputError
from hisd_edge.models import ExitsOnBackbone, create_model, is_multi_exit, list_exit_points, list_models


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("resnet")])
def test_registered_models_have_one_output_per_exit(name):
    model = create_model(name).eval()
    cfg = model.config
    x = torch.randn(2, cfg.in_channels, *cfg.input_size)
    outs = model(x)
    assert is_multi_exit(model)
    assert len(outs) == len(model.exit_info) == len(model.stages)
    assert all(o.shape == (2, cfg.num_classes) for o in outs)
    assert [e.name for e in model.exit_info] == [f"exit{k}" for k in range(len(outs))]


def test_resnet50_sized_model_matches_resnet50_scale():
    model = create_model("resnet50_exits")
    params = sum(p.numel() for p in model.parameters())
    assert 25_000_000 < params < 27_000_000  # ResNet-50 has 25.6M
    assert [e.reduction for e in model.exit_info] == [4, 8, 16, 32]
    assert [e.channels for e in model.exit_info] == [256, 512, 1024, 2048]


def test_early_exits_are_cheap_in_the_default_architecture():
    model = create_model("mnist_cnn")
    stage_params = [sum(p.numel() for p in s.parameters()) for s in model.stages]
    assert stage_params[0] < 0.05 * sum(stage_params)


def test_embedding_exits():
    model = create_model("tiny_vit", exit_output="embedding").eval()
    outs = model(torch.randn(3, 1, 28, 28))
    for out in outs:
        torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert model.train()(torch.randn(2, 1, 28, 28))[0].shape == (2, 10)  # logits while training


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(InputError, match="mnist_cnn"):
        create_model("resnet9000")


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.pool(self.block(torch.relu(self.conv1(x)))).flatten(1))


def test_exits_on_existing_backbone():
    example = torch.randn(1, 1, 28, 28)
    backbone = Backbone()
    names = [n for n, _ in list_exit_points(backbone, example)]
    assert "conv1" in names and "block" in names and "fc" not in names
    model = ExitsOnBackbone(backbone, ["block", "conv1"], num_classes=10, example=example).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        outs = model(x)
        conv1 = backbone.conv1(x)  # the attachment points' features, computed without the hooks
        block = backbone.block(torch.relu(conv1))
        expected = [model.heads[0](conv1), model.heads[1](block), backbone(x)]
    assert len(outs) == 3 and [e.module for e in model.exit_info] == ["conv1", "block", "backbone"]
    for k, (got, want) in enumerate(zip(outs, expected)):
        torch.testing.assert_close(got, want, msg=f"exit {k}")
    assert not torch.allclose(outs[-1], outs[-2])  # the last exit is the backbone's output, not a head's
    with pytest.raises(InputError, match="valid names: .*conv1"):
        ExitsOnBackbone(backbone, ["nope"], num_classes=10, example=example)
    with pytest.raises(InputError, match=r"unknown exit point\(s\) \(none given\); valid names"):
        ExitsOnBackbone(backbone, [], num_classes=10, example=example)


def test_wrapped_exits_describe_themselves():
    from hisd_edge.models.protocol import ExitInfo

    model = ExitsOnBackbone(Backbone(), ["conv1", "block"], num_classes=10, example=torch.randn(1, 1, 28, 28))
    assert model.exit_info == [
        ExitInfo("exit0", 0, 4, 1, "conv1"),  # 4 channels at full resolution
        ExitInfo("exit1", 1, 8, 2, "block"),  # 8 channels, stride 2
        ExitInfo("exit2", 2, 10, 1, "backbone"),  # the backbone's own output: its 10 classes
    ]
    assert all(isinstance(e.reduction, int) for e in model.exit_info)  # written to checkpoint metadata as is
    assert model.arch is None  # not rebuildable from metadata
    no_final = ExitsOnBackbone(Backbone(), ["conv1"], num_classes=10, example=torch.randn(1, 1, 28, 28), final=False)
    assert [e.name for e in no_final.exit_info] == ["exit0"] and len(no_final(torch.randn(2, 1, 28, 28))) == 1


class TokenBackbone(nn.Module):
    """A backbone whose intermediate output is a token sequence (N, T, D), as a transformer's is."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.mix = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        tokens = self.mix(torch.relu(self.embed(x.flatten(2).transpose(1, 2))))  # (N, 49, 6)
        return self.fc(tokens.mean(dim=1))


def test_exit_heads_on_token_sequences_average_the_tokens():
    example = torch.randn(1, 4, 7, 7)
    backbone = TokenBackbone()
    assert dict(list_exit_points(backbone, example))["mix"] == (1, 49, 6)
    model = ExitsOnBackbone(backbone, ["mix"], num_classes=5, example=example).eval()
    assert model.exit_info[0] == model.exit_info[0].__class__("exit0", 0, 6, 1, "mix")
    x = torch.randn(3, 4, 7, 7)
    with torch.no_grad():
        outs = model(x)
        tokens = backbone.mix(torch.relu(backbone.embed(x.flatten(2).transpose(1, 2))))
        norm, _, linear = model.heads[0].body
        expected = linear(norm(tokens).mean(dim=1))  # layer norm per token, then the mean over tokens
    assert outs[0].shape == (3, 5) and outs[1].shape == (3, 3)
    torch.testing.assert_close(outs[0], expected)
