import json
import os
import subprocess
import sys

import cv2  # CI installs OpenCV: a broken one must fail here, not skip
import numpy as np
import pytest
import torch

from hisd_edge.checkpoint import load_checkpoint, read_metadata
from hisd_edge.train import TrainConfig, train


def test_training_is_deterministic_and_learns(tmp_path, tiny_checkpoint, tiny_train_config):
    config, argv = tiny_train_config
    second = tmp_path / "again.safetensors"
    train(config, second, argv=argv)
    a, meta = load_checkpoint(tiny_checkpoint)
    b, _ = load_checkpoint(second)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    # Three epochs of the tiny model are far above chance (10%) at the final exit.
    assert meta["metrics"]["val_accuracy"][-1] > 0.8
    assert meta["training"]["command"] == "hisd-edge train " + " ".join(argv)
    assert meta["training"]["config"]["distill"] == "hisd"
    assert meta["preprocessing"]["mean"] == [0.1307]


def test_dedicated_single_exit_model():
    result = train(TrainConfig(arch="tiny_cnn", epochs=1, seed=0, single_exit=0, progress=False), None)
    assert len(result.val_accuracy) == 1 and len(result.test_accuracy) == 1


def _image_folder(root, classes=("a", "b"), per_class=6, channels=3):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (28, 28, 3) if channels == 3 else (28, 28)
            img = rng.integers(0, 60, shape, dtype=np.uint8) + (150 if c else 0)
            cv2.imwrite(str(root / name / f"{i}.png"), img)
    return root


def test_trains_on_a_user_image_folder(tmp_path):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "m.safetensors"
    train(TrainConfig(arch="tiny_cnn", data=str(data), epochs=2, seed=0, progress=False), out, argv=[])
    meta = read_metadata(out)
    assert meta["class_names"] == ["a", "b"]
    assert meta["arch"]["config"]["num_classes"] == 2
    assert len(meta["preprocessing"]["mean"]) == 1  # tiny_cnn is a gray model: images converted


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "hisd_edge", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--arch", "resnet9000", "--out", "x.safetensors"], "unknown architecture"),
        (["--data", "/nonexistent/folder", "--arch", "tiny_cnn", "--out", "x.safetensors"], "no such file"),
        (["--arch", "tiny_cnn"], "--out is required"),
        (["--arch", "tiny_cnn", "--out", "model.pt"], "safetensors"),
        (["--arch", "tiny_cnn", "--out", "x.safetensors", "--exit-weights", "1,a"], "comma-separated"),
    ],
)
def test_train_cli_bad_input_is_one_line(tmp_path, args, needle):
    proc = _cli("train", "--no-progress", *args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not any(p.suffix == ".safetensors" for p in tmp_path.iterdir())


def test_train_cli_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli("train", "--arch", "tiny_cnn", "--data", str(empty), "--out", str(tmp_path / "m.safetensors"))
    assert proc.returncode == 2 and "no image files" in proc.stderr
    single = _image_folder(tmp_path / "one", classes=("only",))
    proc = _cli("train", "--arch", "tiny_cnn", "--data", str(single), "--out", str(tmp_path / "m.safetensors"))
    assert proc.returncode == 2 and "at least 2" in proc.stderr
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "x.png"), np.zeros((8, 8), np.uint8))
    proc = _cli("train", "--arch", "tiny_cnn", "--data", str(flat), "--out", str(tmp_path / "m.safetensors"))
    assert proc.returncode == 2 and "labels" in proc.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_train_cli_wrong_channel_count(tmp_path):
    np.savez(tmp_path / "two.npz", images=np.zeros((20, 28, 28, 2), np.uint8), labels=np.arange(20) % 2)
    proc = _cli(
        "train", "--arch", "tiny_cnn", "--data", str(tmp_path / "two.npz"), "--out", str(tmp_path / "m.safetensors")
    )
    assert proc.returncode == 2 and "channel count" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    """torchrun with 2 gloo processes trains and rank 0 alone writes the checkpoint."""
    out = tmp_path / "ddp.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",  # a free port: a fixed one collides with other runs
            "-m",
            "hisd_edge",
            "train",
            "--arch",
            "tiny_cnn",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--no-progress",
            "--json",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = read_metadata(out)
    assert meta["training"]["world_size"] == 2
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["val_accuracy"]  # rank 0 alone reports


def test_train_cli_passes_distill_alpha_beta_to_the_objective(tmp_path, monkeypatch, capsys):
    """``train --distill/--alpha/--beta`` reach the loss the trainer builds, each where it belongs."""
    from hisd_edge.cli import main
    from hisd_edge.train import trainer

    seen = []

    class Spy(trainer.HisdObjective):
        def __init__(self, model, config, feat_shapes=None):
            seen.append(config)
            super().__init__(model, config, feat_shapes)

    monkeypatch.setattr(trainer, "HisdObjective", Spy)
    out = tmp_path / "m.safetensors"
    argv = ["train", "--arch", "tiny_cnn", "--epochs", "1", "--threads", "1", "--no-progress", "--json"]
    argv += ["--distill", "final", "--alpha", "0.3", "--beta", "0.7", "--temperature", "2.5", "--out", str(out)]
    assert main(argv) == 0
    [config] = seen
    assert (config.regime, config.alpha, config.beta, config.temperature) == ("final", 0.3, 0.7, 2.5)
    recorded = read_metadata(out)["training"]["config"]
    assert (recorded["distill"], recorded["alpha"], recorded["beta"]) == ("final", 0.3, 0.7)
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint"] == str(out) and len(summary["val_accuracy"]) == 3


def _train_cli(argv, out, processes, cwd):
    launcher = [sys.executable, "-m", "hisd_edge"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
                    "-m", "hisd_edge"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [*launcher, "train", *argv, "--out", str(out)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_checkpoint(out)


@pytest.mark.slow
def test_the_number_of_processes_does_not_change_what_a_command_trains(tmp_path):
    """--batch-size is global: one process and two torchrun processes train the same transformer
    (no BatchNorm, so nothing depends on the per-process share) to the same weights, up to float
    rounding. Before, each process took a full batch: half the steps, twice the batch."""
    argv = ["--arch", "tiny_vit", "--epochs", "2", "--train-count", "651", "--batch-size", "64", "--lr", "0.1",
            "--threads", "1", "--seed", "3", "--no-progress"]  # fmt: skip
    one, meta_one = _train_cli(argv, tmp_path / "one.safetensors", 1, tmp_path)
    two, meta_two = _train_cli(argv, tmp_path / "two.safetensors", 2, tmp_path)
    assert meta_two["training"]["world_size"] == 2
    worst = max(float((a - b).abs().max()) for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    assert worst < 1e-4, f"weights differ by up to {worst}"
    assert meta_one["metrics"]["test_accuracy"] == pytest.approx(meta_two["metrics"]["test_accuracy"], abs=0.002)


def test_global_batches_cover_the_epoch_and_drop_only_an_unsplittable_tail():
    from hisd_edge.train.trainer import _global_batches

    assert _global_batches(130, 64, 1) == [(0, 64), (64, 128), (128, 130)]
    assert _global_batches(130, 64, 2) == [(0, 64), (64, 128), (128, 130)]
    assert _global_batches(129, 64, 2) == [(0, 64), (64, 128)]  # one sample cannot feed two processes


def test_train_count_is_a_fixed_stratified_subset():
    from hisd_edge.data import load_samples
    from hisd_edge.train.trainer import stratified_subset

    train = load_samples("default:train")
    part = stratified_subset(train, 700)
    assert len(part) == 700 and np.bincount(part.labels).tolist() == [70] * 10
    assert part.names == stratified_subset(train, 700).names
    assert stratified_subset(train, 10**6) is train
