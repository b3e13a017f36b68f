"""Shared fixtures: a private screen socket folder, and clean-up of recorded pids and threads.

Everything a test starts is ended by name or pid in teardown (even when the test failed),
never by a pattern, so parallel test runs and the user's own sessions are safe.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_until


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def screen_dir() -> Iterator[Path]:
    """A private SCREENDIR (short path: socket paths must fit in 108 bytes). Teardown quits
    every session left in it by its full ``PID.NAME`` and fails the test if one survives."""
    from gpu_scheduler.adapters.screen import ScreenSessions

    path = Path(tempfile.mkdtemp(prefix="gs-", dir="/tmp"))
    try:
        yield path
    finally:
        sessions = ScreenSessions(path)
        for name, pid in sessions.list().items():
            sessions.quit(name, pid=pid)
        try:
            wait_until(lambda: not sessions.list(), timeout=10, what="screen sessions to end")
        except AssertionError:
            left = sessions.list()
            for pid in left.values():  # last resort, by pid
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            pytest.fail(f"screen sessions survived teardown: {sorted(left)}")
        finally:
            shutil.rmtree(path, ignore_errors=True)


class PidTracker:
    """Pids a test started; all still alive at teardown are killed with their children."""

    def __init__(self) -> None:
        self._procs: list[psutil.Process] = []

    def add(self, pid: int) -> int:
        with contextlib.suppress(psutil.Error):
            self._procs.append(psutil.Process(pid))  # remembers the create time
        return pid

    def kill_all(self) -> list[int]:
        """SIGKILL each recorded process (and its children) that still runs; their pids."""
        killed: list[int] = []
        for proc in self._procs:
            if not _live(proc):
                continue
            with contextlib.suppress(psutil.Error):
                family = [proc, *proc.children(recursive=True)]
                for member in family:
                    with contextlib.suppress(psutil.Error):
                        member.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
        wait_until(lambda: not any(_live(p) for p in self._procs), timeout=10, what="kills")
        return killed


@pytest.fixture
def pids() -> Iterator[PidTracker]:
    """Record with ``pids.add(pid)``; every recorded pid still alive afterwards is killed."""
    tracker = PidTracker()
    try:
        yield tracker
    finally:
        tracker.kill_all()


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail the test if a thread it started is still running shortly after it ends."""
    before = set(threading.enumerate())
    yield

    def extra() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    try:
        wait_until(lambda: not extra(), timeout=5, what="threads to end")
    except AssertionError:
        pytest.fail(f"threads leaked: {[t.name for t in extra()]}")
