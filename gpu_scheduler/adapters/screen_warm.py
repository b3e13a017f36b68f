"""Warm screen windows: detached sessions whose runner is already up, waiting for a job.

Why: in screen mode a job's runner must be its session's own window process (the window's
terminal is the runner's: ^C, resizes, hangups, ``attach``), so it cannot be forked from the
warm runner host as in direct mode, and starting its interpreter (~17 ms on the 2-core test
machine) was most of what the scheduler added to a launch. ``WarmWindows`` keeps ``count``
sessions ready, each running ``runner_host.wait_in_window(FIFO)``. A launch renames one to the
job's session name (``screen -X sessionname``) and then writes the runner's request to its
FIFO: the window becomes the job's runner at once, with the host children's record protocol
(a ``starting`` record naming its pid before it reads the spec). A replacement is started in
the background a moment later, off the launch's path.

Never twice, never lost: only the daemon holds a FIFO's write end (opened read-write before
the window starts, not inherited by anything it starts), so when the daemon closes it, exits or
dies, a waiting window reads end of file and exits having run nothing (its session ends with
it). The rename comes before the request: a rename that fails, or a window found dead after it,
has started nothing, and the launcher starts the job the cold way. A window that dies in the
instant between that check and reading its request leaves a runner gone without a record,
which the daemon requeues, as any runner that dies at its start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.screen import ScreenSessions
from gpu_scheduler.errors import LaunchError

log = logging.getLogger("gpu_scheduler.launcher")

WARM_NAME = "gpu-scheduler-warm"  # + "-<daemon pid>-<n>"; job sessions are "<prefix>_..."
REFILL_DELAY_S = 0.25  # after a launch, before starting a replacement: the job starts first
_OPEN_TIMEOUT_S = 10.0  # a window that has not opened its FIFO by then is given up
_MAX_FAILURES = 3  # in a row: stop keeping windows warm (launches stay cold, and work)


@dataclass
class WarmWindow:
    """One ready session: its name now, its screen (server) pid, the window process that
    will be the runner (pid and create time), and the write end of its FIFO."""

    name: str
    server: int
    pid: int
    started: float
    fd: int


class WarmWindows:
    """Up to ``count`` warm windows in ``sessions``, kept from the first ``take`` on (so a
    launcher that never launches starts none)."""

    def __init__(
        self,
        sessions: ScreenSessions,
        run_dir: Path,
        command: Callable[[Path], list[str]],
        count: int = 1,
        *,
        refill_delay_s: float = REFILL_DELAY_S,
    ) -> None:
        self.sessions = sessions
        self.run_dir = Path(run_dir)
        self.command = command
        self.count = count
        self.refill_delay_s = refill_delay_s
        self._ready: list[WarmWindow] = []
        self._cond = threading.Condition()
        self._closed = False
        self._failures = 0
        self._serial = 0
        self._thread: threading.Thread | None = None
        _remove_stale_fifos(self.run_dir)

    def take(self) -> WarmWindow | None:
        """A live warm window, now the caller's (None when none is ready); a replacement
        follows in the background."""
        if self.count <= 0:
            return None
        with self._cond:
            if self._closed:
                return None
            self._start_refilling()
            window = None
            while self._ready and window is None:
                candidate = self._ready.pop(0)
                if processes.is_alive(candidate.pid, candidate.started):
                    window = candidate
                else:
                    _close(candidate)
            self._cond.notify_all()
            return window

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """Start warming (if not yet) and wait until a window is ready; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._start_refilling()
            while not self._ready and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    return False
                self._cond.wait(min(left, 0.05))
            return bool(self._ready)

    def _start_refilling(self) -> None:  # (with the lock held)
        if self.count > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._refill, name="warm-windows", daemon=True)
            self._thread.start()

    def hand_over(self, window: WarmWindow, session: str, request_line: bytes) -> None:
        """Rename ``window`` to ``session``, then give it the runner's request; LaunchError
        (the window is then ended) when it cannot take the job -- nothing was started."""
        try:
            self.sessions.rename(window.server, window.name, session)
            window.name = session
            if not processes.is_alive(window.pid, window.started):  # (we hold a read end too:
                raise LaunchError("its window has exited")  # a write to a dead one succeeds)
            view = memoryview(request_line)
            while view:
                view = view[os.write(window.fd, view) :]
        except (LaunchError, OSError) as exc:
            self.discard(window)
            raise LaunchError(
                f"warm screen window {window.name} could not take the job: {exc}"
            ) from None
        _close(window)  # the window has its line: nothing more will come

    def discard(self, window: WarmWindow) -> None:
        """End a window that will not run a job, and its screen (whatever its name is by now:
        a rename may land late), waiting a little for both to be gone."""
        _close(window)
        with contextlib.suppress(OSError):
            if processes.is_alive(window.pid, window.started):
                os.kill(window.pid, signal.SIGKILL)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):  # screen exits with its window
            if sig is not None:
                with contextlib.suppress(OSError):
                    os.kill(window.server, sig)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if not processes.is_alive(window.server, None):
                    return
                time.sleep(0.005)

    def close(self) -> None:
        """Stop refilling and let every waiting window go (each reads EOF and exits)."""
        with self._cond:
            self._closed = True
            ready, self._ready = self._ready, []
            self._cond.notify_all()
        for window in ready:
            _close(window)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)  # (one starting now is let go as soon as it is up)

    # ------------------------------------------------------------------ the refill thread

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self.count:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(self.refill_delay_s)  # (a launch's job gets the CPU first)
            window = self._start_one()
            with self._cond:
                if window is not None and not self._closed:
                    self._ready.append(window)
                    self._failures = 0
                    self._cond.notify_all()
                    continue
                if window is not None:  # closed while it started: let it go
                    _close(window)
                    return
                self._failures += 1
                if self._failures >= _MAX_FAILURES:
                    log.warning(
                        "screen mode: %d warm windows in a row failed to start; "
                        "launching each job with a new screen session from now on",
                        self._failures,
                        extra={"event": "warm_windows"},
                    )
                    return

    def _start_one(self) -> WarmWindow | None:
        self._serial += 1
        name = f"{WARM_NAME}-{os.getpid()}-{self._serial}"
        fifo = self.run_dir / f"{name}.fifo"
        try:
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo, 0o600)
            # Open before the window exists (read-write: never blocks), so that from its very
            # first look the window finds a writer while we live and none once we are gone.
            fd = os.open(fifo, os.O_RDWR)  # (not inheritable)
        except OSError as exc:
            log.warning("cannot create %s: %s", fifo, exc, extra={"event": "warm_windows"})
            fifo.unlink(missing_ok=True)
            return None
        try:
            pid, started = self.sessions.start(name, self.command(fifo), _OPEN_TIMEOUT_S)
            self._wait_opened(fifo, pid, started)
            server = self.sessions.find(name)
            if server is None:
                raise LaunchError(f"session {name} is gone")
        except LaunchError as exc:
            os.close(fd)  # (a window that is still there reads EOF and exits)
            log.warning("warm screen window: %s", exc, extra={"event": "warm_windows"})
            return None
        finally:
            fifo.unlink(missing_ok=True)  # both ends are open (or never will be): no litter
        return WarmWindow(name, server, pid, started, fd)

    def _wait_opened(self, fifo: Path, pid: int, started: float) -> None:
        """Until the window has the FIFO open (its Python is up and waiting); LaunchError if
        it dies, takes too long, or the launcher is closed meanwhile."""
        deadline = time.monotonic() + _OPEN_TIMEOUT_S
        delay = 0.0005
        while not _has_open(pid, fifo):
            if not processes.is_alive(pid, started):
                raise LaunchError(f"its window (pid {pid}) exited before it was ready")
            if self._closed or time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                raise LaunchError(f"its window (pid {pid}) was not ready in time")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (from /proc; True where /proc cannot tell)."""
    folder = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(folder)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    target = os.path.realpath(path)
    for fd in fds:
        try:
            if os.readlink(f"{folder}/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def _close(window: WarmWindow) -> None:
    """Close the window's FIFO end once (a second close could hit a reused descriptor)."""
    fd, window.fd = window.fd, -1
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _remove_stale_fifos(run_dir: Path) -> None:
    """FIFOs a daemon killed mid-start left behind (its windows have exited: no writer)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(run_dir):
            pid = entry.name[len(WARM_NAME) + 1 :].split("-")[0]
            if entry.name.startswith(WARM_NAME) and entry.name.endswith(".fifo") and pid.isdigit():
                if not processes.is_alive(int(pid), None):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
