"""The CLI -> daemon control channel: a Unix domain socket in a private folder.

Why a Unix socket: local only, no port, millisecond answers, and the kernel says who calls.
Three layers keep other users out: the folder is 0700 and must be ours, the socket is 0600,
and on Linux each peer's uid is checked with ``SO_PEERCRED`` (root is allowed too).

Protocol: one request per connection; the client sends one JSON object and a newline (at most
``MAX_REQUEST_BYTES``), the server answers with one JSON object line and closes. Anything a
client can get wrong (not JSON, not an object, too long, silent for ``REQUEST_TIMEOUT_S``), or
an exception in the handler, gets ``{"ok": false, "error": ...}`` and the server goes on.
Connections are served one at a time, so the handler must be quick (it hands the command to
the daemon loop and waits for the answer); a connect-and-hang-up probe costs nothing.

Single instance: the server also holds an ``flock`` on ``<socket>.lock`` while it runs, else
two daemons starting at once could both find the socket stale and the second would unlink
the first's. The lock file stays on stop (removing it would reopen that race).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_scheduler.errors import ControlError

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 16 * 1024 * 1024  # a status answer can be big; a runaway one is a bug
REQUEST_TIMEOUT_S = 2.0  # a client must deliver its whole request within this
_PROBE_TIMEOUT_S = 0.5
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _BadRequest(Exception):
    """A request the server answers with an error (internal: never leaves this module)."""


def _check_path_length(path: Path) -> None:
    size = len(os.fsencode(path))
    if size > _UNIX_PATH_MAX:
        raise ControlError(
            f"control socket path too long ({size} bytes, the limit is {_UNIX_PATH_MAX}): {path}"
        )


def _ensure_private_folder(folder: Path) -> None:
    """Create ``folder`` with mode 0700, or check that the existing one is ours and not
    writable by group or others (else another user could swap the socket under us)."""
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(folder, 0o700)  # mkdir's mode is filtered through the umask
        return
    uid = os.geteuid()
    link = os.lstat(folder)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (uid, 0):
        raise ControlError(f"control folder {folder} is a symlink owned by uid {link.st_uid}")
    st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"control folder {folder} exists and is not a folder")
    if st.st_uid != uid:
        raise ControlError(
            f"control folder {folder} is owned by uid {st.st_uid}, not by you (uid {uid})"
        )
    if st.st_mode & 0o022:
        raise ControlError(
            f"control folder {folder} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {folder}"
        )


def _take_lock(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ControlError(f"another daemon is already running (it holds {lock_path})") from None
    return fd


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket file nobody answers on; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    if is_daemon_listening(path):
        raise ControlError(f"another daemon is already listening on {path}")
    logger.info("removing stale control socket %s", path)
    path.unlink(missing_ok=True)


def _peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's uid, None where the OS cannot tell (non-Linux: there the
    0700 folder and 0600 socket are the guard), -1 if the query fails (deny)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        _pid, uid, _gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size)
        )
    except (OSError, struct.error):
        return -1
    return uid


def _error(message: str) -> bytes:
    return (json.dumps({"ok": False, "error": message}) + "\n").encode()


class ControlServer:
    """Serves control requests on ``socket_path`` until stopped.

    ``handler(request) -> reply`` gets the parsed JSON object and returns a JSON-serialisable
    dict. It runs on the server thread, one request at a time. It may call ``stop()`` (for
    the ``stop`` command): the reply is still sent, then the server shuts down.
    """

    def __init__(self, socket_path: Path, handler: Callable[[dict], dict]) -> None:
        self.socket_path = Path(socket_path)
        self._handler = handler
        self._own_uid = os.geteuid()
        self._allowed_uids = frozenset({self._own_uid, 0})  # root may always ask
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: socket.socket | None = None  # write end; the server thread owns the rest

    def start(self) -> None:
        """Prepare the folder, take the lock, clear a stale socket, bind, serve. Raises
        ControlError if the folder is unsafe or another daemon is running."""
        with self._mutex:
            if self._thread is not None:
                raise RuntimeError("ControlServer already started")
            path = self.socket_path
            _check_path_length(path)
            _ensure_private_folder(path.parent)
            lock_fd = _take_lock(path.with_name(path.name + ".lock"))
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                _remove_stale_socket(path)
                listener.bind(os.fspath(path))
                os.chmod(path, 0o600)
                bound_ino = os.stat(path).st_ino
                listener.listen(64)
                listener.setblocking(False)
                wake_r, wake_w = socket.socketpair()
            except BaseException:
                listener.close()
                os.close(lock_fd)
                raise
            self._stop = threading.Event()
            self._wake = wake_w
            self._thread = threading.Thread(
                target=self._serve,
                args=(listener, wake_r, wake_w, lock_fd, bound_ino, self._stop),
                name="gpu-scheduler-control",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving, remove the socket file, join the thread. Idempotent. From inside the
        handler it only signals: the thread cleans up after sending that reply."""
        with self._mutex:
            thread, self._thread = self._thread, None
            wake, self._wake = self._wake, None
            self._stop.set()
            if wake is not None:
                try:
                    wake.send(b"x")
                except OSError:
                    pass  # already closed by a server thread that is on its way out
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # --- server thread ---------------------------------------------------------------------

    def _serve(
        self,
        listener: socket.socket,
        wake_r: socket.socket,
        wake_w: socket.socket,
        lock_fd: int,
        bound_ino: int,
        stop: threading.Event,
    ) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in selector.select():
                    if key.fileobj is wake_r or stop.is_set():
                        return
                    self._accept_one(listener, stop)
        finally:
            selector.close()
            listener.close()
            wake_r.close()
            wake_w.close()
            try:
                if os.stat(self.socket_path).st_ino == bound_ino:  # never unlink a successor's
                    self.socket_path.unlink()
            except OSError:
                pass  # already gone (folder removed?): nothing left to clean
            os.close(lock_fd)

    def _accept_one(self, listener: socket.socket, stop: threading.Event) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. EMFILE: back off instead of spinning on the selector
            logger.warning("control socket accept failed: %s", exc)
            stop.wait(0.1)
            return
        with conn:
            try:
                reply = self._handle_connection(conn)
                if reply is not None:
                    conn.settimeout(REQUEST_TIMEOUT_S)
                    conn.sendall(reply)
            except OSError as exc:  # the client went away; its problem, not ours
                logger.debug("control client dropped: %s", exc)
            except Exception:  # a bug here must not end the daemon's only control channel
                logger.exception("control connection failed")

    def _handle_connection(self, conn: socket.socket) -> bytes | None:
        uid = _peer_uid(conn)
        if uid is not None and uid not in self._allowed_uids:
            logger.warning("control request from uid %s refused", uid)
            return _error(
                f"permission denied: uid {uid} may not control a daemon run by uid {self._own_uid}"
            )
        try:
            raw = self._read_request(conn)
        except _BadRequest as exc:
            logger.warning("bad control request: %s", exc)
            return _error(str(exc))
        if raw is None:
            return None  # connected and left without a word: a liveness probe
        return self._answer(raw)

    def _read_request(self, conn: socket.socket) -> bytes | None:
        """One request line without its newline; None if the client closed without sending
        anything. A request cut short by EOF (no newline) is taken as complete."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        try:
            return _recv_line(conn, deadline, MAX_REQUEST_BYTES)
        except TimeoutError:
            raise _BadRequest(f"no complete request within {REQUEST_TIMEOUT_S:g} s") from None
        except _TooLong:
            raise _BadRequest(
                f"request too long (the limit is {MAX_REQUEST_BYTES} bytes)"
            ) from None

    def _answer(self, raw: bytes) -> bytes:
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # [[[[... recurses
            logger.warning("bad control request: not JSON: %r", exc)
            return _error(f"malformed request: not JSON ({exc!r})")
        if not isinstance(request, dict):
            kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            kind = kinds.get(type(request), "a number")  # what is left in JSON
            return _error(f"malformed request: expected a JSON object, got {kind}")
        try:
            reply = self._handler(request)
            if not isinstance(reply, dict):
                raise TypeError(f"handler returned {type(reply).__name__}, not a dict")
            return (json.dumps(reply) + "\n").encode()
        except Exception as exc:  # the handler is the daemon's code: report it, keep serving
            logger.exception("control request %.200r failed", request)
            return _error(f"internal error: {str(exc) or type(exc).__name__}")


def _connect(sock: socket.socket, path: Path, deadline: float) -> None:
    """Connect, retrying on EAGAIN: a full backlog means the daemon is busy, not absent."""
    while True:
        try:
            sock.connect(os.fspath(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError("control socket backlog full") from None
            time.sleep(0.01)


def is_daemon_listening(socket_path: Path) -> bool:
    """True if something accepts connections there (a connect-and-hang-up: costs nothing)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_PROBE_TIMEOUT_S)
        try:
            _connect(sock, socket_path, time.monotonic() + _PROBE_TIMEOUT_S)
        except OSError:
            return False
    return True


def send_command(socket_path: Path, command: dict, *, timeout_s: float = 2.0) -> dict:
    """Send one command and return the daemon's reply (which may say ``"ok": false``).

    Raises ControlError when no daemon runs there, the socket is not ours, or no complete
    answer comes within ``timeout_s`` (which bounds the whole exchange, not each step).
    """
    path = Path(socket_path)
    payload = (json.dumps(command) + "\n").encode()
    if len(payload) > MAX_REQUEST_BYTES:
        raise ControlError(f"command too long (the limit is {MAX_REQUEST_BYTES} bytes)")
    _check_path_length(path)
    deadline = time.monotonic() + timeout_s
    too_slow = f"the daemon did not answer within {timeout_s:g} s (control socket {path})"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            _connect(sock, path, deadline)
        except (FileNotFoundError, ConnectionRefusedError):  # missing, or stale: nobody home
            raise ControlError(f"no daemon is running (no control socket at {path})") from None
        except PermissionError:
            raise ControlError(
                f"permission denied on the control socket {path} (a daemon of another user?)"
            ) from None
        except TimeoutError:
            raise ControlError(too_slow) from None
        except OSError as exc:
            raise ControlError(f"cannot reach the daemon at {path}: {exc}") from None
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon hung up early, perhaps after refusing us: read what it said
        except OSError as exc:
            lost = f"lost the connection to the daemon at {path}: {exc}"
            raise ControlError(too_slow if isinstance(exc, TimeoutError) else lost) from None
        return _read_reply(sock, deadline, too_slow, path)


def _read_reply(sock: socket.socket, deadline: float, too_slow: str, path: Path) -> dict:
    try:
        line = _recv_line(sock, deadline, MAX_REPLY_BYTES)
    except TimeoutError:
        raise ControlError(too_slow) from None
    except _TooLong:
        raise ControlError(
            f"the daemon's answer is too long (over {MAX_REPLY_BYTES} bytes)"
        ) from None
    except OSError as exc:
        raise ControlError(f"lost the connection to the daemon at {path}: {exc}") from None
    if line is None:
        raise ControlError(f"the daemon at {path} closed the connection without answering")
    try:
        reply: Any = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"garbled answer from the daemon at {path}: {exc}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"garbled answer from the daemon at {path}: not a JSON object")
    return reply


class _TooLong(Exception):
    """A line longer than its limit (request or reply)."""


def _recv_line(sock: socket.socket, deadline: float, limit: int) -> bytes | None:
    """Bytes up to the first newline (without it), read before ``deadline``, for both ends of
    the channel. None when the peer closed without sending anything; a line cut short by EOF
    counts as complete. Raises TimeoutError at the deadline, _TooLong past ``limit`` bytes."""
    buf = bytearray()
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if not buf:
                return None
            break
        buf += chunk
        if len(buf) > limit and b"\n" not in buf[: limit + 1]:
            raise _TooLong
    line = bytes(buf).split(b"\n", 1)[0]
    if len(line) > limit:
        raise _TooLong
    return line
