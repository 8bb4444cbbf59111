import json
import pickle
import struct

import pytest
import torch

from hisd_edge import checkpoint
from hisd_edge.errors import CheckpointError, InputError
from hisd_edge.models import create_model


def _meta(model):
    return checkpoint.build_metadata(
        model,
        class_names=list("0123456789"),
        preprocessing={"input_size": [28, 28], "channels": 1, "color_order": "gray", "mean": [0.5], "std": [0.25]},
    )


def test_round_trip_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_cnn").eval()
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", model, _meta(model))
    loaded, meta = checkpoint.load_checkpoint(path)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)
    assert meta["arch"]["name"] == "tiny_cnn"
    assert [e["name"] for e in meta["exits"]] == ["exit0", "exit1", "exit2"]
    assert checkpoint.read_metadata(path) == meta
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load_checkpoint(path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "torch.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.read_metadata(tmp_path / "torch.pt")
    assert not marker.exists()


def test_truncated_corrupt_foreign_and_future(tmp_path):
    model = create_model("tiny_cnn")
    good = checkpoint.save_checkpoint(tmp_path / "g.safetensors", model, _meta(model))
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.read_metadata(tmp_path / "trunc.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        checkpoint.read_metadata(tmp_path / "empty.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 5) + b"{{{{{" + b"x" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.read_metadata(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="without hisd-edge metadata"):
        checkpoint.read_metadata(tmp_path / "foreign.safetensors")
    meta = _meta(model)
    meta["format_version"] = 99
    save_file({"a": torch.zeros(2)}, str(tmp_path / "future.safetensors"), metadata={"hisd_edge": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="newer"):
        checkpoint.read_metadata(tmp_path / "future.safetensors")
    with pytest.raises(InputError, match="no such checkpoint"):
        checkpoint.read_metadata(tmp_path / "missing.safetensors")


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    model = create_model("tiny_cnn")
    meta = _meta(model)
    meta["arch"] = create_model("mnist_cnn").arch
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", model, meta)
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.load_checkpoint(path)


def test_embedded_default_checkpoint_is_valid():
    path = checkpoint.default_checkpoint_path()
    if not path.exists():
        pytest.fail(f"the embedded default checkpoint {path} is missing")
    meta = checkpoint.read_metadata(path)
    assert path.stat().st_size < 5 * 1024 * 1024
    assert meta["training"]["command"].startswith("hisd-edge train")
    assert meta["training"]["config"]["seed"] is not None
    assert len(meta["metrics"]["test_accuracy"]) == len(meta["exits"])
