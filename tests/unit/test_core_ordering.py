"""Queue order: lower priority number first, FIFO within a priority, aging so no job waits forever."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpu_scheduler.core.model import Finished, GpuSnapshot, Job, JobSpec, Pending, Succeeded
from gpu_scheduler.core.ordering import PendingQueue, effective_priority
from gpu_scheduler.core.scheduler import Policy, Scheduler


def spec(job_id: str, priority: int = 0, **kw: object) -> JobSpec:
    return JobSpec(job_id, "jobs.txt", 1, f"{priority} train.py", priority, "train.py", **kw)  # type: ignore[arg-type]


def job(
    job_id: str, priority: int, seq: int, enqueued_at: float = 0.0, share: int = 500, **kw: object
) -> Job:
    return Job(spec(job_id, priority, **kw), share, Pending(enqueued_at), seq, enqueued_at)


def gpus(n: int) -> list[GpuSnapshot]:
    return [
        GpuSnapshot(g, memory_total_mib=80_000, utilization_pct=0.0, processes=()) for g in range(n)
    ]


# --------------------------------------------------------------------------- effective priority


def test_effective_priority_improves_by_one_per_interval_waited() -> None:
    assert effective_priority(5, 100.0, 100.0, 600) == 5
    assert effective_priority(5, 100.0, 699.9, 600) == 5
    assert effective_priority(5, 100.0, 700.0, 600) == 4
    assert effective_priority(5, 100.0, 100.0 + 6000, 600) == -5  # keeps improving


def test_aging_interval_zero_disables_aging() -> None:
    assert effective_priority(5, 0.0, 1e9, 0) == 5


def test_a_clock_behind_the_enqueue_time_does_not_age_backwards() -> None:
    assert effective_priority(3, 500.0, 100.0, 600) == 3


# --------------------------------------------------------------------------- PendingQueue


def test_lower_priority_number_runs_first() -> None:
    q = PendingQueue()
    q.add(job("c", 2, seq=0))
    q.add(job("a", 0, seq=1))
    q.add(job("b", 1, seq=2))
    assert q.ordered_ids(now=0.0) == ["a", "b", "c"]


def test_fifo_within_a_priority_by_arrival() -> None:
    q = PendingQueue()
    for n, job_id in enumerate(["first", "second", "third"]):
        q.add(job(job_id, 1, seq=n, share=250 * (n + 1)))  # different shares: different buckets
    assert q.ordered_ids(now=0.0) == ["first", "second", "third"]


def test_a_requeued_job_keeps_its_place_by_seq() -> None:
    q = PendingQueue()
    q.add(job("later", 0, seq=5))
    q.add(job("earlier", 0, seq=2))  # put back after losing its process: its old seq
    assert q.ordered_ids(now=0.0) == ["earlier", "later"]


def test_aging_lets_an_old_job_overtake_newer_more_urgent_ones() -> None:
    q = PendingQueue(aging_interval_s=600)
    q.add(job("old-p3", 3, seq=0, enqueued_at=0.0))
    q.add(job("new-p1", 1, seq=1, enqueued_at=1000.0))
    assert q.ordered_ids(now=1000.0) == ["new-p1", "old-p3"]  # 3 - 1 = 2 > 1
    assert q.ordered_ids(now=1200.0) == ["old-p3", "new-p1"]  # 3 - 2 = 1: tie, older first
    assert q.ordered_ids(now=1200.0, limit=1) == ["old-p3"]


def test_remove_and_re_add() -> None:
    q = PendingQueue()
    q.add(job("a", 0, seq=0))
    q.add(job("b", 0, seq=1))
    assert q.remove("a") and not q.remove("a")
    assert "a" not in q and "b" in q and len(q) == 1
    q.add(job("a", 0, seq=0))
    q.add(job("a", 0, seq=0))  # adding twice keeps one entry
    assert q.ordered_ids(0.0) == ["a", "b"] and len(q) == 2


def test_only_pending_jobs_can_be_queued() -> None:
    done = Job(spec("x"), 500, Finished(1.0, Succeeded()), 0, 0.0)
    with pytest.raises(ValueError, match="not pending"):
        PendingQueue().add(done)


def test_a_skipped_class_shows_no_more_of_its_jobs() -> None:
    q = PendingQueue()
    q.add(job("big1", 0, seq=0, share=2000))
    q.add(job("small", 0, seq=1, share=100))
    q.add(job("big2", 0, seq=2, share=2000))
    seen, skip = [], set()
    for bucket, pos in q.merged(0.0, skip):
        job_id = bucket.ids[bucket.seqs[pos]]
        seen.append(job_id)
        if job_id == "big1":
            skip.add(bucket.cls)
    assert seen == ["big1", "small"]


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[Job], float, float]:
    """Jobs with arrival times that grow with seq (as the scheduler assigns them)."""
    n = draw(st.integers(1, 40))
    t, jobs = 0.0, []
    for seq in range(n):
        t += draw(st.floats(0, 500))
        jobs.append(
            job(
                f"j{seq}",
                draw(st.integers(0, 6)),
                seq,
                enqueued_at=t,
                share=draw(st.sampled_from([250, 500, 1000, 2000])),
                tenant=draw(st.sampled_from(["default", "lab"])),
                allowed_gpus=draw(st.sampled_from([None, (0,), (1, 2)])),
            )
        )
    removed = draw(st.sets(st.integers(0, n - 1), max_size=n // 2))
    jobs = [j for i, j in enumerate(jobs) if i not in removed] or jobs[:1]
    return jobs, t + draw(st.floats(0, 20_000)), draw(st.sampled_from([0.0, 60.0, 600.0]))


@given(queues())
def test_queue_order_is_effective_priority_then_arrival(
    case: tuple[list[Job], float, float],
) -> None:
    jobs, now, aging = case
    q = PendingQueue(aging)
    for j in reversed(jobs):  # insertion order must not matter
        q.add(j)
    expected = sorted(
        jobs,
        key=lambda j: (
            j.spec.priority - (math.floor((now - j.submitted_at) / aging) if aging else 0),
            j.seq,
        ),
    )
    assert q.ordered_ids(now) == [j.job_id for j in expected]


# --------------------------------------------------------------------------- no starvation


def run_stream(aging_interval_s: float, until: float, tick: float = 100.0) -> dict[str, float]:
    """One GPU; a priority-5 job, and a new priority-0 job every tick. Every job needs the whole
    GPU for one tick. Returns when each job started (virtual clock)."""
    s = Scheduler(Policy(aging_interval_s=aging_interval_s), [0])
    started: dict[str, float] = {}
    s.add(spec("low", priority=5), 1000, 0.0)
    now, n = 0.0, 0
    while now <= until:
        for job_id in sorted(s.running_ids):
            s.exited(job_id, 0, now)
        s.add(spec(f"urgent{n}", priority=0), 1000, now)
        n += 1
        for launch in s.schedule(gpus(1), now).launches:
            started[launch.job_id] = now
        assert len(s.running_ids) == 1  # the GPU is never idle
        now += tick
    return started


def test_a_low_priority_job_starves_without_aging() -> None:
    started = run_stream(aging_interval_s=0, until=20_000)
    assert "low" not in started
    assert len(started) == 201  # every urgent job overtook it


def test_aging_lifts_a_low_priority_job_over_a_stream_of_urgent_ones() -> None:
    started = run_stream(aging_interval_s=600, until=20_000)
    # 5 - floor(t / 600) reaches 0 at t = 3000; it then ties with the newest priority-0 job
    # and wins on arrival order
    assert started["low"] == 3000.0
    assert started["urgent29"] == 2900.0 and started["urgent30"] == 3100.0


@settings(max_examples=300, deadline=None)
@example(ops=[("add", 5), ("add", 7), ("pop_head", 0), ("add", 3)])  # an old seq comes back
@example(  # ... and is then removed from behind the head while its twin is already taken
    ops=[*(("add", n) for n in (5, 6, 7, 8, 9)), ("pop_head", 0), ("pop_head", 0)]
    + [("add", 3), ("add", 6), ("remove", 6)]
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "pop_head", "remove"]), st.integers(0, 12)), max_size=60
    )
)
def test_queue_stays_in_order_through_any_adds_and_removals(ops: list[tuple[str, int]]) -> None:
    """Placements take jobs from the head of a bucket, sync and cancel from anywhere, requeues
    put old seqs back: the order must survive all of it (one class, so one big bucket)."""
    q = PendingQueue()
    model: set[int] = set()
    for op, seq in ops:
        if op == "add":
            q.add(job(f"j{seq}", 0, seq))
            model.add(seq)
        elif op == "pop_head" and model:
            head = q.ordered_ids(0.0, limit=1)[0]
            assert q.remove(head)
            model.discard(int(head[1:]))
        elif op == "remove":
            assert q.remove(f"j{seq}") == (seq in model)
            model.discard(seq)
        assert q.ordered_ids(0.0) == [f"j{s}" for s in sorted(model)]
        assert len(q) == len(model)
