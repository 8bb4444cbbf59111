"""Input scale: arrays on another scale than the 0..255 pixels the manifest expects are refused or converted."""

import numpy as np
import pytest

from hisd_edge.errors import InputError
from hisd_edge.preprocess import (
    InputScaleError,
    Preprocessing,
    normalised_range,
    prepare_tensors,
    preprocess_batch,
    preprocess_image,
)

SPEC = Preprocessing(input_size=(28, 28), channels=1, color_order="gray", mean=(0.1307,), std=(0.3081,))
RGB = Preprocessing(input_size=(4, 4), channels=3, color_order="rgb", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))


def digits(count=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28)).astype(np.float32)


def test_float_pixels_in_0_1_are_refused_with_the_expected_range():
    with pytest.raises(InputScaleError, match=r"lie in 0\.\.1.*expects raw pixels 0\.\.255.*--input-scale 0-1"):
        preprocess_image(digits()[0] / 255.0, SPEC, "x.npy[0]")


def test_normalised_pixels_are_refused():
    normed = (digits()[0] / 255.0 - 0.1307) / 0.3081
    with pytest.raises(InputScaleError, match=r"go down to -0\.424.*--input-scale normalized"):
        preprocess_image(normed, SPEC, "x.npy[0]")


def test_each_scale_converts_to_the_same_input():
    raw = digits()
    expected = preprocess_batch(list(raw), SPEC)
    np.testing.assert_allclose(preprocess_batch(list(raw / 255.0), SPEC, input_scale="0-1"), expected, atol=1e-5)
    normed = (raw / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(preprocess_batch(list(normed), SPEC, input_scale="normalized"), expected, atol=1e-5)
    np.testing.assert_allclose(
        preprocess_batch(list(normed[:, None]), SPEC, input_scale="normalized"), expected, atol=1e-5
    )
    dark = raw / 255.0  # a really dark 0..255 image: the user says so
    np.testing.assert_allclose(
        preprocess_batch(list(dark), SPEC, input_scale="0-255")[0, 0], (dark[0] / 255 - 0.1307) / 0.3081, atol=1e-5
    )


def test_integer_images_and_blank_frames_are_never_refused():
    preprocess_image(np.zeros((28, 28), np.uint8), SPEC)
    preprocess_image(np.zeros((28, 28), np.float32), SPEC)  # black: the same on every scale
    preprocess_image(np.full((28, 28), 255.0, np.float32), SPEC)
    with np.errstate(invalid="ignore"):
        img = digits()[0]
        img[0, 0] = np.nan
        preprocess_image(img, SPEC)  # NaN is flagged by the runtime, not a scale question


def test_preprocessed_arrays_outside_the_normalised_range_are_refused_or_converted():
    lo, hi = normalised_range(SPEC)
    assert lo == pytest.approx(-0.4242, abs=1e-3) and hi == pytest.approx(2.8215, abs=1e-3)
    raw_nchw = digits()[:, None]
    with pytest.raises(InputScaleError, match=r"normalised range -0\.424\.\.2\.82.*--input-scale 0-255"):
        prepare_tensors(raw_nchw, SPEC, "raw.npy")
    expected = preprocess_batch(list(digits()), SPEC)
    np.testing.assert_allclose(prepare_tensors(raw_nchw, SPEC, "raw.npy", "0-255"), expected, atol=1e-5)
    np.testing.assert_allclose(prepare_tensors(raw_nchw / 255.0, SPEC, "raw.npy", "0-1"), expected, atol=1e-5)
    assert prepare_tensors(expected, SPEC, "ok.npy") is expected
    rgb = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4)).astype(np.float32)  # RGB order, NCHW
    want = np.stack([preprocess_image(img.transpose(1, 2, 0)[..., ::-1], RGB) for img in rgb])  # as BGR images
    np.testing.assert_allclose(prepare_tensors(rgb, RGB, "rgb.npy", "0-255"), want, atol=1e-5)


def test_unknown_scale():
    with pytest.raises(InputError, match="--input-scale 'percent' is not one of"):
        preprocess_batch([digits()[0]], SPEC, input_scale="percent")
