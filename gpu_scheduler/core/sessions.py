"""The name of the session a job's run gets: what the launcher starts and recovery looks for.

Kept apart because the naming rule is one decision of its own (``core.scheduler`` re-exports
``session_name``), and the name must be predictable for users: ``attach`` and ``screen -ls``
show it. (A restart follows a running job by the session saved in its state and its runner's
records, not by rebuilding the name.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpu_scheduler.core.model import Job
from gpu_scheduler.core.policy import Policy

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def session_name(prefix: str, gpus: Sequence[int], script: str, job_id: str) -> str:
    """``gpujob_<first gpu>_<script stem>_<job id>``, in characters screen accepts."""
    base = script.rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _UNSAFE.sub("-", stem).strip("-.")[:40] or "job"
    first = gpus[0] if gpus else "none"
    return f"{prefix}_{first}_{stem}_{job_id}"


def session_for(policy: Policy, job: Job, gpus: Sequence[int]) -> str:
    """The session of ``job``'s next attempt on ``gpus`` (see ``Policy.sessions_by_attempt``)."""
    if policy.sessions_by_attempt:
        attempt = job.attempts + 1
        return job.job_id if attempt == 1 else f"{job.job_id}-{attempt}"
    return session_name(policy.session_prefix, gpus, job.spec.script, job.job_id)
