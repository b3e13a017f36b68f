"""The jobs file's lines made into the scheduler's jobs: new lines enqueued, gone lines dequeued.

The daemon re-reads the jobs file on every change, so this is the hot path of an edit: a full
walk (``sync``) is the reference, and ``_sync_tail`` gives the same answer for a file that only
grew, at the cost of the appended lines. These functions are the ``Scheduler``'s own parts and
use its private state; call them through its methods (``sync``, ``add``, ``remove``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from gpu_scheduler.core import dependency_waits
from gpu_scheduler.core.model import Job, JobSpec, Notice, Pending
from gpu_scheduler.core.units import format_share

if TYPE_CHECKING:
    from gpu_scheduler.core.scheduler import Scheduler


def sync(
    s: Scheduler,
    specs: Iterable[tuple[JobSpec, int]],
    now: float,
    deps: Mapping[str, tuple[str, ...]] | None = None,
    *,
    unchanged: int = 0,
) -> list[Notice]:
    """Make the pending set match the jobs file: new lines enqueued, gone lines dequeued.

    A removed line never touches a job that has started (running, or pending again after a
    requeue or a user's retry), and a finished job is never re-run because its line is still
    there (ids tie lines to jobs).

    With ``queue_size_limit``, new lines are enqueued only while fewer jobs are queued; the
    rest (and every new line after the first one left out, so file order is kept) wait in
    ``backlog`` and are taken as the queue drains (``schedule``). No line is dropped.

    ``unchanged`` (precondition): the first that many ``specs`` are the previous sync's very
    pairs, in place, with the same ``deps`` (``JobSource.read_with_dependencies`` counts
    them). Then only the other lines are looked at (``_sync_tail``): the answer is the same,
    at the cost of the appended lines. 0, or any doubt, looks at every line.
    """
    lines = specs if isinstance(specs, tuple) else tuple(specs)
    last = s._synced
    if (
        last is not None
        and 0 < unchanged <= len(last)
        and (lines[unchanged - 1] is last[unchanged - 1] and lines[0] is last[0])
    ):
        notices = _sync_tail(s, lines, now, deps or {}, unchanged)
        if notices is not None:
            return notices
    notices = []
    seen: dict[str, int] = {}  # job id -> its line's place in ``lines``
    deps = deps or {}
    limit = s.policy.queue_size_limit
    backlog: list[tuple[JobSpec, int, tuple[str, ...]]] = []
    for spec, share in lines:
        seen[spec.job_id] = len(seen)
        job_deps = deps.get(spec.job_id, ())
        new = spec.job_id not in s.jobs and spec.job_id not in s.archived
        if new and limit is not None and (backlog or s.queued_count() >= limit):
            backlog.append((spec, share, job_deps))
            continue
        notices.extend(s.add(spec, share, now, job_deps))
    s.backlog = backlog
    s._requeued = set()
    for job_id in [j for j, job in s.jobs.items() if j not in seen]:
        job = s.jobs[job_id]
        # Only a job that never ran is the line's alone: one that ran before and is
        # pending again (requeued, preempted, retried by the user) is not dropped silently.
        if isinstance(job.status, Pending) and job.attempts == job.launch_failures:
            notices.append(s.remove(job_id))
    notices.extend(s.admit_backlog(now))
    # a repeated id (two files of one tenant) has one place: the next sync looks at all
    s._synced = lines if len(seen) == len(lines) else None
    s._line_at = seen
    return notices


def _sync_tail(
    s: Scheduler,
    lines: tuple[tuple[JobSpec, int], ...],
    now: float,
    deps: Mapping[str, tuple[str, ...]],
    kept: int,
) -> list[Notice] | None:
    """``sync`` when the first ``kept`` lines are the last sync's (None: a repeated id).

    What the full walk would do, without walking the kept lines. ``add`` changes nothing
    for a kept line unless its job still waits in the backlog, or became pending since the
    last sync (it may have a share from before its line changed: shares change on pending
    jobs only); every way to pending goes through ``_enqueue``, which notes the job in
    ``_requeued``. Those lines are walked, in file order, then the lines after ``kept``.
    Jobs to dequeue can only be those of the lines after ``kept`` last time, or ones that
    became pending since: after each sync no other pending job without a line never ran.
    """
    last, line_at = s._synced, s._line_at
    assert last is not None
    fresh = [spec.job_id for spec, _ in lines[kept:]]
    if len(set(fresh)) != len(fresh) or any(line_at.get(j, kept) < kept for j in fresh):
        return None
    gone = [spec.job_id for spec, _ in last[kept:]]
    for job_id in gone:
        del line_at[job_id]
    for at, job_id in enumerate(fresh, kept):
        line_at[job_id] = at
    # kept lines the walk must still visit, by place: those waiting in the backlog, and
    # those whose job became pending since (a share change is applied to pending jobs only)
    again: dict[int, tuple[JobSpec, int, tuple[str, ...]]] = {}
    for job_id in s._requeued:
        at = line_at.get(job_id, kept)
        if at < kept:
            spec, share = lines[at]
            again[at] = (spec, share, deps.get(job_id, ()))
    for entry in s.backlog:
        at = line_at.get(entry[0].job_id, kept)
        if at >= kept:
            break  # the backlog is in file order
        again[at] = entry
    todo = itertools.chain(
        (again[at] for at in sorted(again)),
        ((spec, share, deps.get(spec.job_id, ())) for spec, share in lines[kept:]),
    )
    notices: list[Notice] = []
    limit = s.policy.queue_size_limit
    backlog: list[tuple[JobSpec, int, tuple[str, ...]]] = []
    for spec, share, job_deps in todo:  # the body of sync's walk
        new = spec.job_id not in s.jobs and spec.job_id not in s.archived
        if new and limit is not None and (backlog or s.queued_count() >= limit):
            backlog.append((spec, share, job_deps))
            continue
        notices.extend(s.add(spec, share, now, job_deps))
    s.backlog = backlog
    requeued, s._requeued = s._requeued, set()
    drop = [
        j
        for j in dict.fromkeys([*gone, *requeued])
        if j not in line_at
        and (job := s.jobs.get(j)) is not None
        and isinstance(job.status, Pending)
        and job.attempts == job.launch_failures
    ]
    if len(drop) > 1:  # in the jobs' order, as the full walk dequeues them
        chosen = set(drop)
        drop = [j for j in s.jobs if j in chosen]
    notices.extend(s.remove(job_id) for job_id in drop)
    notices.extend(s.admit_backlog(now))
    s._synced = lines
    return notices


def add(
    s: Scheduler, spec: JobSpec, share: int, now: float, deps: tuple[str, ...] = ()
) -> list[Notice]:
    """Enqueue a line's job, or refresh a known one (its line moved, its share changed).

    ``deps`` are the job ids it must wait for (resolved from ``after=``)."""
    known = s.jobs.get(spec.job_id)
    if known is None and spec.job_id in s.archived:
        return []
    if s.deps.get(spec.job_id, ()) != deps:
        dependency_waits.set_deps(s, spec.job_id, deps)
        if known is not None and isinstance(known.status, Pending):
            s._put(known)  # re-file: it may now wait, or no longer
    if known is None:
        job = Job(
            spec=spec,
            share=share,
            status=Pending(enqueued_at=now),
            seq=s.next_seq,
            submitted_at=now,
        )
        s.next_seq += 1
        s.jobs[spec.job_id] = job
        s._enqueue(job)
        return [Notice("enqueued", job.job_id, f"{spec.label} share {format_share(share)}")]
    same_spec = known.spec is spec or known.spec == spec  # the kept lines: no field walk
    if isinstance(known.status, Pending) and (known.share != share or not same_spec):
        s._dequeue(known.job_id)
        job = replace(known, spec=spec, share=share)
        s.jobs[job.job_id] = job
        s._enqueue(job)
        if known.share != share:
            return [
                Notice(
                    "reshared",
                    job.job_id,
                    f"share {format_share(known.share)} -> {format_share(share)}",
                )
            ]
    elif not same_spec:
        s.jobs[known.job_id] = replace(known, spec=spec)
    return []


def remove(s: Scheduler, job_id: str) -> Notice:
    """Forget a pending job whose line is gone (it never ran in this attempt)."""
    job = s.job(job_id)
    if not isinstance(job.status, Pending):
        raise ValueError(f"job {job_id} is {job.state}; only pending jobs are dequeued")
    s._dequeue(job_id)
    del s.jobs[job_id]
    dependency_waits.set_deps(s, job_id, ())
    return Notice("dequeued", job_id, "its line was removed or edited")
