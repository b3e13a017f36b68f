"""The append-only job history (``<stem>.history.jsonl``): finished jobs leave the state file
for it, so that saving stays as cheap with 100,000 jobs behind it as with none.

One JSON line per archived job, fsynced. A job may be archived twice (a crash between the
append and the save that drops it), so readers de-duplicate; bad lines are skipped, not fatal.
``StateStore`` calls these with its history path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from gpu_scheduler.adapters.store_files import BadLines, append_lines, os_reason
from gpu_scheduler.adapters.store_format import dumps
from gpu_scheduler.core import codec
from gpu_scheduler.core.model import Finished, Job
from gpu_scheduler.errors import StateFileError

HISTORY_VERSION = 1  # each history line carries its own "v"
# append_history writes id and state first, so the daemon's start-up read need not parse each
# job: 100,000 lines in ~0.2 s rather than ~2 s. Any other line (escapes, spaces) is parsed.
HISTORY_HEAD = re.compile(rb'\{"v":1,"id":"([\x20-\x21\x23-\x5b\x5d-\x7e]*)","state":"([a-z_]+)",')


def append_history(path: Path, jobs: Sequence[Job]) -> None:
    """Append one line per finished job, fsynced. Raises StateFileError on OSError, having
    cut off any partial line it wrote; ValueError for a job that is not finished."""
    lines = []
    for job in jobs:
        if not isinstance(job.status, Finished):
            raise ValueError(f"job {job.job_id} is {job.state}; only finished jobs are archived")
        record = {"v": HISTORY_VERSION, "id": job.job_id, "state": job.state}
        record["job"] = codec.job_to_dict(job)
        try:
            lines.append(dumps(record))
        except ValueError as exc:
            raise StateFileError(f"{path}: cannot archive job {job.job_id}: {exc}") from exc
    if not lines:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateFileError(f"{path}: cannot append to the job history: {os_reason(exc)}") from exc
    append_lines(path, lines, "cannot append to the job history")


def history_states(path: Path) -> dict[str, str]:
    """Job id -> state name ("completed", ...) of every archived job; the last record wins."""
    states: dict[str, str] = {}
    bad = BadLines(path)
    with open_history(path) as f:
        for line_no, line in enumerate(f, 1):
            fast = HISTORY_HEAD.match(line)
            if fast and line.endswith((b"}}\n", b"}}")):  # whole, as append_history wrote it
                states[fast[1].decode("ascii")] = fast[2].decode("ascii")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                job_id, state = record["id"], record["state"]
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                bad.report(f"line {line_no}", line, exc)
                continue
            if isinstance(job_id, str) and isinstance(state, str):
                states[job_id] = state
            else:
                bad.report(f"line {line_no}", line, ValueError("id or state is not a string"))
    bad.summary()
    return states


def read_history(path: Path, *, limit: int | None = None, newest_first: bool = True) -> list[Job]:
    """Archived jobs in archive order (or newest first), at most ``limit``, each once.

    With a limit and newest first only the file's tail is read, so ``list-jobs`` stays fast.
    """
    jobs: dict[Job, None] = {}  # ordered set: a re-archived job (crash) is listed once
    bad = BadLines(path)
    with open_history(path) as f:
        lines = lines_backwards(f) if newest_first and limit is not None else (line for line in f)
        for line in lines:
            if limit is not None and len(jobs) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("v") != HISTORY_VERSION:
                    raise ValueError(f"unknown history version {record.get('v')!r}")
                jobs.setdefault(codec.job_from_dict(record["job"], "job"), None)
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                bad.report("a line", line, exc)
    bad.summary()
    out = list(jobs)
    if newest_first and limit is None:
        out.reverse()
    return out


@contextlib.contextmanager
def open_history(path: Path) -> Iterator[IO[bytes]]:
    """The history file for reading; an empty one if there is none yet."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        yield io.BytesIO()
        return
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read the job history: {os_reason(exc)}") from exc
    with f:
        yield f


def lines_backwards(f: IO[bytes], block: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, last first, each with its newline (a line cut short has none),
    reading backwards block by block so the tail of a huge file costs only the tail."""
    pos = f.seek(0, os.SEEK_END)
    buffer = b""
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        buffer = f.read(step) + buffer
        # The bytes up to the first newline may be the end of a line that starts further back.
        start = buffer.find(b"\n") + 1 if pos > 0 else 0
        if start == 0 and pos > 0:
            continue
        parts = buffer[start:].split(b"\n")
        buffer = buffer[:start]
        if parts[-1]:
            yield parts[-1]
        for part in reversed(parts[:-1]):
            yield part + b"\n"
