#!/usr/bin/env python3
"""Does HiSD help on harder data? The Fashion-MNIST experiment behind results/FASHION_RESULTS.md.

Two model families (the multi-exit CNN ``mnist_cnn`` and the small transformer ``mnist_vit``), each
trained three ways (``--distill none | final | hisd``) and as dedicated single-exit models at the
depth of every exit; per exit: test top-1, MACs, parameters, and retrieval quality of the exit's
embedding (recall@1 and mAP@R, test queries against a train-split gallery, as the HiSD paper,
arXiv 2503.03008, measures its early-layer embeddings).

    # two workers share the job list (claims in the work folder; rerunning resumes, finished runs are kept)
    .venv/bin/python tools/fashion_experiment.py run --work runs/fashion_experiment &
    .venv/bin/python tools/fashion_experiment.py run --work runs/fashion_experiment &
    wait
    .venv/bin/python tools/fashion_experiment.py report --work runs/fashion_experiment --out results/

Jobs:
  tune  per family and regime, a coordinate search on the validation split only (tuning seed, never
        an evaluation seed; a smaller training subset): the distillation weights alpha/beta at T=3,
        then T, then exit weights (early exit weighted up), then (hisd) the feature hint; each step
        keeps the best mean validation top-1 over the exits;
  eval  the chosen setting of each regime and the dedicated models, seeds 0, 1, 2, on the official
        test split.
Every run is one ``hisd-edge train`` command (recorded in its result and, for the multi-exit
models, in the checkpoint it writes); one CPU thread per run, so a seed gives the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from hisd_edge.data import load_samples
from hisd_edge.models import create_model
from hisd_edge.train import TrainConfig, train
from hisd_edge.train.trainer import stratified_subset

FAMILIES = {"cnn": "mnist_cnn", "transformer": "small_vit"}
REGIMES = ("none", "final", "hisd")
DATA = "fashion"
# Sized to the CPU budget: 2 cores shared by about six engineers, where one process got 8-30 % of a
# core (a 1-epoch run of mnist_cnn on 10,000 images took 119 s of wall time at the best of it, a
# 4-epoch run on 2,500 images 8 minutes at the worst): a fixed subset and few epochs.
TRAIN_COUNT = 2_500  # stratified subset of fashion:train (55,000): 250 images per class
TUNE_TRAIN_COUNT = 2_500  # the same subset, with the tuning seed
EPOCHS = 4
TUNE_SEED = 100
EVAL_SEEDS = (0, 1, 2)
THREADS = 1  # one thread per run: deterministic, and two runs share a 2-core machine
GALLERY = "fashion:train"  # retrieval gallery: the TRAIN_COUNT training images; queries: fashion:test

# What is tuned, kept to the CPU budget: the distillation weights of each regime (alpha; alpha and
# beta for hisd) at T=3, the MNIST tuning's choice, with equal exit weights and no feature hint (the
# MNIST tuning found neither exit weights nor T worth changing for the distilled regimes). `none` has
# no distillation weight, so nothing to tune. Tuned on the CNN; the transformer reuses its choice.
WEIGHT_STEP: Dict[str, List[Dict[str, Any]]] = {
    "none": [],
    "final": [{"alpha": a} for a in (0.5, 1.0)],
    "hisd": [{"alpha": a, "beta": b} for a, b in ((1.0, 0.5), (1.0, 1.0))],
}
TEMPERATURES: Tuple[float, ...] = ()
EXIT_WEIGHTS: Dict[str, Tuple[Tuple[float, ...], ...]] = {"none": (), "final": (), "hisd": ()}
HINTS: Tuple[float, ...] = ()
TUNED_FAMILY = "cnn"


# ---------------------------------------------------------------- one run


def cli_args(family: str, distill: str, seed: int, train_count: int, params: Dict[str, Any], single_exit=None):
    """The ``hisd-edge train`` arguments of a run (what its checkpoint records)."""
    args = ["--data", DATA, "--arch", FAMILIES[family], "--train-count", str(train_count), "--epochs", str(EPOCHS)]
    args += ["--distill", distill, "--seed", str(seed), "--threads", str(THREADS), "--no-progress"]
    for key in ("alpha", "beta", "temperature", "hint"):
        if key in params:
            args += [f"--{key}", str(params[key])]
    if "exit_weights" in params:
        args += ["--exit-weights", ",".join(str(w) for w in params["exit_weights"])]
    if single_exit is not None:
        args += ["--single-exit", str(single_exit)]
    return args


def exit_macs_params(arch: str) -> List[Dict[str, int]]:
    """Per exit: MACs (batch 1, convolutions and matrix products, counted by torch's FlopCounterMode)
    and parameters of everything that runs to reach it (stages 0..k and exit head k)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(arch).eval()
    x = torch.zeros(1, *model.config.input_size).unsqueeze(0)
    rows, stage_macs, stage_params = [], 0, 0
    with torch.no_grad():
        for stage, head in zip(model.stages, model.exits):
            counter = FlopCounterMode(display=False)
            with counter:
                x = stage(x)
            stage_macs += counter.get_total_flops() // 2
            stage_params += sum(p.numel() for p in stage.parameters())
            counter = FlopCounterMode(display=False)
            with counter:
                head(x)
            rows.append(
                {
                    "macs": int(stage_macs + counter.get_total_flops() // 2),
                    "params": int(stage_params + sum(p.numel() for p in head.parameters())),
                }
            )
    return rows


@torch.no_grad()
def exit_embeddings(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> Dict[str, List[torch.Tensor]]:
    """L2-normalised embeddings of every exit: ``exit`` is what the exit head classifies (the
    transformer's LayerNorm'd [CLS] token, the CNN head's pooled features), ``trunk`` the
    global-average-pooled stage output (CNN only)."""
    model.eval()
    out: Dict[str, List[List[torch.Tensor]]] = {"exit": [], "trunk": []}
    for start in range(0, len(x), batch):
        feats, _ = model.forward_features(x[start : start + batch])
        for k, (feat, head) in enumerate(zip(feats, model.exits)):
            if hasattr(head, "embed"):  # transformer exit
                emb, trunk = head.embed(feat), None
            else:  # CNN exit head: conv + BN + ReLU, global average pool, linear
                emb, trunk = head.pool(head.conv(feat)).flatten(1), feat.mean(dim=(2, 3))
            for name, value in (("exit", emb), ("trunk", trunk)):
                if value is None:
                    continue
                if len(out[name]) <= k:
                    out[name].append([])
                out[name][k].append(F.normalize(value, dim=1))
    return {name: [torch.cat(parts) for parts in per_exit] for name, per_exit in out.items() if per_exit}


@torch.no_grad()
def retrieval(queries: torch.Tensor, q_labels: torch.Tensor, gallery: torch.Tensor, g_labels: torch.Tensor):
    """recall@1 and mAP@R (R = the number of gallery items of the query's class), cosine similarity."""
    per_class = torch.bincount(g_labels, minlength=int(g_labels.max()) + 1)
    r_max = int(per_class.max())
    hits1, ap_sum = 0.0, 0.0
    for start in range(0, len(queries), 1000):
        q, y = queries[start : start + 1000], q_labels[start : start + 1000]
        top = (q @ gallery.T).topk(r_max, dim=1).indices
        relevant = (g_labels[top] == y[:, None]).float()
        hits1 += float(relevant[:, 0].sum())
        r = per_class[y].float()
        within_r = torch.arange(r_max)[None, :] < r[:, None]
        precision_at_i = relevant.cumsum(1) / torch.arange(1, r_max + 1)[None, :]
        ap_sum += float(((precision_at_i * relevant * within_r).sum(1) / r).sum())
    return {"recall_at_1": hits1 / len(queries), "map_at_r": ap_sum / len(queries)}


_DATA_CACHE: Dict[str, Any] = {}


def _retrieval_data(spec) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if "test" not in _DATA_CACHE:
        test = load_samples("fashion:test")
        gallery = stratified_subset(load_samples(GALLERY), TRAIN_COUNT)
        _DATA_CACHE["test"] = (torch.from_numpy(test.tensors(spec)), torch.from_numpy(test.labels))
        _DATA_CACHE["gallery"] = (torch.from_numpy(gallery.tensors(spec)), torch.from_numpy(gallery.labels))
    return (*_DATA_CACHE["test"], *_DATA_CACHE["gallery"])


def run_one(
    family: str,
    distill: str,
    seed: int,
    params: Dict[str, Any],
    *,
    train_count: int,
    single_exit: Optional[int] = None,
    checkpoint: Optional[Path] = None,
    measure_retrieval: bool = False,
) -> Dict[str, Any]:
    args = cli_args(family, distill, seed, train_count, params, single_exit)
    cfg = TrainConfig(
        arch=FAMILIES[family],
        data=DATA,
        epochs=EPOCHS,
        distill=distill,
        seed=seed,
        threads=THREADS,
        progress=False,
        single_exit=single_exit,
        train_count=train_count,
        **{k: tuple(v) if k == "exit_weights" else v for k, v in params.items()},
    )
    argv = [*args, "--out", str(checkpoint)] if checkpoint else args
    result = train(cfg, checkpoint, argv=argv)
    row: Dict[str, Any] = {
        "family": family,
        "distill": distill,
        "seed": seed,
        "single_exit": single_exit,
        "params": params,
        "command": "hisd-edge train " + " ".join(argv),
        "val": result.val_accuracy,
        "test": result.test_accuracy,
        "seconds": round(result.seconds, 1),
    }
    if measure_retrieval and result.model is not None:
        xq, yq, xg, yg = _retrieval_data(result.preprocessing)
        q_emb, g_emb = exit_embeddings(result.model, xq), exit_embeddings(result.model, xg)
        row["retrieval"] = {name: [retrieval(q, yq, g, yg) for q, g in zip(q_emb[name], g_emb[name])] for name in q_emb}
    return row


# ---------------------------------------------------------------- jobs, claims, resumption


@dataclasses.dataclass
class Job:
    name: str
    kind: str  # "tune" or "eval"
    family: str
    regime: str  # none/final/hisd, or "dedicated"
    seed: int = TUNE_SEED
    single_exit: Optional[int] = None

    def needs(self) -> Optional[str]:
        """The tuning result this job waits for (None: can start now)."""
        return f"tune-{TUNED_FAMILY}-{self.regime}" if self.kind == "eval" and self.regime != "dedicated" else None


def all_jobs() -> List[Job]:
    jobs: List[Job] = []
    for regime in ("hisd", "final", "none"):  # tuning first: every evaluation of a regime waits for it
        jobs.append(Job(f"tune-{TUNED_FAMILY}-{regime}", "tune", TUNED_FAMILY, regime))
    num_exits = {family: create_model(arch).num_exits for family, arch in FAMILIES.items()}
    for seed in EVAL_SEEDS:  # seed by seed, so an interrupted experiment has whole seeds
        for family in FAMILIES:
            for regime in REGIMES:
                jobs.append(Job(f"eval-{family}-{regime}-s{seed}", "eval", family, regime, seed))
            for k in range(num_exits[family] - 1):
                jobs.append(Job(f"eval-{family}-dedicated{k}-s{seed}", "eval", family, "dedicated", seed, k))
    for seed in EVAL_SEEDS:  # the full-depth single-exit network last: the first thing to drop when time runs out
        for family in FAMILIES:
            k = num_exits[family] - 1
            jobs.append(Job(f"eval-{family}-dedicated{k}-s{seed}", "eval", family, "dedicated", seed, k))
    return jobs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(work: Path, name: str) -> bool:
    """Atomically claim a job; a claim whose process died is taken over."""
    claim = work / f"{name}.claim"
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(claim.read_text() or "0")
            except (OSError, ValueError):
                return False
            if owner and _alive(owner):
                return False
            claim.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{os.getpid()}] {message}", flush=True)


def tune(work: Path, job: Job) -> Dict[str, Any]:
    """Coordinate search for one family and regime; every step's run is kept (resumable)."""
    steps_dir = work / job.name
    steps_dir.mkdir(exist_ok=True)
    rows: List[Dict[str, Any]] = []

    def score(params: Dict[str, Any]) -> float:
        key = "_".join(f"{k}={v}" for k, v in sorted(params.items())).replace(" ", "") or "defaults"
        path = steps_dir / f"{key}.json"
        if path.exists():
            row = json.loads(path.read_text())
        else:
            row = run_one(job.family, job.regime, TUNE_SEED, params, train_count=TUNE_TRAIN_COUNT)
            _write_json(path, row)
            _log(f"{job.name} {params} val {[round(v, 4) for v in row['val']]}")
        rows.append(row)
        return statistics.mean(row["val"])

    start = {} if job.regime == "none" else {"temperature": 3.0}
    scored = [(score({**start, **p}), {**start, **p}) for p in WEIGHT_STEP[job.regime]]
    best_score, best = max(scored, key=lambda s: s[0]) if scored else (float("nan"), start)
    candidates: List[Dict[str, Any]] = []
    if job.regime != "none":
        candidates += [{"temperature": t} for t in TEMPERATURES]
    candidates += [{"exit_weights": list(w)} for w in EXIT_WEIGHTS[job.regime]]
    if job.regime == "hisd":
        candidates += [{"hint": h} for h in HINTS]
    for change in candidates:  # one coordinate at a time, keeping improvements
        candidate = {**best, **change}
        value = score(candidate)
        if value > best_score:
            best_score, best = value, candidate
    return {"family": job.family, "regime": job.regime, "chosen": best, "score": best_score, "runs": rows}


def run_jobs(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    while True:
        pending = [j for j in all_jobs() if not (work / f"{j.name}.json").exists()]
        if not pending:
            _log("all jobs done")
            return
        ready = [j for j in pending if j.needs() is None or (work / f"{j.needs()}.json").exists()]
        job = next((j for j in ready if _claim(work, j.name)), None)
        if job is None:
            time.sleep(20)  # everything left is claimed or waits for a tuning result
            continue
        started = time.time()
        _log(f"start {job.name}")
        if job.kind == "tune":
            result = tune(work, job)
        else:
            params = {}
            if job.regime != "dedicated":
                params = json.loads((work / f"{job.needs()}.json").read_text())["chosen"]
            ckpt = None
            if job.regime != "dedicated":
                (work / "checkpoints").mkdir(exist_ok=True)
                ckpt = work / "checkpoints" / f"fashion_{FAMILIES[job.family]}_{job.regime}_s{job.seed}.safetensors"
            result = run_one(
                job.family,
                "none" if job.regime == "dedicated" else job.regime,
                job.seed,
                params,
                train_count=TRAIN_COUNT,
                single_exit=job.single_exit,
                checkpoint=ckpt,
                measure_retrieval=True,
            )
            result["regime"] = job.regime
        result["job"] = job.name
        result["wall_seconds"] = round(time.time() - started, 1)
        _write_json(work / f"{job.name}.json", result)
        (work / f"{job.name}.claim").unlink(missing_ok=True)
        _log(f"done {job.name} in {result['wall_seconds']} s")


# ---------------------------------------------------------------- report


def _ms(values: Sequence[float], scale: float = 100.0) -> Tuple[float, float]:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return mean, std


def _fmt(values: Sequence[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    mean, std = _ms(values, scale)
    partial = f" (n={len(values)})" if len(values) < len(EVAL_SEEDS) else ""
    return f"{mean:.1f} ± {std:.1f}{partial}"


def collect(work: Path) -> Dict[str, Any]:
    done = [j for j in all_jobs() if (work / f"{j.name}.json").exists()]
    evals = [json.loads((work / f"{j.name}.json").read_text()) for j in done if j.kind == "eval"]
    tunes = [json.loads((work / f"{j.name}.json").read_text()) for j in done if j.kind == "tune"]
    missing = [j.name for j in all_jobs() if j not in done]
    costs = {family: exit_macs_params(arch) for family, arch in FAMILIES.items()}
    return {
        "data": {
            "train": f"{TRAIN_COUNT} of fashion:train (stratified, fixed)",
            "val": "fashion:val",
            "test": "fashion:test",
        },
        "tuning": {"train_count": TUNE_TRAIN_COUNT, "seed": TUNE_SEED},
        "epochs": EPOCHS,
        "seeds": list(EVAL_SEEDS),
        "threads_per_run": THREADS,
        "costs": costs,
        "tuning_runs": tunes,
        "runs": evals,
        "not_run": missing,
    }


def _runs(data: Dict[str, Any], family: str, regime: str, k: Optional[int] = None) -> List[Dict[str, Any]]:
    return [
        r
        for r in data["runs"]
        if r["family"] == family and r["regime"] == regime and (k is None or r["single_exit"] == k)
    ]


def _metric(run: Dict[str, Any], k: int, metric: str, emb: str = "exit") -> float:
    """Exit k's value of a multi-exit run, or a dedicated run's only exit."""
    index = 0 if run["single_exit"] is not None else k
    if metric == "top1":
        return run["test"][index]
    return run["retrieval"][emb][index][metric]


def _cells(data: Dict[str, Any], family: str, metric: str, emb: str = "exit") -> List[Tuple[str, List[str]]]:
    n = len(data["costs"][family])
    rows = []
    for regime in REGIMES:
        runs = _runs(data, family, regime)
        rows.append((f"`--distill {regime}`", [_fmt([_metric(r, k, metric, emb) for r in runs]) for k in range(n)]))
    rows.append(
        (
            "dedicated model per depth",
            [_fmt([_metric(r, k, metric, emb) for r in _runs(data, family, "dedicated", k)]) for k in range(n)],
        )
    )
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _difference(data: Dict[str, Any], family: str, a: str, b: str, metric: str, emb: str = "exit") -> List[str]:
    """Per exit: mean(a) - mean(b) in points, with the seed spread it must clear (std_a + std_b)."""
    out = []
    for k in range(len(data["costs"][family])):
        va = [
            _metric(r, k, metric, emb)
            for r in (_runs(data, family, a) if a != "dedicated" else _runs(data, family, a, k))
        ]
        vb = [
            _metric(r, k, metric, emb)
            for r in (_runs(data, family, b) if b != "dedicated" else _runs(data, family, b, k))
        ]
        if len(va) < 2 or len(vb) < 2:
            out.append("–")
            continue
        (ma, sa), (mb, sb) = _ms(va), _ms(vb)
        delta, spread = ma - mb, sa + sb
        verdict = "outside" if abs(delta) > spread else "within"
        out.append(f"{delta:+.1f} ({verdict} ±{spread:.1f})")
    return out


def write_report(work: Path, out: Path) -> None:
    data = collect(work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fashion_eval.json").write_text(json.dumps(data, indent=1))
    parts = [
        "<!-- generated by tools/fashion_experiment.py report; do not edit by hand -->",
        f"Test split: the official 10,000 Fashion-MNIST test images; mean ± std over seeds {', '.join(map(str, EVAL_SEEDS))}.",
        "",
    ]
    for family, arch in FAMILIES.items():
        costs = data["costs"][family]
        n = len(costs)
        header = ["", *[f"exit {k}" for k in range(n)]]
        parts += [f"### {family} (`{arch}`)", ""]
        parts += [
            _table(
                header,
                [
                    ["MACs per sample (to reach the exit)", *[f"{c['macs'] / 1e6:.2f} M" for c in costs]],
                    ["parameters (to reach the exit)", *[f"{c['params']:,}" for c in costs]],
                ],
            ),
            "",
            "Test top-1 (%):",
            "",
            _table(header, [[name, *cells] for name, cells in _cells(data, family, "top1")]),
            "",
        ]
        for label, metric in (("recall@1", "recall_at_1"), ("mAP@R", "map_at_r")):
            parts += [
                f"Retrieval {label} (%), exit embeddings:",
                "",
                _table(header, [[name, *cells] for name, cells in _cells(data, family, metric)]),
                "",
            ]
        if family == "cnn":
            parts += [
                "Retrieval mAP@R (%), trunk features (global-average-pooled stage output):",
                "",
                _table(header, [[name, *cells] for name, cells in _cells(data, family, "map_at_r", "trunk")]),
                "",
            ]
        comparisons = [("hisd", "final"), ("hisd", "none"), ("final", "none"), ("hisd", "dedicated")]
        rows = []
        for a, b in comparisons:
            rows.append([f"{a} − {b}, top-1", *_difference(data, family, a, b, "top1")])
            rows.append([f"{a} − {b}, mAP@R", *_difference(data, family, a, b, "map_at_r")])
        parts += [
            "Differences in points, mean over seeds (outside / within the seed spread std_a + std_b):",
            "",
            _table(header, rows),
            "",
        ]
    chosen = [
        [
            t["family"] + " (the transformer reuses it)",
            t["regime"],
            ", ".join(f"{k}={v}" for k, v in t["chosen"].items()) or "CE only, equal exit weights (nothing tuned)",
            f"{100 * t['score']:.2f}" if t["runs"] else "–",
        ]
        for t in data["tuning_runs"]
    ]
    parts += [
        "### Tuning (validation split, seed 100)",
        "",
        _table(["family", "regime", "chosen", "mean val top-1 (%)"], chosen),
        "",
    ]
    tuning_rows = []
    for t in data["tuning_runs"]:
        for r in t["runs"]:
            setting = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
            tuning_rows.append(
                [
                    t["family"],
                    t["regime"],
                    setting,
                    " / ".join(f"{100 * v:.1f}" for v in r["val"]),
                    f"{100 * statistics.mean(r['val']):.2f}",
                ]
            )
    parts += [
        "All tuning runs:",
        "",
        _table(["family", "regime", "setting", "val top-1 per exit (%)", "mean"], tuning_rows),
        "",
    ]
    (out / "fashion_tables.md").write_text("\n".join(parts))
    plot(data, out / "fashion_accuracy_vs_macs.png")
    print("\n".join(parts))


def plot(data: Dict[str, Any], path: Path) -> None:
    """Accuracy vs MACs per exit, each regime a line, the dedicated models as separate points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"none": ("tab:gray", "o-"), "final": ("tab:blue", "s-"), "hisd": ("tab:red", "^-")}
    fig, axes = plt.subplots(2, len(FAMILIES), figsize=(6.2 * len(FAMILIES), 8.4), squeeze=False)
    for col, (family, arch) in enumerate(FAMILIES.items()):
        macs = [c["macs"] / 1e6 for c in data["costs"][family]]
        for row, (metric, label) in enumerate(
            (("top1", "test top-1 (%)"), ("map_at_r", "retrieval mAP@R (%), exit embedding"))
        ):
            ax = axes[row][col]
            for regime in REGIMES:
                if not _runs(data, family, regime):
                    continue
                stats = [_ms([_metric(r, k, metric) for r in _runs(data, family, regime)]) for k in range(len(macs))]
                color, style = styles[regime]
                ax.errorbar(macs, [m for m, _ in stats], yerr=[s for _, s in stats], fmt=style, color=color,
                            capsize=3, label=f"multi-exit, --distill {regime}")  # fmt: skip
            trained = [k for k in range(len(macs)) if _runs(data, family, "dedicated", k)]
            stats = [_ms([_metric(r, k, metric) for r in _runs(data, family, "dedicated", k)]) for k in trained]
            ax.errorbar([macs[k] for k in trained], [m for m, _ in stats], yerr=[s for _, s in stats], fmt="D",
                        color="black", mfc="none", capsize=3, label="dedicated model per depth")  # fmt: skip
            for k, x in enumerate(macs):
                ax.annotate(f"exit {k}", (x, ax.get_ylim()[0]), textcoords="offset points", xytext=(2, 4), fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("MACs per sample to reach the exit (millions, log)")
            ax.set_ylabel(label)
            ax.set_title(f"{family} ({arch}), Fashion-MNIST test, mean ± std of {len(EVAL_SEEDS)} seeds", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["run", "report", "jobs"])
    parser.add_argument("--work", type=Path, default=Path("runs/fashion_experiment"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    if args.phase == "jobs":
        for job in all_jobs():
            state = "done" if (args.work / f"{job.name}.json").exists() else "pending"
            print(f"{job.name:40s} {state}")
    elif args.phase == "run":
        run_jobs(args.work)
    else:
        write_report(args.work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
