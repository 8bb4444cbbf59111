import cv2
import numpy as np
import pytest

from hisd_edge.data import DEFAULT_SPLITS, default_split, load_samples
from hisd_edge.errors import InputError
from hisd_edge.preprocess import Preprocessing

GRAY = Preprocessing(input_size=(28, 28), channels=1, color_order="gray", mean=(0.5,), std=(0.25,))


def test_default_splits_are_stratified_disjoint_and_stable():
    splits = {name: default_split(name) for name in DEFAULT_SPLITS}
    assert [len(splits[s]) for s in DEFAULT_SPLITS] == [3500, 500, 1000]
    for s in splits.values():
        assert set(np.bincount(s.labels).tolist()) == {len(s) // 10}
    flat = {name: {img.tobytes() for img in s.images} for name, s in splits.items()}
    # Real MNIST has a few duplicate digits; the splits must be (almost) disjoint.
    assert len(flat["train"] & flat["test"]) <= 2
    again = default_split("test")
    assert np.array_equal(again.labels, splits["test"].labels)


def test_unknown_split():
    with pytest.raises(InputError, match="no split"):
        load_samples("default:holdout")


def _write_class_folder(root, per_class=3):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((20, 24, 3), 40 * i + (100 if cls == "dog" else 0), np.uint8)
            cv2.imwrite(str(root / cls / f"{i}.png"), img)


def test_labelled_folder_and_undecodable_images(tmp_path):
    _write_class_folder(tmp_path)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not an image")
    samples = load_samples(str(tmp_path))
    assert samples.class_names == ["cat", "dog"]
    assert len(samples) == 6 and samples.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert samples.skipped and "broken.jpg" in samples.skipped[0][0]
    assert samples.tensors(GRAY).shape == (6, 1, 28, 28)
    with pytest.raises(InputError, match="broken.jpg"):
        load_samples(str(tmp_path), strict=True)


def test_empty_and_classless_folders(tmp_path):
    with pytest.raises(InputError, match="no image files"):
        load_samples(str(tmp_path))
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="class folders hold no image"):
        load_samples(str(tmp_path))


def test_missing_path_and_unknown_type(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_samples(str(tmp_path / "nope"))
    odd = tmp_path / "x.txt"
    odd.write_text("x")
    with pytest.raises(InputError, match="unsupported file type"):
        load_samples(str(odd))


def test_numpy_sources(tmp_path):
    raw = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", raw)
    assert load_samples(str(tmp_path / "raw.npy")).tensors(GRAY).shape == (4, 1, 28, 28)
    np.savez(tmp_path / "lab.npz", images=raw, labels=np.arange(4))
    assert load_samples(str(tmp_path / "lab.npz")).labels.tolist() == [0, 1, 2, 3]
    pre = np.zeros((3, 1, 28, 28), np.float32)
    np.save(tmp_path / "pre.npy", pre)
    assert load_samples(str(tmp_path / "pre.npy")).tensors(GRAY) is not None
    np.save(tmp_path / "two.npy", np.zeros((2, 28, 28, 2), np.uint8))
    with pytest.raises(InputError, match="channel count"):
        load_samples(str(tmp_path / "two.npy")).tensors(GRAY)


def test_video_frames_sampled_evenly(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(20):
        writer.write(np.full((24, 32, 3), i * 10, np.uint8))
    writer.release()
    samples = load_samples(str(path), count=5)
    assert len(samples) == 5
    assert samples.names[0].endswith("#frame0") and samples.names[-1].endswith("#frame19")
    with pytest.raises(InputError, match="cannot be opened as a video"):
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"garbage")
        load_samples(str(bad))


def test_count_subsets_deterministically():
    a = load_samples("default:val", count=50, seed=3)
    b = load_samples("default:val", count=50, seed=3)
    assert len(a) == 50 and np.array_equal(a.labels, b.labels)


def test_folder_labels_are_mapped_to_the_model_class_order(tmp_path):
    for cls in ("7", "3"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "a.png"), np.zeros((28, 28), np.uint8))
    samples = load_samples(str(tmp_path))
    assert samples.labels.tolist() == [0, 1]  # folders "3", "7" in alphabetical order
    assert samples.labels_for([str(d) for d in range(10)]).tolist() == [3, 7]
    with pytest.raises(InputError, match="not among the model's classes"):
        samples.labels_for(["cat", "dog"], "val/")


def test_npz_labels_are_class_indices_and_must_match_images(tmp_path):
    np.savez(tmp_path / "ok.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.array([2, 0, 9]))
    samples = load_samples(str(tmp_path / "ok.npz"))
    assert samples.class_names is None and samples.labels_for([str(d) for d in range(10)]).tolist() == [2, 0, 9]
    with pytest.raises(InputError, match="labels go up to 9"):
        samples.labels_for(["a", "b"])
    np.savez(tmp_path / "bad.npz", images=np.zeros((10, 28, 28), np.uint8), labels=np.arange(5))
    with pytest.raises(InputError, match="5 labels for 10 images"):
        load_samples(str(tmp_path / "bad.npz"))


def test_count_on_a_folder_decodes_only_the_chosen_files(tmp_path, monkeypatch):
    _write_class_folder(tmp_path, per_class=4)
    import hisd_edge.data as data

    decoded = []
    real = data.read_image
    monkeypatch.setattr(data, "read_image", lambda p: decoded.append(p) or real(p))
    samples = load_samples(str(tmp_path), count=3, seed=1)
    assert len(samples) == 3 and len(decoded) == 3  # of 8 files
    assert samples.names == load_samples(str(tmp_path), count=3, seed=1).names
    with pytest.raises(InputError, match="positive"):
        load_samples(str(tmp_path), count=0)


def test_one_dispatch_names_the_reader_of_every_source(tmp_path):
    from hisd_edge.data import source_kind

    (tmp_path / "clip.MP4").write_bytes(b"x")
    (tmp_path / "img.PNG").write_bytes(b"x")
    np.save(tmp_path / "a.npy", np.zeros((1, 2, 2)))
    assert source_kind("default") == source_kind("default:val") == "default"
    assert source_kind(str(tmp_path)) == "folder"
    assert source_kind(str(tmp_path / "clip.MP4")) == "video"
    assert source_kind(str(tmp_path / "img.PNG")) == "image"
    assert source_kind(str(tmp_path / "a.npy")) == "numpy"
    with pytest.raises(InputError, match=r"nope: no such file or directory; give a camera"):
        source_kind(str(tmp_path / "nope"), accepted="a camera")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match=r"unsupported file type '\.txt'; give an image folder"):
        source_kind(str(tmp_path / "x.txt"))


def test_run_inputs_and_load_samples_read_a_source_alike(tmp_path):
    """hisd-edge run's inputs go through the same dispatch: the same .npz, the same items."""
    from hisd_edge.runtime.sources import open_inputs

    images = np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=images, labels=np.array([4, 1, 7]))
    samples = load_samples(str(tmp_path / "s.npz"))
    items = list(open_inputs([str(tmp_path / "s.npz")]))
    assert [i.name for i in items] == samples.names
    assert [i.label for i in items] == [4, 1, 7]
    for item, image in zip(items, images):
        np.testing.assert_array_equal(item.image, image)
