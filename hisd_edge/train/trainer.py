"""Training loop for multi-exit models with the HiSD objective.

Seeded and deterministic on the CPU (same seed, same thread count -> same weights). Runs as one
process, or as several under ``torchrun`` (DDP over gloo: the loop trains on CPU tensors).

The number of processes does not change what a command trains: ``batch_size`` is the *global*
batch. Every rank draws the same epoch permutation and the same augmentation, takes its share of
each global batch, and weights its loss by that share, so the averaged gradient is the gradient of
the global batch and the learning-rate schedule has the same steps. Models without BatchNorm (the
transformer family) train to the same weights up to float rounding; BatchNorm layers normalise
over each rank's share (SyncBatchNorm runs only on GPUs), a small, stated difference. Only rank 0
evaluates and writes the checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hisd_edge import checkpoint
from hisd_edge.data import NAMED_DATASETS, Samples, load_samples
from hisd_edge.errors import InputError
from hisd_edge.models import build_from_arch, model_arch
from hisd_edge.preprocess import Preprocessing
from hisd_edge.train.loss import HisdLossConfig, HisdObjective

LOG = logging.getLogger("hisd_edge.train")


@dataclasses.dataclass
class TrainConfig:
    arch: str = "mnist_cnn"
    data: str = "default"  # "default", "fashion", an image folder with one sub-folder per class, or a .npz
    val: Optional[str] = None  # validation folder; default: a stratified 15% of --data
    epochs: int = 12
    batch_size: int = 64  # global: split across torchrun processes
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    distill: str = "hisd"
    alpha: float = 0.5
    beta: float = 0.5
    temperature: float = 3.0
    hint: float = 0.0
    exit_weights: Optional[Tuple[float, ...]] = None
    augment: bool = True  # random shifts of up to 2 pixels
    seed: int = 0
    threads: int = 2
    strict: bool = False
    single_exit: Optional[int] = None  # train a dedicated model: only stages 0..k and exit k
    train_count: Optional[int] = None  # a fixed stratified subset of the training split (None: all of it)
    progress: bool = True


@dataclasses.dataclass
class TrainResult:
    checkpoint: Optional[Path]
    val_accuracy: List[float]
    test_accuracy: Optional[List[float]]
    seconds: float
    model: Optional[nn.Module] = None  # the trained model (rank 0), for callers that measure more
    preprocessing: Optional[Preprocessing] = None


def _dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="gloo")  # the loop's tensors live on the CPU; NCCL would refuse them
    return True


# Pixel mean and std (0..1 scale) of the named datasets' training sets: MNIST's usual figures, and
# Fashion-MNIST's as measured on its 55,000 training images (0.2860, 0.3531).
_DATASET_STATS = {"default": (0.1307, 0.3081), "fashion": (0.2860, 0.3530)}


def _preprocessing_for(arch: Dict[str, Any], train: Samples, data: str) -> Preprocessing:
    cfg = arch["config"]
    channels = int(cfg.get("in_channels", 1))
    input_size = tuple(cfg.get("input_size", (28, 28)))
    if data in _DATASET_STATS:
        # The datasets' published statistics, so the models match what people expect.
        pixel_mean, pixel_std = _DATASET_STATS[data]
        return Preprocessing(
            input_size=input_size, channels=1, color_order="gray", mean=(pixel_mean,), std=(pixel_std,)
        )
    color = "gray" if channels == 1 else "rgb"
    probe = Preprocessing(
        input_size=input_size, channels=channels, color_order=color, mean=(0.0,) * channels, std=(1.0,) * channels
    )
    # mean 0 / std 1 on the 0..1 scale: the probe's tensors are the pixels on the 0..1 scale already
    # (preprocessing divides by 255 * std), which is the scale the manifest stores mean/std on.
    x = train.subset(range(min(len(train), 512))).tensors(probe)
    mean = tuple(float(v) for v in x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in x.std(axis=(0, 2, 3)))
    return Preprocessing(input_size=input_size, channels=channels, color_order=color, mean=mean, std=std)


def _split_labelled(samples: Samples, fraction: float, seed: int) -> Tuple[Samples, Samples]:
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    assert samples.labels is not None
    for cls in np.unique(samples.labels):
        idx = np.flatnonzero(samples.labels == cls)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        val_idx.extend(idx[:n_val].tolist())
        train_idx.extend(idx[n_val:].tolist())
    return samples.subset(sorted(train_idx)), samples.subset(sorted(val_idx))


TRAIN_SUBSET_SEED = 0  # fixed: every seed and regime trained with --train-count sees the same images


def stratified_subset(samples: Samples, count: int, seed: int = TRAIN_SUBSET_SEED) -> Samples:
    """``count`` samples with the classes in their original proportions (seeded, order kept)."""
    assert samples.labels is not None
    if count >= len(samples):
        return samples
    if count < 1:
        raise InputError(f"--train-count must be positive, got {count}")
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(samples.labels, return_counts=True)
    quota = np.floor(sizes * count / len(samples)).astype(int)
    remainder = sizes * count / len(samples) - quota
    quota[np.argsort(-remainder, kind="stable")[: count - int(quota.sum())]] += 1
    chosen = [rng.permutation(np.flatnonzero(samples.labels == c))[:q] for c, q in zip(classes, quota)]
    return samples.subset(np.sort(np.concatenate(chosen)).tolist())


def load_training_data(config: TrainConfig) -> Tuple[Samples, Samples, Optional[Samples]]:
    """(train, val, test) raw samples; test only for the named datasets (default, fashion)."""
    train, val, test = _load_splits(config)
    if config.train_count is not None:
        train = stratified_subset(train, config.train_count)
    return train, val, test


def _load_splits(config: TrainConfig) -> Tuple[Samples, Samples, Optional[Samples]]:
    if config.data in NAMED_DATASETS:
        return tuple(load_samples(f"{config.data}:{split}") for split in ("train", "val", "test"))  # type: ignore[return-value]
    samples = load_samples(config.data, strict=config.strict)
    if samples.labels is None:
        raise InputError(f"{config.data}: training needs labels; give a folder with one sub-folder per class")
    if samples.class_names is None:  # .npz labels are class indices: name the classes after them
        samples.class_names = [str(c) for c in range(int(samples.labels.max()) + 1)]
    if len(samples.class_names or []) < 2:
        raise InputError(
            f"{config.data}: found {len(samples.class_names or [])} class folder(s); training needs at least 2"
        )
    if config.val:
        val = load_samples(config.val, strict=config.strict)
        if val.class_names != samples.class_names:
            raise InputError(
                f"{config.val}: class folders {val.class_names} differ from {config.data}'s {samples.class_names}"
            )
        return samples, val, None
    train, val = _split_labelled(samples, 0.15, config.seed)
    if len(val) == 0:  # every class has a single image: nothing is left to validate on
        raise InputError(
            f"{config.data}: too few images to hold some out for validation ({len(samples)} for "
            f"{len(samples.class_names or [])} classes); give at least 2 images per class, or a --val folder"
        )
    return train, val, None


MAX_SHIFT = 2


def _shift_augment(x: torch.Tensor, offsets: torch.Tensor, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Translate each image by its (dy, dx) in ``offsets`` (0..2*max_shift, i.e. up to ``max_shift``
    pixels either way), padding with each image's background (its minimum value, which after
    normalisation is not 0)."""
    n, _, h, w = x.shape
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = torch.nn.functional.pad(x - background, (max_shift,) * 4) + background
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> List[float]:
    """Top-1 accuracy of every exit, in [0, 1]."""
    model.eval()
    correct: Optional[torch.Tensor] = None
    for start in range(0, len(x), batch_size):
        outs = model(x[start : start + batch_size])
        hits = torch.stack([(o.argmax(dim=1) == y[start : start + batch_size]).sum() for o in outs])
        correct = hits if correct is None else correct + hits
    assert correct is not None
    return [float(c) / len(x) for c in correct]


class _SingleExit(nn.Module):
    """Stages 0..k and exit k of a staged model: the dedicated small model of the same depth."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        stages: Any = model.stages
        self.stages = nn.ModuleList(list(stages)[: k + 1])
        self.exits = nn.ModuleList([model.exits[k]])  # type: ignore[index,list-item]
        self.exit_info = [model.exit_info[k]]  # type: ignore[index]
        self.arch = None

    def forward_features(self, x):
        for stage in self.stages:
            x = stage(x)
        return [x], [self.exits[0](x)]

    def forward(self, x):
        return self.forward_features(x)[1]


def _global_batches(count: int, batch_size: int, world: int) -> List[Tuple[int, int]]:
    """(start, stop) of each global batch in an epoch's permutation. A last batch smaller than the
    number of processes is dropped (a rank would get no sample); with one process none is."""
    batches = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    return [(a, b) for a, b in batches if b - a >= world]


def train(config: TrainConfig, out: Optional[Path], argv: Optional[Sequence[str]] = None) -> TrainResult:
    """Train one model; write a checkpoint to ``out`` (rank 0 only) and return its accuracies."""
    started = time.time()
    joined = _maybe_init_distributed()
    rank, world = _dist_info()
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, config.threads))
    torch.use_deterministic_algorithms(True, warn_only=True)

    arch = model_arch(config.arch)
    train_set, val_set, test_set = load_training_data(config)
    num_classes = len(train_set.class_names or [])
    arch["config"]["num_classes"] = num_classes
    spec = _preprocessing_for(arch, train_set, config.data)
    model = build_from_arch(arch)
    if config.single_exit is not None:
        if not 0 <= config.single_exit < len(model.exit_info):
            raise InputError(f"--single-exit {config.single_exit} is out of range (0..{len(model.exit_info) - 1})")
        model = _SingleExit(model, config.single_exit)  # type: ignore[assignment]

    x_train = torch.from_numpy(train_set.tensors(spec))
    y_train = torch.from_numpy(train_set.labels)
    x_val = torch.from_numpy(val_set.tensors(spec))
    y_val = torch.from_numpy(val_set.labels)

    with torch.no_grad():
        feats, _ = model.eval().forward_features(x_train[:2])
    loss_cfg = HisdLossConfig(
        regime=config.distill,
        alpha=config.alpha,
        beta=config.beta,
        temperature=config.temperature,
        hint=config.hint,
        exit_weights=config.exit_weights if config.single_exit is None else None,
    )
    objective: nn.Module = HisdObjective(model, loss_cfg, [tuple(f.shape) for f in feats])
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective)

    optimizer = torch.optim.SGD(
        objective.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )
    if config.batch_size < world:
        raise InputError(
            f"--batch-size {config.batch_size} is the global batch; give at least one sample per process ({world})"
        )
    global_batches = _global_batches(len(x_train), config.batch_size, world)
    steps_per_epoch = max(1, len(global_batches))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(config.seed)
    num_exits = len(model.exit_info)

    progress = None
    if config.progress and rank == 0:
        from tqdm import tqdm

        progress = tqdm(
            total=config.epochs * steps_per_epoch,
            desc=f"train {config.arch} ({config.distill})",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    val_acc: List[float] = []
    for epoch in range(config.epochs):
        objective.train()
        order = torch.randperm(len(x_train), generator=generator)  # the same on every rank
        seen, loss_sum = 0, 0.0
        correct = torch.zeros(num_exits)
        for start, stop in global_batches:
            share = torch.tensor_split(torch.arange(start, stop), world)[rank]
            idx = order[share]
            xb, yb = x_train[idx], y_train[idx]
            if config.augment:
                # Shifts are drawn for the whole global batch, so the random stream (and every
                # image's shift) is the same whatever the number of processes.
                offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (stop - start, 2), generator=generator)
                xb = _shift_augment(xb, offsets[share - start])
            loss, parts, logits = objective(xb, yb)
            if world > 1:  # DDP averages over ranks: weight each rank's mean by its share of the batch
                loss = loss * (len(idx) * world / (stop - start))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += torch.stack([(z.argmax(1) == yb).sum() for z in logits]).float()
            if progress is not None:
                progress.update(1)
                ce = parts["ce"]
                progress.set_postfix_str(
                    f"ep {epoch + 1}/{config.epochs} loss {loss_sum / seen:.3f} "
                    + " ".join(
                        f"e{k}:{float(ce[k]):.2f}/{100 * float(correct[k]) / seen:.0f}%" for k in range(num_exits)
                    )
                )
        if rank == 0 and (progress is not None or epoch == config.epochs - 1):  # per epoch only when shown
            val_acc = evaluate(model, x_val, y_val)
            if progress is not None:
                progress.write(f"epoch {epoch + 1}: val top-1 per exit " + " ".join(f"{100 * a:.1f}%" for a in val_acc))
    if progress is not None:
        progress.close()

    test_acc = None
    written = None
    if rank == 0:
        if test_set is not None:
            test_acc = evaluate(model, torch.from_numpy(test_set.tensors(spec)), torch.from_numpy(test_set.labels))
        if out is not None and config.single_exit is None:
            command = "hisd-edge train " + " ".join(
                shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
            )
            meta = checkpoint.build_metadata(
                model,
                class_names=train_set.class_names or [],
                preprocessing=spec.to_dict(),
                metrics={
                    "val_accuracy": val_acc,
                    "test_accuracy": test_acc,
                    "val_split": f"{config.data}:val"
                    if config.data in NAMED_DATASETS
                    else (config.val or "15% of --data"),
                    "test_split": f"{config.data}:test" if test_set is not None else None,
                },
                training={
                    "command": command,
                    "config": {
                        k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()
                    },
                    "world_size": world,
                    "seconds": round(time.time() - started, 1),
                },
            )
            written = checkpoint.save_checkpoint(out, model, meta)
    if joined:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(
        checkpoint=written,
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        seconds=time.time() - started,
        model=model if rank == 0 else None,
        preprocessing=spec,
    )
