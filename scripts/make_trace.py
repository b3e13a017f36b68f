"""Write a synthetic workload trace for `gpu-scheduler simulate`.

Usage:
    python scripts/make_trace.py [--jobs N] [--seed S] [--rate R] [--mean-duration D] [--out FILE]

The trace is a CSV with columns submit_time,duration_s,gpu_share,priority,tenant,name:

* arrivals are a Poisson process: exponential gaps with mean 3600/R seconds (R jobs per hour);
* durations are log-normal with sigma 1.0 and the given mean (default 30m), rounded to whole
  seconds and at least 10 s: most jobs are short, a few run for hours;
* shares are a mix of 0.25/0.5/1/2/4-GPU requests (weights 30/30/20/15/5: mean 0.925 GPU);
* priorities 0-2 (weights 20/50/30) and three tenants.

With the defaults (R = 6/h, mean 30m) the offered load on 4 GPUs is 6 x 0.925 x 0.5 h / 4 =
~0.69 of the machine: the GPUs are busy and queues form (whole-GPU jobs and the draining
needed for 4-GPU jobs cost capacity), so the policies differ visibly. The same
seed always gives the same file (``random.Random(seed)``, no other source of randomness).
``jobs/example_trace.csv`` is ``--jobs 300 --seed 7`` (the defaults).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

SHARES = (0.25, 0.5, 1.0, 2.0, 4.0)
SHARE_WEIGHTS = (30, 30, 20, 15, 5)
PRIORITY_WEIGHTS = (20, 50, 30)  # priorities 0, 1, 2
TENANTS = ("alice", "bob", "carol")
SIGMA = 1.0
HEADER = "submit_time,duration_s,gpu_share,priority,tenant,name"


def make_rows(jobs: int, seed: int, rate_per_h: float, mean_duration_s: float) -> list[str]:
    """The trace's lines (header first)."""
    rng = random.Random(seed)
    mu = math.log(mean_duration_s) - SIGMA**2 / 2  # a log-normal's mean is exp(mu + sigma^2/2)
    t = 0.0
    rows = [HEADER]
    for n in range(1, jobs + 1):
        if n > 1:
            t += rng.expovariate(rate_per_h / 3600.0)
        duration = max(10, round(rng.lognormvariate(mu, SIGMA)))
        share = rng.choices(SHARES, SHARE_WEIGHTS)[0]
        priority = rng.choices(range(3), PRIORITY_WEIGHTS)[0]
        tenant = rng.choice(TENANTS)
        rows.append(f"{round(t)},{duration},{share:g},{priority},{tenant},job{n:06d}")
    return rows


def _positive(kind: type) -> object:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=_positive(int), default=300, help="number of jobs (300)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (7)")
    parser.add_argument(
        "--rate", type=_positive(float), default=6.0, help="mean arrivals per hour (6)"
    )
    parser.add_argument(
        "--mean-duration",
        type=_positive(float),
        default=1800.0,
        help="mean job duration in seconds (1800)",
    )
    parser.add_argument("--out", help="output file (default: standard output)")
    args = parser.parse_args(argv)
    text = "\n".join(make_rows(args.jobs, args.seed, args.rate, args.mean_duration)) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.jobs} jobs to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
