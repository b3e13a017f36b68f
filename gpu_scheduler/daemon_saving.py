"""Writing the daemon's state: the launch journal written ahead, and coalesced full saves.

Apart from daemon.py because when and how the state reaches disk is a policy of its own: the
loop says "a change happened" (``_dirty``) and calls ``save_if_due`` once per tick; a full save
is forced only at start and stop, and by a pass that preempts (instead of the journal).

Saves: changes are coalesced into at most one full save per SAVE_INTERVAL_S (longer when saves
are slow: ``save_interval``; a user's command is saved within SAVE_INTERVAL_S); one that falls due
at a launch waits LAUNCH_SAVE_DELAY_S more, so it does not compete with the runners being
started (only the first launch since a save can delay it: a stream cannot starve it). A monitor
tick marks the state dirty only when something it shows changed (the GPU snapshot, an overrun);
otherwise a heartbeat save every ``Daemon._heartbeat_s`` keeps ``heartbeat_at`` (status: "state
fresh") and the rolling metrics current. A failed save or journal write stops launching and says
so loudly until a save works.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gpu_scheduler.adapters.store import SavedState
from gpu_scheduler.core import codec
from gpu_scheduler.core.model import Finished, Launch
from gpu_scheduler.errors import StateFileError
from gpu_scheduler.metrics import tenant_info

if TYPE_CHECKING:
    from gpu_scheduler.daemon import Daemon

log = logging.getLogger("gpu_scheduler.daemon")

SAVE_INTERVAL_S = 0.2  # coalesce bursts of changes into at most ~5 saves a second
HEARTBEAT_S = 10.0  # an unchanged state is saved this often (status calls 30 s stale)
LAUNCH_SAVE_DELAY_S = 0.05  # a full save due at a launch waits this long: runners start first
KEEP_FINISHED = 200  # finished jobs kept in live state for status; older ones go to history


SAVE_SHARE = 0.1  # full saves may take about this share of the daemon's time, at most


def save_interval(daemon: Daemon) -> float:
    """How long changes are coalesced before a full save: SAVE_INTERVAL_S, or longer when a
    save is slow (≈ 0.3 s with 100,000 jobs), so that saving never takes more than about
    SAVE_SHARE of the loop. Nothing is put at risk by the wait: launches are journalled, exits
    are in the runners' records, and a user's command is saved at once (``_urgent``)."""
    return max(SAVE_INTERVAL_S, daemon._save_cost / SAVE_SHARE)


def save_if_due(daemon: Daemon) -> None:
    since = daemon.clock.monotonic() - daemon._last_save
    due = daemon._dirty and (
        since >= save_interval(daemon) or (daemon._urgent and since >= SAVE_INTERVAL_S)
    )
    # An unchanged state is saved as a heartbeat, no more often than changes are (a slow save
    # spaces both), and at least every HEARTBEAT_S (status calls a state stale after 30 s).
    heartbeat = max(daemon._heartbeat_s, min(save_interval(daemon), HEARTBEAT_S))
    if due or since >= heartbeat:
        save_state(daemon)


def write_ahead(daemon: Daemon, launches: tuple[Launch, ...]) -> bool:
    """Journal the pass's launches before any runner starts (see daemon.py's docstring);
    on failure stop launching, as a failed save does. The full save follows, coalesced:
    the first launch written ahead since the last save holds it back to at least
    LAUNCH_SAVE_DELAY_S from now (later ones do not, so a stream cannot starve it)."""
    try:
        daemon.store.append_launches(
            [daemon.scheduler.jobs[launch.job_id] for launch in launches],
            daemon.scheduler.next_seq,
        )
    except StateFileError as exc:
        if not daemon.save_error:
            log.error("CANNOT SAVE STATE, no new jobs will be launched: %s", exc,
                      extra={"event": "state_save_failed"})
        daemon.save_error = str(exc)
        daemon._last_save = daemon.clock.monotonic()  # retry at the save interval
        return False
    if daemon._first_ahead is None:
        daemon._first_ahead = mono = daemon.clock.monotonic()
        wait = save_interval(daemon)
        daemon._last_save = max(daemon._last_save, mono - wait + LAUNCH_SAVE_DELAY_S)
    return True


def save_state(daemon: Daemon, force: bool = False) -> bool:
    """Write the state; on failure stop launching and say so loudly until a save works."""
    started = daemon.clock.monotonic()
    try:
        _archive_old_finished(daemon)
        daemon.store.save(_saved_state(daemon))
    except StateFileError as exc:
        if not daemon.save_error:
            log.error("CANNOT SAVE STATE, no new jobs will be launched: %s", exc,
                      extra={"event": "state_save_failed"})
        daemon.save_error = str(exc)
        daemon._last_save = daemon.clock.monotonic()  # retry at the save interval, not in a spin
        return False
    daemon._save_cost = daemon.clock.monotonic() - started
    if daemon.save_error:
        log.warning("state saved again; launching resumes", extra={"event": "state_saved"})
    daemon.save_error = ""
    daemon._dirty = daemon._urgent = False
    daemon._first_ahead = None
    daemon._last_save = daemon.clock.monotonic()
    return True


def _archive_old_finished(daemon: Daemon) -> None:
    finished = [j for j in daemon.scheduler.jobs.values() if isinstance(j.status, Finished)]
    if len(finished) <= KEEP_FINISHED:
        return
    finished.sort(key=lambda j: j.status.finished_at)  # type: ignore[union-attr]
    old = finished[: len(finished) - KEEP_FINISHED]
    daemon.store.append_history(old)
    for job in old:
        daemon.scheduler.archive(job.job_id)


def _saved_state(daemon: Daemon) -> SavedState:
    now = daemon.clock.now()
    scheduler = daemon.scheduler
    report = scheduler.last_pass
    return SavedState(
        jobs=tuple(scheduler.jobs.values()),
        paused=tuple(sorted(scheduler.paused)),
        next_seq=scheduler.next_seq,
        saved_at=now,
        daemon=daemon.info(now),
        observed={
            "gpus": [codec.gpu_snapshot_to_dict(g) for g in daemon.gpus],
            "used": {str(g): s for g, s in scheduler.used().items()},
            "errors": [codec.line_error_to_dict(e) for e in daemon.errors],
            "waiting": dict(report.waiting),
            "reserved_for": report.reserved_for,
            "reserved_gpus": list(report.reserved_gpus),
            "unusable": {str(g): r.reason for g, r in report.rooms.items() if not r.usable},
            "queue": scheduler.queue_order(now, limit=50),
            "pending": scheduler.pending_count(),
            "archived": len(scheduler.archived),
            "save_error": daemon.save_error,
            "overruns": dict(daemon.overruns),  # job id -> GPU memory beyond its share
            "backlog": len(scheduler.backlog),  # new lines waiting for queue room
            "oom_holds": {str(g): mib for g, mib in scheduler.oom_holds.items()},
            "metrics": daemon.metrics.summary(scheduler),  # GPU samples, history counts
            "tenants": tenant_info(scheduler),  # weight, quota, fair-share usage
        },
    )
