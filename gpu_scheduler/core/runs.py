"""What happens to a job from the moment it is placed: its run, and how that run ends.

Placement marks a job running with its shares counted (``start_job``); then the daemon reports
back (launched, launch failed, exited, lost) and users or rules ask it to stop (cancel, timeout,
memory, preemption by stop or suspend). Each outcome is a status transition plus the bookkeeping
the ``Scheduler`` keeps beside the jobs (shares per GPU, the running set, the queue), so these
functions are the scheduler's own parts and use its private state; call them through its methods.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gpu_scheduler.core import allocator, limits
from gpu_scheduler.core.model import (
    Cancelled,
    Failed,
    Finished,
    Job,
    Killed,
    Launch,
    LaunchFailed,
    Notice,
    Outcome,
    Pending,
    Resume,
    Running,
    Stop,
    StopReason,
    Succeeded,
    Suspend,
    TimedOut,
)
from gpu_scheduler.core.sessions import session_for
from gpu_scheduler.core.transitions import transition

if TYPE_CHECKING:
    from gpu_scheduler.core.scheduler import Scheduler


def start_job(s: Scheduler, job: Job, placement: allocator.Placement, now: float) -> Launch:
    """Count the placement's shares and mark the job running (launch not yet reported)."""
    s._dequeue(job.job_id)
    session = session_for(s.policy, job, placement.gpus)
    running = Running(
        started_at=now,
        gpus=placement.gpus,
        share_per_gpu=placement.share_per_gpu,
        session=session,
    )
    job = transition(job, running, attempts=job.attempts + 1)
    s.jobs[job.job_id] = job
    s._running.add(job.job_id)
    for g in placement.gpus:
        s._used[g] = s._used.get(g, 0) + placement.share_per_gpu
    return Launch(
        job.job_id,
        placement.gpus,
        placement.share_per_gpu,
        session,
        job.attempts,
        preempted=job.preemptions > 0,
    )


def launched(s: Scheduler, job_id: str, pid: int, pid_started_at: float | None) -> None:
    """The launcher started the job's runner: remember what to follow and kill."""
    job = _running_job(s, job_id)
    status = replace(job.status, pid=pid, pid_started_at=pid_started_at)  # type: ignore[type-var]
    s.jobs[job_id] = transition(job, status)


def launch_failed(s: Scheduler, job_id: str, message: str, now: float) -> Notice:
    """The job never started: retry after a wait, up to max_assignment_attempts."""
    job = _running_job(s, job_id)
    s._release(job)
    failures = job.launch_failures + 1
    if _stopped_outcome(s, job) is not None:  # e.g. cancelled while it was being launched
        return _finish_stopped(s, job, now, f"launch failed: {message}")
    if failures < s.policy.max_assignment_attempts:
        retry_at = now + s.policy.assignment_retry_wait_s
        status = Pending(
            enqueued_at=_enqueued_at(job),
            not_before=retry_at,
            reason=f"launch failed: {message}",
        )
        s._put(transition(job, status, launch_failures=failures))
        return Notice(
            "launch_retry",
            job_id,
            message,
            {"attempt": failures, "retry_in_s": s.policy.assignment_retry_wait_s},
        )
    s._put(
        transition(
            job,
            Finished(now, LaunchFailed(message), job.status.started_at, job.status.gpus),
            launch_failures=failures,
        )
    )
    return Notice("launch_failed", job_id, message, {"attempts": failures})


def exited(s: Scheduler, job_id: str, exit_code: int, now: float, oom: bool = False) -> Notice:
    """The job's process ended with this code; what that means depends on why it ended.

    ``oom``: its log shows CUDA out-of-memory. A non-zero exit then holds its GPUs (no new
    work until they have its share of memory free again; see ``allocator.oom_holds_left``)
    and requeues the job, at most ``max_assignment_attempts`` times; after that it fails
    like any other exit. The caller should pass the next pass a snapshot probed after this
    exit, or a stale one may end the hold at once."""
    job = _running_job(s, job_id)
    run = job.status
    s._release(job)
    done = lambda outcome: Finished(now, outcome, run.started_at, run.gpus)  # noqa: E731
    if run.stopping == "preempt":
        return _requeue_preempted(s, job, f"exit {exit_code}")
    stopped = _stopped_outcome(s, job)
    why = f"exit {exit_code}"
    if oom and exit_code != 0 and stopped is None and not run.stopping:
        s.oom_holds = limits.with_oom_holds(s.oom_holds, run, s.gpu_memory_mib)
        if job.oom_requeues < s.policy.max_assignment_attempts:
            return _requeue_oom(s, job, exit_code)
        why += f" (CUDA out of memory; {job.oom_requeues} OOM requeues used)"
    if stopped is not None:
        new, event = done(stopped[0]), stopped[1]
    elif exit_code == 0:
        new, event = done(Succeeded()), "completed"
    elif job.retries_used < job.spec.retries:
        reason = f"{why}; retry {job.retries_used + 1} of {job.spec.retries}"
        s._put(
            transition(
                job,
                Pending(_enqueued_at(job), reason=reason),
                retries_used=job.retries_used + 1,
                last_exit_code=exit_code,
            )
        )
        return Notice("retrying", job_id, reason, {"exit_code": exit_code})
    else:
        new, event = done(Failed(exit_code)), "failed"
    s._put(transition(job, new, last_exit_code=exit_code))
    return Notice(event, job_id, why, {"exit_code": exit_code})


def _requeue_oom(s: Scheduler, job: Job, exit_code: int) -> Notice:
    run = job.status
    assert isinstance(run, Running)
    count = job.oom_requeues + 1
    reason = limits.oom_requeue_reason(run, exit_code, count, s.policy.max_assignment_attempts)
    pending = Pending(_enqueued_at(job), reason=reason)
    s._put(
        transition(
            job, pending, oom_requeues=count, requeues=job.requeues + 1, last_exit_code=exit_code
        )
    )
    return Notice("oom_requeued", job.job_id, reason, {"exit_code": exit_code})


def abort_launch(s: Scheduler, job_id: str, reason: str) -> Notice:
    """Take back a launch that was never attempted (its state could not be saved first)."""
    job = _running_job(s, job_id)
    if job.status.pid is not None:  # type: ignore[union-attr]
        raise ValueError(f"job {job_id} has already started")
    s._release(job)
    s._put(transition(job, Pending(_enqueued_at(job), reason=reason), attempts=job.attempts - 1))
    return Notice("launch_aborted", job_id, reason)


def lost(s: Scheduler, job_id: str, reason: str, now: float) -> Notice:
    """The job's process vanished with no exit record (reboot, runner killed): run it again.

    Unless it was being stopped for good (cancel, timeout, memory): killing the runner's
    whole process group leaves no exit record, and that job must not run again."""
    job = _running_job(s, job_id)
    s._release(job)
    if job.status.stopping == "preempt":  # type: ignore[union-attr]
        return _requeue_preempted(s, job, reason)
    if _stopped_outcome(s, job) is not None:
        return _finish_stopped(s, job, now, reason)
    s._put(
        transition(
            job,
            Pending(_enqueued_at(job), reason=f"requeued: {reason}"),
            requeues=job.requeues + 1,
        )
    )
    return Notice("requeued", job_id, reason)


def cancel(s: Scheduler, job_id: str, now: float, by: str = "user") -> tuple[list[Stop], Notice]:
    job = s.job(job_id)
    if isinstance(job.status, Pending):
        s._dequeue(job_id)
        s._put(transition(job, Finished(now, Cancelled(by))))
        return [], Notice("cancelled", job_id, f"cancelled by {by} while pending")
    if isinstance(job.status, Running):
        return [s.request_stop(job_id, "cancel", now, by)], Notice(
            "cancelling", job_id, f"cancel requested by {by}"
        )
    raise ValueError(f"job {job_id} already {job.state}")


def request_stop(
    s: Scheduler, job_id: str, reason: StopReason, now: float, detail: str = ""
) -> Stop:
    job = _running_job(s, job_id)
    status = replace(
        job.status,
        stopping=reason,
        stop_detail=detail,  # type: ignore[type-var]
        stop_requested_at=now,
    )
    s.jobs[job_id] = transition(job, status)
    return Stop(job_id, reason, s.policy.stop_grace_s, detail)


def check_timeouts(s: Scheduler, now: float) -> list[Stop]:
    stops = []
    for job_id in sorted(s._running):
        job = s.jobs[job_id]
        limit = s.timeout_for(job)
        run = job.status
        if (
            limit is not None
            and isinstance(run, Running)
            and not run.stopping
            and now - run.started_at >= limit
        ):
            stops.append(s.request_stop(job_id, "timeout", now, f"timeout {limit:g}s"))
    return stops


def retry(s: Scheduler, job_id: str, now: float) -> Notice:
    """Put a finished job back in the queue as a new arrival, with fresh retry counters."""
    job = s.job(job_id)
    if not isinstance(job.status, Finished):
        raise ValueError(f"job {job_id} is {job.state}; only finished jobs can be retried")
    job = transition(
        job,
        Pending(now, reason="retried by user"),
        seq=s.next_seq,
        submitted_at=now,
        retries_used=0,
        launch_failures=0,
    )
    s.next_seq += 1
    s._put(job)
    return Notice("retried", job_id, "queued again by user")


def suspend_job(s: Scheduler, job_id: str, now: float, detail: str) -> Suspend:
    """Freeze a job for a more urgent one: its shares are lent out until it resumes."""
    job = _running_job(s, job_id)
    run = job.status
    assert isinstance(run, Running) and not run.suspended
    for g in run.gpus:
        s._used[g] -= run.share_per_gpu
    status = replace(run, suspended=True, stop_detail=detail, stop_requested_at=now)
    s.jobs[job_id] = transition(job, status, preemptions=job.preemptions + 1)
    return Suspend(job_id, detail)


def resume_job(s: Scheduler, job_id: str) -> Resume:
    job = _running_job(s, job_id)
    run = job.status
    assert isinstance(run, Running) and run.suspended
    for g in run.gpus:
        s._used[g] += run.share_per_gpu
    status = replace(run, suspended=False, stop_detail="", stop_requested_at=None)
    s.jobs[job_id] = transition(job, status)
    return Resume(job_id)


def _running_job(s: Scheduler, job_id: str) -> Job:
    job = s.job(job_id)
    if not isinstance(job.status, Running):
        raise ValueError(f"job {job_id} is {job.state}, not running")
    return job


def _stopped_outcome(s: Scheduler, job: Job) -> tuple[Outcome, str] | None:
    """The outcome a stop requested for good decides, whatever the exit (None: no such stop)."""
    run = job.status
    if not isinstance(run, Running):
        return None
    if run.stopping == "cancel":
        return Cancelled(run.stop_detail or "user"), "cancelled"
    if run.stopping == "timeout":
        return TimedOut(s.timeout_for(job) or 0.0), "timed_out"
    if run.stopping == "memory":
        return Killed(run.stop_detail), "killed"
    return None


def _finish_stopped(s: Scheduler, job: Job, now: float, how: str) -> Notice:
    """Finish a released job whose stop was requested, by that stop's outcome."""
    run = job.status
    assert isinstance(run, Running)
    stopped = _stopped_outcome(s, job)
    assert stopped is not None
    s._put(transition(job, Finished(now, stopped[0], run.started_at, run.gpus)))
    return Notice(stopped[1], job.job_id, how)


def _requeue_preempted(s: Scheduler, job: Job, how: str) -> Notice:
    run = job.status
    assert isinstance(run, Running)
    reason = run.stop_detail or "preempted"
    s._put(
        transition(
            job,
            Pending(_enqueued_at(job), reason=reason),
            preemptions=job.preemptions + 1,
            requeues=job.requeues + 1,
        )
    )
    return Notice("preempted", job.job_id, f"{reason} ({how}); back in the queue")


def _enqueued_at(job: Job) -> float:
    """Where a job taken back goes in the queue: at its own arrival, not at the back."""
    return job.submitted_at
