"""Benchmark the pure scheduling core: how long a scheduling pass takes as the queue grows.

Usage:
    python scripts/bench_core.py [--sizes 100,10000,100000] [--gpus 64] [--quick] [--one-class]

For each queue size it prints one row:

* blocked pass (ms): one ``Scheduler.schedule`` call while every GPU is full, so nothing can be
  placed and every pending job waits (the daemon's most common tick);
* placing pass (ms), placed, us/placement: one pass over freshly emptied GPUs that fills them
  all; the queue is topped up between rounds so it stays at the stated size;
* decisions/s: placements per second of scheduler time (``schedule`` + ``exited``) over a run
  with a virtual clock in which jobs of a mix of shares and durations fill and leave the GPUs;
  the queue is kept at the stated size for DRAIN_PLACEMENTS placements, then the GPUs drain;
  Python's cyclic GC runs as it would in the daemon;
* memory MiB: growth of the process's resident memory while the scheduler takes in that many
  pending jobs (coarse below ~1,000 jobs); B/job: Python memory per pending job, exact
  (tracemalloc) on a sample of at most TRACED_JOBS jobs;
* full GC ms: one ``gc.collect()`` with the scheduler alive, the pause Python's cyclic collector
  adds now and then when it walks every job (``gc.freeze()`` after loading avoids most of it).

Pass times are medians (100 blocked passes, 25 placing passes, each round set up after a
``gc.collect()``), so they show the scheduler's own work rather than a collector pause or another
process that happened to fall into one of them. The cost of one decision must not grow with the
number of pending jobs, so the last line compares the largest queue with the smallest; run with
``--one-class`` for the queue's worst case (every job in one bucket). Nothing here reads a real
GPU or clock except ``time.perf_counter`` for the measurements themselves.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from gpu_scheduler.core.model import GpuSnapshot, JobSpec  # noqa: E402
from gpu_scheduler.core.scheduler import Policy, Scheduler  # noqa: E402

# The job mix: shares in milli-GPU (0.25 and 0.5 twice as likely), priorities 0..4.
SHARES = (125, 250, 250, 500, 500, 1000, 2000)
PRIORITIES = 5
MEMORY_MIB = 81920
DRAIN_PLACEMENTS = 20_000
TRACED_JOBS = 2_000


@dataclass
class Row:
    pending: int
    blocked_ms: float
    placing_ms: float
    placed_per_pass: float
    decisions_per_s: float
    memory_mib: float
    bytes_per_job: float
    gc_ms: float

    @property
    def per_placement_us(self) -> float:
        return self.placing_ms * 1000 / self.placed_per_pass if self.placed_per_pass else math.nan


def snapshots(count: int) -> list[GpuSnapshot]:
    return [
        GpuSnapshot(index=g, memory_total_mib=MEMORY_MIB, utilization_pct=0.0, processes=())
        for g in range(count)
    ]


class JobMaker:
    """Job specs with a seeded mix of shares and priorities (ids are unique per maker)."""

    shares: tuple[int, ...] = SHARES
    priorities: int = PRIORITIES

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def __call__(self) -> tuple[JobSpec, int]:
        self.n += 1
        priority = self.rng.randrange(self.priorities)
        spec = JobSpec(
            job_id=f"{self.n:010x}",
            source="bench.txt",
            line_no=self.n,
            text=f"{priority} train.py --n {self.n}",
            priority=priority,
            script="train.py",
            args=("--n", str(self.n)),
        )
        return spec, self.rng.choice(self.shares)


def new_scheduler(gpus: int) -> Scheduler:
    return Scheduler(Policy(aging_interval_s=600.0), range(gpus))


def fill(s: Scheduler, make: JobMaker, count: int, now: float) -> None:
    for _ in range(count):
        spec, share = make()
        s.add(spec, share, now)


def timed_after_gc(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def memory_and_gc(size: int, gpus: int) -> tuple[float, float, float]:
    """Resident memory taken in by ``size`` pending jobs (MiB), Python bytes per job (exact, on a
    sample of at most TRACED_JOBS jobs), and one full GC with the ``size`` jobs alive (ms)."""
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    s = new_scheduler(gpus)
    fill(s, JobMaker(5), size, 0.0)
    gc.collect()
    grown = process.memory_info().rss - before
    gc_s = min(timed_after_gc(gc.collect) for _ in range(3))
    del s
    sample = min(size, TRACED_JOBS)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    s = new_scheduler(gpus)
    fill(s, JobMaker(6), sample, 0.0)
    per_job = (tracemalloc.get_traced_memory()[0] - base) / sample
    tracemalloc.stop()
    del s
    return max(0, grown) / 2**20, per_job, gc_s * 1000


def blocked_pass_ms(size: int, gpus: int) -> float:
    """Median time of a pass that places nothing: our own whole-GPU jobs hold every GPU."""
    s = new_scheduler(gpus)
    for g in range(gpus):
        s.add(JobSpec(f"hold{g:06d}", "bench.txt", 0, "", 0, "hold.py"), 1000, 0.0)
    snap = snapshots(gpus)
    s.schedule(snap, 0.0)
    if len(s.running_ids) != gpus:
        raise SystemExit("bench setup: the whole-GPU jobs did not fill every GPU")
    fill(s, JobMaker(1), size, 1.0)
    gc.collect()
    times = []
    for _ in range(100):
        t0 = time.perf_counter()
        s.schedule(snap, 2.0)
        times.append(time.perf_counter() - t0)
    if s.last_pass.launches or s.pending_count() != size:
        raise SystemExit("bench setup: a pass over full GPUs placed something")
    return statistics.median(times) * 1000


def placing_pass(size: int, gpus: int) -> tuple[float, float]:
    """Median time of a pass that fills empty GPUs from a queue of ``size``, and its placements."""
    s = new_scheduler(gpus)
    make = JobMaker(2)
    snap = snapshots(gpus)
    times: list[float] = []
    placed: list[int] = []
    now = 0.0
    for _ in range(25):
        gc.collect()
        for job_id in sorted(s.running_ids):
            s.exited(job_id, 0, now)
        fill(s, make, size - s.pending_count(), now)
        t0 = time.perf_counter()
        report = s.schedule(snap, now)
        times.append(time.perf_counter() - t0)
        placed.append(len(report.launches))
        now += 1.0
    return statistics.median(times) * 1000, statistics.mean(placed)


def drain_run(size: int, gpus: int, target: int = DRAIN_PLACEMENTS) -> float:
    """Placements per second of scheduler time while jobs of random length come and go.

    The queue is topped up to ``size`` after every pass until ``target`` jobs have been placed
    (so every decision is taken with that many jobs waiting); then no more work starts and the
    GPUs drain as the last jobs exit.
    """
    s = new_scheduler(gpus)
    make = JobMaker(3)
    durations = random.Random(4)
    snap = snapshots(gpus)
    ends: dict[float, list[str]] = {}
    now = spent = 0.0
    placements = 0
    while True:
        if placements < target:
            fill(s, make, size - s.pending_count(), now)
            t0 = time.perf_counter()
            launches = s.schedule(snap, now).launches
            spent += time.perf_counter() - t0
            placements += len(launches)
            for launch in launches:
                ends.setdefault(now + durations.randint(1, 20), []).append(launch.job_id)
        if not ends:
            break
        now = min(ends)
        finished = ends.pop(now)
        t0 = time.perf_counter()
        for job_id in finished:
            s.exited(job_id, 0, now)
        spent += time.perf_counter() - t0
    if placements < target or s.running_ids:
        raise SystemExit(f"bench: the run placed {placements} of {target} jobs")
    return placements / spent


def measure(size: int, gpus: int, target: int = DRAIN_PLACEMENTS) -> Row:
    memory_mib, bytes_per_job, gc_ms = memory_and_gc(size, gpus)
    placing_ms, placed = placing_pass(size, gpus)
    return Row(
        pending=size,
        blocked_ms=blocked_pass_ms(size, gpus),
        placing_ms=placing_ms,
        placed_per_pass=placed,
        decisions_per_s=drain_run(size, gpus, target),
        memory_mib=memory_mib,
        bytes_per_job=bytes_per_job,
        gc_ms=gc_ms,
    )


COLUMNS = (
    ("pending", 9),
    ("blocked pass ms", 15),
    ("placing pass ms", 15),
    ("placed", 6),
    ("us/placement", 12),
    ("decisions/s", 11),
    ("memory MiB", 10),
    ("B/job", 6),
    ("full GC ms", 10),
)
HEADER = " | ".join(f"{name:>{width}}" for name, width in COLUMNS)


def format_row(r: Row) -> str:
    cells = (
        f"{r.pending:,}",
        f"{r.blocked_ms:.3f}",
        f"{r.placing_ms:.3f}",
        f"{r.placed_per_pass:.0f}",
        f"{r.per_placement_us:.1f}",
        f"{r.decisions_per_s:,.0f}",
        f"{r.memory_mib:.1f}",
        f"{r.bytes_per_job:,.0f}",
        f"{r.gc_ms:.1f}",
    )
    return " | ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes wants numbers like 100,10000, not {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("--sizes wants positive numbers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[100, 10_000, 100_000],
        help="pending-queue sizes, comma separated (default 100,10000,100000)",
    )
    parser.add_argument("--gpus", type=int, default=64, help="simulated GPUs (default 64)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: sizes 100,1000 (overrides --sizes) and a tenth of the placements",
    )
    parser.add_argument(
        "--one-class",
        action="store_true",
        help="worst case for the queue: every job has share 0.25 and priority 0, so all "
        "pending jobs sit in one bucket",
    )
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error("--gpus must be at least 1")
    sizes = [100, 1000] if args.quick else args.sizes
    target = DRAIN_PLACEMENTS // 10 if args.quick else DRAIN_PLACEMENTS

    if args.one_class:
        JobMaker.shares, JobMaker.priorities = (250,), 1
    shares = ", ".join(f"{share / 1000:g}" for share in sorted(set(JobMaker.shares)))
    print(
        f"gpu_scheduler core benchmark: {args.gpus} simulated GPUs; job shares {shares}; "
        f"priorities 0-{JobMaker.priorities - 1}; decisions/s over {target:,}+ "
        f"placements; Python {sys.version.split()[0]}"
    )
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for size in sizes:
        row = measure(size, args.gpus, target)
        rows.append(row)
        print(format_row(row), flush=True)
    if len(rows) > 1:
        small, big = min(rows, key=lambda r: r.pending), max(rows, key=lambda r: r.pending)
        print()
        print(
            f"{big.pending:,} vs {small.pending:,} pending: blocked pass x"
            f"{big.blocked_ms / small.blocked_ms:.2f}, time per placement x"
            f"{big.per_placement_us / small.per_placement_us:.2f} "
            f"(1.00 = independent of queue length)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
