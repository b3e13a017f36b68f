"""``FakeLauncher``: the in-memory launcher that daemon tests use instead of real processes.

Beside the real launchers, as every adapter's fake is; it writes the same record files they do,
so the daemon's record handling is tested for real.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpu_scheduler import runner
from gpu_scheduler.adapters.launchers_base import LaunchedProcess, LaunchRequest, prepare_launch
from gpu_scheduler.errors import LaunchError
from gpu_scheduler.runner_records import write_record


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
        prepare_launch(None, req)
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
