"""The measurement design: what runs when, so that exits are told apart from drift.

A profile of one batch size is a sequence of *blocks*. Each block runs one condition for a settling
time (``5 tau`` of the power sensor: readings still show the previous condition, so this part is
discarded) and then for a measuring window:

* ``idle``: nothing runs;
* ``exit k``: a steady loop of calls forced to exit k (stages 0..k, no decisions);
* ``early``: the real early-exit loop over the data at the current thresholds (the model check).

Rounds: each round opens with an idle block (the *bracket*), then runs every exit (and the early
pass) in an order drawn from a seeded generator, a fresh permutation per round; a last idle block
closes the final round. Warm-up first runs the deepest exit until power and temperature stop moving
(thermal steady state) or a time limit passes. Why this shape:

* drift (heating, DVFS, a background job) lands on every exit alike instead of on the later ones;
* each exit's dynamic power is taken against the idle power interpolated between the brackets
  around it, which removes any drift that is linear within a round;
* stage k's energy is exit k minus exit k-1 *within a round* (a paired difference), and each
  figure's confidence interval comes from the spread over rounds.

Latency uses the same idea at a finer grain: ``repeats`` rounds, each running every exit (and one
early-exit call) once in a seeded random order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hisd_edge.profile import conditions as conditions_mod
from hisd_edge.profile.energy import integrate_window

IDLE, EXIT, EARLY = "idle", "exit", "early"


@dataclasses.dataclass
class Block:
    """One condition's run: when it settled, its measuring window, and what ran inside the window."""

    kind: str
    exit: Optional[int]
    batch: int
    round: int
    settle_start_s: float
    start_s: float
    end_s: float
    calls: int = 0
    samples: int = 0  # inferences (rows) inside the window
    exit_counts: Optional[List[int]] = None  # early blocks: rows that left at each exit
    before: Optional[Dict[str, Any]] = None  # conditions snapshot before the block
    after: Optional[Dict[str, Any]] = None
    energy: Dict[str, Any] = dataclasses.field(default_factory=dict)  # "total" and rails -> WindowEnergy

    @property
    def window_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def mid_s(self) -> float:
        return 0.5 * (self.start_s + self.end_s)

    @property
    def label(self) -> str:
        return f"exit {self.exit}" if self.kind == EXIT else self.kind

    def to_dict(self, origin: float = 0.0) -> Dict[str, Any]:
        total = self.energy.get("total")
        return {
            "kind": self.kind,
            "exit": self.exit,
            "batch": self.batch,
            "round": self.round,
            "settle_start_s": round(self.settle_start_s - origin, 6),
            "start_s": round(self.start_s - origin, 6),
            "end_s": round(self.end_s - origin, 6),
            "calls": self.calls,
            "samples": self.samples,
            "exit_counts": self.exit_counts,
            "mean_power_mw": None if total is None else total.mean_power_mw,
            "coverage": None if total is None else total.coverage,
            "complete": None if total is None else total.complete,
            "power_samples": None if total is None else total.samples,
            "rails_mean_power_mw": {
                name: w.mean_power_mw for name, w in self.energy.items() if name != "total" and w is not None
            },
        }


def schedule(n_exits: int, rounds: int, seed: int, early: bool) -> List[Tuple[int, str, Optional[int]]]:
    """(round, kind, exit) in run order: per round an idle bracket then a seeded permutation; a closing idle."""
    rng = np.random.default_rng(seed)
    conditions: List[Tuple[str, Optional[int]]] = [(EXIT, k) for k in range(n_exits)]
    if early:
        conditions.append((EARLY, None))
    order: List[Tuple[int, str, Optional[int]]] = []
    for r in range(rounds):
        order.append((r, IDLE, None))
        for i in rng.permutation(len(conditions)):
            kind, k = conditions[int(i)]
            order.append((r, kind, k))
    order.append((rounds, IDLE, None))
    return order


class Measurer:
    """Runs blocks, latency rounds, warm-up and overhead pairs on one open backend."""

    def __init__(
        self,
        backend: Any,
        clock: Any,
        sampler: Any,
        tensors: np.ndarray,
        policy: Any,
        class_names: Sequence[str],
        sysfs: Any,
        step: Callable[[str], None],
    ):
        self.backend = backend
        self.clock = clock
        self.sampler = sampler
        self.tensors = tensors
        self.policy = policy
        self.class_names = list(class_names)
        self.sysfs = sysfs
        self.step = step
        self.snapshots: List[Dict[str, Any]] = []
        self._early_cursor = 0

    # -- helpers ------------------------------------------------------------------------------------
    def batch_input(self, batch: int) -> np.ndarray:
        idx = np.arange(batch) % len(self.tensors)
        return np.ascontiguousarray(self.tensors[idx])

    def next_data_batch(self, batch: int) -> np.ndarray:
        """The next ``batch`` rows of the data, cycling, for the real early-exit loop."""
        idx = (self._early_cursor + np.arange(batch)) % len(self.tensors)
        self._early_cursor = int((self._early_cursor + batch) % len(self.tensors))
        return np.ascontiguousarray(self.tensors[idx])

    def snapshot(self) -> Optional[Dict[str, Any]]:
        if self.sysfs is None:
            return None
        snap = conditions_mod.snapshot(self.sysfs, self.clock())
        self.snapshots.append(snap)
        return snap

    def run_to_exit(self, x: np.ndarray, k: int) -> float:
        begin = self.clock()
        self.backend.start(x)
        for j in range(k + 1):
            self.backend.run_stage(j)
        return (self.clock() - begin) * 1e3

    def early_call(self, batch: int) -> Tuple[float, List[int]]:
        from hisd_edge.profile.runner import early_exit_call

        x = self.next_data_batch(batch)
        begin = self.clock()
        exits = early_exit_call(self.backend, self.policy, x, self.class_names)
        return (self.clock() - begin) * 1e3, exits

    def wait_for_sample_after(self, t: float, timeout_s: float) -> None:
        """Let the sampler take one sample past ``t`` so the window's end is covered."""
        if self.sampler is None:
            return
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            newest, failing = self.sampler.latest()
            if newest is not None and newest >= t:
                return
            if failing:
                return  # the source is failing: waiting will not help
            self.clock.sleep(min(0.005, self.sampler.period_s / 4))

    # -- blocks -------------------------------------------------------------------------------------
    def run_block(
        self,
        kind: str,
        k: Optional[int],
        batch: int,
        round_index: int,
        settle_s: float,
        window_s: float,
        min_calls: int,
    ) -> Block:
        before = self.snapshot()
        x = self.batch_input(batch) if kind == EXIT else None
        exit_counts = [0] * self.backend.num_stages if kind == EARLY else None

        def one() -> int:
            if kind == EXIT:
                assert x is not None and k is not None
                self.run_to_exit(x, k)
                return batch
            _ms, exits = self.early_call(batch)
            if exit_counts is not None and window_open:
                for e in exits:
                    exit_counts[e] += 1
            return len(exits)

        settle_start = self.clock()
        window_open = False
        if kind == IDLE:
            self.clock.sleep(settle_s)
            start = self.clock()
            self.clock.sleep(window_s)
            end = self.clock()
            block = Block(kind, None, batch, round_index, settle_start, start, end)
        else:
            while self.clock() - settle_start < settle_s:
                one()
            window_open = True
            start = self.clock()
            calls = samples = 0
            while calls < min_calls or self.clock() - start < window_s:
                samples += one()
                calls += 1
            end = self.clock()
            block = Block(kind, k, batch, round_index, settle_start, start, end, calls, samples, exit_counts)
        if self.sampler is not None:  # a sample past the end, or the window's tail is uncovered
            self.wait_for_sample_after(block.end_s, 3 * self.sampler.period_s + 1.0)
        block.before = before
        block.after = self.snapshot()
        self.step(f"batch {batch}: round {round_index} {block.label}")
        return block

    # -- warm-up to thermal steady state --------------------------------------------------------------
    def warm_up(self, batch: int, max_s: float, block_s: float, settle_s: float) -> Dict[str, Any]:
        """Run the deepest exit until power (and the hottest zone) stop moving between blocks, or ``max_s``.

        Steady: the mean power of two consecutive blocks within 1 % and the hottest temperature within
        0.5 C. Without a power source only temperature is watched; with neither, warm-up runs ``max_s``.
        """
        last = self.backend.num_stages - 1
        x = self.batch_input(batch)
        begin = self.clock()
        history: List[Dict[str, Any]] = []
        steady = False
        if max_s <= 0:
            return {"seconds": 0.0, "blocks": [], "steady": None, "max_s": max_s}
        while self.clock() - begin < max_s:
            block_start = self.clock()
            while self.clock() - block_start < block_s:
                self.run_to_exit(x, last)
            block_end = self.clock()
            entry: Dict[str, Any] = {"end_s": block_end - begin}
            if self.sampler is not None:
                self.wait_for_sample_after(block_end, 3 * self.sampler.period_s + 1.0)
                window = integrate_window(self.sampler.trace(), max(block_start, block_start + settle_s), block_end)
                entry["power_mw"] = window.mean_power_mw
            snap = self.snapshot()
            temps = (snap or {}).get("temps_c") or {}
            entry["max_temp_c"] = max(temps.values()) if temps else None
            history.append(entry)
            if len(history) >= 2:
                a, b = history[-2], history[-1]
                power_ok = (
                    a.get("power_mw") is None
                    or b.get("power_mw") is None
                    or abs(b["power_mw"] - a["power_mw"]) <= 0.01 * max(abs(a["power_mw"]), 1e-9)
                )
                temp_ok = (
                    a.get("max_temp_c") is None
                    or b.get("max_temp_c") is None
                    or abs(b["max_temp_c"] - a["max_temp_c"]) <= 0.5
                )
                watched = any(v is not None for v in (b.get("power_mw"), b.get("max_temp_c")))
                if watched and power_ok and temp_ok:
                    steady = True
                    break
        self.step(f"batch {batch}: warm-up")
        return {
            "seconds": self.clock() - begin,
            "blocks": history,
            "steady": steady,
            "max_s": max_s,
            "block_s": block_s,
        }

    # -- latency ------------------------------------------------------------------------------------
    def latency_rounds(self, batch: int, repeats: int, seed: int, early: bool) -> Dict[str, Any]:
        """``repeats`` rounds, each every exit once (and one early-exit call) in a seeded random order."""
        n = self.backend.num_stages
        rng = np.random.default_rng(seed + 7919 * batch)
        x = self.batch_input(batch)
        per_exit: List[List[float]] = [[] for _ in range(n)]
        per_stage: List[List[float]] = [[] for _ in range(n)]
        early_ms: List[float] = []
        early_exits: List[List[int]] = []
        paired: List[Tuple[int, List[float]]] = []  # (rep, per-exit ms of that rep) for the model check
        conditions = list(range(n)) + ([-1] if early else [])
        for _rep in range(repeats):
            this_rep = [math.nan] * n
            for i in rng.permutation(len(conditions)):
                k = conditions[int(i)]
                if k < 0:
                    ms, exits = self.early_call(batch)
                    early_ms.append(ms)
                    early_exits.append(exits)
                    continue
                begin = self.clock()
                self.backend.start(x)
                stage_ms = [self.backend.run_stage(j).latency_ms for j in range(k + 1)]
                ms = (self.clock() - begin) * 1e3
                per_exit[k].append(ms)
                this_rep[k] = ms
                for j, value in enumerate(stage_ms):
                    per_stage[j].append(value)
            paired.append((_rep, this_rep))
        self.step(f"batch {batch}: latency")
        return {
            "per_exit": per_exit,
            "per_stage": per_stage,
            "early_ms": early_ms,
            "early_exits": early_exits,
            "paired": [p for _, p in paired],
        }

    # -- sampler overhead -----------------------------------------------------------------------------
    def overhead(self, batch: int, pairs: int) -> Optional[List[Dict[str, Any]]]:
        """Per exit: latency with the sampler paused vs polling, in alternating block pairs.

        Each pair (off, on) gives a ratio of block means; the overhead is the mean ratio minus one, with
        its interval over the pairs, which cancels slow drifts a single before/after would fold in.
        Means, not medians: a poll that stalls one call in ten costs throughput and energy, and a
        median would not see it.
        A source that runs in the background (a ``tegrastats`` process, jtop) keeps running while the
        sampler is paused, so its own cost is in both blocks and not in the figure.
        """
        if self.sampler is None or pairs <= 0:
            return None
        from hisd_edge.profile.stats import mean_ci

        block_s = max(10.0 * self.sampler.period_s, 0.25)
        x = self.batch_input(batch)
        results = []
        for k in range(self.backend.num_stages):
            ratios: List[float] = []
            without: List[float] = []
            with_sampler: List[float] = []
            for _ in range(pairs):
                means = []
                for sampling in (False, True):
                    if sampling:
                        self.sampler.resume()
                    else:
                        self.sampler.pause()
                    block: List[float] = []
                    start = self.clock()
                    while len(block) < 20 or self.clock() - start < block_s:
                        block.append(self.run_to_exit(x, k))
                    (with_sampler if sampling else without).extend(block)
                    means.append(float(np.mean(block)))
                if means[0] > 0:
                    ratios.append(means[1] / means[0])
            self.sampler.resume()
            stats = mean_ci([100.0 * (r - 1.0) for r in ratios])
            results.append(
                {
                    "batch": batch,
                    "exit": k,
                    "latency_ms_without": float(np.mean(without)),
                    "latency_ms_with": float(np.mean(with_sampler)),
                    "overhead_pct": stats["mean"],
                    "overhead_pct_ci": stats["ci"],
                    "block_pairs": len(ratios),
                    "block_s": block_s,
                    "runs_without": len(without),
                    "runs_with": len(with_sampler),
                }
            )
        self.step(f"batch {batch}: sampler overhead")
        return results


def integrate_blocks(blocks: List[Block], trace: Any, rails: Sequence[str]) -> None:
    """Fill each block's energy (total and per rail) from the finished trace."""
    for block in blocks:
        if block.end_s <= block.start_s:
            continue
        block.energy["total"] = integrate_window(trace, block.start_s, block.end_s)
        for rail in rails:
            block.energy[rail] = integrate_window(trace, block.start_s, block.end_s, rail=rail)
