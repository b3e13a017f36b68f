"""Sharing a machine: dependencies, tenant fair share and quotas, preemption (pure core)."""

from __future__ import annotations

from gpu_scheduler.core.dependencies import resolve_dependencies
from gpu_scheduler.core.fairshare import FairShare, TenantRule
from gpu_scheduler.core.model import DependencyFailed, Finished, GpuSnapshot, JobSpec, Stop, Suspend
from gpu_scheduler.core.preemption import PreemptionRule
from gpu_scheduler.core.scheduler import Policy, Scheduler


def spec(
    job_id: str,
    priority: int = 0,
    *,
    name: str | None = None,
    after: tuple[str, ...] = (),
    tenant: str = "default",
) -> JobSpec:
    return JobSpec(
        job_id,
        f"{tenant}.txt",
        1,
        job_id,
        priority,
        "/x/train.py",
        name=name,
        after=after,
        tenant=tenant,
    )


def gpus(n: int, used_mib: int = 0) -> list[GpuSnapshot]:
    return [GpuSnapshot(i, memory_total_mib=80_000, memory_used_mib=used_mib) for i in range(n)]


# ---------------------------------------------------------------------------- dependencies


def test_a_pipeline_runs_in_order() -> None:
    s = Scheduler(Policy(), range(2))
    specs = [
        spec("a", name="prep"),
        spec("b", name="train", after=("prep",)),
        spec("c", name="eval", after=("train",)),
    ]
    resolved = resolve_dependencies(specs)
    assert not resolved.errors
    s.sync([(sp, 500) for sp in resolved.specs], 0.0, resolved.deps)
    assert [lc.job_id for lc in s.schedule(gpus(2), 0.0).launches] == ["a"]
    assert "waiting for prep to complete" in s.last_pass.waiting["b"]
    s.exited("a", 0, 1.0)
    assert [lc.job_id for lc in s.schedule(gpus(2), 1.0).launches] == ["b"]
    s.exited("b", 0, 2.0)
    assert [lc.job_id for lc in s.schedule(gpus(2), 2.0).launches] == ["c"]


def test_a_failing_step_fails_its_dependants_with_the_reason() -> None:
    s = Scheduler(Policy(), range(2))
    specs = [
        spec("a", name="prep"),
        spec("b", name="train", after=("prep",)),
        spec("c", name="eval", after=("train",)),
    ]
    resolved = resolve_dependencies(specs)
    s.sync([(sp, 500) for sp in resolved.specs], 0.0, resolved.deps)
    s.schedule(gpus(2), 0.0)
    s.exited("a", 2, 5.0)
    for job_id, dep in (("b", "prep"), ("c", "train")):
        status = s.job(job_id).status
        assert isinstance(status, Finished) and status.outcome == DependencyFailed(dep)
        assert s.job(job_id).state == "failed"
    assert s.pending_count() == 0


def test_unknown_names_cycles_and_their_dependants_are_line_errors() -> None:
    specs = [
        spec("a", name="x", after=("y",)),
        spec("b", name="y", after=("x",)),
        spec("c", after=("nope",)),
        spec("d", after=("c",)),
        spec("e", name="ok"),
    ]
    resolved = resolve_dependencies(specs)
    messages = {e.text: e.message for e in resolved.errors}
    assert messages["a"] == "dependency cycle: x -> y -> x"
    assert messages["c"] == "after=nope: no job has this name or id"
    assert messages["d"].startswith("depends on c")
    assert [sp.job_id for sp in resolved.specs] == ["e"]


def test_a_dependency_on_an_already_finished_job_whose_line_is_gone_is_met() -> None:
    s = Scheduler(Policy(), range(1))
    s.sync([(spec("a", name="prep"), 1000)], 0.0)
    s.schedule(gpus(1), 0.0)
    s.exited("a", 0, 1.0)
    later = [spec("b", after=("prep",))]
    resolved = resolve_dependencies(later, known_names={"prep": "a"}, known_ids=s.jobs)
    s.sync([(sp, 1000) for sp in resolved.specs], 2.0, resolved.deps)
    assert [lc.job_id for lc in s.schedule(gpus(1), 2.0).launches] == ["b"]


# ---------------------------------------------------------------------------- fair share


def test_decayed_usage_is_the_integral_of_the_held_share() -> None:
    fair = FairShare(half_life_s=100.0)
    fair.advance(0.0, {})
    fair.advance(100.0, {"alice": 2000})  # 2 GPUs for one half-life
    expected = 2 * fair.tau * 0.5  # R * tau * (1 - 2**-1)
    assert abs(fair.usage["alice"] - expected) < 1e-9
    fair.advance(200.0, {})
    assert abs(fair.usage["alice"] - expected / 2) < 1e-9


def test_two_equal_tenants_flooding_the_queue_get_about_half_each() -> None:
    policy = Policy(fair_share_half_life_s=600.0, aging_interval_s=0)
    s = Scheduler(policy, range(4))
    n = 0
    for t in range(200):  # alice floods first, then bob: order alone would favour alice
        s.add(spec(f"a{t}", tenant="alice"), 1000, 0.0)
    for t in range(200):
        s.add(spec(f"b{t}", tenant="bob"), 1000, 0.0)
    share_seconds = {"alice": 0.0, "bob": 0.0}
    running: dict[str, tuple[str, float]] = {}
    now = 0.0
    while now < 3000:
        for launch in s.schedule(gpus(4), now).launches:
            running[launch.job_id] = (s.job(launch.job_id).spec.tenant, now)
            n += 1
        now += 10.0  # every job runs 30 s
        for job_id, (tenant, start) in list(running.items()):
            if now - start >= 30:
                share_seconds[tenant] += now - start
                s.exited(job_id, 0, now)
                del running[job_id]
    total = sum(share_seconds.values())
    assert n > 100 and abs(share_seconds["alice"] / total - 0.5) < 0.1


def test_a_tenant_at_its_cap_gets_nothing_more_while_others_wait() -> None:
    policy = Policy(tenants={"alice": TenantRule(max_gpus=1.0)}, aging_interval_s=0)
    s = Scheduler(policy, range(4))
    for i in range(4):
        s.add(spec(f"a{i}", tenant="alice"), 500, 0.0)
    launched = [lc.job_id for lc in s.schedule(gpus(4), 0.0).launches]
    assert launched == ["a0", "a1"]  # 2 x 0.5 = its 1 GPU cap; two GPUs stay free
    assert s.last_pass.waiting["a2"] == "tenant alice is at its max_gpus (1)"
    s.add(spec("b0", tenant="bob"), 1000, 1.0)
    assert [lc.job_id for lc in s.schedule(gpus(4), 1.0).launches] == ["b0"]


# ---------------------------------------------------------------------------- preemption


def preempting(mode: str = "requeue", **kw: object) -> Scheduler:
    rule = PreemptionRule(enabled=True, mode=mode, grace_s=5.0, **kw)  # type: ignore[arg-type]
    return Scheduler(Policy(preemption=rule, aging_interval_s=0), range(2))


def test_requeue_mode_stops_the_cheapest_victims_and_restarts_them_later() -> None:
    s = preempting()
    s.add(spec("low-old", 5), 1000, 0.0)
    s.schedule(gpus(2), 0.0)
    s.add(spec("low-new", 5), 1000, 10.0)
    s.schedule(gpus(2), 10.0)
    s.add(spec("urgent", 0), 1000, 20.0)
    report = s.schedule(gpus(2), 20.0)
    assert report.launches == ()
    assert report.actions == (Stop("low-new", "preempt", 5.0, "preempted by train.py (urgent)"),)
    assert s.schedule(gpus(2), 21.0).actions == ()  # never more than needed
    s.exited("low-new", 143, 22.0)
    assert s.job("low-new").state == "pending" and s.job("low-new").preemptions == 1
    assert [lc.job_id for lc in s.schedule(gpus(2), 22.0).launches] == ["urgent"]
    s.exited("urgent", 0, 30.0)
    (again,) = s.schedule(gpus(2), 30.0).launches
    assert again.job_id == "low-new" and again.preempted is True


def test_no_preemption_without_the_priority_gap_or_past_the_limit() -> None:
    s = preempting(min_priority_gap=3)
    s.add(spec("low", 2), 2000, 0.0)
    s.schedule(gpus(2), 0.0)
    s.add(spec("urgent", 0), 1000, 1.0)
    assert s.schedule(gpus(2), 1.0).actions == ()


def test_suspend_mode_freezes_the_victim_and_resumes_it_when_room_returns() -> None:
    s = preempting("suspend")
    s.add(spec("low", 5), 2000, 0.0)
    s.schedule(gpus(2), 0.0)
    s.add(spec("urgent", 0), 500, 1.0)  # half a GPU fits beside the frozen job's 10 GB
    report = s.schedule(gpus(2, used_mib=10_000), 1.0)
    assert report.actions == (Suspend("low", "preempted by train.py (urgent)"),)
    assert [lc.job_id for lc in report.launches] == ["urgent"]
    assert sorted(s.used().values()) == [0, 500]
    s.exited("urgent", 0, 5.0)
    resumed = s.schedule(gpus(2), 5.0).actions
    assert [type(a).__name__ for a in resumed] == ["Resume"]
    assert s.used() == {0: 1000, 1: 1000}
    assert s.job("low").status.suspended is False  # type: ignore[union-attr]


def test_suspend_falls_back_to_requeue_when_gpu_memory_would_not_fit_both() -> None:
    s = preempting("suspend")
    s.add(spec("low", 5), 2000, 0.0)
    s.schedule(gpus(2), 0.0)
    s.add(spec("urgent", 0), 1000, 1.0)
    report = s.schedule(gpus(2, used_mib=70_000), 1.0)  # the frozen job's memory stays put
    assert [type(a).__name__ for a in report.actions] == ["Stop"]


def test_a_retried_job_whose_line_is_gone_is_not_dropped_by_the_next_sync() -> None:
    # regression: sync dropped every pending job without a line, including a user's retry
    s = Scheduler(Policy(), range(1))
    s.sync([(spec("a"), 1000)], 0.0)
    s.schedule(gpus(1), 0.0)
    s.exited("a", 3, 1.0)
    s.sync([], 2.0)  # the user removed the line
    s.retry("a", 3.0)
    s.sync([(spec("other"), 1000)], 4.0)  # any later edit of the file
    assert s.job("a").state == "pending"
    assert [lc.job_id for lc in s.schedule(gpus(1), 4.0).launches] == ["a"]
