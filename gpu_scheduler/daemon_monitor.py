"""The daemon's slow tick: the GPU snapshot, our own processes, and the checks on every
running job (alive? over its host or GPU memory limit?).

Apart from daemon.py because it is one self-contained observation step: the loop decides when
it is due (``monitor_interval_s``, or at once after an OOM or a Ray submission); this looks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import psutil

from gpu_scheduler.adapters import processes
from gpu_scheduler.core.model import Running
from gpu_scheduler.daemon_actions import carry_out_stop
from gpu_scheduler.daemon_events import Event

if TYPE_CHECKING:
    from gpu_scheduler.daemon import Daemon

log = logging.getLogger("gpu_scheduler.daemon")


def _tree_pids(pid: int) -> set[int]:
    """A runner and all its descendants: the processes whose GPU memory is ours."""
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()


def monitor(daemon: Daemon, now: float) -> None:
    """GPU snapshot, our processes, and a check of every running job.

    Marks the state dirty only when what it shows changed (GPU snapshot, overruns; stops
    change jobs, which marks it too): an idle daemon does not rewrite its state every tick.
    The rolling metrics and the heartbeat ride on the next save (``save_if_due``)."""
    daemon._probe_due = False
    shown = (daemon.gpus, daemon.overruns)
    jobs = daemon.scheduler.jobs
    running = [(job_id, jobs[job_id]) for job_id in daemon.scheduler.running_ids]
    try:
        daemon.gpus = daemon.probe.snapshot()
    except Exception as exc:  # a probe must not take the loop down
        log.error("GPU probe failed: %s", exc, extra={"event": "probe_error"})
    pids: set[int] = set()
    trees: dict[str, set[int]] = {}
    if daemon.remote:
        joined = daemon.scheduler.add_gpus(g.index for g in daemon.gpus)
        if joined:  # lines too big for the cluster until now may fit: check them again
            log.info("GPUs %s joined the cluster", joined, extra={"event": "gpu_joined"})
            daemon.source.set_gpus(daemon.scheduler.gpu_indices,
                                   {g.index: g.node for g in daemon.gpus if g.node})
            daemon._read_jobs(include_partial=daemon._jobs_write_age() >= daemon._quiet_s)
    for job_id in daemon.scheduler.running_ids:
        run = daemon.scheduler.jobs[job_id].status
        if not isinstance(run, Running) or run.pid is None or daemon.remote:
            continue
        if not processes.is_alive(run.pid, run.pid_started_at):
            daemon.events.put(Event("exit", job_id, daemon.scheduler.jobs[job_id].attempts))
            continue
        trees[job_id] = _tree_pids(run.pid)
        pids.update(trees[job_id])
    daemon._own_pids = frozenset(pids)
    _enforce_limits(daemon, now, trees)
    daemon.metrics.sample(now, daemon.gpus, daemon.scheduler, daemon.info(now),
                          daemon.scheduler.paused)
    if (daemon.gpus, daemon.overruns) != shown or any(jobs.get(i) is not j for i, j in running):
        daemon._dirty = True  # (a job stopped for its memory is a changed job)


def _enforce_limits(daemon: Daemon, now: float, trees: dict[str, set[int]]) -> None:
    """Host memory limit and GPU memory overrun (see guards): log, and stop if so set."""
    found = daemon.guard.check(daemon.scheduler.jobs, trees, daemon.gpus)
    daemon.overruns = found.overruns
    for job_id, overrun in found.new_overruns.items():
        log.warning("job %s GPU memory overrun: %s", job_id, overrun,
                    extra={"event": "gpu_memory_overrun", "job_id": job_id})
    for job_id, reason in found.stops:
        log.warning("job %s: %s; stopping it", job_id, reason,
                    extra={"event": "limit_exceeded", "job_id": job_id})
        carry_out_stop(daemon, daemon.scheduler.request_stop(job_id, "memory", now, reason))
