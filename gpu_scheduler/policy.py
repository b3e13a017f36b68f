"""The scheduling rules a config asks for, as the core's Policy (used by the daemon and simulator)."""

from __future__ import annotations

from gpu_scheduler.config import Settings
from gpu_scheduler.core.fairshare import TenantRule
from gpu_scheduler.core.preemption import PreemptionRule
from gpu_scheduler.core.scheduler import Policy


def policy_from(settings: Settings, mode: str | None = None) -> Policy:
    """``mode`` overrides ``execution.mode`` (``start --mode``). On Ray, sessions are the Ray
    submission ids, and preemption stops jobs (Ray cannot freeze a job: suspend = requeue)."""
    pre = settings.scheduler.preemption
    ray = (mode or settings.execution.mode) == "ray"
    return Policy(
        aging_interval_s=settings.scheduler.aging.interval_s,
        memory_threshold=settings.gpu.memory_threshold,
        load_threshold=settings.gpu.load_threshold,
        max_assignment_attempts=settings.jobs.max_assignment_attempts,
        assignment_retry_wait_s=settings.jobs.assignment_retry_wait_s,
        default_timeout_s=settings.scheduler.job_timeout_s,
        stop_grace_s=settings.scheduler.graceful_shutdown_timeout_s,
        session_prefix=settings.execution.session_prefix,
        sessions_by_attempt=ray,
        max_concurrent_jobs=settings.jobs.max_concurrent_jobs,
        queue_size_limit=settings.jobs.queue_size_limit,
        preemption=PreemptionRule(
            enabled=pre.enabled,
            mode="requeue" if ray else pre.mode,
            min_priority_gap=pre.min_priority_gap,
            grace_s=pre.grace_s,
            max_preemptions_per_job=pre.max_preemptions_per_job,
        ),
        fair_share_half_life_s=settings.scheduler.fair_share_half_life_s,
        tenants={
            name: TenantRule(weight=rule.weight, max_gpus=rule.max_gpus)
            for name, rule in settings.tenants.items()
        },
    )
