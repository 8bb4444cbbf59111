"""``profile_bundle``: measure what each exit costs on this device and write the report.

The run, in order (one clock, ``time.perf_counter``, for latency and power timestamps):

1. device and power mode (nvpmodel, jetson_clocks), the power source (fails fast, naming the
   unreadable file and the fix), the data, the bundle's policy (defaults + a note if uncalibrated);
2. memory before, backend load, memory after load;
3. the power sampler starts (if there is a source); an **idle baseline** is measured with nothing
   running, at the same power mode as the loops;
4. for every batch size: warm-up, then ``repeats`` runs forced to each exit k (latency to exit k
   on the host with ``perf_counter_ns``; per-stage latency from the backend itself), then for each
   exit a **steady loop** of at least ``energy_min_s`` seconds and ``energy_min_inferences`` calls,
   whose window is integrated from the power trace (never when there is no source);
5. the **sampler overhead**: alternating blocks of runs with the sampler stopped and running;
6. every sample through every exit once (accuracy per exit, the policy's scores), the current
   thresholds and a threshold sweep priced with the measured costs, and one real early-exit pass
   over the data at the current thresholds;
7. memory after the run, the power mode again (a change is noted), the report (atomic).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from hisd_edge import __version__
from hisd_edge.errors import InputError
from hisd_edge.profile import device as device_mod
from hisd_edge.profile import memory as memory_mod
from hisd_edge.profile import tradeoff
from hisd_edge.profile.energy import integrate_window, per_inference
from hisd_edge.profile.power import open_power_source
from hisd_edge.profile.sampler import PowerSampler, PowerTrace
from hisd_edge.profile.schema import KIND, SCHEMA_VERSION

LOG = logging.getLogger("hisd_edge.profile")


@dataclasses.dataclass
class ProfileConfig:
    """What to profile and how hard. Defaults suit a Jetson; tests and the demo shrink them."""

    bundle: str
    data: str = "default:test"
    samples: Optional[int] = None  # data subset for accuracy (None: all)
    backend: str = "onnxruntime"
    precision: str = "fp32"
    backend_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    batches: Sequence[int] = (1,)
    power: str = "auto"
    sysfs_root: Optional[str] = None
    tegrastats_log: Optional[str] = None
    tegrastats_interval_ms: int = 100
    gpu_index: int = 0
    sampling_period_ms: float = 20.0
    warmup: int = 10
    repeats: int = 100
    energy_min_s: float = 2.0
    energy_min_inferences: int = 50
    idle_s: float = 2.0
    sweep_points: int = 41
    overhead_blocks: int = 10  # (off, on) block pairs for the sampler overhead
    progress: bool = True
    command: str = ""


def latency_stats(values_ms: Sequence[float]) -> Dict[str, Any]:
    arr = np.asarray(values_ms, dtype=np.float64)
    if arr.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "min": None, "count": 0}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "count": int(arr.size),
    }


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="profile", unit="step", file=sys.stderr, disable=not enabled, leave=False)


def _wait_for_sample_after(sampler: PowerSampler, t: float, timeout_s: float) -> None:
    """Let the sampler take one sample past ``t`` so the window's end is covered."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        newest, failing = sampler.latest()
        if newest is not None and newest >= t:
            return
        if failing:
            return  # the source is failing: waiting will not help
        time.sleep(min(0.005, sampler.period_s / 4))


def _mode(device: Dict[str, Any]) -> Optional[str]:
    nvp = device.get("nvpmodel") or {}
    return nvp.get("mode_name")


class _Measurer:
    """Holds the open backend, sampler and data while the steps run."""

    def __init__(
        self, config: ProfileConfig, backend: Any, sampler: Optional[PowerSampler], tensors: np.ndarray, bar: Any
    ):
        self.config = config
        self.backend = backend
        self.sampler = sampler
        self.tensors = tensors
        self.bar = bar
        self.idle_power_mw: Optional[float] = None

    def batch_input(self, batch: int) -> np.ndarray:
        idx = np.arange(batch) % len(self.tensors)
        return np.ascontiguousarray(self.tensors[idx])

    def step(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(1)

    # -- idle ---------------------------------------------------------------------------------------
    def idle(self) -> Optional[Dict[str, Any]]:
        if self.sampler is None:
            return None
        # The window must start after the first sample, or its beginning is uncovered.
        _wait_for_sample_after(self.sampler, time.perf_counter(), 3 * self.sampler.period_s + 1.0)
        start = time.perf_counter()
        time.sleep(self.config.idle_s)
        end = time.perf_counter()
        _wait_for_sample_after(self.sampler, end, 3 * self.sampler.period_s + 1.0)
        window = integrate_window(self.sampler.trace(), start, end)
        self.idle_power_mw = window.mean_power_mw if window.complete else None
        self.step("idle baseline")
        return {
            "power_mw": window.mean_power_mw,
            "window_s": window.window_s,
            "covered_s": window.covered_s,
            "samples": window.samples,
            "complete": window.complete,
            "gaps": window.gaps,
        }

    # -- per batch ------------------------------------------------------------------------------------
    def measure_batch(self, batch: int, stage_bytes: List[Optional[int]]) -> Dict[str, Any]:
        from hisd_edge.profile.runner import loop_to_exit, run_to_exit

        cfg, backend = self.config, self.backend
        x = self.batch_input(batch)
        n = backend.num_stages
        for _ in range(cfg.warmup):
            run_to_exit(backend, x, n - 1)
        cumulative: List[List[float]] = [[] for _ in range(n)]
        per_stage: List[List[float]] = [[] for _ in range(n)]
        for k in range(n):
            for _ in range(cfg.repeats):
                wall_ms, stage_ms = run_to_exit(backend, x, k)
                cumulative[k].append(wall_ms)
                for j, ms in enumerate(stage_ms):
                    per_stage[j].append(ms)
            self.step(f"batch {batch}: latency to exit {k}")
        exits: List[Dict[str, Any]] = []
        energies: List[Optional[Dict[str, Any]]] = []
        for k in range(n):
            entry: Dict[str, Any] = {"index": k, "latency_ms": latency_stats(cumulative[k]), "energy_mj": None}
            result = None
            if self.sampler is not None:
                start, end, calls = loop_to_exit(backend, x, k, cfg.energy_min_s, cfg.energy_min_inferences)
                _wait_for_sample_after(self.sampler, end, 3 * self.sampler.period_s + 1.0)
                window = integrate_window(self.sampler.trace(), start, end)
                result = per_inference(window, calls * batch, self.idle_power_mw, self.sampler.period_s)
                self.step(f"batch {batch}: energy to exit {k}")
            if result is None:
                entry["energy_unavailable_reason"] = self._energy_reason()
                entry["energy"] = None
            else:
                entry["energy_mj"] = {"total": result["total"], "dynamic": result["dynamic"]}
                detail = dict(result["detail"])
                detail["per_call_mj"] = {
                    "total": result["total"] * batch,
                    "dynamic": None if result["dynamic"] is None else result["dynamic"] * batch,
                }
                entry["energy"] = detail
                if self.idle_power_mw is None:
                    entry["dynamic_unavailable_reason"] = "no complete idle baseline window"
            energies.append(entry["energy_mj"])
            exits.append(entry)
        stages: List[Dict[str, Any]] = []
        for j in range(n):
            # Stage j's energy is what reaching exit j costs beyond exit j-1 (per sample).
            energy: Optional[Dict[str, Any]] = None
            here = energies[j]
            prev: Optional[Dict[str, Any]] = energies[j - 1] if j > 0 else {"total": 0.0, "dynamic": 0.0}
            if here is not None and prev is not None:
                energy = {
                    "total": here["total"] - prev["total"],
                    "dynamic": None
                    if here["dynamic"] is None or prev["dynamic"] is None
                    else here["dynamic"] - prev["dynamic"],
                }
            stages.append(
                {
                    "index": j,
                    "latency_ms": latency_stats(per_stage[j]),
                    "energy_mj": energy,
                    "model_bytes": stage_bytes[j],
                }
            )
        return {"batch": batch, "stages": stages, "exits": exits}

    def _energy_reason(self) -> str:
        if self.sampler is None:
            return "no power source"
        trace = self.sampler.trace()
        if trace.gaps:
            return f"no power samples in the window: {trace.gaps[-1].reason}"
        return "no power samples in the window"

    # -- overhead -------------------------------------------------------------------------------------
    def sampler_overhead(self, batch: int) -> Optional[Dict[str, Any]]:
        """Latency to the last exit with the sampler stopped vs running, in alternating block pairs.

        Each pair (off, on) gives a ratio of block medians; the overhead is the median ratio minus
        one, which cancels slow drifts (thermal, other processes) that a single before/after would
        fold into the figure. Only the sampler thread is stopped in "off" blocks: a source that runs
        in the background (a tegrastats process, jtop) keeps running, so its own cost is in both
        blocks and not in the figure; ``source_kept_running`` records that.
        """
        if self.sampler is None or self.config.overhead_blocks <= 0:
            return None
        from hisd_edge.profile.runner import run_to_exit

        x = self.batch_input(batch)
        last = self.backend.num_stages - 1
        # Each block must span many sampling periods, or the sampler hardly runs inside it.
        block_s = max(10.0 * self.sampler.period_s, 0.25)
        ratios: List[float] = []
        without: List[float] = []
        with_sampler: List[float] = []
        for _ in range(self.config.overhead_blocks):
            medians = []
            for sampling in (False, True):
                if sampling and not self.sampler.running:
                    self.sampler.start()
                elif not sampling and self.sampler.running:
                    self.sampler.stop()
                block: List[float] = []
                deadline = time.perf_counter() + block_s
                while len(block) < 20 or time.perf_counter() < deadline:
                    block.append(run_to_exit(self.backend, x, last)[0])
                (with_sampler if sampling else without).extend(block)
                medians.append(float(np.median(block)))
            if medians[0] > 0:
                ratios.append(medians[1] / medians[0])
        if not self.sampler.running:
            self.sampler.start()
        self.step("sampler overhead")
        return {
            "batch": batch,
            "exit": last,
            "latency_ms_without": float(np.median(without)),
            "latency_ms_with": float(np.median(with_sampler)),
            "overhead_pct": 100.0 * (float(np.median(ratios)) - 1.0) if ratios else None,
            "block_pairs": len(ratios),
            "block_s": block_s,
            "runs_without": len(without),
            "runs_with": len(with_sampler),
            "source": self.sampler.source.name,
            "source_kept_running": bool(getattr(self.sampler.source, "runs_in_background", False)),
        }


def profile_bundle(config: ProfileConfig) -> Dict[str, Any]:
    """Run the whole measurement and return the profile (see :mod:`hisd_edge.profile.schema`)."""
    from hisd_edge.bundle import Bundle
    from hisd_edge.data import load_samples
    from hisd_edge.profile import runner
    from hisd_edge.runtime.thresholds import collect_exit_outputs

    if not config.batches or any(int(b) <= 0 for b in config.batches):
        raise InputError(f"--batch {','.join(map(str, config.batches))}: give positive batch sizes, e.g. 1,8,32")
    if config.repeats <= 0 or config.warmup < 0:
        raise InputError("--repeats must be positive and --warmup non-negative")
    if config.sampling_period_ms <= 0 or config.energy_min_s <= 0 or config.idle_s <= 0:
        raise InputError("--period-ms, --energy-seconds and --idle-seconds must be positive")
    batches = sorted({int(b) for b in config.batches})
    notes: List[str] = []

    bundle = Bundle.open(config.bundle)
    policy, policy_block, policy_note = runner.resolve_policy(bundle)
    if policy_note:
        notes.append(policy_note)
    device = device_mod.device_info(config.sysfs_root)
    source, discovery = open_power_source(
        config.power,
        sysfs_root=config.sysfs_root,
        tegrastats_log=config.tegrastats_log,
        tegrastats_interval_ms=config.tegrastats_interval_ms,
        gpu_index=config.gpu_index,
    )
    samples = load_samples(config.data, count=config.samples)
    tensors = samples.tensors(bundle.preprocessing)
    stage_bytes = [((s.get("files") or {}).get(config.precision) or {}).get("bytes") for s in bundle.stages]

    sampler: Optional[PowerSampler] = None
    # Progress steps: latency per exit and batch, plus (with a power source) idle, energy loops and overhead.
    phases = len(batches) * bundle.num_stages + 2
    if source.available:
        phases += 1 + len(batches) * bundle.num_stages + (1 if config.overhead_blocks > 0 else 0)
    bar = _progress(phases, config.progress)
    memory: Dict[str, Any] = {}
    try:
        if source.available:
            source.open()
            sampler = PowerSampler(source, period_s=config.sampling_period_ms / 1000.0)
        else:
            notes.append(f"energy not measured: {source.describe().get('reason', 'no power source')}")
        before = memory_mod.snapshot()
        backend = runner.open_backend(bundle, config.backend, config.precision, config.backend_options)
        with backend:
            max_batch = backend.max_batch
            if max_batch > 0 and batches[-1] > max_batch:
                how = (
                    f"hisd-edge build --batch 1,{batches[-1]}"
                    if config.backend == "tensorrt"
                    else "re-export the model with a dynamic batch axis"
                )
                raise InputError(
                    f"--batch {','.join(map(str, batches))}: the {config.backend} backend takes at most "
                    f"{max_batch} rows per run; rebuild with a larger --batch MAX ({how}) "
                    f"or pass --batch values up to {max_batch}"
                )
            after_load = memory_mod.snapshot()
            memory = {
                "before": before.to_dict(),
                "after_load": after_load.to_dict(),
                "load": memory_mod.difference(before, after_load),
            }
            if sampler is not None:
                sampler.start()
            measurer = _Measurer(config, backend, sampler, tensors, bar)
            idle = measurer.idle()
            if sampler is not None and measurer.idle_power_mw is None:
                notes.append("no complete idle baseline: dynamic energy is not reported")
            blocks = [measurer.measure_batch(b, stage_bytes) for b in batches]
            overhead = measurer.sampler_overhead(batches[0])
            every_exit = collect_exit_outputs(backend, tensors)
            outputs, confidences = every_exit.outputs, every_exit.confidences
            measurer.step("all exits on the data")
            headline = blocks[0]
            accuracy = _accuracy(policy, outputs, confidences, samples.labels, headline, config.sweep_points)
            early, call_ms = runner.early_exit_pass(backend, policy, tensors, headline["batch"], bundle.class_names)
            measurer.step("early-exit pass")
            accuracy["current"]["measured_mean_latency_ms"] = float(np.mean(call_ms)) if call_ms else None
            measured_fraction = np.bincount(early, minlength=bundle.num_stages) / max(len(early), 1)
            accuracy["current"]["measured_exit_fraction"] = measured_fraction.tolist()
            after_run = memory_mod.snapshot()
            memory["after_run"] = after_run.to_dict()
            memory["run"] = memory_mod.difference(after_load, after_run)
            memory["backend"] = memory_mod.backend_memory(backend)
            backend_block = backend.describe()
    finally:
        trace: Optional[PowerTrace] = sampler.stop() if sampler is not None else None
        source.close()
        bar.close()
    memory["model_bytes"] = sum(b for b in stage_bytes if b) or None

    device_after = device_mod.device_info(config.sysfs_root)
    if _mode(device) != _mode(device_after):
        notes.append(
            f"the power mode changed during the run ({_mode(device)} -> {_mode(device_after)}): "
            "the idle baseline and the loops may not be comparable; profile again"
        )
    if device.get("jetson_clocks") and (device.get("jetson_clocks") or {}).get("state") == "off":
        notes.append(
            "jetson_clocks is off: clocks follow the load (DVFS), so latency and energy vary more; "
            "sudo jetson_clocks pins them"
        )
    power = _power_block(source, discovery, trace, sampler, config)
    if trace is not None and trace.gaps:
        notes.append(
            f"the power source had {len(trace.gaps)} gap(s) (first: {trace.gaps[0].reason}); "
            "energy figures cover only the sampled parts and are flagged incomplete"
        )
    if power.get("total") == "sum of rails" and source.available:
        notes.append(
            "total power is the sum of the metered rails (no VDD_IN on this board): the carrier board is not included"
        )
    if overhead and overhead.get("overhead_pct") is not None and overhead["overhead_pct"] > 2.0:
        notes.append(
            f"the power sampler slowed inference by {overhead['overhead_pct']:.1f}% (target <= 2%): "
            "use a longer --period-ms"
        )
    if overhead and overhead.get("source_kept_running"):
        notes.append(
            f"the sampler-overhead figure covers only the sampling thread: the {overhead['source']} source kept "
            "running during the 'sampler off' blocks, so its own cost is not in it (a polled source such as --power ina3221 has no such background cost)"
        )
    if samples.labels is None:
        notes.append("the data has no labels: accuracy is not reported, only exit distributions")

    headline = blocks[0]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        "command": config.command,
        "bundle": {
            "name": bundle.name,
            "path": str(bundle.root),
            "stages": bundle.num_stages,
            "exits": len(bundle.exits),
            "class_names": bundle.class_names,
            "stage_bytes": stage_bytes,
        },
        "device": device,
        "backend": backend_block,
        "precision": config.precision,
        "power": power,
        "policy": policy_block,
        "settings": {
            "data": config.data,
            "samples": len(tensors),
            "batches": batches,
            "warmup": config.warmup,
            "repeats": config.repeats,
            "energy_min_s": config.energy_min_s,
            "energy_min_inferences": config.energy_min_inferences,
            "idle_s": config.idle_s,
            "sweep_points": config.sweep_points,
        },
        "batch": headline["batch"],
        "stages": headline["stages"],
        "exits": headline["exits"],
        "batches": blocks,
        "idle": idle,
        "memory": memory,
        "accuracy": accuracy,
        "overhead": {
            "sampler": overhead,
            **(
                {}
                if overhead
                else {
                    "reason": "no power source: nothing was sampled"
                    if sampler is None
                    else "not measured (--overhead-pairs 0)"
                }
            ),
        },
        "notes": notes,
    }


def _power_block(
    source: Any,
    discovery: List[Dict[str, Any]],
    trace: Optional[PowerTrace],
    sampler: Optional[PowerSampler],
    config: ProfileConfig,
) -> Dict[str, Any]:
    described = dict(trace.source if trace is not None else source.describe())
    described.pop("min_period_s", None)
    block: Dict[str, Any] = {"source": described.pop("source", source.name), "available": bool(source.available)}
    if not source.available:
        block["reason"] = described.pop("reason", "no power source")
    block.update(described)
    block["sampling_period_ms"] = sampler.period_s * 1000.0 if sampler is not None else None
    block["samples"] = len(trace.samples) if trace is not None else 0
    block["gaps"] = [g.to_dict() for g in trace.gaps] if trace is not None else []
    block["discovery"] = discovery
    block["sysfs_root"] = config.sysfs_root
    if trace is not None and trace.samples:
        # The whole trace, for plots and for checking a figure by hand (times from the first sample).
        t0 = trace.samples[0].time_s
        block["trace_origin_s"] = t0  # gaps' start_s/end_s are on the same clock
        block["trace"] = {
            "time_s": [round(s.time_s - t0, 5) for s in trace.samples],
            "total_mw": [round(float(s.total_mw), 3) for s in trace.samples],
        }
    return block


def _accuracy(
    policy: Any,
    outputs: List[np.ndarray],
    confidences: List[Optional[np.ndarray]],
    labels: Optional[np.ndarray],
    headline: Dict[str, Any],
    sweep_points: int,
) -> Dict[str, Any]:
    """Per-exit accuracy, the current thresholds and a sweep, from one pass through every exit."""
    n_exits = len(outputs)
    scores = policy.all_scores(confidences, outputs)
    correct = None
    per_exit = None
    if labels is not None and policy.exit_kind != "embedding":
        predictions = np.stack([np.argmax(o, axis=1) for o in outputs], axis=1)
        correct = predictions == np.asarray(labels).reshape(-1, 1)
        per_exit = correct.mean(axis=0).tolist()
    latency = [(e["latency_ms"] or {}).get("p50") for e in headline["exits"]]
    energy = [(e["energy_mj"] or {}).get("total") if e.get("energy_mj") else None for e in headline["exits"]]
    score_thresholds = [policy.score_threshold(k) for k in range(n_exits)]
    current_t = [None if math.isinf(t) and t > 0 else t for t in score_thresholds[:-1]] + [None]
    current = tradeoff.evaluate(scores, correct, current_t, latency, energy)
    current["thresholds"] = list(policy.thresholds)
    finite = scores[:, :-1][np.isfinite(scores[:, :-1])]
    grid: List[float] = []
    if finite.size:
        grid = sorted(set(np.quantile(finite, np.linspace(0.0, 1.0, max(2, sweep_points))).tolist()))
    sweep = tradeoff.sweep(scores, correct, latency, energy, [*grid, None])  # None: never leave early
    for point in sweep:  # report thresholds as the policy stores them (Pareto flags do not depend on them)
        stored = policy.to_stored(point["threshold"]) if point["threshold"] is not None else None
        point["threshold"] = stored
        point["thresholds"] = [stored] * (n_exits - 1) + [None]
    return {
        "samples": len(outputs[0]),
        "labelled": correct is not None,
        "policy": policy.kind,
        "per_exit_top1": per_exit,
        "current": current,
        "sweep": sweep,
    }


def run_profile(config: ProfileConfig, out_dir: Path) -> Dict[str, Any]:
    """Profile and write the report directory; returns {"profile", "report"}."""
    from hisd_edge.profile.report import check_replaceable, write_report

    check_replaceable(Path(out_dir))  # before minutes of measuring, not after
    profile = profile_bundle(config)
    report = write_report(profile, Path(out_dir))
    return {"profile": profile, "report": report}


def format_summary(profile: Dict[str, Any]) -> str:
    """The per-exit table printed after a profile (and by the demo)."""
    accuracy = profile.get("accuracy") or {}
    top1 = accuracy.get("per_exit_top1") or []
    fractions = (accuracy.get("current") or {}).get("exit_fraction") or []
    device = profile.get("device") or {}
    lines = [
        f"{profile['bundle']['name']} on {device.get('model')} · {profile['backend'].get('backend')} "
        f"{profile['precision']} · batch {profile['batch']} · power: {profile['power']['source']}",
        f"{'exit':>4}  {'p50 ms':>9}  {'p90 ms':>9}  {'p99 ms':>9}  {'energy mJ':>10}  {'dyn mJ':>9}  {'top-1':>7}  {'leaves':>7}",
    ]

    def fmt(v: Any, width: int, spec: str = ".4g") -> str:
        return f"{'n/a':>{width}}" if v is None else f"{v:>{width}{spec}}"

    for e in profile["exits"]:
        k = e["index"]
        lat, energy = e["latency_ms"], e.get("energy_mj") or {}
        lines.append(
            f"{k:>4}  {fmt(lat['p50'], 9)}  {fmt(lat['p90'], 9)}  {fmt(lat['p99'], 9)}  "
            f"{fmt(energy.get('total'), 10)}  {fmt(energy.get('dynamic'), 9)}  "
            f"{fmt(100 * top1[k] if k < len(top1) and top1[k] is not None else None, 6, '.2f')}%  "
            f"{fmt(100 * fractions[k] if k < len(fractions) else None, 6, '.1f')}%"
        )
    current = accuracy.get("current") or {}
    if current.get("accuracy") is not None:
        lines.append(
            f"at the current thresholds: top-1 {100 * current['accuracy']:.2f}%, expected mean latency "
            f"{current.get('mean_latency_ms') or float('nan'):.4g} ms, measured "
            f"{current.get('measured_mean_latency_ms') or float('nan'):.4g} ms per call"
        )
    return "\n".join(lines)


def profile_default(
    bundle: str,
    out_dir: str,
    *,
    data: str = "default:test",
    samples: Optional[int] = 500,
    power: str = "auto",
    progress: bool = False,
) -> Dict[str, Any]:
    """Profile ``bundle`` on this machine with quick settings and write the HTML report (for the demo).

    Power is discovered as ``--power auto`` does; on a machine without telemetry the report says
    energy is unavailable and why (never an estimate). Returns {"profile", "report", "summary"}:
    the profile dict, what was written (``report["html"]`` is the page) and a printable table.
    """
    config = ProfileConfig(
        bundle=str(bundle),
        data=data,
        samples=samples,
        batches=(1,),
        power=power,
        warmup=5,
        repeats=50,
        energy_min_s=1.0,
        energy_min_inferences=20,
        idle_s=1.0,
        sweep_points=41,
        overhead_blocks=6,
        progress=progress,
        command=f"hisd_edge.profile.profile_default({bundle!r})",
    )
    result = run_profile(config, Path(out_dir))
    result["summary"] = format_summary(result["profile"])
    return result
