"""Recovery after a restart: reconcile() with a real Scheduler, the facts gathered from real
processes (daemon_records), and the daemon's behaviour when the state cannot be saved.

reconcile() turns what is known about each job the saved state calls running into the very
transition a live daemon would have made: an exit record finishes it with its code (a stop that
was requested still decides the outcome), a launch_failed record is a launch retry, a live
runner is adopted with its share still counted, and a vanished one is requeued -- the only way
a job runs twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_scheduler.adapters.clock import FakeClock
from gpu_scheduler.adapters.gpus import FakeProbe
from gpu_scheduler.adapters.launchers import (
    DirectLauncher,
    FakeLauncher,
    LaunchRequest,
    runner_argv,
)
from gpu_scheduler.adapters.store import SavedState, StateStore
from gpu_scheduler.config import settings_from_dict
from gpu_scheduler.core.model import (
    Cancelled,
    Failed,
    Finished,
    GpuSnapshot,
    Job,
    JobSpec,
    LaunchFailed,
    Pending,
    Running,
    Succeeded,
    TimedOut,
)
from gpu_scheduler.core.recovery import RunFacts, reconcile, replay_launches, resumed_stops
from gpu_scheduler.core.scheduler import Policy, Scheduler
from gpu_scheduler.daemon import SAVE_INTERVAL_S, Daemon
from gpu_scheduler.daemon_control import handle_command
from gpu_scheduler.daemon_records import gather_facts
from gpu_scheduler.errors import StateFileError
from gpu_scheduler.paths import DaemonPaths
from tests.conftest import PidTracker
from tests.helpers import wait_until

NOW = 1_700_000_000.0
POLICY = Policy(max_assignment_attempts=3, assignment_retry_wait_s=10.0, stop_grace_s=5.0)
GPU_COUNT = 2


def _gpus(count: int = GPU_COUNT) -> list[GpuSnapshot]:
    return [
        GpuSnapshot(i, memory_total_mib=81920, utilization_pct=0.0, processes=())
        for i in range(count)
    ]


def _spec(job_id: str, share: int = 1000, priority: int = 0, **options: Any) -> JobSpec:
    return JobSpec(
        job_id=job_id, source="jobs.txt", line_no=1, text=job_id, priority=priority,
        script="train.py", share=share, **options,
    )  # fmt: skip


def _running(*specs: JobSpec, pids: bool = True) -> Scheduler:
    """A scheduler with every spec placed and (unless ``pids=False``) launched as pid 1000+i."""
    sched = Scheduler(POLICY, range(GPU_COUNT))
    for spec in specs:
        sched.add(spec, spec.share or 1000, NOW)
    report = sched.schedule(_gpus(), NOW)
    assert {launch.job_id for launch in report.launches} == {s.job_id for s in specs}
    if pids:
        for i, spec in enumerate(specs):
            sched.launched(spec.job_id, 1000 + i, NOW + i)
    return sched


def _restart(before: Scheduler) -> Scheduler:
    """A fresh scheduler restored from ``before``'s jobs, as the daemon does after a restart."""
    after = Scheduler(POLICY, range(GPU_COUNT))
    after.restore(before.jobs.values(), before.paused, before.next_seq)
    return after


def _assert_used_matches(sched: Scheduler) -> None:
    """used() is exactly the shares of the running jobs, and no GPU holds more than one GPU."""
    expected = {g: 0 for g in range(GPU_COUNT)}
    for job in sched.jobs.values():
        # a suspended (frozen) job has lent its shares out
        if isinstance(job.status, Running) and not getattr(job.status, "suspended", False):
            for g in job.status.gpus:
                expected[g] += job.status.share_per_gpu
    assert sched.used() == expected
    assert all(v <= 1000 for v in expected.values()), expected


# ----------------------------------------------------------------------------- reconcile


def test_exit_recorded_while_down_finishes_the_job_with_its_true_code() -> None:
    sched = _restart(_running(_spec("ok"), _spec("bad")))
    facts = {"ok": RunFacts(exit_code=0, pid=1000), "bad": RunFacts(exit_code=7, pid=1001)}
    notices = {n.job_id: n for n in reconcile(sched, facts, NOW + 60)}
    assert sched.jobs["ok"].status == Finished(NOW + 60, Succeeded(), NOW, (0,))
    bad = sched.jobs["bad"]
    assert isinstance(bad.status, Finished) and bad.status.outcome == Failed(7)
    assert bad.last_exit_code == 7 and bad.requeues == 0
    assert notices["bad"].event == "failed"
    assert "exited while the daemon was down" in notices["bad"].message
    assert notices["bad"].data["recovered"] is True
    _assert_used_matches(sched)
    assert sched.running_ids == frozenset() and sched.pending_count() == 0


def test_exit_of_a_job_being_stopped_keeps_the_meaning_of_the_stop() -> None:
    before = _running(_spec("cancelled", timeout_s=30.0), _spec("timed"))
    before.request_stop("cancelled", "cancel", NOW + 1, "user")
    before.request_stop("timed", "timeout", NOW + 1, "timeout 30s")
    sched = _restart(before)
    reconcile(sched, {"cancelled": RunFacts(exit_code=143), "timed": RunFacts(exit_code=143)}, NOW)
    cancelled, timed = sched.jobs["cancelled"].status, sched.jobs["timed"].status
    assert isinstance(cancelled, Finished) and cancelled.outcome == Cancelled("user")
    assert isinstance(timed, Finished) and isinstance(timed.outcome, TimedOut)
    _assert_used_matches(sched)


def test_exit_with_retries_left_is_retried_not_failed() -> None:
    sched = _restart(_running(_spec("flaky", retries=1)))
    [notice] = reconcile(sched, {"flaky": RunFacts(exit_code=3, pid=1000)}, NOW)
    job = sched.jobs["flaky"]
    assert notice.event == "retrying" and isinstance(job.status, Pending)
    assert job.retries_used == 1 and job.requeues == 0
    assert sched.queue_order(NOW) == ["flaky"]


def test_launch_failed_record_becomes_a_launch_retry_then_a_failure() -> None:
    sched = _restart(_running(_spec("j"), pids=False))
    [notice] = reconcile(sched, {"j": RunFacts(launch_error="script not found: train.py")}, NOW)
    job = sched.jobs["j"]
    assert notice.event == "launch_retry"
    assert job.status == Pending(
        NOW, not_before=NOW + 10.0, reason="launch failed: script not found: train.py"
    )
    assert job.launch_failures == 1 and job.requeues == 0
    _assert_used_matches(sched)
    # the last allowed attempt fails for good
    for attempt in (2, 3):
        report = sched.schedule(_gpus(), NOW + 10.0 * attempt)
        assert [launch.attempt for launch in report.launches] == [attempt]
        sched = _restart(sched)
        [notice] = reconcile(sched, {"j": RunFacts(launch_error="no")}, NOW + 10.0 * attempt)
    assert notice.event == "launch_failed"
    status = sched.jobs["j"].status
    assert isinstance(status, Finished) and status.outcome == LaunchFailed("no")


def test_live_runner_is_adopted_with_its_share_still_counted() -> None:
    sched = _restart(_running(_spec("a"), _spec("b"), pids=False))
    facts = {
        "a": RunFacts(pid=2000, pid_started_at=NOW + 0.5, alive=True),
        "b": RunFacts(pid=2001, pid_started_at=NOW + 0.7, alive=True),
    }
    notices = reconcile(sched, facts, NOW + 5)
    assert [(n.event, n.job_id) for n in notices] == [("adopted", "a"), ("adopted", "b")]
    a = sched.jobs["a"].status
    assert isinstance(a, Running)
    assert (a.pid, a.pid_started_at, a.started_at) == (2000, NOW + 0.5, NOW)
    assert sched.jobs["a"].attempts == 1
    _assert_used_matches(sched)
    assert sched.used() == {0: 1000, 1: 1000}
    sched.add(_spec("c"), 1000, NOW + 5)
    assert sched.schedule(_gpus(), NOW + 5).launches == ()  # adopted jobs hold both GPUs


def test_vanished_runner_is_requeued_once_and_keeps_its_place() -> None:
    sched = _restart(_running(_spec("a"), _spec("b")))
    sched.add(_spec("later"), 1000, NOW + 1)
    facts = {"a": RunFacts(pid=1000, pid_started_at=NOW), "b": RunFacts(pid=1001, alive=True)}
    notices = {n.job_id: n for n in reconcile(sched, facts, NOW + 5)}
    a = sched.jobs["a"]
    assert notices["a"].event == "requeued"
    assert "vanished while the daemon was down" in notices["a"].message
    assert isinstance(a.status, Pending) and a.status.reason.startswith("requeued: ")
    assert a.requeues == 1 and a.attempts == 1
    _assert_used_matches(sched)
    assert sched.queue_order(NOW + 5) == ["a", "later"]  # arrival order kept, not re-appended
    [launch] = sched.schedule(_gpus(), NOW + 5).launches
    assert (launch.job_id, launch.attempt) == ("a", 2)


def test_launch_that_never_started_is_requeued() -> None:
    sched = _restart(_running(_spec("j"), pids=False))
    [notice] = reconcile(sched, {}, NOW)  # no facts at all: no record, no pid
    job = sched.jobs["j"]
    assert notice.event == "requeued" and "never started" in notice.message
    assert isinstance(job.status, Pending) and job.requeues == 1
    _assert_used_matches(sched)


def test_vanished_while_being_cancelled_is_cancelled_not_requeued() -> None:
    before = _running(_spec("j"))
    before.request_stop("j", "cancel", NOW + 1, "user")
    sched = _restart(before)
    [notice] = reconcile(sched, {"j": RunFacts(pid=1000)}, NOW + 2)
    status = sched.jobs["j"].status
    assert notice.event == "cancelled" and isinstance(status, Finished)
    assert status.outcome == Cancelled("user") and sched.jobs["j"].requeues == 0


def test_stops_requested_before_the_crash_are_carried_out_again() -> None:
    before = _running(_spec("cancel"), _spec("plain"))
    before.request_stop("cancel", "cancel", NOW + 1, "user")
    sched = _restart(before)
    alive = RunFacts(pid=1000, pid_started_at=NOW, alive=True)
    reconcile(
        sched,
        {"cancel": alive, "plain": RunFacts(pid=1001, pid_started_at=NOW + 1, alive=True)},
        NOW + 2,
    )
    [stop] = resumed_stops(sched)
    assert (stop.job_id, stop.reason, stop.detail) == ("cancel", "cancel", "user")
    assert stop.grace_s == 5.0


def test_suspended_job_does_not_count_its_lent_shares_after_a_restart() -> None:
    """A frozen job lent its whole GPU to an urgent one; both are saved as running."""
    frozen = Running(NOW, (0,), 1000, "s_low", pid=1000, pid_started_at=NOW, suspended=True)
    jobs = [
        Job(_spec("low", priority=5), 1000, frozen, seq=0, submitted_at=NOW, attempts=1),
        Job(_spec("urgent"), 1000, Running(NOW + 1, (0,), 1000, "s_urgent", pid=1001),
            seq=1, submitted_at=NOW + 1, attempts=1),
    ]  # fmt: skip
    after = Scheduler(POLICY, range(1))
    after.restore(jobs, (), 2)
    assert after.used() == {0: 1000}


_SHARES = st.sampled_from([250, 500, 750, 1000, 2000])
_FACT = st.sampled_from(["exit0", "exit7", "launch_error", "alive", "gone", "none"])


@settings(max_examples=150, deadline=None)
@given(
    shares=st.lists(_SHARES, min_size=1, max_size=8),
    fates=st.lists(_FACT, min_size=8, max_size=8),
    launched=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_reconcile_never_over_commits(
    shares: list[int], fates: list[str], launched: list[bool]
) -> None:
    sched = Scheduler(POLICY, range(GPU_COUNT))
    for i, share in enumerate(shares):
        sched.add(_spec(f"j{i}", share), share, NOW + i)
    sched.schedule(_gpus(), NOW)
    for i, job_id in enumerate(sorted(sched.running_ids)):
        if launched[i]:
            sched.launched(job_id, 1000 + i, NOW)
    restarted = _restart(sched)
    _assert_used_matches(restarted)
    facts = {}
    for i, job_id in enumerate(sorted(restarted.running_ids)):
        fate, pid = fates[i], 1000 + i
        facts[job_id] = {
            "exit0": RunFacts(exit_code=0, pid=pid),
            "exit7": RunFacts(exit_code=7, pid=pid),
            "launch_error": RunFacts(launch_error="boom"),
            "alive": RunFacts(pid=pid, pid_started_at=NOW, alive=True),
            "gone": RunFacts(pid=pid, pid_started_at=NOW),
            "none": RunFacts(),
        }[fate]
    running_before = set(restarted.running_ids)
    reconcile(restarted, facts, NOW + 1)
    _assert_used_matches(restarted)
    adopted = {j for j in running_before if facts[j].alive}
    assert restarted.running_ids == adopted
    # whatever was freed is placed again, still without over-commit
    restarted.schedule(_gpus(), NOW + 100)
    _assert_used_matches(restarted)


# ----------------------------------------------------------------------------- gather_facts


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[DirectLauncher]:
    launcher = DirectLauncher(tmp_path / "state" / "records")
    try:
        yield launcher
    finally:
        launcher.close()


JOB = """\
import os, sys, time
with open(sys.argv[1], "a") as fh:
    fh.write(f"{os.getpid()}\\n")
time.sleep(float(sys.argv[2]))
"""


def _request(tmp_path: Path, job_id: str, attempt: int, sleep: float) -> LaunchRequest:
    """A launch of a job that appends its pid to ``runs-<job>.txt`` and sleeps."""
    paths = DaemonPaths(tmp_path / "state" / "state.json", tmp_path / "logs")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return LaunchRequest(
        job_id=job_id, attempt=attempt, session=f"s_{job_id}", script=str(script),
        args=(str(tmp_path / f"runs-{job_id}.txt"), str(sleep)), conda_env=None, gpus=(0,),
        share="1", log_path=paths.log_path(job_id), record_path=paths.record_path(job_id, attempt),
        python=sys.executable,
    )  # fmt: skip


def _saved_running(
    tmp_path: Path, job_id: str, pid: int | None, started: float | None
) -> Scheduler:
    """A restored scheduler whose one job is running attempt 1 (pid None: launch in flight)."""
    sched = _running(_spec(job_id), pids=False)
    if pid is not None:
        sched.launched(job_id, pid, started)
    return _restart(sched)


def _paths(tmp_path: Path) -> DaemonPaths:
    return DaemonPaths(tmp_path / "state" / "state.json", tmp_path / "logs")


def _runs(tmp_path: Path, job_id: str) -> list[str]:
    path = tmp_path / f"runs-{job_id}.txt"
    return path.read_text().split() if path.exists() else []


def test_in_flight_launch_with_a_live_runner_is_adopted_not_requeued(
    tmp_path: Path, direct: DirectLauncher, pids: PidTracker
) -> None:
    """The daemon died after starting the runner but before recording its pid."""
    req = _request(tmp_path, "j", 1, sleep=30)
    proc = direct.launch(req)
    pids.add(proc.pid)
    wait_until(lambda: _runs(tmp_path, "j"), what="the job to start")
    sched = _saved_running(tmp_path, "j", None, None)
    facts = gather_facts(sched, _paths(tmp_path), direct, settle_s=5)
    assert facts["j"] == RunFacts(
        pid=proc.pid, pid_started_at=facts["j"].pid_started_at, alive=True
    )
    assert abs(facts["j"].pid_started_at - proc.pid_started_at) <= 0.05  # type: ignore[operator]
    [notice] = reconcile(sched, facts, NOW)
    assert notice.event == "adopted" and sched.running_ids == {"j"}


def test_in_flight_runner_without_a_record_yet_is_adopted_by_its_spec(
    tmp_path: Path, direct: DirectLauncher, pids: PidTracker
) -> None:
    """A runner that exists but has not written its record (slow start) is found by the spec
    on its command line and adopted: requeueing it would run the job twice."""
    spec_path = _paths(tmp_path).spec_path("j", 1)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(spec_path)  # the runner blocks opening it: alive, and no record for now
    runner = subprocess.Popen(
        runner_argv(sys.executable, spec_path), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pids.add(runner.pid)
    try:
        shape = runner_argv("", spec_path)[1:]
        wait_until(lambda: psutil.Process(runner.pid).cmdline()[1:] == shape, what="exec")
        sched = _saved_running(tmp_path, "j", None, None)
        start = time.monotonic()
        facts = gather_facts(sched, _paths(tmp_path), direct, settle_s=5)
        assert facts["j"].pid == runner.pid and facts["j"].exit_code is None
        assert time.monotonic() - start < 2, "a runner that exists is adopted at once"
        assert spec_path.exists(), "an adopted attempt is not fenced"
        [notice] = reconcile(sched, facts, NOW)
        status = sched.jobs["j"].status
        assert notice.event == "adopted" and isinstance(status, Running)
        assert status.pid == runner.pid
    finally:
        runner.kill()
        runner.wait()


def test_in_flight_launch_with_no_runner_is_fenced_and_requeued_at_once(
    tmp_path: Path, direct: DirectLauncher, pids: PidTracker
) -> None:
    """The daemon died after the write-ahead save but before any runner started: requeue
    without waiting out the settle time, and make sure a runner started late cannot run it."""
    req = _request(tmp_path, "j", 1, sleep=0)
    spec_path = _paths(tmp_path).spec_path("j", 1)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(__import__("json").dumps(req.spec()))  # what the launcher had written
    sched = _saved_running(tmp_path, "j", None, None)
    start = time.monotonic()
    facts = gather_facts(sched, _paths(tmp_path), direct, settle_s=5)
    assert time.monotonic() - start < 1.5
    assert facts["j"] == RunFacts()
    assert not spec_path.exists()
    [notice] = reconcile(sched, facts, NOW)
    assert notice.event == "requeued"
    # a runner for that attempt starting only now runs nothing and records nothing
    late = subprocess.run(runner_argv(sys.executable, spec_path), capture_output=True, timeout=30)
    assert late.returncode == 2
    assert _runs(tmp_path, "j") == [] and not req.record_path.exists()


def test_in_flight_launch_still_starting_is_waited_for_and_adopted(
    tmp_path: Path, direct: DirectLauncher, pids: PidTracker
) -> None:
    """Like screen -dmS outliving the daemon: a process naming the spec execs into the runner
    a moment later. Recovery waits for it and adopts it."""
    req = _request(tmp_path, "j", 1, sleep=30)
    spec_path = _paths(tmp_path).spec_path("j", 1)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(__import__("json").dumps(req.spec()))
    starter = subprocess.Popen(
        ["sh", "-c", 'sleep 0.5; exec "$@"', "sh", *runner_argv(sys.executable, spec_path)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pids.add(starter.pid)
    try:
        wait_until(lambda: str(spec_path) in psutil.Process(starter.pid).cmdline(), what="sh")
        sched = _saved_running(tmp_path, "j", None, None)
        facts = gather_facts(sched, _paths(tmp_path), direct, settle_s=10)
        assert facts["j"].pid == starter.pid  # the same process, now the runner
        [notice] = reconcile(sched, facts, NOW)
        assert notice.event == "adopted"
        wait_until(lambda: _runs(tmp_path, "j"), what="the adopted attempt to start its job")
        assert len(_runs(tmp_path, "j")) == 1
    finally:
        os.killpg(starter.pid, signal.SIGKILL)
        starter.wait()


def test_in_flight_launch_that_never_gets_a_runner_is_fenced_after_the_settle_time(
    tmp_path: Path, direct: DirectLauncher, pids: PidTracker
) -> None:
    """Something names the spec but no runner appears in time: fence, then requeue. The
    late runner then finds no spec and runs nothing, so the job cannot run twice."""
    req = _request(tmp_path, "j", 1, sleep=0)
    spec_path = _paths(tmp_path).spec_path("j", 1)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(__import__("json").dumps(req.spec()))
    starter = subprocess.Popen(
        ["sh", "-c", 'sleep 1.0; exec "$@"', "sh", *runner_argv(sys.executable, spec_path)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pids.add(starter.pid)
    try:
        wait_until(lambda: str(spec_path) in psutil.Process(starter.pid).cmdline(), what="sh")
        sched = _saved_running(tmp_path, "j", None, None)
        facts = gather_facts(sched, _paths(tmp_path), direct, settle_s=0.3)
        assert facts["j"] == RunFacts() and not spec_path.exists()
        [notice] = reconcile(sched, facts, NOW)
        assert notice.event == "requeued"
        assert starter.wait(timeout=20) == 2  # the late runner: no spec, nothing run
        assert _runs(tmp_path, "j") == [] and not req.record_path.exists()
    finally:
        if starter.poll() is None:
            os.killpg(starter.pid, signal.SIGKILL)
            starter.wait()


def test_runner_killed_while_down_leaves_no_job_running_when_requeued(
    tmp_path: Path, direct: DirectLauncher, pids: PidTracker
) -> None:
    """Direct mode: SIGKILL of the runner alone leaves its job running (nothing hangs it up).
    Requeueing then would run the job twice at once; recovery ends the remains first."""
    req = _request(tmp_path, "j", 1, sleep=60)
    proc = direct.launch(req)
    pids.add(proc.pid)
    job_pid = int(wait_until(lambda: _runs(tmp_path, "j"), what="the job to start")[0])
    pids.add(job_pid)
    os.kill(proc.pid, signal.SIGKILL)
    wait_until(lambda: not direct.alive(proc.pid, proc.pid_started_at), what="runner gone")
    assert psutil.pid_exists(job_pid)
    sched = _saved_running(tmp_path, "j", proc.pid, proc.pid_started_at)
    facts = gather_facts(sched, _paths(tmp_path), direct)
    assert facts["j"].alive is False and facts["j"].exit_code is None
    wait_until(lambda: not _alive(job_pid), timeout=10, what="the orphaned job to be ended")
    [notice] = reconcile(sched, facts, NOW)
    assert notice.event == "requeued"


def test_exit_recorded_after_the_runner_vanished_from_view_is_used(
    tmp_path: Path, direct: DirectLauncher, pids: PidTracker
) -> None:
    req = _request(tmp_path, "j", 1, sleep=0)
    proc = direct.launch(req)
    pids.add(proc.pid)
    wait_until(lambda: not direct.alive(proc.pid, proc.pid_started_at), what="runner exit")
    sched = _saved_running(tmp_path, "j", proc.pid, proc.pid_started_at)
    facts = gather_facts(sched, _paths(tmp_path), direct)
    assert facts["j"].exit_code == 0 and not facts["j"].alive
    reconcile(sched, facts, NOW)
    assert sched.jobs["j"].state == "completed"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ----------------------------------------------------------------------------- the daemon


class FlakyStore(StateStore):
    """A real store whose saves fail while ``failing`` (as on a full disk); counts attempts."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing = False
        self.attempts = 0

    def save(self, state: SavedState) -> None:
        self.attempts += 1
        if self.failing:
            raise StateFileError(
                f"{self.path}: cannot save the scheduler state: No space left on device; "
                "the previous state file is intact"
            )
        super().save(state)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self) -> list[str]:
        return [str(getattr(r, "event", "")) for r in self.records]


@pytest.fixture
def daemon_log() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("gpu_scheduler")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _daemon(
    tmp_path: Path,
    store: StateStore | None = None,
    launcher: FakeLauncher | None = None,
    lines: tuple[str, ...] = (),
) -> Daemon:
    (tmp_path / "jobs.txt").write_text("".join(line + "\n" for line in lines))
    (tmp_path / "train.py").write_text("")  # never run: the launcher is a fake
    (tmp_path / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
    settings = settings_from_dict({
        "gpu": {"provider": "simulated", "simulated": {"count": 2}, "monitor_interval_s": 0.5},
        "scheduler": {"graceful_shutdown_timeout_s": 5},
        "files": {"jobs_file": str(tmp_path / "jobs.txt"),
                  "llm_config_file": str(tmp_path / "llm.json"),
                  "state_file": str(tmp_path / "state" / "state.json"),
                  "log_dir": str(tmp_path / "logs")},
    }, tmp_path / "config.json")  # fmt: skip
    clock = FakeClock(NOW)
    return Daemon(
        settings, probe=FakeProbe.uniform(2, 81920), launcher=launcher or FakeLauncher(clock.now),
        clock=clock, store=store, mode="fake", watch_files=False,
    )  # fmt: skip


def _close(daemon: Daemon) -> None:
    """Stop as after a stop request (no new launches), then close."""
    daemon.stopping = True
    daemon.close()


def _tick(daemon: Daemon, seconds: float = 0.05) -> None:
    daemon.clock.advance(seconds)  # type: ignore[attr-defined]
    daemon.step(0.02)


def test_failed_saves_stop_launching_say_so_and_launching_resumes(
    tmp_path: Path, daemon_log: _Records
) -> None:
    store = FlakyStore(tmp_path / "state" / "state.json")
    store.failing = True
    launcher = FakeLauncher()
    daemon = _daemon(tmp_path, store, launcher, lines=(f"0,{tmp_path}/train.py,,--a 1,gpus=1",))
    try:
        daemon.start()
        for _ in range(10):
            _tick(daemon, 0.1)
        assert launcher.requests == [], "nothing may start while its launch cannot be saved first"
        assert daemon.save_error and "No space left on device" in daemon.save_error
        assert daemon_log.events().count("state_save_failed") == 1  # loud, but once
        [failed] = [r for r in daemon_log.records if getattr(r, "event", "") == "state_save_failed"]
        assert (
            failed.levelno == logging.ERROR
            and "no new jobs will be launched" in failed.getMessage()
        )
        ping = handle_command(daemon, {"cmd": "ping"}, daemon.clock.now())
        assert "No space left on device" in ping["daemon"]["save_error"]
        store.failing = False
        wait_until(lambda: _tick(daemon, 0.1) or launcher.requests, timeout=10, what="a launch")
        assert "state_saved" in daemon_log.events() and not daemon.save_error
        ping = handle_command(daemon, {"cmd": "ping"}, daemon.clock.now())
        assert ping["daemon"]["save_error"] == ""
        # What a restart would find: the saved state with the launch written ahead over it.
        restart = StateStore(tmp_path / "state" / "state.json")
        loaded = restart.load()
        assert loaded is not None
        jobs = replay_launches(loaded.state.jobs, restart.read_launches()[0], ())
        assert [j.state for j in jobs] == ["running"]
    finally:
        _close(daemon)


def test_failed_saves_are_retried_at_the_save_interval_not_in_a_busy_loop(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "state" / "state.json")
    daemon = _daemon(tmp_path, store)
    try:
        daemon.start()
        store.failing = True
        daemon._dirty = True
        before = store.attempts
        for _ in range(100):  # one second of the daemon's time, in 10 ms ticks
            daemon.clock.advance(0.01)  # type: ignore[attr-defined]
            daemon.step(0)
        tries = store.attempts - before
        assert 1 <= tries <= 1.0 / SAVE_INTERVAL_S + 2, f"{tries} save attempts in one second"
    finally:
        _close(daemon)


def test_stop_requested_before_a_crash_is_carried_out_after_the_restart(tmp_path: Path) -> None:
    """A cancel decided and saved, then the daemon dies before stopping the job: the next
    daemon adopts the job and must stop it (timeouts skip a job already stopping)."""
    launcher = FakeLauncher()
    first = _daemon(tmp_path, launcher=launcher, lines=(f"0,{tmp_path}/train.py,,--a 1,gpus=1",))
    try:
        first.start()
        wait_until(
            lambda: (
                _tick(first)
                or first.scheduler.jobs
                and all(
                    isinstance(j.status, Running) and j.status.pid
                    for j in first.scheduler.jobs.values()
                )
            ),
            what="the job to launch",
        )
        [job_id] = first.scheduler.running_ids
        first.scheduler.request_stop(job_id, "cancel", first.clock.now(), "user")
        first._save(force=True)  # the cancel is saved; the daemon dies before stopping the job
    finally:
        first._control.stop()  # type: ignore[union-attr]
        first._exit_watcher.close()
        first._launches.shutdown()
        first._stops.shutdown()
    assert launcher.stops == []
    second = _daemon(tmp_path, launcher=launcher, lines=(f"0,{tmp_path}/train.py,,--a 1,gpus=1",))
    try:
        second.start()
        run = second.scheduler.jobs[job_id].status
        assert isinstance(run, Running)
        wait_until(
            lambda: _tick(second) or second.scheduler.jobs[job_id].state == "cancelled",
            what="the cancelled job to end",
        )
        assert [(pid, grace) for pid, _session, grace in launcher.stops] == [(run.pid, 5.0)]
    finally:
        _close(second)


def test_restart_adopts_running_fake_jobs_and_finishes_the_ones_that_exited(tmp_path: Path) -> None:
    """The daemon's own restart path end to end on fakes: one job exits while it is down,
    one keeps running, one is gone without a record; no job is launched twice."""
    launcher = FakeLauncher()
    lines = tuple(f"0,{tmp_path}/train.py,,--n {i},gpus=0.5" for i in range(3))
    first = _daemon(tmp_path, launcher=launcher, lines=lines)
    try:
        first.start()
        wait_until(
            lambda: (
                _tick(first)
                or len(launcher.requests) == 3
                and all(
                    isinstance(j.status, Running) and j.status.pid
                    for j in first.scheduler.jobs.values()
                )
            ),
            what="three launches",
        )
        first._save(force=True)
    finally:
        first._control.stop()  # type: ignore[union-attr]
        first._exit_watcher.close()
        first._launches.shutdown()
        first._stops.shutdown()
    by_arg = {r.args[1]: r for r in launcher.requests}
    launcher.finish(by_arg["0"].session, 7)
    launcher.crash(by_arg["2"].session)
    second = _daemon(tmp_path, launcher=launcher, lines=lines)
    try:
        second.start()
        jobs = {arg: second.scheduler.jobs[r.job_id] for arg, r in by_arg.items()}
        assert isinstance(jobs["0"].status, Finished) and jobs["0"].status.outcome == Failed(7)
        one = jobs["1"].status
        assert isinstance(one, Running) and one.pid == launcher.process(by_arg["1"].session).pid
        assert isinstance(jobs["2"].status, Pending) and jobs["2"].requeues == 1
        assert second.scheduler.used() == {0: 500, 1: 0}
        assert len(launcher.requests) == 3  # nothing launched again by the restart itself
    finally:
        _close(second)
