"""What a scheduling pass tells the outside: its decisions, and why the rest of the queue waits.

Kept apart from the pass itself (``planner``) because the status, the daemon and the tests read
the report without running a pass, and the waiting reasons are wording, not scheduling rules.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from gpu_scheduler.core import allocator
from gpu_scheduler.core.model import Job, Launch, Notice, Resume, Stop, Suspend
from gpu_scheduler.core.units import format_share


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


def why_waiting(
    job: Job,
    rooms: dict[int, allocator.GpuRoom],
    free: dict[int, int],
    reserved: Collection[int],
) -> str:
    """The state of each GPU the job may use (the first eight), as the status shows it."""
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
