"""The legal status transitions, as one table.

    pending --launch--> running --exit 0--> completed
       ^                   |  \\--exit N / timeout / killed / launch failed--> failed
       |                   |   \\--cancel--> cancelled
       +---requeue/retry---+  (lost process, preemption, retries=N, launch retry)
    pending --cancel--> cancelled;  pending --dependency failed--> failed
    completed | failed | cancelled --retry (user)--> pending

Every change of a job's status goes through ``transition`` so that an impossible move (a finished
job launched again, a pending job "exiting") raises instead of corrupting the state.
"""

from __future__ import annotations

import dataclasses

from gpu_scheduler.core.model import Job, Status, state_name
from gpu_scheduler.errors import IllegalTransition

LEGAL: frozenset[tuple[str, str]] = frozenset(
    {
        ("pending", "running"),
        ("pending", "cancelled"),
        ("pending", "failed"),
        ("pending", "pending"),
        ("running", "running"),
        ("running", "completed"),
        ("running", "failed"),
        ("running", "cancelled"),
        ("running", "pending"),
        ("completed", "pending"),
        ("failed", "pending"),
        ("cancelled", "pending"),
    }
)


def transition(job: Job, status: Status, **changes: object) -> Job:
    """The job with its new status (and any counters in ``changes``), if the move is legal."""
    old, new = job.state, state_name(status)
    if (old, new) not in LEGAL:
        raise IllegalTransition(f"job {job.job_id}: {old} -> {new} is not a legal transition")
    return dataclasses.replace(job, status=status, **changes)  # type: ignore[arg-type]
