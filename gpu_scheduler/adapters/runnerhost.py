"""The warm runner host's other end: start one ``runner_host`` process, ask it for runners.

``RunnerHost`` is what ``DirectLauncher`` talks to (see ``gpu_scheduler/runner_host.py`` for
the protocol and why it is safe): one request line at a time (the caller holds a lock), each
answered with the pid of a runner the host forked, or ``HostGone`` -- after which the host is
dead and no child of it can run the job, so starting the runner another way is safe.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from gpu_scheduler.errors import LaunchError

# As launchers.runner_argv starts a runner: stdlib only, -I -S, the package appended to sys.path.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
_HOST_CODE = (
    f"import sys; sys.path.append({str(_PACKAGE_PARENT)!r}); "
    "from gpu_scheduler.runner_host import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
)
HOST_ANSWER_TIMEOUT_S = 10.0  # a host that has not answered by then is replaced


class HostGone(Exception):  # noqa: N818 - a state, not an error
    """The host did not answer: no runner of it can run the job (see runner_host)."""


class RunnerHost:
    """One warm ``runner_host`` process and its two pipes; one request at a time (the caller
    holds a lock). ``start`` returns the forked runner's pid or raises HostGone, after which
    the host is dead and no child of it can run the job (so starting the runner another way
    is safe)."""

    def __init__(self, python_exe: str) -> None:
        req_r, self._requests = os.pipe()
        self._replies, rep_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [python_exe, "-I", "-S", "-c", _HOST_CODE, str(req_r), str(rep_w)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(req_r, rep_w),
                start_new_session=True,  # a ^C meant for the daemon is not the runners'
            )
        except OSError:
            os.close(self._requests)
            os.close(self._replies)
            raise
        finally:
            os.close(req_r)
            os.close(rep_w)
        self.env = dict(os.environ)  # what the host (and so each child) starts with
        self._pending = b""

    def start(self, request: dict[str, Any], timeout_s: float = HOST_ANSWER_TIMEOUT_S) -> int:
        if self.env != os.environ:  # the daemon's environment changed since: send it along
            request = {**request, "env": dict(os.environ)}
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._requests, view) :]
            answer = self._answer(time.monotonic() + timeout_s)
        except (OSError, HostGone):
            answer = self._last_answer()  # (it may have answered just before it went)
            if answer is None:
                raise HostGone from None
        if answer.startswith("error "):
            raise LaunchError(answer[6:])
        return int(answer)

    def _answer(self, deadline: float) -> str:
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise HostGone
            data = os.read(self._replies, 4096)
            if not data:
                raise HostGone
            self._pending += data
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def _last_answer(self) -> str | None:
        """End the host, then read what it wrote: an answer means its child may run."""
        self.close(wait_s=0.0)
        try:
            while True:
                data = os.read(self._replies, 4096)
                if not data:
                    break
                self._pending += data
        except OSError:
            pass
        if b"\n" not in self._pending:
            return None
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self._requests >= 0

    def close(self, wait_s: float = 1.0) -> None:
        """Close the request pipe (the host exits at EOF), and end it if it does not."""
        if self._requests >= 0:
            os.close(self._requests)
            self._requests = -1
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def release(self) -> None:
        """Close the reply pipe too (after ``close``)."""
        if self._replies >= 0:
            os.close(self._replies)
            self._replies = -1
