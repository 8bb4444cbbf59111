"""``profile_bundle``: measure what each exit costs on this device and write the report.

The run, in order (one clock for latency, windows and power samples; see :mod:`.clock`):

1. device, power mode and clocks (nvpmodel, jetson_clocks with CPU/GPU/EMC); the power source
   (fails fast, naming the unreadable file and the fix) and its sensor timing, which sets the
   settling time and the shortest window (:mod:`.sensor`: a window the sensor cannot resolve is
   refused, naming the minimum); the data; the bundle's policy;
2. memory before and after the backend loads, and per exit: what first running stages 0..k takes,
   next to what they hold by construction (:mod:`.memory`);
3. the sampler starts (in its own process for sysfs monitors); warm-up calls, then warm-up to
   thermal steady state on the deepest exit;
4. per batch size: latency in ``repeats`` interleaved rounds (every exit and one real early-exit
   call, seeded random order), then the energy design of :mod:`.measure` (idle brackets, exits and
   the real early-exit loop in seeded random order, ``rounds`` times, each block settled for 5 tau);
5. the sampler's overhead at every exit (alternating paused / polling block pairs);
6. every sample through every exit once (accuracy, the policy's scores), the sweep (per-exit
   thresholds, on the calibration data) priced with the measured costs, one real early-exit pass
   over the data at the current thresholds;
6b. the headline: early exit vs the monolithic model, per sample at batch 1, by the one method
   ``bench`` and ``demo`` use (:func:`hisd_edge.runtime.bench.measure_early_exit`);
7. the analysis (:mod:`.analysis`: per exit and stage, means and intervals over rounds, per rail;
   the model check), conditions over the run (clocks, temperatures, throttling, mode: a change is
   flagged), the report (atomic).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from hisd_edge import __version__
from hisd_edge.errors import HisdError, InputError
from hisd_edge.profile import analysis, tradeoff
from hisd_edge.profile import conditions as conditions_mod
from hisd_edge.profile import device as device_mod
from hisd_edge.profile import memory as memory_mod
from hisd_edge.profile.clock import SystemClock, is_virtual
from hisd_edge.profile.measure import Block, Measurer, integrate_blocks, schedule
from hisd_edge.profile.power import open_power_source
from hisd_edge.profile.power.base import sysfs_root as resolve_root
from hisd_edge.profile.power.rails import describe_rails
from hisd_edge.profile.sampler import PowerTrace, make_sampler
from hisd_edge.profile.schema import KIND, SCHEMA_VERSION
from hisd_edge.profile.sensor import SensorTiming
from hisd_edge.profile.stats import DEFAULT_CONFIDENCE

LOG = logging.getLogger("hisd_edge.profile")
MAX_TRACE_POINTS = 20000  # samples kept in profile.json (evenly thinned beyond; the energy used all)


@dataclasses.dataclass
class ProfileConfig:
    """What to profile and how hard. Defaults suit a Jetson; tests and the demo shrink them.

    ``energy_window_s`` / ``idle_s`` None: the sensor's default (at least 30 s on a Jetson's INA3221,
    5 s on an energy counter); ``sampling_period_ms`` None: a quarter of the sensor's time constant,
    at least 20 ms; ``warmup_s`` None: 60 s on an averaging sensor, 20 s on a counter, none without power.
    """

    bundle: str
    data: str = "default:test"
    samples: Optional[int] = None  # data subset for accuracy (None: all)
    backend: str = "onnxruntime"
    precision: str = "fp32"
    backend_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    batches: Sequence[int] = (1,)
    power: str = "auto"
    rails: Optional[Sequence[str]] = None
    sysfs_root: Optional[str] = None
    tegrastats_log: Optional[str] = None
    tegrastats_interval_ms: int = 100
    gpu_index: int = 0
    sampling_period_ms: Optional[float] = None
    sampler: str = "auto"  # auto | process | thread
    warmup: int = 10  # calls per batch size before anything is timed
    warmup_s: Optional[float] = None  # longest warm-up to thermal steady state
    repeats: int = 100  # latency rounds
    rounds: int = 3  # energy rounds
    seed: int = 0
    energy_window_s: Optional[float] = None
    energy_min_inferences: int = 50
    idle_s: Optional[float] = None
    confidence: float = DEFAULT_CONFIDENCE
    model_check: bool = True
    sweep_points: int = 41
    # The threshold sweep's data: None = the data the bundle's thresholds were calibrated on (their
    # certificate's), else ``data``. Never the test split when a validation split is known.
    sweep_data: Optional[str] = None
    headline: bool = True  # early exit vs the monolithic model, by the bench's method (needs the full model)
    overhead_blocks: int = 10  # (paused, polling) block pairs per exit for the sampler overhead
    progress: bool = True
    command: str = ""


def latency_stats(values_ms: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Dict[str, Any]:
    return analysis.latency_stats(values_ms, confidence)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="profile", unit="step", file=sys.stderr, disable=not enabled, leave=False)


def _mode(device: Dict[str, Any]) -> Optional[str]:
    nvp = device.get("nvpmodel") or {}
    return nvp.get("mode_name")


def _check(config: ProfileConfig) -> List[int]:
    if not config.batches or any(int(b) <= 0 for b in config.batches):
        raise InputError(f"--batch {','.join(map(str, config.batches))}: give positive batch sizes, e.g. 1,8,32")
    if config.repeats <= 1 or config.warmup < 0:
        raise InputError("--repeats must be at least 2 (an interval needs two) and --warmup non-negative")
    if config.rounds < 1:
        raise InputError(f"--rounds {config.rounds}: give at least 1 (3 or more for a useful interval)")
    if not 0.5 <= config.confidence < 1.0:
        raise InputError(f"--confidence {config.confidence}: give a level between 0.5 and 1, e.g. 0.95")
    for flag, value in (
        ("--period-ms", config.sampling_period_ms),
        ("--energy-seconds", config.energy_window_s),
        ("--idle-seconds", config.idle_s),
    ):
        if value is not None and value <= 0:
            raise InputError(f"{flag} {value:g}: must be positive")
    if config.warmup_s is not None and config.warmup_s < 0:
        raise InputError(f"--warmup-seconds {config.warmup_s:g}: must be 0 or more")
    if config.sampler not in ("auto", "process", "thread"):
        raise InputError(f"--sampler {config.sampler}: choose auto, process or thread")
    return sorted({int(b) for b in config.batches})


@dataclasses.dataclass
class _Plan:
    """Windows and periods chosen for this source (from its sensor timing and the config)."""

    timing: Optional[SensorTiming]
    window_s: float
    idle_s: float
    settle_s: float
    period_s: float
    warmup_s: float
    warmup_block_s: float

    def to_dict(self) -> Dict[str, Any]:
        return {
            "window_s": self.window_s,
            "idle_s": self.idle_s,
            "settle_s": self.settle_s,
            "sampling_period_ms": self.period_s * 1000.0,
            "warmup_max_s": self.warmup_s,
            "warmup_block_s": self.warmup_block_s,
            "independent_readings_per_window": None
            if self.timing is None
            else self.timing.independent_readings(self.window_s),
        }


def plan_windows(config: ProfileConfig, timing: Optional[SensorTiming], source_name: str) -> _Plan:
    """Window, settle and sampling period for ``timing``; refuse windows shorter than the sensor allows."""
    if timing is None:
        return _Plan(None, 0.0, 0.0, 0.0, 0.0, config.warmup_s or 0.0, 0.0)
    if config.energy_window_s is not None:
        timing.check_window(config.energy_window_s, source_name, "--energy-seconds")
    if config.idle_s is not None:
        timing.check_window(config.idle_s, source_name, "--idle-seconds")
    window = config.energy_window_s if config.energy_window_s is not None else timing.default_window_s
    idle = config.idle_s if config.idle_s is not None else window
    if config.sampling_period_ms is not None:
        period = config.sampling_period_ms / 1000.0
    else:
        period = max(0.02, timing.tau_s / 4.0, timing.refresh_s)
    averaging = timing.kind == "averaging"
    warmup = config.warmup_s if config.warmup_s is not None else (60.0 if averaging else 20.0)
    block = max(timing.settle_s + 20.0 * max(timing.tau_s, period), 2.0)
    return _Plan(timing, window, idle, timing.settle_s, period, warmup, min(block, max(warmup, 1e-9)))


def profile_bundle(
    config: ProfileConfig,
    *,
    clock: Optional[Any] = None,
    open_backend: Optional[Callable[..., Any]] = None,
) -> Dict[str, Any]:
    """Run the whole measurement and return the profile (see :mod:`hisd_edge.profile.schema`).

    ``clock`` (default: the system's CLOCK_MONOTONIC) and ``open_backend`` (default: the runtime's)
    are for simulations: a :class:`~hisd_edge.profile.clock.VirtualClock` and a backend that spends
    virtual time.
    """
    from hisd_edge.bundle import Bundle
    from hisd_edge.data import load_samples
    from hisd_edge.profile import runner
    from hisd_edge.runtime.thresholds import collect_exit_outputs

    batches = _check(config)
    clock = clock or SystemClock()
    notes: List[str] = []

    bundle = Bundle.open(config.bundle)
    policy, policy_block, policy_note = runner.resolve_policy(bundle)
    if policy_note:
        notes.append(policy_note)
    root = resolve_root(config.sysfs_root)
    device = device_mod.device_info(config.sysfs_root)
    source, discovery = open_power_source(
        config.power,
        sysfs_root=config.sysfs_root,
        tegrastats_log=config.tegrastats_log,
        tegrastats_interval_ms=config.tegrastats_interval_ms,
        gpu_index=config.gpu_index,
        clock=clock,
        rails=config.rails,
    )
    timing = source.timing() if source.available else None
    plan = plan_windows(config, timing, source.name)
    samples = load_samples(config.data, count=config.samples)
    tensors = samples.tensors(bundle.preprocessing)
    stage_bytes = [((s.get("files") or {}).get(config.precision) or {}).get("bytes") for s in bundle.stages]
    n = bundle.num_stages
    energy_on = source.available
    early_on = config.model_check

    blocks_per_batch = config.rounds * (n + (1 if early_on else 0)) + config.rounds + 1 if energy_on else 0
    steps = len(batches) * (1 + blocks_per_batch) + 2 + (1 if plan.warmup_s > 0 else 0) + (1 if energy_on else 0)
    bar = _progress(steps, config.progress)

    def step(text: str) -> None:
        bar.set_postfix_str(text, refresh=False)
        bar.update(1)

    sampler: Any = None
    memory: Dict[str, Any] = {}
    blocks: List[Block] = []
    latency: Dict[int, Dict[str, Any]] = {}
    warmup_record: Optional[Dict[str, Any]] = None
    overhead: Optional[List[Dict[str, Any]]] = None
    trace: Optional[PowerTrace] = None
    start_snapshot = conditions_mod.snapshot(root, clock())
    try:
        if energy_on:
            source.open()
            sampler = make_sampler(source, plan.period_s, clock, config.sampler)
        else:
            notes.append(f"energy not measured: {source.describe().get('reason', 'no power source')}")
        before = memory_mod.snapshot()
        backend_options = dict(config.backend_options)
        if config.headline and open_backend is None:
            backend_options["load_full_model"] = True  # the headline compares with the monolithic model
        backend = (open_backend or runner.open_backend)(bundle, config.backend, config.precision, backend_options)
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
            measurer = Measurer(backend, clock, sampler, tensors, policy, bundle.class_names, root, step)
            backend_info = memory_mod.backend_memory(backend)
            x0 = measurer.batch_input(batches[0])
            memory["per_exit"] = _memory_per_exit(backend, measurer, x0, stage_bytes, backend_info)
            if sampler is not None:
                sampler.start()
                # the first window must not open before the first sample (a sampling process takes a moment)
                measurer.wait_for_sample_after(clock(), 10.0 + 3 * sampler.period_s)
            for b in batches:
                x = measurer.batch_input(b)
                for _ in range(config.warmup):
                    measurer.run_to_exit(x, n - 1)
            if plan.warmup_s > 0:
                warmup_record = measurer.warm_up(batches[0], plan.warmup_s, plan.warmup_block_s, plan.settle_s)
                if warmup_record.get("steady") is False:
                    notes.append(
                        f"warm-up did not reach a thermal steady state in {plan.warmup_s:g} s (power or temperature "
                        "still moving): early rounds may run cooler; the interleaved order spreads this over every "
                        "exit. Raise --warmup-seconds"
                    )
            for b in batches:
                latency[b] = measurer.latency_rounds(b, config.repeats, config.seed, early_on)
                if energy_on:
                    for round_index, kind, k in schedule(n, config.rounds, config.seed + b, early_on):
                        blocks.append(
                            measurer.run_block(
                                kind,
                                k,
                                b,
                                round_index,
                                plan.settle_s,
                                plan.idle_s if kind == "idle" else plan.window_s,
                                config.energy_min_inferences if kind != "idle" else 0,
                            )
                        )
            if sampler is not None:
                overhead = measurer.overhead(batches[0], config.overhead_blocks)
            every_exit = collect_exit_outputs(backend, tensors)
            step("all exits on the data")
            early, _call_ms = runner.early_exit_pass(backend, policy, tensors, batches[0], bundle.class_names)
            step("early-exit pass")
            sweep_source = _sweep_source(config, bundle)
            sweep_samples = samples
            if sweep_source != config.data:
                try:
                    sweep_samples = load_samples(sweep_source)
                except HisdError as exc:
                    notes.append(f"the sweep's data {sweep_source} could not be read ({exc}); swept on {config.data}")
                    sweep_source = config.data
            if sweep_source == config.data:
                notes.append(
                    f"the threshold sweep ran on {config.data}, the data the other figures are measured on: thresholds "
                    "picked from it are tuned on their own test; give --sweep-data with validation data"
                )
            sweep_exit = (
                every_exit
                if sweep_samples is samples
                else collect_exit_outputs(backend, sweep_samples.tensors(bundle.preprocessing))
            )
            headline = _headline(config, bundle, backend, policy, tensors, samples)
            after_run = memory_mod.snapshot()
            memory["after_run"] = after_run.to_dict()
            memory["run"] = memory_mod.difference(after_load, after_run)
            memory["backend"] = memory_mod.backend_memory(backend)
            backend_block = backend.describe()
            snapshots = list(measurer.snapshots)
    finally:
        if sampler is not None:
            trace = sampler.stop()
        source.close()
        bar.close()
    memory["model_bytes"] = sum(b for b in stage_bytes if b) or None
    end_snapshot = conditions_mod.snapshot(root, clock())

    rails: List[str] = list((trace.source if trace is not None else source.describe()).get("rails") or [])
    if trace is not None:
        integrate_blocks(blocks, trace, rails)
    per_batch: List[Dict[str, Any]] = []
    for b in batches:
        per_batch.append(
            _batch_figures(
                b, n, [x for x in blocks if x.batch == b], latency[b], rails, stage_bytes, config, energy_on, source
            )
        )

    first = per_batch[0]
    accuracy = _accuracy(
        policy,
        every_exit.outputs,
        every_exit.confidences,
        samples.labels_for(bundle.class_names, config.data),
        first,
        config.sweep_points,
        sweep=(
            sweep_exit.outputs,
            sweep_exit.confidences,
            sweep_samples.labels_for(bundle.class_names, sweep_source),
            sweep_source,
        ),
    )
    measured_fraction = np.bincount(early, minlength=n) / max(len(early), 1)
    accuracy["current"]["measured_exit_fraction"] = measured_fraction.tolist()
    accuracy["current"]["measured_mean_latency_ms"] = (
        (first.get("model_check") or {}).get("latency_ms", {}).get("measured")
    )
    if samples.labels is None:
        notes.append("the data has no labels: accuracy is not reported, only exit distributions")

    device_after = device_mod.device_info(config.sysfs_root)
    conditions = _conditions(device, device_after, [start_snapshot, *snapshots, end_snapshot], notes)
    power = _power_block(source, discovery, trace, sampler, plan, rails)
    _power_notes(power, trace, overhead, source, notes, timing)
    for block in per_batch:
        notes.extend(block.pop("notes", []))

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
        "sensor": None if timing is None else timing.to_dict(),
        "conditions": conditions,
        "policy": policy_block,
        "settings": {
            "data": config.data,
            "samples": len(tensors),
            "batches": batches,
            "warmup": config.warmup,
            "repeats": config.repeats,
            "rounds": config.rounds,
            "seed": config.seed,
            "confidence": config.confidence,
            "energy_min_inferences": config.energy_min_inferences,
            "sweep_points": config.sweep_points,
            "clock": "virtual" if is_virtual(clock) else "CLOCK_MONOTONIC",
            **plan.to_dict(),
        },
        "design": {
            "rounds": config.rounds,
            "seed": config.seed,
            "order": [
                [b.label for b in blocks if b.batch == batch and b.round == r]
                for batch in batches[:1]
                for r in range(config.rounds + 1)
            ]
            if blocks
            else [],
            "warmup": warmup_record,
        },
        "batch": first["batch"],
        "stages": first["stages"],
        "exits": first["exits"],
        "model_check": first.get("model_check"),
        "batches": per_batch,
        "idle": first.get("idle"),
        "headline": headline,
        "blocks": [x.to_dict(origin=power.get("trace_origin_s") or 0.0) for x in blocks],
        "memory": memory,
        "accuracy": accuracy,
        "overhead": {
            "sampler": overhead[-1] if overhead else None,
            "per_exit": overhead,
            "mode": getattr(sampler, "mode", None),
            "source_kept_running": bool(getattr(source, "runs_in_background", False)) if sampler is not None else None,
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


def _memory_per_exit(
    backend: Any, measurer: Measurer, x: np.ndarray, stage_bytes: List[Optional[int]], info: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    def cuda_free() -> Optional[int]:
        report = memory_mod.backend_memory(backend) or {}
        value = report.get("cuda_free_bytes")
        return int(value) if isinstance(value, (int, float)) else None

    measured = memory_mod.measured_per_exit(backend.num_stages, lambda k: measurer.run_to_exit(x, k), cuda_free)
    static = memory_mod.static_per_exit(stage_bytes, info)
    return {
        "static": static,
        "measured": measured,
        "shared_buffers_bytes": {
            key: (info or {}).get(key)
            for key in ("device_buffers_bytes", "host_buffers_bytes")
            if (info or {}).get(key)
        },
        "note": "static: what stages 0..k hold by construction (stage files; TensorRT plans, weights and context "
        "memory where the backend reports them); measured: what first running stages 0..k took after loading, on top "
        "of exits 0..k-1 (process RSS, Tegra NvMap, CUDA free memory where reported); system_mem_available_taken_mib "
        "is system-wide",
    }


def _batch_figures(
    batch: int,
    n: int,
    blocks: List[Block],
    latency: Dict[str, Any],
    rails: List[str],
    stage_bytes: List[Optional[int]],
    config: ProfileConfig,
    energy_on: bool,
    source: Any,
) -> Dict[str, Any]:
    """Per-exit and per-stage figures of one batch size, with intervals."""
    confidence = config.confidence
    exits: List[Dict[str, Any]] = [
        {"index": k, "latency_ms": analysis.latency_stats(latency["per_exit"][k], confidence)} for k in range(n)
    ]
    stages: List[Dict[str, Any]] = [
        {
            "index": j,
            "latency_ms": analysis.latency_stats(latency["per_stage"][j], confidence),
            "model_bytes": stage_bytes[j],
        }
        for j in range(n)
    ]
    notes: List[str] = []
    result: Dict[str, Any] = {"batch": batch, "stages": stages, "exits": exits}
    energy = analysis.analyse_batch(blocks, n, rails, confidence) if energy_on else None
    for k in range(n):
        e = exits[k]
        found = energy["exits"][k] if energy else None
        if found and found["energy_mj"] is not None:
            e["energy_mj"] = found["energy_mj"]
            e["energy"] = found["energy"]
            e["rails_mj"] = found["rails_mj"]
            if e["energy"] is not None:
                e["energy"]["per_call_mj"] = {
                    "total": e["energy_mj"]["total"] * batch,
                    "dynamic": None if e["energy_mj"]["dynamic"] is None else e["energy_mj"]["dynamic"] * batch,
                }
            if e["energy_mj"]["dynamic"] is None:
                e["dynamic_unavailable_reason"] = "no usable idle bracket window"
        else:
            e["energy_mj"] = None
            e["energy"] = None
            e["energy_unavailable_reason"] = _energy_reason(source, blocks, k, energy_on)
    for j in range(n):
        found = energy["stages"][j] if energy else None
        stages[j]["energy_mj"] = found.get("energy_mj") if found else None
        stages[j]["rails_mj"] = found.get("rails_mj") if found else None
    if energy:
        result["idle"] = energy["idle"]
        if energy["excluded_blocks"]:
            labels = ", ".join(
                f"round {b['round']} {b['kind']} {b['exit'] if b['exit'] is not None else ''}".strip()
                for b in energy["excluded_blocks"][:5]
            )
            notes.append(
                f"batch {batch}: {len(energy['excluded_blocks'])} window(s) left out of the energy figures because the "
                f"power source had gaps in them ({labels})"
            )
        for kind in ("dynamic", "total"):
            pairs = analysis.indistinguishable([e.get("energy_mj") for e in exits], kind)
            if pairs:
                notes.append(
                    f"batch {batch}: {kind} energy cannot tell exits "
                    + ", ".join(f"{a} and {b}" for a, b in pairs)
                    + f" apart (their {int(100 * confidence)}% intervals overlap); more --rounds or longer windows narrow them"
                )
        for j, s in enumerate(stages):
            em = s.get("energy_mj") or {}
            if em.get("dynamic") is not None and em["dynamic"] < -1e-12:
                notes.append(
                    f"batch {batch}: stage {j}'s dynamic energy came out negative ({em['dynamic']:.3g} mJ, interval "
                    f"{_fmt_ci(em.get('dynamic_ci'))}): within noise of zero unless the interval excludes it"
                )
    check: Dict[str, Any] = {"batch": batch}
    lat_check = analysis.latency_check(latency, confidence) if config.model_check else None
    if lat_check:
        check["latency_ms"] = lat_check
    if energy and energy.get("model_check_energy"):
        check["energy_mj"] = energy["model_check_energy"]
    if len(check) > 1:
        check["verdict"] = _verdict(check)
        result["model_check"] = check
        if "additive model is off" in check["verdict"]:
            notes.append(
                f"batch {batch}: the real early-exit pass did not cost what the per-exit figures predict ({check['verdict']}); "
                "thresholds priced with per-exit costs mis-price this batch size (the exit decision's own cost, batch "
                "compaction or DVFS)"
            )
    result["notes"] = notes
    return result


def _fmt_ci(ci: Optional[Sequence[float]]) -> str:
    return "n/a" if not ci else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def _verdict(check: Dict[str, Any]) -> str:
    """One line: whether the measured early-exit pass agrees with the per-exit prediction."""
    parts = []
    for label, entry in (
        ("latency", check.get("latency_ms")),
        ("dynamic energy", (check.get("energy_mj") or {}).get("dynamic")),
        ("total energy", (check.get("energy_mj") or {}).get("total")),
    ):
        if not entry or entry.get("ratio") is None:
            continue
        ci = entry.get("difference_ci")
        agrees = ci is None or (ci[0] <= 0.0 <= ci[1])
        parts.append(
            f"{label}: measured {entry['ratio']:.3f}x the prediction"
            + (
                " (within the interval)"
                if agrees
                else " (the difference's interval excludes 0: the additive model is off)"
            )
        )
    return "; ".join(parts) or "not enough data"


def _energy_reason(source: Any, blocks: List[Block], k: int, energy_on: bool) -> str:
    if not energy_on:
        return "no power source"
    mine = [b for b in blocks if b.kind == "exit" and b.exit == k]
    gaps = [g for b in mine if b.energy.get("total") is not None for g in b.energy["total"].gaps]
    if gaps:
        return f"no complete power window: {gaps[-1]['reason']}"
    return "no power samples in the windows"


def _conditions(
    device: Dict[str, Any], device_after: Dict[str, Any], snapshots: List[Dict[str, Any]], notes: List[str]
) -> Dict[str, Any]:
    summary = conditions_mod.summarize(snapshots, device.get("jetson_clocks"))
    flags = list(summary["flags"])
    if _mode(device) != _mode(device_after):
        flags.append(f"the power mode changed during the run ({_mode(device)} -> {_mode(device_after)})")
    before_jc, after_jc = (
        (device.get("jetson_clocks") or {}).get("state"),
        (device_after.get("jetson_clocks") or {}).get("state"),
    )
    if before_jc != after_jc:
        flags.append(f"jetson_clocks changed during the run ({before_jc} -> {after_jc})")
    for flag in flags:
        notes.append(f"{flag}: the idle brackets and the loops may not be comparable; profile again")
    jc = device.get("jetson_clocks") or {}
    if jc.get("state") == "off":
        notes.append(
            "jetson_clocks is off: clocks follow the load (DVFS), so latency and energy vary more; "
            "sudo jetson_clocks pins them"
        )
    elif jc.get("state") == "on" and jc.get("emc") is None and jc.get("emc_reason"):
        notes.append(f"the EMC (memory) clock could not be checked: {jc['emc_reason']}")
    return {
        "nvpmodel_start": device.get("nvpmodel"),
        "nvpmodel_end": device_after.get("nvpmodel"),
        "jetson_clocks_start": device.get("jetson_clocks"),
        "jetson_clocks_end": device_after.get("jetson_clocks"),
        "summary": {k: v for k, v in summary.items() if k != "flags"},
        "flags": flags,
        "trusted": not flags,
        "start": snapshots[0] if snapshots else None,
        "end": snapshots[-1] if snapshots else None,
    }


def _power_block(
    source: Any,
    discovery: List[Dict[str, Any]],
    trace: Optional[PowerTrace],
    sampler: Any,
    plan: _Plan,
    rails: List[str],
) -> Dict[str, Any]:
    described = dict(trace.source if trace is not None else source.describe())
    described.pop("min_period_s", None)
    block: Dict[str, Any] = {"source": described.pop("source", source.name), "available": bool(source.available)}
    if not source.available:
        block["reason"] = described.pop("reason", "no power source")
    block.update(described)
    block["sampling_period_ms"] = sampler.period_s * 1000.0 if sampler is not None else None
    block["sampler"] = getattr(sampler, "mode", None)
    block["samples"] = len(trace.samples) if trace is not None else 0
    block["gaps"] = [g.to_dict() for g in trace.gaps] if trace is not None else []
    block["discovery"] = discovery
    quantity = (described.get("total_rule") or {}).get("quantity")
    if rails and source.available and quantity not in (None, "gpu_board", "cpu_packages"):
        block["rails_covered"] = describe_rails(rails)
    if trace is not None and trace.samples:
        # The whole trace, for plots and for checking a figure by hand (times from the first sample).
        kept = trace.samples
        if len(kept) > MAX_TRACE_POINTS:
            step = math.ceil(len(kept) / MAX_TRACE_POINTS)
            kept = kept[::step]
            block["trace_thinned_every"] = step
        t0 = trace.samples[0].time_s
        block["trace_origin_s"] = t0  # gaps' start_s/end_s are on the same clock
        block["trace"] = {
            "time_s": [round(s.time_s - t0, 5) for s in kept],
            "total_mw": [round(float(s.total_mw), 3) for s in kept],
            "rails_mw": {r: [round(float(s.rails_mw.get(r, float("nan"))), 3) for s in kept] for r in rails},
        }
    return block


def _power_notes(
    power: Dict[str, Any],
    trace: Optional[PowerTrace],
    overhead: Optional[List[Dict[str, Any]]],
    source: Any,
    notes: List[str],
    timing: Optional[SensorTiming],
) -> None:
    if trace is not None and trace.gaps:
        notes.append(
            f"the power source had {len(trace.gaps)} gap(s) (first: {trace.gaps[0].reason}); "
            "windows with gaps are left out of the energy figures"
        )
    rule = power.get("total_rule") or {}
    if source.available and rule.get("quantity") and rule.get("quantity") != "module_input":
        notes.append(f"total power here is the {rule.get('meaning')}")
    for line in timing.notes if timing is not None else []:
        notes.append(f"power sensor: {line}")
    for entry in overhead or []:
        ci = entry.get("overhead_pct_ci")
        if entry.get("overhead_pct") is not None and ci is not None and ci[0] > 2.0:
            notes.append(
                f"the power sampler slowed exit {entry['exit']} by {entry['overhead_pct']:.1f}% (interval "
                f"{_fmt_ci(ci)}; target <= 2%): use a longer --period-ms or --rails with fewer rails"
            )
    if overhead and getattr(source, "runs_in_background", False):
        notes.append(
            f"the sampler-overhead figures cover only the polling: the {source.name} source kept running while "
            "polling was paused, so its own cost is not in them (--power ina3221 polls from its own process instead)"
        )


def _correct(policy: Any, outputs: List[np.ndarray], labels: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if labels is None or policy.exit_kind == "embedding":
        return None
    predictions = np.stack([np.argmax(o, axis=1) for o in outputs], axis=1)
    return np.asarray(predictions == np.asarray(labels).reshape(-1, 1))


MAX_LABELLED_POINTS = 8  # Pareto points the report names (P1..), each with a line to deploy it


def _accuracy(
    policy: Any,
    outputs: List[np.ndarray],
    confidences: List[Optional[np.ndarray]],
    labels: Optional[np.ndarray],
    headline: Dict[str, Any],
    sweep_points: int,
    sweep: Optional[Any] = None,
) -> Dict[str, Any]:
    """Per-exit accuracy and the current thresholds on the profiled data, and a per-exit threshold
    sweep on ``sweep`` = (outputs, confidences, labels, source name); default: the profiled data."""
    n_exits = len(outputs)
    scores = policy.all_scores(confidences, outputs)
    correct = _correct(policy, outputs, labels)
    per_exit = None if correct is None else correct.mean(axis=0).tolist()
    latency = [(e["latency_ms"] or {}).get("p50") for e in headline["exits"]]
    energy = [(e.get("energy_mj") or {}).get("total") for e in headline["exits"]]
    dynamic = [(e.get("energy_mj") or {}).get("dynamic") for e in headline["exits"]]
    score_thresholds = [policy.score_threshold(k) for k in range(n_exits)]
    current_t = [None if math.isinf(t) and t > 0 else t for t in score_thresholds[:-1]] + [None]
    current = tradeoff.evaluate(scores, correct, current_t, latency, energy, dynamic)
    current["thresholds"] = list(policy.thresholds)
    sweep_outputs, sweep_confidences, sweep_labels, sweep_source = sweep or (outputs, confidences, labels, None)
    sweep_scores = policy.all_scores(sweep_confidences, sweep_outputs)
    settings = tradeoff.per_exit_grid(sweep_scores, max(2, sweep_points))
    points = tradeoff.sweep_settings(
        sweep_scores, _correct(policy, sweep_outputs, sweep_labels), settings, latency, energy, dynamic
    )
    for point in points:  # report thresholds as the policy stores them (Pareto flags do not depend on them)
        point["thresholds"] = [None if t is None else policy.to_stored(t) for t in point["thresholds"][:-1]] + [None]
        if point.get("threshold") is not None:
            point["threshold"] = policy.to_stored(point["threshold"])
    front = sorted(
        (p for p in points if p.get("pareto_latency")), key=lambda p: (p["mean_latency_ms"], -(p["accuracy"] or 0))
    )
    if len(front) > MAX_LABELLED_POINTS:  # evenly along the front, both ends kept
        keep = np.unique(np.linspace(0, len(front) - 1, MAX_LABELLED_POINTS).round().astype(int))
        front = [front[int(i)] for i in keep]
    for i, point in enumerate(front):
        point["label"] = f"P{i + 1}"
    return {
        "samples": len(outputs[0]),
        "labelled": correct is not None,
        "policy": policy.kind,
        "per_exit_top1": per_exit,
        "current": current,
        "sweep": points,
        "sweep_data": sweep_source,
        "sweep_samples": len(sweep_outputs[0]),
    }


def _sweep_source(config: ProfileConfig, bundle: Any) -> str:
    """Where the threshold sweep runs: never the test split when a validation split is known."""
    from hisd_edge.runtime.risk import certificate_of

    if config.sweep_data:
        return config.sweep_data
    calibrated_on = certificate_of(bundle.policy).get("data")
    if calibrated_on:
        return str(calibrated_on)
    name, _, split = config.data.partition(":")
    if name in ("default", "fashion") and split in ("", "test"):
        return f"{name}:val"
    return config.data


def _headline(
    config: ProfileConfig, bundle: Any, backend: Any, policy: Any, tensors: np.ndarray, samples: Any
) -> Dict[str, Any]:
    """Early exit vs the monolithic model on the profiled data, by the bench's method (same figure)."""
    from hisd_edge.runtime.bench import DEFAULT_PASSES, measure_early_exit
    from hisd_edge.runtime.guard import guard_from_bundle
    from hisd_edge.runtime.policies import bundle_exit_kind
    from hisd_edge.runtime.risk import certificate_of

    certificate = certificate_of(bundle.policy)
    bench = f"hisd-edge bench {bundle.root} --data {config.data}" + (
        f" --samples {config.samples}" if config.samples else ""
    )
    base: Dict[str, Any] = {"certificate": certificate, "data": config.data, "bench_command": bench}
    if not config.headline:
        return {**base, "available": False, "reason": "not measured (headline turned off)"}
    if not getattr(backend, "supports_full_model", False):
        return {
            **base,
            "available": False,
            "reason": f"the {config.backend} backend has no monolithic model to compare with",
        }
    exit_kind = bundle_exit_kind(bundle.exits)
    guard = guard_from_bundle(bundle) if exit_kind == "logits" else None
    early = measure_early_exit(
        backend,
        policy,
        tensors,
        samples.labels_for(bundle.class_names, config.data),
        passes=DEFAULT_PASSES,
        exit_kind=exit_kind,
        guard=guard,
        seed=config.seed,
    )
    return {
        **base,
        **early,
        "available": True,
        "full_model": backend.full_model_label,
        "guard": None if guard is None else guard.describe(),
    }


def run_profile(
    config: ProfileConfig,
    out_dir: Path,
    *,
    clock: Optional[Any] = None,
    open_backend: Optional[Callable[..., Any]] = None,
) -> Dict[str, Any]:
    """Profile and write the report directory; returns {"profile", "report"}."""
    from hisd_edge.profile.report import check_replaceable, write_report

    check_replaceable(Path(out_dir))  # before minutes of measuring, not after
    profile = profile_bundle(config, clock=clock, open_backend=open_backend)
    report = write_report(profile, Path(out_dir))
    return {"profile": profile, "report": report}


def mode_out_dir(out_dir: Path, mode_id: int) -> Path:
    """Where the report of one power mode goes: a sibling of the comparison, named for the mode."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}@nvpmodel-{mode_id}")


def run_profile_modes(
    config: ProfileConfig,
    out_dir: Path,
    modes: Sequence[int],
    *,
    set_mode: Optional[Callable[[int], None]] = None,
    settle_s: float = 5.0,
    clock: Optional[Any] = None,
    open_backend: Optional[Callable[..., Any]] = None,
) -> Dict[str, Any]:
    """Profile under several ``nvpmodel`` modes in one command, then compare them side by side.

    Each mode's report goes to ``OUT@nvpmodel-ID``; ``OUT`` holds compare.html. The mode in force
    before is restored at the end (also after an error). Switching needs root.
    """
    from hisd_edge.profile.report import check_replaceable, write_comparison

    if not modes:
        raise InputError("--power-modes: give one or more nvpmodel mode ids, e.g. 0,1")
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    for mode in modes:
        check_replaceable(mode_out_dir(out_dir, mode))
    set_mode = set_mode or conditions_mod.set_power_mode
    clock = clock or SystemClock()
    original = (device_mod.query_nvpmodel() or {}).get("mode_id")
    results = []
    try:
        for mode in modes:
            set_mode(int(mode))
            clock.sleep(settle_s)  # let nvpmodel's clock and rail changes take effect before measuring
            config_mode = dataclasses.replace(config, command=f"{config.command} [nvpmodel -m {mode}]")
            results.append(
                run_profile(config_mode, mode_out_dir(out_dir, mode), clock=clock, open_backend=open_backend)
            )
    finally:
        if original is not None:
            try:
                set_mode(int(original))
            except Exception as exc:  # restoring must not hide the run's own error
                LOG.warning("could not restore nvpmodel mode %s: %s", original, exc)
    paths = [str(mode_out_dir(out_dir, m)) for m in modes]
    comparison = write_comparison([r["profile"] for r in results], paths, out_dir) if len(results) > 1 else None
    return {"modes": list(modes), "results": results, "comparison": comparison, "restored_mode": original}


def format_summary(profile: Dict[str, Any]) -> str:
    """The per-exit table printed after a profile (and by the demo)."""
    accuracy = profile.get("accuracy") or {}
    top1 = accuracy.get("per_exit_top1") or []
    fractions = (accuracy.get("current") or {}).get("exit_fraction") or []
    device = profile.get("device") or {}
    power = profile.get("power") or {}
    lines = [
        f"{profile['bundle']['name']} on {device.get('model')} · {profile['backend'].get('backend')} "
        f"{profile['precision']} · batch {profile['batch']} · power: {power.get('source')}"
        + (f" ({power.get('total')})" if power.get("available") else ""),
        f"{'exit':>4}  {'p50 ms':>9}  {'mean ms [95% CI]':>22}  {'total mJ':>9}  {'dynamic mJ [95% CI]':>26}  {'top-1':>7}  {'leaves':>7}",
    ]

    def fmt(v: Any, width: int, spec: str = ".4g") -> str:
        return f"{'n/a':>{width}}" if v is None else f"{v:>{width}{spec}}"

    def with_ci(value: Any, ci: Any, width: int) -> str:
        if value is None:
            return f"{'n/a':>{width}}"
        text = f"{value:.4g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
        return f"{text:>{width}}"

    for e in profile["exits"]:
        k = e["index"]
        lat, energy = e["latency_ms"], e.get("energy_mj") or {}
        lines.append(
            f"{k:>4}  {fmt(lat['p50'], 9)}  {with_ci(lat.get('mean'), lat.get('ci'), 22)}  "
            f"{fmt(energy.get('total'), 9)}  {with_ci(energy.get('dynamic'), energy.get('dynamic_ci'), 26)}  "
            f"{fmt(100 * top1[k] if k < len(top1) and top1[k] is not None else None, 6, '.2f')}%  "
            f"{fmt(100 * fractions[k] if k < len(fractions) else None, 6, '.1f')}%"
        )
    current = accuracy.get("current") or {}
    if current.get("accuracy") is not None:
        lines.append(
            f"at the current thresholds: top-1 {100 * current['accuracy']:.2f}%, expected mean latency "
            f"{current.get('mean_latency_ms') or float('nan'):.4g} ms per call (exit shares x per-exit p50, "
            "stages only: no exit decision)"
        )
    check = profile.get("model_check") or {}
    if check.get("verdict"):
        lines.append(f"model check (real early-exit pass vs per-exit prediction): {check['verdict']}")
        if (check.get("latency_ms") or {}).get("ratio", 1.0) > 1.2:
            lines.append(
                "  the real calls cost more than the stages alone: each also scores the exits it passes (softmax, "
                "policy, input guard) and pays the Python loop's per-call overhead, a large share when stages take "
                "microseconds"
            )
    head = profile.get("headline") or {}
    if head.get("available"):
        from hisd_edge.runtime.bench import speedup_text

        lines.append(
            f"early exit vs the {head.get('full_model', 'full model')}: {head['mean_latency_ms']:.4g} vs "
            f"{head['full_mean_latency_ms']:.4g} ms per sample, speedup {speedup_text(head)}; as {head['bench_command']}"
        )
    elif head:
        lines.append(f"speedup vs the full model: not measured ({head.get('reason')})")
    flags = (profile.get("conditions") or {}).get("flags") or []
    if flags:
        lines.append("conditions flagged: " + "; ".join(flags))
    return "\n".join(lines)


def profile_default(
    bundle: str,
    out_dir: str,
    *,
    data: str = "default:test",
    samples: Optional[int] = None,
    power: str = "auto",
    progress: bool = False,
) -> Dict[str, Any]:
    """Profile ``bundle`` on this machine with quick settings and write the HTML report (for the demo).

    Power is discovered as ``--power auto`` does; on a machine without telemetry the report says
    energy is unavailable and why (never an estimate). On a Jetson the windows still follow the
    sensor (about 30 s each: two rounds take a few minutes). Returns {"profile", "report", "summary"}.
    """
    config = ProfileConfig(
        bundle=str(bundle),
        data=data,
        samples=samples,
        batches=(1,),
        power=power,
        warmup=5,
        repeats=50,
        rounds=2,
        energy_min_inferences=20,
        sweep_points=41,
        overhead_blocks=4,
        progress=progress,
    )
    # The command line that takes this same profile again (re-runnable, unlike a Python call).
    config.command = shlex.join(
        ["hisd-edge", "profile", str(bundle), "--data", data]
        + (["--samples", str(samples)] if samples else [])
        + ["--batch-size", "1", "--power", power, "--warmup", "5", "--repeats", "50", "--rounds", "2"]
        + ["--energy-inferences", "20", "--sweep-points", "41", "--overhead-pairs", "4", "--out", str(out_dir)]
    )
    result = run_profile(config, Path(out_dir))
    result["summary"] = format_summary(result["profile"])
    return result
