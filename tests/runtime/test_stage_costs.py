"""Per-stage costs as threshold fitting measures them: differences of the cost of reaching each exit.

A controlled clock replaces wall time (no timing assertions): every stage advances it by a known
amount, and starting a batch by a known overhead, so the measured costs are exact.
"""

import types

import numpy as np
import pytest

from hisd_edge.bundle import Bundle
from hisd_edge.runtime import early_exit
from hisd_edge.runtime.backend import Backend, StageResult
from hisd_edge.runtime.policies import make_policy
from hisd_edge.runtime.thresholds import measure_stage_latency_ms

STAGE_MS = [2.0, 3.0, 5.0]
START_MS = 0.5  # starting a batch, reading results: what bare stage timings miss


class _Clock:
    def __init__(self):
        self.ms = 0.0

    def perf_counter(self) -> float:
        return self.ms / 1e3


class _ClockedBackend(Backend):
    """Three stages that cost STAGE_MS on the controlled clock; exit k's logits favour class k."""

    name = "clocked"

    def __init__(self, clock):
        manifest = {
            "stages": [{"index": k, "inputs": [{"name": "input", "shape": ["batch", 1, 2, 2]}]} for k in range(3)],
            "exits": [{"index": k, "output": f"exit{k}", "kind": "logits"} for k in range(3)],
        }
        super().__init__(Bundle(None, manifest))
        self.clock = clock

    def check_precision(self):
        pass

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def start_impl(self, batch):
        self.clock.ms += START_MS
        self.rows = len(batch)

    def run_stage_impl(self, k, keep_rows):
        self.clock.ms += STAGE_MS[k]
        logits = np.tile(np.eye(3, dtype=np.float32)[k] * 4.0, (self.rows, 1))
        confidence = np.full(self.rows, 0.5, dtype=np.float32)
        return StageResult(k, self.rows, confidence, STAGE_MS[k], lambda rows: logits if rows is None else logits[rows])


@pytest.fixture()
def clock(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(early_exit, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


def test_stage_costs_are_the_differences_of_the_costs_of_reaching_each_exit(clock):
    with _ClockedBackend(clock) as backend:
        costs = measure_stage_latency_ms(
            backend, make_policy("max_prob", [0.9, 0.9, None]), np.zeros((1, 1, 2, 2)), reps=3, warmup=1
        )
    # Reaching exit 0 costs the start plus stage 0; each later stage adds exactly its own time.
    assert costs == pytest.approx([START_MS + STAGE_MS[0], STAGE_MS[1], STAGE_MS[2]])


def test_forced_exits_report_what_they_cost(clock):
    with _ClockedBackend(clock) as backend:
        policy = make_policy("max_prob", [0.9, 0.9, None])
        for k in range(3):
            results, trace = early_exit.run_early_exit(backend, policy, np.zeros((1, 1, 2, 2)), exit_at=k)
            assert results[0].exit == k and results[0].class_index == k
            assert trace.stage_latency_ms == STAGE_MS[: k + 1]
            assert trace.total_ms == pytest.approx(START_MS + sum(STAGE_MS[: k + 1]))
            assert trace.decision_ms == pytest.approx(START_MS)
