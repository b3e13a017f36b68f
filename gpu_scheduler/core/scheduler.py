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

This module holds the state, how a job is filed (queue, delayed, held for its dependencies,
running shares) and the methods callers use; the work is done beside it: ``jobfile_sync`` (the
jobs file's lines), ``planner`` (a pass), ``runs`` (a run's start and end), ``dependency_waits``
(``after=``), ``policy``, ``sessions`` and ``pass_report``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from gpu_scheduler.core import (
    allocator,
    dependency_waits,
    jobfile_sync,
    limits,
    pass_report,
    runs,
)
from gpu_scheduler.core.fairshare import FairShare
from gpu_scheduler.core.model import (
    DependencyFailed,
    Finished,
    GpuSnapshot,
    Job,
    JobSpec,
    Launch,
    Notice,
    Pending,
    Resume,
    Running,
    StateName,
    Stop,
    StopReason,
    Suspend,
)
from gpu_scheduler.core.ordering import PendingQueue, effective_priority
from gpu_scheduler.core.pass_report import PassReport
from gpu_scheduler.core.policy import Policy
from gpu_scheduler.core.sessions import session_name
from gpu_scheduler.core.transitions import transition

# Imported from here by the daemon, CLI, simulator, scripts and tests.
__all__ = ["PassReport", "Policy", "Scheduler", "UnknownJob", "session_name"]


def _index_ranges(indices: Sequence[int]) -> str:
    """0-3, or 0, 2-3 when some indices are missing (hidden by CUDA_VISIBLE_DEVICES)."""
    spans: list[list[int]] = []
    for g in indices:
        if spans and g == spans[-1][1] + 1:
            spans[-1][1] = g
        else:
            spans.append([g, g])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


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
        # became pending since (see jobfile_sync._sync_tail).
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
        """Make the pending set match the jobs file (``jobfile_sync.sync``: ``unchanged``)."""
        return jobfile_sync.sync(self, specs, now, deps, unchanged=unchanged)

    def admit_backlog(self, now: float) -> list[Notice]:
        """Move backlog lines into the queue, in file order, while it is under its limit."""
        return limits.admit_backlog(self, now)

    def add(
        self, spec: JobSpec, share: int, now: float, deps: tuple[str, ...] = ()
    ) -> list[Notice]:
        """Enqueue a line's job, or refresh a known one (its line moved, its share changed)."""
        return jobfile_sync.add(self, spec, share, now, deps)

    def remove(self, job_id: str) -> Notice:
        """Forget a pending job whose line is gone (it never ran in this attempt)."""
        return jobfile_sync.remove(self, job_id)

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
        return pass_report.why_waiting(job, rooms, free, reserved)

    def start_job(self, job: Job, placement: allocator.Placement, now: float) -> Launch:
        """Count the placement's shares and mark the job running (launch not yet reported)."""
        return runs.start_job(self, job, placement, now)

    # ------------------------------------------------------------------ results of actions (runs)

    def launched(self, job_id: str, pid: int, pid_started_at: float | None) -> None:
        """The launcher started the job's runner: remember what to follow and kill."""
        runs.launched(self, job_id, pid, pid_started_at)

    def launch_failed(self, job_id: str, message: str, now: float) -> Notice:
        """The job never started: retry after a wait, up to max_assignment_attempts."""
        return runs.launch_failed(self, job_id, message, now)

    def exited(self, job_id: str, exit_code: int, now: float, oom: bool = False) -> Notice:
        """The job's process ended with this code (``runs.exited``: what ``oom`` does)."""
        return runs.exited(self, job_id, exit_code, now, oom)

    def abort_launch(self, job_id: str, reason: str) -> Notice:
        """Take back a launch that was never attempted (its state could not be saved first)."""
        return runs.abort_launch(self, job_id, reason)

    def lost(self, job_id: str, reason: str, now: float) -> Notice:
        """The job's process vanished with no exit record: run it again (unless being stopped)."""
        return runs.lost(self, job_id, reason, now)

    # ------------------------------------------------------------------ user requests

    def cancel(self, job_id: str, now: float, by: str = "user") -> tuple[list[Stop], Notice]:
        return runs.cancel(self, job_id, now, by)

    def request_stop(self, job_id: str, reason: StopReason, now: float, detail: str = "") -> Stop:
        return runs.request_stop(self, job_id, reason, now, detail)

    def check_timeouts(self, now: float) -> list[Stop]:
        return runs.check_timeouts(self, now)

    def retry(self, job_id: str, now: float) -> Notice:
        """Put a finished job back in the queue as a new arrival, with fresh retry counters."""
        return runs.retry(self, job_id, now)

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
            dependency_waits.wake_dependents(self, job.job_id)

    def _enqueue(self, job: Job) -> None:
        assert isinstance(job.status, Pending)
        if self._synced is not None:  # the next sync checks whether its line is still there
            self._requeued.add(job.job_id)
        waiting, failed = self.dependency_state(job.job_id)
        if failed:
            failed_at = dependency_waits.failed_at(self, job)
            self._put(transition(job, Finished(failed_at, DependencyFailed(failed))))
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

    def dependency_state(self, job_id: str) -> tuple[str, str]:
        """(a dependency still to complete, a dependency that failed), each "" if none."""
        return dependency_waits.dependency_state(self, job_id)

    # ------------------------------------------------------------------ preemption

    def suspend_job(self, job_id: str, now: float, detail: str) -> Suspend:
        """Freeze a job for a more urgent one: its shares are lent out until it resumes."""
        return runs.suspend_job(self, job_id, now, detail)

    def resume_job(self, job_id: str) -> Resume:
        return runs.resume_job(self, job_id)

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
