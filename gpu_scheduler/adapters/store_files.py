"""Durable file primitives the state store is built on, in one place so that every file it
writes (state, backup, history, launch journal) gets the same care.

Writes survive a power cut once these return: whole writes, fsynced files, fsynced folders
for new names. Failures name the file and the OS reason (``os_reason``) rather than a
traceback. Reading lines back is tolerant: a bad line is skipped and reported (``BadLines``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from gpu_scheduler.errors import StateFileError

log = logging.getLogger("gpu_scheduler.adapters.store")  # the store's one name in the logs

NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
MAX_BAD_LINE_WARNINGS = 5


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_lines(
    path: Path,
    lines: Sequence[str],
    what: str,
    *,
    data_only: bool = False,
    sync_folder: bool | None = None,
) -> None:
    """Append whole lines and sync them before returning (fdatasync when ``data_only``). A
    line cut short by an earlier crash is ended first, so it spoils only itself; a failed
    append is cut off again. The folder is synced too when ``sync_folder`` (None: when the
    file was empty, i.e. new). Raises StateFileError naming ``path`` and ``what`` failed."""
    data = ("\n".join(lines) + "\n").encode("ascii")
    fd: int | None = None
    size: int | None = None
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        write_all(fd, data)
        (os.fdatasync if data_only else os.fsync)(fd)
        if (size == 0) if sync_folder is None else sync_folder:
            fsync_folder(path.parent)  # a new file's name must survive too
    except OSError as exc:
        if fd is not None and size is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
        raise StateFileError(f"{path}: {what}: {os_reason(exc)}") from exc
    finally:
        if fd is not None:
            os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make renames and new names in ``folder`` durable (some file systems cannot: EINVAL)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (instant, whatever the size); copy where the file system has no links."""
    try:
        os.link(source, target)
        return
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, source.read_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: Path, stamp: str, keep: bool = False) -> Path:
    """Rename ``path`` to a free ``<name>.bad-<stamp>[-n]`` (link or copy it there if ``keep``)."""
    target = path.with_name(f"{path.name}.bad-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bad-{stamp}-{n}")
    if keep:
        link_or_copy(path, target)
    else:
        os.rename(path, target)
    return target


def utc_stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def temp_name(path: Path, tag: str) -> Path:
    """``.<name>.<tag>.<pid>.<random>.tmp``: hidden, unique, and traceable to its writer."""
    token = secrets.token_hex(4)
    return path.with_name(f".{path.name}.{tag}.{os.getpid()}.{token}.tmp")


def remove_stale_temp_files(path: Path) -> None:
    """Temp files of a writer that died mid-save (kill -9) are garbage: remove them."""
    try:
        candidates = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return
    for candidate in candidates:
        pid = candidate.name.split(".")[-3]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # raises if no such process: its writer is gone
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                candidate.unlink()
        except OSError:
            pass  # EPERM: alive, someone else's


class BadLines:
    """Warn about the first few bad history lines and count the rest: a damaged file is
    reported once, not 100,000 times. A last line cut short is a crash while appending."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0

    def report(self, where: str, line: bytes, exc: BaseException) -> None:
        self.count += 1
        if self.count <= MAX_BAD_LINE_WARNINGS:
            cut = "" if line.endswith(b"\n") else " (cut short: a crash while appending?)"
            log.warning("%s: skipping bad %s%s: %s", self.path, where, cut, exc)

    def summary(self) -> None:
        if self.count > MAX_BAD_LINE_WARNINGS:
            log.warning("%s: skipped %d bad lines in all", self.path, self.count)
