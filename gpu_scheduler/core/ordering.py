"""Queue order: priority (lower first), then arrival; aging lifts jobs that wait long.

Effective priority = priority - floor(wait / aging_interval_s), so a waiting job overtakes newer,
more urgent ones eventually and no job waits forever.

Pending jobs are kept in buckets by (placement class, priority). A class is everything that decides
where a job can go (tenant, share, allowed GPUs): if the first job of a class does not fit, no
later job of that class fits either. Within a bucket jobs are in arrival order (``seq``), which is
also age order, so a bucket's head is its most urgent job. A scheduling pass merges bucket heads
with a small heap, so its cost grows with the number of buckets and placements, not with the
number of pending jobs.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from gpu_scheduler.core.model import Job, Pending

JobClass = tuple[str, int, "tuple[int, ...] | None"]  # tenant, share, allowed GPUs


def job_class(job: Job) -> JobClass:
    return (job.spec.tenant, job.share, job.spec.allowed_gpus)


def effective_priority(
    priority: int, enqueued_at: float, now: float, aging_interval_s: float
) -> int:
    if aging_interval_s <= 0 or now <= enqueued_at:
        return priority
    return priority - math.floor((now - enqueued_at) / aging_interval_s)


@dataclass
class Bucket:
    cls: JobClass
    priority: int
    seqs: list[int] = field(default_factory=list)  # sorted; the live entries are seqs[start:]
    ids: dict[int, str] = field(default_factory=dict)  # seq -> job id
    start: int = 0  # jobs taken from the head are skipped, then dropped in bulk: O(1) each


class PendingQueue:
    """The pending jobs that are eligible now, in scheduling order."""

    def __init__(self, aging_interval_s: float = 0.0) -> None:
        self.aging_interval_s = aging_interval_s
        self._buckets: dict[tuple[JobClass, int], Bucket] = {}
        self._where: dict[
            str, tuple[tuple[JobClass, int], int, float]
        ] = {}  # id -> key, seq, enqueued

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def add(self, job: Job) -> None:
        if not isinstance(job.status, Pending):
            raise ValueError(f"job {job.job_id} is {job.state}, not pending")
        self.remove(job.job_id)
        key = (job_class(job), job.spec.priority)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(cls=key[0], priority=key[1])
        if not bucket.seqs or job.seq > bucket.seqs[-1]:
            bucket.seqs.append(job.seq)
        else:
            insort(bucket.seqs, job.seq, bucket.start)
        bucket.ids[job.seq] = job.job_id
        self._where[job.job_id] = (key, job.seq, job.status.enqueued_at)

    def remove(self, job_id: str) -> bool:
        where = self._where.pop(job_id, None)
        if where is None:
            return False
        key, seq, _ = where
        bucket = self._buckets[key]
        if bucket.seqs[bucket.start] == seq:  # a placement takes the head: no list shift
            bucket.start += 1
            if 2 * bucket.start > len(bucket.seqs):
                del bucket.seqs[: bucket.start]
                bucket.start = 0
        else:
            del bucket.seqs[bisect_left(bucket.seqs, seq, bucket.start)]
        del bucket.ids[seq]
        if bucket.start == len(bucket.seqs):
            del self._buckets[key]
        return True

    def enqueued_at(self, job_id: str) -> float:
        return self._where[job_id][2]

    def buckets(self) -> list[Bucket]:
        return list(self._buckets.values())

    def head_key(self, bucket: Bucket, position: int, now: float) -> tuple[int, int]:
        """Sort key (effective priority, seq) of the bucket's job at ``position`` in ``seqs``."""
        job_id = bucket.ids[bucket.seqs[position]]
        enqueued = self._where[job_id][2]
        return (
            effective_priority(bucket.priority, enqueued, now, self.aging_interval_s),
            bucket.seqs[position],
        )

    def tenants(self) -> set[str]:
        """Tenants that have eligible pending jobs."""
        return {key[0][0] for key in self._buckets}

    def merged(
        self, now: float, skip: Collection[JobClass] = (), tenant: str | None = None
    ) -> Iterator[tuple[Bucket, int]]:
        """(bucket, position) pairs in scheduling order; callers may stop early.

        ``skip`` is read as the merge goes: a caller that adds a class to it (its job did not
        fit) is shown no more jobs of that class. ``tenant`` limits the merge to one tenant.
        """
        heap: list[tuple[tuple[int, int], int, int]] = []
        buckets = [b for b in self.buckets() if tenant is None or b.cls[0] == tenant]
        for n, bucket in enumerate(buckets):
            heap.append((self.head_key(bucket, bucket.start, now), n, bucket.start))
        heapq.heapify(heap)
        while heap:
            _, n, pos = heapq.heappop(heap)
            bucket = buckets[n]
            if bucket.cls in skip:
                continue
            yield bucket, pos
            if pos + 1 < len(bucket.seqs):
                heapq.heappush(heap, (self.head_key(bucket, pos + 1, now), n, pos + 1))

    def ordered_ids(self, now: float, limit: int | None = None) -> list[str]:
        """Job ids in scheduling order (for status: 'next few jobs')."""
        out: list[str] = []
        for bucket, pos in self.merged(now):
            out.append(bucket.ids[bucket.seqs[pos]])
            if limit is not None and len(out) >= limit:
                break
        return out
