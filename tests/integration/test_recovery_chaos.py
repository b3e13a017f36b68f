"""A storm of kill -9s: 52 short jobs on 4 simulated GPUs, the daemon killed (SIGKILL) four times
at seeded-random moments and restarted each time, lines appended while it is up and while it
is down. Afterwards every job ran exactly once and completed, and no GPU was ever over-committed:
neither in the state file (sampled every few ms, through every adoption) nor by the job
processes themselves (each records its GPUs and share the moment it starts).

In direct mode the runners are the killed daemon's own children: three anchor jobs run from the
first start to the end, so every restart adopts them; that they (and every other job) complete
with exit 0 and run once shows the runners outlived each daemon and were adopted.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from gpu_scheduler.adapters.store import StateStore
from gpu_scheduler.core.model import Running
from gpu_scheduler.errors import StateFileError
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness

pytestmark = pytest.mark.slow

JOBS = 52
KILLS = 4
ANCHORS = 3
MODELS = ["tiny-model", "small-model", "whole-model", "big-model"]  # 0.25, 0.5, 1 and 2 GPUs


class StateSampler(threading.Thread):
    """Reads the state file over and over; records every instant a GPU held more than one GPU
    of running shares (by the jobs' own placements, and by the daemon's ``used`` figures)."""

    def __init__(self, d: DaemonHarness) -> None:
        super().__init__(name="state-sampler", daemon=True)
        self.store = StateStore(d.state_file)
        self.stop = threading.Event()
        self.samples = 0
        self.violations: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                saved = self.store.read_only_snapshot()
            except StateFileError as exc:  # never expected: saves are atomic
                self.violations.append(f"unreadable state: {exc}")
                continue
            if saved is not None:
                self.check(saved)
            self.stop.wait(0.01)

    def check(self, saved: Any) -> None:
        self.samples += 1
        held: Counter[int] = Counter()
        for job in saved.jobs:
            if isinstance(job.status, Running):
                for gpu in job.status.gpus:
                    held[gpu] += job.status.share_per_gpu
        used = {int(g): int(v) for g, v in saved.observed.get("used", {}).items()}
        for what, per_gpu in (("running jobs", held), ("used", used)):
            over = {g: v for g, v in per_gpu.items() if v > 1000}
            if over:
                self.violations.append(f"{what} over-commit at {saved.saved_at:.3f}: {over}")


def _overlaps(records: list[dict[str, Any]], sleeps: dict[str, float]) -> list[str]:
    """Over-commit by the job processes: each held its GPUs at least from its start for its
    sleep (a lower bound of its real lifetime), so any instant where those spans add up to
    more than one GPU on a GPU is a real over-commit."""
    events: list[tuple[float, int, int, str]] = []  # time, +/-1 (ends sort first), milli, gpu
    for r in records:
        gpus = r["cuda"].split(",")
        milli = round(float(r["share"]) * 1000) // len(gpus)
        begin, end = r["started"], r["started"] + sleeps[r["rest"][1]]
        for gpu in gpus:
            events += [(begin, 1, milli, gpu), (end, -1, milli, gpu)]
    found: list[str] = []
    held: Counter[str] = Counter()
    for at, sign, milli, gpu in sorted(events):
        held[gpu] += sign * milli
        if held[gpu] > 1000:
            found.append(f"GPU {gpu} held {held[gpu]} milli at {at:.3f}")
    return found


@pytest.mark.parametrize("mode", ["screen", "direct"])
def test_kill9_storm_every_job_runs_exactly_once_and_no_gpu_is_over_committed(
    make_daemon: Callable[..., DaemonHarness], mode: str
) -> None:
    rng = random.Random(20240611)
    d = make_daemon(mode, gpus=4)
    release = d.root / "release"
    # mostly short jobs; some that may outlive a restart; and a few anchors (a quarter GPU
    # each) that run until released at the end, so every restart has jobs to adopt
    sleeps = {
        f"j{i:02d}": round(
            rng.uniform(1.5, 2.5) if rng.random() < 0.2 else rng.uniform(0.1, 0.6), 2
        )
        for i in range(JOBS - ANCHORS)
    }
    lines = [
        d.job_line(f"--tag {tag} --llm {rng.choice(MODELS)}", priority=rng.randint(0, 3),
                   sleep=sleep)
        for tag, sleep in sleeps.items()
    ]  # fmt: skip
    for i in range(ANCHORS):
        sleeps[f"anchor{i}"] = 0.0  # until released: set once it is
        lines.insert(6 * i, d.job_line(f"--tag anchor{i} --llm tiny-model --until-file {release}",
                                       sleep=600))  # fmt: skip
    batches = [lines[:24], lines[24:40], lines[40:]]
    sampler = StateSampler(d)
    sampler.start()
    try:
        d.append(*batches[0])
        appended = len(batches[0])
        for kill in range(KILLS):
            d.start()
            # kill in the thick of it: once a few more jobs have started, after a random delay
            target = min(len(d.records()) + 2, appended)
            wait_until(lambda n=target: len(d.records()) >= n, timeout=30, interval=0.02,
                       what="more jobs to start")  # fmt: skip
            if kill == 1:
                d.append(*batches[1])  # appended while the daemon is up
                appended += len(batches[1])
            time.sleep(rng.uniform(0.0, 0.3))  # the fault's moment (seeded), not a wait
            d.kill9()
            if kill == 2:
                d.append(*batches[2])  # appended while the daemon is down
                appended += len(batches[2])
            time.sleep(rng.uniform(0.0, 0.4))  # down for a random while
        d.start()
        release.touch()
        released_at = time.time()
        d.wait_jobs(lambda jobs: len(jobs) == JOBS and all(
            j.state == "completed" for j in jobs.values()), timeout=120,
            what=f"all {JOBS} jobs to complete")  # fmt: skip
    finally:
        sampler.stop.set()
        sampler.join(timeout=10)

    records = d.records()
    runs = Counter(r["rest"][1] for r in records)
    log = [json.loads(line) for line in (d.root / "scheduler.log").read_text().splitlines()]
    twice = {tag: n for tag, n in runs.items() if n != 1}
    ids = {r["job_id"] for r in records if r["rest"][1] in twice}
    story = [
        (e.get("event"), e.get("message"))
        for e in log
        if e.get("job_id") in ids or e.get("event") == "daemon_started"
    ]
    assert not twice, f"jobs that ran more than once: {twice}; their log: {story}"
    assert set(runs) == set(sleeps), f"jobs that never ran: {set(sleeps) - set(runs)}"
    assert sampler.violations == [], sampler.violations[:5]
    assert sampler.samples > 200, f"only {sampler.samples} state samples"
    for r in records:  # an anchor held its GPU at least until it was released
        if r["rest"][1].startswith("anchor"):
            sleeps[r["rest"][1]] = released_at - r["started"]
    assert _overlaps(records, sleeps) == []
    jobs = d.jobs()
    assert all(j.last_exit_code == 0 for j in jobs.values())
    # no job process was ever killed, so the only requeue allowed is of a launch that the
    # kill caught before its runner started (its attempt fenced off, never run)
    requeued = [e["message"] for e in log if e.get("event") == "requeued"]
    assert all("never started" in m for m in requeued), requeued
    starts = [e for e in log if e.get("event") == "daemon_started"]
    assert len(starts) == KILLS + 1
    adopted = Counter(e.get("job_id") for e in log if e.get("event") == "adopted")
    anchors = {r["job_id"] for r in records if r["rest"][1].startswith("anchor")}
    assert sum(adopted[a] for a in anchors) >= KILLS, f"anchors adopted: {adopted}"
    assert "Traceback" not in d.daemon_output()
    assert d.stop() == 0
