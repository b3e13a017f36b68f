"""After a restart: decide what each job the saved state calls running has become.

Screen sessions and runners outlive the daemon, so nothing is assumed: the daemon gathers the
facts (the runner's exit record, whether its pid is alive with the same start time) and this
module turns them into the same transitions a live daemon would have made. Launches written
ahead to the journal after the last full save are laid over the saved jobs first
(``replay_launches``), so they are reconciled like any launch the state file names.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from gpu_scheduler.core.model import Job, Notice, Running, Stop
from gpu_scheduler.core.scheduler import Scheduler


@dataclass(frozen=True)
class RunFacts:
    """What is known about one running job's process after a restart."""

    exit_code: int | None = None  # the runner recorded an exit
    launch_error: str | None = None  # the runner recorded that the job could not start
    pid: int | None = None  # the runner's pid, from the state or its start record
    pid_started_at: float | None = None
    alive: bool = False  # that pid is alive AND has that start time


def replay_launches(
    saved: Iterable[Job], launched: Iterable[Job], archived: Collection[str]
) -> tuple[Job, ...]:
    """The saved jobs with the launches written ahead after that save laid over them, in order.

    Each launched job replaces the saved job with its id (or is added: its line may have been
    read after the save), so what ``reconcile`` then sees is exactly what a full save at the
    moment of the write-ahead would have held for those jobs: running, runner not yet known.
    Defensively, a launch never takes a job back: one the saved state already shows at that
    attempt or later, or one already in the history, is left as saved.
    """
    jobs = {job.job_id: job for job in saved}
    for job in launched:
        known = jobs.get(job.job_id)
        if job.job_id in archived or (known is not None and known.attempts >= job.attempts):
            continue
        jobs[job.job_id] = job
    return tuple(jobs.values())


def reconcile(scheduler: Scheduler, facts: Mapping[str, RunFacts], now: float) -> list[Notice]:
    """Finish, adopt or requeue every running job, exactly as if the daemon had been up."""
    notices: list[Notice] = []
    for job_id in sorted(scheduler.running_ids):
        fact = facts.get(job_id, RunFacts())
        if fact.pid is not None:
            scheduler.launched(job_id, fact.pid, fact.pid_started_at)
        if fact.exit_code is not None:
            notice = scheduler.exited(job_id, fact.exit_code, now)
            notices.append(
                Notice(
                    notice.event,
                    job_id,
                    f"{notice.message} (exited while the daemon was down)",
                    {**notice.data, "recovered": True},
                )
            )
        elif fact.launch_error is not None:
            notices.append(scheduler.launch_failed(job_id, fact.launch_error, now))
        elif fact.alive:
            notices.append(
                Notice("adopted", job_id, f"still running as pid {fact.pid}", {"pid": fact.pid})
            )
        else:
            reason = (
                "its process vanished while the daemon was down (machine rebooted or runner killed)"
                if fact.pid is not None
                else "it was being launched when the daemon stopped and never started"
            )
            notices.append(scheduler.lost(job_id, reason, now))
    return notices


def resumed_stops(scheduler: Scheduler) -> list[Stop]:
    """The stops to carry out again for adopted jobs that a stop was requested for.

    A stop (cancel, timeout, memory, preemption) is saved as ``Running.stopping`` the moment it
    is decided, but carried out by the daemon afterwards: one that died in between left the job
    running, and nothing else would stop it (timeouts skip a job that is already stopping).
    Call after ``reconcile``; each stop gets its full grace again.
    """
    stops: list[Stop] = []
    for job_id in sorted(scheduler.running_ids):
        run = scheduler.jobs[job_id].status
        if isinstance(run, Running) and run.stopping is not None and run.pid is not None:
            stops.append(Stop(job_id, run.stopping, scheduler.policy.stop_grace_s, run.stop_detail))
    return stops
