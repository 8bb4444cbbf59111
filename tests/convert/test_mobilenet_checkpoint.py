"""A MobileNet-family checkpoint passes the metadata schema that ``convert`` reads it through."""

import torch

from hisd_edge import checkpoint
from hisd_edge.models import create_model


def test_mobilenet_checkpoint_round_trips_through_the_schema(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_mobilenet").eval()
    meta = checkpoint.build_metadata(
        model,
        class_names=list("0123456789"),
        preprocessing={"input_size": [28, 28], "channels": 1, "color_order": "gray", "mean": [0.5], "std": [0.25]},
    )
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", model, meta)
    loaded, read = checkpoint.load_checkpoint(path)  # raised "arch.family ... must be one of cnn, transformer"
    assert read["arch"]["family"] == "mobilenet"
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x)))
