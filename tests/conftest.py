"""Shared fixtures and the hardware markers.

Tests that need a GPU, TensorRT or a Jetson carry the ``gpu`` / ``tensorrt`` / ``jetson`` marker
and are skipped, with the reason, where that hardware or package is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _has_cuda_gpu() -> bool:
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]

        err, count = runtime.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:
        return False


def _has_tensorrt() -> bool:
    """TensorRT itself, not the tensorrt-stubs namespace package CI installs for type checking."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def _is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    reasons = {}
    if not _has_cuda_gpu():
        reasons["gpu"] = "needs a CUDA GPU; none found on this machine"
    if not _has_tensorrt():
        reasons["tensorrt"] = (
            "needs TensorRT (python3-libnvinfer on JetPack, or NVIDIA's pip index); not installed here"
        )
    if not _is_jetson():
        reasons["jetson"] = "needs a Jetson board (/etc/nv_tegra_release absent)"
    for item in items:
        for marker, reason in reasons.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _quiet_threads():
    """Keep the suite polite on 2-core CI machines."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield


TINY_TRAIN_ARGV = ["--arch", "tiny_cnn", "--epochs", "3", "--lr", "0.1", "--threads", "1", "--seed", "0"]


@pytest.fixture(scope="session")
def tiny_train_config():
    """The training recipe of ``tiny_checkpoint`` (and the command line it records)."""
    from hisd_edge.train import TrainConfig

    return TrainConfig(arch="tiny_cnn", epochs=3, lr=0.1, threads=1, seed=0, progress=False), list(TINY_TRAIN_ARGV)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_train_config) -> Path:
    """A real checkpoint of the tiny CNN: 3 epochs on the default data (seconds), ~93% val top-1 at the last exit."""
    reuse = os.environ.get("HISD_EDGE_TEST_TINY_CHECKPOINT")
    if reuse:  # tools/mutation_test.py trains it once for its many short test sessions
        return Path(reuse)
    from hisd_edge.train import train

    config, argv = tiny_train_config
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    train(config, out, argv=argv)
    return out


@pytest.fixture()
def copy_of(tmp_path):
    """copy_of(path) -> a private copy under tmp_path (files or directories)."""

    def _copy(path: Path) -> Path:
        dst = tmp_path / ("copy_" + Path(path).name)
        if Path(path).is_dir():
            shutil.copytree(path, dst)
        else:
            shutil.copy2(path, dst)
        return dst

    return _copy
