"""The figures of a simulation, per policy, as a stable JSON object and as a rich table.

Definitions (times in seconds; ``t0`` is the first submit time in the trace):

* makespan = last finish - t0.
* busy period = the total time in [t0, last finish] during which at least one job is pending or
  running (idle gaps between bursts of arrivals do not count).
* GPU-share utilisation = requested share-seconds / (GPUs x busy period), where requested
  share-seconds = sum over jobs of (the share the job asked for x its duration). It is the part
  of the machine doing the work the trace asked for while there was work to do.
* GPU share held = the same with the share the scheduler set aside for each job (a 0.5 job holds
  one whole GPU under whole-gpu-fifo), so held - utilisation is capacity wasted by rounding.
* job completion time (JCT) = finish - submit; queueing delay (wait) = start - submit.
  p95 is the nearest-rank 95th percentile: the ceil(0.95 n)-th smallest value.
* longest wait = the largest queueing delay, and the first job (in trace order) that had it.

Lower bounds (independent of the policy; no schedule can beat them):

* work bound = requested share-seconds / GPUs (the machine busy at 100% from t0);
* longest job = the longest single duration;
* arrival bound = max over jobs of (submit + duration) - t0 (the last job cannot end earlier);
* makespan lower bound = the largest of the three.
* JCT bounds: each job's JCT is at least its duration, so the mean and p95 JCT are at least the
  mean and p95 duration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.simulate.engine import Run
from gpu_scheduler.simulate.trace import Trace, TraceJob


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _r(x: float) -> float:
    """Round for a stable, readable JSON (micro-second precision)."""
    return round(x, 6) + 0.0  # + 0.0 turns -0.0 into 0.0


def busy_period(run: Run) -> float:
    """Seconds during which at least one job was pending or running (see the module docstring)."""
    total = 0.0
    for k in range(len(run.times) - 1):
        if run.pending[k] or run.running[k]:
            total += run.times[k + 1] - run.times[k]
    return total


def bounds(jobs: Sequence[TraceJob], gpu_count: int) -> dict[str, float]:
    if not jobs:
        return {}
    t0 = min(j.submit_s for j in jobs)
    durations = [j.duration_s for j in jobs]
    work = sum(j.share * j.duration_s for j in jobs) / (ONE_GPU * gpu_count)
    longest = max(durations)
    arrival = max(j.submit_s + j.duration_s for j in jobs) - t0
    return {
        "work_bound_s": _r(work),
        "longest_job_s": _r(longest),
        "arrival_bound_s": _r(arrival),
        "makespan_lower_bound_s": _r(max(work, longest, arrival)),
        "jct_mean_lower_bound_s": _r(_mean(durations)),
        "jct_p95_lower_bound_s": _r(p95(durations)),
    }


def summarise(run: Run) -> dict[str, Any]:
    """One policy's figures (see the module docstring for the definitions)."""
    jobs = run.jobs
    t0 = min(j.submit_s for j in jobs)
    capacity = ONE_GPU * run.gpu_count
    jct = [f - j.submit_s for f, j in zip(run.finish_s, jobs, strict=True)]
    wait = [s - j.submit_s for s, j in zip(run.start_s, jobs, strict=True)]
    active = busy_period(run)
    requested = sum(j.share * j.duration_s for j in jobs)
    held = sum(h * j.duration_s for h, j in zip(run.held, jobs, strict=True))
    longest = max(range(len(jobs)), key=lambda i: (wait[i], -i))
    policy = run.policy.policy
    return {
        "description": run.policy.description,
        "settings": {
            "whole_gpus": run.policy.whole_gpus,
            "best_fit": policy.best_fit,
            "reservation": policy.reservation,
            "aging_interval_s": policy.aging_interval_s,
            "max_concurrent_jobs": policy.max_concurrent_jobs,
        },
        "makespan_s": _r(max(run.finish_s) - t0),
        "busy_period_s": _r(active),
        "utilisation": _r(requested / (capacity * active)) if active else 0.0,
        "held_share": _r(held / (capacity * active)) if active else 0.0,
        "jct_mean_s": _r(_mean(jct)),
        "jct_p95_s": _r(p95(jct)),
        "wait_mean_s": _r(_mean(wait)),
        "wait_p95_s": _r(p95(wait)),
        "wait_max_s": _r(wait[longest]),
        "wait_max_job": jobs[longest].name,
        "max_queue_length": max(run.pending, default=0),
        "passes": run.passes,
    }


def build_report(
    trace: Trace,
    runs: Sequence[Run],
    gpu_count: int,
    memory_mib: int,
    *,
    errors: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The stable JSON object ``simulate --json`` prints (key order is part of the format)."""
    jobs = runs[0].jobs if runs else trace.jobs
    return {
        "trace": {
            "path": trace.path,
            "format": trace.kind,
            "jobs": len(jobs),
            "errors": list(errors),
        },
        "machine": {"gpus": gpu_count, "gpu_memory_mb": memory_mib},
        "bounds": bounds(jobs, gpu_count),
        "policies": {run.policy.name: summarise(run) for run in runs},
        "notes": list(notes),
    }


# --------------------------------------------------------------------------- the table


def format_seconds(seconds: float) -> str:
    """12.5s, 4m 05s, 53h 20m: short, and hours never roll over into days, so that the
    policies' columns compare at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


_ROWS: tuple[tuple[str, str, str | None], ...] = (
    # label, key in a policy's summary, key in bounds for the last column
    ("makespan", "makespan_s", "makespan_lower_bound_s"),
    ("busy period", "busy_period_s", None),
    ("utilisation", "utilisation", None),
    ("share held", "held_share", None),
    ("mean JCT", "jct_mean_s", "jct_mean_lower_bound_s"),
    ("p95 JCT", "jct_p95_s", "jct_p95_lower_bound_s"),
    ("mean wait", "wait_mean_s", None),
    ("p95 wait", "wait_p95_s", None),
    ("longest wait", "wait_max_s", None),
    ("max queue", "max_queue_length", None),
)


def _cell(key: str, value: Any) -> str:
    if key in ("utilisation", "held_share"):
        return f"{value:.1%}"
    if key.endswith("_s"):
        return format_seconds(value)
    return str(value)


def render_table(report: dict[str, Any]):  # type: ignore[no-untyped-def]
    """A rich Table: one row per figure, one column per policy, and the lower bound."""
    from rich.table import Table

    table = Table()
    table.add_column("")
    policies = list(report["policies"].values())
    for name in report["policies"]:
        table.add_column(name, justify="right")
    table.add_column("lower bound", justify="right")
    for label, key, bound_key in _ROWS:
        cells = [_cell(key, p[key]) for p in policies]
        bound = report["bounds"].get(bound_key) if bound_key else None
        cells.append("" if bound is None or bound_key is None else _cell(bound_key, bound))
        table.add_row(label, *cells)
        if key == "wait_max_s":
            table.add_row("  (job)", *[p["wait_max_job"] for p in policies], "")
    return table


def render_title(report: dict[str, Any]) -> str:
    """The line above the table: how many jobs, from where, on how many GPUs."""
    trace, machine = report["trace"], report["machine"]
    plural = "s" if machine["gpus"] != 1 else ""
    return f"{trace['jobs']} jobs from {trace['path']} on {machine['gpus']} GPU{plural}"


def render_notes(report: dict[str, Any]) -> list[str]:
    """The lines printed under the table: what the bound is, what each policy is, notes."""
    b = report["bounds"]
    lines = []
    if b:
        lines.append(
            f"lower bound: makespan >= max(work/capacity {format_seconds(b['work_bound_s'])}, "
            f"longest job {format_seconds(b['longest_job_s'])}, last submit+duration "
            f"{format_seconds(b['arrival_bound_s'])}); JCT >= the job's duration"
        )
    lines += [f"{name}: {p['description']}" for name, p in report["policies"].items()]
    lines += [f"note: {n}" for n in report["notes"]]
    return lines
