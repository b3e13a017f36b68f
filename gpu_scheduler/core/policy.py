"""The scheduling rules' knobs, apart from the scheduler that follows them.

A frozen value built once from the config (``gpu_scheduler.policy.policy_from``) and varied by
the what-if simulator; ``core.scheduler`` re-exports it, and most callers import it from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpu_scheduler.core.fairshare import TenantRule
from gpu_scheduler.core.preemption import PreemptionRule


@dataclass(frozen=True)
class Policy:
    """The knobs of the scheduling rules (from the config; the simulator varies them)."""

    aging_interval_s: float = 600.0
    memory_threshold: float = 0.9
    load_threshold: float = 0.9
    max_assignment_attempts: int = 3
    assignment_retry_wait_s: float = 10.0
    default_timeout_s: float | None = None
    stop_grace_s: float = 30.0
    session_prefix: str = "gpujob"
    # Sessions named by job id and attempt ("<id>", then "<id>-2", ...), not by GPU and script:
    # a Ray submission id, which must be new for every attempt and findable after a restart.
    sessions_by_attempt: bool = False
    max_concurrent_jobs: int | None = None
    queue_size_limit: int | None = None  # new lines wait in the file while this many are queued
    reservation: bool = True  # hold GPUs for a blocked head-of-queue job
    best_fit: bool = True  # False: first fit (a simulator baseline)
    preemption: PreemptionRule = PreemptionRule()
    fair_share_half_life_s: float = 3600.0
    tenants: Mapping[str, TenantRule] = field(default_factory=dict)
