"""The runner's record files: what happened to one attempt of one job, as JSON.

Shared by the runner (which writes them), the launchers (``FakeLauncher`` writes the same
format) and the daemon (which reads them). The runner imports this at every job start, so
it is stdlib-only and skips the public ``json`` module, whose imports (re, enum) cost more
than the interpreter's own start on the 2-core test machine; ``_json`` is its C core.

A record is ``{"state": "started", "job_id", "attempt", "session", "runner_pid",
"runner_started_at", "job_pid", "started_at"}``, later replaced by the same plus
``"state": "exited", "exit_code"`` (shell style: 128+N for signal N) and ``"finished_at"``,
or ``{"state": "launch_failed", "message", "finished_at", ...}`` (the runner exited 127).
Times are POSIX seconds; ``runner_started_at`` is the runner's create time as psutil
computes it, to tell a reused pid.
"""

from __future__ import annotations

import os
import time

try:
    import _json
except ImportError:  # not CPython
    _json = None  # type: ignore[assignment]

TYPE_CHECKING = False  # (typing.TYPE_CHECKING would import typing: ~5 ms per job start)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def write_record(
    path: str | os.PathLike[str], record: Mapping[str, Any], durable: bool = True
) -> None:
    """Replace ``path`` with ``record`` as JSON, atomically: a reader sees the old or the new
    file, never half of one. ``durable`` also fsyncs file and folder, so a final record
    survives a machine crash (the ``started`` record skips this; it is only a hint)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    data = dumps(dict(record)).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def dumps(value: Any) -> str:
    """JSON text for records: dicts (keys sorted), lists, str, int, float, bool, None."""
    if isinstance(value, dict):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ", ".join(f"{dumps(k)}: {dumps(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    if isinstance(value, str):
        if _json is None:
            import json

            return json.dumps(value)
        return _json.encode_basestring_ascii(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)  # int, or a finite float (times): valid JSON either way
    raise TypeError(f"cannot write {type(value).__name__} to a record")


def loads(text: str) -> Any:
    """Parse JSON text, with the C scanner alone when there is one."""
    if _json is None:
        import json

        return json.loads(text)
    scanner = _json.make_scanner(_ScanContext())
    body = text.strip()
    try:
        value, end = scanner(body, 0)
    except (StopIteration, SystemError):
        # Bad JSON. (SystemError: the C scanner reports errors through json.decoder, which
        # nothing here imports.) The full module raises a ValueError that says where.
        import json

        return json.loads(text)
    if end != len(body):
        raise ValueError("not a single JSON value")
    return value


class _ScanContext:
    """The settings ``_json.make_scanner`` reads (json.JSONDecoder's defaults)."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name)  # NaN, Infinity, -Infinity


def own_start_time() -> float:
    """This process's create time computed exactly as psutil does on Linux (``starttime``
    ticks since boot + ``btime``), so the daemon's pid-reuse check matches it."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        with open("/proc/stat", "rb") as f:
            btime = next(float(ln.split()[1]) for ln in f if ln.startswith(b"btime"))
        return ticks / os.sysconf("SC_CLK_TCK") + btime
    except (OSError, ValueError, StopIteration):
        return time.time()


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none yet. A file that is not a JSON
    object raises ValueError (records are replaced atomically, so that is not a race)."""
    try:
        with open(path, "rb") as f:
            data = loads(f.read().decode())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: not a JSON object")
    return data


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (a pty or pipe may take less at once)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
