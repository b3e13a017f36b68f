"""The simulator's runs on small traces whose right answers are worked out by hand.

Each trace is short enough to follow on paper; the expected start times, makespans and waits in
the comments are derived from the core's rules (best fit, reservation for the first blocked job,
first fit without reservation, whole GPUs in strict order), not read off the simulator.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_scheduler.config import settings_from_dict
from gpu_scheduler.core import allocator
from gpu_scheduler.core.scheduler import Policy, Scheduler
from gpu_scheduler.daemon import policy_from
from gpu_scheduler.simulate import engine, report
from gpu_scheduler.simulate.policies import make_policies, make_policy
from gpu_scheduler.simulate.trace import TraceJob, parse_csv_trace

ROOT = Path(__file__).resolve().parents[2]
BASE = Policy()  # the config's defaults: aging every 600 s (no effect on these short traces)
HEADER = "submit_time,duration_s,gpu_share,priority,name\n"


def trace(rows: str) -> list[TraceJob]:
    parsed = parse_csv_trace(HEADER + rows, "t.csv")
    assert parsed.errors == ()
    return list(parsed.jobs)


def simulate(jobs: list[TraceJob], policy: str, gpus: int, base: Policy = BASE) -> engine.Run:
    return engine.run(jobs, make_policy(policy, base), gpus)


def starts(run: engine.Run) -> dict[str, float]:
    return {job.name: run.start_s[i] for i, job in enumerate(run.jobs)}


def summary(run: engine.Run) -> dict[str, object]:
    return report.summarise(run)


# --------------------------------------------------------------------------- hand-checked runs

FOUR_HALVES = "0,10,0.5,0,a\n0,10,0.5,0,b\n0,10,0.5,0,c\n0,10,0.5,0,d\n"


def test_four_half_gpu_jobs_on_one_gpu_take_20s_fractional_and_40s_whole_gpu() -> None:
    jobs = trace(FOUR_HALVES)
    fractional = simulate(jobs, "fractional", 1)
    whole = simulate(jobs, "whole-gpu-fifo", 1)
    first_fit = simulate(jobs, "first-fit", 1)
    # two halves share the GPU at a time: a,b at 0; c,d at 10
    assert starts(fractional) == {"a": 0, "b": 0, "c": 10, "d": 10}
    assert summary(fractional)["makespan_s"] == 20
    assert summary(first_fit)["makespan_s"] == 20
    # each half is rounded up to the whole GPU: one after the other
    assert starts(whole) == {"a": 0, "b": 10, "c": 20, "d": 30}
    s = summary(whole)
    assert s["makespan_s"] == 40
    assert s["wait_mean_s"] == 15  # (0 + 10 + 20 + 30) / 4
    assert s["utilisation"] == 0.5  # 4 x 0.5 x 10 share-s over 1 GPU x 40 s
    assert s["held_share"] == 1.0  # it held the whole GPU all the time
    assert summary(fractional)["utilisation"] == 1.0


def test_a_two_gpu_job_among_half_gpu_jobs_on_two_gpus() -> None:
    # All at t=0, 10 s each, in this order: a 0.5, B 2, c 0.5, d 0.5.
    jobs = trace("0,10,0.5,0,a\n0,10,2,0,B\n0,10,0.5,0,c\n0,10,0.5,0,d\n")
    # fractional: a -> GPU 0; B needs both GPUs, is blocked and reserves both, so c and d may not
    # backfill; at 10 a ends and B runs; at 20 c and d share GPU 0 (best fit).
    fractional = simulate(jobs, "fractional", 2)
    assert starts(fractional) == {"a": 0, "B": 10, "c": 20, "d": 20}
    assert summary(fractional)["makespan_s"] == 30
    assert summary(fractional)["wait_mean_s"] == 12.5  # (0 + 10 + 20 + 20) / 4
    # first-fit, no reservation: a and c fill GPU 0, d takes GPU 1, B waits for both: 10..20.
    first_fit = simulate(jobs, "first-fit", 2)
    assert starts(first_fit) == {"a": 0, "B": 10, "c": 0, "d": 0}
    assert summary(first_fit)["makespan_s"] == 20
    assert summary(first_fit)["wait_max_s"] == 10
    # whole GPUs in strict order: a on GPU 0, B blocks the head and nothing passes it.
    whole = simulate(jobs, "whole-gpu-fifo", 2)
    assert starts(whole) == {"a": 0, "B": 10, "c": 20, "d": 20}
    assert summary(whole)["makespan_s"] == 30


# A big job (a whole GPU) arrives behind a half-GPU job; a stream of half-GPU jobs follows,
# one every 5 s, each running 10 s. One GPU.
STARVATION = (
    "0,10,0.5,0,s0\n1,10,1,0,big\n5,10,0.5,0,s1\n10,10,0.5,0,s2\n15,10,0.5,0,s3\n20,10,0.5,0,s4\n"
)


def test_first_fit_lets_a_stream_of_small_jobs_starve_a_big_one() -> None:
    # Without a reservation every small job slips into the free half next to a running one:
    # s1 at 5 (beside s0), s2 at 10 (beside s1), s3 at 15, s4 at 20; the GPU is never empty
    # until s4 ends at 30, so big waits from 1 to 30.
    run = simulate(trace(STARVATION), "first-fit", 1)
    assert starts(run) == {"s0": 0, "big": 30, "s1": 5, "s2": 10, "s3": 15, "s4": 20}
    s = summary(run)
    assert (s["wait_max_s"], s["wait_max_job"]) == (29, "big")
    assert s["makespan_s"] == 40


def test_the_reservation_lets_the_big_job_start_as_soon_as_the_gpu_drains() -> None:
    # big is blocked at 1 and holds the GPU: s1 may not start beside s0; s0 ends at 10 and big
    # runs 10..20; then s1 and s2 (the queue's head) 20..30, s3 and s4 30..40.
    run = simulate(trace(STARVATION), "fractional", 1)
    assert starts(run) == {"s0": 0, "big": 10, "s1": 20, "s2": 20, "s3": 30, "s4": 30}
    s = summary(run)
    assert s["makespan_s"] == 40
    assert (s["wait_max_s"], s["wait_max_job"]) == (15, "s1")  # s1 and s3 wait 15; s1 is first
    assert s["wait_mean_s"] == pytest.approx(59 / 6)  # 0 + 9 + 15 + 10 + 15 + 10
    whole = simulate(trace(STARVATION), "whole-gpu-fifo", 1)
    assert starts(whole) == {"s0": 0, "big": 10, "s1": 20, "s2": 30, "s3": 40, "s4": 50}


def test_best_fit_keeps_a_whole_gpu_free_for_a_big_job() -> None:
    # x (1 GPU, 5 s) takes GPU 0, so a (0.5, 100 s) goes to GPU 1. At 6, b (0.5) arrives:
    # best fit puts it next to a on GPU 1 and GPU 0 stays whole, so C (1 GPU) starts at once at
    # 7; first fit puts b on GPU 0, and C waits until a ends at 100.
    jobs = trace("0,5,1,0,x\n0,100,0.5,0,a\n6,100,0.5,0,b\n7,10,1,0,C\n")
    assert starts(simulate(jobs, "fractional", 2))["C"] == 7
    assert starts(simulate(jobs, "first-fit", 2))["C"] == 100


def test_aging_comes_from_the_config_for_fractional_and_is_off_for_whole_gpu_fifo(
    tmp_path: Path,
) -> None:
    cfg = settings_from_dict({"scheduler": {"aging": {"interval_s": 5}}}, tmp_path / "config.json")
    base = policy_from(cfg)
    assert make_policy("fractional", base).policy.aging_interval_s == 5
    assert make_policy("first-fit", base).policy.aging_interval_s == 5
    assert make_policy("whole-gpu-fifo", base).policy.aging_interval_s == 0
    # One GPU busy until 100. lo (priority 2) waits from 1, hi (priority 0) from 50. At 100,
    # with aging every 5 s lo's priority is 2 - 19 = -17 and hi's 0 - 10 = -10: lo goes first.
    jobs = trace("0,100,1,0,x\n1,10,1,2,lo\n50,10,1,0,hi\n")
    aged = starts(simulate(jobs, "fractional", 1, base))
    assert (aged["lo"], aged["hi"]) == (100, 110)
    plain = starts(simulate(jobs, "fractional", 1, replace(base, aging_interval_s=0)))
    assert (plain["hi"], plain["lo"]) == (100, 110)
    strict = starts(simulate(jobs, "whole-gpu-fifo", 1, base))
    assert (strict["hi"], strict["lo"]) == (100, 110)


def test_busy_period_leaves_out_idle_gaps_and_utilisation_counts_requested_shares() -> None:
    # two 1-GPU jobs of 10 s, 100 s apart, on 2 GPUs: busy 20 of 110 s, half the GPUs in use
    run = simulate(trace("0,10,1,0,a\n100,10,1,0,b\n"), "fractional", 2)
    s = summary(run)
    assert (s["makespan_s"], s["busy_period_s"], s["utilisation"]) == (110, 20, 0.5)
    b = report.bounds(run.jobs, 2)
    assert b["work_bound_s"] == 10  # 2 x 1 GPU x 10 s over 2 GPUs
    assert b["arrival_bound_s"] == 110
    assert b["makespan_lower_bound_s"] == 110


def test_p95_is_the_nearest_rank() -> None:
    assert report.p95([float(v) for v in range(1, 21)]) == 19  # ceil(0.95 x 20) = 19th
    assert report.p95([5.0]) == 5
    assert report.p95([]) == 0


def test_whole_gpu_fifo_is_strict_fifo_without_backfill() -> None:
    """Against an independent strict-FIFO model: at each event time, start queue heads (by
    priority, then arrival) while they fit in whole free GPUs; stop at the first that does not."""
    rng = random.Random(5)
    rows, t = [], 0
    for n in range(150):
        t += rng.randint(0, 40)
        share = rng.choice([0.25, 0.5, 1, 2, 3, 4])
        rows.append(f"{t},{rng.randint(5, 200)},{share},{rng.randint(0, 2)},j{n}")
    jobs = trace("\n".join(rows) + "\n")
    run = simulate(jobs, "whole-gpu-fifo", 4)
    assert run.start_s == _strict_fifo(jobs, 4)


def _strict_fifo(jobs: list[TraceJob], gpus: int) -> list[float]:
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].submit_s, i))
    need = [math.ceil(j.share / 1000) for j in jobs]
    times = sorted({j.submit_s for j in jobs})
    start: dict[int, float] = {}
    ends: list[tuple[float, int]] = []
    queue: list[int] = []
    free, arrived = gpus, 0
    while len(start) < len(jobs):
        now = min([*times[:1], *(e for e, _ in ends)])
        times = [x for x in times if x != now]
        while arrived < len(order) and jobs[order[arrived]].submit_s == now:
            queue.append(order[arrived])
            arrived += 1
        free += sum(need[i] for e, i in ends if e == now)
        ends = [(e, i) for e, i in ends if e != now]
        queue.sort(key=lambda i: (jobs[i].spec.priority, order.index(i)))
        while queue and need[queue[0]] <= free:
            i = queue.pop(0)
            start[i], free = now, free - need[i]
            ends.append((now + jobs[i].duration_s, i))
    return [start[i] for i in range(len(jobs))]


# --------------------------------------------------------------------------- the real core


def test_the_simulator_asks_the_real_core_scheduler_once_per_event_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    real = Scheduler.schedule

    def counting(self: Scheduler, gpus, now, own_pids=()):  # type: ignore[no-untyped-def]
        calls.append(now)
        return real(self, gpus, now, own_pids)

    monkeypatch.setattr(Scheduler, "schedule", counting)
    run = simulate(trace(STARVATION), "fractional", 1)
    # arrivals at 0, 1, 5, 10, 15, 20 and ends at 10, 20, 30, 40: one pass per distinct time
    assert calls == [0, 1, 5, 10, 15, 20, 30, 40]
    assert run.passes == len(calls)


def test_a_change_in_the_core_changes_the_simulated_result(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = trace(FOUR_HALVES)
    assert summary(simulate(jobs, "fractional", 2))["makespan_s"] == 10
    real_place = allocator.place

    def never_gpu_1(share, rooms, free, allowed=None, exclude=(), *, best_fit=True):  # type: ignore[no-untyped-def]
        return real_place(share, rooms, free, allowed, (*exclude, 1), best_fit=best_fit)

    monkeypatch.setattr(allocator, "place", never_gpu_1)  # a core rule: GPU 1 gets nothing
    assert summary(simulate(jobs, "fractional", 2))["makespan_s"] == 20


def test_a_policy_change_in_the_core_changes_the_simulated_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_init = Scheduler.__init__

    def no_reservation(self: Scheduler, policy: Policy, gpu_indices) -> None:  # type: ignore[no-untyped-def]
        real_init(self, replace(policy, reservation=False), gpu_indices)

    monkeypatch.setattr(Scheduler, "__init__", no_reservation)
    run = simulate(trace(STARVATION), "fractional", 1)
    assert starts(run)["big"] == 30  # starved, as under first-fit


# --------------------------------------------------------------------------- whole runs


def test_two_runs_of_the_same_trace_give_identical_json() -> None:
    """Two processes (different hash seeds, so set and dict-of-str orders could differ)."""
    outputs = []
    for seed in ("1", "2"):
        cmd = [sys.executable, "-m", "gpu_scheduler", "simulate", "--trace",
               "jobs/example_trace.csv", "--gpus", "4", "--json"]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert list(json.loads(outputs[0])["policies"]) == ["fractional", "whole-gpu-fifo", "first-fit"]


_rows = st.lists(
    st.tuples(
        st.integers(0, 50),  # gap to the previous submit
        st.integers(0, 60),  # duration
        st.sampled_from(["0.125", "0.25", "0.5", "0.75", "1", "1.5", "2", "3"]),
        st.integers(0, 2),  # priority
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(rows=_rows, gpus=st.integers(3, 4))
def test_any_trace_runs_every_job_once_within_capacity_and_above_the_bounds(
    rows: list[tuple[int, int, str, int]], gpus: int
) -> None:
    t, lines = 0, []
    for n, (gap, duration, share, priority) in enumerate(rows):
        t += gap
        lines.append(f"{t},{duration},{share},{priority},j{n}")
    jobs = trace("\n".join(lines) + "\n")
    bound = report.bounds(jobs, gpus)
    for sim in make_policies([], BASE):
        run = engine.run(jobs, sim, gpus)
        for i, job in enumerate(jobs):
            assert run.start_s[i] >= job.submit_s
            assert run.finish_s[i] == run.start_s[i] + job.duration_s
            assert run.held[i] >= job.share
        assert max(run.held_share) <= 1000 * gpus
        assert run.pending[-1] == run.running[-1] == 0
        s = report.summarise(run)
        assert s["makespan_s"] >= bound["makespan_lower_bound_s"] - 1e-6
        assert s["jct_mean_s"] >= bound["jct_mean_lower_bound_s"] - 1e-6
        assert s["utilisation"] <= s["held_share"] <= 1 + 1e-9


def test_a_job_bigger_than_the_machine_is_a_located_error_and_the_rest_runs() -> None:
    jobs = trace("0,10,5,0,huge\n0,10,1,0,ok\n")
    kept, errors = engine.unplaceable(jobs, 4)
    assert [j.name for j in kept] == ["ok"]
    assert str(errors[0]).startswith("t.csv:2: the job needs 5 GPUs but only 4 are on this machine")
