"""The sampler (start/stop robustness, gaps) and exact energy arithmetic on a controlled clock."""

from __future__ import annotations

import time

import pytest

from hisd_edge.errors import DeviceError
from hisd_edge.profile.energy import integrate_window, per_inference
from hisd_edge.profile.power.base import NullSource, PowerSample, PowerSource
from hisd_edge.profile.sampler import Gap, PowerSampler, PowerTrace


class ScriptedSource(PowerSource):
    """Power follows a function of the clock; raises while ``failing`` is set."""

    name = "scripted"

    def __init__(self, clock, power_of_t, counter_of_t=None):
        super().__init__(clock)
        self.power_of_t = power_of_t
        self.counter_of_t = counter_of_t
        self.failing = False
        self.opened = 0

    def open_impl(self):
        self.opened += 1

    def read_impl(self):
        if self.failing:
            raise DeviceError("sensor went away")
        t = self.clock()
        energy = self.counter_of_t(t) if self.counter_of_t else None
        return PowerSample(
            time_s=t, total_mw=self.power_of_t(t), rails_mw={"VDD_IN": self.power_of_t(t)}, energy_mj=energy
        )


def _step(sampler, clock, times):
    for t in times:
        clock.now = t
        sampler.sample_once()


def test_constant_power_integrates_exactly(counter_clock):
    source = ScriptedSource(counter_clock, lambda t: 1000.0)
    sampler = PowerSampler(source, period_s=0.1)
    _step(sampler, counter_clock, [i * 0.1 for i in range(31)])
    window = integrate_window(sampler.trace(), 0.5, 2.5)
    assert window.energy_mj == pytest.approx(2000.0, abs=1e-9)  # 1 W for 2 s
    assert window.complete and window.coverage == pytest.approx(1.0) and window.samples == 21


def test_linear_ramp_and_window_edges_between_samples(counter_clock):
    source = ScriptedSource(counter_clock, lambda t: 100.0 * t)
    sampler = PowerSampler(source, period_s=1.0)
    _step(sampler, counter_clock, [0.0, 1.0, 2.0, 3.0, 4.0])
    window = integrate_window(sampler.trace(), 0.25, 3.5)
    # integral of 100 t dt from 0.25 to 3.5 = 50 * (3.5^2 - 0.25^2): trapezoids are exact on a ramp
    assert window.energy_mj == pytest.approx(50.0 * (3.5**2 - 0.25**2), abs=1e-9)
    assert window.mean_power_mw == pytest.approx(window.energy_mj / 3.25)


def test_energy_counter_is_used_when_present(counter_clock):
    source = ScriptedSource(counter_clock, lambda t: 0.0, counter_of_t=lambda t: 5000.0 + 300.0 * t)
    sampler = PowerSampler(source, period_s=0.5)
    _step(sampler, counter_clock, [0.0, 0.5, 1.0, 1.5, 2.0])
    window = integrate_window(sampler.trace(), 0.25, 1.75)
    assert window.method == "counter" and window.energy_mj == pytest.approx(450.0)  # 300 mW for 1.5 s


def test_per_inference_total_and_dynamic(counter_clock):
    source = ScriptedSource(counter_clock, lambda t: 1500.0)
    sampler = PowerSampler(source, period_s=0.1)
    _step(sampler, counter_clock, [i * 0.1 for i in range(21)])
    window = integrate_window(sampler.trace(), 0.0, 2.0)
    result = per_inference(window, inferences=400, idle_power_mw=1000.0, period_s=0.1)
    assert result["total"] == pytest.approx(1500.0 * 2.0 / 400)  # 7.5 mJ
    assert result["dynamic"] == pytest.approx(500.0 * 2.0 / 400)  # 2.5 mJ
    detail = result["detail"]
    assert detail["samples"] == 21 and detail["sampling_period_ms"] == pytest.approx(100.0)
    assert detail["complete"] and detail["idle_power_mw"] == 1000.0
    assert per_inference(window, 400, None, 0.1)["dynamic"] is None


def test_source_stopping_mid_run_opens_a_gap_and_keeps_what_was_measured(counter_clock):
    source = ScriptedSource(counter_clock, lambda t: 2000.0)
    sampler = PowerSampler(source, period_s=0.1)
    _step(sampler, counter_clock, [i * 0.1 for i in range(11)])  # good until 1.0 s
    source.failing = True
    _step(sampler, counter_clock, [1.1, 1.2, 1.3])
    trace = sampler.trace()
    assert len(trace.samples) == 11
    assert len(trace.gaps) == 1 and trace.gaps[0].end_s is None and trace.gaps[0].failures == 3
    assert trace.gaps[0].start_s == pytest.approx(1.0) and "sensor went away" in trace.gaps[0].reason
    window = integrate_window(trace, 0.0, 2.0)
    assert not window.complete and window.covered_s == pytest.approx(1.0)
    assert window.energy_mj == pytest.approx(2000.0)  # only the covered second, nothing invented
    assert window.gaps[-1]["reason"] == "sensor went away"
    result = per_inference(window, inferences=100, idle_power_mw=None, period_s=0.1)
    assert result["total"] == pytest.approx(2000.0 * 2.0 / 100) and result["detail"]["coverage"] == pytest.approx(0.5)
    # the source comes back: the gap closes and its stretch stays uncovered
    source.failing = False
    _step(sampler, counter_clock, [1.5, 1.6])
    trace = sampler.trace()
    assert trace.gaps[0].end_s == pytest.approx(1.5)
    window = integrate_window(trace, 0.0, 1.6)
    assert window.covered_s == pytest.approx(1.1) and window.gaps[0]["start_s"] == pytest.approx(1.0)


def test_window_with_no_samples_has_no_energy(counter_clock):
    trace = PowerTrace(samples=[], gaps=[Gap(0.0, None, "tegrastats stopped")], period_s=0.1, source={})
    window = integrate_window(trace, 0.0, 1.0)
    assert window.covered_s == 0 and window.mean_power_mw is None
    assert per_inference(window, 10, 500.0, 0.1) is None
    assert window.gaps[0]["reason"] == "tegrastats stopped"


def test_samples_too_far_apart_are_a_gap(counter_clock):
    source = ScriptedSource(counter_clock, lambda t: 1000.0)
    sampler = PowerSampler(source, period_s=0.1)
    _step(sampler, counter_clock, [0.0, 0.1, 0.2, 2.2, 2.3])
    window = integrate_window(sampler.trace(), 0.0, 2.3)
    assert window.covered_s == pytest.approx(0.3) and "apart" in window.gaps[0]["reason"]


def test_start_twice_stop_without_start_and_thread_lifecycle():
    never = PowerSampler(NullSource())
    assert never.stop().samples == [] and never.stop().gaps == []
    source = ScriptedSource(time.perf_counter, lambda t: 1234.0)
    sampler = PowerSampler(source, period_s=0.005)
    sampler.start()
    first_thread = sampler._thread
    sampler.start()  # no second thread
    assert sampler._thread is first_thread and source.opened == 1
    deadline = time.monotonic() + 5.0
    while len(sampler.trace().samples) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    begin = time.monotonic()
    trace = sampler.stop()
    assert time.monotonic() - begin < 1.0  # stop is prompt: the wait is interruptible
    assert not sampler.running and len(trace.samples) >= 5
    times = [s.time_s for s in trace.samples]
    assert times == sorted(times) and trace.started_s <= times[0] and trace.stopped_s >= times[-1]
    sampler.stop()  # stopping again is harmless
    with PowerSampler(source, period_s=0.005) as again:  # and it restarts cleanly
        assert again.running


def test_a_raising_source_never_kills_the_thread():
    source = ScriptedSource(time.perf_counter, lambda t: 1.0)
    source.failing = True
    sampler = PowerSampler(source, period_s=0.002).start()
    time.sleep(0.05)
    assert sampler.running
    source.failing = False
    deadline = time.monotonic() + 5.0
    while not sampler.trace().samples and time.monotonic() < deadline:
        time.sleep(0.005)
    trace = sampler.stop()
    assert trace.samples and len(trace.gaps) == 1 and trace.gaps[0].end_s is not None


def test_period_is_never_faster_than_the_source(counter_clock):
    source = ScriptedSource(counter_clock, lambda t: 1.0)
    source.min_period_s = 0.25
    assert PowerSampler(source, period_s=0.01).period_s == 0.25
    with pytest.raises(ValueError):
        PowerSampler(source, period_s=0)


class _StubStage:
    latency_ms = 0.01


class _StubBackend:
    """Just enough of a backend for the overhead blocks: start + run_stage."""

    num_stages = 2

    def start(self, batch):
        pass

    def run_stage(self, k):
        return _StubStage()


def test_overhead_is_measured_at_every_exit_with_paused_and_polling_blocks():
    import numpy as np

    from hisd_edge.profile.clock import SystemClock
    from hisd_edge.profile.measure import Measurer

    source = ScriptedSource(time.monotonic, lambda t: 1000.0)
    sampler = PowerSampler(source, period_s=0.01)
    steps = []
    measurer = Measurer(
        _StubBackend(), SystemClock(), sampler, np.zeros((1, 3), dtype=np.float32), None, [], None, steps.append
    )
    try:
        sampler.start()
        overhead = measurer.overhead(1, pairs=1)
    finally:
        sampler.stop()
    assert [o["exit"] for o in overhead] == [0, 1] and all(o["block_pairs"] == 1 for o in overhead)
    assert all(o["runs_with"] >= 20 and o["runs_without"] >= 20 for o in overhead)
    assert sampler.running is False and steps == ["batch 1: sampler overhead"]


# -- the virtual clock --------------------------------------------------------------------------------
def test_virtual_clock_runs_jobs_on_schedule_and_only_stolen_time_delays_work():
    from hisd_edge.profile.clock import VirtualClock

    clock = VirtualClock(start=10.0)
    seen = []

    def job():
        seen.append(clock.now())
        clock.busy(0.001)  # a 1 ms read

    handle = clock.every(0.1, job)
    clock.busy(0.35)  # work: jobs at 10.0, 10.1, 10.2, 10.3 run while it passes; they steal nothing
    assert seen == pytest.approx([10.0, 10.1, 10.2, 10.3]) and clock.now() == pytest.approx(10.35)
    clock.jobs_steal_time = True  # now every read holds up the work
    clock.busy(0.2)
    assert clock.now() == pytest.approx(10.55 + 2 * 0.001)
    clock.cancel(handle)
    clock.sleep(1.0)
    assert len(seen) == 6 and clock.now() == pytest.approx(11.552)


def test_sampler_on_a_virtual_clock_polls_as_time_passes():
    from hisd_edge.profile.clock import VirtualClock

    clock = VirtualClock()
    source = ScriptedSource(clock, lambda t: 500.0 + 100.0 * t)
    sampler = PowerSampler(source, period_s=0.25).start()
    assert sampler.mode == "virtual" and sampler.running
    clock.sleep(1.0)
    sampler.pause()
    clock.sleep(1.0)  # paused: no reads
    sampler.resume()
    clock.sleep(0.3)
    trace = sampler.stop()
    assert [round(s.time_s, 6) for s in trace.samples] == [0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 2.25]
    assert integrate_window(trace, 0.0, 1.0).energy_mj == pytest.approx(550.0)  # 500 + 100 t over 1 s


# -- the sampling process ---------------------------------------------------------------------------------
def test_process_sampler_reads_the_rails_from_its_own_process(fast_board):
    import os

    from hisd_edge.profile.clock import SystemClock
    from hisd_edge.profile.power.ina3221 import Ina3221Source
    from hisd_edge.profile.sampler import ProcessSampler, make_sampler

    root = fast_board("orin_nano_jp6")
    source = Ina3221Source.discover(str(root))
    sampler = make_sampler(source, 0.02, SystemClock())
    assert isinstance(sampler, ProcessSampler) and sampler.mode == "process"
    sampler.start()
    try:
        pid = sampler._process.pid
        assert pid != os.getpid()
        deadline = time.monotonic() + 20.0
        while len(sampler.trace().samples) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        curr = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input"
        curr.write_text("2000\n")
        target = time.monotonic()
        while (sampler.latest()[0] or 0) < target + 0.1 and time.monotonic() < deadline:
            time.sleep(0.02)
        sampler.pause()
        time.sleep(0.1)
        paused_count = len(sampler.trace().samples)
        time.sleep(0.2)
        assert len(sampler.trace().samples) <= paused_count + 1  # at most one line was in flight
        curr.unlink()  # the driver goes away: a gap, not a crash
        sampler.resume()
        while not sampler.latest()[1] and time.monotonic() < deadline:
            time.sleep(0.02)
        curr.write_text("1126\n")
        while sampler.latest()[1] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        trace = sampler.stop()
    assert sampler._process is None and trace.samples
    assert list(trace.samples[0].rails_mw) == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    assert trace.samples[0].total_mw == pytest.approx(5064 * 1126 / 1000.0)
    assert any(s.rails_mw["VDD_IN"] == pytest.approx(5064 * 2.0) for s in trace.samples)
    assert len(trace.gaps) == 1 and "cannot be read" in trace.gaps[0].reason and trace.gaps[0].end_s is not None
    times = [s.time_s for s in trace.samples]
    assert times == sorted(times) and trace.started_s <= times[0] <= time.monotonic()  # one shared clock


def test_sources_that_cannot_leave_the_process_get_a_thread():
    from hisd_edge.profile.clock import SystemClock, VirtualClock
    from hisd_edge.profile.sampler import make_sampler

    source = ScriptedSource(time.monotonic, lambda t: 1.0)
    assert make_sampler(source, 0.05, SystemClock()).mode == "thread"
    assert make_sampler(source, 0.05, VirtualClock()).mode == "virtual"


def test_the_design_brackets_every_round_with_idle_and_draws_a_fresh_seeded_order():
    from hisd_edge.profile.measure import schedule

    order = schedule(3, rounds=4, seed=5, early=True)
    assert order[0] == (0, "idle", None) and order[-1] == (4, "idle", None)
    rounds = [[(kind, k) for r, kind, k in order if r == i and kind != "idle"] for i in range(4)]
    assert all(
        sorted(map(str, r)) == sorted(map(str, [("exit", 0), ("exit", 1), ("exit", 2), ("early", None)]))
        for r in rounds
    )
    assert len({tuple(map(str, r)) for r in rounds}) > 1  # not the same order every round
    assert schedule(3, 4, 5, True) == order and schedule(3, 4, 6, True) != order  # reproducible, seeded
    assert [kind for _, kind, _ in order].count("idle") == 5


def _block(kind, k, r, start, power_mw, samples=1000, window=10.0):
    from hisd_edge.profile.energy import WindowEnergy
    from hisd_edge.profile.measure import Block

    block = Block(kind, k, 1, r, start - 1.0, start, start + window, calls=samples, samples=samples)
    block.energy["total"] = WindowEnergy(start, start + window, power_mw * window, window, 50, "trapezoid", [])
    return block


def test_stage_energies_are_paired_within_rounds_and_idle_is_interpolated():
    from hisd_edge.profile.analysis import analyse_batch

    blocks, t = [], 0.0
    for r in range(3):
        blocks.append(_block("idle", None, r, t, 1000.0 + 20.0 * r))  # idle drifts 20 mW per 48 s round
        t += 12.0
        for k in (2, 0, 1):
            idle_now = 1000.0 + 20.0 * t / 48.0  # the idle power at this block's middle (t + 5)
            # every exit of round r also carries +50 r mW (a warmer round): the same for all its exits
            blocks.append(_block("exit", k, r, t, idle_now + 100.0 * (k + 1) + 50.0 * r))
            t += 12.0
    blocks.append(_block("idle", None, 3, t, 1060.0))
    result = analyse_batch(blocks, 3, [], 0.95)
    exits = [e["energy_mj"] for e in result["exits"]]
    # exit k: (100 (k+1) + 50 r) mW x 10 s / 1000 inferences; the drift is gone, the round effect is not
    assert [e["dynamic"] for e in exits] == pytest.approx([1.5, 2.5, 3.5])
    assert exits[0]["dynamic_ci"][1] - exits[0]["dynamic_ci"][0] > 2.0
    stages = [s["energy_mj"] for s in result["stages"]]
    for j in (1, 2):  # paired within rounds, the round effect cancels: exactly 1 mJ, an interval of no width
        assert stages[j]["dynamic"] == pytest.approx(1.0) and stages[j]["dynamic_ci"] == pytest.approx([1.0, 1.0])
    assert result["idle"]["brackets"] == 4 and result["idle"]["drift_mw"] == pytest.approx(60.0)


def test_a_sampling_process_that_cannot_start_is_one_line(fast_board):
    from hisd_edge.profile.power.ina3221 import Ina3221Source
    from hisd_edge.profile.sampler import ProcessSampler

    source = Ina3221Source.discover(str(fast_board("orin_nano_jp6")))
    sampler = ProcessSampler(source, 0.05, python="/nonexistent/python3")
    with pytest.raises(DeviceError, match="cannot start the power-sampling process .* use --sampler thread"):
        sampler.start()
    assert sampler.stop().samples == []
