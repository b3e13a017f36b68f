"""The discrete-event loop: the core Scheduler's own decisions, replayed on a virtual clock.

Events are arrivals (at a job's submit time) and completions (at its start + duration). At each
event time, in this order: every arrival is fed to the scheduler (``Scheduler.add``, in trace
order: submit time, then row), every completion is reported (``Scheduler.exited(id, 0, now)``,
in (time, trace position) order), then one scheduling pass runs (``Scheduler.schedule``) over
simulated GPUs that are all healthy and carry no foreign work. Each ``Launch`` of the pass
starts its job now and puts its completion on the heap. Nothing here reads a clock or draws a
random number, so a trace and a policy always give the same run.

A job the machine can never hold (more GPUs than it has) is set aside as a located error before
the run (``unplaceable``); the core would keep it pending forever.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpu_scheduler.core.allocator import never_fits
from gpu_scheduler.core.model import GpuSnapshot, LineError
from gpu_scheduler.core.scheduler import Scheduler
from gpu_scheduler.errors import GpuSchedulerError
from gpu_scheduler.simulate.policies import SimPolicy
from gpu_scheduler.simulate.trace import TraceJob


@dataclass
class Run:
    """One policy's run. Per job (in trace order): start and finish times, held share.

    The series hold the state right after each pass, one entry per event time: the number of
    jobs pending and running, the requested share in use (what the running jobs asked for) and
    the held share (what the scheduler set aside for them: more than asked under whole GPUs).
    Shares are milli-GPU.
    """

    policy: SimPolicy
    jobs: Sequence[TraceJob]
    gpu_count: int
    start_s: list[float] = field(default_factory=list)
    finish_s: list[float] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # total milli-GPU held while running
    times: list[float] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    used_share: list[int] = field(default_factory=list)
    held_share: list[int] = field(default_factory=list)
    passes: int = 0


class SimulationStuck(GpuSchedulerError):
    """Jobs are still pending with nothing left to happen (a job no GPU set can ever hold)."""


def simulated_gpus(count: int, memory_mib: int) -> tuple[GpuSnapshot, ...]:
    """Healthy, idle GPUs with no foreign processes: their whole capacity is the scheduler's."""
    return tuple(
        GpuSnapshot(index=i, name="simulated", memory_total_mib=memory_mib, memory_used_mib=0)
        for i in range(count)
    )


def unplaceable(jobs: Sequence[TraceJob], gpu_count: int) -> tuple[list[TraceJob], list[LineError]]:
    """Split off jobs that need more GPUs than the machine (or their allowed GPUs) has."""
    indices = range(gpu_count)
    kept: list[TraceJob] = []
    errors: list[LineError] = []
    for job in jobs:
        reason = never_fits(job.share, indices, job.spec.allowed_gpus)
        if reason:
            errors.append(
                LineError(job.spec.source, job.row, job.spec.text, f"the job {reason}",
                          f"a share of at most {gpu_count} GPUs (or give --gpus)")
            )  # fmt: skip
        else:
            kept.append(job)
    return kept, errors


def run(jobs: Sequence[TraceJob], sim: SimPolicy, gpu_count: int, memory_mib: int = 81920) -> Run:
    """Replay ``jobs`` under ``sim`` on ``gpu_count`` simulated GPUs; returns the whole run.

    Precondition: every job fits the machine (see ``unplaceable``); otherwise SimulationStuck.
    """
    scheduler = Scheduler(sim.policy, range(gpu_count))
    gpus = simulated_gpus(gpu_count, memory_mib)
    n = len(jobs)
    out = Run(sim, jobs, gpu_count, [0.0] * n, [0.0] * n, [0] * n)
    position = {job.spec.job_id: i for i, job in enumerate(jobs)}
    arrivals = sorted(range(n), key=lambda i: (jobs[i].submit_s, i))
    completions: list[tuple[float, int]] = []  # (finish time, trace position)
    next_arrival = 0
    running = used = held = 0
    while next_arrival < n or completions:
        now = jobs[arrivals[next_arrival]].submit_s if next_arrival < n else completions[0][0]
        if completions and completions[0][0] < now:
            now = completions[0][0]
        while next_arrival < n and jobs[arrivals[next_arrival]].submit_s == now:
            job = jobs[arrivals[next_arrival]]
            scheduler.add(job.spec, sim.share_for(job.share), now)
            next_arrival += 1
        while completions and completions[0][0] == now:
            _, i = heapq.heappop(completions)
            scheduler.exited(jobs[i].spec.job_id, 0, now)
            running -= 1
            used -= jobs[i].share
            held -= out.held[i]
        decided = scheduler.schedule(gpus, now)
        out.passes += 1
        for launch in decided.launches:
            i = position[launch.job_id]
            out.start_s[i] = now
            out.finish_s[i] = now + jobs[i].duration_s
            out.held[i] = launch.share_per_gpu * len(launch.gpus)
            heapq.heappush(completions, (out.finish_s[i], i))
            running += 1
            used += jobs[i].share
            held += out.held[i]
        out.times.append(now)
        out.pending.append(scheduler.pending_count())
        out.running.append(running)
        out.used_share.append(used)
        out.held_share.append(held)
    left = scheduler.pending_count()
    if left:
        waiting = ", ".join(sorted(scheduler.last_pass.waiting.values())[:3])
        raise SimulationStuck(
            f"{sim.name}: {left} job(s) still pending with nothing left to happen ({waiting})"
        )
    return out
