"""A realistic saved state, built by hand: for the status screen's snapshot tests, docs/status.svg
and scripts/bench_status.py. Pure (times are offsets from the ``now`` passed in).

``sample_state`` is a 4-GPU machine mid-afternoon: evals sharing GPU 0, a sweep on GPU 1 held
for a queued 2-GPU eval, a training run on GPU 2, GPU 3 paused, a queue at three priorities,
finished jobs with a failure, a time-out and a cancel, and one bad line in jobs.txt.
``many_jobs_state`` is the same machine with ``n`` jobs (the 10,000-job benchmark).
"""

from __future__ import annotations

import hashlib
from typing import Any

from gpu_scheduler.adapters.store import SavedState
from gpu_scheduler.core import codec
from gpu_scheduler.core.model import (
    Cancelled,
    Failed,
    Finished,
    GpuProcess,
    GpuSnapshot,
    Job,
    JobSpec,
    LineError,
    Pending,
    Running,
    Succeeded,
    TimedOut,
)
from gpu_scheduler.core.scheduler import session_name

T0 = 1_700_000_000.0  # the tests' and the picture's "now"
JOBS_FILE = "jobs/jobs.txt"
GPU_NAME = "NVIDIA A100-SXM4-80GB"
MIB = 81920


def job_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:10]


def spec(
    name: str,
    line_no: int,
    script: str,
    args: str = "",
    *,
    priority: int = 0,
    share: int | None = None,
    timeout_s: float | None = None,
    llm: str | None = None,
) -> JobSpec:
    return JobSpec(
        job_id=job_id(name),
        source=JOBS_FILE,
        line_no=line_no,
        text=f"{priority}, {script}, , {args}".strip(),
        priority=priority,
        script=script,
        args=tuple(args.split()),
        share=share,
        timeout_s=timeout_s,
        name=name,
        llm=llm,
    )


def running(
    s: JobSpec,
    share: int,
    seq: int,
    now: float,
    started_ago: float,
    gpus: tuple[int, ...],
    pid: int | None,
) -> Job:
    per_gpu = share // len(gpus)
    status = Running(
        started_at=now - started_ago,
        gpus=gpus,
        share_per_gpu=per_gpu,
        session=session_name("gpujob", gpus, s.script, s.job_id),
        pid=pid,
        pid_started_at=None if pid is None else now - started_ago + 0.1,
    )
    return Job(s, share, status, seq, now - started_ago - 60 * seq, attempts=1)


def pending(s: JobSpec, share: int, seq: int, now: float, waiting: float) -> Job:
    return Job(s, share, Pending(enqueued_at=now - waiting), seq, now - waiting)


def finished(
    s: JobSpec,
    share: int,
    seq: int,
    now: float,
    ended_ago: float,
    ran: float,
    outcome: Any,
    gpus: tuple[int, ...],
) -> Job:
    end = now - ended_ago
    exit_code = 0 if isinstance(outcome, Succeeded) else getattr(outcome, "exit_code", None)
    return Job(
        s,
        share,
        Finished(end, outcome, end - ran, gpus),
        seq,
        end - ran - 30,
        attempts=1,
        last_exit_code=exit_code,
    )


def sample_jobs(now: float) -> list[Job]:
    ev = "/home/ana/exp/eval.py"
    sw = "/home/ana/exp/sweep.py"
    return [
        finished(
            spec("eval-hellaswag", 1, ev, "--llm qwen2.5-3b-inst --task hellaswag"),
            500,
            1,
            now,
            31 * 60,
            21 * 60 + 4,
            Succeeded(),
            (0,),
        ),
        finished(
            spec("train-1b", 2, "/home/ana/exp/train.py", "--epochs 3", timeout_s=3600),
            1000,
            2,
            now,
            50 * 60,
            3600,
            TimedOut(3600),
            (1,),
        ),
        finished(
            spec("sweep-lr1", 3, sw, "--lr 1e-3", priority=2, share=250),
            250,
            3,
            now,
            14 * 60,
            95,
            Cancelled("user"),
            (1,),
        ),
        finished(
            spec("sweep-lr2", 4, sw, "--lr 2e-3", priority=2, share=250),
            250,
            4,
            now,
            9 * 60,
            130,
            Failed(1),
            (1,),
        ),
        finished(
            spec("eval-arc", 5, ev, "--llm qwen2.5-3b-inst --task arc"),
            500,
            5,
            now,
            5 * 60,
            18 * 60 + 40,
            Succeeded(),
            (0,),
        ),
        running(
            spec("eval-mmlu", 6, ev, "--llm qwen2.5-3b-inst --task mmlu", timeout_s=7200),
            500,
            6,
            now,
            42 * 60 + 7,
            (0,),
            31337,
        ),
        running(
            spec(
                "train7b", 7, "/home/ana/exp/train.py", "--llm qwen2.5-7b-inst", timeout_s=12 * 3600
            ),
            1000,
            7,
            now,
            107 * 60 + 12,
            (2,),
            30211,
        ),
        running(
            spec("eval-gsm8k", 8, ev, "--llm qwen2.5-3b-inst --task gsm8k"),
            500,
            8,
            now,
            12 * 60 + 30,
            (0,),
            31402,
        ),
        running(
            spec("sweep-lr3", 9, sw, "--lr 3e-3", priority=2, share=250),
            250,
            9,
            now,
            3 * 60 + 2,
            (1,),
            31555,
        ),
        pending(
            spec("eval-32b", 10, ev, "--llm qwen2.5-32b-inst --task mmlu"), 2000, 10, now, 25 * 60
        ),
        pending(
            spec("sweep-lr4", 11, sw, "--lr 4e-3", priority=2, share=250), 250, 11, now, 20 * 60
        ),
        pending(
            spec("sweep-lr5", 12, sw, "--lr 5e-3", priority=2, share=250), 250, 12, now, 20 * 60
        ),
        pending(
            spec("sweep-lr6", 13, sw, "--lr 6e-3", priority=2, share=250), 250, 13, now, 20 * 60
        ),
        pending(
            spec("report", 15, "/home/ana/exp/report.py", "--input results/", priority=3),
            1000,
            14,
            now,
            8 * 60,
        ),
    ]


def sample_gpus() -> list[GpuSnapshot]:
    return [
        GpuSnapshot(
            0,
            GPU_NAME,
            MIB,
            61_850,
            72.0,
            (GpuProcess(31337, 30_100), GpuProcess(31402, 31_200)),
            uuid="GPU-0",
        ),
        GpuSnapshot(1, GPU_NAME, MIB, 18_400, 38.0, (GpuProcess(31555, 17_900),), uuid="GPU-1"),
        GpuSnapshot(2, GPU_NAME, MIB, 74_300, 97.0, (GpuProcess(30211, 73_800),), uuid="GPU-2"),
        GpuSnapshot(3, GPU_NAME, MIB, 512, 0.0, (), uuid="GPU-3"),
    ]


def sample_observed(jobs: list[Job], now: float, gpus: list[GpuSnapshot]) -> dict[str, Any]:
    used: dict[int, int] = {}
    for job in jobs:
        if isinstance(job.status, Running):
            for g in job.status.gpus:
                used[g] = used.get(g, 0) + job.status.share_per_gpu
    queue = [
        j.job_id
        for j in sorted(
            (j for j in jobs if isinstance(j.status, Pending)),
            key=lambda j: (j.spec.priority, j.seq),
        )
    ]
    head = queue[0] if queue else None
    error = LineError(
        JOBS_FILE,
        14,
        "0, eval.py, , --llm qwen2.5-3b-inst, gpu=0.5",
        "unknown option 'gpu'",
        "one of after, gpus, name, retries, timeout",
    )
    return {
        "gpus": [codec.gpu_snapshot_to_dict(g) for g in gpus],
        "used": {str(g): s for g, s in sorted(used.items())},
        "errors": [codec.line_error_to_dict(error)],
        "waiting": {head: "needs share 2: GPU 0 0 free; GPU 1 held; GPU 2 0 free; GPU 3 paused"}
        if head
        else {},
        "reserved_for": head,
        "reserved_gpus": [1] if head else [],
        "unusable": {"3": "paused"},
        "queue": queue[:50],
        "pending": len(queue),
        "archived": 39,
        "save_error": "",
        "metrics": {
            "window_s": 300.0,
            "samples": 60,
            "since": now - 295,
            "gpus": {
                "0": {
                    "allocated_avg": 0.9,
                    "allocated_peak": 1.0,
                    "utilization_avg_pct": 68.4,
                    "utilization_peak_pct": 91.0,
                },
                "1": {
                    "allocated_avg": 0.31,
                    "allocated_peak": 0.5,
                    "utilization_avg_pct": 35.2,
                    "utilization_peak_pct": 60.0,
                },
                "2": {
                    "allocated_avg": 1.0,
                    "allocated_peak": 1.0,
                    "utilization_avg_pct": 95.1,
                    "utilization_peak_pct": 99.0,
                },
                "3": {
                    "allocated_avg": 0.0,
                    "allocated_peak": 0.0,
                    "utilization_avg_pct": 0.0,
                    "utilization_peak_pct": 0.0,
                },
            },
            "archived_by_state": {"completed": 37, "failed": 2},
        },
    }


def daemon_info(now: float) -> dict[str, Any]:
    return {
        "pid": 4242,
        "hostname": "gpu-box",
        "version": "0.1.0",
        "started_at": now - 9000,
        "heartbeat_at": now - 1,
        "monitor_interval_s": 5.0,
        "mode": "screen",
        "provider": "nvml",
        "config": "/home/ana/gpu-scheduler/configs/config.json",
        "screen_dir": "",
        "stopping": False,
    }


def sample_state(now: float = T0) -> SavedState:
    jobs = sample_jobs(now)
    return SavedState(
        jobs=tuple(jobs),
        paused=(3,),
        next_seq=len(jobs) + 1,
        saved_at=now - 1,
        daemon=daemon_info(now),
        observed=sample_observed(jobs, now, sample_gpus()),
    )


def many_jobs_state(n: int, now: float = T0) -> SavedState:
    """The sample machine with ``n`` jobs: a few running, 200 finished, the rest pending."""
    base = sample_jobs(now)
    jobs = [j for j in base if isinstance(j.status, Running)]
    sw = "/home/ana/exp/sweep.py"
    for k in range(max(0, n - len(jobs))):
        s = spec(f"sweep-{k}", 100 + k, sw, f"--lr {k}e-5 --seed {k}", priority=k % 4, share=250)
        if k < 200:
            outcome = Succeeded() if k % 9 else Failed(2)
            jobs.append(finished(s, 250, 100 + k, now, 60.0 * (200 - k), 300, outcome, (k % 4,)))
        else:
            jobs.append(pending(s, 250, 100 + k, now, 1800.0 - k * 0.1))
    return SavedState(
        jobs=tuple(jobs),
        paused=(3,),
        next_seq=len(jobs) + 200,
        saved_at=now - 1,
        daemon=daemon_info(now),
        observed=sample_observed(jobs, now, sample_gpus()),
    )


def save_svg(path: str, width: int = 100) -> None:
    """The picture in docs/status.svg: the sample state's status screen, in colour."""
    import io

    from rich.console import Console

    from gpu_scheduler.status import build_view
    from gpu_scheduler.status_render import StatusScreen

    console = Console(width=width, record=True, file=io.StringIO(), color_system="truecolor",
                      force_terminal=True, _environ={})  # fmt: skip
    console.print(StatusScreen(build_view(sample_state(), True, T0)))
    console.save_svg(path, title="gpu-scheduler status")


if __name__ == "__main__":  # python -m gpu_scheduler.status_sample docs/status.svg [WIDTH]
    import sys

    save_svg(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100)
