"""Image preprocessing, described once and applied identically everywhere.

The checkpoint records a :class:`Preprocessing`; the converter copies it into the bundle manifest;
training, calibration, validation and the runtime all call :func:`preprocess_batch` with it, so
calibration sees exactly what inference sees. Only numpy is needed unless an image must be
resized (then OpenCV, imported lazily, as on a Jetson it comes from JetPack).

Images arrive in OpenCV's convention: ``HxW`` (gray), ``HxWx3`` (BGR) or ``HxWx4`` (BGRA), uint8
(0..255) or float already on the 0..255 scale.

Input scale: a float array on another scale is the classic silent failure (0..1 floats read as
0..255 pixels gave the default model 12 % accuracy, every input at exit 0). So float images are
checked (``input_scale="auto"``): values in 0..1, or clearly negative ones (already normalised),
are refused with one line naming the expected range; ``input_scale`` says how to convert instead:
``"0-255"`` (take as is), ``"0-1"`` (times 255), ``"normalized"`` (already the network's input:
C x H x W or H x W x C in the model's channel order, normalised with the manifest's mean/std).
Integer images are pixels and are never rescaled. Arrays already in the network's layout (float32
N x C x H x W) are checked against the normalised range the manifest's mean/std give
(:func:`prepare_tensors`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.errors import InputError


class InputScaleError(InputError):
    """An array whose values contradict the pixel scale the model expects (refuses the whole input)."""


COLOR_ORDERS = ("gray", "rgb", "bgr")
INPUT_SCALES = ("auto", "0-255", "0-1", "normalized")
RESIZE_MODES = ("stretch", "shorter_side_crop")
# The intermediate image of a shorter-side resize may be larger than the input; a very elongated
# image would make it huge (a 1 x 30,000,000 strip scaled to 224 on its short side).
MAX_RESIZE_PIXELS = 1 << 26
# ITU-R BT.601 luma, the weights OpenCV's BGR2GRAY uses.
_LUMA_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How raw images become the network's input tensor (NCHW, float32).

    ``mean``/``std`` are per channel on the 0..1 scale, in the model's channel order.
    ``resize="shorter_side_crop"`` scales the shorter side to ``resize_to`` then centre-crops to
    ``input_size``; ``"stretch"`` resizes straight to ``input_size``.
    """

    input_size: Tuple[int, int]  # (height, width)
    channels: int
    color_order: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    resize: str = "stretch"
    resize_to: Optional[int] = None
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        from hisd_edge import schemas

        # Types and ranges (sizes within sane limits) from the published schema; then agreement.
        schemas.validate(
            self.to_dict(),
            schemas.PREPROCESSING,
            what="preprocessing",
            fix="see hisd_edge/schemas/preprocessing-v1.schema.json",
        )
        expected = 1 if self.color_order == "gray" else 3
        if self.channels != expected:
            raise InputError(
                f"preprocessing says {self.channels} channels but color_order {self.color_order!r} has {expected}"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise InputError("preprocessing mean/std must have one value per channel")

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of one preprocessed sample."""
        return (self.channels, self.input_size[0], self.input_size[1])

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Preprocessing:
        """From a record (checkpoint metadata, manifest, ``--preprocessing``), checked against the schema."""
        from hisd_edge import schemas

        schemas.validate(
            data,
            schemas.PREPROCESSING,
            what="preprocessing",
            fix="see hisd_edge/schemas/preprocessing-v1.schema.json",
        )
        try:
            return cls(
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                channels=int(data["channels"]),
                color_order=str(data["color_order"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                resize=str(data.get("resize", "stretch")),
                resize_to=None if data.get("resize_to") is None else int(data["resize_to"]),
                layout=str(data.get("layout", "NCHW")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"preprocessing description is incomplete or malformed ({exc!r})") from None


def _to_model_channels(image: np.ndarray, spec: Preprocessing, name: str) -> np.ndarray:
    """Return HxWxC float32 in the model's channel order, 0..255 scale."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        gray = img.astype(np.float32)
        if spec.channels == 1:
            return gray[:, :, None]
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        shape = "x".join(str(s) for s in img.shape)
        raise InputError(
            f"{name}: image of shape {shape} has an unsupported channel count; "
            "give a gray (HxW), BGR (HxWx3) or BGRA (HxWx4) image"
        )
    bgr = img[:, :, :3].astype(np.float32)
    if spec.color_order == "gray":
        return (bgr @ _LUMA_BGR)[:, :, None]
    if spec.color_order == "rgb":
        return bgr[:, :, ::-1]
    return bgr


def _resize(image: np.ndarray, spec: Preprocessing, name: str = "image") -> np.ndarray:
    height, width = spec.input_size
    if image.shape[:2] == (height, width):
        return image
    if min(image.shape[:2]) < 1:
        raise InputError(f"{name}: image of shape {image.shape[0]}x{image.shape[1]} has no pixels")
    from hisd_edge.data import import_cv2

    cv2 = import_cv2("resizing images")
    channels = image.shape[2]
    if spec.resize == "shorter_side_crop":
        target = spec.resize_to or min(height, width)
        scale = target / min(image.shape[0], image.shape[1])
        new_h = max(height, round(image.shape[0] * scale))
        new_w = max(width, round(image.shape[1] * scale))
        if new_h * new_w > MAX_RESIZE_PIXELS:
            raise InputError(
                f"{name}: a {image.shape[1]}x{image.shape[0]} image is too elongated to scale its shorter side to "
                f"{target} ({new_w}x{new_h}); crop it to a less extreme aspect ratio first"
            )
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        top = (new_h - height) // 2
        left = (new_w - width) // 2
        image = image[top : top + height, left : left + width]
    else:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image.reshape(height, width, channels)


def check_input_scale(input_scale: str) -> str:
    if input_scale not in INPUT_SCALES:
        raise InputError(f"--input-scale {input_scale!r} is not one of {', '.join(INPUT_SCALES)}")
    return input_scale


def _finite_range(array: np.ndarray) -> Tuple[float, float]:
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def normalised_range(spec: Preprocessing) -> Tuple[float, float]:
    """Lowest and highest value a correctly preprocessed input can hold (over the channels)."""
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    return float(((0.0 - mean) / std).min()), float(((1.0 - mean) / std).max())


def _to_pixel_scale(image: np.ndarray, input_scale: str, name: str) -> np.ndarray:
    """A float image on the 0..255 scale, or a one-line refusal when its values contradict it."""
    if not np.issubdtype(image.dtype, np.floating) or input_scale == "0-255":
        return image
    if input_scale == "0-1":
        return image.astype(np.float32) * 255.0
    low, high = _finite_range(image)
    if low < -0.01:  # no pixel is negative; a little float noise is tolerated
        raise InputScaleError(
            f"{name}: float pixels go down to {low:.3g}, but the model expects raw pixels 0..255 "
            "(it normalises them itself); if the data is already normalised pass --input-scale normalized"
        )
    if 0.0 < high <= 1.0:
        raise InputScaleError(
            f"{name}: float pixels lie in 0..1 (max {high:.3g}), but the model expects raw pixels 0..255; "
            "pass --input-scale 0-1 to scale them (or --input-scale 0-255 if they really are that dark)"
        )
    return image


def _normalised_input(image: np.ndarray, spec: Preprocessing, name: str) -> np.ndarray:
    """An already-normalised image (C x H x W or H x W x C) as the network's (C, H, W) input."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim == 3 and img.shape[0] != spec.channels and img.shape[2] == spec.channels:
        img = img.transpose(2, 0, 1)
    if tuple(img.shape) != spec.input_shape:
        raise InputError(
            f"{name}: normalised input of shape {tuple(img.shape)} does not fit the model's {spec.input_shape}; "
            "give raw pixels instead (they are resized)"
        )
    return np.ascontiguousarray(img)


def preprocess_image(
    image: np.ndarray, spec: Preprocessing, name: str = "image", input_scale: str = "auto"
) -> np.ndarray:
    """One raw image -> (C, H, W) float32, normalised as the model expects (see ``input_scale`` above)."""
    if input_scale == "normalized":
        return _normalised_input(image, spec, name)
    img = _to_pixel_scale(np.asarray(image), input_scale, name)
    img = _to_model_channels(img, spec, name)
    img = _resize(img, spec, name)
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    std = np.asarray(spec.std, dtype=np.float32) * 255.0
    out = (img - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(
    images: Iterable[np.ndarray],
    spec: Preprocessing,
    names: Optional[Sequence[str]] = None,
    input_scale: str = "auto",
) -> np.ndarray:
    """Raw images (a sequence, or an N x H x W[xC] array) -> (N, C, H, W) float32."""
    check_input_scale(input_scale)
    out = [
        preprocess_image(img, spec, names[i] if names else f"image {i}", input_scale) for i, img in enumerate(images)
    ]
    if not out:
        return np.zeros((0, *spec.input_shape), dtype=np.float32)
    return np.stack(out)


def prepare_tensors(tensors: np.ndarray, spec: Preprocessing, name: str, input_scale: str = "auto") -> np.ndarray:
    """Arrays already in the network's layout (N x C x H x W float32) as model inputs.

    By default (``auto``, ``normalized``) they are taken as normalised, and refused when their
    values lie far outside the range the manifest's mean/std allow (raw 0..255 pixels stored as
    N x C x H x W); ``0-255`` / ``0-1`` say they are raw pixels in that layout, to be normalised.
    """
    check_input_scale(input_scale)
    if input_scale in ("0-255", "0-1"):
        pixels = np.asarray(tensors).transpose(0, 2, 3, 1)
        if spec.channels == 3 and spec.color_order == "rgb":
            pixels = pixels[..., ::-1]  # preprocess_image takes OpenCV's BGR order
        return preprocess_batch(list(pixels), spec, [f"{name}[{i}]" for i in range(len(pixels))], input_scale)
    if input_scale == "auto" and len(tensors):
        low, high = _finite_range(np.asarray(tensors))
        lo, hi = normalised_range(spec)
        slack = 0.5 * (hi - lo)
        if high > hi + slack or low < lo - slack:
            raise InputScaleError(
                f"{name}: values {low:.3g}..{high:.3g} lie far outside the normalised range {lo:.3g}..{hi:.3g} the model "
                "expects in an N x C x H x W float32 array; for raw pixels in that layout pass --input-scale 0-255 (or 0-1)"
            )
    return tensors
