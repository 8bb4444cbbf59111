"""Inputs for ``hisd-edge run``: files, folders, videos, cameras, GStreamer pipelines, streams, arrays.

Each input string becomes a lazy stream of :class:`InputItem` (a raw image in OpenCV's convention,
or an already-preprocessed tensor, or an error for an item that cannot be read), so a camera or a
long video is processed frame by frame. Files, folders, .npy/.npz and the named datasets are read
through :mod:`hisd_edge.data`; live sources through OpenCV's ``VideoCapture``:

  ``0``, ``1``, ...                 camera index (V4L2 on Linux)
  ``/dev/video0``                   camera device path
  ``... ! appsink``                 a GStreamer pipeline (needs OpenCV built with GStreamer, as
                                    JetPack's is), e.g. ``nvarguscamerasrc ! nvvidconv !
                                    video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink``
  ``rtsp://...``, ``http://...``    network streams

Everything is opened (and checked) before the first item is produced, so a camera that cannot be
opened fails the command with one line before any work is done.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import numpy as np

from hisd_edge import data
from hisd_edge.errors import DependencyError, InputError


@dataclasses.dataclass
class InputItem:
    """One thing to classify: ``image`` (raw) or ``tensor`` (preprocessed C x H x W), or ``error``."""

    name: str
    image: Optional[np.ndarray] = None
    tensor: Optional[np.ndarray] = None
    label: Optional[int] = None
    error: Optional[str] = None


def _cv2() -> Any:
    return data.import_cv2("cameras, streams and videos")


def is_live_source(spec: str) -> bool:
    return spec.isdigit() or spec.startswith("/dev/video") or "!" in spec or "://" in spec


class _QuietOpenCV:
    """Silence OpenCV's own console warnings while probing a source: our error is the one line."""

    def __enter__(self) -> None:
        self._logging = None
        try:
            import cv2.utils.logging as cv_logging

            self._logging = cv_logging
            self._level = cv_logging.getLogLevel()
            cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)
        except (ImportError, AttributeError):
            pass

    def __exit__(self, *exc: Any) -> None:
        if self._logging is not None:
            self._logging.setLogLevel(self._level)


def open_capture(spec: str) -> Any:
    """An opened ``cv2.VideoCapture`` for a camera index/device, GStreamer pipeline or stream URL."""
    with _QuietOpenCV():
        return _open_capture(spec)


def _open_capture(spec: str) -> Any:
    cv2 = _cv2()
    if "!" in spec:
        info = cv2.getBuildInformation()
        gst_line = next((line for line in info.splitlines() if "GStreamer" in line), "")
        if "YES" not in gst_line:
            raise DependencyError(
                f"GStreamer pipeline {spec!r}: this OpenCV was built without GStreamer; use the system OpenCV "
                "(JetPack python3-opencv, or a venv with --system-site-packages)"
            )
        capture = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
        what = f"GStreamer pipeline {spec!r}"
        fix = "check the pipeline with gst-launch-1.0 and that it ends in appsink"
    elif spec.isdigit():
        capture = cv2.VideoCapture(int(spec))
        what = f"camera {spec}"
        fix = "check the index (ls /dev/video*), that it is connected and not in use by another program"
    else:
        capture = cv2.VideoCapture(spec)
        what = f"video source {spec!r}"
        fix = "check the device path or URL and that OpenCV supports it"
    if not capture.isOpened():
        capture.release()
        raise InputError(f"{what} cannot be opened; {fix}")
    try:
        data.check_frame_size(capture, what)  # before the first frame is decoded
    except InputError:
        capture.release()
        raise
    return capture


def _capture_items(capture: Any, label: str, max_frames: Optional[int], every: int) -> Iterator[InputItem]:
    index = 0
    produced = 0
    try:
        while max_frames is None or produced < max_frames:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if index % every == 0:
                yield InputItem(name=f"{label}#frame{index}", image=frame)
                produced += 1
            index += 1
    finally:
        capture.release()


def _file_items(paths: Sequence[Path], labels: Optional[Sequence[Optional[int]]] = None) -> Iterator[InputItem]:
    for i, path in enumerate(paths):
        label = labels[i] if labels is not None else None
        image = data.read_image(path)
        if image is None:
            yield InputItem(name=str(path), error="cannot be decoded as an image", label=label)
        else:
            yield InputItem(name=str(path), image=image, label=label)


def _folder_labels(folder: Path, files: Sequence[Path], class_names: Sequence[str]) -> Optional[List[Optional[int]]]:
    """Class index per file when the folder is labelled as ``thresholds`` reads it (one sub-folder per
    class, named as the model's classes); None when its sub-folders are not the model's classes."""
    firsts = [f.relative_to(folder).parts for f in files]
    if not class_names or any(len(parts) < 2 for parts in firsts):
        return None
    names = {parts[0] for parts in firsts}
    if not names <= set(class_names):
        return None
    return [list(class_names).index(parts[0]) for parts in firsts]


def _folder_files(folder: Path) -> List[Path]:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in data.IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise InputError(f"{folder}: no image files ({', '.join(data.IMAGE_EXTENSIONS)}) in it or its sub-folders")
    return files


def _samples_items(samples: data.Samples) -> Iterator[InputItem]:
    labels = samples.labels
    if samples.preprocessed is not None:
        for i, name in enumerate(samples.names):
            yield InputItem(name=name, tensor=samples.preprocessed[i], label=None if labels is None else int(labels[i]))
    else:
        for i, name in enumerate(samples.names):
            yield InputItem(name=name, image=samples.images[i], label=None if labels is None else int(labels[i]))


RUN_SOURCES = "images, a folder, a video, a camera index, a GStreamer pipeline (with '!'), a .npy/.npz, 'default[:split]' or 'fashion[:split]'"


def open_inputs(
    specs: Sequence[str],
    max_frames: Optional[int] = None,
    every: int = 1,
    class_names: Optional[Sequence[str]] = None,
) -> Iterator[InputItem]:
    """Check and open every input now; return one stream of items over all of them, in order.

    ``max_frames`` caps the frames taken from each video/camera/stream; ``every`` keeps every
    n-th frame. With the model's ``class_names``, a folder whose sub-folders are named after them
    labels its images (as ``hisd-edge thresholds`` reads it), so a run can report its accuracy.
    """
    if not specs:
        raise InputError("give at least one input: image files, folders, a video, a camera index, a pipeline or a .npy")
    if every < 1:
        raise InputError(f"--every must be >= 1, got {every}")
    makers: List[Callable[[], Iterator[InputItem]]] = []
    for spec in specs:
        if is_live_source(spec) and not Path(spec).is_file():
            capture = open_capture(spec)
            makers.append(functools.partial(_capture_items, capture, spec, max_frames, every))
            continue
        kind = data.source_kind(spec, accepted=RUN_SOURCES)
        path = Path(spec)
        if kind in data.NAMED_DATASETS:  # default[:split], fashion[:split]
            makers.append(functools.partial(_samples_items, data.load_samples(spec)))
        elif kind == "folder":  # every image under it, decoded one at a time as the run reaches it
            files = _folder_files(path)
            makers.append(functools.partial(_file_items, files, _folder_labels(path, files, class_names or [])))
        elif kind == "numpy":
            makers.append(functools.partial(_samples_items, data.numpy_file(path)))
        elif kind == "video":  # frame by frame, not all frames in memory as data.video_frames does
            capture = data.open_video(path)  # quiet, and its frame size checked before the first frame
            makers.append(functools.partial(_capture_items, capture, str(path), max_frames, every))
        else:
            makers.append(functools.partial(_file_items, [path]))

    def chained() -> Iterator[InputItem]:
        for make in makers:
            yield from make()

    return chained()


def batched(items: Iterator[InputItem], size: int) -> Iterator[List[InputItem]]:
    batch: List[InputItem] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
