"""The real Daemon in Ray mode over the in-memory cluster (FakeRayApi): our order, Ray's placement.

Each test builds the daemon as ``start --mode ray`` does (RayProbe + RayLauncher over one GPU
table beside the state file), with a fake clock and its own temp folder; teardown closes every
daemon and launcher it made, and fails on a leaked thread.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_scheduler.adapters.clock import FakeClock
from gpu_scheduler.adapters.ray_cluster import FakeRayApi, GpuTable, RayLauncher, RayProbe
from gpu_scheduler.config import settings_from_dict
from gpu_scheduler.core.model import Failed, Finished, Running, Succeeded
from gpu_scheduler.daemon import Daemon
from tests.helpers import wait_until

NOW = 1_700_000_000.0
MONITOR_S = 0.5


class Cluster:
    """One fake Ray cluster, a jobs file and the daemons (one per 'start') run over them."""

    def __init__(self, tmp_path: Path, nodes: dict[str, int]) -> None:
        self.tmp = tmp_path
        self.api = FakeRayApi(nodes)
        self.clock = FakeClock(NOW)
        self.daemons: list[Daemon] = []
        self.launchers: list[RayLauncher] = []
        (tmp_path / "job.py").write_text("print('hi')\n")  # runs on the 'nodes': never here
        (tmp_path / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
        (tmp_path / "state").mkdir()
        self.settings = settings_from_dict({
            "gpu": {"monitor_interval_s": MONITOR_S},
            "execution": {"mode": "ray"},
            "scheduler": {"graceful_shutdown_timeout_s": 5},
            "files": {"jobs_file": str(tmp_path / "jobs.txt"),
                      "llm_config_file": str(tmp_path / "llm.json"),
                      "state_file": str(tmp_path / "state" / "state.json"),
                      "log_dir": str(tmp_path / "logs")},
        }, tmp_path / "config.json")  # fmt: skip

    def jobs(self, *lines: str) -> None:
        (self.tmp / "jobs.txt").write_text("".join(line + "\n" for line in lines))

    def start(self) -> Daemon:
        table = GpuTable(self.tmp / "state" / "ray_gpus.json")
        launcher = RayLauncher(self.api, table, python=sys.executable, poll_s=0.05)
        self.launchers.append(launcher)
        daemon = Daemon(
            self.settings,
            probe=RayProbe(self.api, table),
            launcher=launcher,
            mode="ray",
            watch_files=False,
            clock=self.clock,
        )
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def close(self, daemon: Daemon) -> None:
        """As after ``stop``: no new launches, running jobs left running (adopted next start)."""
        daemon.stopping = True
        daemon.close()
        self.daemons.remove(daemon)
        for launcher in self.launchers:
            if launcher is daemon.launcher:
                launcher.close()

    def tick(self, daemon: Daemon, seconds: float = 0.1) -> None:
        self.clock.advance(seconds)
        daemon.step(0.02)

    def until(self, daemon: Daemon, predicate: object, what: str) -> None:
        wait_until(lambda: self.tick(daemon) or predicate(), timeout=10, what=what)  # type: ignore[operator]

    def settle(self, daemon: Daemon, ticks: int = 15) -> None:
        """Enough ticks (1.5 s of fake time: three probes) for anything due to happen."""
        for _ in range(ticks):
            self.tick(daemon)
        wait_until(lambda: daemon._in_flight == 0, timeout=10, what="launches to report")  # noqa: SLF001
        self.tick(daemon)

    def job_id(self, daemon: Daemon, name: str) -> str:
        [job] = [j for j in daemon.scheduler.jobs.values() if j.spec.name == name]
        return job.job_id

    def submitted(self, daemon: Daemon) -> list[str]:
        """Names of the jobs Ray was given, in submission order."""
        names = {j.job_id: j.spec.name for j in daemon.scheduler.jobs.values()}
        return [names.get(sid.rsplit("-", 1)[0], sid) or sid for sid in self.api.submitted]


@pytest.fixture
def make_cluster(tmp_path: Path, no_thread_leak: None) -> Iterator[object]:
    made: list[Cluster] = []

    def make(nodes: dict[str, int]) -> Cluster:
        made.append(Cluster(tmp_path, nodes))
        return made[-1]

    try:
        yield make
    finally:
        for cluster in made:
            for daemon in list(cluster.daemons):
                cluster.close(daemon)
            for launcher in cluster.launchers:
                launcher.close()


def test_half_gpu_jobs_share_a_node_and_a_gang_goes_to_a_node_with_two_free_gpus(
    make_cluster: object,
) -> None:
    cluster: Cluster = make_cluster({"n1": 2, "n2": 2})  # type: ignore[operator]
    cluster.api.foreign["n1"] = 1000  # someone else holds one of n1's GPUs
    cluster.jobs(
        "0, job.py, , , gpus=0.5 name=half-a",
        "0, job.py, , , gpus=0.5 name=half-b",
        "0, job.py, , --epochs 3, gpus=2 name=gang",
    )
    daemon = cluster.start()
    cluster.until(daemon, lambda: len(cluster.api.submitted) == 3, "three submissions")
    cluster.settle(daemon)
    assert len(cluster.api.submitted) == 3
    jobs = {
        name: cluster.api.submitted[cluster.job_id(daemon, name)]
        for name in ("half-a", "half-b", "gang")
    }
    assert [(j.node_id, j.num_gpus) for j in jobs.values()] == [
        ("n1", 0.5),
        ("n1", 0.5),
        ("n2", 2.0),
    ]
    # the runner on the node: Ray's CUDA_VISIBLE_DEVICES, no record, the job's own arguments
    entry = jobs["gang"].entrypoint
    assert entry.startswith(f"{sys.executable} -m gpu_scheduler.runner ")
    assert '"gpus": null' in entry and '"record_path": null' in entry
    assert '"args": ["--epochs", "3"]' in entry
    gang = daemon.scheduler.jobs[cluster.job_id(daemon, "gang")].status
    assert isinstance(gang, Running) and gang.gpus == (2, 3) and gang.pid == 0
    assert gang.session == cluster.job_id(daemon, "gang")  # the Ray submission id


def test_nothing_is_submitted_to_a_full_cluster_and_freed_gpus_go_by_priority(
    make_cluster: object,
) -> None:
    cluster: Cluster = make_cluster({"n1": 1, "n2": 1})  # type: ignore[operator]
    cluster.api.foreign.update(n1=1000, n2=1000)
    cluster.jobs(
        "2, job.py, , , gpus=1 name=low",
        "1, job.py, , , gpus=1 name=mid",
        "0, job.py, , , gpus=1 name=urgent",
    )
    daemon = cluster.start()
    cluster.settle(daemon)
    assert cluster.api.submitted == {}
    assert daemon.scheduler.pending_count() == 3
    cluster.api.foreign["n2"] = 0  # one GPU frees up
    cluster.until(daemon, lambda: cluster.api.submitted, "a submission")
    cluster.settle(daemon)
    assert cluster.submitted(daemon) == ["urgent"]
    assert cluster.api.submitted[cluster.job_id(daemon, "urgent")].node_id == "n2"
    cluster.api.finish(cluster.job_id(daemon, "urgent"), 0)
    cluster.until(daemon, lambda: len(cluster.api.submitted) == 2, "the next submission")
    cluster.settle(daemon)
    assert cluster.submitted(daemon) == ["urgent", "mid"]  # not "low", first in the file
    urgent = daemon.scheduler.jobs[cluster.job_id(daemon, "urgent")].status
    assert isinstance(urgent, Finished) and urgent.outcome == Succeeded()


def test_a_job_that_exits_3_on_ray_fails_with_exit_3_and_its_log_is_kept(
    make_cluster: object,
) -> None:
    cluster: Cluster = make_cluster({"n1": 1})  # type: ignore[operator]
    cluster.jobs("0, job.py, , , gpus=0.5 name=bad")
    daemon = cluster.start()
    cluster.until(daemon, lambda: cluster.api.submitted, "the submission")
    job_id = cluster.job_id(daemon, "bad")
    cluster.until(
        daemon,
        lambda: daemon.scheduler.jobs[job_id].status.pid == 0,  # type: ignore[union-attr]
        "the launch to be reported",
    )
    cluster.api.finish(job_id, 3, "Traceback (most recent call last):\nValueError: nope\n")
    cluster.until(daemon, lambda: daemon.scheduler.jobs[job_id].state == "failed", "the failure")
    job = daemon.scheduler.jobs[job_id]
    assert isinstance(job.status, Finished) and job.status.outcome == Failed(3)
    assert job.last_exit_code == 3
    assert "ValueError: nope" in daemon.paths.log_path(job_id).read_text()
    cluster.settle(daemon)
    assert list(cluster.api.submitted) == [job_id]  # not run again


def test_a_launch_failure_on_the_node_is_retried_under_a_new_submission_id(
    make_cluster: object,
) -> None:
    cluster: Cluster = make_cluster({"n1": 1})  # type: ignore[operator]
    cluster.jobs("0, job.py, , , gpus=1 name=once")
    daemon = cluster.start()
    cluster.until(daemon, lambda: cluster.api.submitted, "the submission")
    job_id = cluster.job_id(daemon, "once")
    cluster.until(
        daemon,
        lambda: daemon.scheduler.jobs[job_id].status.pid == 0,  # type: ignore[union-attr]
        "the launch to be reported",
    )
    cluster.api.finish(job_id, 127, "gpu_scheduler: launch failed: script not found: job.py\n")
    cluster.until(daemon, lambda: daemon.scheduler.jobs[job_id].launch_failures == 1, "the failure")
    assert "script not found: job.py" in daemon.scheduler.jobs[job_id].status.reason  # type: ignore[union-attr]
    cluster.clock.advance(daemon.scheduler.policy.assignment_retry_wait_s)
    cluster.until(daemon, lambda: f"{job_id}-2" in cluster.api.submitted, "the retry")


def test_a_restarted_daemon_adopts_running_ray_jobs_and_finishes_ended_ones(
    make_cluster: object,
) -> None:
    cluster: Cluster = make_cluster({"n1": 1, "n2": 2})  # type: ignore[operator]
    cluster.jobs("0, job.py, , , gpus=1 name=long", "0, job.py, , , gpus=2 name=short")
    first = cluster.start()
    cluster.until(first, lambda: len(cluster.api.submitted) == 2, "two submissions")
    cluster.settle(first)
    long_id, short_id = cluster.job_id(first, "long"), cluster.job_id(first, "short")
    cluster.close(first)  # the jobs keep running on Ray
    before = dict(cluster.api.submitted)
    cluster.api.finish(short_id, 0)  # ends while no daemon runs

    second = cluster.start()
    assert isinstance(second.scheduler.jobs[long_id].status, Running)
    assert second.scheduler.jobs[long_id].status.session == long_id
    done = second.scheduler.jobs[short_id].status
    assert isinstance(done, Finished) and done.outcome == Succeeded()
    assert second.scheduler.used() == {0: 1000, 1: 0, 2: 0}  # the same indices as before
    cluster.settle(second)
    assert cluster.api.submitted == before  # nothing submitted again
    cluster.api.finish(long_id, 0)  # the adopted job is followed to its end
    cluster.until(second, lambda: second.scheduler.jobs[long_id].state == "completed", "its end")
    cluster.settle(second)
    assert cluster.api.submitted == before


def test_a_job_that_never_reached_ray_before_a_crash_is_submitted_once_after_it(
    make_cluster: object,
) -> None:
    cluster: Cluster = make_cluster({"n1": 1})  # type: ignore[operator]
    cluster.api.fail_submit = "connection refused"  # the daemon dies before Ray has the job
    cluster.api.foreign["n1"] = 0
    cluster.jobs("0, job.py, , , gpus=1 name=j")
    first = cluster.start()
    cluster.until(
        first,
        lambda: first.scheduler.jobs[cluster.job_id(first, "j")].launch_failures,
        "a refused launch",
    )
    job_id = cluster.job_id(first, "j")
    cluster.close(first)
    cluster.api.fail_submit = ""
    second = cluster.start()
    cluster.clock.advance(second.scheduler.policy.assignment_retry_wait_s)
    cluster.until(second, lambda: cluster.api.submitted, "the submission")
    cluster.settle(second)
    assert list(cluster.api.submitted) == [f"{job_id}-2"]


def test_a_line_too_big_for_any_node_runs_once_a_big_enough_node_joins(
    make_cluster: object,
) -> None:
    cluster: Cluster = make_cluster({"n1": 2})  # type: ignore[operator]
    cluster.jobs("0, job.py, , , gpus=4 name=big")
    daemon = cluster.start()
    cluster.settle(daemon)
    [error] = daemon.errors
    assert error.line_no == 1 and "needs 4 GPUs" in error.message
    assert not cluster.api.submitted
    cluster.api.gpus["n2"] = 4  # a 4-GPU machine joins the cluster
    cluster.until(daemon, lambda: len(cluster.api.submitted) == 1, "the big job submitted")
    assert daemon.errors == ()
    big = daemon.scheduler.jobs[cluster.job_id(daemon, "big")].status
    assert isinstance(big, Running) and big.gpus == (2, 3, 4, 5)
    assert cluster.api.submitted[cluster.job_id(daemon, "big")].node_id == "n2"
