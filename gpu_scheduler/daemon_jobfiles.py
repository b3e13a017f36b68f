"""Reading the jobs files into the daemon's scheduler, and holding back a half-written last line.

Apart from daemon.py because "when is a file quiet enough to trust its last line" is a small
policy of its own: the watcher holds back events while a file keeps changing, so the daemon
asks the file's write time, not the watcher, before it takes a line without a newline as a job.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import ChainMap
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_scheduler.jobsource import jobs_files

if TYPE_CHECKING:
    from gpu_scheduler.daemon import Daemon

log = logging.getLogger("gpu_scheduler.daemon")


def read_jobs(daemon: Daemon, *, include_partial: bool) -> None:
    """Re-read the jobs files and sync the scheduler, at the cost of what changed: a
    one-line append to a huge file looks at that line only (JobSource, Scheduler.sync)."""
    jobs = daemon.scheduler.jobs
    result = daemon.source.read_with_dependencies(
        include_partial=include_partial,
        # jobs the scheduler remembers whose lines may be gone, looked up, never copied
        known_names=lambda: {j.spec.name: j.job_id for j in jobs.values() if j.spec.name},
        known_ids=ChainMap[str, object](jobs, daemon.scheduler.archived),
    )
    if result.errors != daemon.errors:
        for error in set(result.errors) - set(daemon.errors):
            log.warning("%s", error, extra={"event": "line_error", "path": error.source})
    daemon.errors = result.errors
    daemon._partial_since = daemon.clock.monotonic() if result.partial else None
    for notice in daemon.scheduler.sync(result.jobs, daemon.clock.now(), result.deps,
                                        unchanged=result.unchanged_jobs):
        daemon._log_notice(notice)


def read_held_back_line(daemon: Daemon, mono: float) -> None:
    """Take a held-back last line once its file has been quiet for ``_quiet_s``."""
    if daemon._partial_since is not None and mono - daemon._last_file_event >= daemon._quiet_s \
            and mono - daemon._partial_since >= daemon._quiet_s:
        # The watcher holds back events while a file keeps changing, so "no event for
        # 0.3 s" is not "quiet": ask the file itself when it was last written.
        age = daemon._jobs_write_age()
        if age < daemon._quiet_s:
            daemon._partial_since = mono - age
        else:
            daemon._read_jobs(include_partial=True)


def jobs_write_age(jobs_file: Path) -> float:
    """Seconds since the newest write to a jobs file (file times are wall-clock times;
    a time in the future, e.g. clock skew, counts as long ago so nothing waits for it)."""
    newest = float("-inf")
    for path in jobs_files(jobs_file):
        with contextlib.suppress(OSError):
            newest = max(newest, path.stat().st_mtime)
    age = time.time() - newest
    return age if age >= 0 else float("inf")
