"""The ``fashion[:split]`` data source: the real package's splits, and every way its files can be bad.

The split tests read the real Fashion-MNIST files (CI installs dataset-fashion-mnist; elsewhere
they skip with the install command). The bad-file tests and the every-verb test use small IDX
files written here in the package's exact format, pointed at with $HISD_EDGE_FASHION_MNIST.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hisd_edge import data
from hisd_edge.errors import DependencyError, InputError

REAL = Path(data.FASHION_DEFAULT_DIR)
needs_package = pytest.mark.skipif(
    not (REAL / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"needs Fashion-MNIST: {data.FASHION_INSTALL}",
)


def write_idx_gz(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """An IDX file of unsigned bytes, gzip-compressed, as the package ships them."""
    magic = magic if magic is not None else (0x803 if array.ndim == 3 else 0x801)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_fashion(folder: Path, train_per_class: int = 24, test_per_class: int = 4) -> Path:
    """A small, learnable Fashion-MNIST look-alike: class c is a bright band at row 2c."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label + 4 : 2 * label + 8, 4:24] = 220
        write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


@pytest.fixture()
def fake_fashion(tmp_path, monkeypatch):
    folder = make_fashion(tmp_path / "fashion")
    monkeypatch.setenv(data.FASHION_DIR_ENV, str(folder))
    monkeypatch.setenv("HISD_EDGE_CACHE", str(tmp_path / "cache"))
    return folder


@needs_package
def test_real_splits_are_stratified_disjoint_and_the_official_test_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HISD_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(data.FASHION_DIR_ENV, raising=False)
    splits = {name: data.load_samples(f"fashion:{name}") for name in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [55_000, 5_000, 10_000]
    assert np.bincount(splits["val"].labels).tolist() == [500] * 10
    assert np.bincount(splits["train"].labels).tolist() == [5_500] * 10
    assert splits["test"].class_names == data.FASHION_CLASS_NAMES
    official_test = data.read_idx_gz(REAL / "t10k-images-idx3-ubyte.gz", 3)
    assert np.array_equal(np.stack(splits["test"].images), official_test)  # untouched, in order
    # train + val is the official training set, each image exactly once.
    official = data.read_idx_gz(REAL / "train-images-idx3-ubyte.gz", 3)
    both = np.concatenate([np.stack(splits["train"].images), np.stack(splits["val"].images)])
    order = np.lexsort(both.reshape(len(both), -1).T[::-1])
    reference = np.lexsort(official.reshape(len(official), -1).T[::-1])
    assert np.array_equal(both[order], official[reference])
    # Stable: a fresh cache gives the same validation split.
    monkeypatch.setenv("HISD_EDGE_CACHE", str(tmp_path / "cache2"))
    assert np.array_equal(data.load_samples("fashion:val").labels, splits["val"].labels)
    assert data.load_samples("fashion").names[0] == "fashion:test[0]"


def test_fake_package_layout_loads_with_a_seeded_split(fake_fashion):
    val = data.load_samples("fashion:val")
    train = data.load_samples("fashion:train")
    assert len(val) == 20 and np.bincount(val.labels).tolist() == [2] * 10  # 1/12 of 24 per class
    assert len(train) == 220 and len(data.load_samples("fashion:test")) == 40
    assert (
        data.load_samples("fashion:train", count=16, seed=1).names
        == data.load_samples("fashion:train", count=16, seed=1).names
    )
    with pytest.raises(InputError, match="no split 'holdout'"):
        data.load_samples("fashion:holdout")


def _cache_files(fake_fashion: Path) -> list:
    cache = Path(os.environ["HISD_EDGE_CACHE"])
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _corrupt_cases():
    def truncated(folder):
        raw = (folder / "train-images-idx3-ubyte.gz").read_bytes()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])

    def wrong_magic(folder):
        write_idx_gz(folder / "train-images-idx3-ubyte.gz", np.zeros((240, 28, 28), np.uint8), magic=0x801)

    def count_mismatch(folder):
        write_idx_gz(folder / "train-labels-idx1-ubyte.gz", np.zeros(239, np.uint8))

    def short_payload(folder):
        header = (0x803).to_bytes(4, "big") + (240).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(header + bytes(100 * 784))

    def trailing_data(folder):
        images = data.read_idx_gz(folder / "train-images-idx3-ubyte.gz", 3)
        header = (0x803).to_bytes(4, "big") + (239).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(header + images.tobytes())  # 240 images behind a header that says 239

    def not_gzip(folder):
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x08\x01" + bytes(40))

    def bad_crc(folder):
        raw = bytearray((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
        raw[-8] ^= 0xFF  # the gzip trailer's CRC-32
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(raw))

    def bad_label(folder):
        write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", np.full(40, 10, np.uint8))

    def wrong_image_size(folder):
        write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", np.zeros((40, 32, 32), np.uint8))

    return [
        (truncated, "train-images-idx3-ubyte.gz", "corrupt or truncated gzip"),
        (wrong_magic, "train-images-idx3-ubyte.gz", "magic 0x00000801"),
        (count_mismatch, "train-labels-idx1-ubyte.gz", "239 labels for the 240 images"),
        (short_payload, "train-images-idx3-ubyte.gz", "truncated: 78400 of the 188160 bytes"),
        (trailing_data, "train-images-idx3-ubyte.gz", "more data than the 239 items"),
        (not_gzip, "t10k-labels-idx1-ubyte.gz", "corrupt or truncated gzip"),
        (bad_crc, "t10k-labels-idx1-ubyte.gz", "corrupt or truncated gzip"),
        (bad_label, "t10k-labels-idx1-ubyte.gz", "label 10 is not one of"),
        (wrong_image_size, "t10k-images-idx3-ubyte.gz", "not N x 28 x 28"),
    ]


@pytest.mark.parametrize("damage, filename, needle", _corrupt_cases(), ids=[c[0].__name__ for c in _corrupt_cases()])
def test_a_corrupt_file_is_named_with_the_fix_and_leaves_no_cache(fake_fashion, damage, filename, needle):
    damage(fake_fashion)
    with pytest.raises(InputError) as caught:
        data.load_samples("fashion:val")
    message = str(caught.value)
    assert filename in message and needle in message and "apt-get install --reinstall" in message
    assert "\n" not in message
    assert _cache_files(fake_fashion) == []


def test_a_missing_file_says_how_to_install_the_package(fake_fashion):
    (fake_fashion / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(
        DependencyError, match=r"t10k-images-idx3-ubyte.gz: missing; .*apt-get install -y dataset-fashion"
    ):
        data.load_samples("fashion:train")
    assert _cache_files(fake_fashion) == []


def test_a_replaced_file_is_not_served_from_an_old_cache(fake_fashion):
    first = data.load_samples("fashion:test").labels.copy()
    labels = np.roll(first, 1).astype(np.uint8)
    write_idx_gz(fake_fashion / "t10k-labels-idx1-ubyte.gz", labels)
    os.utime(fake_fashion / "t10k-labels-idx1-ubyte.gz", ns=(1, 1))  # a different mtime, whatever the clock
    assert np.array_equal(data.load_samples("fashion:test").labels, labels)


def test_named_sources_are_not_paths():
    assert data.is_named_dataset("fashion:val") and data.is_named_dataset("fashion")
    assert data.is_named_dataset("default") and not data.is_named_dataset("fashionable/")
    assert not data.is_named_dataset("fashion_photos")


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "hisd_edge", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        timeout=600,
    )


def test_cli_names_the_bad_file_in_one_line(fake_fashion, tmp_path):
    (fake_fashion / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    proc = _cli("train", "--data", "fashion", "--arch", "tiny_cnn", "--out", "m.safetensors", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "train-labels-idx1-ubyte.gz" in lines[0] and "dataset-fashion-mnist" in lines[0]
    assert not (tmp_path / "m.safetensors").exists() and _cache_files(fake_fashion) == []


@pytest.mark.slow
def test_every_verb_that_takes_data_reads_fashion(fake_fashion, tmp_path):
    """train, convert (default and explicit --calib/--val), thresholds, bench, profile and run."""
    ckpt = tmp_path / "f.safetensors"
    common = ["--threads", "1"]
    proc = _cli("train", "--data", "fashion", "--arch", "tiny_cnn", "--epochs", "3", "--lr", "0.1",
                "--no-progress", "--json", "--out", str(ckpt), *common, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from hisd_edge.checkpoint import read_metadata

    meta = read_metadata(ckpt)
    assert meta["class_names"] == data.FASHION_CLASS_NAMES
    assert meta["metrics"]["val_split"] == "fashion:val" and meta["metrics"]["test_split"] == "fashion:test"
    assert meta["preprocessing"]["mean"] == [0.2860]
    # Convert with the checkpoint's own data (fashion:train calibration, fashion:val validation) ...
    bundle = tmp_path / "engines" / "f"
    proc = _cli("convert", str(ckpt), "--out", str(bundle), "--precision", "fp32,int8", "--calib-count", "32",
                cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fashion:val" in proc.stdout + proc.stderr
    # ... and with them named explicitly.
    proc = _cli("convert", str(ckpt), "--out", str(tmp_path / "engines" / "g"), "--precision", "fp32",
                "--calib", "fashion:train", "--val", "fashion:val", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli("thresholds", str(bundle), "--data", "fashion:val", "--method", "empirical", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli("bench", str(bundle), "--data", "fashion:test", "--calibrate-on", "fashion:val", "--seconds", "2",
                "--batch", "4", "--method", "empirical", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli("profile", str(bundle), "--data", "fashion:test", "--samples", "16", "--batch", "1",
                "--power", "none", "--warmup", "1", "--repeats", "3", "--energy-seconds", "0.1",
                "--energy-inferences", "2", "--idle-seconds", "0.1", "--overhead-pairs", "0",
                "--sweep-points", "5", "--no-progress", "--out", str(tmp_path / "report"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli("run", str(bundle), "fashion:test", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 40 and '"class_name": "' in records[0]


def test_the_fashion_calibration_recipe_names_the_source_not_a_path():
    from hisd_edge.convert import calibrate

    recipe = calibrate.load_recipe(Path(__file__).resolve().parents[1] / "calibration" / "fashion.json")
    assert recipe.source == "fashion:train" and recipe.count == 256
