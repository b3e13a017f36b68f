"""Which running jobs to push back so that an urgent job fits: the cheapest set, never more.

Only jobs less urgent than the waiting one by at least ``min_priority_gap`` (a larger priority
number) and pushed back fewer than ``max_preemptions_per_job`` times are candidates. On each GPU
victims are taken in order: lowest priority first, then the most recently started (least work
lost), until the slice fits. The GPUs whose victim sets cost least are chosen (a gang's all on
one node, as it will be placed), and finally any victim whose removal still leaves enough room
is spared, so no job is preempted needlessly.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from gpu_scheduler.core.allocator import GpuRoom
from gpu_scheduler.core.model import Job, Running
from gpu_scheduler.core.units import gpus_needed, share_per_gpu


@dataclass(frozen=True)
class PreemptionRule:
    enabled: bool = False
    mode: str = "requeue"  # or "suspend"
    min_priority_gap: int = 1
    grace_s: float = 30.0
    max_preemptions_per_job: int = 3


@dataclass(frozen=True)
class VictimPlan:
    gpus: tuple[int, ...]  # where the urgent job goes once the victims are out of the way
    victims: tuple[str, ...]  # job ids, in the order they should be pushed back


def _order(job: Job) -> tuple[int, float]:
    run = job.status
    assert isinstance(run, Running)
    return (-job.spec.priority, -run.started_at)


def plan_preemption(
    urgent: Job,
    running: Sequence[Job],
    rooms: Mapping[int, GpuRoom],
    free: Mapping[int, int],
    rule: PreemptionRule,
    exclude: Collection[int] = (),
) -> VictimPlan | None:
    """The victims that make room for ``urgent``, or None when no allowed set exists."""
    if not rule.enabled:
        return None
    k, per = gpus_needed(urgent.share), share_per_gpu(urgent.share)
    allowed = urgent.spec.allowed_gpus
    candidates = sorted(
        (
            j for j in running
            if isinstance(j.status, Running)
            and not j.status.stopping
            and j.spec.priority - urgent.spec.priority >= rule.min_priority_gap
            and j.preemptions < rule.max_preemptions_per_job
        ),
        key=_order,
    )
    options: list[tuple[tuple[int, int, float], int, list[Job]]] = []
    for g, room in rooms.items():
        if not room.usable or room.capacity < per or g in exclude:
            continue
        if allowed is not None and g not in allowed:
            continue
        room_left, chosen = free[g], []
        for victim in candidates:
            if room_left >= per:
                break
            run = victim.status
            assert isinstance(run, Running)
            if g in run.gpus:
                chosen.append(victim)
                room_left += run.share_per_gpu
        if room_left >= per:
            # fewest victims, then the least urgent ones, then the least work lost
            cost = (len(chosen), sum(-v.spec.priority for v in chosen),
                    sum(-v.status.started_at for v in chosen))  # type: ignore[union-attr]
            options.append((cost, g, chosen))
    options.sort(key=lambda o: (o[0], o[1]))
    # A gang stays on one node (allocator.place): the k cheapest GPUs of the cheapest node.
    by_node: dict[str, list[tuple[tuple[int, int, float], int, list[Job]]]] = {}
    for option in options:
        by_node.setdefault(rooms[option[1]].node, []).append(option)
    gangs = [found[:k] for found in by_node.values() if len(found) >= k]
    if not gangs:
        return None
    picked = min(gangs, key=lambda gang: (
        tuple(sum(cost[i] for cost, _, _ in gang) for i in range(3)), [g for _, g, _ in gang]))
    gpus = tuple(sorted(g for _, g, _ in picked))
    victims: list[Job] = []
    for _, _, chosen in picked:
        victims.extend(v for v in chosen if v not in victims)
    victims = _prune(victims, gpus, free, per)
    if not victims:
        return None  # it fits already: nothing to preempt
    return VictimPlan(gpus, tuple(v.job_id for v in victims))


def _prune(victims: list[Job], gpus: tuple[int, ...], free: Mapping[int, int], per: int) -> list[Job]:
    """Spare every victim whose removal still leaves each chosen GPU enough room."""

    def fits(selection: list[Job]) -> bool:
        for g in gpus:
            room = free[g] + sum(
                v.status.share_per_gpu for v in selection  # type: ignore[union-attr]
                if g in v.status.gpus  # type: ignore[union-attr]
            )
            if room < per:
                return False
        return True

    kept = list(victims)
    for victim in sorted(victims, key=_order, reverse=True):  # most valuable first
        trial = [v for v in kept if v is not victim]
        if fits(trial):
            kept = trial
    return kept
