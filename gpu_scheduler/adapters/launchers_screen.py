"""``ScreenLauncher``: each job's runner in a detached GNU screen session the user can attach to.

Its own module so ``launchers.py`` stays about the family; the screen commands themselves are
in ``screen`` and the pre-started windows in ``screen_warm``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.launchers_base import (
    LaunchedProcess,
    LaunchRequest,
    check_python,
    prepare_launch,
    runner_argv,
    runner_request,
    warm_window_argv,
)
from gpu_scheduler.adapters.screen import ScreenSessions
from gpu_scheduler.adapters.screen_warm import WARM_NAME, WarmWindows
from gpu_scheduler.errors import LaunchError
from gpu_scheduler.runner_records import read_record

log = logging.getLogger("gpu_scheduler.launcher")


class ScreenLauncher:
    """Each job's runner in its own detached screen session, named by the daemon."""

    mode = "screen"

    def __init__(
        self,
        run_dir: Path,
        screen_dir: Path | None = None,
        python_exe: str = sys.executable,
        *,
        screen_exe: str = "screen",
        start_timeout_s: float = 10.0,
        warm_windows: int = 1,
    ) -> None:
        self.python_exe = check_python(python_exe)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sessions = ScreenSessions(screen_dir, screen_exe)
        self.start_timeout_s = start_timeout_s
        self.warm = WarmWindows(
            self.sessions,
            self.run_dir,
            lambda fifo: warm_window_argv(self.python_exe, fifo),
            warm_windows,
        )

    def launch(self, req: LaunchRequest) -> LaunchedProcess:
        """Hand the job to a warm window (``screen_warm``) when one is ready, else
        ``screen -dmS SESSION <runner_argv>``. Returns as soon as the runner process exists,
        without waiting for it to start the job."""
        self.sessions.check_new(req.session)
        spec_path = prepare_launch(self.run_dir, req)
        window = self.warm.take()
        if window is not None:
            request = runner_request(req, spec_path, sty=f"{window.server}.{req.session}")
            line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
            try:
                self.warm.hand_over(window, req.session, line)
                return LaunchedProcess(window.pid, window.started)
            except LaunchError as exc:  # nothing started: the cold way below
                log.warning("%s; starting job %s cold", exc, req.job_id, extra={"event": "launch"})
                self.sessions.check_new(req.session)  # (that window's session is gone)

        def ended() -> tuple[int, float] | None:  # a runner that came and went unseen
            record = read_record(req.record_path)
            if record is None:
                return None
            return int(record["runner_pid"]), float(record["runner_started_at"])

        command = runner_argv(self.python_exe, spec_path)
        pid, started = self.sessions.start(req.session, command, self.start_timeout_s, ended)
        return LaunchedProcess(pid, started)

    def stop(self, pid: int, pid_started_at: float | None, session: str, grace_s: float) -> None:
        """End the runner's tree, then the session (it normally ends with its window)."""
        processes.terminate_tree(pid, grace_s, pid_started_at)
        server = self.sessions.find(session)
        if server is None:
            return
        deadline = time.monotonic() + 0.5
        while processes.is_alive(server, None) and time.monotonic() < deadline:
            time.sleep(0.005)
        if processes.is_alive(server, None):
            self.sessions.quit(session, pid=server)

    def alive(self, pid: int, pid_started_at: float | None) -> bool:
        return processes.is_alive(pid, pid_started_at)

    def live_sessions(self) -> set[str]:
        """The job sessions (warm windows waiting for a job are not one)."""
        return {name for name in self.sessions.list() if not name.startswith(WARM_NAME)}

    def close(self) -> None:
        """Let the warm windows go; job sessions outlive the daemon on purpose."""
        self.warm.close()
