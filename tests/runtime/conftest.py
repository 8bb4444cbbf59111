"""Fixtures for the runtime tests: small real bundles, exported here stage by stage.

``make_bundle`` writes a bundle the way the manifest contract (hisd_edge.bundle) describes it,
from a ``StagedMultiExit``'s own modules: stage k = ``stages[k]`` + ``exits[k]`` exported with the
TorchScript exporter at opset 17 (inputs ``input`` / ``feat{k-1}``; outputs ``feat{k}``,
``exit{k}`` and, for logits exits, the fused confidence ``conf{k}`` = max softmax), plus the
monolithic full model. It stands in for the converter in tests that must not depend on it; the
tests in test_runtime_converted.py run the real converter as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest


def _export(module, example, path: Path, input_name: str, output_names: List[str]) -> None:
    import torch

    dynamic = {input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )


def make_bundle(
    model,
    out_dir: Path,
    *,
    preprocessing: Dict[str, Any],
    class_names: List[str],
    name: str = "test",
    fuse_confidence: bool = True,
    policy: Optional[Dict[str, Any]] = None,
) -> Path:
    """Export ``model`` (eval mode) into a bundle directory; returns its path."""
    import torch
    from torch import nn

    from hisd_edge.bundle import file_record, write_manifest
    from hisd_edge.preprocess import Preprocessing

    spec = Preprocessing.from_dict(preprocessing)
    model = model.eval()
    embedding = getattr(model, "exit_output", "logits") == "embedding"
    n = model.num_exits
    out_dir.mkdir(parents=True, exist_ok=True)

    class StageModule(nn.Module):
        def __init__(self, stage, head, last: bool):
            super().__init__()
            self.stage, self.head, self.last = stage, head, last

        def forward(self, x):  # type: ignore[no-untyped-def]
            feat = self.stage(x)
            out = self.head(feat)
            outs = [] if self.last else [feat]
            outs.append(out)
            if fuse_confidence and not embedding:
                outs.append(torch.softmax(out, dim=1).amax(dim=1))
            return tuple(outs)

    class FullModule(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):  # type: ignore[no-untyped-def]
            return tuple(self.inner(x))

    x = torch.zeros((2, *spec.input_shape))
    stages, exits = [], []
    with torch.no_grad():
        for k in range(n):
            last = k == n - 1
            # eval() on the wrapper too: export restores the wrapper's mode recursively, and a wrapper left
            # in train mode would put the BatchNorms in train mode and let the next forward change them.
            module = StageModule(model.stages[k], model.exits[k], last).eval()
            outs = ([] if last else [f"feat{k}"]) + [f"exit{k}"]
            has_conf = fuse_confidence and not embedding
            if has_conf:
                outs.append(f"conf{k}")
            input_name = "input" if k == 0 else f"feat{k - 1}"
            rel = f"stage{k}.fp32.onnx"
            _export(module, x, out_dir / rel, input_name, outs)
            in_shape = ["batch", *list(x.shape[1:])]
            x = model.stages[k](x)
            stages.append(
                {
                    "index": k,
                    "inputs": [{"name": input_name, "shape": in_shape, "dtype": "float32"}],
                    "outputs": [{"name": o} for o in outs],
                    "files": {"fp32": file_record(out_dir, rel, io_dtype="float32")},
                    "params": int(sum(p.numel() for p in module.parameters())),
                    "macs": None,
                }
            )
            exits.append(
                {
                    "index": k,
                    "stage": k,
                    "output": f"exit{k}",
                    "confidence_output": f"conf{k}" if has_conf else None,
                    "kind": "embedding" if embedding else "logits",
                }
            )
        _export(
            FullModule(model).eval(),
            torch.zeros((2, *spec.input_shape)),
            out_dir / "full.fp32.onnx",
            "input",
            [f"exit{k}" for k in range(n)],
        )
    manifest = {
        "name": name,
        "model": {"arch": model.arch, "source": "checkpoint", "exit_output": "embedding" if embedding else "logits"},
        "class_names": list(class_names),
        "preprocessing": spec.to_dict(),
        "stages": stages,
        "exits": exits,
        "full_model": file_record(out_dir, "full.fp32.onnx"),
        "policy": policy or {"kind": "max_prob", "thresholds": [0.9] * (n - 1) + [None], "calibrated": False},
        "validation": {},
        "engines": [],
        "provenance": {"command": "tests/runtime/conftest.py make_bundle"},
    }
    write_manifest(out_dir, manifest)
    return out_dir


def bundle_from_checkpoint(checkpoint: Path, out_dir: Path, **kwargs: Any) -> Path:
    from hisd_edge.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    return make_bundle(model, out_dir, preprocessing=meta["preprocessing"], class_names=meta["class_names"], **kwargs)


MNIST_PREPROCESSING = {"input_size": [28, 28], "channels": 1, "color_order": "gray", "mean": [0.1307], "std": [0.3081]}


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A bundle of the trained tiny CNN (fused confidences); treat as read-only (copy_of it to change it)."""
    return bundle_from_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def tiny_bundle_unfused(tiny_checkpoint, tmp_path_factory) -> Path:
    """The same model without fused confidence outputs (the host computes max softmax)."""
    return bundle_from_checkpoint(
        tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny_unfused", fuse_confidence=False
    )


@pytest.fixture(scope="session")
def embedding_bundle(tmp_path_factory) -> Path:
    """A tiny transformer with embedding exits (random weights, seeded)."""
    import torch

    from hisd_edge.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny_vit", exit_output="embedding")
    return make_bundle(
        model,
        tmp_path_factory.mktemp("bundle") / "vit_emb",
        preprocessing=MNIST_PREPROCESSING,
        class_names=[str(d) for d in range(10)],
        policy={"kind": "stability", "thresholds": [0.99, 0.99, None], "calibrated": False},
    )


@pytest.fixture(scope="session")
def val_samples():
    from hisd_edge.data import load_samples

    return load_samples("default:val")


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="session")
def converted_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint through the real converter (fp32 + int8); read-only."""
    from hisd_edge.convert import pipeline as convert

    out = tmp_path_factory.mktemp("converted") / "tiny_conv"
    convert.convert_checkpoint(tiny_checkpoint, out, precisions=("fp32", "int8"), calib_count=32, val_count=64)
    return out


def run_cli(*args: str, cwd: Optional[Path] = None):  # type: ignore[no-untyped-def]
    """Run ``python -m hisd_edge ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "hisd_edge", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


@pytest.fixture()
def cli():
    return run_cli
