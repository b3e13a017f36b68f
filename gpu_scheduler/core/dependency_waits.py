"""Jobs that wait for others (``after=``) while the scheduler runs: who waits, and when to wake.

``dependencies`` turns the file's ``after=`` references into job ids; this module keeps what the
scheduler does with them: each job's dependencies and its dependents (``Scheduler.deps`` and
``_dependents``), whether a pending job still waits (it is then in ``Scheduler.held``, not the
queue), and waking the dependents when a job finishes. A dependency that failed or was cancelled
fails its dependents at that moment, so a pipeline never waits forever. These functions are the
``Scheduler``'s own parts and use its private state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpu_scheduler.core.model import Finished, Job, Pending

if TYPE_CHECKING:
    from gpu_scheduler.core.scheduler import Scheduler


def set_deps(s: Scheduler, job_id: str, deps: tuple[str, ...]) -> None:
    for dep in s.deps.pop(job_id, ()):
        s._dependents.get(dep, set()).discard(job_id)
    if deps:
        s.deps[job_id] = deps
        for dep in deps:
            s._dependents.setdefault(dep, set()).add(job_id)


def dependency_state(s: Scheduler, job_id: str) -> tuple[str, str]:
    """(a dependency still to complete, a dependency that failed), each "" if none."""
    waiting = ""
    for dep in s.deps.get(job_id, ()):
        state = s.jobs[dep].state if dep in s.jobs else s.archived.get(dep)
        if state in ("failed", "cancelled"):
            return "", _dep_label(s, dep)
        if state != "completed" and not waiting:
            waiting = _dep_label(s, dep)
    return waiting, ""


def failed_at(s: Scheduler, job: Job) -> float:
    """When a dependency of ``job`` ended badly (its own finish time)."""
    times = [
        d.status.finished_at
        for d in (s.jobs.get(dep) for dep in s.deps.get(job.job_id, ()))
        if d is not None and isinstance(d.status, Finished)
    ]
    assert isinstance(job.status, Pending)
    return max(times, default=job.status.enqueued_at)


def wake_dependents(s: Scheduler, job_id: str) -> None:
    for dependent in sorted(s._dependents.get(job_id, ())):
        if dependent in s.held:
            s.held.discard(dependent)
            s._enqueue(s.jobs[dependent])


def _dep_label(s: Scheduler, job_id: str) -> str:
    job = s.jobs.get(job_id)
    return (job.spec.name or job_id) if job else job_id
