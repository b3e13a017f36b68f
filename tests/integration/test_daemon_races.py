"""Issue 3, the races: a cancel while the job is still being launched, a stop that kills jobs."""

from __future__ import annotations

import pytest

from gpu_scheduler.adapters.control import send_command
from gpu_scheduler.adapters.screen import ScreenSessions
from gpu_scheduler.core.jobfile import parse_jobs
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness, alive

pytestmark = pytest.mark.slow


def _job_id(daemon: DaemonHarness, line: str) -> str:
    """The id the daemon will give this line (computed as `gpu-scheduler add` does)."""
    text = daemon.jobs_file.read_text() + line + "\n"
    return parse_jobs(text, str(daemon.jobs_file)).specs[-1].job_id


def _runner_pids(daemon: DaemonHarness) -> list[int]:
    return [pid for pid, _ in daemon.recorded_pids()]


def test_cancel_at_once_after_the_line_appears(daemon: DaemonHarness) -> None:
    """Cancel as soon as the daemon knows the job: it is then pending, being launched (no pid
    yet) or just started. Whichever it was, it ends cancelled and leaves no process behind."""
    daemon.start()
    ids = []
    for i in range(3):
        line = daemon.job_line(f"--tag race{i} --child-sleep 60", sleep=60)
        job_id = _job_id(daemon, line)
        ids.append(job_id)
        daemon.append(line)

        def cancelled_it(job_id: str = job_id) -> bool:
            reply = send_command(daemon.paths.control_socket, {"cmd": "cancel", "job": job_id})
            return bool(reply.get("ok"))

        wait_until(cancelled_it, timeout=10, interval=0.001, what="the cancel to be accepted")
    jobs = daemon.wait_jobs(
        lambda js: len(js) == 3 and all(j.state == "cancelled" for j in js.values()) and js,
        timeout=20,
        what="all cancelled",
    )
    assert set(jobs) == set(ids)
    wait_until(
        lambda: not any(alive(p) for p in _runner_pids(daemon)),
        timeout=10,
        what="every runner, job and child to be gone",
    )
    if daemon.mode == "screen":
        wait_until(lambda: not daemon.job_sessions(), timeout=10, what="sessions to end")
    assert daemon.stop() == 0


def test_stop_kill_jobs_ends_running_jobs_and_the_daemon(daemon: DaemonHarness) -> None:
    daemon.start()
    daemon.append(
        daemon.job_line("--tag k1 --child-sleep 60", sleep=60),
        daemon.job_line("--tag k2", sleep=60),
    )
    daemon.wait_tag("k1", "running")
    daemon.wait_tag("k2", "running")
    wait_until(lambda: len(daemon.records()) == 2, what="both jobs to start")
    out = daemon.cli("stop", "--kill-jobs")
    assert out.returncode == 0, out.stderr
    assert daemon.proc is not None and daemon.proc.wait(timeout=10) == 0
    wait_until(
        lambda: not any(alive(p) for p in _runner_pids(daemon)),
        timeout=10,
        what="every job process to be gone",
    )
    jobs = daemon.jobs()
    assert {j.state for j in jobs.values()} == {"cancelled"}, jobs
    if daemon.mode == "screen":
        sessions = ScreenSessions(daemon.screen_dir)
        wait_until(lambda: not sessions.list(), timeout=10, what="the sessions to end")
