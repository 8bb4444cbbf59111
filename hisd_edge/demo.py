"""The demo: the main job, end to end, on the embedded default model.

1. (workstation) evaluate the shipped HiSD checkpoint per exit on the default test split;
2. (workstation) convert it into a bundle: split at the exits, verify, fp16 and INT8 (Q/DQ)
   variants calibrated along the chain on 256 real training images, validation table;
3. (target side, ONNX Runtime on this CPU) certify exit thresholds on the validation split (and
   calibrate the input guard there), say what that split can certify, run the test split with
   early exit, and compare with the full model;
4. (target side) profile per-exit latency, memory and energy and write the HTML report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from hisd_edge.errors import InputError

# The demo's certified bound: with probability >= DEMO_CONFIDENCE over the draw of the validation
# split, the expected accuracy drop against the final exit on new digits is <= this many points.
# 500 validation digits can certify at best 0.46 points at 90 % (every bound below that needs more
# samples), so 0.5 is about the tightest promise the shipped split supports.
DEMO_MAX_DROP_POINTS = 0.5
DEMO_CONFIDENCE = 0.9

# How many samples each step uses. The quick demo (``hisd-edge demo --quick``) runs the same steps
# on fewer samples: a check that the whole path works here, in a fraction of the time.
FULL_SIZES = {
    "calib_count": 256,
    "convert_val_count": None,
    "val_count": None,
    "test_count": None,
    "profile_samples": None,  # the same samples as step 3: one set of figures, not two
}
# The quick demo certifies on the whole validation split too: 200 samples cannot certify 0.5 points.
QUICK_SIZES = {
    "calib_count": 32,
    "convert_val_count": 100,
    "val_count": None,
    "test_count": 200,
    "profile_samples": 200,
}


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def exit_table(checkpoint_path: Path) -> List[dict]:
    """Per-exit parameters and accuracy of a checkpoint, measured now on the default test split."""
    import torch

    from hisd_edge.checkpoint import load_checkpoint
    from hisd_edge.data import load_samples
    from hisd_edge.preprocess import Preprocessing
    from hisd_edge.train import evaluate

    model, meta = load_checkpoint(checkpoint_path)
    spec = Preprocessing.from_dict(meta["preprocessing"])
    test = load_samples("default:test")
    accuracy = evaluate(model, torch.from_numpy(test.tensors(spec)), torch.from_numpy(test.labels))
    rows = []
    trunk_params = 0
    for k, info in enumerate(meta["exits"]):
        trunk_params += sum(p.numel() for p in model.stages[k].parameters())
        head_params = sum(p.numel() for p in model.exits[k].parameters())
        rows.append(
            {
                "exit": k,
                "params_to_exit": trunk_params + head_params,
                "channels": info["channels"],
                "reduction": info["reduction"],
                "val_top1": (meta.get("metrics", {}).get("val_accuracy") or [None] * (k + 1))[k],
                "test_top1": accuracy[k],
                "test_count": len(test),
            }
        )
    return rows


def run_demo(
    checkpoint: Optional[str] = None, out_root: str = "engines", reports_root: str = "reports", quick: bool = False
) -> int:
    from hisd_edge.checkpoint import default_checkpoint_path, read_metadata

    sizes = QUICK_SIZES if quick else FULL_SIZES
    path = Path(checkpoint) if checkpoint else default_checkpoint_path()
    if not path.exists() and checkpoint is None:
        raise InputError(f"{path}: the embedded default checkpoint is missing from this install; reinstall hisd-edge")
    meta = read_metadata(path)
    _section("1. The embedded default model" if checkpoint is None else f"1. The model: {path}")
    print(
        f"checkpoint   {path.name}  ({meta['arch'].get('name')}, {len(meta['exits'])} exits, "
        f"classes {','.join(meta['class_names'])})"
    )
    print(f"trained with {meta.get('training', {}).get('command', '(unknown)')}")
    rows = exit_table(path)
    print(f"\nper-exit top-1 on the default test split ({rows[0]['test_count']} real MNIST digits):")
    print(f"{'exit':>4}  {'params':>9}  {'features':>12}  {'val top-1':>9}  {'test top-1':>10}")
    for row in rows:
        val = f"{100 * row['val_top1']:.2f}%" if row["val_top1"] is not None else "–"
        print(
            f"{row['exit']:>4}  {row['params_to_exit']:>9,}  {row['channels']:>4} ch /{row['reduction']:<3}  {val:>9}  "
            f"{100 * row['test_top1']:>9.2f}%"
        )
    sys.stdout.flush()

    from hisd_edge.convert import convert_checkpoint

    bundle_dir = Path(out_root) / path.name.replace(".safetensors", "")
    _section(f"2. Convert to a bundle: {bundle_dir} (replaced if it exists)")
    result = convert_checkpoint(
        path,
        bundle_dir,
        precisions=("fp32", "fp16", "int8"),
        calib="default:train",
        calib_count=sizes["calib_count"],
        val_count=sizes["convert_val_count"],
        force=True,
    )
    print(result.table())
    print(
        f"converted in {result.timings_s['total']:.1f} s "
        f"(export, split, verify, fp16, int8 with {result.calibration['count']} calibration images, validation)"
    )
    sys.stdout.flush()

    from hisd_edge.runtime import evaluate_early_exit, format_early_exit

    _section("3. Early exit on this CPU (ONNX Runtime): thresholds certified on default:val, run on default:test")
    summary = evaluate_early_exit(
        result.bundle,
        val="default:val",
        test="default:test",
        max_drop_points=DEMO_MAX_DROP_POINTS,
        val_count=sizes["val_count"],
        test_count=sizes["test_count"],
        confidence=DEMO_CONFIDENCE,
    )
    print(format_early_exit(summary))
    sys.stdout.flush()

    from hisd_edge.profile import profile_default

    report_dir = Path(reports_root) / bundle_dir.name
    _section(f"4. Profile per exit on this machine: {report_dir} (replaced if it exists)")
    profiled = profile_default(
        str(result.bundle), str(report_dir), data="default:test", samples=sizes["profile_samples"]
    )
    print(profiled["summary"])
    head = profiled["profile"].get("headline") or {}
    if head.get("available"):
        from hisd_edge.runtime.bench import speedup_text

        low, high = head.get("speedup_range") or (head["speedup"], head["speedup"])
        low3, high3 = summary.speedup_range or (summary.speedup, summary.speedup)
        agree = low <= high3 and low3 <= high
        print(
            f"report headline: speedup {speedup_text(head)}; step 3 measured {summary.speedup:.2f}x "
            f"(spread {low3:.2f}-{high3:.2f}x) the same way: "
            + (
                "their spreads overlap"
                if agree
                else "their spreads do not overlap: the machine's load changed between the two (other processes); "
                "run the bench command below on a quiet machine"
            )
        )
        print(f"the same figure, alone: {head.get('bench_command')}")
    print(f"\nHTML report: {profiled['report']['html']}")
    print(f"re-run this profile: {profiled['profile'].get('command')}")
    return 0
