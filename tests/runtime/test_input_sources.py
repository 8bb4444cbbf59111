"""Input sources for run: what each input string becomes, checked before any work."""

import numpy as np
import pytest

from hisd_edge.errors import HisdError, InputError
from hisd_edge.runtime.sources import batched, is_live_source, open_inputs


def test_live_source_detection():
    assert is_live_source("0") and is_live_source("/dev/video1") and is_live_source("rtsp://cam/stream")
    assert is_live_source("v4l2src ! videoconvert ! appsink")
    assert not is_live_source("images/") and not is_live_source("clip.mp4")


def test_files_folders_arrays_in_order(tmp_path, val_samples):
    import cv2

    (tmp_path / "a" / "b").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "a" / "x.png"), val_samples.images[0])
    cv2.imwrite(str(tmp_path / "a" / "b" / "y.png"), val_samples.images[1])
    (tmp_path / "a" / ".hidden").mkdir()
    cv2.imwrite(str(tmp_path / "a" / ".hidden" / "z.png"), val_samples.images[2])
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    np.save(tmp_path / "pre.npy", np.zeros((2, 1, 28, 28), np.float32))
    items = list(open_inputs([str(tmp_path / "a"), str(tmp_path / "pre.npy"), "default:val"]))
    names = [item.name for item in items]
    assert names[:2] == [str(tmp_path / "a" / "b" / "y.png"), str(tmp_path / "a" / "x.png")]
    assert items[2].tensor is not None and items[2].tensor.shape == (1, 28, 28)
    assert len(items) == 4 + len(val_samples) and items[4].label == int(val_samples.labels[0])
    assert [len(b) for b in batched(iter(items[:5]), 2)] == [2, 2, 1]


def test_everything_is_checked_before_the_first_item(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("?")
    for spec, message in (
        (str(tmp_path / "empty"), "no image files"),
        (str(tmp_path / "x.txt"), "unsupported file type"),
        (str(tmp_path / "missing.jpg"), "no such file"),
        ("96", "camera 96 cannot be opened"),
    ):
        with pytest.raises(HisdError, match=message):
            open_inputs(["default:val", spec])
    with pytest.raises(InputError, match="at least one input"):
        open_inputs([])
    with pytest.raises(InputError, match="--every"):
        open_inputs(["default:val"], every=0)


def test_broken_video_file(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="cannot be opened as a video"):
        open_inputs([str(path)])
