"""ControlServer and send_command over real Unix sockets in short private temp folders."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_scheduler.adapters.control import ControlServer, is_daemon_listening, send_command
from gpu_scheduler.errors import ControlError
from tests.helpers import wait_until


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder under /tmp: Unix socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="gs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(short_dir: Path) -> Path:
    return short_dir / "run" / "ctl.sock"


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert wait_until(lambda: set(threading.enumerate()) <= before, timeout=2.0), (
        f"leaked threads: {set(threading.enumerate()) - before}"
    )


def echo(request: dict) -> dict:
    if request.get("cmd") == "boom":
        raise RuntimeError("kaboom")
    if request.get("cmd") == "silent-boom":
        raise TimeoutError()  # what a daemon loop that does not answer in time raises
    return {"ok": True, "echo": request}


@pytest.fixture
def server(sock_path: Path, no_leaked_threads: None) -> Iterator[ControlServer]:
    srv = ControlServer(sock_path, echo)
    srv.start()
    yield srv
    srv.stop()


def raw_exchange(path: Path, data: bytes, *, close_write: bool = True) -> dict:
    """Send raw bytes as a misbehaving client would and parse the one-line answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        if data:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and hung up before reading everything
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\n" not in answer:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


def assert_still_serving(path: Path) -> None:
    assert send_command(path, {"cmd": "status-ping"}) == {
        "ok": True,
        "echo": {"cmd": "status-ping"},
    }


def test_round_trip(server: ControlServer, sock_path: Path) -> None:
    reply = send_command(sock_path, {"cmd": "pause-gpu", "gpu": "all"})
    assert reply == {"ok": True, "echo": {"cmd": "pause-gpu", "gpu": "all"}}
    assert is_daemon_listening(sock_path)


def test_no_daemon_is_a_clear_error(sock_path: Path) -> None:
    with pytest.raises(ControlError, match=r"no daemon is running \(no control socket at "):
        send_command(sock_path, {"cmd": "status-ping"})
    assert not is_daemon_listening(sock_path)


def test_stale_socket_file_is_reported_then_replaced(
    sock_path: Path, no_leaked_threads: None
) -> None:
    sock_path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # a crashed daemon: the file stays, nobody answers
    assert sock_path.exists() and not is_daemon_listening(sock_path)
    with pytest.raises(ControlError, match="no daemon is running"):
        send_command(sock_path, {"cmd": "status-ping"})
    srv = ControlServer(sock_path, echo)
    srv.start()
    try:
        assert_still_serving(sock_path)
    finally:
        srv.stop()


def test_second_server_is_refused_while_the_first_lives(
    server: ControlServer, sock_path: Path
) -> None:
    second = ControlServer(sock_path, echo)
    with pytest.raises(ControlError, match="another daemon"):
        second.start()
    second.stop()
    assert_still_serving(sock_path)


def test_live_socket_without_lock_is_not_taken_over(
    sock_path: Path, no_leaked_threads: None
) -> None:
    """Something else already listens there (say an older daemon): never unlink it."""
    sock_path.parent.mkdir(mode=0o700)
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(sock_path))
    squatter.listen(1)
    try:
        with pytest.raises(ControlError, match="already listening"):
            ControlServer(sock_path, echo).start()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        squatter.close()


def test_non_socket_file_at_the_path_is_not_removed(
    sock_path: Path, no_leaked_threads: None
) -> None:
    sock_path.parent.mkdir(mode=0o700)
    sock_path.write_text("precious\n")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(sock_path, echo).start()
    assert sock_path.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xfe garbage\n", "malformed request: not JSON"),
        (b"this is not json\n", "malformed request: not JSON"),
        (b'["cancel-job", 3]\n', "expected a JSON object, got an array"),
        (b"42\n", "expected a JSON object, got a number"),
        (b"[" * 60000 + b"\n", "malformed request: not JSON"),
        (b"{" + b" " * (70 * 1024) + b"}\n", "request too long"),
    ],
    ids=["binary", "text", "array", "number", "deeply-nested", "oversized"],
)
def test_malformed_requests_get_an_error_and_the_server_goes_on(
    server: ControlServer, sock_path: Path, data: bytes, expected: str
) -> None:
    reply = raw_exchange(sock_path, data)
    assert reply["ok"] is False
    assert expected in reply["error"]
    assert_still_serving(sock_path)


def test_oversized_command_is_refused_by_the_client(sock_path: Path) -> None:
    with pytest.raises(ControlError, match="command too long"):
        send_command(sock_path, {"cmd": "x", "pad": "y" * (64 * 1024)})


def test_silent_client_gets_an_error_and_the_server_goes_on(
    server: ControlServer, sock_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(sock_path))
        sock.sendall(b'{"cmd": "half')  # and then nothing, without closing
        start = time.monotonic()
        answer = sock.recv(4096)
        waited = time.monotonic() - start
    reply = json.loads(answer)
    assert reply["ok"] is False and "no complete request" in reply["error"]
    assert 1.0 < waited < 4.0
    assert_still_serving(sock_path)


def test_connect_and_hang_up_costs_nothing(server: ControlServer, sock_path: Path) -> None:
    for _ in range(20):
        assert is_daemon_listening(sock_path)
    assert_still_serving(sock_path)


def test_busy_daemon_with_a_full_backlog_is_not_reported_absent(
    sock_path: Path, no_leaked_threads: None
) -> None:
    """Regression: with a timeout set, connect() on a full Unix backlog fails at once with
    EAGAIN, which made a busy daemon look dead."""
    entered, release = threading.Event(), threading.Event()

    def slow(request: dict) -> dict:
        entered.set()
        release.wait(5.0)
        return {"ok": True}

    srv = ControlServer(sock_path, slow)
    srv.start()
    answers: list[object] = []

    def occupy() -> None:
        try:
            answers.append(send_command(sock_path, {"cmd": "x"}, timeout_s=5.0))
        except ControlError as exc:
            answers.append(exc)

    busy = threading.Thread(target=occupy)
    timer = threading.Timer(0.2, release.set)
    try:
        busy.start()
        assert entered.wait(5.0)
        queued = 0
        while queued < 1000:  # connections that hang up at once, queued behind the busy one
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.setblocking(False)
                try:
                    probe.connect(str(sock_path))
                except BlockingIOError:
                    break
            queued += 1
        assert queued < 1000, "the backlog never filled up"
        timer.start()
        assert is_daemon_listening(sock_path)
        busy.join()
        assert answers == [{"ok": True}]
    finally:
        release.set()
        busy.join()
        timer.cancel()
        if timer.ident is not None:
            timer.join()
        srv.stop()


def test_handler_exception_becomes_internal_error(
    server: ControlServer, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reply = send_command(sock_path, {"cmd": "boom"})
    assert reply == {"ok": False, "error": "internal error: kaboom"}
    assert "kaboom" in caplog.text
    reply = send_command(sock_path, {"cmd": "silent-boom"})
    assert reply == {"ok": False, "error": "internal error: TimeoutError"}
    assert_still_serving(sock_path)


def test_handler_returning_a_non_dict_is_an_internal_error(
    sock_path: Path, no_leaked_threads: None
) -> None:
    srv = ControlServer(sock_path, lambda request: ["not", "a", "dict"])  # type: ignore[arg-type,return-value]
    srv.start()
    try:
        reply = send_command(sock_path, {"cmd": "status-ping"})
        assert reply["ok"] is False and reply["error"].startswith("internal error:")
    finally:
        srv.stop()


def test_other_uid_is_refused(server: ControlServer, sock_path: Path) -> None:
    # a test cannot connect as another user (the 0700 folder stops it first), so shrink the
    # server's allowed set instead: the peer uid still comes from the kernel's SO_PEERCRED
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("no SO_PEERCRED on this platform")
    allowed = server._allowed_uids
    server._allowed_uids = frozenset({os.geteuid() + 4242})
    reply = send_command(sock_path, {"cmd": "stop"})
    assert reply["ok"] is False
    assert reply["error"].startswith(f"permission denied: uid {os.geteuid()} ")
    server._allowed_uids = allowed
    assert_still_serving(sock_path)


def test_slow_daemon_is_a_timeout_error(sock_path: Path, no_leaked_threads: None) -> None:
    release = threading.Event()

    def slow(request: dict) -> dict:
        release.wait(5.0)
        return {"ok": True}

    srv = ControlServer(sock_path, slow)
    srv.start()
    try:
        with pytest.raises(ControlError, match=r"did not answer within 0.3 s"):
            send_command(sock_path, {"cmd": "status-ping"}, timeout_s=0.3)
    finally:
        release.set()
        srv.stop()


def test_modes_are_private(server: ControlServer, sock_path: Path) -> None:
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_group_writable_folder_is_refused(short_dir: Path, no_leaked_threads: None) -> None:
    folder = short_dir / "shared"
    folder.mkdir()
    os.chmod(folder, 0o770)
    with pytest.raises(ControlError, match="writable by group or others"):
        ControlServer(folder / "ctl.sock", echo).start()
    assert not (folder / "ctl.sock").exists()


def test_folder_of_another_user_is_refused(short_dir: Path, no_leaked_threads: None) -> None:
    if os.geteuid() == 0:
        folder = short_dir / "theirs"
        folder.mkdir(mode=0o700)
        os.chown(folder, 65534, 65534)
        owner = 65534
    else:
        folder, owner = Path("/"), 0
    with pytest.raises(ControlError, match=f"owned by uid {owner}, not by you"):
        ControlServer(folder / "ctl.sock", echo).start()


def test_too_long_socket_path_is_a_clear_error(short_dir: Path) -> None:
    path = short_dir / ("x" * 120) / "ctl.sock"
    with pytest.raises(ControlError, match="path too long"):
        ControlServer(path, echo).start()
    with pytest.raises(ControlError, match="path too long"):
        send_command(path, {"cmd": "status-ping"})


def test_stop_leaves_no_thread_and_no_socket_and_is_idempotent(sock_path: Path) -> None:
    before = set(threading.enumerate())
    srv = ControlServer(sock_path, echo)
    srv.start()
    assert_still_serving(sock_path)
    srv.stop()
    assert set(threading.enumerate()) <= before
    assert not sock_path.exists()
    srv.stop()
    with pytest.raises(ControlError, match="no daemon is running"):
        send_command(sock_path, {"cmd": "status-ping"})


def test_restart_after_stop(sock_path: Path, no_leaked_threads: None) -> None:
    srv = ControlServer(sock_path, echo)
    for _ in range(2):
        srv.start()
        assert_still_serving(sock_path)
        srv.stop()


def test_stop_command_from_inside_the_handler(sock_path: Path, no_leaked_threads: None) -> None:
    holder: list[ControlServer] = []

    def handler(request: dict) -> dict:
        if request.get("cmd") == "stop":
            holder[0].stop()
        return {"ok": True}

    srv = ControlServer(sock_path, handler)
    holder.append(srv)
    srv.start()
    assert send_command(sock_path, {"cmd": "stop"}) == {"ok": True}
    assert wait_until(lambda: not sock_path.exists())
    with pytest.raises(ControlError, match="no daemon is running"):
        send_command(sock_path, {"cmd": "status-ping"})
