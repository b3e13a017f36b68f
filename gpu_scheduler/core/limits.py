"""Queue and memory limits in the core: the backlog beyond ``queue_size_limit`` and CUDA OOM holds.

Pure like the rest of the core: the scheduler calls these with what it knows; nothing here reads
a file, a clock or a process.

* **Backlog**: with ``Policy.queue_size_limit`` set, ``Scheduler.sync`` enqueues new lines only
  while fewer jobs are queued (waiting for GPUs or a retry time) and keeps the rest, in file
  order, in ``Scheduler.backlog``. ``admit_backlog`` moves them into the queue as it drains (at
  every sync and pass) and says once, until the backlog is empty again, that the queue is full.
  No line is dropped: the jobs file still holds them all, and the backlog is rebuilt from it.
* **OOM holds**: a job that died of CUDA out-of-memory leaves a hold on each of its GPUs: the
  free MiB it needed there (its share of the GPU's memory). The GPU takes no new work until a
  snapshot shows that much free (``allocator.oom_holds_left``, checked at every pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gpu_scheduler.core.allocator import oom_need_mib
from gpu_scheduler.core.model import Notice, Running

if TYPE_CHECKING:
    from gpu_scheduler.core.scheduler import Scheduler


def admit_backlog(s: Scheduler, now: float) -> list[Notice]:
    """Take backlog lines into the queue, first line first, while it is under its limit."""
    limit = s.policy.queue_size_limit
    notices: list[Notice] = []
    taken = 0
    while taken < len(s.backlog) and (limit is None or s.queued_count() < limit):
        spec, share, deps = s.backlog[taken]
        taken += 1
        notices.extend(s.add(spec, share, now, deps))
    del s.backlog[:taken]
    if not s.backlog:
        s.backlog_noticed = False
    elif not s.backlog_noticed:
        s.backlog_noticed = True
        waiting = len(s.backlog)
        lines = "line waits" if waiting == 1 else "lines wait"
        notices.append(
            Notice(
                "queue_full",
                "",
                f"queue full (limit {limit}): {waiting} {lines} in the jobs file",
                {"limit": limit, "waiting": waiting},
            )
        )
    return notices


def with_oom_holds(
    holds: Mapping[int, int], run: Running, totals: Mapping[int, int]
) -> dict[int, int]:
    """``holds`` plus the OOM job's: per GPU of ``run``, its share of that GPU's memory
    (``totals``: MiB per GPU as last seen; a GPU of unknown size gets no hold)."""
    out = dict(holds)
    for g in run.gpus:
        total = totals.get(g, 0)
        if total > 0:
            out[g] = max(out.get(g, 0), oom_need_mib(run.share_per_gpu, total))
    return out


def oom_requeue_reason(run: Running, exit_code: int, count: int, limit: int) -> str:
    gpus = ",".join(map(str, run.gpus))
    return f"CUDA out of memory on GPU {gpus} (exit {exit_code}); requeued ({count} of {limit})"
