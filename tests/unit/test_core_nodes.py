"""The core on a cluster: GPUs that belong to nodes (Ray mode), through the public Scheduler API.

A gang (k > 1 GPUs) never spans two nodes, in placement, reservation and preemption alike;
work a cluster manager counts on a node that is not ours takes capacity from that node; GPUs on
node "" (this machine) behave exactly as before nodes existed.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from gpu_scheduler.core.allocator import GpuRoom, never_fits, place, reserve
from gpu_scheduler.core.model import GpuSnapshot, JobSpec, Placement, Running
from gpu_scheduler.core.preemption import PreemptionRule
from gpu_scheduler.core.scheduler import Policy, Scheduler
from gpu_scheduler.core.units import ONE_GPU, gpus_needed, share_per_gpu

NOW = 1_700_000_000.0


def spec(job_id: str, priority: int = 0, allowed: tuple[int, ...] | None = None) -> JobSpec:
    return JobSpec(job_id, "jobs.txt", 1, job_id, priority, "/x/train.py", allowed_gpus=allowed)


def cluster(nodes: Mapping[str, int], used: Mapping[str, int] | None = None) -> list[GpuSnapshot]:
    """Ray-style snapshots: node after node, contiguous indices, no memory figures, and Ray's
    count of milli-GPU taken on each node (``used``; 0 where not given)."""
    snaps, index = [], 0
    for node, count in nodes.items():
        for _ in range(count):
            snaps.append(GpuSnapshot(index, node=node, node_used=(used or {}).get(node, 0)))
            index += 1
    return snaps


def scheduler(gpus: list[GpuSnapshot], **policy: object) -> Scheduler:
    return Scheduler(Policy(**policy), [g.index for g in gpus])  # type: ignore[arg-type]


def start(
    s: Scheduler, gpus: list[GpuSnapshot], *jobs: tuple[str, int, tuple[int, ...] | None]
) -> None:
    """Add and place jobs (id, share, allowed GPUs) one pass each, and report them launched."""
    for job_id, share, allowed in jobs:
        s.add(spec(job_id, 5, allowed), share, NOW)
        launched = [lc.job_id for lc in s.schedule(gpus, NOW).launches]
        assert launched == [job_id], s.last_pass.waiting
        s.launched(job_id, 100, NOW)


def gpus_of(s: Scheduler, job_id: str) -> tuple[int, ...]:
    run = s.jobs[job_id].status
    assert isinstance(run, Running), run
    return run.gpus


# --------------------------------------------------------------------------- gangs and nodes


def test_a_two_gpu_job_never_spans_nodes() -> None:
    # A: GPUs 0-3 with three taken by others, B: GPUs 4-5 with one taken: two free GPUs in all
    gpus = cluster({"A": 4, "B": 2}, used={"A": 3000, "B": 1000})
    s = scheduler(gpus)
    s.add(spec("gang"), 2000, NOW)
    report = s.schedule(gpus, NOW)
    assert report.launches == ()
    assert [g for g, r in report.rooms.items() if r.free == ONE_GPU] == [3, 5]  # one per node
    assert "needs share 2" in report.waiting["gang"]
    gpus = cluster({"A": 4, "B": 2}, used={"A": 3000, "B": 0})  # B's other user is done
    [launch] = s.schedule(gpus, NOW + 1).launches
    assert (launch.job_id, launch.gpus, launch.share_per_gpu) == ("gang", (4, 5), ONE_GPU)


def test_place_takes_no_gang_across_nodes_even_when_best_fit_would() -> None:
    rooms = {g: GpuRoom(g, ONE_GPU, 0, node="A" if g < 2 else "B") for g in range(4)}
    free = {0: 1000, 1: 200, 2: 800, 3: 500}
    assert place(1600, rooms, free) is None  # 0.8 per GPU: only 0 (A) and 2 (B) have that
    free[3] = 900
    assert place(1600, rooms, free) == Placement((2, 3), 800)


def test_best_fit_picks_the_node_whose_gpus_fit_best() -> None:
    gpus = cluster({"A": 4, "B": 2})
    s = scheduler(gpus)
    # A: GPUs 0 and 1 have 0.8 free, 2 and 3 none; B: two whole GPUs free
    start(s, gpus, ("a0", 200, (0,)), ("a1", 200, (1,)), ("a2", 1000, (2,)), ("a3", 1000, (3,)))
    s.add(spec("gang", 0), 1500, NOW)  # 0.75 on each of two GPUs
    [launch] = s.schedule(gpus, NOW).launches
    assert launch.gpus == (0, 1)  # B's whole GPUs stay whole for a bigger job
    s.add(spec("whole", 0), 2000, NOW)
    [launch] = s.schedule(gpus, NOW).launches
    assert launch.gpus == (4, 5)


def test_first_fit_gang_takes_the_lowest_gpus_of_a_node_that_fits() -> None:
    rooms = {g: GpuRoom(g, ONE_GPU, 0, node="A" if g < 3 else "B") for g in range(5)}
    free = {0: 0, 1: 1000, 2: 0, 3: 1000, 4: 1000}
    assert place(2000, rooms, free, best_fit=False) == Placement((3, 4), ONE_GPU)
    assert place(2000, rooms, free, best_fit=True) == Placement((3, 4), ONE_GPU)


def test_a_blocked_gang_holds_gpus_on_one_node_and_small_jobs_backfill_elsewhere() -> None:
    gpus = cluster({"A": 4, "B": 2})
    s = scheduler(gpus)
    start(s, gpus, ("a0", 1000, (0,)), ("a1", 1000, (1,)), ("a2", 500, (2,)), ("b4", 500, (4,)))
    # free now: A 2: 0.5, 3: 1; B 4: 0.5, 5: 1 -- GPUs 3 and 5 are two whole GPUs, on two nodes
    s.add(spec("gang", 0), 2000, NOW)
    s.add(spec("small", 1), 500, NOW)
    report = s.schedule(gpus, NOW)
    assert report.reserved_for == "gang"
    held = report.reserved_gpus
    assert len(held) == 2 and len({report.rooms[g].node for g in held}) == 1, held
    assert held == (2, 3)  # a tie on free share: the lower indices
    assert [(lc.job_id, lc.gpus) for lc in report.launches] == [("small", (4,))]


def test_reserve_holds_the_node_with_most_free_share_not_the_best_gpus_overall() -> None:
    rooms = {g: GpuRoom(g, ONE_GPU, 0, node="A" if g < 4 else "B") for g in range(6)}
    free = {0: 1000, 1: 600, 2: 0, 3: 0, 4: 900, 5: 800}
    # the two freest GPUs are 0 (A) and 4 (B); per node: A 1600, B 1700
    assert reserve(2000, rooms, free) == (4, 5)
    assert reserve(3000, rooms, free) == (0, 1, 2)  # only A has three GPUs
    assert reserve(5000, rooms, free) is None  # no node has five


def test_a_gang_preempts_on_one_node_only() -> None:
    gpus = cluster({"A": 2, "B": 2})
    s = scheduler(gpus, preemption=PreemptionRule(enabled=True, grace_s=1.0))
    start(s, gpus, ("a0", 1000, (0,)), ("a1", 1000, (1,)), ("b2", 1000, (2,)))
    s.add(spec("urgent", 0), 2000, NOW)  # GPU 3 (B) is free: only b2 must go
    report = s.schedule(gpus, NOW + 1)
    assert report.launches == ()
    assert [(a.job_id, type(a).__name__) for a in report.actions] == [("b2", "Stop")]
    s.exited("b2", 143, NOW + 2)
    [launch] = s.schedule(gpus, NOW + 2).launches
    assert (launch.job_id, launch.gpus) == ("urgent", (2, 3))
    assert s.jobs["b2"].state == "pending"  # requeued, not failed


def test_no_preemption_when_no_single_node_could_be_freed() -> None:
    gpus = cluster({"A": 2, "B": 2})
    s = scheduler(gpus, preemption=PreemptionRule(enabled=True))
    start(s, gpus, ("low-a", 1000, (0,)), ("low-b", 1000, (2,)))
    for job_id, g in (("top-a", 1), ("top-b", 3)):  # as urgent as the newcomer: not preemptable
        s.add(spec(job_id, 0, (g,)), 1000, NOW)
        s.schedule(gpus, NOW)
        s.launched(job_id, 100, NOW)
    s.add(spec("urgent", 0), 2000, NOW)
    report = s.schedule(gpus, NOW)
    assert report.actions == () and report.launches == ()  # stopping 0 and 2 would not help
    assert {s.jobs[j].state for j in ("low-a", "low-b")} == {"running"}


# --------------------------------------------------------------------------- never fits


def test_never_fits_names_the_largest_node() -> None:
    nodes = {g: ("A" if g < 4 else "B") for g in range(6)}
    assert never_fits(5000, range(6), None, nodes) == (
        "needs 5 GPUs on one node but the largest node has 4"
    )
    assert never_fits(4000, range(6), None, nodes) == ""
    assert never_fits(3000, range(6), (0, 1, 4, 5), nodes) == (
        "needs 3 GPUs on one node but the largest node has 2 allowed"
    )
    # one node (or this machine): the message as before nodes existed
    assert never_fits(5000, range(4), None, {g: "A" for g in range(4)}) == (
        "needs 5 GPUs but only 4 are on this machine"
    )
    assert never_fits(5000, range(4), None) == "needs 5 GPUs but only 4 are on this machine"


def test_a_job_bigger_than_every_node_waits_with_that_reason_and_holds_nothing() -> None:
    gpus = cluster({"A": 4, "B": 2})
    s = scheduler(gpus)
    s.add(spec("huge", 0), 5000, NOW)
    s.add(spec("fits", 1), 4000, NOW)
    report = s.schedule(gpus, NOW)
    assert report.waiting["huge"] == "needs 5 GPUs on one node but the largest node has 4"
    assert report.reserved_for is None
    assert [(lc.job_id, lc.gpus) for lc in report.launches] == [("fits", (0, 1, 2, 3))]


# --------------------------------------------------------------------------- foreign node work


def free_by_gpu(s: Scheduler, gpus: list[GpuSnapshot]) -> dict[int, int]:
    return {g: r.free for g, r in s.schedule(gpus, NOW).rooms.items()}


def test_foreign_node_work_takes_the_emptiest_gpus_first() -> None:
    nodes = {"A": 4, "B": 2}
    s = scheduler(cluster(nodes))
    start(s, cluster(nodes), ("ours", 500, (0,)))
    # Ray counts 2.5 GPUs on A: our 0.5 plus 2 GPUs of someone else's
    free = free_by_gpu(s, cluster(nodes, used={"A": 2500}))
    assert free == {0: 500, 1: 0, 2: 0, 3: 1000, 4: 1000, 5: 1000}
    assert sum(free[g] for g in range(4)) == 4000 - 2500
    # a fraction of foreign work: taken from one emptiest GPU, not spread
    free = free_by_gpu(s, cluster(nodes, used={"A": 800, "B": 1300}))
    assert free == {0: 500, 1: 700, 2: 1000, 3: 1000, 4: 0, 5: 700}


def test_our_own_shares_are_not_counted_twice() -> None:
    nodes = {"A": 2}
    s = scheduler(cluster(nodes))
    start(s, cluster(nodes), ("x", 500, (0,)), ("y", 1000, (1,)))
    without_ray = free_by_gpu(s, [GpuSnapshot(0, node="A"), GpuSnapshot(1, node="A")])
    assert without_ray == {0: 500, 1: 0}
    assert free_by_gpu(s, cluster(nodes, used={"A": 1500})) == without_ray  # exactly ours
    # Ray has not counted a job we just submitted (or already dropped one that ended): its
    # lower figure gives no extra room
    assert free_by_gpu(s, cluster(nodes, used={"A": 0})) == without_ray


def test_a_full_cluster_gets_no_submission_and_a_freed_gpu_gets_the_most_urgent_job() -> None:
    nodes = {"A": 2, "B": 1}
    s = scheduler(cluster(nodes))
    s.add(spec("later", 3), 1000, NOW)
    s.add(spec("first", 1), 1000, NOW + 1)
    assert s.schedule(cluster(nodes, used={"A": 2000, "B": 1000}), NOW + 2).launches == ()
    report = s.schedule(cluster(nodes, used={"A": 1000, "B": 1000}), NOW + 3)
    assert [(lc.job_id, lc.gpus) for lc in report.launches] == [("first", (1,))]


def test_foreign_work_on_an_unhealthy_node_does_not_crash_or_leak_capacity() -> None:
    gpus = [
        GpuSnapshot(0, node="A", healthy=False, error="Ray node A is not alive"),
        GpuSnapshot(1, node="A", healthy=False, error="Ray node A is not alive"),
    ]
    s = scheduler(gpus)
    s.add(spec("x"), 500, NOW)
    report = s.schedule(gpus, NOW)
    assert report.launches == () and all(not r.usable for r in report.rooms.values())
    assert "unhealthy: Ray node A is not alive" in report.waiting["x"]


# --------------------------------------------------------------------------- this machine


def _place_before_nodes(
    share: int, rooms: Mapping[int, GpuRoom], free: Mapping[int, int], best_fit: bool
) -> Placement | None:
    """place() as it was before nodes: the k best-fitting GPUs, wherever they are."""
    k, per = gpus_needed(share), share_per_gpu(share)
    fits = [g for g, r in rooms.items() if r.usable and free[g] >= per]
    if len(fits) < k:
        return None
    fits.sort(key=(lambda g: (free[g] - per, g)) if best_fit else (lambda g: g))
    return Placement(tuple(sorted(fits[:k])), per)


def _reserve_before_nodes(
    share: int, rooms: Mapping[int, GpuRoom], free: Mapping[int, int]
) -> tuple[int, ...] | None:
    k, per = gpus_needed(share), share_per_gpu(share)
    able = sorted(
        (g for g, r in rooms.items() if r.usable and r.capacity >= per), key=lambda g: (-free[g], g)
    )
    return tuple(sorted(able[:k])) if len(able) >= k else None


@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.booleans()), min_size=1, max_size=8
    ),
    st.integers(1, 8000),
    st.booleans(),
)
def test_local_gpus_place_and_reserve_exactly_as_before_nodes(
    gpus: list[tuple[int, int, bool]], share: int, best_fit: bool
) -> None:
    rooms = {
        g: GpuRoom(g, cap, min(used, cap), usable) for g, (cap, used, usable) in enumerate(gpus)
    }
    free = {g: r.free for g, r in rooms.items()}
    assert place(share, rooms, free, best_fit=best_fit) == _place_before_nodes(
        share, rooms, free, best_fit
    )
    assert reserve(share, rooms, free) == _reserve_before_nodes(share, rooms, free)


def test_a_mixed_local_example_is_placed_as_before() -> None:
    gpus = [
        GpuSnapshot(i, memory_total_mib=80_000, utilization_pct=0.0, processes=()) for i in range(4)
    ]
    s = scheduler(gpus)
    for job_id, priority, share in (
        ("big", 0, 2000),
        ("half", 1, 500),
        ("quarter", 1, 250),
        ("third", 2, 1500),
        ("tiny", 3, 100),
    ):
        s.add(spec(job_id, priority), share, NOW)
    report = s.schedule(gpus, NOW)
    assert [(lc.job_id, lc.gpus, lc.share_per_gpu) for lc in report.launches] == [
        ("big", (0, 1), 1000),
        ("half", (2,), 500),
        ("quarter", (2,), 250),
    ]
    # the 1.5 needs 0.75 on two GPUs: only GPU 3 has that much left; GPUs 2-3 are held for it,
    # and 0-1 are full, so the 0.1 waits too
    assert report.reserved_for == "third" and report.reserved_gpus == (2, 3)
    assert s.jobs["tiny"].state == "pending"

    rooms = {g: r for g, r in report.rooms.items()}
    assert all(r.node == "" for r in rooms.values())
    free = {g: r.free for g, r in rooms.items()}
    for share in (100, 500, 1000, 1500, 2000, 3000):
        assert place(share, rooms, free) == _place_before_nodes(share, rooms, free, True)


# --------------------------------------------------------------------------- sessions, new GPUs


def test_ray_sessions_are_the_job_id_then_id_and_attempt() -> None:
    gpus = cluster({"A": 2})
    s = scheduler(
        gpus, sessions_by_attempt=True, max_assignment_attempts=5, assignment_retry_wait_s=0.0
    )
    s.add(spec("job"), 500, NOW)
    [first] = s.schedule(gpus, NOW).launches
    assert (first.session, first.attempt) == ("job", 1)
    s.launched("job", 0, 0.0)
    s.lost("job", "Ray lost it", NOW + 1)  # requeued
    [second] = s.schedule(gpus, NOW + 2).launches
    assert (second.session, second.attempt) == ("job-2", 2)
    s.launch_failed("job", "Ray refused the job", NOW + 3)  # retried after a wait of 0 s
    [third] = s.schedule(gpus, NOW + 3).launches
    assert third.session == "job-3"
    s.launched("job", 0, 0.0)
    s.exited("job", 1, NOW + 4)
    s.retry("job", NOW + 5)  # by the user: a new attempt, a new Ray submission id
    [fourth] = s.schedule(gpus, NOW + 5).launches
    assert fourth.session == "job-4"
    assert len({first.session, second.session, third.session, fourth.session}) == 4


def test_a_retry_after_a_failed_exit_gets_a_new_session() -> None:
    gpus = cluster({"A": 1})
    s = scheduler(gpus, sessions_by_attempt=True)
    s.add(JobSpec("r", "jobs.txt", 1, "r", 0, "/x/t.py", retries=1), 1000, NOW)
    assert [lc.session for lc in s.schedule(gpus, NOW).launches] == ["r"]
    s.launched("r", 0, 0.0)
    s.exited("r", 3, NOW + 1)
    assert [lc.session for lc in s.schedule(gpus, NOW + 1).launches] == ["r-2"]


def test_screen_sessions_are_unchanged_without_sessions_by_attempt() -> None:
    gpus = cluster({"A": 1})
    s = scheduler(gpus)
    s.add(spec("job"), 500, NOW)
    assert [lc.session for lc in s.schedule(gpus, NOW).launches] == ["gpujob_0_train_job"]


def test_add_gpus_extends_placement_to_a_node_that_joined() -> None:
    before = cluster({"A": 1})
    s = scheduler(before)
    start(s, before, ("a", 1000, None))
    s.add(spec("gang", 0), 2000, NOW)
    s.add(spec("one", 1), 1000, NOW)
    assert s.schedule(before, NOW).launches == ()
    assert "needs 2 GPUs" in s.last_pass.waiting["gang"]
    after = cluster({"A": 1, "B": 2})
    assert s.add_gpus(g.index for g in after) == [1, 2]
    assert s.add_gpus(g.index for g in after) == []  # idempotent
    assert s.gpu_indices == (0, 1, 2) and s.used() == {0: 1000, 1: 0, 2: 0}
    report = s.schedule(after, NOW + 1)
    assert [(lc.job_id, lc.gpus) for lc in report.launches] == [("gang", (1, 2))]
    s.pause([2])  # the new GPUs are GPUs like any other
    assert s.paused == {2}
