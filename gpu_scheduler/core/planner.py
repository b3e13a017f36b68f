"""One scheduling pass: who gets which GPUs now, and why the others wait.

Order of work in a pass:

1. retries that are due become eligible; tenants' fair-share usage is brought up to ``now``;
2. each GPU's room is assessed (our shares, foreign memory/load, paused, unhealthy, a CUDA
   OOM hold: see ``allocator.oom_holds_left``; holds whose memory is back are dropped here);
3. frozen (suspended) jobs get their shares back first, as soon as they fit again;
4. pending jobs are walked tenant by tenant in fair-share order (the tenant furthest below its
   weighted share of recent use goes next) and, within a tenant, by effective priority then
   arrival. A job that fits is placed at once (its shares counted before it is launched). A job
   over its tenant's ``max_gpus`` waits. The first job that does not fit either preempts less
   urgent jobs (when enabled) or gets a reservation: the GPUs closest to fitting it take no new
   work, so small jobs cannot starve it; later jobs are backfilled onto other GPUs only.

Every class (tenant, share, allowed GPUs) whose job did not fit is skipped for the rest of the
pass: no later job of that class could fit either. So a pass costs O(buckets + placements),
not O(pending jobs).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING

from gpu_scheduler.core import allocator
from gpu_scheduler.core.model import GpuSnapshot, Job, Launch, Resume, Running, Stop, Suspend
from gpu_scheduler.core.ordering import Bucket, JobClass
from gpu_scheduler.core.preemption import plan_preemption
from gpu_scheduler.core.units import ONE_GPU, format_share, share_per_gpu

if TYPE_CHECKING:
    from gpu_scheduler.core.scheduler import PassReport, Scheduler

MAX_REASONS = 50  # waiting reasons worked out per pass (status lists the first ones)


def plan_pass(
    s: Scheduler, gpus: Sequence[GpuSnapshot], now: float, own_pids: Collection[int]
) -> PassReport:
    from gpu_scheduler.core.scheduler import PassReport

    s.promote_due(now)
    running_by_tenant = s.running_by_tenant()
    s.fair.advance(now, running_by_tenant)
    s.gpu_memory_mib.update((g.index, g.memory_total_mib) for g in gpus if g.memory_total_mib > 0)
    if s.oom_holds:
        s.oom_holds = allocator.oom_holds_left(s.oom_holds, gpus)
    rooms = allocator.assess(
        gpus,
        s.used(),
        paused=s.paused,
        own_pids=own_pids,
        memory_threshold=s.policy.memory_threshold,
        load_threshold=s.policy.load_threshold,
        oom_holds=s.oom_holds,
    )
    free = {g: room.free for g, room in rooms.items()}
    actions: list[Stop | Suspend | Resume] = []

    for job in s.suspended_jobs():
        run = job.status
        assert isinstance(run, Running)
        if all(g in rooms and rooms[g].usable and free[g] >= run.share_per_gpu for g in run.gpus):
            for g in run.gpus:
                free[g] -= run.share_per_gpu
            actions.append(s.resume_job(job.job_id))
            running_by_tenant[job.spec.tenant] = running_by_tenant.get(job.spec.tenant, 0) + job.share

    _drop_finished_holds(s)
    slots = (
        s.policy.max_concurrent_jobs - len(s.running_ids) + len(s.suspended_jobs())
        if s.policy.max_concurrent_jobs is not None
        else None
    )
    blocked: set[JobClass] = set()
    reserved: tuple[int, ...] = ()
    reserved_for: str | None = None
    preempted_for_now = False
    waiting: dict[str, str] = {}
    placed: list[tuple[Job, allocator.Placement]] = []

    for urgent, held_gpus in s.preempt_holds.items():  # victims still stopping: keep room
        if reserved_for is None:
            reserved, reserved_for = held_gpus, urgent
            waiting[urgent] = f"preempted jobs on GPUs {_gpu_list(held_gpus)} are stopping for it"

    for bucket, pos in _fair_order(s, now, blocked, running_by_tenant):
        if slots is not None and len(placed) >= slots:
            head = bucket.ids[bucket.seqs[pos]]
            cap = s.policy.max_concurrent_jobs
            waiting.setdefault(head, f"max_concurrent_jobs ({cap}) reached; waits for a job to end")
            break
        if (
            reserved_for is not None
            and (preempted_for_now or not s.policy.preemption.enabled)
            and not any(free[g] > 0 for g in free if g not in reserved)
        ):
            break  # the head waits with its GPUs held and every other GPU is full: nothing can start
        job = s.jobs[bucket.ids[bucket.seqs[pos]]]
        tenant = job.spec.tenant
        if not s.fair.cap_allows(tenant, running_by_tenant.get(tenant, 0), job.share):
            blocked.add(bucket.cls)
            cap = s.fair.rule(tenant).max_gpus
            waiting[job.job_id] = f"tenant {tenant} is at its max_gpus ({cap:g})"
            continue
        exclude = () if job.job_id == reserved_for else reserved
        placement = allocator.place(
            job.share, rooms, free, job.spec.allowed_gpus, exclude, best_fit=s.policy.best_fit
        )
        if placement is not None:
            for g in placement.gpus:
                free[g] -= placement.share_per_gpu
            placed.append((job, placement))
            running_by_tenant[tenant] = running_by_tenant.get(tenant, 0) + job.share
            s.preempt_holds.pop(job.job_id, None)
            continue
        blocked.add(bucket.cls)
        never = allocator.never_fits(job.share, s.gpu_indices, job.spec.allowed_gpus,
                                     {g: room.node for g, room in rooms.items()})
        if never:
            waiting[job.job_id] = never
            continue
        if job.job_id == reserved_for:
            continue  # already waiting on its preempted victims
        if not preempted_for_now and job.job_id not in s.preempt_holds:
            preempted = _preempt(s, job, rooms, free, gpus, reserved, now)
            if preempted is not None:
                preempted_for_now = True
                new_actions, target = preempted
                actions.extend(new_actions)
                if any(isinstance(a, Suspend) for a in new_actions):
                    placement = allocator.place(job.share, rooms, free, job.spec.allowed_gpus,
                                                best_fit=s.policy.best_fit)
                    if placement is not None:
                        for g in placement.gpus:
                            free[g] -= placement.share_per_gpu
                        placed.append((job, placement))
                        running_by_tenant[tenant] = running_by_tenant.get(tenant, 0) + job.share
                        continue
                s.preempt_holds[job.job_id] = target
                if reserved_for is None:
                    reserved, reserved_for = target, job.job_id
                waiting[job.job_id] = f"preempting jobs on GPUs {_gpu_list(target)} for it"
                continue
        if s.policy.reservation and reserved_for is None:
            hold = allocator.reserve(job.share, rooms, free, job.spec.allowed_gpus)
            if hold:
                reserved, reserved_for = hold, job.job_id
                waiting[job.job_id] = (
                    f"waiting for share {format_share(job.share)}; GPUs {_gpu_list(hold)} held for it"
                )
                continue
        if len(waiting) < MAX_REASONS:  # status shows the head of the queue; keep passes cheap
            waiting[job.job_id] = s.why_waiting(job, rooms, free, reserved)

    for job_id in sorted(s.held)[:MAX_REASONS]:
        waiting.setdefault(job_id, _dependency_reason(s, job_id))
    launches: tuple[Launch, ...] = tuple(s.start_job(job, p, now) for job, p in placed)
    return PassReport(launches, tuple(actions), reserved_for, reserved, waiting, rooms)


def _fair_order(
    s: Scheduler, now: float, blocked: set[JobClass], running_by_tenant: dict[str, int]
) -> Iterator[tuple[Bucket, int]]:
    """Merge each tenant's queue, always taking next from the tenant furthest below its share."""
    tenants = sorted(s.queue.tenants())
    if len(tenants) == 1:
        yield from s.queue.merged(now, blocked, tenant=tenants[0])
        return
    streams = {t: s.queue.merged(now, blocked, tenant=t) for t in tenants}
    heap = [(s.fair.key(t, running_by_tenant.get(t, 0)), t) for t in tenants]
    heapq.heapify(heap)
    while heap:
        _, tenant = heapq.heappop(heap)
        item = next(streams[tenant], None)
        if item is None:
            continue
        yield item  # the caller updates running_by_tenant when it places the job
        heapq.heappush(heap, (s.fair.key(tenant, running_by_tenant.get(tenant, 0)), tenant))


def _preempt(
    s: Scheduler,
    job: Job,
    rooms: dict[int, allocator.GpuRoom],
    free: dict[int, int],
    gpus: Sequence[GpuSnapshot],
    reserved: Collection[int],
    now: float,
) -> tuple[list[Stop | Suspend | Resume], tuple[int, ...]] | None:
    """Push back the cheapest set of less urgent jobs; None when preemption cannot help."""
    rule = s.policy.preemption
    running = [s.jobs[j] for j in sorted(s.running_ids)]
    running = [j for j in running if isinstance(j.status, Running) and not j.status.suspended]
    plan = plan_preemption(job, running, rooms, free, rule, exclude=reserved)
    if plan is None:
        return None
    detail = f"preempted by {job.spec.label} ({job.job_id})"
    if rule.mode == "suspend" and _memory_fits_both(job, plan.gpus, gpus):
        actions: list[Stop | Suspend | Resume] = []
        for victim in plan.victims:
            run = s.jobs[victim].status
            assert isinstance(run, Running)
            actions.append(s.suspend_job(victim, now, detail))
            for g in run.gpus:
                free[g] += run.share_per_gpu
        return actions, plan.gpus
    stops: list[Stop | Suspend | Resume] = []
    for victim in plan.victims:
        stop = s.request_stop(victim, "preempt", now, detail)
        stops.append(Stop(stop.job_id, stop.reason, rule.grace_s, stop.detail))
    return stops, plan.gpus


def _memory_fits_both(job: Job, target: Sequence[int], gpus: Sequence[GpuSnapshot]) -> bool:
    """A frozen job keeps its GPU memory: suspend only where the newcomer's share still fits."""
    by_index = {g.index: g for g in gpus}
    per = share_per_gpu(job.share)
    for g in target:
        snap = by_index.get(g)
        if snap is None or snap.memory_total_mib <= 0:
            return False
        need = per * snap.memory_total_mib // ONE_GPU
        if snap.memory_used_mib + need > snap.memory_total_mib:
            return False
    return True


def _drop_finished_holds(s: Scheduler) -> None:
    """Forget a preemption hold once no victim is still stopping or the job no longer waits."""
    stopping = any(
        isinstance(s.jobs[j].status, Running) and s.jobs[j].status.stopping == "preempt"  # type: ignore[union-attr]
        for j in s.running_ids
    )
    for urgent in list(s.preempt_holds):
        job = s.jobs.get(urgent)
        if job is None or job.state != "pending" or not stopping:
            del s.preempt_holds[urgent]


def _dependency_reason(s: Scheduler, job_id: str) -> str:
    waiting, _ = s.dependency_state(job_id)
    return f"waiting for {waiting} to complete" if waiting else "waiting for its dependencies"


def _gpu_list(gpus: Sequence[int]) -> str:
    return ",".join(map(str, gpus))
