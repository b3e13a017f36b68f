"""Warm screen windows (``adapters/screen_warm.py``) with real screen sessions and processes:
a job handed to a window that was already up, and what happens to waiting windows when the
launcher closes, its process is killed, or a window dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.launchers import ScreenLauncher, warm_window_argv
from gpu_scheduler.adapters.screen import ScreenSessions
from gpu_scheduler.adapters.screen_warm import WARM_NAME
from gpu_scheduler.errors import LaunchError
from gpu_scheduler.runner_records import read_record
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
print("sty", os.environ.get("STY"), flush=True)
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
    # $STY names the session as it is now, so `screen -X` from inside the job reaches it
    wait_until(lambda: f"sty {waiting[1]}.{req.session}" in text(req.log_path), what="$STY")
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
        from gpu_scheduler.adapters.launchers import ScreenLauncher, warm_window_argv
        run, screens = Path({str(tmp_path / "run")!r}), Path({str(screen_dir)!r})
        launcher = ScreenLauncher(run, screens, warm_windows=1)
        assert launcher.warm.wait_ready()
        print(launcher.warm._ready[0].pid, flush=True)
        time.sleep(120)
    """)
    with subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    ) as proc:
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
    dead = launcher.warm._ready[0].pid
    req = make_request(tmp_path, "gpujob_0_cold_1", "print('ran')\n")
    proc = launcher.launch(req)
    pids.add(proc.pid)
    assert proc.pid != dead
    done = final_record(req)
    assert done["state"] == "exited" and done["exit_code"] == 0
    assert "ran" in text(req.log_path)


def test_a_window_whose_daemon_died_before_it_looked_exits_without_waiting(
    tmp_path: Path, screen_dir: Path, pids: PidTracker
) -> None:
    """The daemon opens a window's FIFO before starting it; if the daemon is gone by the time
    the window's Python is up, the window must not wait forever for a writer."""
    sessions = ScreenSessions(screen_dir)
    fifo = tmp_path / "gone.fifo"
    os.mkfifo(fifo, 0o600)
    os.close(os.open(fifo, os.O_RDWR))  # the daemon had it open, then died
    pid, _started = sessions.start("gpu-scheduler-warm-gone", warm_window_argv(sys.executable, fifo))
    pids.add(pid)
    wait_until(lambda: not psutil.pid_exists(pid), what="the window to exit")
    wait_until(lambda: not sessions.list(), what="its session to end")


# A "daemon" that readies a warm window, then dies with SIGKILL at a chosen point of a
# launch: "after-rename" (the session has the job's name, the request was never written) or
# "after-hand-over" (the window has the request; the daemon never recorded the runner's pid).
DIES_MID_LAUNCH = """\
import os, signal, sys
from pathlib import Path
from gpu_scheduler.adapters.launchers import LaunchRequest, ScreenLauncher
tmp, screens, point, script = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
launcher = ScreenLauncher(tmp / "run", screens, warm_windows=1)
assert launcher.warm.wait_ready()
req = LaunchRequest(job_id="j1", attempt=1, session="gpujob_0_j_j1", script=script, args=(),
                    conda_env=None, gpus=(0,), share="0.5", log_path=tmp / "logs" / "j1.log",
                    record_path=tmp / "run" / "j1.1.json", cwd=tmp, python=sys.executable)
print(launcher.warm._ready[0].pid, flush=True)
if point == "after-rename":
    window = launcher.warm.take()
    launcher.sessions.rename(window.server, window.name, req.session)
    from gpu_scheduler.adapters.launchers import _prepare
    _prepare(launcher.run_dir, req)
else:
    launcher.launch(req)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("point", ["after-rename", "after-hand-over"])
def test_a_daemon_killed_mid_launch_runs_the_job_once_or_not_at_all(
    tmp_path: Path, screen_dir: Path, pids: PidTracker, point: str
) -> None:
    """What recovery finds after the crash decides: the window that got the request is
    adopted (and runs the job once); one that never got it runs nothing, so the job is
    requeued (the spec is fenced)."""
    from gpu_scheduler.daemon_records import _in_flight

    script = tmp_path / "job.py"
    ran = tmp_path / "ran"
    script.write_text(f"open({str(ran)!r}, 'a').write('ran\\n')\n")
    with subprocess.Popen(
        [sys.executable, "-c", DIES_MID_LAUNCH, str(tmp_path), str(screen_dir), point, str(script)],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
    ) as holder:  # fmt: skip
        pids.add(holder.pid)
        assert holder.stdout is not None
        window = int(holder.stdout.readline())
        pids.add(window)
        assert holder.wait(timeout=30) == -signal.SIGKILL

    launcher = ScreenLauncher(tmp_path / "run", screen_dir, warm_windows=0)
    facts = _in_flight(
        "j1", tmp_path / "run" / "j1.1.json", tmp_path / "run" / "j1.1.spec.json", launcher,
        deadline=time.monotonic() + 3.0,
    )  # fmt: skip
    wait_until(lambda: not psutil.pid_exists(window), what="the window to end")
    if point == "after-rename":
        assert facts.pid is None and not facts.alive  # nothing to adopt: requeue
        assert not ran.exists()
        assert not (tmp_path / "run" / "j1.1.spec.json").exists()  # fenced
    else:
        assert facts.pid == window
        wait_until(ran.exists, what="the job to run")
        record = tmp_path / "run" / "j1.1.json"
        done = wait_until(
            lambda: (r := read_record(record)) and r["state"] == "exited" and r, what="its exit"
        )
        assert done["state"] == "exited" and done["exit_code"] == 0
        assert ran.read_text() == "ran\n"  # once
    wait_until(lambda: not ScreenSessions(screen_dir).list(), what="the sessions to end")


def test_a_rename_returns_only_once_the_session_answers_to_its_new_name(
    screen_dir: Path, pids: PidTracker
) -> None:
    """``screen -X sessionname`` only delivers the command; the launcher hands the job over
    right after ``rename`` returns, so by then the new name must be the session's."""
    sessions = ScreenSessions(screen_dir)
    pid, _ = sessions.start("gpu-scheduler-warm-r", [sys.executable, "-c", "import time; time.sleep(60)"])
    pids.add(pid)
    server = sessions.find("gpu-scheduler-warm-r")
    assert server is not None
    name = "gpu-scheduler-warm-r"
    for n in range(20):
        new = f"gpujob_0_r_{n}"
        sessions.rename(server, name, new)
        assert sessions.find(new) == server and sessions.find(name) is None
        name = new
    with pytest.raises(LaunchError, match="cannot rename"):
        sessions.rename(server, "no-such-session", "gpujob_0_r_x")
