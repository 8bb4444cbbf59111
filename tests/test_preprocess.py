import numpy as np
import pytest

from hisd_edge.errors import InputError
from hisd_edge.preprocess import Preprocessing, preprocess_batch, preprocess_image

GRAY = Preprocessing(input_size=(28, 28), channels=1, color_order="gray", mean=(0.5,), std=(0.25,))
RGB = Preprocessing(input_size=(8, 8), channels=3, color_order="rgb", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_gray_normalisation_exact():
    img = np.full((28, 28), 255, dtype=np.uint8)
    out = preprocess_image(img, GRAY)
    assert out.shape == (1, 28, 28) and out.dtype == np.float32
    np.testing.assert_allclose(out, (1.0 - 0.5) / 0.25)


def test_bgr_to_rgb_order_and_gray_to_rgb():
    bgr = np.zeros((8, 8, 3), dtype=np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    out = preprocess_image(bgr, RGB) * 255.0
    np.testing.assert_allclose(out[0], 200, atol=1e-3)  # R first
    np.testing.assert_allclose(out[2], 10, atol=1e-3)
    gray = preprocess_image(np.full((8, 8), 7, np.uint8), RGB) * 255.0
    np.testing.assert_allclose(gray, 7, atol=1e-3)


def test_bgra_drops_alpha_and_bgr_to_gray_uses_luma():
    bgra = np.zeros((28, 28, 4), dtype=np.uint8)
    bgra[..., 1] = 100
    bgra[..., 3] = 255
    out = preprocess_image(bgra, GRAY)
    expected = (0.587 * 100 / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(InputError, match="channel count"):
        preprocess_image(np.zeros((28, 28, 2), np.uint8), GRAY, name="two.png")


def test_resize_modes():
    img = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    out = preprocess_image(img, RGB)
    assert out.shape == (3, 8, 8)
    crop = Preprocessing(
        input_size=(8, 8),
        channels=3,
        color_order="bgr",
        mean=(0,) * 3,
        std=(1,) * 3,
        resize="shorter_side_crop",
        resize_to=10,
    )
    assert preprocess_image(img, crop).shape == (3, 8, 8)


def test_batch_and_dict_round_trip():
    imgs = np.zeros((5, 28, 28), np.uint8)
    assert preprocess_batch(imgs, GRAY).shape == (5, 1, 28, 28)
    assert preprocess_batch([], GRAY).shape == (0, 1, 28, 28)
    assert Preprocessing.from_dict(GRAY.to_dict()) == GRAY
    crop = _crop_spec((20, 20), 24)
    assert Preprocessing.from_dict(crop.to_dict()) == crop  # every field survives the manifest


@pytest.mark.parametrize(
    "bad",
    [
        {"color_order": "hsv"},
        {"channels": 3},
        {"mean": (0.1, 0.2)},
        {"resize": "zoom"},
    ],
)
def test_invalid_specs_rejected(bad):
    args = {"input_size": (28, 28), "channels": 1, "color_order": "gray", "mean": (0.5,), "std": (0.25,)}
    args.update(bad)
    with pytest.raises(InputError):
        Preprocessing(**args)
    with pytest.raises(InputError):
        Preprocessing.from_dict({"input_size": [28]})


def _crop_spec(size, resize_to):
    return Preprocessing(
        input_size=size,
        channels=1,
        color_order="gray",
        mean=(0.0,),
        std=(1.0 / 255.0,),  # output = pixel value, so the test reads pixels back
        resize="shorter_side_crop",
        resize_to=resize_to,
    )


def test_shorter_side_crop_keeps_the_centre_of_a_wide_image():
    columns = np.arange(60, dtype=np.uint8) * 4  # every column has its own value
    image = np.tile(columns, (40, 1))  # 40 x 60, already at the target scale
    out = preprocess_image(image, _crop_spec((40, 40), 40))[0]
    np.testing.assert_array_equal(out, np.tile(columns[10:50], (40, 1)).astype(np.float32))


def test_shorter_side_crop_keeps_the_centre_of_a_tall_image():
    rows = np.arange(60, dtype=np.uint8) * 4
    image = np.tile(rows[:, None], (1, 40))  # 60 x 40
    out = preprocess_image(image, _crop_spec((40, 40), 40))[0]
    np.testing.assert_array_equal(out, np.tile(rows[10:50, None], (1, 40)).astype(np.float32))


def test_shorter_side_crop_scales_then_crops_the_centre():
    image = np.zeros((80, 160), np.uint8)
    image[:, 60:100] = 255  # a bright band in the middle fifth
    out = preprocess_image(image, _crop_spec((20, 20), 20))[0]  # 80x160 -> 20x40 -> centre 20x20
    # The band (original columns 60..99) lands on scaled columns 15..24, i.e. crop columns 5..14.
    assert out[:, 6:14].min() > 250 and out[:, :4].max() < 5 and out[:, 16:].max() < 5
