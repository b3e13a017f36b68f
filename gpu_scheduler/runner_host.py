"""The warm runner host (direct mode): fork each job's runner from an interpreter already up;
and ``wait_in_window``, the screen-mode counterpart (a warm window: see ``adapters/screen_warm``).

Why: starting ``python -I -S`` for every job's runner costs 12-20 ms of CPU on the 2-core test
machine -- most of a trivial job's cost, and the bulk of edit-to-launch latency in direct mode.
A fork of a small interpreter that has already imported the runner costs well under 1 ms.
``DirectLauncher`` starts one host (``python -I -S -c <import runner_host> REQ_FD REPLY_FD``)
and sends it one request line per job; the host forks, the child becomes that job's runner
exactly as if started by ``subprocess.Popen(runner_argv(...), start_new_session=True,
stdin=DEVNULL, stdout=DEVNULL, stderr=<log>)``: a new session, the daemon's environment and
working directory as of the launch, stderr appended to the job's log, then ``runner.main``.

Protocol (one request at a time): the launcher writes ``{"spec", "log", "record", "job_id",
"attempt", "session", "cwd", "env"?}`` as one JSON line; the host answers ``<pid>\\n`` (or
``error <text>\\n`` when it cannot fork). The host writes the answer BEFORE it lets the child
go (a byte on a pipe only the two of them hold), so:

* no answer read by the launcher => the child never got its go (the host died or hung; once it
  is gone the child reads EOF and exits having done nothing): the launcher may start the
  runner another way without the job ever running twice;
* an answer read => the launcher follows that pid, as it would a runner it started itself.

Before it reads its spec, a child writes a ``starting`` record (``runner_pid``,
``runner_started_at``): a forked runner's command line is the host's, so recovery cannot find
it by its spec the way it finds a runner started with ``runner_argv``; the record names it
instead (``daemon_records``: a record with a runner pid is followed by that pid). As the
record is written before the spec is opened, a recovery that fences the spec and then finds
no record knows that no child can have read it.

The host exits when its request pipe closes (the daemon closed it, or died); runners it
started live on (they are in their own sessions), as runners started by the daemon do.
Stdlib only, single-threaded (forking a threaded process is unsafe): it reaps its children on
SIGCHLD, through a wake-up pipe.
"""

from __future__ import annotations

import fcntl  # noqa: F401 -- imported here once, not in every runner (runner._configure_terminals)
import os
import select
import sys
import termios  # noqa: F401

from gpu_scheduler import runner
from gpu_scheduler.runner_records import loads, own_start_time, write_all, write_record

try:
    import _signal as signal
except ImportError:  # not CPython
    import signal  # type: ignore[no-redef]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

NO_GO_EXIT = 0  # a child whose host never let it go: it did nothing
# A waiting warm window reads again at least this often (a FIFO's hangup is not always
# reported to a reader that opened it while no writer had yet: Linux fifo_open).
_WINDOW_RECHECK_S = 5.0


def serve(requests: int, replies: int) -> None:
    """Answer launch requests on fd ``requests`` (replies on fd ``replies``) until EOF."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _on_child)
    own = (requests, replies, wake_r, wake_w)
    pending = b""
    while True:
        ready = select.select([requests, wake_r], [], [])[0]
        if wake_r in ready:
            while _read_some(wake_r):
                pass
            _reap()
        if requests in ready:
            data = os.read(requests, 65536)
            if not data:
                return  # the daemon closed the pipe or died: the runners live on
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not _fork_runner(loads(line.decode()), replies, own):
                    return


def _on_child(signum: int, frame: object) -> None:
    """(The wake-up fd does the work: SIGCHLD's default action would not wake ``select``.)"""


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _fork_runner(request: Mapping[str, Any], replies: int, own: tuple[int, ...]) -> bool:
    """Fork one runner and answer with its pid; False when the daemon can no longer hear us."""
    go_r, go_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(go_r)
        os.close(go_w)
        return _answer(replies, f"error cannot fork a runner: {exc.strerror}")
    if pid == 0:
        os.close(go_w)
        _child(request, go_r, own)
    os.close(go_r)
    answered = _answer(replies, str(pid))
    if answered:
        os.write(go_w, b"g")
    os.close(go_w)  # unanswered: the child reads EOF and exits having done nothing
    return answered


def _answer(replies: int, text: str) -> bool:
    try:
        write_all(replies, text.encode() + b"\n")
    except OSError:
        return False
    return True


def _child(request: Mapping[str, Any], go: int, own: tuple[int, ...]) -> NoReturn:
    """Become the job's runner (see the module docstring); never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in own:
            os.close(fd)
        os.setsid()
        if os.read(go, 1) != b"g":
            os._exit(NO_GO_EXIT)
        os.close(go)
        _stdio(str(request["log"]))
        code = become_runner(request)
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # as an uncaught exception in a runner of its own would end
        _report_crash()
    runner.exit_now(code)


def become_runner(request: Mapping[str, Any]) -> int:
    """Take the request's environment and directory, claim the attempt with a ``starting``
    record (before the spec is read: see the module docstring), and run it."""
    env = request.get("env")
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if request.get("cwd"):
        os.chdir(request["cwd"])
    claim = {
        "state": "starting",
        "job_id": request["job_id"],
        "attempt": request["attempt"],
        "session": request.get("session"),
        "runner_pid": os.getpid(),
        "runner_started_at": own_start_time(),
    }
    write_record(request["record"], claim, durable=False)
    return runner.main([str(request["spec"])])


def wait_in_window(channel: str) -> NoReturn:
    """A warm screen window (``adapters/screen_warm.py``): wait for one request line on the
    FIFO ``channel``, then become that job's runner right here, on this window's terminal.

    The daemon opened the FIFO before starting us and is its only writer, so end of file
    before a whole line (the daemon closed it, retired us, or died -- even before we looked)
    means no job was handed over: exit having done nothing, and the session ends with us.
    The open does not block (a blocking one would wait forever for a writer that is gone)."""
    code = NO_GO_EXIT
    try:
        fd = os.open(channel, os.O_RDONLY | os.O_NONBLOCK)
        data = b""
        while b"\n" not in data:
            try:
                chunk = os.read(fd, 65536)  # b"" once no writer is left: the daemon is gone
            except BlockingIOError:  # the daemon is there, nothing yet: wait for a change
                select.select([fd], [], [], _WINDOW_RECHECK_S)
                continue
            if not chunk:
                os._exit(NO_GO_EXIT)
            data += chunk
        os.close(fd)
        request = loads(data.split(b"\n", 1)[0].decode())
        if request.get("sty"):  # screen's name for this session now (it was renamed)
            os.environ["STY"] = str(request["sty"])
        code = become_runner(request)
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        _report_crash()
        code = 1
    runner.exit_now(code)


def _report_crash() -> None:
    try:
        sys.excepthook(*sys.exc_info())
    except BaseException:  # noqa: S110 - nothing left to report it with
        pass


def _stdio(log_path: str) -> None:
    """stdin and stdout /dev/null, stderr appended to the job's log (/dev/null if it cannot)."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError:
        log = os.dup(null)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
