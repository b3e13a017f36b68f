"""Launchers: start a job's runner, follow it by (pid, start time), stop its whole tree.

Every job runs inside ``gpu_scheduler/runner.py`` (see there): the launcher writes its spec
to ``<run_dir>/<job_id>.<attempt>.spec.json``, removes any stale record at ``record_path``,
and starts the runner, either in a detached GNU screen session the user can attach to
(``ScreenLauncher``) or as a plain child (``DirectLauncher``). ``launch`` returns as soon as
the runner's pid is known and never waits for the job; what happened to the job is in the
record the runner writes (``read_record``; format in ``runner_records``).

Launchers may be called from several threads at once (one launch or stop per call).

``LaunchError`` means no runner ever ran (screen missing, bad session name, the session
could not start). A job that could not start *inside* the runner (script or conda env
missing) is reported by the runner's ``launch_failed`` record instead, so the daemon has one
path for it whatever the timing.

The runner is started with ``python -I -S`` (``runner_argv``): it is stdlib-only, so it
needs no site-packages (about 5 ms less per start) nor an installed package, and the
daemon's PYTHONPATH cannot change it. ``python -m gpu_scheduler.runner SPEC`` does the same.
In direct mode a warm host (``runner_host``, itself started that way) forks each runner
instead, which takes the interpreter's start (12-20 ms of CPU here) off every job; the
runner's Popen start remains the fallback whenever the host cannot answer.

Callers import every launcher name from here. This module holds ``DirectLauncher`` (tests
patch its ``RunnerHost`` here); the request, the protocol and the runner's argv are in
``launchers_base``, ``ScreenLauncher`` in ``launchers_screen``, ``FakeLauncher`` in
``launchers_fake``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.exitwatch import ExitWatcher
from gpu_scheduler.adapters.launchers_base import (
    RUNNER_PATH,
    LaunchedProcess,
    Launcher,
    LaunchRequest,
    check_python,
    prepare_launch,
    runner_argv,
    runner_request,
    warm_window_argv,
)
from gpu_scheduler.adapters.launchers_fake import FakeLauncher, FakeProcess
from gpu_scheduler.adapters.launchers_screen import ScreenLauncher
from gpu_scheduler.adapters.runnerhost import HostGone, RunnerHost
from gpu_scheduler.errors import LaunchError
from gpu_scheduler.runner_records import read_record, write_record

__all__ = [
    "RUNNER_PATH", "DirectLauncher", "FakeLauncher", "FakeProcess", "LaunchRequest",
    "LaunchedProcess", "Launcher", "ScreenLauncher", "read_record", "runner_argv",
    "warm_window_argv", "write_record",
]  # fmt: skip

# The old private names, for tests that import them (aliases: patching them here changes nothing).
_prepare = prepare_launch
_check_python = check_python


class DirectLauncher:
    """Each job's runner in its own session (no terminal to attach to): forked by the warm
    ``RunnerHost`` (``warm=True``, started at the first launch), else a plain child.

    Runners are reaped the moment they exit (by the host, or by one ``ExitWatcher`` thread),
    and the exit callback is then called with the runner's pid. Register it before launching.
    """

    mode = "direct"

    def __init__(
        self, run_dir: Path, python_exe: str = sys.executable, *, warm: bool = True
    ) -> None:
        self.python_exe = check_python(python_exe)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.warm = warm
        self._lock = threading.Lock()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._hosted: set[int] = set()  # runners the host forked (the host reaps them)
        self._host: RunnerHost | None = None
        self._host_lock = threading.Lock()
        self._on_exit: Callable[[int], None] | None = None
        self._watcher = ExitWatcher()

    def set_exit_callback(self, fn: Callable[[int], None] | None) -> None:
        """``fn(runner_pid)`` runs on the watcher thread right after a runner exits."""
        self._on_exit = fn

    def launch(self, req: LaunchRequest) -> LaunchedProcess:
        spec_path = prepare_launch(self.run_dir, req)
        if self.warm:
            hosted = self._launch_hosted(req, spec_path)
            if hosted is not None:
                return hosted
        try:
            req.log_path.parent.mkdir(parents=True, exist_ok=True)
            # The runner's own stderr (a crash, a launch failure) lands in the job's log.
            with open(req.log_path, "ab") as log:
                earliest_ns = processes.boot_clock_ns()
                proc = subprocess.Popen(
                    runner_argv(self.python_exe, spec_path),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
        except OSError as exc:
            raise LaunchError(f"cannot start the runner: {exc}") from None
        started = processes.start_time_between(proc.pid, earliest_ns, processes.boot_clock_ns())
        with self._lock:
            self._children[proc.pid] = proc
        self._watcher.watch(str(proc.pid), proc.pid, self._reap)
        return LaunchedProcess(proc.pid, started if started is not None else time.time())

    def _launch_hosted(self, req: LaunchRequest, spec_path: Path) -> LaunchedProcess | None:
        """The runner forked by the warm host; None when the host cannot answer (then no child
        of it can run the job, and the caller starts the runner itself)."""
        try:
            req.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(req.log_path, "ab"):  # the same check as the plain start's
                pass
        except OSError as exc:
            raise LaunchError(f"cannot start the runner: {exc}") from None
        request = runner_request(req, spec_path, log=str(req.log_path))
        with self._host_lock:
            try:
                if self._host is None or not self._host.alive:
                    self._drop_host()
                    self._host = RunnerHost(self.python_exe)
                earliest_ns = processes.boot_clock_ns()
                pid = self._host.start(request)
                latest_ns = processes.boot_clock_ns()
            except (OSError, HostGone):
                self._drop_host()
                return None
            with self._lock:
                self._hosted.add(pid)
        started = processes.start_time_between(pid, earliest_ns, latest_ns)
        self._watcher.watch(str(pid), pid, self._reap)
        return LaunchedProcess(pid, started if started is not None else time.time())

    def _drop_host(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host.release()
            self._host = None

    def _reap(self, key: str) -> None:
        pid = int(key)
        with self._lock:
            proc = self._children.pop(pid, None)
            hosted = pid in self._hosted
            self._hosted.discard(pid)
        if proc is not None:
            proc.wait()
        elif hosted:  # the host reaps its children: give it a moment, so the pid is gone
            host, deadline = self._host, time.monotonic() + 0.5
            while (host is not None and host.proc.poll() is None and psutil.pid_exists(pid)
                   and time.monotonic() < deadline):  # fmt: skip
                time.sleep(0.0005)
        else:
            return
        callback = self._on_exit
        if callback is not None:
            callback(pid)

    def stop(self, pid: int, pid_started_at: float | None, session: str, grace_s: float) -> None:
        processes.terminate_tree(pid, grace_s, pid_started_at)

    def alive(self, pid: int, pid_started_at: float | None) -> bool:
        return processes.is_alive(pid, pid_started_at)

    def live_sessions(self) -> set[str]:
        return set()

    def close(self) -> None:
        """Stop watching and end the warm host; runners still running are left alone (and no
        longer reaped by us)."""
        with self._host_lock:
            self._drop_host()
        self._watcher.close()
