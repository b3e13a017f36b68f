"""Issue 7, the I/O side (gpu_scheduler.guards): process-tree memory, GPU memory overruns,
CUDA OOM in a job's log, and files writable by others. Real processes and real files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gpu_scheduler.config import default_settings
from gpu_scheduler.core.model import GpuProcess, GpuSnapshot, Job, JobSpec, Running
from gpu_scheduler.guards import (
    GIB,
    JobGuard,
    cuda_oom_in_log,
    gpu_overrun,
    insecure_files,
    tree_rss_bytes,
    trusted_files,
)
from tests.helpers import wait_until

TOTAL = 81_920


def gpu(index: int, *procs: tuple[int, int], listed: bool = True) -> GpuSnapshot:
    processes = tuple(GpuProcess(pid, mib) for pid, mib in procs) if listed else None
    used = sum(mib for _, mib in procs)
    return GpuSnapshot(index, memory_total_mib=TOTAL, memory_used_mib=used, processes=processes)


def running(job_id: str = "j", gpus: tuple[int, ...] = (0,), share: int = 500,
            stopping: str | None = None, attempts: int = 1) -> Job:
    spec = JobSpec(job_id, "jobs.txt", 1, "0 x.py", 0, "x.py")
    run = Running(0.0, gpus, share, "s", pid=100, pid_started_at=1.0, stopping=stopping)  # type: ignore[arg-type]
    return Job(spec, share * len(gpus), run, 0, 0.0, attempts=attempts)


# =========================================================================== process tree RSS


@pytest.fixture
def allocating_tree() -> Iterator[psutil.Process]:
    """A parent (like a runner) whose child holds ~80 MiB resident."""
    child_code = "import time; b = bytearray(b'x') * (80 * 2**20); time.sleep(60)"
    parent_code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child_code!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent_code])
    parent = psutil.Process(proc.pid)
    try:
        yield parent
    finally:
        for p in [*parent.children(recursive=True), parent]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait(timeout=10)


def test_tree_rss_counts_the_descendants_of_the_runner(allocating_tree: psutil.Process) -> None:
    pid, started = allocating_tree.pid, allocating_tree.create_time()
    rss = wait_until(lambda: (r := tree_rss_bytes(pid, started)) and r >= 80 * 2**20 and r,
                     timeout=10, what="the child to allocate")
    assert rss < 80 * 2**20 + allocating_tree.memory_info().rss + 64 * 2**20
    assert tree_rss_bytes(pid, started + 5.0) is None  # a reused pid is not our job


def test_tree_rss_of_a_gone_process_is_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    assert tree_rss_bytes(proc.pid, None) is None


# =========================================================================== GPU overrun


def test_gpu_overrun_compares_the_trees_memory_with_its_share() -> None:
    run = running().status
    assert isinstance(run, Running)
    over = [gpu(0, (11, 45_000), (999, 30_000))]  # 999 is someone else's process
    assert gpu_overrun(run, over, {10, 11}) == "uses 43.9 GiB of GPU 0, share 0.5 = 40.0 GiB"
    assert gpu_overrun(run, [gpu(0, (11, 40_960))], {11}) == ""  # exactly its share
    assert gpu_overrun(run, [gpu(0, (11, 45_000), listed=False)], {11}) == ""  # GPUtil: unknown
    elsewhere = gpu_overrun(run, [gpu(0), gpu(1, (11, 2048))], {11})
    assert elsewhere == "uses 2.0 GiB of GPU 1, which is not one of its GPUs"


def test_guard_warns_once_per_attempt_and_stops_only_in_kill_mode() -> None:
    jobs = {"j": running()}
    gpus = [gpu(0, (11, 45_000))]
    warn = JobGuard(None, "warn")
    first = warn.check(jobs, {"j": {100, 11}}, gpus)
    assert first.overruns == first.new_overruns == {"j": "uses 43.9 GiB of GPU 0, share 0.5 = 40.0 GiB"}
    assert first.stops == []
    second = warn.check(jobs, {"j": {100, 11}}, gpus)
    assert second.overruns and not second.new_overruns  # logged once, still shown
    assert not warn.check(jobs, {"j": {100, 11}}, [gpu(0, (11, 100))]).overruns
    again = warn.check({"j": running(attempts=2)}, {"j": {100, 11}}, gpus)
    assert again.new_overruns  # a new attempt is reported again
    kill = JobGuard(None, "kill").check(jobs, {"j": {100, 11}}, gpus)
    assert kill.stops == [("j", "GPU memory overrun (uses 43.9 GiB of GPU 0, share 0.5 = 40.0 GiB)")]


def test_guard_stops_a_job_over_the_host_memory_limit_and_leaves_others() -> None:
    sizes = {100: 300 * 2**20, 200: 50 * 2**20}
    guard = JobGuard(int(0.2 * GIB), rss=lambda pid, _started: sizes[pid])
    big, small = running("big"), running("small")
    small = Job(small.spec, small.share, Running(0.0, (1,), 500, "s2", pid=200), 1, 0.0)
    found = guard.check({"big": big, "small": small}, {"big": {100}, "small": {200}}, [])
    assert found.stops == [("big", "memory limit exceeded (0.29 GiB > 0.20 GiB)")]


def test_guard_skips_jobs_already_stopping_and_jobs_not_given() -> None:
    guard = JobGuard(1, "kill", rss=lambda _pid, _started: 10**9)
    jobs = {"j": running(stopping="cancel"), "k": running("k")}
    found = guard.check(jobs, {"j": {100}}, [gpu(0, (100, 80_000))])
    assert found.stops == [] and found.overruns == {}


def test_guard_settings() -> None:
    s = default_settings(Path("/tmp/config.json"))
    assert JobGuard.from_settings(s).max_memory_bytes is None
    from dataclasses import replace

    limited = replace(s, security=replace(s.security, max_memory_per_job_gb=0.5,
                                          enable_resource_limits=True))
    assert JobGuard.from_settings(limited).max_memory_bytes == GIB // 2
    off = replace(limited, security=replace(limited.security, enable_resource_limits=False))
    assert JobGuard.from_settings(off).max_memory_bytes is None


# =========================================================================== CUDA OOM in the log


def runner_line(job_id: str, attempt: int, argv: str = '["python", "x.py"]') -> str:
    return f"[gpu_scheduler 2024-01-01T00:00:00Z] job {job_id} attempt {attempt} on GPUs 0: {argv}\n"


def test_oom_is_looked_for_only_in_what_the_attempt_wrote(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    log.write_text(
        runner_line("j", 1)
        + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        + "[gpu_scheduler 2024-01-01T00:00:01Z] job j attempt 1 exited with code 1\n"
        + runner_line("j", 2, '["python", "x.py", "--note", "CUDA out of memory"]')
        + "ValueError: bad input\n"
    )
    assert cuda_oom_in_log(log, "j", 2) == ""  # the earlier attempt's OOM and the echo don't count
    with log.open("a") as fh:
        fh.write(runner_line("j", 3) + "RuntimeError: CUDA_ERROR_OUT_OF_MEMORY\n")
    assert cuda_oom_in_log(log, "j", 3) == "RuntimeError: CUDA_ERROR_OUT_OF_MEMORY"
    assert cuda_oom_in_log(tmp_path / "missing.log", "j", 1) == ""


def test_oom_in_a_long_log_is_found_within_the_last_64_kib(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    noise = "step 1 loss 0.5\n" * 10_000  # 160 KB
    log.write_text(runner_line("j", 1) + "CUDA out of memory (early)\n" + noise + "OutOfMemoryError\n")
    assert cuda_oom_in_log(log, "j", 1) == "OutOfMemoryError"
    log.write_text(runner_line("j", 1) + "CUDA out of memory (early)\n" + noise)
    assert cuda_oom_in_log(log, "j", 1) == ""  # only the tail is read


# =========================================================================== file permissions


def test_files_writable_by_group_or_others_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir(mode=0o700)
    safe, group, other = folder / "safe.json", folder / "group.txt", folder / "other.json"
    for path, mode in ((safe, 0o600), (group, 0o664), (other, 0o646)):
        path.write_text("{}")
        os.chmod(path, mode)
    os.chmod(folder, 0o700)
    problems = insecure_files([safe, group, other, folder / "missing.txt"])
    assert len(problems) == 2
    assert problems[0].startswith(f"{group} is writable by group (-rw-rw-r--)")
    assert "anyone who can write it can run code as you" in problems[0]
    assert f"chmod go-w {group}" in problems[0]
    assert problems[1].startswith(f"{other} is writable by others")
    assert insecure_files([safe]) == []


def test_a_folder_others_can_write_is_reported_unless_sticky(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    jobs = folder / "jobs.txt"
    jobs.write_text("")
    os.chmod(jobs, 0o644)
    os.chmod(folder, 0o777)
    (problem,) = insecure_files([jobs])
    assert problem.startswith(f"{folder} (holding jobs.txt) is writable by group and others")
    os.chmod(folder, 0o1777)
    assert insecure_files([jobs]) == []
    os.chmod(folder, 0o755)


def test_trusted_files_are_the_config_jobs_and_llm_config(tmp_path: Path) -> None:
    s = default_settings(tmp_path / "config.json")
    assert trusted_files(s) == [
        tmp_path / "config.json",
        Path(s.files.jobs_file),
        s.files.llm_config_file,
    ]
