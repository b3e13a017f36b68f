"""Issue 7 in the pure core: the queue-size backlog, CUDA OOM holds and requeues, stops for
breaking a memory limit, and the max_concurrent_jobs waiting message.

Driven purely: specs, hand-built GPU snapshots and a virtual clock in, decisions out.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_scheduler.core import allocator
from gpu_scheduler.core.model import Failed, Finished, GpuSnapshot, JobSpec, Killed, Pending
from gpu_scheduler.core.scheduler import Policy, Scheduler

TOTAL = 80_000  # MiB per GPU


def spec(job_id: str, line_no: int = 1, **kw: object) -> JobSpec:
    return JobSpec(job_id, "jobs.txt", line_no, f"0 {job_id}", 0, "train.py", **kw)  # type: ignore[arg-type]


def snaps(n: int, used: dict[int, int] | None = None, **extra: object) -> list[GpuSnapshot]:
    used = used or {}
    return [
        GpuSnapshot(g, memory_total_mib=TOTAL, memory_used_mib=used.get(g, 0),
                    utilization_pct=0.0, processes=(), **extra)  # type: ignore[arg-type]
        for g in range(n)
    ]


def lines(*ids: str, share: int = 1000) -> list[tuple[JobSpec, int]]:
    return [(spec(i, n + 1), share) for n, i in enumerate(ids)]


# =========================================================================== queue_size_limit


def test_lines_over_the_queue_limit_wait_in_the_file_in_order_and_none_is_lost() -> None:
    s = Scheduler(Policy(queue_size_limit=2), range(1))
    notices = s.sync(lines("a", "b", "c", "d", "e"), 0.0)
    assert s.queued_count() == 2 and set(s.jobs) == {"a", "b"}
    assert [sp.job_id for sp, _, _ in s.backlog] == ["c", "d", "e"]
    (full,) = [n for n in notices if n.event == "queue_full"]
    assert full.message == "queue full (limit 2): 3 lines wait in the jobs file"
    # re-reading the same file says nothing new and keeps the order
    again = s.sync(lines("a", "b", "c", "d", "e"), 1.0)
    assert not [n for n in again if n.event == "queue_full"]
    order = []
    now = 2.0
    while len(order) < 5:
        report = s.schedule(snaps(1), now)
        assert s.queued_count() <= 2
        (launch,) = report.launches
        order.append(launch.job_id)
        s.exited(launch.job_id, 0, now + 1)
        now += 2
    assert order == ["a", "b", "c", "d", "e"]
    assert not s.backlog and all(j.state == "completed" for j in s.jobs.values())


def test_backlog_notice_comes_again_after_the_backlog_emptied() -> None:
    s = Scheduler(Policy(queue_size_limit=1), range(1))
    assert [n.event for n in s.sync(lines("a", "b"), 0.0)].count("queue_full") == 1
    s.schedule(snaps(1), 1.0)  # a starts, b is admitted
    assert not s.backlog
    notices = s.sync(lines("a", "b", "c", "d"), 2.0)
    assert [n.message for n in notices if n.event == "queue_full"] == [
        "queue full (limit 1): 2 lines wait in the jobs file"
    ]


def test_a_backlog_line_removed_from_the_file_is_forgotten_and_never_runs() -> None:
    s = Scheduler(Policy(queue_size_limit=1), range(1))
    s.sync(lines("a", "b", "c"), 0.0)
    s.sync(lines("a", "c"), 1.0)
    assert [sp.job_id for sp, _, _ in s.backlog] == ["c"]
    assert "b" not in s.jobs


def test_a_job_waiting_for_a_backlog_line_does_not_block_the_queue() -> None:
    """B (first in the file) waits for A (behind the limit): held jobs do not count."""
    s = Scheduler(Policy(queue_size_limit=1), range(1))
    s.sync(lines("b", "a"), 0.0, deps={"b": ("a",)})
    assert "a" in s.jobs and "b" in s.held and not s.backlog


def test_backlog_admission_notices_are_in_the_pass_report() -> None:
    s = Scheduler(Policy(queue_size_limit=1), range(2))
    s.sync(lines("a", "b", "c"), 0.0)
    report = s.schedule(snaps(2), 1.0)
    assert [x.job_id for x in report.launches] == ["a"]
    assert [n.job_id for n in report.notices if n.event == "enqueued"] == ["b"]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 12),
    st.lists(st.integers(1, 12), max_size=4),
)
def test_no_line_is_lost_and_file_order_is_kept_whatever_the_limit(
    limit: int, count: int, rereads: list[int]
) -> None:
    """Lines appended over several reads all run exactly once, in file order (one GPU)."""
    ids = [f"j{n:02d}" for n in range(count)]
    s = Scheduler(Policy(queue_size_limit=limit), range(1))
    ran: list[str] = []
    now = 0.0
    shown = 1
    for grow in [*rereads, count]:
        shown = min(count, max(shown, grow))
        s.sync(lines(*ids[:shown]), now)
        assert s.queued_count() <= limit
        for launch in s.schedule(snaps(1), now).launches:
            ran.append(launch.job_id)
            s.exited(launch.job_id, 0, now)
        now += 1
    for _ in range(2 * count + 2):
        s.sync(lines(*ids), now)
        for launch in s.schedule(snaps(1), now).launches:
            ran.append(launch.job_id)
            s.exited(launch.job_id, 0, now)
        now += 1
    assert ran == ids


# =========================================================================== max_concurrent_jobs


def test_max_concurrent_jobs_says_why_the_next_job_waits() -> None:
    s = Scheduler(Policy(max_concurrent_jobs=2), range(4))
    s.sync(lines("a", "b", "c", share=100), 0.0)
    report = s.schedule(snaps(4), 0.0)
    assert len(report.launches) == 2
    assert report.waiting == {"c": "max_concurrent_jobs (2) reached; waits for a job to end"}


# =========================================================================== CUDA OOM


def oom_setup(max_attempts: int = 3) -> Scheduler:
    s = Scheduler(Policy(max_assignment_attempts=max_attempts), range(2))
    s.add(spec("j", allowed_gpus=(0,)), 500, 0.0)
    (launch,) = s.schedule(snaps(2), 0.0).launches
    assert launch.gpus == (0,)
    return s


def test_cuda_oom_requeues_the_job_and_holds_its_gpu_until_the_memory_is_back() -> None:
    s = oom_setup()
    s.schedule(snaps(2), 1.0)
    notice = s.exited("j", 1, 2.0, oom=True)
    job = s.jobs["j"]
    assert notice.event == "oom_requeued" and job.state == "pending"
    assert isinstance(job.status, Pending)
    assert job.status.reason == "CUDA out of memory on GPU 0 (exit 1); requeued (1 of 3)"
    assert job.oom_requeues == 1 and job.last_exit_code == 1
    assert s.oom_holds == {0: 40_000}  # its share (0.5) of an 80,000 MiB GPU
    # a foreign process holds 60,000 MiB: only 20,000 free, so GPU 0 takes nothing new
    report = s.schedule(snaps(2, used={0: 60_000}), 3.0)
    assert not report.launches
    assert report.rooms[0].reason == (
        "CUDA OOM here; waiting for 40000 MiB to be free (20000 MiB free now)"
    )
    assert "GPU 0 CUDA OOM here" in report.waiting["j"]
    # other work is not placed there either, but may go elsewhere
    s.add(spec("other", 2), 250, 3.0)
    assert [x.gpus for x in s.schedule(snaps(2, used={0: 60_000}), 4.0).launches] == [(1,)]
    # memory back: the hold ends and the job runs again on its GPU
    report = s.schedule(snaps(2, used={0: 40_000}), 5.0)
    assert [(x.job_id, x.gpus) for x in report.launches] == [("j", (0,))]
    assert s.oom_holds == {}


def test_oom_requeues_are_bounded_then_the_job_fails_with_its_code_and_the_reason() -> None:
    s = oom_setup(max_attempts=2)
    for attempt in range(2):
        assert s.exited("j", 1, 10.0 * attempt + 1, oom=True).event == "oom_requeued"
        assert s.schedule(snaps(2), 10.0 * attempt + 2).launches
    notice = s.exited("j", 1, 30.0, oom=True)
    job = s.jobs["j"]
    assert notice.event == "failed"
    assert notice.message == "exit 1 (CUDA out of memory; 2 OOM requeues used)"
    assert isinstance(job.status, Finished) and job.status.outcome == Failed(1)
    assert s.oom_holds == {0: 40_000}  # the GPU is still short of memory


def test_oom_is_ignored_for_exit_0_and_for_a_job_being_stopped() -> None:
    s = oom_setup()
    assert s.exited("j", 0, 1.0, oom=True).event == "completed"
    assert s.oom_holds == {}
    s2 = oom_setup()
    s2.cancel("j", 1.0)
    assert s2.exited("j", 143, 2.0, oom=True).event == "cancelled"
    assert s2.oom_holds == {}


def test_oom_holds_left() -> None:
    gpus = snaps(2, used={0: 50_000})
    unhealthy = [GpuSnapshot(1, memory_total_mib=TOTAL, healthy=False)]
    assert allocator.oom_holds_left({0: 40_000, 1: 40_000}, gpus) == {0: 40_000}
    assert allocator.oom_holds_left({0: 30_000}, gpus) == {}
    assert allocator.oom_holds_left({1: 1}, unhealthy) == {1: 1}
    assert allocator.oom_holds_left({5: 1}, gpus) == {5: 1}  # GPU not seen: keep the hold


# =========================================================================== memory stops


def test_a_memory_stop_ends_the_job_as_killed_with_the_reason() -> None:
    s = oom_setup()
    reason = "memory limit exceeded (0.29 GiB > 0.20 GiB)"
    stop = s.request_stop("j", "memory", 1.0, reason)
    assert stop.reason == "memory" and stop.detail == reason
    assert s.exited("j", 143, 2.0).event == "killed"
    job = s.jobs["j"]
    assert job.state == "failed"
    assert isinstance(job.status, Finished) and job.status.outcome == Killed(reason)
