"""The policies the simulator compares. Each one is the real ``core.scheduler.Scheduler``.

There is no second copy of any scheduling rule here: a policy is a ``core.scheduler.Policy``
(the same knobs the daemon's config sets) plus, for whole GPUs, a rounding of each job's share.

* ``fractional`` — the project's own rules as the daemon runs them with this config: fractional
  shares, best fit, a reservation for the first job in queue order that does not fit (later jobs
  are backfilled onto the other GPUs only), aging from ``scheduler.aging.interval_s``.
* ``whole-gpu-fifo`` — how task-spooler or simple_gpu_scheduler would run the same workload: a
  job takes ceil(share) whole GPUs, strict priority-then-arrival order with no aging and no
  backfill past a blocked head. Modelled as the same core with shares rounded up to whole GPUs
  and ``Policy(aging_interval_s=0, reservation=True)``. Why the reservation gives exactly
  strict FIFO: with whole-GPU shares every GPU is either completely free or completely taken,
  so when the head job needs k GPUs and fewer than k are free, the core's reservation (the k GPUs
  with the most free share) takes *every* free GPU, and nothing after the head can start until it
  does. (The exception is a jobs.txt line with allowed GPUs: its reservation stays within the
  allowed GPUs, so other GPUs are still backfilled. CSV traces have no allowed GPUs.)
* ``first-fit`` — fractional shares placed on the lowest-numbered GPU that fits, no reservation
  (so a stream of small jobs can starve a big one), aging from the config:
  ``Policy(best_fit=False, reservation=False)``.

Every other field (max_concurrent_jobs, thresholds) is the config's, as ``policy_from`` makes it
for the daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from gpu_scheduler.core.scheduler import Policy
from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.simulate import POLICY_NAMES

__all__ = ["DESCRIPTIONS", "POLICY_NAMES", "SimPolicy", "make_policies", "make_policy"]

DESCRIPTIONS = {
    "fractional": "fractional shares, best fit, reservation for the blocked head, aging",
    "whole-gpu-fifo": "ceil(share) whole GPUs, strict priority/arrival order, no backfill",
    "first-fit": "fractional shares, first fit, no reservation, aging",
}


@dataclass(frozen=True)
class SimPolicy:
    """A named way to run the workload: the core Policy, and whether shares become whole GPUs."""

    name: str
    policy: Policy
    whole_gpus: bool = False
    description: str = ""

    def share_for(self, share: int) -> int:
        """The share the core is asked to place for a job that requests ``share`` milli-GPU."""
        if self.whole_gpus:
            return -(-share // ONE_GPU) * ONE_GPU
        return share


def make_policy(name: str, base: Policy) -> SimPolicy:
    """The named policy on top of ``base`` (the config's Policy); ValueError for an unknown name.

    Preemption is switched off: the engine does not model a victim's stop or freeze yet.
    Tenant fair share and caps come from the config and are simulated by the core itself.
    """
    base = replace(base, preemption=replace(base.preemption, enabled=False))
    if name == "fractional":
        policy = replace(base, reservation=True, best_fit=True)
        return SimPolicy(name, policy, False, DESCRIPTIONS[name])
    if name == "whole-gpu-fifo":
        policy = replace(base, aging_interval_s=0.0, reservation=True, best_fit=True)
        return SimPolicy(name, policy, True, DESCRIPTIONS[name])
    if name == "first-fit":
        policy = replace(base, reservation=False, best_fit=False)
        return SimPolicy(name, policy, False, DESCRIPTIONS[name])
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")


def make_policies(names: Iterable[str], base: Policy) -> list[SimPolicy]:
    """Policies in the order given, each once (default: all three)."""
    chosen = list(dict.fromkeys(names)) or list(POLICY_NAMES)
    return [make_policy(name, base) for name in chosen]
