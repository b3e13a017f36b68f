"""Reading what the runners left behind: start and exit records, and the facts for recovery.

After a restart every job the saved state calls running is one of:

* launched (the state has the runner's pid): its exit record decides, else whether that pid is
  alive with the same start time. A runner that is gone without an exit record may have left
  its job running (the job is in the runner's process group; in direct mode nothing sends it a
  hangup): those remains are ended before the job is requeued, so it never runs twice at once.
* being launched when the daemon died (pid unknown): its runner may exist, may still be coming
  up (``screen -dmS`` outlives the daemon that ran it), or may never start. A runner that exists
  or appears within ``LAUNCH_SETTLE_S`` is adopted; otherwise the attempt is *fenced* -- its
  spec file is removed, so a runner that starts after all cannot read it and exits without
  running the job -- and only then is the job requeued. Never both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import psutil

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.launchers import Launcher, runner_argv
from gpu_scheduler.adapters.screen_warm import WARM_NAME
from gpu_scheduler.core.model import Running
from gpu_scheduler.core.recovery import RunFacts
from gpu_scheduler.core.scheduler import Scheduler
from gpu_scheduler.paths import DaemonPaths

log = logging.getLogger("gpu_scheduler.daemon")

LAUNCH_SETTLE_S = 3.0  # how long a restart waits for a launch that was in flight to show a runner
REMAINS_GRACE_S = 5.0  # SIGTERM -> SIGKILL for a job left running by a runner that was killed
_POLL_S = 0.02
_FINAL = ("exited", "launch_failed")


def read_record(path: Path) -> dict[str, Any]:
    """The runner's record for one attempt, or {} when there is none (yet) or it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gather_facts(
    scheduler: Scheduler,
    paths: DaemonPaths,
    launcher: Launcher,
    *,
    settle_s: float = LAUNCH_SETTLE_S,
) -> dict[str, RunFacts]:
    """Look at every job the saved state calls running: record, pid, liveness.

    Launches that were in flight share one ``settle_s`` wait, however many there were.
    """
    deadline = time.monotonic() + settle_s
    facts: dict[str, RunFacts] = {}
    for job_id in sorted(scheduler.running_ids):
        job = scheduler.jobs[job_id]
        run = job.status
        assert isinstance(run, Running)
        record_path = paths.record_path(job_id, job.attempts)
        if run.pid is None:
            facts[job_id] = _in_flight(
                job_id, record_path, paths.spec_path(job_id, job.attempts), launcher, deadline
            )
        else:
            facts[job_id] = _launched(job_id, record_path, run.pid, run.pid_started_at, launcher)
    return facts


def _launched(
    job_id: str, record_path: Path, pid: int, started: float | None, launcher: Launcher
) -> RunFacts:
    alive = launcher.alive(pid, started)
    record = read_record(record_path)  # read after the liveness check: an exit between is seen
    if not alive and record.get("state") not in _FINAL:
        end_remains(job_id, pid, started)
    return _facts(record, pid, started, alive)


def _in_flight(
    job_id: str, record_path: Path, spec_path: Path, launcher: Launcher, deadline: float
) -> RunFacts:
    """A launch the dead daemon had begun: adopt its runner, or fence it and requeue."""
    fenced = False
    seen: dict[int, float] = {}  # processes that named the spec: an exec in between hides it
    while True:
        # Processes first, then the record: a runner that is gone by the time of the look at
        # the processes wrote its record before it exited, so the record read after sees it.
        starting, runner = _launch_processes(spec_path, seen)
        record = read_record(record_path)
        recorded_pid = _int_or_none(record.get("runner_pid"))
        if recorded_pid:
            return _launched(
                job_id,
                record_path,
                recorded_pid,
                _float_or_none(record.get("runner_started_at")),
                launcher,
            )
        if record.get("state") == "launch_failed":
            return _facts(record, None, None, False)
        if runner is not None:  # it exists, so it may have read the spec: it is the job's now
            pid, started = runner
            log.info(
                "job %s: adopting runner pid %d found by its spec (its record lags)",
                job_id,
                pid,
                extra={"event": "recovery", "job_id": job_id},
            )
            return _facts(record, pid, started, processes.is_alive(pid, started))
        if fenced:
            return RunFacts()  # nothing has read the spec, and now nothing can: requeue
        if not starting or time.monotonic() >= deadline:
            _fence(spec_path)  # then look once more: a runner may have read it just before
            fenced = True
            continue
        time.sleep(_POLL_S)  # e.g. screen -dmS is still bringing the session up


def _launch_processes(
    spec_path: Path, seen: dict[int, float]
) -> tuple[bool, tuple[int, float] | None]:
    """(is a process for this attempt's spec still starting, the runner's (pid, create time)).

    The screen client and server name the spec too (their command line holds the runner's), as
    does a window forked but not yet exec'd; only a process with the runner's own command line
    counts as the runner. A warm screen window of this run folder counts as starting too: it
    names no spec, but may hold a request the dead daemon gave it (it writes its ``starting``
    record at once, or exits at once having none). A process seen naming the spec before (``seen``, updated here) counts
    as starting while it lives: its command line reads empty while it execs into the runner.
    """
    needle = str(spec_path)
    shape = runner_argv("", spec_path)[1:]
    warm = str(spec_path.parent / WARM_NAME)  # a warm window of this run folder
    runner: tuple[int, float] | None = None
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = proc.info.get("cmdline") or []
        created = proc.info.get("create_time")
        if created is None or not processes.is_alive(proc.pid, None):
            continue
        if cmdline and cmdline[-1].startswith(warm):  # may be reading a request: wait for it
            seen[proc.pid] = float(created)
            continue
        if needle not in cmdline:
            continue
        seen[proc.pid] = float(created)
        if cmdline[1:] == shape:
            runner = (proc.pid, float(created))
    starting = any(processes.is_alive(pid, created) for pid, created in seen.items())
    return starting, runner


def _fence(spec_path: Path) -> None:
    """Remove an attempt's spec so that a runner starting from now on cannot run the job."""
    try:
        spec_path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning(
            "cannot remove %s (%s): a runner starting late could still run that attempt",
            spec_path,
            exc.strerror,
            extra={"event": "recovery", "path": str(spec_path)},
        )


def end_remains(job_id: str, runner_pid: int, runner_started: float | None) -> None:
    """End what a vanished runner left running of its job, before the job is requeued.

    Only processes of the runner's process group that carry this job's id in their environment,
    and only when the runner started in this boot (after a reboot nothing of it can remain, and
    its pid may name an unrelated group).
    """
    if runner_started is not None and runner_started < psutil.boot_time():
        return
    if processes.is_alive(runner_pid, None):
        return  # that pid belongs to another process now: its group is not the runner's
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) != runner_pid:
                continue
            if proc.environ().get("GPU_SCHEDULER_JOB_ID") != job_id:
                continue
            log.warning(
                "job %s: its runner is gone but pid %d of it still runs; ending it "
                "before the job is requeued",
                job_id,
                proc.pid,
                extra={"event": "recovery", "job_id": job_id},
            )
            processes.terminate_tree(proc.pid, REMAINS_GRACE_S, proc.create_time())
            return  # terminate_tree ends the whole group


def _facts(record: dict[str, Any], pid: int | None, started: float | None, alive: bool) -> RunFacts:
    state = record.get("state")
    exit_code: int | None = None
    if state == "exited":
        try:
            exit_code = int(record["exit_code"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring an exit record without a usable exit code: %s", record)
    return RunFacts(
        exit_code=exit_code,
        launch_error=str(record.get("message", "")) if state == "launch_failed" else None,
        pid=pid,
        pid_started_at=started,
        alive=alive,
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
