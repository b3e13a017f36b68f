"""The scheduler: all of the daemon's decisions, with none of its side effects.

The daemon (and the what-if simulator) feed it what they observed — the jobs file's specs, a GPU
snapshot, launch results, exits — each with the current time, and carry out the actions it returns.
It owns the jobs, the pending queue and the record of assigned shares per GPU; it never reads a
clock, a file or a process.

One scheduling pass (``schedule``): promote delayed retries that are due, assess each GPU's room,
then walk the queue in order (effective priority, then arrival). A job that fits is placed at once
(shares counted before it is launched, so nothing can over-commit). The first job that does not fit
but could fit this machine gets a reservation: the GPUs closest to fitting it take no new work, so
a stream of small jobs cannot starve it; later jobs are backfilled onto the other GPUs only.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gpu_scheduler.core import allocator, limits
from gpu_scheduler.core.fairshare import FairShare, TenantRule
from gpu_scheduler.core.model import (
    Cancelled,
    DependencyFailed,
    Failed,
    Finished,
    GpuSnapshot,
    Job,
    JobSpec,
    Killed,
    Launch,
    LaunchFailed,
    Notice,
    Outcome,
    Pending,
    Resume,
    Running,
    StateName,
    Stop,
    StopReason,
    Succeeded,
    Suspend,
    TimedOut,
)
from gpu_scheduler.core.ordering import PendingQueue, effective_priority
from gpu_scheduler.core.preemption import PreemptionRule
from gpu_scheduler.core.transitions import transition
from gpu_scheduler.core.units import format_share


@dataclass(frozen=True)
class Policy:
    """The knobs of the scheduling rules (from the config; the simulator varies them)."""

    aging_interval_s: float = 600.0
    memory_threshold: float = 0.9
    load_threshold: float = 0.9
    max_assignment_attempts: int = 3
    assignment_retry_wait_s: float = 10.0
    default_timeout_s: float | None = None
    stop_grace_s: float = 30.0
    session_prefix: str = "gpujob"
    # Sessions named by job id and attempt ("<id>", then "<id>-2", ...), not by GPU and script:
    # a Ray submission id, which must be new for every attempt and findable after a restart.
    sessions_by_attempt: bool = False
    max_concurrent_jobs: int | None = None
    queue_size_limit: int | None = None  # new lines wait in the file while this many are queued
    reservation: bool = True  # hold GPUs for a blocked head-of-queue job
    best_fit: bool = True  # False: first fit (a simulator baseline)
    preemption: PreemptionRule = PreemptionRule()
    fair_share_half_life_s: float = 3600.0
    tenants: Mapping[str, TenantRule] = field(default_factory=dict)


@dataclass(frozen=True)
class PassReport:
    """What one pass decided and why the rest waits (status shows it)."""

    launches: tuple[Launch, ...] = ()
    actions: tuple[Stop | Suspend | Resume, ...] = ()  # preemptions and resumptions
    reserved_for: str | None = None
    reserved_gpus: tuple[int, ...] = ()
    waiting: dict[str, str] = field(default_factory=dict)  # first job of each blocked class -> why
    rooms: dict[int, allocator.GpuRoom] = field(default_factory=dict)
    notices: tuple[Notice, ...] = ()  # lines taken from the backlog into the queue


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def session_name(prefix: str, gpus: Sequence[int], script: str, job_id: str) -> str:
    """``gpujob_<first gpu>_<script stem>_<job id>``, in characters screen accepts."""
    base = script.rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _UNSAFE.sub("-", stem).strip("-.")[:40] or "job"
    first = gpus[0] if gpus else "none"
    return f"{prefix}_{first}_{stem}_{job_id}"


def _index_ranges(indices: Sequence[int]) -> str:
    """0-3, or 0, 2-3 when some indices are missing (hidden by CUDA_VISIBLE_DEVICES)."""
    runs: list[list[int]] = []
    for g in indices:
        if runs and g == runs[-1][1] + 1:
            runs[-1][1] = g
        else:
            runs.append([g, g])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


class UnknownJob(KeyError):
    """No job with this id (the CLI says 'no such job')."""


class Scheduler:
    def __init__(self, policy: Policy, gpu_indices: Sequence[int]) -> None:
        self.policy = policy
        self.gpu_indices: tuple[int, ...] = tuple(gpu_indices)
        self.jobs: dict[str, Job] = {}
        self.paused: set[int] = set()
        self.archived: dict[str, StateName] = {}  # finished jobs moved to history: id -> state
        self.next_seq = 0
        self.last_pass = PassReport()
        self._queue = PendingQueue(policy.aging_interval_s)
        self._delayed: dict[str, float] = {}  # pending but not before this time
        self._running: set[str] = set()
        self._used: dict[int, int] = {g: 0 for g in self.gpu_indices}
        self.fair = FairShare(policy.fair_share_half_life_s, dict(policy.tenants))
        self.deps: dict[str, tuple[str, ...]] = {}  # job id -> ids it waits for (after=)
        self._dependents: dict[str, set[str]] = {}  # job id -> ids waiting for it
        self.held: set[str] = set()  # pending jobs waiting for their dependencies
        self.preempt_holds: dict[str, tuple[int, ...]] = {}  # urgent job -> GPUs being freed
        # New lines beyond queue_size_limit, in file order: (spec, share, deps). Rebuilt by
        # every sync, taken into the queue as it drains; not persisted (the file holds them).
        self.backlog: list[tuple[JobSpec, int, tuple[str, ...]]] = []
        self.backlog_noticed = False  # the queue_full notice was given
        self.oom_holds: dict[int, int] = {}  # GPU -> MiB that must be free again (CUDA OOM)
        self.gpu_memory_mib: dict[int, int] = {}  # GPU -> total MiB, as last seen by a pass
        # What the last sync saw, so the next one can look at the appended lines only:
        # its lines (None: look at all), each job id's place in them, and the jobs that
        # became pending since (see _sync_tail).
        self._synced: tuple[tuple[JobSpec, int], ...] | None = None
        self._line_at: dict[str, int] = {}
        self._requeued: set[str] = set()

    # ------------------------------------------------------------------ reading

    def job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(job_id) from None

    def find(self, key: str) -> Job:
        """A job by id, unique id prefix, or name (the CLI accepts any of them)."""
        if key in self.jobs:
            return self.jobs[key]
        hits = [j for j in self.jobs.values() if j.spec.name == key or j.job_id.startswith(key)]
        if len(hits) == 1:
            return hits[0]
        raise UnknownJob(key)

    @property
    def running_ids(self) -> frozenset[str]:
        return frozenset(self._running)

    def used(self) -> dict[int, int]:
        """Milli-GPU held by our running jobs, per GPU."""
        return dict(self._used)

    def pending_count(self) -> int:
        return len(self._queue) + len(self._delayed) + len(self.held)

    def queued_count(self) -> int:
        """Pending jobs that count against queue_size_limit: those waiting for GPUs or a retry
        time. Jobs waiting for their dependencies do not (they could hold every slot while the
        line they wait for sits in the backlog)."""
        return len(self._queue) + len(self._delayed)

    @property
    def queue(self) -> PendingQueue:
        return self._queue

    def running_by_tenant(self) -> dict[str, int]:
        """Milli-GPU held by each tenant's running (not suspended) jobs."""
        out: dict[str, int] = {}
        for job_id in self._running:
            job = self.jobs[job_id]
            if isinstance(job.status, Running) and not job.status.suspended:
                out[job.spec.tenant] = out.get(job.spec.tenant, 0) + job.share
        return out

    def queue_order(self, now: float, limit: int | None = None) -> list[str]:
        """Eligible pending job ids in the order the next pass will try them."""
        return self._queue.ordered_ids(now, limit)

    def effective_priority(self, job: Job, now: float) -> int:
        if not isinstance(job.status, Pending):
            return job.spec.priority
        return effective_priority(
            job.spec.priority, job.status.enqueued_at, now, self.policy.aging_interval_s
        )

    def timeout_for(self, job: Job) -> float | None:
        return (
            job.spec.timeout_s if job.spec.timeout_s is not None else self.policy.default_timeout_s
        )

    def next_deadline(self) -> float | None:
        """The next time something is due without any event (a retry, a timeout)."""
        times = list(self._delayed.values())
        for job_id in self._running:
            job = self.jobs[job_id]
            limit = self.timeout_for(job)
            if limit is not None and isinstance(job.status, Running) and not job.status.stopping:
                times.append(job.status.started_at + limit)
        return min(times) if times else None

    # ------------------------------------------------------------------ the jobs file

    def sync(
        self,
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
        last = self._synced
        if last is not None and 0 < unchanged <= len(last) and (
            lines[unchanged - 1] is last[unchanged - 1] and lines[0] is last[0]
        ):
            notices = self._sync_tail(lines, now, deps or {}, unchanged)
            if notices is not None:
                return notices
        notices = []
        seen: dict[str, int] = {}  # job id -> its line's place in ``lines``
        deps = deps or {}
        limit = self.policy.queue_size_limit
        backlog: list[tuple[JobSpec, int, tuple[str, ...]]] = []
        for spec, share in lines:
            seen[spec.job_id] = len(seen)
            job_deps = deps.get(spec.job_id, ())
            new = spec.job_id not in self.jobs and spec.job_id not in self.archived
            if new and limit is not None and (backlog or self.queued_count() >= limit):
                backlog.append((spec, share, job_deps))
                continue
            notices.extend(self.add(spec, share, now, job_deps))
        self.backlog = backlog
        self._requeued = set()
        for job_id in [j for j, job in self.jobs.items() if j not in seen]:
            job = self.jobs[job_id]
            # Only a job that never ran is the line's alone: one that ran before and is
            # pending again (requeued, preempted, retried by the user) is not dropped silently.
            if isinstance(job.status, Pending) and job.attempts == job.launch_failures:
                notices.append(self.remove(job_id))
        notices.extend(self.admit_backlog(now))
        # a repeated id (two files of one tenant) has one place: the next sync looks at all
        self._synced = lines if len(seen) == len(lines) else None
        self._line_at = seen
        return notices

    def _sync_tail(
        self,
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
        last, line_at = self._synced, self._line_at
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
        for job_id in self._requeued:
            at = line_at.get(job_id, kept)
            if at < kept:
                spec, share = lines[at]
                again[at] = (spec, share, deps.get(job_id, ()))
        for entry in self.backlog:
            at = line_at.get(entry[0].job_id, kept)
            if at >= kept:
                break  # the backlog is in file order
            again[at] = entry
        todo = itertools.chain(
            (again[at] for at in sorted(again)),
            ((spec, share, deps.get(spec.job_id, ())) for spec, share in lines[kept:]),
        )
        notices: list[Notice] = []
        limit = self.policy.queue_size_limit
        backlog: list[tuple[JobSpec, int, tuple[str, ...]]] = []
        for spec, share, job_deps in todo:  # the body of sync's walk
            new = spec.job_id not in self.jobs and spec.job_id not in self.archived
            if new and limit is not None and (backlog or self.queued_count() >= limit):
                backlog.append((spec, share, job_deps))
                continue
            notices.extend(self.add(spec, share, now, job_deps))
        self.backlog = backlog
        requeued, self._requeued = self._requeued, set()
        drop = [
            j
            for j in dict.fromkeys([*gone, *requeued])
            if j not in line_at
            and (job := self.jobs.get(j)) is not None
            and isinstance(job.status, Pending)
            and job.attempts == job.launch_failures
        ]
        if len(drop) > 1:  # in the jobs' order, as the full walk dequeues them
            chosen = set(drop)
            drop = [j for j in self.jobs if j in chosen]
        notices.extend(self.remove(job_id) for job_id in drop)
        notices.extend(self.admit_backlog(now))
        self._synced = lines
        return notices

    def admit_backlog(self, now: float) -> list[Notice]:
        """Move backlog lines into the queue, in file order, while it is under its limit."""
        return limits.admit_backlog(self, now)

    def add(
        self, spec: JobSpec, share: int, now: float, deps: tuple[str, ...] = ()
    ) -> list[Notice]:
        """Enqueue a line's job, or refresh a known one (its line moved, its share changed).

        ``deps`` are the job ids it must wait for (resolved from ``after=``)."""
        known = self.jobs.get(spec.job_id)
        if known is None and spec.job_id in self.archived:
            return []
        if self.deps.get(spec.job_id, ()) != deps:
            self._set_deps(spec.job_id, deps)
            if known is not None and isinstance(known.status, Pending):
                self._put(known)  # re-file: it may now wait, or no longer
        if known is None:
            job = Job(
                spec=spec,
                share=share,
                status=Pending(enqueued_at=now),
                seq=self.next_seq,
                submitted_at=now,
            )
            self.next_seq += 1
            self.jobs[spec.job_id] = job
            self._enqueue(job)
            return [Notice("enqueued", job.job_id, f"{spec.label} share {format_share(share)}")]
        same_spec = known.spec is spec or known.spec == spec  # the kept lines: no field walk
        if isinstance(known.status, Pending) and (known.share != share or not same_spec):
            self._dequeue(known.job_id)
            job = replace(known, spec=spec, share=share)
            self.jobs[job.job_id] = job
            self._enqueue(job)
            if known.share != share:
                return [
                    Notice(
                        "reshared",
                        job.job_id,
                        f"share {format_share(known.share)} -> {format_share(share)}",
                    )
                ]
        elif not same_spec:
            self.jobs[known.job_id] = replace(known, spec=spec)
        return []

    def remove(self, job_id: str) -> Notice:
        """Forget a pending job whose line is gone (it never ran in this attempt)."""
        job = self.job(job_id)
        if not isinstance(job.status, Pending):
            raise ValueError(f"job {job_id} is {job.state}; only pending jobs are dequeued")
        self._dequeue(job_id)
        del self.jobs[job_id]
        self._set_deps(job_id, ())
        return Notice("dequeued", job_id, "its line was removed or edited")

    # ------------------------------------------------------------------ a pass

    def schedule(
        self, gpus: Sequence[GpuSnapshot], now: float, own_pids: Collection[int] = ()
    ) -> PassReport:
        """Place what fits now; returns the launches (shares already counted) and the reasons."""
        from gpu_scheduler.core.planner import plan_pass

        admitted = self.admit_backlog(now) if self.backlog else []
        report = plan_pass(self, gpus, now, own_pids)
        if self.backlog:  # refill what this pass's starts freed; placed by the next pass
            admitted.extend(self.admit_backlog(now))
        self.last_pass = replace(report, notices=tuple(admitted)) if admitted else report
        return self.last_pass

    def why_waiting(
        self,
        job: Job,
        rooms: dict[int, allocator.GpuRoom],
        free: dict[int, int],
        reserved: Collection[int],
    ) -> str:
        allowed = job.spec.allowed_gpus
        pool = [g for g in rooms if allowed is None or g in allowed]
        parts = []
        for g in pool:
            room = rooms[g]
            if not room.usable:
                parts.append(f"GPU {g} {room.reason}")
            elif g in reserved:
                parts.append(f"GPU {g} held for a bigger job")
            else:
                parts.append(f"GPU {g} {format_share(free[g])} free")
        return f"needs share {format_share(job.share)}: " + "; ".join(parts[:8])

    def start_job(self, job: Job, placement: allocator.Placement, now: float) -> Launch:
        """Count the placement's shares and mark the job running (launch not yet reported)."""
        self._dequeue(job.job_id)
        if self.policy.sessions_by_attempt:
            attempt = job.attempts + 1
            session = job.job_id if attempt == 1 else f"{job.job_id}-{attempt}"
        else:
            session = session_name(
                self.policy.session_prefix, placement.gpus, job.spec.script, job.job_id
            )
        running = Running(
            started_at=now,
            gpus=placement.gpus,
            share_per_gpu=placement.share_per_gpu,
            session=session,
        )
        job = transition(job, running, attempts=job.attempts + 1)
        self.jobs[job.job_id] = job
        self._running.add(job.job_id)
        for g in placement.gpus:
            self._used[g] = self._used.get(g, 0) + placement.share_per_gpu
        return Launch(
            job.job_id,
            placement.gpus,
            placement.share_per_gpu,
            session,
            job.attempts,
            preempted=job.preemptions > 0,
        )

    # ------------------------------------------------------------------ results of actions

    def launched(self, job_id: str, pid: int, pid_started_at: float | None) -> None:
        """The launcher started the job's runner: remember what to follow and kill."""
        job = self._running_job(job_id)
        status = replace(job.status, pid=pid, pid_started_at=pid_started_at)  # type: ignore[type-var]
        self.jobs[job_id] = transition(job, status)

    def launch_failed(self, job_id: str, message: str, now: float) -> Notice:
        """The job never started: retry after a wait, up to max_assignment_attempts."""
        job = self._running_job(job_id)
        self._release(job)
        failures = job.launch_failures + 1
        if self._stopped_outcome(job) is not None:  # e.g. cancelled while it was being launched
            return self._finish_stopped(job, now, f"launch failed: {message}")
        if failures < self.policy.max_assignment_attempts:
            retry_at = now + self.policy.assignment_retry_wait_s
            status = Pending(
                enqueued_at=self._enqueued_at(job),
                not_before=retry_at,
                reason=f"launch failed: {message}",
            )
            self._put(transition(job, status, launch_failures=failures))
            return Notice(
                "launch_retry",
                job_id,
                message,
                {"attempt": failures, "retry_in_s": self.policy.assignment_retry_wait_s},
            )
        self._put(
            transition(
                job,
                Finished(now, LaunchFailed(message), job.status.started_at, job.status.gpus),
                launch_failures=failures,
            )
        )
        return Notice("launch_failed", job_id, message, {"attempts": failures})

    def exited(self, job_id: str, exit_code: int, now: float, oom: bool = False) -> Notice:
        """The job's process ended with this code; what that means depends on why it ended.

        ``oom``: its log shows CUDA out-of-memory. A non-zero exit then holds its GPUs (no new
        work until they have its share of memory free again; see ``allocator.oom_holds_left``)
        and requeues the job, at most ``max_assignment_attempts`` times; after that it fails
        like any other exit. The caller should pass the next pass a snapshot probed after this
        exit, or a stale one may end the hold at once."""
        job = self._running_job(job_id)
        run = job.status
        self._release(job)
        done = lambda outcome: Finished(now, outcome, run.started_at, run.gpus)  # noqa: E731
        if run.stopping == "preempt":
            return self._requeue_preempted(job, f"exit {exit_code}")
        stopped = self._stopped_outcome(job)
        why = f"exit {exit_code}"
        if oom and exit_code != 0 and stopped is None and not run.stopping:
            self.oom_holds = limits.with_oom_holds(self.oom_holds, run, self.gpu_memory_mib)
            if job.oom_requeues < self.policy.max_assignment_attempts:
                return self._requeue_oom(job, exit_code)
            why += f" (CUDA out of memory; {job.oom_requeues} OOM requeues used)"
        if stopped is not None:
            new, event = done(stopped[0]), stopped[1]
        elif exit_code == 0:
            new, event = done(Succeeded()), "completed"
        elif job.retries_used < job.spec.retries:
            reason = f"{why}; retry {job.retries_used + 1} of {job.spec.retries}"
            self._put(
                transition(
                    job,
                    Pending(self._enqueued_at(job), reason=reason),
                    retries_used=job.retries_used + 1,
                    last_exit_code=exit_code,
                )
            )
            return Notice("retrying", job_id, reason, {"exit_code": exit_code})
        else:
            new, event = done(Failed(exit_code)), "failed"
        self._put(transition(job, new, last_exit_code=exit_code))
        return Notice(event, job_id, why, {"exit_code": exit_code})

    def _requeue_oom(self, job: Job, exit_code: int) -> Notice:
        run = job.status
        assert isinstance(run, Running)
        count = job.oom_requeues + 1
        reason = limits.oom_requeue_reason(run, exit_code, count, self.policy.max_assignment_attempts)
        pending = Pending(self._enqueued_at(job), reason=reason)
        self._put(
            transition(
                job, pending, oom_requeues=count, requeues=job.requeues + 1, last_exit_code=exit_code
            )
        )
        return Notice("oom_requeued", job.job_id, reason, {"exit_code": exit_code})

    def abort_launch(self, job_id: str, reason: str) -> Notice:
        """Take back a launch that was never attempted (its state could not be saved first)."""
        job = self._running_job(job_id)
        if job.status.pid is not None:  # type: ignore[union-attr]
            raise ValueError(f"job {job_id} has already started")
        self._release(job)
        self._put(
            transition(
                job, Pending(self._enqueued_at(job), reason=reason), attempts=job.attempts - 1
            )
        )
        return Notice("launch_aborted", job_id, reason)

    def lost(self, job_id: str, reason: str, now: float) -> Notice:
        """The job's process vanished with no exit record (reboot, runner killed): run it again.

        Unless it was being stopped for good (cancel, timeout, memory): killing the runner's
        whole process group leaves no exit record, and that job must not run again."""
        job = self._running_job(job_id)
        self._release(job)
        if job.status.stopping == "preempt":  # type: ignore[union-attr]
            return self._requeue_preempted(job, reason)
        if self._stopped_outcome(job) is not None:
            return self._finish_stopped(job, now, reason)
        self._put(
            transition(
                job,
                Pending(self._enqueued_at(job), reason=f"requeued: {reason}"),
                requeues=job.requeues + 1,
            )
        )
        return Notice("requeued", job_id, reason)

    # ------------------------------------------------------------------ user requests

    def cancel(self, job_id: str, now: float, by: str = "user") -> tuple[list[Stop], Notice]:
        job = self.job(job_id)
        if isinstance(job.status, Pending):
            self._dequeue(job_id)
            self._put(transition(job, Finished(now, Cancelled(by))))
            return [], Notice("cancelled", job_id, f"cancelled by {by} while pending")
        if isinstance(job.status, Running):
            return [self.request_stop(job_id, "cancel", now, by)], Notice(
                "cancelling", job_id, f"cancel requested by {by}"
            )
        raise ValueError(f"job {job_id} already {job.state}")

    def request_stop(self, job_id: str, reason: StopReason, now: float, detail: str = "") -> Stop:
        job = self._running_job(job_id)
        status = replace(
            job.status,
            stopping=reason,
            stop_detail=detail,  # type: ignore[type-var]
            stop_requested_at=now,
        )
        self.jobs[job_id] = transition(job, status)
        return Stop(job_id, reason, self.policy.stop_grace_s, detail)

    def check_timeouts(self, now: float) -> list[Stop]:
        stops = []
        for job_id in sorted(self._running):
            job = self.jobs[job_id]
            limit = self.timeout_for(job)
            run = job.status
            if (
                limit is not None
                and isinstance(run, Running)
                and not run.stopping
                and now - run.started_at >= limit
            ):
                stops.append(self.request_stop(job_id, "timeout", now, f"timeout {limit:g}s"))
        return stops

    def retry(self, job_id: str, now: float) -> Notice:
        """Put a finished job back in the queue as a new arrival, with fresh retry counters."""
        job = self.job(job_id)
        if not isinstance(job.status, Finished):
            raise ValueError(f"job {job_id} is {job.state}; only finished jobs can be retried")
        job = transition(
            job,
            Pending(now, reason="retried by user"),
            seq=self.next_seq,
            submitted_at=now,
            retries_used=0,
            launch_failures=0,
        )
        self.next_seq += 1
        self._put(job)
        return Notice("retried", job_id, "queued again by user")

    def pause(self, gpus: Iterable[int]) -> list[int]:
        return self._set_paused(gpus, True)

    def resume(self, gpus: Iterable[int]) -> list[int]:
        return self._set_paused(gpus, False)

    def _set_paused(self, gpus: Iterable[int], paused: bool) -> list[int]:
        chosen = sorted(set(gpus))
        missing = [g for g in chosen if g not in self.gpu_indices]
        if missing:
            have = _index_ranges(sorted(self.gpu_indices)) or "none"
            raise ValueError(f"GPU {missing[0]} not found; this machine has GPUs {have}")
        for g in chosen:
            (self.paused.add if paused else self.paused.discard)(g)
        return chosen

    def add_gpus(self, gpus: Iterable[int]) -> list[int]:
        """GPUs that appeared after the start (a cluster node joined); returns the new ones."""
        new = sorted(set(gpus) - set(self.gpu_indices))
        self.gpu_indices = (*self.gpu_indices, *new)
        for g in new:
            self._used.setdefault(g, 0)
        return new

    # ------------------------------------------------------------------ persistence

    def restore(
        self,
        jobs: Iterable[Job],
        paused: Iterable[int],
        next_seq: int,
        archived: dict[str, StateName] | None = None,
    ) -> None:
        """Rebuild queue and share records from saved jobs (recovery decides about running ones)."""
        self.paused = {g for g in paused if g in self.gpu_indices}
        self.archived = dict(archived or {})
        for job in jobs:
            self.next_seq = max(self.next_seq, job.seq + 1)
            self._put(job)
            if isinstance(job.status, Running):
                self._running.add(job.job_id)
                if not job.status.suspended:  # a frozen job's shares are lent out
                    for g in job.status.gpus:
                        self._used[g] = self._used.get(g, 0) + job.status.share_per_gpu
        self.next_seq = max(self.next_seq, next_seq)

    def archive(self, job_id: str) -> Job:
        """Drop a finished job's details from live state, keeping its id so it never re-runs."""
        job = self.job(job_id)
        if not isinstance(job.status, Finished):
            raise ValueError(f"job {job_id} is {job.state}; only finished jobs are archived")
        del self.jobs[job_id]
        self.archived[job_id] = job.state
        return job

    # ------------------------------------------------------------------ internals

    def _running_job(self, job_id: str) -> Job:
        job = self.job(job_id)
        if not isinstance(job.status, Running):
            raise ValueError(f"job {job_id} is {job.state}, not running")
        return job

    def _stopped_outcome(self, job: Job) -> tuple[Outcome, str] | None:
        """The outcome a stop requested for good decides, whatever the exit (None: no such stop)."""
        run = job.status
        if not isinstance(run, Running):
            return None
        if run.stopping == "cancel":
            return Cancelled(run.stop_detail or "user"), "cancelled"
        if run.stopping == "timeout":
            return TimedOut(self.timeout_for(job) or 0.0), "timed_out"
        if run.stopping == "memory":
            return Killed(run.stop_detail), "killed"
        return None

    def _finish_stopped(self, job: Job, now: float, how: str) -> Notice:
        """Finish a released job whose stop was requested, by that stop's outcome."""
        run = job.status
        assert isinstance(run, Running)
        stopped = self._stopped_outcome(job)
        assert stopped is not None
        self._put(transition(job, Finished(now, stopped[0], run.started_at, run.gpus)))
        return Notice(stopped[1], job.job_id, how)

    def _enqueued_at(self, job: Job) -> float:
        return job.submitted_at

    def _release(self, job: Job) -> None:
        run = job.status
        if isinstance(run, Running) and job.job_id in self._running:
            self._running.discard(job.job_id)
            if not run.suspended:  # a frozen job's shares were already lent out
                for g in run.gpus:
                    self._used[g] -= run.share_per_gpu

    def _put(self, job: Job) -> None:
        """Store a job and file it in the queue or the delayed set according to its status."""
        self.jobs[job.job_id] = job
        self._dequeue(job.job_id)
        if isinstance(job.status, Pending):
            self._enqueue(job)
        elif isinstance(job.status, Finished):
            self._wake_dependents(job.job_id)

    def _enqueue(self, job: Job) -> None:
        assert isinstance(job.status, Pending)
        if self._synced is not None:  # the next sync checks whether its line is still there
            self._requeued.add(job.job_id)
        waiting, failed = self.dependency_state(job.job_id)
        if failed:
            self._put(transition(job, Finished(self._failed_at(job), DependencyFailed(failed))))
            return
        if waiting:
            self.held.add(job.job_id)
            return
        if job.status.not_before > 0 and job.job_id not in self._queue:
            self._delayed[job.job_id] = job.status.not_before
        else:
            self._queue.add(job)

    def _dequeue(self, job_id: str) -> None:
        self._queue.remove(job_id)
        self._delayed.pop(job_id, None)
        self.held.discard(job_id)

    def _promote_due(self, now: float) -> None:
        for job_id, at in list(self._delayed.items()):
            if at <= now:
                del self._delayed[job_id]
                self._queue.add(self.jobs[job_id])

    # ------------------------------------------------------------------ dependencies

    def _set_deps(self, job_id: str, deps: tuple[str, ...]) -> None:
        for dep in self.deps.pop(job_id, ()):
            self._dependents.get(dep, set()).discard(job_id)
        if deps:
            self.deps[job_id] = deps
            for dep in deps:
                self._dependents.setdefault(dep, set()).add(job_id)

    def _dep_label(self, job_id: str) -> str:
        job = self.jobs.get(job_id)
        return (job.spec.name or job_id) if job else job_id

    def dependency_state(self, job_id: str) -> tuple[str, str]:
        """(a dependency still to complete, a dependency that failed), each "" if none."""
        waiting = ""
        for dep in self.deps.get(job_id, ()):
            state = self.jobs[dep].state if dep in self.jobs else self.archived.get(dep)
            if state in ("failed", "cancelled"):
                return "", self._dep_label(dep)
            if state != "completed" and not waiting:
                waiting = self._dep_label(dep)
        return waiting, ""

    def _failed_at(self, job: Job) -> float:
        """When a dependency of ``job`` ended badly (its own finish time)."""
        times = [
            d.status.finished_at
            for d in (self.jobs.get(dep) for dep in self.deps.get(job.job_id, ()))
            if d is not None and isinstance(d.status, Finished)
        ]
        assert isinstance(job.status, Pending)
        return max(times, default=job.status.enqueued_at)

    def _wake_dependents(self, job_id: str) -> None:
        for dependent in sorted(self._dependents.get(job_id, ())):
            if dependent in self.held:
                self.held.discard(dependent)
                self._enqueue(self.jobs[dependent])

    # ------------------------------------------------------------------ preemption

    def _requeue_preempted(self, job: Job, how: str) -> Notice:
        run = job.status
        assert isinstance(run, Running)
        reason = run.stop_detail or "preempted"
        self._put(
            transition(
                job,
                Pending(self._enqueued_at(job), reason=reason),
                preemptions=job.preemptions + 1,
                requeues=job.requeues + 1,
            )
        )
        return Notice("preempted", job.job_id, f"{reason} ({how}); back in the queue")

    def suspend_job(self, job_id: str, now: float, detail: str) -> Suspend:
        """Freeze a job for a more urgent one: its shares are lent out until it resumes."""
        job = self._running_job(job_id)
        run = job.status
        assert isinstance(run, Running) and not run.suspended
        for g in run.gpus:
            self._used[g] -= run.share_per_gpu
        status = replace(run, suspended=True, stop_detail=detail, stop_requested_at=now)
        self.jobs[job_id] = transition(job, status, preemptions=job.preemptions + 1)
        return Suspend(job_id, detail)

    def resume_job(self, job_id: str) -> Resume:
        job = self._running_job(job_id)
        run = job.status
        assert isinstance(run, Running) and run.suspended
        for g in run.gpus:
            self._used[g] += run.share_per_gpu
        status = replace(run, suspended=False, stop_detail="", stop_requested_at=None)
        self.jobs[job_id] = transition(job, status)
        return Resume(job_id)

    def suspended_jobs(self) -> list[Job]:
        """Frozen jobs, most urgent first: they get their shares back before new work starts."""
        frozen = [
            self.jobs[j]
            for j in self._running
            if isinstance(self.jobs[j].status, Running) and self.jobs[j].status.suspended  # type: ignore[union-attr]
        ]
        return sorted(frozen, key=lambda j: (j.spec.priority, j.seq))

    def promote_due(self, now: float) -> None:
        self._promote_due(now)
