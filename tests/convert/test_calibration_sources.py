"""Calibration sets: the recipe files under calibration/, and every kind of source through the shared preprocessing."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hisd_edge.convert import calibrate
from hisd_edge.errors import InputError
from hisd_edge.preprocess import Preprocessing, preprocess_batch

REPO = Path(__file__).resolve().parents[2]
SPEC = Preprocessing(input_size=(28, 28), channels=1, color_order="gray", mean=(0.1307,), std=(0.3081,))


def test_default_recipe_file_matches_the_built_in_default():
    recipe = calibrate.load_recipe(REPO / "calibration" / "default.json")
    built_in = calibrate.CalibrationRecipe()
    assert dataclasses.replace(recipe, name="default") == built_in
    for example in (REPO / "calibration").glob("*.example.json"):
        loaded = calibrate.load_recipe(example)  # every shipped definition parses
        assert Path(loaded.source).is_absolute()


def test_recipe_overrides_and_errors(tmp_path):
    assert calibrate.resolve_recipe(None).source == "default:train"
    assert calibrate.resolve_recipe("some/folder", count=8, method="minmax") == calibrate.CalibrationRecipe(
        source="some/folder", count=8, method="minmax", name="cli"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"source": "x", "colour": "blue"}))
    with pytest.raises(InputError, match="colour"):
        calibrate.load_recipe(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError):
        calibrate.load_recipe(bad)
    with pytest.raises(InputError):
        calibrate.CalibrationRecipe(method="kl")


def test_video_npz_and_folder_sources_use_the_shared_preprocessing(tmp_path):
    import cv2

    from hisd_edge.data import load_samples

    digits = load_samples("default:train", count=20).images
    frames = [cv2.cvtColor(cv2.resize(np.asarray(d), (56, 56)), cv2.COLOR_GRAY2BGR) for d in digits]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (56, 56))
    for frame in frames:
        writer.write(frame)
    writer.release()
    calib = calibrate.load_calibration_set(calibrate.CalibrationRecipe(source=str(video), count=5), SPEC)
    assert calib.inputs.shape == (5, 1, 28, 28) and calib.inputs.dtype == np.float32

    npz = tmp_path / "calib.npz"
    np.savez(npz, images=np.stack(digits))
    definition = tmp_path / "mine.json"
    definition.write_text(json.dumps({"source": "calib.npz", "count": 7, "method": "percentile"}))
    recipe = calibrate.resolve_recipe(str(definition))
    assert recipe.name == "mine" and recipe.method == "percentile"
    calib = calibrate.load_calibration_set(recipe, SPEC)
    assert calib.inputs.shape == (7, 1, 28, 28)
    # exactly what the runtime's preprocessing makes of the same images
    everything = calibrate.load_calibration_set(dataclasses.replace(recipe, count=20), SPEC)
    np.testing.assert_array_equal(everything.inputs, preprocess_batch(digits, SPEC))


def test_nan_inputs_are_refused(tmp_path):
    bad = np.zeros((3, 1, 28, 28), dtype=np.float32)
    bad[1, 0, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="NaN"):
        calibrate.load_calibration_set(calibrate.CalibrationRecipe(source=str(tmp_path / "nan.npy")), SPEC)


def test_calibration_batches_are_equal_sized():
    """ONNX Runtime's histogram calibrators fail on a short last batch: batches always divide the count."""
    assert calibrate.equal_batch_size(256) == 64
    assert calibrate.equal_batch_size(200) == 50
    assert calibrate.equal_batch_size(70) == 35
    assert calibrate.equal_batch_size(12) == 12
    assert calibrate.equal_batch_size(197) == 1
    reader = calibrate.ArrayReader("input", np.zeros((70, 1, 2, 2), np.float32))
    assert [len(batch["input"]) for batch in reader] == [35, 35]
