"""``hisd-edge train --list-archs`` is a table a user can choose from (issue 13)."""

import torch

from hisd_edge.commands.train import arch_row, archs_table
from hisd_edge.models import create_model


def _hooked_macs(model, x):
    """Conv and Linear MACs counted by hand with forward hooks (independent of torch's flop counter)."""
    total = [0]

    def conv(module, inputs, output):
        kh, kw = module.kernel_size
        total[0] += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear(module, inputs, output):
        total[0] += output.numel() * module.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0]


def test_tiny_cnn_row_matches_an_independent_count():
    row = arch_row("tiny_cnn")
    model = create_model("tiny_cnn").eval()
    assert row["input"] == "1x28x28" and row["classes"] == 10 and row["exits"] == 3
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["macs"] == _hooked_macs(model, torch.zeros(1, 1, 28, 28))


def test_table_has_a_header_and_one_line_per_arch():
    text = archs_table([arch_row("tiny_cnn"), arch_row("tiny_vit")])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["name", "family", "input", "CxHxW"] and "MACs" in lines[0]
    assert lines[1].split()[:5] == ["tiny_cnn", "cnn", "1x28x28", "10", "3"]
    assert lines[2].startswith("tiny_vit") and "flop_counter" in lines[-1]
