"""Safety checks on running jobs and on the files that decide what runs (the I/O side).

The daemon calls these; the decisions they lead to go through the core as usual (a job over a
limit is stopped with ``Scheduler.request_stop(job, "memory", ...)``, a CUDA OOM exit is passed
to ``Scheduler.exited(..., oom=True)``).

* **Host memory limit** (``security.max_memory_per_job_gb`` with ``enable_resource_limits``):
  the resident memory (RSS) of a job's whole process tree -- every descendant of its runner;
  the runner itself is the scheduler's, not the job's -- is measured with psutil at each
  monitor tick. RSS counts pages shared between processes of the tree once per process, so a
  forking job can look a little bigger than it is; the limit errs on the side of stopping.
* **GPU memory overrun**: a job's GPU memory per GPU is the sum of the probe's per-process
  figures for the pids of its tree; its share of a GPU is ``share_per_gpu / 1000 x total``
  (0 on a GPU it was not given). More than that is an overrun: reported while it lasts, logged
  once per job attempt, and with ``gpu.memory_overrun = "kill"`` the job is stopped. A probe
  that cannot list processes (GPUtil) cannot tell jobs apart: no overrun check then.
* **CUDA out-of-memory** in a job's log (``cuda_oom_in_log``), looked for only in what the
  ended attempt wrote, within the log's last ``OOM_TAIL_BYTES``.
* **Files that decide what runs** (config, jobs files, llm_config) writable by group or others
  (``insecure_files``): anyone who can write them can run code as you.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gpu_scheduler.adapters.processes import START_TIME_TOLERANCE_S
from gpu_scheduler.core.model import GpuSnapshot, Job, Running
from gpu_scheduler.core.units import ONE_GPU, format_share

GIB = 1024**3
OOM_TAIL_BYTES = 64 * 1024
OOM_PATTERN = re.compile(rb"CUDA out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY")

RssReader = Callable[[int, float | None], int | None]


# --------------------------------------------------------------------------- measuring


def tree_rss_bytes(pid: int, started_at: float | None) -> int | None:
    """Resident bytes of every descendant of ``pid`` (the job under its runner); None when
    ``pid`` is gone or is no longer the process that started at ``started_at``."""
    try:
        root = psutil.Process(pid)
        if started_at is not None and abs(root.create_time() - started_at) > START_TIME_TOLERANCE_S:
            return None
        children = root.children(recursive=True)
    except psutil.Error:
        return None
    total = 0
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue  # ended between the listing and the reading
    return total


def gpu_use_mib(gpus: Iterable[GpuSnapshot], pids: Collection[int]) -> dict[int, int]:
    """MiB the processes ``pids`` hold on each GPU that lists processes (GPUs with none left out)."""
    use: dict[int, int] = {}
    for gpu in gpus:
        if gpu.processes is None:
            continue
        mib = sum(p.used_mib for p in gpu.processes if p.pid in pids)
        if mib > 0:
            use[gpu.index] = mib
    return use


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB"


def gpu_overrun(run: Running, gpus: Sequence[GpuSnapshot], pids: Collection[int]) -> str:
    """What a running job uses beyond its share of GPU memory, "" when it stays within it."""
    by_index = {g.index: g for g in gpus}
    found = []
    for index, mib in sorted(gpu_use_mib(gpus, pids).items()):
        total = by_index[index].memory_total_mib
        share = run.share_per_gpu if index in run.gpus else 0
        allowed = share * total / ONE_GPU
        if mib <= allowed:
            continue
        if share:
            found.append(
                f"uses {_gib(mib)} of GPU {index}, share {format_share(share)} = {_gib(allowed)}"
            )
        else:
            found.append(f"uses {_gib(mib)} of GPU {index}, which is not one of its GPUs")
    return "; ".join(found)


def cuda_oom_in_log(log_path: Path, job_id: str, attempt: int) -> str:
    """The line of the job's log that shows CUDA out-of-memory, "" when there is none.

    Only what this attempt wrote counts (the log is appended to by every attempt): the text
    after the runner's ``job <id> attempt <n> on GPUs`` line, within the last 64 KiB. The
    runner's own lines (its echo of the command holds the job's arguments) are skipped."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - OOM_TAIL_BYTES))
            tail = fh.read(OOM_TAIL_BYTES)
    except OSError:
        return ""
    marker = f"] job {job_id} attempt {attempt} on GPUs ".encode()
    start = tail.rfind(marker)
    if start >= 0:
        end = tail.find(b"\n", start)
        tail = b"" if end < 0 else tail[end + 1 :]
    for line in tail.splitlines():
        if line.startswith(b"[gpu_scheduler ") or not OOM_PATTERN.search(line):
            continue
        text = line.decode("utf-8", errors="replace").strip()
        return text if len(text) <= 200 else text[:197] + "..."
    return ""


# --------------------------------------------------------------------------- the job guard


@dataclass
class GuardFindings:
    """One tick's findings. ``stops``: (job id, reason for its Killed outcome)."""

    stops: list[tuple[str, str]] = field(default_factory=list)
    overruns: dict[str, str] = field(default_factory=dict)  # job id -> what it uses vs share
    new_overruns: dict[str, str] = field(default_factory=dict)  # not reported before: log them


class JobGuard:
    """Checks each running job's host memory and GPU memory against its limits, once a tick.

    ``max_memory_bytes`` None: no host memory limit. ``overrun_mode``: "warn" or "kill".
    ``rss`` measures a runner's job tree (a fake in unit tests)."""

    def __init__(
        self,
        max_memory_bytes: int | None,
        overrun_mode: str = "warn",
        rss: RssReader = tree_rss_bytes,
    ) -> None:
        self.max_memory_bytes = max_memory_bytes
        self.overrun_mode = overrun_mode
        self._rss = rss
        self._reported: set[tuple[str, int]] = set()  # (job id, attempt) overruns logged

    @classmethod
    def from_settings(cls, settings: Any) -> JobGuard:
        sec = settings.security
        limit = sec.max_memory_per_job_gb if sec.enable_resource_limits else None
        return cls(None if limit is None else int(limit * GIB), settings.gpu.memory_overrun)

    def check(
        self,
        jobs: Mapping[str, Job],
        trees: Mapping[str, Collection[int]],
        gpus: Sequence[GpuSnapshot],
    ) -> GuardFindings:
        """``trees``: the running jobs to check (launched, alive) -> their runner's tree pids."""
        found = GuardFindings()
        for job_id in sorted(trees):
            job = jobs.get(job_id)
            run = job.status if job is not None else None
            if job is None or not isinstance(run, Running) or run.pid is None or run.stopping:
                continue
            over = self._memory_over(run)
            if over:
                found.stops.append((job_id, over))
                continue
            overrun = gpu_overrun(run, gpus, trees[job_id])
            if not overrun:
                continue
            found.overruns[job_id] = overrun
            if (job_id, job.attempts) not in self._reported:
                self._reported.add((job_id, job.attempts))
                found.new_overruns[job_id] = overrun
            if self.overrun_mode == "kill":
                found.stops.append((job_id, f"GPU memory overrun ({overrun})"))
        self._reported = {key for key in self._reported if key[0] in trees}
        return found

    def _memory_over(self, run: Running) -> str:
        if self.max_memory_bytes is None or run.pid is None:
            return ""
        rss = self._rss(run.pid, run.pid_started_at)
        if rss is None or rss <= self.max_memory_bytes:
            return ""
        limit = self.max_memory_bytes / GIB
        return f"memory limit exceeded ({rss / GIB:.2f} GiB > {limit:.2f} GiB)"


# --------------------------------------------------------------------------- files


def trusted_files(settings: Any) -> list[Path]:
    """The files that decide what runs as you: the config, the jobs files, llm_config."""
    from gpu_scheduler.jobsource import jobs_files

    return [
        settings.config_path,
        *jobs_files(settings.files.jobs_file),
        settings.files.llm_config_file,
    ]


def _writable_by(mode: int) -> str:
    who = [name for bit, name in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit]
    return " and ".join(who)


def insecure_files(paths: Iterable[Path]) -> list[str]:
    """One warning per file writable by group or others, and per folder holding such a file
    that group or others may write to (they could replace the file; a sticky folder such as
    /tmp is fine). Missing files are left to the code that reads them."""
    problems: list[str] = []
    folders: set[Path] = set()
    for path in paths:
        path = Path(path)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_mode & 0o022:
            problems.append(
                f"{path} is writable by {_writable_by(st.st_mode)} ({stat.filemode(st.st_mode)}): "
                f"anyone who can write it can run code as you; fix: chmod go-w {path}"
            )
        folder = path.parent
        if folder in folders:
            continue
        folders.add(folder)
        try:
            fst = os.stat(folder)
        except OSError:
            continue
        if fst.st_mode & 0o022 and not fst.st_mode & stat.S_ISVTX:
            problems.append(
                f"{folder} (holding {path.name}) is writable by {_writable_by(fst.st_mode)} "
                f"({stat.filemode(fst.st_mode)}): anyone who can write there can replace its "
                f"files and run code as you; fix: chmod go-w {folder}"
            )
    return problems
