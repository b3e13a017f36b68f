"""Jobs, statuses, GPU snapshots and line errors to JSON-ready dicts: the writing half of ``codec``.

Apart from the decoders because writing needs no checks; the shape it writes is described in
``codec``. Dict literals rather than reflection: encoding runs for every live job on every save.
"""

from __future__ import annotations

from typing import Any

from gpu_scheduler.core.model import (
    Cancelled,
    DependencyFailed,
    Failed,
    Finished,
    GpuSnapshot,
    Job,
    JobSpec,
    Killed,
    LaunchFailed,
    LineError,
    Outcome,
    Pending,
    Running,
    Status,
    Succeeded,
    TimedOut,
)


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return {
        "job_id": spec.job_id,
        "source": spec.source,
        "line_no": spec.line_no,
        "text": spec.text,
        "priority": spec.priority,
        "script": spec.script,
        "conda_env": spec.conda_env,
        "args": list(spec.args),
        "allowed_gpus": None if spec.allowed_gpus is None else list(spec.allowed_gpus),
        "share": spec.share,
        "timeout_s": spec.timeout_s,
        "name": spec.name,
        "retries": spec.retries,
        "llm": spec.llm,
        "after": list(spec.after),
        "tenant": spec.tenant,
    }


def outcome_to_dict(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Succeeded):
        return {"kind": outcome.kind}
    if isinstance(outcome, Failed):
        return {"kind": outcome.kind, "exit_code": outcome.exit_code}
    if isinstance(outcome, TimedOut):
        return {"kind": outcome.kind, "timeout_s": outcome.timeout_s}
    if isinstance(outcome, LaunchFailed):
        return {"kind": outcome.kind, "message": outcome.message}
    if isinstance(outcome, Cancelled):
        return {"kind": outcome.kind, "by": outcome.by}
    if isinstance(outcome, Killed):
        return {"kind": outcome.kind, "reason": outcome.reason}
    if isinstance(outcome, DependencyFailed):
        return {"kind": outcome.kind, "dependency": outcome.dependency}
    raise TypeError(f"not an outcome: {outcome!r}")


def status_to_dict(status: Status) -> dict[str, Any]:
    if isinstance(status, Pending):
        return {
            "kind": "pending",
            "enqueued_at": status.enqueued_at,
            "not_before": status.not_before,
            "reason": status.reason,
        }
    if isinstance(status, Running):
        return {
            "kind": "running",
            "started_at": status.started_at,
            "gpus": list(status.gpus),
            "share_per_gpu": status.share_per_gpu,
            "session": status.session,
            "pid": status.pid,
            "pid_started_at": status.pid_started_at,
            "stopping": status.stopping,
            "stop_detail": status.stop_detail,
            "stop_requested_at": status.stop_requested_at,
            "suspended": status.suspended,
        }
    if isinstance(status, Finished):
        return {
            "kind": "finished",
            "finished_at": status.finished_at,
            "outcome": outcome_to_dict(status.outcome),
            "started_at": status.started_at,
            "gpus": list(status.gpus),
        }
    raise TypeError(f"not a job status: {status!r}")


def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "spec": spec_to_dict(job.spec),
        "share": job.share,
        "status": status_to_dict(job.status),
        "seq": job.seq,
        "submitted_at": job.submitted_at,
        "attempts": job.attempts,
        "launch_failures": job.launch_failures,
        "retries_used": job.retries_used,
        "requeues": job.requeues,
        "preemptions": job.preemptions,
        "oom_requeues": job.oom_requeues,
        "last_exit_code": job.last_exit_code,
    }


def gpu_snapshot_to_dict(gpu: GpuSnapshot) -> dict[str, Any]:
    processes = gpu.processes
    return {
        "index": gpu.index,
        "name": gpu.name,
        "memory_total_mib": gpu.memory_total_mib,
        "memory_used_mib": gpu.memory_used_mib,
        "utilization_pct": gpu.utilization_pct,
        "processes": None
        if processes is None
        else [{"pid": p.pid, "used_mib": p.used_mib} for p in processes],
        "healthy": gpu.healthy,
        "error": gpu.error,
        "uuid": gpu.uuid,
        **({"node": gpu.node} if gpu.node else {}),  # cluster GPUs only (Ray)
        **({"node_used": gpu.node_used} if gpu.node_used is not None else {}),
    }


def line_error_to_dict(error: LineError) -> dict[str, Any]:
    return {
        "source": error.source,
        "line_no": error.line_no,
        "text": error.text,
        "message": error.message,
        "expected": error.expected,
    }
