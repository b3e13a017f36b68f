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
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import psutil

from gpu_scheduler import runner
from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.exitwatch import ExitWatcher
from gpu_scheduler.adapters.runnerhost import HostGone, RunnerHost
from gpu_scheduler.adapters.screen import SESSION_NAME, ScreenSessions
from gpu_scheduler.adapters.screen_warm import WARM_NAME, WarmWindows
from gpu_scheduler.errors import LaunchError
from gpu_scheduler.runner_records import read_record, write_record

RUNNER_PATH = Path(runner.__file__).resolve()
log = logging.getLogger("gpu_scheduler.launcher")


@dataclass(frozen=True)
class LaunchRequest:
    """Everything the runner needs to start one attempt of one job."""

    job_id: str
    attempt: int
    session: str  # letters, digits, _ - . only
    script: str
    args: tuple[str, ...]
    conda_env: str | None
    gpus: tuple[int, ...]
    share: str  # e.g. "0.5", exported as GPU_SCHEDULER_GPU_SHARE
    log_path: Path
    record_path: Path
    cwd: Path | None = None
    python: str | None = None  # interpreter for .py scripts without a conda env
    env: Mapping[str, str] = field(default_factory=dict)
    append_cuda_arg: bool = False

    def spec(self) -> dict[str, Any]:
        """The runner's spec, JSON-ready (paths as strings, tuples as lists)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(args=list(self.args), gpus=list(self.gpus), env=dict(self.env))
        for key in ("log_path", "record_path", "cwd"):
            data[key] = None if data[key] is None else str(data[key])
        return data


@dataclass(frozen=True)
class LaunchedProcess:
    """The runner (what the daemon follows and stops): pid and create time (POSIX s)."""

    pid: int
    pid_started_at: float


class Launcher(Protocol):
    """``launch`` returns once the runner exists (LaunchError if it cannot); ``stop`` ends
    the runner's whole tree (SIGTERM, SIGKILL after ``grace_s``) and its session;
    ``alive`` is false for a dead runner and for a pid now used by another process;
    ``live_sessions`` names the screen sessions that exist (empty for direct)."""

    mode: str

    def launch(self, req: LaunchRequest) -> LaunchedProcess: ...

    def stop(
        self, pid: int, pid_started_at: float | None, session: str, grace_s: float
    ) -> None: ...

    def alive(self, pid: int, pid_started_at: float | None) -> bool: ...

    def live_sessions(self) -> set[str]: ...

    def close(self) -> None: ...


# Imported rather than run as a script: a script is compiled on every start (~8 ms here),
# an imported module comes from its cached .pyc. Appended to sys.path, so the package
# cannot shadow the standard library.
_RUNNER_CODE = (
    f"import sys; sys.path.append({str(RUNNER_PATH.parents[1])!r}); "
    "from gpu_scheduler.runner import exit_now, main; exit_now(main())"
)


_WARM_CODE = (
    f"import sys; sys.path.append({str(RUNNER_PATH.parents[1])!r}); "
    "from gpu_scheduler.runner_host import wait_in_window; wait_in_window(sys.argv[1])"
)


def warm_window_argv(python_exe: str, fifo: Path) -> list[str]:
    """A warm screen window's command: the runner, imported, waiting on ``fifo`` for a job."""
    return [python_exe, "-I", "-S", "-c", _WARM_CODE, str(fifo)]


def runner_argv(python_exe: str, spec_path: Path) -> list[str]:
    """How launchers start the runner: ``python -I -S -c <import runner> SPEC``."""
    return [python_exe, "-I", "-S", "-c", _RUNNER_CODE, str(spec_path)]


def _prepare(run_dir: Path | None, req: LaunchRequest) -> Path:
    """Check the request, drop a stale record, write the spec (unless no ``run_dir``)."""
    if not SESSION_NAME.fullmatch(req.session):
        raise LaunchError(
            f"invalid session name {req.session!r}: use letters, digits, '_', '-' and '.' only"
        )
    spec_path = Path(run_dir or ".") / f"{req.job_id}.{req.attempt}.spec.json"
    try:
        # A record left at this path by an earlier run would be mistaken for this one's.
        req.record_path.unlink(missing_ok=True)
        req.record_path.parent.mkdir(parents=True, exist_ok=True)
        if run_dir is not None:
            spec_path.write_text(json.dumps(req.spec()))
    except OSError as exc:
        raise LaunchError(f"cannot write the job's spec or record folder: {exc}") from None
    return spec_path


def _check_python(python_exe: str) -> str:
    """The runner's interpreter as a path; checked once, as screen would hide a bad one."""
    found = shutil.which(python_exe)
    if found is None:
        raise LaunchError(f"python for the runner not found or not executable: {python_exe}")
    return found


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
        self.python_exe = _check_python(python_exe)
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
        spec_path = _prepare(self.run_dir, req)
        window = self.warm.take()
        if window is not None:
            request = {
                "spec": str(spec_path), "record": str(req.record_path), "job_id": req.job_id,
                "attempt": req.attempt, "session": req.session, "cwd": os.getcwd(),
                "sty": f"{window.server}.{req.session}",
            }  # fmt: skip
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


class DirectLauncher:
    """Each job's runner in its own session (no terminal to attach to): forked by the warm
    ``RunnerHost`` (``warm=True``, started at the first launch), else a plain child.

    Runners are reaped the moment they exit (by the host, or by one ``ExitWatcher`` thread),
    and the exit callback is then called with the runner's pid. Register it before launching.
    """

    mode = "direct"

    def __init__(self, run_dir: Path, python_exe: str = sys.executable, *, warm: bool = True) -> None:
        self.python_exe = _check_python(python_exe)
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
        spec_path = _prepare(self.run_dir, req)
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
        request = {
            "spec": str(spec_path), "log": str(req.log_path), "record": str(req.record_path),
            "job_id": req.job_id, "attempt": req.attempt, "session": req.session,
            "cwd": os.getcwd(),
        }  # fmt: skip
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


@dataclass
class FakeProcess:
    """One launch of ``FakeLauncher``: alive until finished, stopped or crashed."""

    request: LaunchRequest
    pid: int
    started_at: float
    alive: bool = True
    exit_code: int | None = None


class FakeLauncher:
    """In-memory launcher for daemon tests: no processes, but the same record files.

    A test drives each launch to its end with ``finish`` (exit code), ``fail_in_runner``
    (launch_failed record), ``crash`` (gone without a record), or makes ``launch`` itself
    raise with ``fail_next_launch``. ``stop`` ends a job as SIGTERM would (exit 143).
    """

    mode = "fake"

    def __init__(self, clock: Callable[[], float] = time.time, first_pid: int = 4_000_000) -> None:
        self.clock = clock
        self.requests: list[LaunchRequest] = []
        self.processes: dict[int, FakeProcess] = {}
        self.stops: list[tuple[int, str, float]] = []  # (pid, session, grace_s)
        self.closed = False
        self._next_pid = first_pid
        self._failures: list[str] = []
        self._on_exit: Callable[[int], None] | None = None

    def fail_next_launch(self, message: str) -> None:
        self._failures.append(message)

    def set_exit_callback(self, fn: Callable[[int], None] | None) -> None:
        self._on_exit = fn

    def launch(self, req: LaunchRequest) -> LaunchedProcess:
        self.requests.append(req)
        if self._failures:
            raise LaunchError(self._failures.pop(0))
        _prepare(None, req)
        pid, self._next_pid = self._next_pid, self._next_pid + 1
        proc = FakeProcess(req, pid, self.clock())
        self.processes[pid] = proc
        write_record(req.record_path, {**self._base(proc), "state": "started"}, durable=False)
        return LaunchedProcess(pid, proc.started_at)

    def process(self, key: int | str) -> FakeProcess:
        """The launch with this runner pid or session name (the latest one)."""
        if isinstance(key, int):
            return self.processes[key]
        return [p for p in self.processes.values() if p.request.session == key][-1]

    def finish(self, key: int | str, exit_code: int) -> None:
        proc = self.process(key)
        record = {**self._base(proc), "state": "exited", "exit_code": exit_code}
        self._end(proc, exit_code, {**record, "finished_at": self.clock()})

    def fail_in_runner(self, key: int | str, message: str) -> None:
        proc = self.process(key)
        record = {**self._base(proc), "state": "launch_failed", "message": message}
        self._end(proc, runner.LAUNCH_FAILED_EXIT, {**record, "finished_at": self.clock()})

    def crash(self, key: int | str) -> None:
        """The runner vanishes without a final record (killed -9, machine trouble)."""
        self._end(self.process(key), None, None)

    def stop(self, pid: int, pid_started_at: float | None, session: str, grace_s: float) -> None:
        self.stops.append((pid, session, grace_s))
        if self.alive(pid, pid_started_at):
            self.finish(pid, 128 + 15)

    def alive(self, pid: int, pid_started_at: float | None) -> bool:
        proc = self.processes.get(pid)
        if proc is None or not proc.alive:
            return False
        return pid_started_at is None or abs(proc.started_at - pid_started_at) <= 0.05

    def live_sessions(self) -> set[str]:
        return {p.request.session for p in self.processes.values() if p.alive}

    def close(self) -> None:
        self.closed = True

    def _base(self, proc: FakeProcess) -> dict[str, Any]:
        req = proc.request
        return {
            "job_id": req.job_id,
            "attempt": req.attempt,
            "session": req.session,
            "runner_pid": proc.pid,
            "runner_started_at": proc.started_at,
            "job_pid": proc.pid,
            "started_at": proc.started_at,
        }

    def _end(self, proc: FakeProcess, code: int | None, record: dict[str, Any] | None) -> None:
        if not proc.alive:
            raise RuntimeError(f"fake runner {proc.pid} has already ended")
        proc.alive, proc.exit_code = False, code
        if record is not None:
            write_record(proc.request.record_path, record, durable=False)
        if self._on_exit is not None:
            self._on_exit(proc.pid)
