"""State that survives anything: the real daemon killed (-9) or stopped, its jobs' fates.

The promise: whatever dies, no job is lost and no job runs twice. A job that exits while the
daemon is down is recorded with its true exit code; a running job is adopted (same pid, its
timeout still enforced); only a job whose process vanished runs again, and the log says why.
Graceful stops leave jobs running for the next start to adopt; ``stop --kill-jobs`` ends them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from gpu_scheduler.core.model import Failed, Finished, Job, Running, TimedOut
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness, alive

pytestmark = pytest.mark.slow


def _events(d: DaemonHarness, event: str, job_id: str | None = None) -> list[dict[str, Any]]:
    """The scheduler.log entries (JSON lines) with this event (and job)."""
    path = d.root / "scheduler.log"
    found = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event and job_id in (None, entry.get("job_id")):
            found.append(entry)
    return found


def _tagged(d: DaemonHarness, tag: str) -> Job | None:
    hits = [j for j in d.jobs().values() if tag in j.spec.args]
    return hits[0] if hits else None


def _runs(d: DaemonHarness, tag: str) -> list[dict[str, Any]]:
    """One entry per time the job tagged ``tag`` started (written by the job process itself)."""
    return [r for r in d.records() if tag in r["rest"]]


def _wait_started(d: DaemonHarness, *tags: str) -> dict[str, Job]:
    """Each tagged job running with its runner's pid saved and its job process started."""

    def ready() -> dict[str, Job] | None:
        jobs = {tag: _tagged(d, tag) for tag in tags}
        for tag, job in jobs.items():
            if job is None or not isinstance(job.status, Running) or job.status.pid is None:
                return None
            if not _runs(d, tag):
                return None
        return jobs  # type: ignore[return-value]

    return wait_until(ready, timeout=20, interval=0.05, what=f"{tags} running")


def _wait_state(d: DaemonHarness, tag: str, state: str, timeout: float = 20) -> Job:
    return wait_until(
        lambda: (job := _tagged(d, tag)) is not None and job.state == state and job,
        timeout=timeout,
        interval=0.05,
        what=f"{tag} {state}",
    )


def _runner_record(d: DaemonHarness, job: Job) -> dict[str, Any]:
    return json.loads(d.paths.record_path(job.job_id, job.attempts).read_text())


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not alive(pid)


# ----------------------------------------------------------------------------- kill -9


def test_kill9_job_exiting_while_down_keeps_its_code_and_vanished_job_runs_again(
    daemon: DaemonHarness,
) -> None:
    """Two jobs running when the daemon is killed: one exits 7 while it is down, the other's
    runner and job are killed (as a reboot would). After the restart the first is failed with
    exit code 7 and not run again; the second is requeued -- the log says why -- and re-run."""
    d = daemon
    flag = d.root / "release"
    d.start()
    d.append(
        d.job_line("--tag exits", sleep=1, exit_code=7),
        d.job_line(f"--tag vanishes --until-file {flag}", sleep=60),
    )
    jobs = _wait_started(d, "exits", "vanishes")
    d.kill9()
    vanishing = wait_until(
        lambda: (
            _runner_record(d, jobs["vanishes"]).get("job_pid")
            and _runner_record(d, jobs["vanishes"])
        ),
        what="the start record",
    )
    for pid in (vanishing["runner_pid"], vanishing["job_pid"]):
        os.kill(pid, signal.SIGKILL)
    exiting_pid = _runs(d, "exits")[0]["pid"]
    for pid in (vanishing["runner_pid"], vanishing["job_pid"], exiting_pid):
        wait_until(_gone(pid), timeout=10, what=f"pid {pid} to end")
    flag.touch()  # the second run of "vanishes" ends at once
    d.start()

    exits = _wait_state(d, "exits", "failed")
    assert isinstance(exits.status, Finished) and exits.status.outcome == Failed(7)
    assert exits.last_exit_code == 7 and exits.attempts == 1 and exits.requeues == 0
    [failed] = _events(d, "failed", exits.job_id)
    assert "exit 7 (exited while the daemon was down)" in failed["message"]

    vanishes = _wait_state(d, "vanishes", "completed")
    assert vanishes.requeues == 1 and vanishes.attempts == 2
    [requeued] = _events(d, "requeued", vanishes.job_id)
    assert "vanished while the daemon was down" in requeued["message"]

    assert len(_runs(d, "exits")) == 1, "a job that exited while the daemon was down ran again"
    assert [r["attempt"] for r in _runs(d, "vanishes")] == ["1", "2"]
    assert d.stop() == 0
    assert "Traceback" not in d.daemon_output()


def test_kill9_running_job_is_adopted_and_its_timeout_still_enforced(daemon: DaemonHarness) -> None:
    """Jobs running across a kill -9 and a restart are adopted (same runner pid, not started
    again): one with timeout=3s is stopped by the restarted daemon, measured from its original
    start; the other completes normally."""
    d = daemon
    d.start()
    d.append(
        d.job_line("--tag limited", sleep=60, options="timeout=3s"),
        d.job_line("--tag normal", sleep=3.5),
    )
    before = _wait_started(d, "limited", "normal")
    d.kill9()
    time.sleep(1.0)  # the daemon stays down for about a second (the scenario, not a wait)
    d.start()

    limited = _wait_state(d, "limited", "failed", timeout=20)
    assert isinstance(limited.status, Finished)
    assert isinstance(limited.status.outcome, TimedOut)
    assert limited.status.outcome.timeout_s == 3
    assert limited.status.started_at == before["limited"].status.started_at  # not re-based
    wait_until(_gone(_runs(d, "limited")[0]["pid"]), timeout=10, what="the timed-out job to end")

    normal = _wait_state(d, "normal", "completed", timeout=20)
    assert normal.attempts == 1 and normal.last_exit_code == 0
    for tag, job in before.items():
        assert len(_runs(d, tag)) == 1, f"{tag} was started again"
        [adopted] = _events(d, "adopted", job.job_id)
        assert f"pid {job.status.pid}" in adopted["message"]  # type: ignore[union-attr]
    assert len(_events(d, "launched", before["limited"].job_id)) == 1
    assert d.stop() == 0


# ----------------------------------------------------------------------------- graceful stops


def test_graceful_stops_leave_jobs_running_for_the_next_start_and_kill_jobs_ends_them(
    daemon: DaemonHarness,
) -> None:
    d = daemon
    flag = d.root / "release"
    d.start()
    d.append(d.job_line(f"--tag long --until-file {flag}", sleep=60))
    job = _wait_started(d, "long")["long"]
    job_pid = _runs(d, "long")[0]["pid"]
    runner_pid = job.status.pid  # type: ignore[union-attr]

    assert d.stop() == 0  # SIGTERM
    assert alive(job_pid) and alive(runner_pid), "a graceful stop ended the job"
    assert _tagged(d, "long").state == "running"  # type: ignore[union-attr]
    d.start()
    wait_until(lambda: len(_events(d, "adopted", job.job_id)) == 1, what="adoption")

    stop = d.cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert "running jobs keep running" in stop.stdout
    assert d.proc is not None and d.proc.wait(timeout=20) == 0
    assert alive(job_pid) and alive(runner_pid), "`gpu-scheduler stop` ended the job"
    d.start()
    wait_until(lambda: len(_events(d, "adopted", job.job_id)) == 2, what="second adoption")
    adopted = _tagged(d, "long")
    assert adopted is not None and adopted.status.pid == runner_pid  # type: ignore[union-attr]

    stop = d.cli("stop", "--kill-jobs")
    assert stop.returncode == 0, stop.stderr
    assert d.proc.wait(timeout=20) == 0
    wait_until(_gone(job_pid), timeout=10, what="the job process to end")
    assert not alive(runner_pid)
    cancelled = _tagged(d, "long")
    assert cancelled is not None and cancelled.state == "cancelled"
    assert len(_runs(d, "long")) == 1
    assert "Traceback" not in d.daemon_output()


# ----------------------------------------------------------------------------- the queue


def test_pending_jobs_keep_their_place_in_the_queue_across_a_crash(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    """One GPU held by a blocker; three jobs wait: c (priority 2) arrives first, then a
    (priority 2, but written ABOVE c in jobs.txt), then b (priority 1). After a kill -9 and a
    restart they run b, c, a: priority first, then arrival -- not the file's line order."""
    d = make_daemon("screen", gpus=1)
    flag = d.root / "release"
    d.start()
    blocker = d.job_line(f"--tag blocker --until-file {flag}", sleep=60)
    d.append(blocker)
    _wait_started(d, "blocker")
    line_c = d.job_line("--tag c", priority=2)
    d.append(line_c)
    _wait_state(d, "c", "pending")
    line_a = d.job_line("--tag a", priority=2)
    d.jobs_file.write_text("\n".join([line_a, blocker, line_c]) + "\n")  # a above c
    _wait_state(d, "a", "pending")
    d.append(d.job_line("--tag b", priority=1))
    _wait_state(d, "b", "pending")
    d.kill9()
    d.start()
    flag.touch()
    d.wait_jobs(
        lambda jobs: sum(j.state == "completed" for j in jobs.values()) == 4,
        what="all four jobs to complete",
    )
    order = [r["rest"][1] for r in d.records()]
    assert order == ["blocker", "b", "c", "a"]
    assert d.stop() == 0


# ----------------------------------------------------------------------------- a killed runner


def test_runner_killed_alone_does_not_leave_its_job_running_beside_the_rerun(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    """Direct mode: SIGKILL of a runner alone leaves its job running (no terminal hangs it up).
    The job is requeued (no exit record) -- but its first run must be ended before the second
    starts, or it runs twice at once. Recovery after a restart does the same (unit tests)."""
    d = make_daemon("direct", gpus=1)
    d.start()
    d.append(d.job_line("--tag orphan", sleep=30))
    job = _wait_started(d, "orphan")["orphan"]
    first_pid = _runs(d, "orphan")[0]["pid"]
    os.kill(job.status.pid, signal.SIGKILL)  # type: ignore[union-attr, arg-type]
    wait_until(lambda: len(_runs(d, "orphan")) == 2, timeout=20, what="the re-run")
    assert not alive(first_pid), "the first run still runs beside the second"
    [requeued] = _events(d, "requeued", job.job_id)
    assert "without an exit record" in requeued["message"]
    assert d.cli("cancel-job", job.job_id).returncode == 0
    _wait_state(d, "orphan", "cancelled")
    assert d.stop() == 0
