"""Warm screen windows (``adapters/screen_warm.py``) with real screen sessions and processes:
a job handed to a window that was already up, and what happens to waiting windows when the
launcher closes, its process is killed, or a window dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.launchers import ScreenLauncher
from gpu_scheduler.adapters.screen import ScreenSessions
from gpu_scheduler.adapters.screen_warm import WARM_NAME
from gpu_scheduler.errors import LaunchError
from tests.conftest import PidTracker
from tests.helpers import wait_until
from tests.integration.test_launchers import final_record, make_request, text

pytestmark = pytest.mark.slow

# Prints its GPUs and working directory, waits for SIGINT (^C) or a minute, and says which.
WAITS_FOR_CTRL_C = """\
import os, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *_: got.append(1))
print("gpus", os.environ["CUDA_VISIBLE_DEVICES"], "cwd", os.getcwd(), flush=True)
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.3)  # a second ^C, if one were sent, would land here
print("sigint", len(got), flush=True)
raise SystemExit(7 if got else 1)
"""


@pytest.fixture
def launcher(tmp_path: Path, screen_dir: Path) -> Iterator[ScreenLauncher]:
    made = ScreenLauncher(tmp_path / "run", screen_dir, warm_windows=1)
    try:
        assert made.warm.wait_ready(), "no warm window came up"
        yield made
    finally:
        made.close()


def warm_sessions(screen_dir: Path) -> dict[str, int]:
    return {
        name: pid
        for name, pid in ScreenSessions(screen_dir).list().items()
        if name.startswith(WARM_NAME)
    }


def test_a_job_handed_to_a_warm_window_runs_there_under_its_own_session_name(
    launcher: ScreenLauncher, tmp_path: Path, screen_dir: Path, pids: PidTracker
) -> None:
    (waiting,) = warm_sessions(screen_dir).items()
    window = launcher.warm._ready[0]
    req = make_request(tmp_path, "gpujob_0_w_1", WAITS_FOR_CTRL_C)

    proc = launcher.launch(req)
    pids.add(proc.pid)

    # the waiting window is now the job's runner, in that same screen, renamed to the job
    assert (proc.pid, proc.pid_started_at) == (window.pid, window.started)
    assert launcher.sessions.find(req.session) == waiting[1]
    assert req.session in launcher.live_sessions()
    wait_until(lambda: "gpus 0 cwd" in text(req.log_path), what="the job's first line")
    assert f"cwd {tmp_path}" in text(req.log_path)
    # ^C typed in the session's window reaches the job once, as in a new session
    sessions = launcher.sessions
    subprocess.run(
        [sessions.screen_exe, "-S", f"{waiting[1]}.{req.session}", "-X", "stuff", "\x03"],
        env=sessions.env(),
        check=True,
    )
    done = final_record(req)
    assert done["state"] == "exited" and done["exit_code"] == 7
    assert done["runner_pid"] == proc.pid
    assert "sigint 1" in text(req.log_path)
    wait_until(lambda: req.session not in launcher.live_sessions(), what="the session to end")
    # a new window is warming for the next job, and is not taken for a job's session
    assert launcher.warm.wait_ready()
    assert set(warm_sessions(screen_dir)) - {waiting[0]}
    assert launcher.live_sessions() == set()


def test_closing_the_launcher_lets_waiting_windows_end_without_running_anything(
    tmp_path: Path, screen_dir: Path
) -> None:
    launcher = ScreenLauncher(tmp_path / "run", screen_dir, warm_windows=2)
    try:
        wait_until(lambda: launcher.warm.wait_ready() and len(launcher.warm._ready) == 2)
        windows = [(w.pid, w.started) for w in launcher.warm._ready]
    finally:
        launcher.close()
    wait_until(lambda: not warm_sessions(screen_dir), what="the warm sessions to end")
    assert not any(processes.is_alive(pid, started) for pid, started in windows)
    assert not [p for p in (tmp_path / "run").iterdir() if "record" in p.name or "fifo" in p.name]


def test_a_daemon_killed_with_sigkill_leaves_no_warm_window_behind(
    tmp_path: Path, screen_dir: Path, pids: PidTracker
) -> None:
    holder = textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from gpu_scheduler.adapters.launchers import ScreenLauncher
        run, screens = Path({str(tmp_path / "run")!r}), Path({str(screen_dir)!r})
        launcher = ScreenLauncher(run, screens, warm_windows=1)
        assert launcher.warm.wait_ready()
        print(launcher.warm._ready[0].pid, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    pids.add(proc.pid)
    assert proc.stdout is not None
    window = int(proc.stdout.readline())
    pids.add(window)
    assert warm_sessions(screen_dir)

    proc.send_signal(signal.SIGKILL)
    proc.wait()

    wait_until(lambda: not psutil.pid_exists(window), what="the orphaned window to exit")
    wait_until(lambda: not warm_sessions(screen_dir), what="its session to end")


def test_a_window_that_died_takes_no_job_and_the_launch_starts_a_new_session(
    launcher: ScreenLauncher, tmp_path: Path, screen_dir: Path, pids: PidTracker
) -> None:
    window = launcher.warm.take()
    assert window is not None
    os.kill(window.pid, signal.SIGKILL)
    wait_until(lambda: not processes.is_alive(window.pid, window.started))
    with pytest.raises(LaunchError, match="could not take the job"):
        launcher.warm.hand_over(window, "gpujob_0_dead_1", b'{"spec": "x"}\n')
    assert launcher.sessions.find("gpujob_0_dead_1") is None

    # the same when a launch finds its warm window dead: the job still runs, in a new session
    assert launcher.warm.wait_ready()
    os.kill(launcher.warm._ready[0].pid, signal.SIGKILL)
    req = make_request(tmp_path, "gpujob_0_cold_1", "print('ran')\n")
    proc = launcher.launch(req)
    pids.add(proc.pid)
    done = final_record(req)
    assert done["state"] == "exited" and done["exit_code"] == 0
    assert "ran" in text(req.log_path)
