"""Reading what the runners left behind: start and exit records, and the facts for recovery."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import psutil

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.launchers import Launcher
from gpu_scheduler.core.model import Running
from gpu_scheduler.core.recovery import RunFacts
from gpu_scheduler.core.scheduler import Scheduler
from gpu_scheduler.paths import DaemonPaths

log = logging.getLogger("gpu_scheduler.daemon")

LAUNCH_SETTLE_S = 3.0  # how long a restart waits for a runner that was mid-launch to report


def read_record(path: Path) -> dict[str, Any]:
    """The runner's record for one attempt, or {} when there is none (yet) or it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _runner_exists(spec_path: Path, session: str, launcher: Launcher) -> bool:
    """Was a runner for this attempt started before the daemon died (its record may lag)?"""
    if session in launcher.live_sessions():
        return True
    needle = str(spec_path)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if needle in cmdline:
            return True
    return False


def gather_facts(scheduler: Scheduler, paths: DaemonPaths, launcher: Launcher) -> dict[str, RunFacts]:
    """Look at every job the saved state calls running: record, pid, liveness."""
    facts: dict[str, RunFacts] = {}
    for job_id in sorted(scheduler.running_ids):
        job = scheduler.jobs[job_id]
        run = job.status
        assert isinstance(run, Running)
        record_path = paths.record_path(job_id, job.attempts)
        record = read_record(record_path)
        if not record and run.pid is None and _runner_exists(
            paths.spec_path(job_id, job.attempts), run.session, launcher
        ):
            deadline = time.monotonic() + LAUNCH_SETTLE_S
            while not record and time.monotonic() < deadline:
                time.sleep(0.02)
                record = read_record(record_path)
        pid = run.pid if run.pid is not None else record.get("runner_pid")
        started = run.pid_started_at if run.pid_started_at is not None else record.get(
            "runner_started_at")
        alive = bool(pid) and processes.is_alive(int(pid), started)
        if not alive:
            record = read_record(record_path) or record  # it may have exited a moment ago
        state = record.get("state")
        facts[job_id] = RunFacts(
            exit_code=int(record["exit_code"]) if state == "exited" else None,
            launch_error=str(record.get("message")) if state == "launch_failed" else None,
            pid=int(pid) if pid else None,
            pid_started_at=float(started) if started is not None else None,
            alive=alive,
        )
    return facts
