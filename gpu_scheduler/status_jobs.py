"""One job, and one tenant, as rows of the status view.

Split from ``status`` because ``job_row`` is shared: ``status --json`` lists it under ``jobs``
and ``list-jobs --json`` prints it alone, so the one definition of a job's JSON row lives here,
beside ``share_gpus`` (the milli-GPU -> GPUs conversion every row uses) and ``tenant_rows``
(``metrics`` builds the same per-tenant rows). Pure: ``now`` is passed in.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from gpu_scheduler.core.model import (
    Failed,
    Finished,
    Job,
    Pending,
    Running,
    Succeeded,
    describe_outcome,
)
from gpu_scheduler.core.units import ONE_GPU, format_share


@functools.lru_cache(maxsize=4096)  # a state holds a handful of distinct shares, over and over
def share_gpus(milli: int) -> float:
    """A milli-GPU share as a JSON number of GPUs (500 -> 0.5), exact to three decimals."""
    return float(format_share(milli))


def _exit_code(job: Job) -> int | None:
    st = job.status
    if isinstance(st, Finished):
        if isinstance(st.outcome, Succeeded):
            return 0
        if isinstance(st.outcome, Failed):
            return st.outcome.exit_code
    return job.last_exit_code


def _running_reason(st: Running) -> str:
    detail = f": {st.stop_detail}" if st.stop_detail else ""
    if st.stopping:
        return f"stopping ({st.stopping}{detail})"
    if st.suspended:
        return f"suspended{detail}"
    return ""


def job_row(
    job: Job, now: float, default_timeout_s: float | None = None, overrun: str = ""
) -> dict[str, Any]:
    """One job as the stable JSON object of ``status --json`` ``jobs`` and ``list-jobs --json``.

    Every row has every key (null when it does not apply), so scripts never need ``.get``.
    Times are POSIX seconds, durations seconds, shares GPUs (0.5 = half a GPU).
    """
    spec, st = job.spec, job.status
    timeout = spec.timeout_s if spec.timeout_s is not None else default_timeout_s
    row: dict[str, Any] = {
        "id": spec.job_id,
        "name": spec.name,
        "label": spec.label,
        "state": job.state,
        "outcome": None,
        "priority": spec.priority,
        "share": share_gpus(job.share),
        "share_milli": job.share,
        "seq": job.seq,
        "script": spec.script,
        "args": list(spec.args),
        "conda_env": spec.conda_env,
        "tenant": spec.tenant,
        "source": spec.source,
        "line_no": spec.line_no,
        "allowed_gpus": None if spec.allowed_gpus is None else list(spec.allowed_gpus),
        "attempts": job.attempts,
        "preemptions": job.preemptions,
        "submitted_at": job.submitted_at,
        "wait_s": None,
        "gpus": [],
        "share_per_gpu": None,
        "session": None,
        "suspended": False,
        "pid": None,
        "started_at": None,
        "elapsed_s": None,
        "timeout_s": timeout,
        "finished_at": None,
        "run_s": None,
        "exit_code": _exit_code(job),
        "reason": "",
        "gpu_memory_overrun": overrun,
    }
    if isinstance(st, Pending):
        row["wait_s"] = max(0.0, now - st.enqueued_at)
        row["reason"] = st.reason
    elif isinstance(st, Running):
        row.update(
            gpus=list(st.gpus),
            share_per_gpu=share_gpus(st.share_per_gpu),
            session=st.session,
            suspended=st.suspended,
            pid=st.pid,
            started_at=st.started_at,
            elapsed_s=max(0.0, now - st.started_at),
            wait_s=max(0.0, st.started_at - job.submitted_at),
            reason=_running_reason(st),
        )
    elif isinstance(st, Finished):
        row.update(
            gpus=list(st.gpus),
            started_at=st.started_at,
            finished_at=st.finished_at,
            outcome=st.outcome.kind,
            reason=describe_outcome(st.outcome),
        )
        if st.started_at is not None:
            row["wait_s"] = max(0.0, st.started_at - job.submitted_at)
            row["run_s"] = max(0.0, st.finished_at - st.started_at)
    return row


def tenant_rows(jobs: Iterable[Job], info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per tenant: running/pending jobs, running share, fair-share usage, weight and quota.

    ``info`` is the daemon's ``observed.tenants`` (weight, max_gpus, decayed usage per tenant).
    """
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        if name not in rows:
            meta = info.get(name) if isinstance(info.get(name), Mapping) else {}
            rows[name] = {
                "name": name,
                "running": 0,
                "pending": 0,
                "running_share": 0.0,
                "usage_gpu_s": float(meta.get("usage_gpu_s") or 0.0),
                "weight": float(meta.get("weight") or 1.0),
                "max_gpus": meta.get("max_gpus"),
            }
        return rows[name]

    for name in info:
        row(str(name))
    for job in jobs:
        st = job.status
        if isinstance(st, Running):
            r = row(job.spec.tenant)
            r["running"] += 1
            if not st.suspended:
                r["running_share"] = round(r["running_share"] + job.share / ONE_GPU, 3)
        elif isinstance(st, Pending):
            row(job.spec.tenant)["pending"] += 1
    return [rows[name] for name in sorted(rows)]
