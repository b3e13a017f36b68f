"""Fair share between tenants: who is furthest below their weighted share of recent GPU use.

Usage is GPU-share-seconds with exponential decay (half-life ``half_life_s``): for a tenant
holding a constant share R (GPUs) over an interval dt, usage becomes
``U * d + R * tau * (1 - d)`` with ``d = 2 ** (-dt / half_life_s)`` and ``tau = half_life_s / ln 2``,
the exact integral of the decayed use. The next placement goes to the pending tenant with the
smallest ``(U + tau * R) / weight``: decayed past use plus what its running jobs will add if they
keep running, per unit of weight. Two equally weighted tenants flooding the queue thus converge
to half of the machine each; a tenant that was idle for a while gets priority until it catches up.

A tenant's ``max_gpus`` caps the sum of its running shares, whatever the fair order says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpu_scheduler.core.units import ONE_GPU


@dataclass(frozen=True)
class TenantRule:
    weight: float = 1.0
    max_gpus: float | None = None  # cap on the sum of running shares, in GPUs


@dataclass
class FairShare:
    half_life_s: float = 3600.0
    rules: Mapping[str, TenantRule] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)  # decayed GPU-seconds
    updated_at: float | None = None

    @property
    def tau(self) -> float:
        return self.half_life_s / math.log(2)

    def rule(self, tenant: str) -> TenantRule:
        return self.rules.get(tenant, TenantRule())

    def advance(self, now: float, running: Mapping[str, int]) -> None:
        """Account for the time since the last call, during which ``running`` (milli-GPU) held."""
        if self.updated_at is None or now <= self.updated_at or self.half_life_s <= 0:
            self.updated_at = now if self.updated_at is None else max(self.updated_at, now)
            return
        decay = 2.0 ** (-(now - self.updated_at) / self.half_life_s)
        for tenant in set(self.usage) | set(running):
            held = running.get(tenant, 0) / ONE_GPU
            self.usage[tenant] = self.usage.get(tenant, 0.0) * decay + held * self.tau * (1 - decay)
        self.updated_at = now

    def key(self, tenant: str, running_milli: int) -> float:
        """Smaller goes first: projected decayed use per unit of weight."""
        projected = self.usage.get(tenant, 0.0) + self.tau * running_milli / ONE_GPU
        return projected / max(self.rule(tenant).weight, 1e-9)

    def cap_allows(self, tenant: str, running_milli: int, extra_milli: int) -> bool:
        cap = self.rule(tenant).max_gpus
        return cap is None or running_milli + extra_milli <= round(cap * ONE_GPU)
