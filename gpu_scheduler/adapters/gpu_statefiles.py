"""Reading and writing the small JSON state files of the simulated GPUs, cheaply and safely.

Split from ``gpu_simulated`` to keep both short. Readers here never raise on bad content
(``Malformed`` is caught by ``FileCache``); writers replace files atomically.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import psutil

from gpu_scheduler.adapters.gpu_base import WarnOnce

RECENT_S = 2.0  # files modified this recently are re-read every time (mtime granularity)
PID_REUSE_SLACK_S = 1.0  # process start times and file mtimes come from different clocks

T = TypeVar("T")


class Malformed(ValueError):
    """A state file that cannot be used as a whole (not JSON, wrong shape)."""


def write_json_atomic(path: Path, data: object) -> None:
    """tmp + os.replace, so a reader sees the old file or the new one, never half of one.

    The tmp name starts with a dot and does not end in ``.json``, so the probe never reads it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- file cache


@dataclass
class _Entry(Generic[T]):
    key: tuple[int, int, int]  # (inode, size, mtime_ns) of the last read attempt
    read_at_ns: int
    value: T | None  # the last good parse; None if the file never parsed


class FileCache(Generic[T]):
    """Parsed file contents keyed by path, re-parsed only when the file changed."""

    def __init__(self, parse: Callable[[Path, bytes], T], warn: WarnOnce) -> None:
        self._parse = parse
        self._warn = warn
        self._entries: dict[Path, _Entry[T]] = {}

    def read(self, path: Path, st: os.stat_result) -> T | None:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self._entries.get(path)
        recent_ns = int(RECENT_S * 1e9)
        if entry is not None and entry.key == key and st.st_mtime_ns < entry.read_at_ns - recent_ns:
            return entry.value
        read_at_ns = time.time_ns()
        previous = entry.value if entry is not None else None
        try:
            value: T | None = self._parse(path, path.read_bytes())
        except FileNotFoundError:
            self.forget(path)
            return None
        except (OSError, Malformed) as exc:
            kept = "; keeping its last good reading" if previous is not None else ""
            self._warn(f"{path}: ignored ({exc}){kept}")
            value = previous  # cached under this key too: the same bytes fail the same way
        self._entries[path] = _Entry(key, read_at_ns, value)
        return value

    def forget(self, path: Path) -> None:
        self._entries.pop(path, None)

    def keep_only(self, paths: set[Path]) -> None:
        for path in list(self._entries):
            if path not in paths:
                del self._entries[path]


def load_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Malformed(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    return data


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stale_reason(pid: int, file_mtime: float) -> str:
    """Why a proc file no longer counts ("" if it does): gone, zombie, or a reused pid.

    A zombie has released its GPU memory; its file is kept until the parent reaps it, then
    deleted as "gone". A file older than the process start was written by a previous process
    with the same pid. The caller deletes files of gone processes and reused pids.
    """
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return "zombie"
            started = proc.create_time()
    except psutil.ZombieProcess:
        return "zombie"
    except psutil.NoSuchProcess:
        return "gone"
    except psutil.Error:
        return ""  # exists but unreadable (another user's process): trust the file
    if file_mtime < started - PID_REUSE_SLACK_S:
        return "pid reused"
    return ""
