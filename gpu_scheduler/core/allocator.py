"""Fractional GPU placement: which GPUs a share may go to, and which ones it should.

Admission is from the scheduler's own record of assigned shares, never from sampled free memory
alone (a job that has just launched has not allocated its memory yet). The probe only takes
capacity away: memory held by processes we did not start, and GPUs busy with foreign work.

The exact rule, per GPU g, given our jobs' shares ``used[g]`` (milli-GPU):

* g is unusable (gets nothing new) when it is paused, unhealthy, a job died of CUDA
  out-of-memory on it and its free memory has not yet come back to what that job needed (an
  *OOM hold*, see ``oom_holds_left``), its foreign memory is more than ``memory_threshold`` of
  its total, or its utilisation is above ``load_threshold`` while none of our jobs runs on it;
* otherwise ``capacity[g] = 1000 - ceil(1000 * foreign_mib / total_mib)`` and
  ``free[g] = capacity[g] - used[g]``;
* foreign memory = used memory - memory of our own job processes (per-process data from the
  probe); when the probe cannot list processes, our jobs are assumed to use their full share.

A share s <= 1000 goes to one GPU with free >= s; s > 1000 takes k = ceil(s/1000) GPUs with
ceil(s/k) each, all or nothing. Best fit: the GPUs left with the least free share, which keeps
whole GPUs free for big jobs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from gpu_scheduler.core.model import GpuSnapshot, Placement
from gpu_scheduler.core.units import ONE_GPU, gpus_needed, share_per_gpu


@dataclass(frozen=True)
class GpuRoom:
    """What one GPU offers to new work in this pass."""

    index: int
    capacity: int  # milli-GPU usable by our jobs in total (0 when unusable)
    used: int  # milli-GPU held by our running jobs
    usable: bool = True
    reason: str = ""  # why unusable, for status and logs

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used) if self.usable else 0


def foreign_memory_mib(gpu: GpuSnapshot, own_pids: Collection[int], used_share: int) -> int:
    """Memory on this GPU held by processes the scheduler did not start."""
    if gpu.memory_total_mib <= 0:
        return 0
    if gpu.processes is not None:
        own = sum(p.used_mib for p in gpu.processes if p.pid in own_pids)
        return max(0, gpu.memory_used_mib - own)
    assumed_own = used_share * gpu.memory_total_mib // ONE_GPU
    return max(0, gpu.memory_used_mib - assumed_own)


def free_memory_mib(gpu: GpuSnapshot) -> int:
    """Memory the probe reports free on this GPU (total - used, never below 0)."""
    return max(0, gpu.memory_total_mib - gpu.memory_used_mib)


def oom_need_mib(share_per_gpu: int, total_mib: int) -> int:
    """The free memory a job of this share needs on a GPU of this size (its share of it)."""
    return -(-share_per_gpu * total_mib // ONE_GPU)


def oom_holds_left(holds: Mapping[int, int], gpus: Iterable[GpuSnapshot]) -> dict[int, int]:
    """The OOM holds still in force: a hold ends once a healthy snapshot of its GPU shows at
    least the held MiB free; a GPU missing from the snapshot keeps its hold."""
    by_index = {g.index: g for g in gpus}
    left = {}
    for index, need in holds.items():
        gpu = by_index.get(index)
        if gpu is None or not gpu.healthy or free_memory_mib(gpu) < need:
            left[index] = need
    return left


def assess(
    gpus: Iterable[GpuSnapshot],
    used: Mapping[int, int],
    *,
    paused: Collection[int] = (),
    own_pids: Collection[int] = (),
    memory_threshold: float = 0.9,
    load_threshold: float = 0.9,
    oom_holds: Mapping[int, int] | None = None,
) -> dict[int, GpuRoom]:
    """Turn one probe snapshot plus our own allocations into the room each GPU offers.

    ``oom_holds``: GPU -> MiB that must be free before it takes new work (a job died of CUDA
    out-of-memory there); the caller drops the holds that are met (``oom_holds_left``)."""
    rooms: dict[int, GpuRoom] = {}
    holds = oom_holds or {}
    for gpu in gpus:
        ours = used.get(gpu.index, 0)
        reason = ""
        capacity = ONE_GPU
        if gpu.index in paused:
            reason = "paused"
        elif not gpu.healthy:
            reason = f"unhealthy: {gpu.error}" if gpu.error else "unhealthy"
        elif gpu.index in holds:
            reason = (
                f"CUDA OOM here; waiting for {holds[gpu.index]} MiB to be free "
                f"({free_memory_mib(gpu)} MiB free now)"
            )
        elif gpu.memory_total_mib > 0:
            foreign = foreign_memory_mib(gpu, own_pids, ours)
            fraction = foreign / gpu.memory_total_mib
            capacity = ONE_GPU - math.ceil(ONE_GPU * foreign / gpu.memory_total_mib)
            if fraction > memory_threshold:
                reason = (
                    f"foreign processes use {fraction:.0%} of its memory "
                    f"(more than memory_threshold {memory_threshold:.0%})"
                )
        if (
            not reason
            and ours == 0
            and gpu.utilization_pct is not None
            and gpu.utilization_pct > load_threshold * 100
        ):
            reason = (
                f"busy with foreign work ({gpu.utilization_pct:.0f}% utilisation, "
                f"load_threshold {load_threshold:.0%})"
            )
        rooms[gpu.index] = GpuRoom(
            index=gpu.index,
            capacity=0 if reason else max(0, capacity),
            used=ours,
            usable=not reason,
            reason=reason,
        )
    return rooms


def candidates(
    share: int,
    rooms: Mapping[int, GpuRoom],
    free: Mapping[int, int],
    allowed: Collection[int] | None,
    exclude: Collection[int] = (),
) -> list[int]:
    """GPUs that could take one slice of this share right now."""
    per = share_per_gpu(share)
    return [
        g
        for g, room in rooms.items()
        if room.usable and (allowed is None or g in allowed) and g not in exclude and free[g] >= per
    ]


def place(
    share: int,
    rooms: Mapping[int, GpuRoom],
    free: Mapping[int, int],
    allowed: Collection[int] | None = None,
    exclude: Collection[int] = (),
    *,
    best_fit: bool = True,
) -> Placement | None:
    """All GPUs of a gang or none. ``free`` is the pass's running view of free share per GPU."""
    k = gpus_needed(share)
    per = share_per_gpu(share)
    fits = candidates(share, rooms, free, allowed, exclude)
    if len(fits) < k:
        return None
    if best_fit:
        fits.sort(key=lambda g: (free[g] - per, g))
    else:
        fits.sort()
    return Placement(gpus=tuple(sorted(fits[:k])), share_per_gpu=per)


def reserve(
    share: int,
    rooms: Mapping[int, GpuRoom],
    free: Mapping[int, int],
    allowed: Collection[int] | None = None,
    exclude: Collection[int] = (),
) -> tuple[int, ...] | None:
    """The GPUs to hold back for a blocked job: those closest to fitting it.

    Only GPUs whose capacity could ever hold the slice count; None when the job cannot fit
    this machine at all right now (then holding GPUs back would only waste them).
    """
    k = gpus_needed(share)
    per = share_per_gpu(share)
    able = [
        g
        for g, room in rooms.items()
        if room.usable
        and room.capacity >= per
        and (allowed is None or g in allowed)
        and g not in exclude
    ]
    if len(able) < k:
        return None
    able.sort(key=lambda g: (-free[g], g))
    return tuple(sorted(able[:k]))


def never_fits(share: int, gpu_indices: Collection[int], allowed: Collection[int] | None) -> str:
    """Why a share can never be placed on this machine, or "" when it can."""
    k = gpus_needed(share)
    pool = [g for g in gpu_indices if allowed is None or g in allowed]
    if k <= len(pool):
        return ""
    where = "allowed" if allowed is not None else "on this machine"
    return f"needs {k} GPUs but only {len(pool)} {'is' if len(pool) == 1 else 'are'} {where}"
