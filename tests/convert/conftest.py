"""Fixtures for the converter tests: one real bundle of the tiny CNN, converted once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """fp32 + fp16 + int8 bundle of the 1-epoch tiny CNN (70 calibration images: batches of 35, not a multiple of 64; 200 validation samples)."""
    from hisd_edge.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    convert_checkpoint(tiny_checkpoint, out, calib_count=70, val_count=200)
    return out


@pytest.fixture(scope="session")
def tiny_model_and_meta(tiny_checkpoint):
    from hisd_edge.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint)
