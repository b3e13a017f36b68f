"""Fractional placement: which GPUs a share may go to (assess) and which ones it should (place)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gpu_scheduler.core.allocator import GpuRoom, assess, never_fits, place, reserve
from gpu_scheduler.core.model import GpuProcess, GpuSnapshot, Placement
from gpu_scheduler.core.units import ONE_GPU, gpus_needed, share_per_gpu

TOTAL = 80_000  # MiB


def gpu(index: int, **kw: object) -> GpuSnapshot:
    base: dict[str, object] = {
        "memory_total_mib": TOTAL,
        "memory_used_mib": 0,
        "utilization_pct": 0.0,
        "processes": (),
    }
    base.update(kw)
    return GpuSnapshot(index=index, **base)  # type: ignore[arg-type]


def rooms_with_free(*free: int) -> tuple[dict[int, GpuRoom], dict[int, int]]:
    """Healthy whole GPUs whose free share is ``free[g]`` (the rest held by our jobs)."""
    rooms = {g: GpuRoom(g, ONE_GPU, ONE_GPU - f) for g, f in enumerate(free)}
    return rooms, {g: r.free for g, r in rooms.items()}


# --------------------------------------------------------------------------- assess


def test_an_idle_gpu_offers_a_whole_gpu() -> None:
    room = assess([gpu(0)], {})[0]
    assert (room.usable, room.capacity, room.free) == (True, ONE_GPU, ONE_GPU)


def test_foreign_memory_reduces_capacity() -> None:
    foreign = GpuProcess(pid=999, used_mib=20_000)
    room = assess([gpu(0, memory_used_mib=20_000, processes=(foreign,))], {})[0]
    assert room.usable and room.capacity == 750 and room.free == 750


def test_foreign_capacity_rounds_against_the_new_job() -> None:
    # 1 MiB of foreign memory on 80 GB costs a whole milli-GPU: never over-commit by rounding
    room = assess([gpu(0, memory_used_mib=1, processes=(GpuProcess(9, 1),))], {})[0]
    assert room.capacity == 999


def test_our_own_processes_memory_is_not_foreign() -> None:
    ours, theirs = GpuProcess(100, 30_000), GpuProcess(999, 20_000)
    snap = gpu(0, memory_used_mib=50_000, processes=(ours, theirs))
    room = assess([snap], {0: 400}, own_pids={100})[0]
    assert room.capacity == 750  # only the 20 GB of pid 999 count against us
    assert room.used == 400 and room.free == 350


def test_without_a_process_list_our_jobs_are_assumed_to_use_their_full_share() -> None:
    # 40 GB used, our jobs hold 0.25 (= 20 GB): the other 20 GB are foreign
    snap = gpu(0, memory_used_mib=40_000, processes=None)
    room = assess([snap], {0: 250})[0]
    assert room.capacity == 750 and room.free == 500
    # our job has not allocated yet: nothing is foreign, and its share still counts
    room = assess([gpu(0, memory_used_mib=0, processes=None)], {0: 250})[0]
    assert room.capacity == ONE_GPU and room.free == 750


def test_admission_is_from_our_record_not_from_free_memory() -> None:
    # a just-launched job holds 0.6 but has not touched GPU memory yet
    room = assess([gpu(0, memory_used_mib=0)], {0: 600})[0]
    assert room.free == 400
    assert place(500, {0: room}, {0: room.free}) is None
    assert place(400, {0: room}, {0: room.free}) == Placement((0,), 400)


def test_a_gpu_mostly_filled_by_foreign_processes_gets_nothing() -> None:
    foreign = GpuProcess(999, 76_000)  # 95 %
    room = assess([gpu(0, memory_used_mib=76_000, processes=(foreign,))], {})[0]
    assert not room.usable and room.free == 0
    assert "95%" in room.reason and "memory_threshold" in room.reason


def test_foreign_memory_at_the_threshold_still_leaves_the_rest() -> None:
    foreign = GpuProcess(999, 72_000)  # exactly 90 %: not *more* than the threshold
    room = assess([gpu(0, memory_used_mib=72_000, processes=(foreign,))], {})[0]
    assert room.usable and room.capacity == 100


def test_memory_threshold_is_configurable() -> None:
    snap = gpu(0, memory_used_mib=40_000, processes=(GpuProcess(999, 40_000),))
    assert assess([snap], {}, memory_threshold=0.9)[0].usable
    assert not assess([snap], {}, memory_threshold=0.4)[0].usable


def test_a_gpu_busy_with_foreign_work_gets_nothing_while_none_of_ours_runs_there() -> None:
    busy = gpu(0, utilization_pct=95.0)
    room = assess([busy], {})[0]
    assert not room.usable and room.free == 0
    assert "95% utilisation" in room.reason and "load_threshold" in room.reason


def test_high_utilisation_from_our_own_job_does_not_block_the_gpu() -> None:
    room = assess([gpu(0, utilization_pct=100.0)], {0: 500})[0]
    assert room.usable and room.free == 500


def test_load_threshold_is_configurable_and_strict() -> None:
    assert assess([gpu(0, utilization_pct=90.0)], {}, load_threshold=0.9)[0].usable
    assert not assess([gpu(0, utilization_pct=50.5)], {}, load_threshold=0.5)[0].usable
    assert assess([gpu(0, utilization_pct=None)], {}, load_threshold=0.0)[0].usable


def test_an_unhealthy_gpu_gets_nothing_and_says_why() -> None:
    room = assess([gpu(0, healthy=False, error="NVML: GPU is lost")], {0: 300})[0]
    assert not room.usable and room.free == 0 and room.used == 300
    assert room.reason == "unhealthy: NVML: GPU is lost"


def test_a_paused_gpu_gets_nothing() -> None:
    rooms = assess([gpu(0), gpu(1)], {}, paused={0})
    assert not rooms[0].usable and rooms[0].reason == "paused"
    assert rooms[1].usable


# --------------------------------------------------------------------------- place


def test_a_fraction_goes_to_one_gpu_with_enough_free() -> None:
    rooms, free = rooms_with_free(300, 600)
    assert place(500, rooms, free) == Placement((1,), 500)
    assert place(700, rooms, free) is None


def test_best_fit_takes_the_gpu_left_with_the_least_free() -> None:
    rooms, free = rooms_with_free(1000, 600, 500)
    assert place(400, rooms, free) == Placement((2,), 400)
    assert place(550, rooms, free) == Placement((1,), 550)


def test_best_fit_keeps_a_whole_gpu_free_for_a_big_job() -> None:
    rooms, free = rooms_with_free(1000, 700)
    small = place(300, rooms, free)
    assert small == Placement((1,), 300)
    free[1] -= 300
    assert place(1000, rooms, free) == Placement((0,), 1000)
    # first fit (the simulator's baseline) would have broken the whole GPU
    rooms, free = rooms_with_free(1000, 700)
    first = place(300, rooms, free, best_fit=False)
    assert first == Placement((0,), 300)
    free[0] -= 300
    assert place(1000, rooms, free) is None


def test_a_gang_takes_ceil_share_gpus_with_an_equal_slice_each() -> None:
    rooms, free = rooms_with_free(1000, 1000, 1000, 1000)
    p = place(2500, rooms, free)
    assert p is not None and len(p.gpus) == 3 and p.share_per_gpu == 834
    p = place(1500, rooms, free)
    assert p is not None and len(p.gpus) == 2 and p.share_per_gpu == 750


def test_a_gang_is_placed_all_or_nothing() -> None:
    rooms, free = rooms_with_free(1000, 700, 1000)
    assert place(3000, rooms, free) is None  # two whole GPUs are not three
    p = place(1400, rooms, free)  # 700 each: all three could take a slice; best fit uses GPU 1
    assert p is not None and p.gpus == (0, 1) and p.share_per_gpu == 700


def test_placement_respects_allowed_and_excluded_gpus() -> None:
    rooms, free = rooms_with_free(1000, 1000, 1000)
    assert place(500, rooms, free, allowed=(2,)) == Placement((2,), 500)
    assert place(500, rooms, free, allowed=(5,)) is None
    assert place(500, rooms, free, exclude=(0, 1)) == Placement((2,), 500)
    assert place(2000, rooms, free, allowed=(0, 1), exclude=(1,)) is None


def test_placement_never_uses_an_unusable_gpu() -> None:
    rooms = assess([gpu(0, healthy=False), gpu(1)], {}, paused={1})
    free = {g: r.free for g, r in rooms.items()}
    assert place(100, rooms, free) is None


# --------------------------------------------------------------------------- reserve


def test_reserve_holds_the_gpus_closest_to_fitting() -> None:
    rooms, free = rooms_with_free(200, 600, 400, 0)
    assert reserve(1000, rooms, free) == (1,)
    assert reserve(2000, rooms, free) == (1, 2)


def test_reserve_ignores_gpus_that_could_never_hold_the_slice() -> None:
    foreign = GpuProcess(999, 40_000)
    snaps = [gpu(0, memory_used_mib=40_000, processes=(foreign,)), gpu(1), gpu(2, healthy=False)]
    rooms = assess(snaps, {1: 900})
    free = {g: r.free for g, r in rooms.items()}
    # GPU 0 has 0.5 free but a capacity of only 0.5; GPU 2 is unhealthy: only GPU 1 can drain
    assert reserve(1000, rooms, free) == (1,)
    assert reserve(2000, rooms, free) is None
    assert reserve(1000, rooms, free, allowed=(0, 2)) is None


# --------------------------------------------------------------------------- never_fits


def test_never_fits_explains_a_job_bigger_than_the_machine() -> None:
    assert never_fits(5000, range(4), None) == "needs 5 GPUs but only 4 are on this machine"
    assert never_fits(4000, range(4), None) == ""


def test_never_fits_counts_only_allowed_gpus_that_exist() -> None:
    assert never_fits(2000, range(4), (1,)) == "needs 2 GPUs but only 1 is allowed"
    assert never_fits(2000, range(4), (3, 7)) == "needs 2 GPUs but only 1 is allowed"
    assert never_fits(2000, range(4), (0, 3)) == ""


# --------------------------------------------------------------------------- properties


@st.composite
def machines(draw: st.DrawFn) -> tuple[list[GpuSnapshot], dict[int, int], set[int]]:
    """Random GPUs with foreign memory/processes, our shares on them, some paused."""
    n = draw(st.integers(1, 8))
    snaps, used = [], {}
    for g in range(n):
        ours = draw(st.integers(0, 20)) * 50
        foreign_mib = draw(st.integers(0, TOTAL))
        own_mib = draw(st.integers(0, TOTAL - foreign_mib))
        listed = draw(st.booleans())
        processes = (GpuProcess(1000 + g, own_mib), GpuProcess(9000 + g, foreign_mib))
        snaps.append(
            gpu(
                g,
                memory_used_mib=foreign_mib + own_mib,
                utilization_pct=draw(st.floats(0, 100)),
                processes=processes if listed else None,
                healthy=draw(st.sampled_from([True, True, True, False])),
            )
        )
        used[g] = ours
    paused = draw(st.sets(st.integers(0, n - 1), max_size=2))
    return snaps, used, paused


@given(
    machine=machines(),
    share=st.integers(1, 80).map(lambda n: n * 50),
    allowed=st.none() | st.sets(st.integers(0, 8), min_size=1).map(lambda s: tuple(sorted(s))),
)
def test_placement_never_exceeds_capacity_reduced_by_foreign_memory(
    machine: tuple[list[GpuSnapshot], dict[int, int], set[int]],
    share: int,
    allowed: tuple[int, ...] | None,
) -> None:
    snaps, used, paused = machine
    own_pids = {1000 + s.index for s in snaps}
    rooms = assess(snaps, used, paused=paused, own_pids=own_pids)
    free = {g: r.free for g, r in rooms.items()}
    p = place(share, rooms, free, allowed)
    if p is None:
        k = gpus_needed(share)
        able = [
            g
            for g in rooms
            if (allowed is None or g in allowed) and free[g] >= share_per_gpu(share)
        ]
        assert len(able) < k  # refused only when the gang really does not fit
        return
    assert len(p.gpus) == gpus_needed(share) == len(set(p.gpus))
    assert p.share_per_gpu == share_per_gpu(share)
    for g in p.gpus:
        snap = snaps[g]
        if snap.processes is not None:
            own = sum(x.used_mib for x in snap.processes if x.pid in own_pids)
        else:
            own = used[g] * TOTAL // ONE_GPU
        foreign = max(0, snap.memory_used_mib - own)
        capacity = ONE_GPU - math.ceil(ONE_GPU * foreign / TOTAL)
        assert used[g] + p.share_per_gpu <= capacity
        assert snap.healthy and g not in paused
        assert allowed is None or g in allowed
        assert foreign / TOTAL <= 0.9
        assert used[g] > 0 or (snap.utilization_pct or 0) <= 90
