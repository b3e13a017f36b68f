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
ceil(s/k) each, all or nothing, and all on one node (a cluster's GPUs carry the node they are
on; this machine's GPUs are all on node ""). Best fit: the GPUs left with the least free share,
which keeps whole GPUs free for big jobs.

On a cluster (``GpuSnapshot.node_used`` set, e.g. Ray's own count of GPUs taken on a node),
work on a node that is not ours (``node_used`` - our shares there) takes capacity from that
node's GPUs, emptiest first, so we never submit more than the cluster says is free.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

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
    node: str = ""  # the cluster node it is on ("" = this machine)

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
    gpus_seen = tuple(gpus)
    for gpu in gpus_seen:
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
            node=gpu.node,
        )
    _take_foreign_node_work(rooms, gpus_seen)
    return rooms


def _take_foreign_node_work(rooms: dict[int, GpuRoom], gpus: Sequence[GpuSnapshot]) -> None:
    """Lower capacities by the work a cluster manager counts on a node that is not ours."""
    foreign: dict[str, int] = {}
    for gpu in gpus:
        if gpu.node_used is not None:
            foreign[gpu.node] = gpu.node_used
    if not foreign:
        return
    for room in rooms.values():
        if room.node in foreign:
            foreign[room.node] -= room.used
    for node, left in foreign.items():
        members = sorted((r for r in rooms.values() if r.node == node and r.usable),
                         key=lambda r: (-r.free, r.index))
        for room in members:
            if left <= 0:
                break
            taken = min(left, room.free)
            left -= taken
            rooms[room.index] = replace(room, capacity=room.capacity - taken)


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
    if k > 1:  # a gang stays on one node: the node whose chosen GPUs fit it best
        gangs = [picked[:k] for picked in _by_node(fits, rooms).values() if len(picked) >= k]
        if not gangs:
            return None
        chosen = min(gangs, key=lambda gs: (sum(free[g] for g in gs) if best_fit else 0, gs))
        return Placement(gpus=tuple(sorted(chosen)), share_per_gpu=per)
    return Placement(gpus=tuple(sorted(fits[:k])), share_per_gpu=per)


def _by_node(ordered: Sequence[int], rooms: Mapping[int, GpuRoom]) -> dict[str, list[int]]:
    """GPUs grouped by node, each group keeping the given order."""
    groups: dict[str, list[int]] = {}
    for g in ordered:
        groups.setdefault(rooms[g].node, []).append(g)
    return groups


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
    if k > 1:
        gangs = [held[:k] for held in _by_node(able, rooms).values() if len(held) >= k]
        if not gangs:
            return None
        return tuple(sorted(max(gangs, key=lambda gs: (sum(free[g] for g in gs), [-g for g in gs]))))
    return tuple(sorted(able[:k]))


def never_fits(
    share: int,
    gpu_indices: Collection[int],
    allowed: Collection[int] | None,
    nodes: Mapping[int, str] | None = None,
) -> str:
    """Why a share can never be placed on this machine (or any one node), or "" when it can."""
    k = gpus_needed(share)
    pool = [g for g in gpu_indices if allowed is None or g in allowed]
    per_node: dict[str, int] = {}
    for g in pool:
        node = (nodes or {}).get(g, "")
        per_node[node] = per_node.get(node, 0) + 1
    most = max(per_node.values(), default=0)
    if k <= most:
        return ""
    if len(per_node) > 1:
        return f"needs {k} GPUs on one node but the largest node has {most}" + (
            " allowed" if allowed is not None else "")
    where = "allowed" if allowed is not None else "on this machine"
    return f"needs {k} GPUs but only {len(pool)} {'is' if len(pool) == 1 else 'are'} {where}"
