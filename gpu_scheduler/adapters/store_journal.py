"""The launch journal (``<stem>.launches.jsonl``): launches written ahead of the full save.

Before the daemon starts a runner it appends the launched jobs here, fdatasynced: a few
hundred bytes however big the state. The next full save holds them and empties the journal.
Each line names the state file it extends (``state_identity`` of the file last saved), so a
restart replays exactly the lines written after the file it loaded: a crash between a full
save and the truncation replays nothing twice, and a line cut short (its fsync never returned,
so its runner never started) is skipped. ``StateStore`` owns one and tells it what it saved
and loaded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from gpu_scheduler.adapters.store_files import BadLines, append_lines, os_reason
from gpu_scheduler.adapters.store_format import dumps
from gpu_scheduler.core import codec
from gpu_scheduler.core.model import Job
from gpu_scheduler.errors import StateFileError

log = logging.getLogger("gpu_scheduler.adapters.store")  # the store's one name in the logs

LAUNCH_JOURNAL_VERSION = 1  # each launch journal line carries its own "v"


def state_identity(st: os.stat_result, saved_at: float) -> list[float]:
    """What tells one saved state file from every other: its inode and ``saved_at`` (a JSON
    list, as each launch journal line carries it). Not the device number: that may change
    at a reboot, after which the journal matters most (a job that finished before a power cut
    must be found finished, not started again)."""
    return [st.st_ino, saved_at]


class LaunchJournal:
    """The journal at ``path``, for one writer: the daemon's ``StateStore``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_as: list[float] | None = None  # state_identity of the last save
        self.loaded_as: list[float] | None = None  # ... of the main file ``load`` used
        self._lines = -1  # launch lines since the last full save (-1: unknown, e.g. a
        # dead daemon's, or an older state's after a reset): the next full save empties the file
        self._named = False  # is the journal's name durable (folder fsynced since)?

    def append(self, jobs: Sequence[Job], next_seq: int) -> None:
        """Write ahead a pass's launches: one line per job (as it is now: running, its runner
        not started yet), all in one write, fdatasynced before this returns. The next full save
        empties the journal. Raises StateFileError, having cut off any partial line; then no
        runner may start (the caller takes the launches back)."""
        if self.saved_as is None:
            raise StateFileError(
                f"{self.path}: no state saved yet for launches to extend; save first"
            )
        try:
            head = dumps({"v": LAUNCH_JOURNAL_VERSION, "base": self.saved_as,
                          "next_seq": next_seq})[:-1]  # fmt: skip
            lines = [f'{head},"job":{dumps(codec.job_to_dict(job))}}}' for job in jobs]
        except ValueError as exc:
            raise StateFileError(f"{self.path}: cannot write a launch ahead: {exc}") from exc
        if not lines:
            return
        append_lines(self.path, lines, "cannot write a launch ahead",
                     data_only=True, sync_folder=not self._named)  # fmt: skip
        self._named = True
        if self._lines >= 0:
            self._lines += len(lines)

    def read(self) -> tuple[list[Job], int]:
        """The launches written ahead after the state file ``load`` returned (none when it fell
        back to the backup, or nothing was loaded), in order, with the highest ``next_seq`` they
        carry (0 if none). Lines for another state file, and bad lines, are skipped: a line
        cut short was never fsynced, so its runner never started."""
        jobs: list[Job] = []
        next_seq = 0
        if self.loaded_as is None:
            return jobs, next_seq
        bad = BadLines(self.path)
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return jobs, next_seq
        except OSError as exc:
            raise StateFileError(
                f"{self.path}: cannot read the launch journal: {os_reason(exc)}"
            ) from exc
        for line_no, line in enumerate(raw.splitlines(keepends=True), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("v") != LAUNCH_JOURNAL_VERSION:
                    raise ValueError(f"unknown journal version {record.get('v')!r}")
                if record["base"] != self.loaded_as:
                    continue  # written before the loaded file was saved: it holds them already
                job = codec.job_from_dict(record["job"], "job")
                seq = int(record["next_seq"])
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                bad.report(f"line {line_no}", line, exc)
                continue
            jobs.append(job)
            next_seq = max(next_seq, seq)
        bad.summary()
        return jobs, next_seq

    def clear(self) -> None:
        """Empty the journal after a full save (which holds its launches). Not fsynced, and a
        failure is only logged: lines left behind name an older state file, so no restart
        replays them."""
        if self._lines == 0:
            return
        try:
            os.truncate(self.path, 0)  # (kept, not removed: its name stays durable)
        except FileNotFoundError:
            self._named = False
        except OSError as exc:
            log.warning("%s: cannot empty the launch journal: %s", self.path, os_reason(exc))
            return
        self._lines = 0
