"""Launchers with real screen sessions and real processes; ExitWatcher; FakeLauncher.

Every session lives in the test's private SCREENDIR (``screen_dir`` fixture) and every pid
is recorded with ``pids``, so teardown can end what a failing test left, by name or pid.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.exitwatch import ExitWatcher
from gpu_scheduler.adapters.launchers import (
    DirectLauncher,
    FakeLauncher,
    LaunchedProcess,
    LaunchRequest,
    ScreenLauncher,
    read_record,
)
from gpu_scheduler.adapters.screen import ScreenSessions, parse_screen_ls
from gpu_scheduler.errors import LaunchError
from tests.conftest import PidTracker
from tests.helpers import wait_until

# Prints "ready", waits (bounded) for the file named by argv[1], exits with argv[2].
WAIT_FOR_GO = """\
import os, sys, time
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.01)
raise SystemExit(int(sys.argv[2]))
"""

# Starts `sleep 60` as its child, publishes that pid in argv[1], then sleeps.
SPAWNS_CHILD = """\
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(child.pid))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


def make_request(tmp_path: Path, session: str, body: str, *args: str) -> LaunchRequest:
    script = tmp_path / f"{session}.py"
    script.write_text(body)
    return LaunchRequest(
        job_id=session,
        attempt=1,
        session=session,
        script=str(script),
        args=args,
        conda_env=None,
        gpus=(0,),
        share="0.5",
        log_path=tmp_path / "logs" / f"{session}.log",
        record_path=tmp_path / "run" / f"{session}.1.json",
        cwd=tmp_path,
        python=sys.executable,
    )


def final_record(req: LaunchRequest) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        rec = read_record(req.record_path)
        return rec if rec and rec["state"] != "started" else None

    return wait_until(done, timeout=30, what=f"{req.session} to finish")


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its parent counts: it has ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def tree_pids(
    tmp_path: Path, req: LaunchRequest, proc: LaunchedProcess, pids: PidTracker
) -> list[int]:
    """runner, job and the job's `sleep` child, once all exist (all recorded for teardown)."""
    child_file = Path(req.args[0])
    wait_until(child_file.exists, timeout=30, what="the job's child")
    job = read_record(req.record_path)
    assert job is not None
    found = [proc.pid, int(job["job_pid"]), int(child_file.read_text())]
    for pid in found:
        pids.add(pid)
    return found


# --------------------------------------------------------------------------- screen


@pytest.fixture
def screen_launcher(tmp_path: Path, screen_dir: Path) -> Iterator[Callable[..., ScreenLauncher]]:
    """``make(warm=False)``: a ScreenLauncher on the test's SCREENDIR, closed at teardown (its
    warm windows go with it). ``warm=True`` waits for a warm window first, so the next launch
    is handed to it; ``warm=False`` keeps none, so every launch starts a new session."""
    made: list[ScreenLauncher] = []

    def make(warm: bool = False, **kwargs: Any) -> ScreenLauncher:
        launcher = ScreenLauncher(tmp_path / "run", screen_dir, warm_windows=int(warm), **kwargs)
        made.append(launcher)
        if warm:
            assert launcher.warm.wait_ready(), "no warm window came up"
        return launcher

    yield make
    for launcher in made:
        launcher.close()


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["new-session", "warm-window"])
def test_screen_job_runs_in_its_named_session_and_records_the_exit_code(
    tmp_path: Path, screen_dir: Path, pids: PidTracker, screen_launcher: Any, warm: bool
) -> None:
    launcher = screen_launcher(warm)
    go = tmp_path / "go"
    req = make_request(tmp_path, "gs-t1.job-a_1", WAIT_FOR_GO, str(go), "3")

    proc = launcher.launch(req)
    pids.add(proc.pid)

    assert req.session in launcher.live_sessions()
    assert req.session in ScreenSessions(screen_dir).list()
    assert launcher.alive(proc.pid, proc.pid_started_at)
    assert wait_until(
        lambda: "gpu_scheduler.runner" in " ".join(psutil.Process(proc.pid).cmdline())
    )
    server = launcher.sessions.find(req.session)
    assert launcher.sessions.attach_argv(req.session) == ["screen", "-r", f"{server}.{req.session}"]
    wait_until(lambda: "ready" in text(req.log_path), what="job output in the log")

    go.touch()
    done = final_record(req)

    assert done["state"] == "exited" and done["exit_code"] == 3
    assert done["runner_pid"] == proc.pid
    assert abs(done["runner_started_at"] - proc.pid_started_at) < 0.05
    wait_until(lambda: req.session not in launcher.live_sessions(), what="session to end")
    assert not launcher.alive(proc.pid, proc.pid_started_at)


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["new-session", "warm-window"])
def test_screen_stop_ends_the_whole_tree_and_the_session(
    tmp_path: Path, screen_dir: Path, pids: PidTracker, screen_launcher: Any, warm: bool
) -> None:
    launcher = screen_launcher(warm)
    req = make_request(tmp_path, "gs-t2", SPAWNS_CHILD, str(tmp_path / "child.pid"))
    proc = launcher.launch(req)
    pids.add(proc.pid)
    tree = tree_pids(tmp_path, req, proc, pids)

    launcher.stop(proc.pid, proc.pid_started_at, req.session, grace_s=5)

    assert all(gone(pid) for pid in tree), [p for p in tree if not gone(p)]
    assert req.session not in launcher.live_sessions()
    assert final_record(req)["exit_code"] == 128 + signal.SIGTERM


@pytest.mark.slow
def test_screen_rejects_a_bad_or_taken_session_name(
    tmp_path: Path, screen_dir: Path, pids: PidTracker, screen_launcher: Any
) -> None:
    launcher = screen_launcher(warm=True)
    with pytest.raises(LaunchError, match="invalid session name"):
        launcher.launch(make_request(tmp_path, "bad name;rm", WAIT_FOR_GO))
    req = make_request(tmp_path, "gs-t3", WAIT_FOR_GO, str(tmp_path / "go"), "0")
    proc = launcher.launch(req)
    pids.add(proc.pid)

    with pytest.raises(LaunchError, match="already exists"):
        launcher.launch(req)

    launcher.stop(proc.pid, proc.pid_started_at, req.session, grace_s=5)
    assert launcher.live_sessions() == set()


def test_screen_missing_is_a_launch_error(tmp_path: Path) -> None:
    launcher = ScreenLauncher(tmp_path / "run", tmp_path / "s", screen_exe="/nonexistent/screen")
    with pytest.raises(LaunchError, match="screen not found"):
        launcher.launch(make_request(tmp_path, "gs-t4", WAIT_FOR_GO))


@pytest.mark.slow
def test_screen_job_that_cannot_start_is_reported_by_its_record(
    tmp_path: Path, screen_dir: Path, pids: PidTracker, screen_launcher: Any
) -> None:
    launcher = screen_launcher(warm=True)
    req = make_request(tmp_path, "gs-t5", "")
    Path(req.script).unlink()
    proc = launcher.launch(req)
    pids.add(proc.pid)
    failed = final_record(req)
    assert failed["state"] == "launch_failed" and "script not found" in failed["message"]
    wait_until(lambda: not launcher.live_sessions(), what="session to end")


def test_parse_screen_ls_reads_names_and_skips_dead_sessions() -> None:
    text = (
        "There are screens on:\n"
        "\t4242.gs-job.1_a\t(11/23/26 17:43:17)\t(Detached)\n"
        "\t77.other\t(Attached)\n"
        "\t99.stale\t(Dead ???)\n"
        "3 Sockets in /tmp/gs-x.\n"
    )
    assert parse_screen_ls(text) == {"gs-job.1_a": 4242, "other": 77}
    assert parse_screen_ls("No Sockets found in /tmp/gs-x.\n") == {}


# --------------------------------------------------------------------------- direct


@pytest.mark.slow
def test_direct_job_records_exit_code_and_calls_back(
    tmp_path: Path, pids: PidTracker, no_thread_leak: None
) -> None:
    launcher = DirectLauncher(tmp_path / "run")
    exited: list[int] = []
    launcher.set_exit_callback(exited.append)
    go = tmp_path / "go"
    req = make_request(tmp_path, "gs-d1", WAIT_FOR_GO, str(go), "3")
    try:
        proc = launcher.launch(req)
        pids.add(proc.pid)
        assert launcher.alive(proc.pid, proc.pid_started_at)
        assert launcher.live_sessions() == set()

        go.touch()

        wait_until(lambda: exited == [proc.pid], what="the exit callback")
        assert final_record(req)["exit_code"] == 3
        assert not launcher.alive(proc.pid, proc.pid_started_at)
        assert not psutil.pid_exists(proc.pid)  # reaped, not left a zombie
    finally:
        launcher.close()


@pytest.mark.slow
def test_direct_stop_ends_the_whole_tree(
    tmp_path: Path, pids: PidTracker, no_thread_leak: None
) -> None:
    launcher = DirectLauncher(tmp_path / "run")
    exited: list[int] = []
    launcher.set_exit_callback(exited.append)
    req = make_request(tmp_path, "gs-d2", SPAWNS_CHILD, str(tmp_path / "child.pid"))
    try:
        proc = launcher.launch(req)
        tree = tree_pids(tmp_path, req, proc, pids)

        launcher.stop(proc.pid, proc.pid_started_at, req.session, grace_s=5)

        assert all(gone(pid) for pid in tree), [p for p in tree if not gone(p)]
        wait_until(lambda: exited == [proc.pid], what="the exit callback")
        assert final_record(req)["exit_code"] == 128 + signal.SIGTERM
    finally:
        launcher.close()


@pytest.mark.slow
def test_stop_still_ends_the_job_when_its_runner_was_killed(
    tmp_path: Path, pids: PidTracker, no_thread_leak: None
) -> None:
    launcher = DirectLauncher(tmp_path / "run")
    req = make_request(tmp_path, "gs-d3", SPAWNS_CHILD, str(tmp_path / "child.pid"))
    try:
        proc = launcher.launch(req)
        runner, job, child = tree_pids(tmp_path, req, proc, pids)
        os.kill(runner, signal.SIGKILL)
        wait_until(lambda: not launcher.alive(proc.pid, proc.pid_started_at))
        assert not gone(job) and not gone(child)  # orphaned, still in the runner's group

        launcher.stop(proc.pid, proc.pid_started_at, req.session, grace_s=5)

        assert gone(job) and gone(child)
    finally:
        launcher.close()


def test_alive_is_false_for_a_dead_pid_and_for_a_reused_one(tmp_path: Path) -> None:
    own_start = processes.process_start_time(os.getpid())
    assert own_start is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    launcher = DirectLauncher(tmp_path / "run")
    try:
        for alive in (launcher.alive, ScreenLauncher(tmp_path / "run", tmp_path / "s").alive):
            assert alive(os.getpid(), own_start)
            assert not alive(os.getpid(), own_start - 5.0)  # same pid, another process
            assert not alive(dead.pid, None)
    finally:
        launcher.close()


def test_start_time_of_a_fresh_child_equals_psutils(pids: PidTracker) -> None:
    for _ in range(10):
        before = processes.boot_clock_ns()
        child = subprocess.Popen(["sleep", "30"])
        started = processes.start_time_between(child.pid, before, processes.boot_clock_ns())
        pids.add(child.pid)
        assert started == psutil.Process(child.pid).create_time()
        assert processes.process_start_time(child.pid) == started
        child.kill()
        child.wait()


def test_terminate_tree_leaves_a_reused_pid_alone() -> None:
    own_start = processes.process_start_time(os.getpid())
    assert own_start is not None
    processes.terminate_tree(os.getpid(), 0.1, started_at=own_start - 5.0)  # must not kill us


# --------------------------------------------------------------------------- exit watcher


def orphan_sleep(pids: PidTracker) -> int:
    """A `sleep` that is not our child (its parent shell has exited)."""
    out = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    return pids.add(int(out.stdout))


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "psutil-polling"])
def test_exit_watcher_reports_a_non_child_exit(
    pids: PidTracker, no_thread_leak: None, monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    watcher = ExitWatcher(fallback_interval_s=0.05)
    fired: dict[str, float] = {}
    event = threading.Event()

    def on_exit(key: str) -> None:
        fired[key] = time.perf_counter()
        event.set()

    try:
        pid = orphan_sleep(pids)
        assert psutil.Process(pid).ppid() != os.getpid()
        watcher.watch("job", pid, on_exit, started_at=processes.process_start_time(pid))
        watcher.watch("never", orphan_sleep(pids), on_exit)
        watcher.unwatch("never")
        killed_at = time.perf_counter()
        os.kill(pid, signal.SIGKILL)

        assert event.wait(10)
        print(
            f"\nExitWatcher ({'pidfd' if pidfd else 'polling'}): "
            f"{(fired['job'] - killed_at) * 1000:.2f} ms from SIGKILL to callback"
        )
        event.clear()
        watcher.watch("dead-already", pid, on_exit)
        watcher.watch("reused", os.getpid(), on_exit, started_at=0.0)
        wait_until(lambda: {"dead-already", "reused"} <= set(fired))
        assert "never" not in fired
        assert watcher.watching() == set()
    finally:
        watcher.close()


# --------------------------------------------------------------------------- fake


def test_fake_launcher_writes_the_runner_record_format(tmp_path: Path) -> None:
    fake = FakeLauncher(clock=lambda: 1000.0)
    exited: list[int] = []
    fake.set_exit_callback(exited.append)
    req = make_request(tmp_path, "gs-f1", "")

    proc = fake.launch(req)
    assert read_record(req.record_path)["state"] == "started"  # type: ignore[index]
    assert fake.alive(proc.pid, proc.pid_started_at) and fake.live_sessions() == {"gs-f1"}
    fake.finish("gs-f1", 3)

    assert read_record(req.record_path) == {
        "state": "exited",
        "exit_code": 3,
        "job_id": "gs-f1",
        "attempt": 1,
        "session": "gs-f1",
        "runner_pid": proc.pid,
        "runner_started_at": 1000.0,
        "job_pid": proc.pid,
        "started_at": 1000.0,
        "finished_at": 1000.0,
    }
    assert exited == [proc.pid] and not fake.alive(proc.pid, None)

    second = fake.launch(make_request(tmp_path, "gs-f2", ""))
    fake.stop(second.pid, second.pid_started_at, "gs-f2", grace_s=1)
    assert fake.process("gs-f2").exit_code == 143 and fake.stops == [(second.pid, "gs-f2", 1)]

    fake.fail_next_launch("screen exploded")
    with pytest.raises(LaunchError, match="screen exploded"):
        fake.launch(make_request(tmp_path, "gs-f3", ""))
    third = fake.launch(make_request(tmp_path, "gs-f4", ""))
    fake.fail_in_runner(third.pid, "script not found: x.py")
    assert read_record(tmp_path / "run" / "gs-f4.1.json")["state"] == "launch_failed"  # type: ignore[index]


# --------------------------------------------------------------------------- latency


@pytest.mark.slow
def test_print_launch_latency(tmp_path: Path, screen_dir: Path, pids: PidTracker) -> None:
    """Median time for ``launch`` to return, 20 trivial jobs per launcher (printed with -s;
    never asserted)."""
    job = tmp_path / "true.sh"
    job.write_text("#!/bin/sh\nexit 0\n")
    job.chmod(0o755)
    direct = DirectLauncher(tmp_path / "run")
    launchers = {"screen": ScreenLauncher(tmp_path / "run", screen_dir), "direct": direct}
    # (the screen launcher keeps a warm window: launches after the first are handed to it)
    try:
        for mode, launcher in launchers.items():
            times, reqs = [], []
            for i in range(20):
                req = LaunchRequest(
                    job_id=f"{mode}{i}",
                    attempt=1,
                    session=f"gs-lat-{mode}-{i}",
                    script=str(job),
                    args=(),
                    conda_env=None,
                    gpus=(0,),
                    share="1",
                    log_path=tmp_path / "logs" / f"{mode}{i}.log",
                    record_path=tmp_path / "run" / f"{mode}{i}.1.json",
                )
                start = time.perf_counter()
                proc = launcher.launch(req)
                times.append(time.perf_counter() - start)
                pids.add(proc.pid)
                reqs.append(req)
                # one at a time (runner gone, its fsyncs done): measure launch, not a busy disk
                assert final_record(req)["runner_started_at"] == proc.pid_started_at
                wait_until(lambda: not launcher.alive(proc.pid, proc.pid_started_at))  # noqa: B023
            print(
                f"\n{mode} launch: median {statistics.median(times) * 1000:.2f} ms, "
                f"min {min(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms (n=20)"
            )
            assert all(final_record(r)["exit_code"] == 0 for r in reqs)
        wait_until(lambda: not launchers["screen"].live_sessions(), what="sessions to end")
    finally:
        direct.close()
        launchers["screen"].close()
