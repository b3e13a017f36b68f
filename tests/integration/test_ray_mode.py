"""execution.mode ray against a real two-node Ray cluster (head: 4 GPUs, worker: 2 GPUs).

The daemon, its CLI and the jobs run inside the cluster's network namespace; the jobs file,
state and the test job's records are ordinary files here. Ray's own job list is the witness
for where each job ran and when it was submitted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness
from tests.integration.ray_cluster import RayCluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]

_JOBS_SNIPPET = """\
import json, sys
from ray.job_submission import JobSubmissionClient
rows = []
for j in JobSubmissionClient(sys.argv[1]).list_jobs():
    rows.append({"id": j.submission_id, "status": str(j.status.value), "node": j.driver_node_id,
                 "start": j.start_time, "end": j.end_time, "meta": j.metadata or {}})
print(json.dumps(rows))
"""


class RayHarness(DaemonHarness):
    """A DaemonHarness whose daemon and CLI run inside the Ray cluster's namespace."""

    def __init__(self, root: Path, cluster: RayCluster) -> None:
        self.cluster = cluster
        super().__init__(root, root / "screens", mode="ray")
        self.write_config(execution={"mode": "ray", "python": sys.executable,
                                     "ray": {"address": cluster.gcs_address,
                                             "python": sys.executable}})

    def start(self, *args: str, wait: bool = True) -> Any:
        log = open(self.root / "daemon.out", "ab")
        self.proc = self.cluster.popen(
            [sys.executable, "-m", "gpu_scheduler", "start", "--config", str(self.config_path),
             *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.root)
        log.close()
        if wait:
            wait_until(lambda: self.listening() or self.proc.poll() is not None, timeout=60,
                       what="the daemon's control socket")
            assert self.proc.poll() is None, f"daemon exited at start: {self.daemon_output()}"
        return self.proc

    def cli(self, *args: str, timeout: float = 60) -> Any:
        return self.cluster.run([sys.executable, "-m", "gpu_scheduler", *args,
                                 "--config", str(self.config_path)], timeout=timeout)

    def ray_jobs(self) -> dict[str, dict[str, Any]]:
        """Ray's jobs submitted by this harness's daemon, by submission id."""
        out = self.cluster.run_python(_JOBS_SNIPPET, self.cluster.dashboard, timeout=60)
        assert out.returncode == 0, out.stderr
        mine = set(self.jobs())
        return {r["id"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])
                if r["meta"].get("gpu_scheduler_job") in mine}

    def end(self) -> None:
        """Stop the daemon and any of its Ray jobs still running (by submission id)."""
        if self.proc is not None and self.proc.poll() is None:
            self.cli("stop", "--kill-jobs", timeout=60)
            try:
                self.proc.wait(timeout=60)
            except Exception:
                self.proc.kill()
        for sid, job in self.ray_jobs().items():
            if job["status"] in ("PENDING", "RUNNING"):
                self.cluster.ray("job", "stop", f"--address={self.cluster.dashboard}", sid)
        self.cleanup()


@pytest.fixture
def ray_daemon(tmp_path: Path, ray_cluster: RayCluster) -> Iterator[RayHarness]:
    harness = RayHarness(tmp_path / "d", ray_cluster)
    try:
        yield harness
    finally:
        harness.end()


def _by_tag(h: RayHarness, tag: str) -> dict[str, Any]:
    (record,) = h.records_with(tag)
    return record


def test_shares_nodes_and_priority_order_on_a_real_cluster(
        ray_daemon: RayHarness, ray_cluster: RayCluster) -> None:
    h = ray_daemon
    # Fills the cluster exactly: two 2-GPU jobs and four halves on 4 + 2 GPUs. Then two jobs
    # needing the whole head node wait; the more urgent one (priority 1) must go first.
    h.append(*(h.job_line(f"--tag big{i}", options="gpus=2", sleep=6) for i in range(2)),
             *(h.job_line(f"--tag half{i}", options="gpus=0.5", sleep=6) for i in range(4)),
             h.job_line("--tag low", priority=5, options="gpus=4", sleep=1),
             h.job_line("--tag high", priority=1, options="gpus=4", sleep=1),
             h.job_line("--tag huge", options="gpus=5"))
    h.start()
    first = [f"big{i}" for i in range(2)] + [f"half{i}" for i in range(4)]
    wait_until(lambda: len(h.records()) >= 6, timeout=90, what="six jobs running on Ray")
    assert h.job_with("low").state == "pending" and h.job_with("high").state == "pending"
    status = json.loads(h.cli("status", "--json").stdout)
    nodes = {g["node"] for g in status["gpus"]}
    assert len(nodes) == 2 and "" not in nodes
    # A 5-GPU line fits no single node: a line error with its file and line, not a job.
    (error,) = [e for e in status["errors"] if "largest node has 4" in e["message"]]
    assert error["line_no"] == 9 and h.job_with("huge") is None

    h.wait_states(8, "completed", timeout=120)
    ray = h.ray_jobs()
    where = {tag: ray[h.job_with(tag).job_id] for tag in [*first, "low", "high"]}
    assert {w["status"] for w in where.values()} == {"SUCCEEDED"}
    ids = ray_cluster.node_ids()
    head, worker = ids[0], ids[1]
    # Fractional jobs share GPU ids: the four halves sit two by two on the worker's GPUs.
    halves = [_by_tag(h, f"half{i}")["cuda"] for i in range(4)]
    assert sorted(halves) in (["0", "0", "1", "1"],), halves
    assert {where[f"half{i}"]["node"] for i in range(4)} == {worker}
    # A 2.0 job gets two GPUs on one node; the jobs spread over both nodes.
    for i in range(2):
        assert len(_by_tag(h, f"big{i}")["cuda"].split(",")) == 2
        assert where[f"big{i}"]["node"] == head
    # Priority holds when the cluster is full: high was submitted first, low only once
    # high had ended (each needs the whole head node).
    assert where["high"]["start"] < where["low"]["start"]
    assert where["low"]["start"] >= where["high"]["end"] - 1500
    assert all(h.job_with(t).attempts == 1 for t in [*first, "low", "high"])


def test_cancel_and_sigkill_restart_readopt_without_resubmitting(
        ray_daemon: RayHarness, ray_cluster: RayCluster) -> None:
    h = ray_daemon
    h.append(h.job_line("--tag long", options="gpus=1", sleep=120),
             h.job_line("--tag keep", options="gpus=0.5", sleep=15))
    h.start()
    wait_until(lambda: len(h.records()) >= 2, timeout=90, what="both jobs running on Ray")
    keep = h.job_with("keep")
    assert keep.state == "running" and keep.status.session == keep.job_id

    h.kill9()
    h.start()
    restarted = h.wait_jobs(lambda js: js if h.job_with("keep", js).status.pid == 0 else None,
                            timeout=60, what="keep adopted")
    assert h.job_with("keep", restarted).state == "running"
    assert h.job_with("keep", restarted).attempts == 1
    assert "adopted" in h.scheduler_log()

    log = h.cli("logs", h.job_with("keep").job_id)  # a running Ray job's output, from Ray
    assert log.returncode == 0 and "job running" in log.stdout, log.stderr
    worker = ray_cluster.node_ids()[1]
    paused = h.cli("pause-gpu", worker[:8])  # a whole node: its block of GPU indices
    assert paused.returncode == 0 and "GPU 4,5 paused" in paused.stdout, paused.stderr
    one = h.cli("resume-gpu", f"{worker[:8]}:1")  # NODE:K
    assert one.returncode == 0 and "GPU 5 resumed" in one.stdout, one.stderr

    long_id = h.job_with("long").job_id
    attach = h.cli("attach", long_id)  # no terminal on Ray: it points to logs --follow
    assert attach.returncode != 0 and f"logs {long_id} --follow" in attach.stderr, attach.stderr
    out = h.cli("cancel-job", long_id)
    assert out.returncode == 0, out.stderr
    h.wait_tag("long", "cancelled", timeout=60)
    h.wait_tag("keep", "completed", timeout=90)

    ray = h.ray_jobs()
    keep_id = h.job_with("keep").job_id
    assert ray[long_id]["status"] == "STOPPED"
    assert ray[keep_id]["status"] == "SUCCEEDED"
    # Nothing was submitted twice: one Ray job per line, and each job ran once.
    assert sorted(ray) == sorted([long_id, keep_id])
    assert len(h.records_with("keep")) == 1 and len(h.records_with("long")) == 1
    assert "job running" in (h.paths.log_path(keep_id)).read_text()
