"""GNU screen sessions: start, list, find, quit, attach -- by exact name.

Facts this relies on (screen 4.09, measured): ``screen -ls`` exits 1 when there are no
sessions, so its *output* is parsed, never its exit code. ``-S NAME`` matches session names by
*prefix* (``-S job1`` quits ``job10`` when ``job1`` is gone), so every command aimed at one
session uses its full ``PID.NAME``. Each socket in the socket folder is named ``PID.NAME``,
which gives a session lookup without running screen at all.

A private ``screen_dir`` (exported as SCREENDIR) keeps the daemon's sessions apart from the
user's others and lets tests clean up only their own; ``attach`` must use the same folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from gpu_scheduler.adapters import processes
from gpu_scheduler.errors import LaunchError

SESSION_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, NUL included
_LS_LINE = re.compile(r"^\s+(\d+)\.(\S+)\s+(.*)$")
_LS_FOLDER = re.compile(r"Sockets? (?:found )?in (.+?)\.?\s*$", re.MULTILINE)


def parse_screen_ls(text: str) -> dict[str, int]:
    """Session name -> screen pid from ``screen -ls`` output; dead sessions are left out."""
    sessions: dict[str, int] = {}
    for line in text.splitlines():
        match = _LS_LINE.match(line)
        if match and "(Dead" not in match.group(3):
            sessions[match.group(2)] = int(match.group(1))
    return sessions


class ScreenSessions:
    """The screen sessions in one socket folder (``screen_dir``, else screen's default)."""

    def __init__(self, screen_dir: Path | None = None, screen_exe: str = "screen") -> None:
        self.screen_dir = screen_dir
        self.screen_exe = screen_exe
        self._env = dict(os.environ)
        if screen_dir is not None:
            _make_private_dir(screen_dir)
            self._env["SCREENDIR"] = str(screen_dir)
        self._socket_dir: Path | None = screen_dir

    def env(self) -> dict[str, str]:
        """The environment for running screen against these sessions (has SCREENDIR)."""
        return dict(self._env)

    def _run(self, *args: str, want_stdout: bool = True) -> subprocess.CompletedProcess[str]:
        """Run screen; ``want_stdout=False`` saves ~1 ms (one pipe, no second reader)."""
        try:
            return subprocess.run(
                [self.screen_exe, *args],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if want_stdout else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=30,
                check=False,
            )
        except FileNotFoundError:
            raise LaunchError(
                f"GNU screen not found ({self.screen_exe}); install it: sudo apt-get install -y screen"
            ) from None
        except subprocess.TimeoutExpired:
            raise LaunchError(f"`screen {' '.join(args)}` did not answer in 30 s") from None

    def list(self) -> dict[str, int]:
        """Live session name -> screen (server) pid."""
        result = self._run("-ls")
        if self._socket_dir is None:
            match = _LS_FOLDER.search(result.stdout)
            if match:
                self._socket_dir = Path(match.group(1))
        return parse_screen_ls(result.stdout)

    def socket_dir(self) -> Path | None:
        """The folder holding the sessions' sockets (asks screen once when not configured)."""
        if self._socket_dir is None:
            self.list()
        return self._socket_dir

    def find(self, name: str) -> int | None:
        """The screen pid of session ``name``, from the socket folder (no screen process);
        falls back to ``screen -ls`` when the folder is unknown."""
        folder = self.socket_dir()
        if folder is None:
            return self.list().get(name)
        try:
            entries = os.listdir(folder)
        except FileNotFoundError:
            return None
        for entry in entries:
            pid, _, rest = entry.partition(".")
            if rest == name and pid.isdigit():
                return int(pid)
        return None

    def exists(self, name: str) -> bool:
        return name in self.list()

    def quit(self, name: str, pid: int | None = None) -> bool:
        """End session ``name`` (its window gets SIGHUP); False when there was none.
        ``pid`` (the screen pid, if known) saves looking it up."""
        pid = pid if pid is not None else self.list().get(name)
        if pid is None:
            return False
        return self._run("-S", f"{pid}.{name}", "-X", "quit").returncode == 0

    def rename(self, pid: int, name: str, new_name: str, timeout_s: float = 5.0) -> None:
        """Rename session ``PID.NAME`` to ``new_name`` and return once its socket has the new
        name (``screen -X`` only delivers the command: the server renames a moment later,
        usually before the client has returned). LaunchError if that does not happen."""
        done = self._run("-S", f"{pid}.{name}", "-X", "sessionname", new_name, want_stdout=False)
        if done.returncode != 0:
            detail = done.stderr.strip() or f"exit {done.returncode}"
            raise LaunchError(f"cannot rename screen session {pid}.{name} to {new_name}: {detail}")
        deadline = time.monotonic() + timeout_s
        delay = 0.0002
        while self.find(new_name) != pid:
            if not processes.is_alive(pid, None) or time.monotonic() > deadline:
                raise LaunchError(
                    f"screen session {pid}.{name} did not take the name {new_name}"
                    + ("" if processes.is_alive(pid, None) else " (it ended)")
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.005)

    def check_new(self, name: str) -> None:
        """Raise LaunchError unless a session ``name`` could be started now."""
        if not SESSION_NAME.fullmatch(name):
            raise LaunchError(
                f"invalid session name {name!r}: use letters, digits, '_', '-' and '.' only"
            )
        folder = self.socket_dir()
        if folder is not None and len(str(folder)) + len(name) + 9 > _MAX_SOCKET_PATH:
            raise LaunchError(f"session name too long for a screen socket in {folder}")
        if self.find(name) is not None:
            raise LaunchError(f"a screen session named {name} already exists")

    def start(
        self,
        name: str,
        command: list[str],
        timeout_s: float = 10.0,
        ended: Callable[[], tuple[int, float] | None] = lambda: None,
    ) -> tuple[int, float]:
        """Run ``command`` in a new detached session; its window process's (pid, create time).

        ``screen -dmS`` returns before the session is fully up, so this polls (from 0.25 ms,
        growing to 5 ms) the socket folder for ``PID.NAME``, then /proc for that screen's
        child: the window process, whose pid and create time stay the same through its exec.
        That is 1-2 ms after screen returns. ``ended()`` is asked each round for a command
        that already ran and exited unseen (it knows that process's pid and create time).
        Raises LaunchError when screen is missing or fails, or no window appears in time.
        """
        earliest_ns = processes.boot_clock_ns()
        done = self._run("-dmS", name, *command, want_stdout=False)
        if done.returncode != 0:
            raise LaunchError(f"screen -dmS failed (exit {done.returncode}): {done.stderr.strip()}")
        deadline = time.monotonic() + timeout_s
        delay = 0.00025
        server: int | None = None
        while True:
            server = server or self.find(name)
            if server is not None:
                before_ns = processes.boot_clock_ns()
                child = _first_child(server)
                if child is None:
                    earliest_ns = before_ns  # the window process is forked after this
                else:
                    latest_ns = processes.boot_clock_ns()
                    started = processes.start_time_between(child, earliest_ns, latest_ns)
                    if started is not None:
                        return child, started
            gone = ended()
            if gone is not None:
                return gone
            if server is not None and not processes.is_alive(server, None):
                raise LaunchError(f"screen session {name} ended before its command started")
            if time.monotonic() > deadline:
                raise LaunchError(f"screen session {name}: no window after {timeout_s:g} s")
            time.sleep(delay)
            delay = min(delay * 1.25, 0.005)

    def attach_argv(self, name: str) -> list[str]:
        """The command a user runs to watch a job live (with ``env()`` as environment).
        Uses ``PID.NAME`` when the session is found, so a prefix cannot pick another one."""
        pid = self.find(name)
        return [self.screen_exe, "-r", f"{pid}.{name}" if pid is not None else name]


def _first_child(pid: int) -> int | None:
    """A child of ``pid``: from /proc (cheap), else psutil's scan of every process."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            pids = f.read().split()
        return int(pids[0]) if pids else None
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return None
    except OSError:
        pass
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return None
    return children[0].pid if children else None


def _make_private_dir(path: Path) -> None:
    """Create the socket folder with mode 0700, as screen insists on."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
