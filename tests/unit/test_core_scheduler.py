"""The scheduler's decisions, driven purely: specs, GPU snapshots and events in, actions out.

Time is a virtual clock passed in by each test; GPUs are snapshots built by hand.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gpu_scheduler.core.model import (
    Cancelled,
    DependencyFailed,
    Failed,
    Finished,
    GpuProcess,
    GpuSnapshot,
    Job,
    JobSpec,
    Killed,
    Launch,
    LaunchFailed,
    Pending,
    Running,
    Stop,
    Succeeded,
    TimedOut,
    describe_outcome,
    state_name,
)
from gpu_scheduler.core.scheduler import PassReport, Policy, Scheduler, UnknownJob, session_name
from gpu_scheduler.core.transitions import transition
from gpu_scheduler.core.units import ONE_GPU, gpus_needed
from gpu_scheduler.errors import IllegalTransition

TOTAL = 80_000  # MiB per simulated GPU
SESSION_CHARS = re.compile(r"[A-Za-z0-9_.-]+")


def spec(job_id: str, priority: int = 0, script: str = "train.py", **kw: object) -> JobSpec:
    return JobSpec(job_id, "jobs.txt", 1, f"{priority} {script}", priority, script, **kw)  # type: ignore[arg-type]


def snaps(n: int, **per_gpu: dict[str, object]) -> list[GpuSnapshot]:
    """``n`` idle 80 GB GPUs; ``g1={"healthy": False}`` changes fields of GPU 1."""
    out = []
    for g in range(n):
        fields: dict[str, object] = {
            "memory_total_mib": TOTAL,
            "memory_used_mib": 0,
            "utilization_pct": 0.0,
            "processes": (),
        }
        fields.update(per_gpu.get(f"g{g}", {}))
        out.append(GpuSnapshot(index=g, **fields))  # type: ignore[arg-type]
    return out


def foreign(mib: int) -> dict[str, object]:
    return {"memory_used_mib": mib, "processes": (GpuProcess(pid=4242, used_mib=mib),)}


def sched(n: int = 4, **policy: object) -> Scheduler:
    return Scheduler(Policy(**policy), range(n))  # type: ignore[arg-type]


def started(report: PassReport) -> dict[str, tuple[int, ...]]:
    return {launch.job_id: launch.gpus for launch in report.launches}


def run_one(s: Scheduler, job_id: str, share: int = 500, now: float = 0.0, **kw: object) -> Launch:
    s.add(spec(job_id, **kw), share, now)
    report = s.schedule(snaps(len(s.gpu_indices)), now)
    (launch,) = [x for x in report.launches if x.job_id == job_id]
    return launch


# =========================================================================== state machine

EXAMPLES = {
    "pending": Pending(0.0),
    "running": Running(0.0, (0,), 500, "gpujob_0_train_x"),
    "completed": Finished(1.0, Succeeded()),
    "failed": Finished(1.0, Failed(2)),
    "cancelled": Finished(1.0, Cancelled()),
}
ISSUE_LEGAL = {
    ("pending", "running"),  # launch
    ("running", "completed"),  # exit 0
    ("running", "failed"),  # exit N, timeout, killed, launch failed
    ("running", "cancelled"),  # cancel, then exit
    ("running", "pending"),  # requeue: lost process, retries=N, launch retry
    ("pending", "cancelled"),  # cancel while waiting
    ("pending", "failed"),  # a dependency failed
    ("completed", "pending"),  # retry by the user
    ("failed", "pending"),
    ("cancelled", "pending"),
    ("pending", "pending"),  # reshare, delayed retry promoted
    ("running", "running"),  # pid learned, stop requested
}


@pytest.mark.parametrize("old", list(EXAMPLES))
@pytest.mark.parametrize("new", list(EXAMPLES))
def test_transition_table(old: str, new: str) -> None:
    job = Job(spec("x"), 500, EXAMPLES[old], 0, 0.0)
    if (old, new) in ISSUE_LEGAL:
        assert transition(job, EXAMPLES[new]).state == new
    else:
        with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
            transition(job, EXAMPLES[new])


@pytest.mark.parametrize(
    ("outcome", "state", "text"),
    [
        (Succeeded(), "completed", "exit 0"),
        (Failed(3), "failed", "exit 3"),
        (TimedOut(60), "failed", "timed out after 60s"),
        (LaunchFailed("no conda env 'x'"), "failed", "launch failed: no conda env 'x'"),
        (Cancelled("alice"), "cancelled", "cancelled by alice"),
        (Killed("used 30 GB, share 20 GB"), "failed", "used 30 GB, share 20 GB"),
        (DependencyFailed("prep"), "failed", "dependency failed: prep"),
    ],
)
def test_five_user_states_and_their_reasons(outcome: object, state: str, text: str) -> None:
    assert state_name(Finished(1.0, outcome)) == state  # type: ignore[arg-type]
    assert describe_outcome(outcome) == text  # type: ignore[arg-type]


def test_events_for_the_wrong_state_are_refused_and_change_nothing() -> None:
    s = sched(1)
    s.add(spec("p"), 500, 0.0)
    with pytest.raises(ValueError, match="pending, not running"):
        s.exited("p", 0, 1.0)
    with pytest.raises(ValueError, match="only finished jobs can be retried"):
        s.retry("p", 1.0)
    assert s.job("p").state == "pending" and s.queue_order(1.0) == ["p"]
    run_one(s, "r", now=1.0)
    s.exited("r", 0, 2.0)
    with pytest.raises(ValueError, match="already completed"):
        s.cancel("r", 3.0)
    with pytest.raises(ValueError, match="completed, not running"):
        s.lost("r", "gone", 3.0)
    assert s.job("r").state == "completed"
    with pytest.raises(UnknownJob):
        s.cancel("nope", 3.0)


# =========================================================================== placement


def test_fractional_jobs_share_a_gpu_up_to_one_whole_gpu() -> None:
    s = sched(1)
    for n in range(5):
        s.add(spec(f"q{n}"), 250, 0.0)
    report = s.schedule(snaps(1), 0.0)
    assert sorted(started(report)) == ["q0", "q1", "q2", "q3"]
    assert s.used() == {0: 1000}
    assert report.waiting == {"q4": "waiting for share 0.25; GPUs 0 held for it"}


def test_a_multi_gpu_job_gets_ceil_share_gpus_with_an_equal_slice() -> None:
    s = sched(4)
    launch = run_one(s, "gang", share=2500)
    assert len(launch.gpus) == 3 and launch.share_per_gpu == 834
    assert [s.used()[g] for g in launch.gpus] == [834, 834, 834]
    assert s.job("gang").status.gpus == launch.gpus  # type: ignore[union-attr]


def test_a_gang_is_never_partially_placed() -> None:
    s = sched(3)
    run_one(s, "half", share=600)
    s.add(spec("gang"), 3000, 1.0)
    report = s.schedule(snaps(3), 1.0)
    assert not report.launches
    assert s.used() == {0: 600, 1: 0, 2: 0}


def test_best_fit_packs_small_jobs_so_a_whole_gpu_stays_free() -> None:
    s = sched(2)
    for n in range(3):
        s.add(spec(f"small{n}"), 300, 0.0)
    s.schedule(snaps(2), 0.0)
    assert s.used() == {0: 900, 1: 0}
    s.add(spec("whole"), 1000, 2.0)
    assert started(s.schedule(snaps(2), 2.0)) == {"whole": (1,)}


def test_first_fit_policy_is_available_as_a_baseline() -> None:
    s = sched(2, best_fit=False)
    run_one(s, "a", share=300)
    s.add(spec("b"), 600, 1.0)
    assert started(s.schedule(snaps(2), 1.0)) == {"b": (0,)}


def test_allowed_gpus_are_respected() -> None:
    s = sched(4)
    assert run_one(s, "pinned", share=500, allowed_gpus=(2,)).gpus == (2,)
    assert run_one(s, "pair", share=2000, allowed_gpus=(1, 3), now=1.0).gpus == (1, 3)
    s.add(spec("stuck", allowed_gpus=(3,)), 500, 2.0)
    report = s.schedule(snaps(4), 2.0)
    assert not report.launches
    assert report.waiting["stuck"] == "waiting for share 0.5; GPUs 3 held for it"


def test_a_just_launched_job_counts_before_it_allocates_memory() -> None:
    s = sched(1)
    run_one(s, "first", share=600)
    s.add(spec("third"), 400, 1.0)
    s.add(spec("second"), 600, 1.0)
    # the probe still sees an empty GPU: first has not allocated anything yet
    report = s.schedule(snaps(1), 1.0)
    assert started(report) == {"third": (0,)}
    assert s.used() == {0: 1000}


def test_foreign_memory_reduces_what_we_place_on_a_gpu() -> None:
    s = sched(2)
    s.add(spec("big"), 600, 0.0)
    # 40 GB of 80 GB on GPU 0 are held by someone else's process: only 0.5 left there
    report = s.schedule(snaps(2, g0=foreign(40_000)), 0.0)
    assert started(report) == {"big": (1,)}
    s.add(spec("half"), 500, 1.0)
    s.add(spec("more"), 600, 1.0)
    report = s.schedule(snaps(2, g0=foreign(40_000)), 1.0)
    assert started(report) == {"half": (0,)}
    # GPU 0 could never hold 0.6 while that memory is taken, so only GPU 1 is held for it
    assert report.waiting["more"] == "waiting for share 0.6; GPUs 1 held for it"


def test_our_own_processes_memory_is_not_foreign() -> None:
    s = sched(1)
    run_one(s, "ours", share=500)
    s.launched("ours", pid=777, pid_started_at=1.0)
    ours = {"memory_used_mib": 40_000, "processes": (GpuProcess(777, 40_000),)}
    s.add(spec("next"), 500, 1.0)
    assert started(s.schedule(snaps(1, g0=ours), 1.0, own_pids={777})) == {"next": (0,)}


def test_a_gpu_busy_with_foreign_work_gets_nothing() -> None:
    s = sched(1)
    s.add(spec("j"), 100, 0.0)
    report = s.schedule(snaps(1, g0={"utilization_pct": 97.0}), 0.0)
    assert not report.launches
    assert "busy with foreign work (97% utilisation" in report.waiting["j"]
    # the same load from our own job does not lock the GPU
    s2 = sched(1)
    run_one(s2, "ours", share=500)
    s2.add(spec("j"), 100, 1.0)
    assert started(s2.schedule(snaps(1, g0={"utilization_pct": 97.0}), 1.0)) == {"j": (0,)}


def test_a_gpu_filled_by_foreign_memory_gets_nothing() -> None:
    s = sched(1)
    s.add(spec("tiny"), 50, 0.0)
    report = s.schedule(snaps(1, g0=foreign(76_000)), 0.0)  # 95 % > memory_threshold 0.9
    assert not report.launches
    assert "foreign processes use 95% of its memory" in report.waiting["tiny"]


def test_an_unhealthy_gpu_gets_nothing() -> None:
    s = sched(2, reservation=False)
    s.add(spec("a"), 1000, 0.0)
    s.add(spec("b"), 1000, 0.0)
    report = s.schedule(snaps(2, g1={"healthy": False, "error": "Xid 79"}), 0.0)
    assert started(report) == {"a": (0,)}
    assert report.waiting["b"] == "needs share 1: GPU 0 0 free; GPU 1 unhealthy: Xid 79"


def test_max_concurrent_jobs_caps_running_jobs() -> None:
    s = sched(4, max_concurrent_jobs=2)
    for n in range(4):
        s.add(spec(f"j{n}"), 100, 0.0)
    assert len(s.schedule(snaps(4), 0.0).launches) == 2
    assert not s.schedule(snaps(4), 1.0).launches
    s.exited("j0", 0, 2.0)
    assert started(s.schedule(snaps(4), 2.0)).keys() == {"j2"}


# =========================================================================== reservation


class Sim:
    """Drives a Scheduler with a virtual clock: each job runs for its duration, then exits 0."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.gpus = snaps(len(scheduler.gpu_indices))
        self.now = 0
        self.duration: dict[str, int] = {}
        self.ends: dict[str, int] = {}
        self.starts: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.passes: list[PassReport] = []

    def add(self, job_id: str, share: int, duration: int, priority: int = 0, **kw: object) -> None:
        self.duration[job_id] = duration
        self.s.add(spec(job_id, priority, **kw), share, self.now)

    def step(self) -> PassReport:
        for job_id, end in sorted(self.ends.items()):
            if end <= self.now:
                del self.ends[job_id]
                self.s.exited(job_id, 0, self.now)
        report = self.s.schedule(self.gpus, self.now)
        for launch in report.launches:
            self.starts[launch.job_id] = (self.now, launch.gpus)
            self.ends[launch.job_id] = self.now + self.duration[launch.job_id]
        self.passes.append(report)
        return report

    def run_until(self, end: int, dt: int = 10) -> None:
        while self.now <= end:
            self.step()
            self.now += dt


def big_job_behind_small_ones(reservation: bool) -> Sim:
    """Two GPUs. GPU 0 holds two half-GPU jobs that end at t=100 and t=150; GPU 1 holds a
    half-GPU job that never ends. At t=60 a whole-GPU job arrives at the head of the queue,
    behind it a stream of half-GPU jobs that each run 100 s."""
    sim = Sim(Scheduler(Policy(reservation=reservation), [0, 1]))
    sim.add("pin0a", 500, 100, allowed_gpus=(0,))
    sim.add("forever", 500, 10**9, allowed_gpus=(1,))
    sim.step()
    sim.now = 50
    sim.add("pin0b", 500, 100, allowed_gpus=(0,))
    sim.step()
    sim.now = 60
    sim.add("big", 1000, 100, priority=0)
    for n in range(100):
        sim.add(f"small{n}", 500, 100, priority=1)
    sim.run_until(2000)
    return sim


def test_without_reservation_a_big_job_starves_behind_small_ones() -> None:
    sim = big_job_behind_small_ones(reservation=False)
    assert "big" not in sim.starts
    on_gpu0 = [
        job for job, (_, gpus) in sim.starts.items() if job.startswith("small") and gpus == (0,)
    ]
    assert len(on_gpu0) >= 30  # every hole on GPU 0 was refilled before it could drain
    assert sim.passes[-1].waiting["big"].startswith("needs share 1:")


def test_with_reservation_the_big_job_runs_when_its_held_gpu_drains() -> None:
    sim = big_job_behind_small_ones(reservation=True)
    assert sim.starts["big"] == (150, (0,))  # pin0b ended at 150, nothing refilled GPU 0
    # meanwhile small jobs were backfilled onto the other GPU
    assert sim.starts["small0"] == (100, (1,))
    # no pass ever gave a held GPU to another job
    held_passes = [p for p in sim.passes if p.reserved_for == "big"]
    assert held_passes
    for p in held_passes:
        for launch in p.launches:
            assert not set(launch.gpus) & set(p.reserved_gpus), (launch, p.reserved_gpus)
    assert "held for it" in held_passes[0].waiting["big"]
    # and after the big job, the stream goes on
    assert sum(1 for job in sim.starts if job.startswith("small")) >= 30


@pytest.mark.parametrize("reservation", [True, False])
def test_reservation_for_a_gang_holds_several_gpus(reservation: bool) -> None:
    sim = Sim(Scheduler(Policy(reservation=reservation), range(4)))
    for g in range(4):  # half-GPU jobs ending at t=100, 120, 140, 160
        sim.add(f"pin{g}", 500, 100 + 20 * g, allowed_gpus=(g,))
    sim.step()
    sim.now = 10
    sim.add("gang", 2000, 50, priority=0)
    for n in range(50):
        sim.add(f"small{n}", 500, 100, priority=1)
    sim.run_until(600)
    if not reservation:
        assert "gang" not in sim.starts
        return
    assert sim.starts["gang"] == (120, (0, 1))  # the two GPUs that drained first
    for p in sim.passes:
        if p.reserved_for == "gang":
            assert len(p.reserved_gpus) == 2
            assert all(not set(x.gpus) & set(p.reserved_gpus) for x in p.launches)


@given(
    n=st.integers(1, 4),
    running=st.lists(st.integers(1, 20).map(lambda x: x * 50), max_size=6),
    queued=st.lists(
        st.tuples(st.integers(1, 40).map(lambda x: x * 50), st.integers(0, 2)),
        min_size=1,
        max_size=8,
    ),
)
def test_gpus_held_for_a_blocked_job_get_nothing_from_the_jobs_behind_it(
    n: int, running: list[int], queued: list[tuple[int, int]]
) -> None:
    s = sched(n)
    for i, share in enumerate(running):
        s.add(spec(f"r{i}"), share, 0.0)
    s.schedule(snaps(n), 0.0)
    for i, (share, priority) in enumerate(queued):
        s.add(spec(f"q{i}", priority), share, 1.0)
    order = {j: (job.spec.priority, job.seq) for j, job in s.jobs.items() if job.state == "pending"}
    report = s.schedule(snaps(n), 1.0)
    if report.reserved_for is None:
        return
    big = s.job(report.reserved_for)
    assert big.state == "pending" and len(report.reserved_gpus) == gpus_needed(big.share)
    for launch in report.launches:
        if order[launch.job_id] > order[big.job_id]:
            assert not set(launch.gpus) & set(report.reserved_gpus), (launch, report)


@pytest.mark.parametrize(
    ("share", "allowed", "why"),
    [
        (5000, None, "needs 5 GPUs but only 4 are on this machine"),
        (2000, (1,), "needs 2 GPUs but only 1 is allowed"),
    ],
)
def test_a_job_that_can_never_fit_holds_no_gpus_hostage(
    share: int, allowed: tuple[int, ...] | None, why: str
) -> None:
    s = sched(4)
    s.add(spec("impossible", priority=0, allowed_gpus=allowed), share, 0.0)
    for n in range(4):
        s.add(spec(f"small{n}", priority=5), 1000, 1.0)
    report = s.schedule(snaps(4), 2.0)
    assert sorted(started(report)) == ["small0", "small1", "small2", "small3"]
    assert report.reserved_for is None and report.reserved_gpus == ()
    assert report.waiting["impossible"] == why
    assert s.job("impossible").state == "pending"


# =========================================================================== the jobs file


def test_sync_enqueues_new_lines() -> None:
    s = sched(1)
    notices = s.sync([(spec("a"), 500), (spec("b"), 250)], 0.0)
    assert [(n.event, n.job_id) for n in notices] == [("enqueued", "a"), ("enqueued", "b")]
    assert s.queue_order(0.0) == ["a", "b"] and s.pending_count() == 2


def test_sync_dequeues_a_pending_job_whose_line_disappeared() -> None:
    s = sched(1)
    s.sync([(spec("a"), 500), (spec("b"), 250)], 0.0)
    notices = s.sync([(spec("a"), 500)], 1.0)
    assert [(n.event, n.job_id) for n in notices] == [("dequeued", "b")]
    assert "b" not in s.jobs and s.queue_order(1.0) == ["a"]


def test_sync_dequeues_a_job_waiting_for_a_launch_retry() -> None:
    s = sched(1)
    s.sync([(spec("a"), 500)], 0.0)
    s.schedule(snaps(1), 0.0)
    s.launch_failed("a", "screen failed", 1.0)
    s.sync([], 2.0)
    assert "a" not in s.jobs and s.pending_count() == 0 and s.next_deadline() is None


def test_a_running_job_whose_line_disappeared_keeps_running() -> None:
    s = sched(1)
    s.sync([(spec("a"), 500)], 0.0)
    s.schedule(snaps(1), 0.0)
    assert s.sync([], 1.0) == []
    assert s.job("a").state == "running" and s.used() == {0: 500}


def test_a_finished_job_whose_line_is_still_there_is_never_re_run() -> None:
    s = sched(1)
    lines = [(spec("a"), 500)]
    s.sync(lines, 0.0)
    s.schedule(snaps(1), 0.0)
    s.exited("a", 0, 5.0)
    for t in range(6, 10):
        assert s.sync(lines, float(t)) == []
        assert not s.schedule(snaps(1), float(t)).launches
    assert s.job("a").state == "completed"


def test_an_archived_job_is_never_re_run() -> None:
    s = sched(1)
    lines = [(spec("a"), 500)]
    s.sync(lines, 0.0)
    s.schedule(snaps(1), 0.0)
    s.exited("a", 1, 5.0)
    s.archive("a")
    assert s.sync(lines, 6.0) == []
    assert "a" not in s.jobs and not s.schedule(snaps(1), 6.0).launches
    assert s.archived == {"a": "failed"}


def test_a_changed_share_re_resolves_a_pending_job() -> None:
    s = sched(2)
    s.sync([(spec("llm", llm="qwen2.5-7b"), 500)], 0.0)
    notices = s.sync([(spec("llm", llm="qwen2.5-7b"), 1500)], 1.0)  # llm_config reloaded
    assert [(n.event, n.message) for n in notices] == [("reshared", "share 0.5 -> 1.5")]
    assert s.job("llm").share == 1500
    launch = s.schedule(snaps(2), 1.0).launches[0]
    assert launch.gpus == (0, 1) and launch.share_per_gpu == 750


def test_a_changed_share_does_not_touch_a_running_job() -> None:
    s = sched(1)
    s.sync([(spec("a"), 500)], 0.0)
    s.schedule(snaps(1), 0.0)
    s.sync([(spec("a"), 900)], 1.0)
    assert s.job("a").share == 500 and s.used() == {0: 500}


def test_a_reshare_keeps_a_launch_retry_waiting() -> None:
    s = sched(1, assignment_retry_wait_s=10)
    s.sync([(spec("a"), 500)], 0.0)
    s.schedule(snaps(1), 0.0)
    s.launch_failed("a", "boom", 1.0)
    s.sync([(spec("a"), 700)], 2.0)
    assert not s.schedule(snaps(1), 5.0).launches
    launch = s.schedule(snaps(1), 11.0).launches[0]
    assert launch.share_per_gpu == 700


# =========================================================================== exits


def test_exit_zero_completes_and_frees_the_share() -> None:
    s = sched(1)
    run_one(s, "a", share=700)
    notice = s.exited("a", 0, 9.0)
    assert notice.event == "completed"
    job = s.job("a")
    assert job.state == "completed" and job.status == Finished(9.0, Succeeded(), 0.0, (0,))
    assert s.used() == {0: 0} and s.running_ids == frozenset()


def test_a_non_zero_exit_fails_with_its_code() -> None:
    s = sched(1)
    run_one(s, "a")
    notice = s.exited("a", 3, 9.0)
    assert (notice.event, notice.data) == ("failed", {"exit_code": 3})
    job = s.job("a")
    assert job.state == "failed" and job.status.outcome == Failed(3)  # type: ignore[union-attr]
    assert job.last_exit_code == 3 and s.used() == {0: 0}


def test_retries_re_queue_up_to_n_times_then_fail() -> None:
    s = sched(1)
    s.add(spec("flaky", retries=2), 500, 0.0)
    runs = 0
    for t in range(10):
        if s.schedule(snaps(1), float(t)).launches:
            runs += 1
            notice = s.exited("flaky", 1, t + 0.5)
    assert runs == 3
    assert notice.event == "failed"
    job = s.job("flaky")
    assert job.state == "failed" and job.retries_used == 2 and job.last_exit_code == 1


def test_a_retry_that_succeeds_completes() -> None:
    s = sched(1)
    s.add(spec("flaky", retries=2), 500, 0.0)
    s.schedule(snaps(1), 0.0)
    assert s.exited("flaky", 1, 1.0).event == "retrying"
    assert s.job("flaky").state == "pending"
    assert s.schedule(snaps(1), 2.0).launches
    assert s.exited("flaky", 0, 3.0).event == "completed"


def test_cancel_a_pending_job() -> None:
    s = sched(1)
    s.add(spec("a"), 500, 0.0)
    stops, notice = s.cancel("a", 1.0, by="alice")
    assert stops == [] and notice.event == "cancelled"
    assert s.job("a").state == "cancelled" and s.pending_count() == 0
    assert not s.schedule(snaps(1), 2.0).launches


def test_cancel_a_running_job_stops_it_and_its_exit_means_cancelled() -> None:
    s = sched(1, stop_grace_s=15)
    run_one(s, "a", share=600)
    stops, notice = s.cancel("a", 5.0, by="alice")
    assert stops == [Stop("a", "cancel", 15, "alice")] and notice.event == "cancelling"
    # until the process is gone its share stays counted
    assert s.job("a").state == "running" and s.used() == {0: 600}
    s.add(spec("b"), 600, 5.0)
    assert not s.schedule(snaps(1), 6.0).launches
    assert s.exited("a", -15, 7.0).event == "cancelled"
    assert s.job("a").status.outcome == Cancelled("alice")  # type: ignore[union-attr]
    assert started(s.schedule(snaps(1), 8.0)) == {"b": (0,)}


def test_a_timed_out_job_is_stopped_and_its_exit_means_failed() -> None:
    s = sched(1)
    run_one(s, "slow", share=500, now=10.0, timeout_s=60)
    assert s.check_timeouts(69.9) == []
    stops = s.check_timeouts(70.0)
    assert stops == [Stop("slow", "timeout", 30.0, "timeout 60s")]
    assert s.check_timeouts(80.0) == []  # asked once
    assert s.exited("slow", -15, 75.0).event == "timed_out"
    job = s.job("slow")
    assert job.state == "failed" and job.status.outcome == TimedOut(60)  # type: ignore[union-attr]
    assert describe_outcome(job.status.outcome) == "timed out after 60s"  # type: ignore[union-attr]


def test_the_default_timeout_applies_unless_the_line_sets_one() -> None:
    s = sched(2, default_timeout_s=100)
    run_one(s, "default")
    run_one(s, "own", timeout_s=500)
    assert [x.job_id for x in s.check_timeouts(100.0)] == ["default"]


def test_a_failed_launch_is_retried_after_the_wait_then_fails() -> None:
    s = sched(1, max_assignment_attempts=3, assignment_retry_wait_s=10)
    s.add(spec("a"), 500, 0.0)
    t = 0.0
    for attempt in (1, 2):
        assert started(s.schedule(snaps(1), t)) == {"a": (0,)}
        notice = s.launch_failed("a", "conda env 'x' not found", t + 1)
        assert notice.event == "launch_retry" and notice.data["attempt"] == attempt
        assert s.job("a").state == "pending" and s.used() == {0: 0}
        assert s.next_deadline() == t + 11
        # not before the wait is over (and the freed GPU is not wasted meanwhile)
        s.add(spec(f"filler{attempt}", priority=9), 1000, t + 1)
        report = s.schedule(snaps(1), t + 11 - 1e-6)
        assert started(report) == {f"filler{attempt}": (0,)}
        s.exited(f"filler{attempt}", 0, t + 11 - 1e-6)
        t += 11
    assert started(s.schedule(snaps(1), t)) == {"a": (0,)}
    notice = s.launch_failed("a", "conda env 'x' not found", t + 1)
    assert notice.event == "launch_failed"
    job = s.job("a")
    assert job.state == "failed" and job.launch_failures == 3
    assert describe_outcome(job.status.outcome) == "launch failed: conda env 'x' not found"  # type: ignore[union-attr]
    assert not s.schedule(snaps(1), t + 100).launches and s.next_deadline() is None


def test_a_lost_job_is_requeued_and_relaunched_as_its_next_attempt() -> None:
    s = sched(1)
    first = run_one(s, "a", share=500)
    assert first.preempted is False
    s.add(spec("later"), 500, 1.0)  # same priority, arrived later
    s.schedule(snaps(1), 1.0)  # later runs beside a
    s.exited("later", 0, 2.0)
    s.add(spec("latest"), 1000, 3.0)
    notice = s.lost("a", "runner killed", 4.0)
    assert notice.event == "requeued"
    job = s.job("a")
    assert job.state == "pending" and job.requeues == 1 and s.used() == {0: 0}
    assert s.queue_order(4.0) == ["a", "latest"]  # it keeps its place
    (again,) = s.schedule(snaps(1), 4.0).launches
    # a lost process is not a preemption: only the attempt number tells the job it restarted
    assert again.job_id == "a" and again.attempt == 2 and again.preempted is False


def test_a_job_lost_while_being_cancelled_is_cancelled_not_re_run() -> None:
    # the stop killed the runner's whole process group, so no exit record was written
    s = sched(1)
    run_one(s, "a")
    s.cancel("a", 1.0, by="alice")
    s.lost("a", "its process vanished", 40.0)
    job = s.job("a")
    assert job.state == "cancelled" and job.status.outcome == Cancelled("alice")  # type: ignore[union-attr]
    assert not s.schedule(snaps(1), 41.0).launches and s.used() == {0: 0}


def test_a_job_lost_while_being_stopped_for_its_timeout_has_timed_out() -> None:
    s = sched(1)
    run_one(s, "a", timeout_s=10)
    s.check_timeouts(10.0)
    s.lost("a", "its process vanished", 45.0)
    job = s.job("a")
    assert job.state == "failed" and job.status.outcome == TimedOut(10)  # type: ignore[union-attr]
    assert not s.schedule(snaps(1), 46.0).launches


def test_a_launch_that_fails_after_a_cancel_is_not_retried() -> None:
    s = sched(1)
    run_one(s, "a")
    s.cancel("a", 1.0)
    s.launch_failed("a", "screen failed", 2.0)
    assert s.job("a").state == "cancelled"
    assert not s.schedule(snaps(1), 100.0).launches and s.next_deadline() is None


def test_user_retry_queues_a_finished_job_again_as_a_new_arrival() -> None:
    s = sched(1)
    s.add(spec("a", retries=1), 500, 0.0)
    s.schedule(snaps(1), 0.0)
    s.exited("a", 1, 1.0)
    s.schedule(snaps(1), 2.0)
    s.exited("a", 1, 3.0)
    s.add(spec("b"), 500, 4.0)
    assert s.retry("a", 5.0).event == "retried"
    job = s.job("a")
    assert job.state == "pending" and job.retries_used == 0 and job.submitted_at == 5.0
    assert s.queue_order(5.0) == ["b", "a"]


# =========================================================================== deadlines


def test_next_deadline_is_the_earliest_retry_or_timeout() -> None:
    s = sched(2, assignment_retry_wait_s=10)
    assert s.next_deadline() is None
    run_one(s, "timed", now=10.0, timeout_s=60)
    assert s.next_deadline() == 70.0
    run_one(s, "flaky", now=20.0)
    s.launch_failed("flaky", "boom", 21.0)
    assert s.next_deadline() == 31.0
    s.schedule(snaps(2), 31.0)  # the retry is due and placed
    assert s.next_deadline() == 70.0
    s.check_timeouts(70.0)  # asked to stop: no more deadline for it
    assert s.next_deadline() is None


# =========================================================================== pause / resume


def test_a_paused_gpu_gets_no_new_work_and_keeps_its_running_jobs() -> None:
    s = sched(2)
    run_one(s, "on0", share=500)
    assert s.pause([0]) == [0]
    for n in range(3):
        s.add(spec(f"j{n}"), 500, 1.0)
    report = s.schedule(snaps(2), 1.0)
    assert set(started(report).values()) == {(1,)} and len(report.launches) == 2
    assert report.waiting["j2"] == "waiting for share 0.5; GPUs 1 held for it"  # not GPU 0
    assert s.job("on0").state == "running" and s.used() == {0: 500, 1: 1000}
    assert s.resume([0]) == [0]
    assert started(s.schedule(snaps(2), 2.0)) == {"j2": (0,)}


def test_pausing_an_unknown_gpu_names_the_ones_that_exist() -> None:
    s = sched(4)
    with pytest.raises(ValueError, match=r"GPU 9 not found; this machine has GPUs 0-3"):
        s.pause([1, 9])
    assert s.paused == set()  # all or nothing
    with pytest.raises(ValueError, match="GPU 4 not found"):
        s.resume([4])


def test_pausing_an_unknown_gpu_on_a_machine_with_gaps_lists_the_real_ones() -> None:
    s = Scheduler(Policy(), [0, 2, 3])  # e.g. GPU 1 hidden by CUDA_VISIBLE_DEVICES
    with pytest.raises(ValueError, match=r"GPU 1 not found; this machine has GPUs 0, 2-3$"):
        s.pause([1])


# =========================================================================== session names


@pytest.mark.parametrize(
    ("script", "gpus", "name"),
    [
        ("train.py", (0,), "gpujob_0_train_ab12cd34ef"),
        ("/home/me/exp/train_v2.py", (3, 4), "gpujob_3_train_v2_ab12cd34ef"),
        ("scripts/run model (final).sh", (1,), "gpujob_1_run-model-final_ab12cd34ef"),
        ("~/.hidden", (0,), "gpujob_0_hidden_ab12cd34ef"),
        ("archive.tar.gz", (0,), "gpujob_0_archive.tar_ab12cd34ef"),
        ("Makefile", (2,), "gpujob_2_Makefile_ab12cd34ef"),
        ("dir/", (0,), "gpujob_0_job_ab12cd34ef"),
        ("tr\u00e9ino.py", (0,), "gpujob_0_tr-ino_ab12cd34ef"),
    ],
)
def test_session_name(script: str, gpus: tuple[int, ...], name: str) -> None:
    assert session_name("gpujob", gpus, script, "ab12cd34ef") == name


@given(
    script=st.text(),
    first=st.integers(0, 1023),
    job_id=st.text("0123456789abcdef", min_size=10, max_size=10),
)
def test_any_script_path_gives_a_valid_session_name(script: str, first: int, job_id: str) -> None:
    name = session_name("gpujob", (first,), script, job_id)
    assert SESSION_CHARS.fullmatch(name), name
    prefix, gpu, rest = name.split("_", 2)
    assert (prefix, gpu) == ("gpujob", str(first)) and rest.endswith(f"_{job_id}")
    assert rest[: -len(job_id) - 1]  # a non-empty stem


def test_launch_carries_the_session_name() -> None:
    s = sched(4)
    s.add(spec("ab12cd34ef", script="/data/exp/fine tune.py"), 2000, 0.0)
    (launch,) = s.schedule(snaps(4), 0.0).launches
    assert launch.session == f"gpujob_{launch.gpus[0]}_fine-tune_ab12cd34ef"
    assert s.job("ab12cd34ef").status.session == launch.session  # type: ignore[union-attr]


# =========================================================================== properties

SHARES = st.integers(1, 80).map(lambda n: n * 50)  # 0.05 .. 4 GPUs


class SchedulerMachine(RuleBasedStateMachine):
    """Any sequence of events keeps the books exact and never over-commits a GPU."""

    @initialize(
        n=st.integers(1, 8),
        reservation=st.booleans(),
        best_fit=st.booleans(),
        attempts=st.integers(1, 3),
    )
    def setup(self, n: int, reservation: bool, best_fit: bool, attempts: int) -> None:
        policy = Policy(
            aging_interval_s=60,
            assignment_retry_wait_s=5,
            max_assignment_attempts=attempts,
            reservation=reservation,
            best_fit=best_fit,
        )
        self.s = Scheduler(policy, range(n))
        self.n = n
        self.now = 0.0
        self.count = 0
        self.lines: dict[str, tuple[JobSpec, int]] = {}

    # ---------------------------------------------------------------- helpers

    def ids(self, state: str) -> list[str]:
        return sorted(j for j, job in self.s.jobs.items() if job.state == state)

    # ---------------------------------------------------------------- rules

    @rule(
        share=SHARES,
        priority=st.integers(0, 3),
        allowed=st.none() | st.sets(st.integers(0, 8), min_size=1, max_size=3),
        retries=st.integers(0, 2),
        timeout=st.none() | st.sampled_from([5.0, 30.0]),
    )
    def add(
        self,
        share: int,
        priority: int,
        allowed: set[int] | None,
        retries: int,
        timeout: float | None,
    ) -> None:
        job_id = f"{self.count:010x}"
        self.count += 1
        line = spec(
            job_id,
            priority,
            allowed_gpus=tuple(sorted(allowed)) if allowed else None,
            retries=retries,
            timeout_s=timeout,
        )
        self.lines[job_id] = (line, share)
        self.s.add(line, share, self.now)
        assert self.s.job(job_id).state == "pending"

    @rule(data=st.data(), advance=st.sampled_from([0.0, 1.0, 5.0, 30.0]))
    def schedule(self, data: st.DataObject, advance: float) -> None:
        self.now += advance
        used = self.s.used()
        gpus, capacity = [], {}
        for g in range(self.n):
            foreign_mib = data.draw(st.sampled_from([0, 0, 0, 8_000, 40_000, 76_000]))
            listed = data.draw(st.booleans())
            ours_mib = used[g] * TOTAL // ONE_GPU  # our jobs use exactly their share
            gpus.append(
                GpuSnapshot(
                    index=g,
                    memory_total_mib=TOTAL,
                    memory_used_mib=foreign_mib + (0 if listed else ours_mib),
                    utilization_pct=data.draw(st.sampled_from([0.0, 0.0, 50.0, 99.0])),
                    processes=(GpuProcess(99, foreign_mib),) if listed else None,
                    healthy=data.draw(st.sampled_from([True] * 5 + [False])),
                )
            )
            capacity[g] = ONE_GPU - math.ceil(ONE_GPU * foreign_mib / TOTAL)
        order = {  # where each eligible job stands in this pass's order
            j: (self.s.effective_priority(job, self.now), job.seq)
            for j, job in self.s.jobs.items()
            if isinstance(job.status, Pending)
        }
        report = self.s.schedule(gpus, self.now)
        after = self.s.used()
        held_from = order[report.reserved_for] if report.reserved_for else None
        for launch in report.launches:
            job = self.s.job(launch.job_id)
            k = max(1, math.ceil(job.share / ONE_GPU))
            assert len(launch.gpus) == k == len(set(launch.gpus))
            assert launch.share_per_gpu == math.ceil(job.share / k)  # never less than asked
            allowed = job.spec.allowed_gpus
            assert allowed is None or set(launch.gpus) <= set(allowed)
            assert not set(launch.gpus) & self.s.paused
            if held_from is not None and order[launch.job_id] > held_from:  # behind the big job
                assert not set(launch.gpus) & set(report.reserved_gpus)
            assert SESSION_CHARS.fullmatch(launch.session)
            for g in launch.gpus:
                snap = gpus[g]
                assert snap.healthy and after[g] <= capacity[g]
                assert foreign_mib_of(snap, used[g]) <= 0.9 * TOTAL
                assert used[g] > 0 or (snap.utilization_pct or 0) <= 90

    @precondition(lambda self: self.s.running_ids)
    @rule(data=st.data(), code=st.sampled_from([0, 0, 1, 137]))
    def exited(self, data: st.DataObject, code: int) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.s.running_ids)))
        before = self.s.job(job_id)
        self.s.exited(job_id, code, self.now)
        after = self.s.job(job_id)
        if code == 0 and not before.status.stopping:  # type: ignore[union-attr]
            assert after.state == "completed"
        elif after.state == "pending":
            assert code != 0 and after.retries_used == before.retries_used + 1

    @precondition(lambda self: self.s.running_ids)
    @rule(data=st.data())
    def launch_failed(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.s.running_ids)))
        self.s.launch_failed(job_id, "screen failed", self.now)
        assert self.s.job(job_id).state in ("pending", "failed", "cancelled")

    @precondition(lambda self: self.s.running_ids)
    @rule(data=st.data())
    def lost(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.s.running_ids)))
        self.s.lost(job_id, "vanished", self.now)
        assert job_id not in self.s.running_ids

    @precondition(lambda self: self.s.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.s.jobs)))
        job = self.s.job(job_id)
        if isinstance(job.status, Finished):
            with pytest.raises(ValueError):
                self.s.cancel(job_id, self.now)
            return
        stops, _ = self.s.cancel(job_id, self.now)
        if isinstance(job.status, Pending):
            assert stops == [] and self.s.job(job_id).state == "cancelled"
        else:
            assert [x.reason for x in stops] == ["cancel"]

    @rule(data=st.data(), pause=st.booleans(), unknown=st.sampled_from([False] * 4 + [True]))
    def pause_or_resume(self, data: st.DataObject, pause: bool, unknown: bool) -> None:
        top = 9 if unknown else self.n - 1
        gpus = data.draw(st.sets(st.integers(0, top), min_size=1, max_size=3))
        action = self.s.pause if pause else self.s.resume
        if max(gpus) >= self.n:
            with pytest.raises(ValueError, match="not found"):
                action(gpus)
        else:
            action(gpus)
            assert gpus <= self.s.paused if pause else not gpus & self.s.paused

    @precondition(lambda self: any(isinstance(j.status, Finished) for j in self.s.jobs.values()))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        finished = [j for j, job in self.s.jobs.items() if isinstance(job.status, Finished)]
        job_id = data.draw(st.sampled_from(sorted(finished)))
        self.s.retry(job_id, self.now)
        assert self.s.job(job_id).state == "pending"

    @rule(advance=st.sampled_from([1.0, 10.0, 40.0]))
    def timeouts(self, advance: float) -> None:
        self.now += advance
        for stop in self.s.check_timeouts(self.now):
            job = self.s.job(stop.job_id)
            assert stop.reason == "timeout" and job.state == "running"
            assert self.now - job.status.started_at >= job.spec.timeout_s  # type: ignore[union-attr,operator]

    @precondition(lambda self: self.lines)
    @rule(data=st.data())
    def edit_jobs_file(self, data: st.DataObject) -> None:
        ids = sorted(self.lines)
        gone = data.draw(st.sets(st.sampled_from(ids), max_size=3))
        reshare = data.draw(st.sets(st.sampled_from(ids), max_size=2))
        for job_id in reshare:
            self.lines[job_id] = (self.lines[job_id][0], data.draw(SHARES))
        for job_id in gone:
            del self.lines[job_id]
        before = {j: job.state for j, job in self.s.jobs.items()}
        never_ran = {j for j, job in self.s.jobs.items() if job.attempts == job.launch_failures}
        self.s.sync(list(self.lines.values()), self.now)
        for job_id, state in before.items():
            if job_id not in self.lines and state == "pending" and job_id in never_ran:
                assert job_id not in self.s.jobs  # only a job that never ran is dropped
            else:
                assert self.s.job(job_id).state == state
            if state == "pending" and job_id in self.lines:
                assert self.s.job(job_id).share == self.lines[job_id][1]

    # ---------------------------------------------------------------- invariants

    @invariant()
    def books_are_exact(self) -> None:
        recomputed = dict.fromkeys(range(self.n), 0)
        running = set()
        for job in self.s.jobs.values():
            if isinstance(job.status, Running):
                running.add(job.job_id)
                assert len(job.status.gpus) == gpus_needed(job.share)
                for g in job.status.gpus:
                    recomputed[g] += job.status.share_per_gpu
        assert self.s.used() == recomputed
        assert all(v <= ONE_GPU for v in recomputed.values()), recomputed
        assert self.s.running_ids == running

    @invariant()
    def queue_holds_exactly_the_pending_jobs(self) -> None:
        queued = self.s.queue_order(self.now)
        assert len(queued) == len(set(queued))
        assert not set(queued) & self.s.running_ids
        pending = {j for j, job in self.s.jobs.items() if isinstance(job.status, Pending)}
        assert set(queued) <= pending
        assert self.s.pending_count() == len(pending)


def foreign_mib_of(snap: GpuSnapshot, ours: int) -> int:
    if snap.processes is not None:
        return snap.memory_used_mib
    return max(0, snap.memory_used_mib - ours * TOTAL // ONE_GPU)


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
