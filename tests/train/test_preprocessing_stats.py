"""Training on an image folder stores mean/std on the documented 0..1 scale (what DeepStream or C++ copy)."""

import numpy as np
from PIL import Image

from hisd_edge.data import load_samples
from hisd_edge.train.trainer import _preprocessing_for


def _folder(root, mode, seed=0):
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            shape = (28, 28) if mode == "L" else (28, 28, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            if mode == "RGB":  # give each channel its own level, so channel order errors show
                pixels[..., 0] //= 4
                pixels[..., 2] = 255 - pixels[..., 2] // 8
            Image.fromarray(pixels, mode).save(root / cls / f"{i}.png")
    return root


def _independent_stats(root, mode):
    """Per-channel mean and std of every pixel on the 0..1 scale, read with PIL and plain numpy."""
    images = [np.asarray(Image.open(p).convert(mode), dtype=np.float64) / 255.0 for p in sorted(root.rglob("*.png"))]
    x = np.stack(images)
    if mode == "L":
        return [x.mean()], [x.std()]
    return x.mean(axis=(0, 1, 2)).tolist(), x.std(axis=(0, 1, 2)).tolist()


def test_gray_folder_mean_std_on_the_0_1_scale(tmp_path):
    root = _folder(tmp_path / "gray", "L")
    spec = _preprocessing_for(
        {"config": {"in_channels": 1, "input_size": (28, 28)}}, load_samples(str(root)), str(root)
    )
    mean, std = _independent_stats(root, "L")
    np.testing.assert_allclose(spec.mean, mean, rtol=1e-4)
    np.testing.assert_allclose(spec.std, std, rtol=1e-4)
    assert 0.3 < spec.mean[0] < 0.7  # uniform pixels: about 0.5 on the 0..1 scale, not 0.002


def test_rgb_folder_mean_std_per_channel_in_rgb_order(tmp_path):
    root = _folder(tmp_path / "rgb", "RGB")
    spec = _preprocessing_for(
        {"config": {"in_channels": 3, "input_size": (28, 28)}}, load_samples(str(root)), str(root)
    )
    mean, std = _independent_stats(root, "RGB")
    assert spec.color_order == "rgb"
    np.testing.assert_allclose(spec.mean, mean, rtol=1e-4)
    np.testing.assert_allclose(spec.std, std, rtol=1e-4)
