"""The Ray adapter against its in-memory cluster (FakeRayApi): GPU indices per node, the probe,
the launcher (submission, adoption, exit codes, following, recovery facts). No real Ray."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpu_scheduler.adapters.launchers import LaunchRequest
from gpu_scheduler.adapters.ray_cluster import (
    FakeRayApi,
    GpuTable,
    RayLauncher,
    RayNode,
    RayProbe,
    RayUnavailable,
    ray_num_gpus,
)
from gpu_scheduler.core.model import Failed, Finished, GpuSnapshot, JobSpec, Running, Succeeded
from gpu_scheduler.core.recovery import RunFacts, reconcile
from gpu_scheduler.core.scheduler import Policy, Scheduler
from gpu_scheduler.errors import LaunchError
from tests.helpers import wait_until

NOW = 1_700_000_000.0


@pytest.fixture
def api() -> FakeRayApi:
    # the first node is the head; "a-big" sorts first by id but must come after it
    return FakeRayApi({"head": 2, "a-big": 4})


@pytest.fixture
def table(tmp_path: Path) -> GpuTable:
    return GpuTable(tmp_path / "ray_gpus.json")


@pytest.fixture
def launcher(api: FakeRayApi, table: GpuTable, no_thread_leak: None) -> Iterator[RayLauncher]:
    RayProbe(api, table)  # learns the nodes
    ray = RayLauncher(api, table, python="/opt/py/bin/python", cwd="/shared/exp", poll_s=0.02)
    try:
        yield ray
    finally:
        ray.close()


def request(session: str, gpus: tuple[int, ...], share: str, **kw: Any) -> LaunchRequest:
    fields: dict[str, Any] = {
        "job_id": session.split("-")[0], "attempt": 1, "session": session,
        "script": "/shared/exp/train.py", "args": ("--lr", "1e-3; rm -rf ~"), "conda_env": None,
        "gpus": gpus, "share": share, "log_path": Path("/var/gs/logs/j.log"),
        "record_path": Path("/var/gs/run/j.1.exit.json"), "env": {"GPU_SCHEDULER_ATTEMPT": "1"},
    }  # fmt: skip
    fields.update(kw)
    return LaunchRequest(**fields)


def runner_spec(entrypoint: str) -> tuple[list[str], dict[str, Any]]:
    argv = shlex.split(entrypoint)
    return argv[:-1], json.loads(argv[-1])


# --------------------------------------------------------------------------- GPU indices


def test_the_head_node_gets_the_first_indices_then_nodes_by_id(
    api: FakeRayApi, table: GpuTable
) -> None:
    assert table.learn(api.nodes()) is True
    assert table.nodes == {"head": (0, 2, "10.0.0.1/head"), "a-big": (2, 4, "10.0.0.1/a-big")}
    assert [table.node_of(g) for g in range(6)] == ["head"] * 2 + ["a-big"] * 4
    with pytest.raises(KeyError):
        table.node_of(6)
    assert table.learn(api.nodes()) is False  # nothing new: the file is not rewritten


def test_indices_survive_a_reload_from_the_file(
    api: FakeRayApi, table: GpuTable, tmp_path: Path
) -> None:
    table.learn(api.nodes())
    again = GpuTable(tmp_path / "ray_gpus.json")
    assert again.nodes == table.nodes
    # the nodes reported in another order, the head no longer first: indices stay
    reordered = [
        RayNode("a-big", "10.0.0.2", 4, 0, is_head=True),
        RayNode("head", "10.0.0.1", 2, 0),
    ]
    assert again.learn(reordered) is False
    assert again.nodes == table.nodes
    saved = json.loads((tmp_path / "ray_gpus.json").read_text())
    assert [(r["node_id"], r["base"], r["gpus"]) for r in saved["nodes"]] == [
        ("head", 0, 2),
        ("a-big", 2, 4),
    ]
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, then replaced


def test_a_damaged_table_file_is_refused_not_silently_reindexed(tmp_path: Path) -> None:
    """Running jobs in the state name GPU indices: handing them out afresh could put two jobs'
    shares on one node. So a damaged table stops the start with what to do."""
    (tmp_path / "ray_gpus.json").write_text("{not json")
    with pytest.raises(RayUnavailable, match="unreadable.*--reset-state"):
        GpuTable(tmp_path / "ray_gpus.json")
    assert GpuTable(None).learn([RayNode("x", "1.2.3.4", 1, 0)]) is True  # no file: memory only


def test_the_table_keeps_its_owner_token_and_survives_a_reload(tmp_path: Path) -> None:
    first = GpuTable(tmp_path / "ray_gpus.json")
    first.learn([RayNode("h", "1.2.3.4", 2, 0, is_head=True)])
    again = GpuTable(tmp_path / "ray_gpus.json")
    assert again.owner == first.owner and again.nodes == first.nodes
    assert GpuTable(tmp_path / "other.json").owner != first.owner


def test_a_job_id_submitted_by_another_scheduler_is_not_adopted(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    api.submit("j1", "true", num_gpus=0.5, num_cpus=0, node_id="head", env={},
               metadata={"owner": "someone-else"})
    with pytest.raises(LaunchError, match="did not submit"):
        launcher.launch(request("j1", (0,), "0.5"))


def test_a_submit_whose_answer_was_lost_is_followed_not_resubmitted(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    launcher.launch(request("j1", (0,), "0.5"))  # accepted...
    api.fail_submit = "connection reset by peer"  # ...and a retry of the call fails
    assert launcher.launch(request("j1", (0,), "0.5")).pid == 0
    assert list(api.submitted) == ["j1"]


def test_a_job_that_ran_and_then_failed_without_exit_code_is_lost_not_a_launch_failure(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    launcher.launch(request("j1", (0,), "0.5"))
    launcher.live_sessions()  # a poll sees it RUNNING
    api.submitted["j1"].status = "FAILED"  # its node died
    assert launcher.exit_record("j1") == {}


def test_a_followed_job_gone_from_ray_is_reported_ended(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    launcher.launch(request("j1", (0,), "0.5"))
    ended: list[str] = []
    launcher.follow("j1", ended.append)
    del api.submitted["j1"]  # e.g. the head restarted without its job table
    wait_until(lambda: ended == ["j1"], timeout=5, what="the gone job reported")
    assert launcher.exit_record("j1") == {}


def test_our_jobs_ray_has_not_placed_yet_count_as_taken_on_their_node(
    api: FakeRayApi, table: GpuTable, launcher: RayLauncher
) -> None:
    probe = RayProbe(api, table)
    launcher.launch(request("j1", (2,), "0.5"))  # pinned to a-big
    api.submitted["j1"].status = "PENDING"
    assert probe.snapshot()[2].node_used == 500  # so the allocator sees no foreign work


def test_a_joining_node_gets_the_next_block(api: FakeRayApi, table: GpuTable) -> None:
    probe = RayProbe(api, table)
    api.gpus["c-new"] = 3
    api.gpus["cpu-only"] = 0  # no GPUs: no indices
    snaps = probe.snapshot()
    assert table.nodes["c-new"][:2] == (6, 3) and "cpu-only" not in table.nodes
    assert [s.index for s in snaps] == list(range(9))
    assert {s.node for s in snaps[6:]} == {"c-new"} and probe.count() == 9


def test_a_node_that_leaves_keeps_its_indices_and_shows_unhealthy(
    api: FakeRayApi, table: GpuTable
) -> None:
    probe = RayProbe(api, table)
    api.down.add("head")
    snaps = probe.snapshot()
    assert [s.index for s in snaps] == list(range(6))
    gone, alive = snaps[:2], snaps[2:]
    assert all(not s.healthy and s.error == "Ray node 10.0.0.1/head is not alive" for s in gone)
    assert all(s.healthy and s.error == "" and s.node_used == 0 for s in alive)
    api.down.clear()
    assert all(s.healthy for s in probe.snapshot())
    assert table.nodes["head"][:2] == (0, 2)  # back on the same indices


def test_a_restarted_node_takes_over_its_old_block_under_its_new_id(
    api: FakeRayApi, table: GpuTable
) -> None:
    probe = RayProbe(api, table)
    api.down.add("head")
    probe.snapshot()
    api.gpus["head-again"] = api.gpus["head"]  # Ray gives a restarted node a new id
    snaps = probe.snapshot()
    assert table.nodes["head-again"][:2] == (0, 2) and "head" not in table.nodes
    assert [s.index for s in snaps] == list(range(6)) and all(s.healthy for s in snaps)


def test_the_probe_reports_rays_count_of_gpus_taken_per_node(
    api: FakeRayApi, table: GpuTable
) -> None:
    probe = RayProbe(api, table)
    api.foreign["a-big"] = 1500
    api.submit("x", "true", num_gpus=0.5, num_cpus=0, node_id="a-big", env={}, metadata={})
    snaps = probe.snapshot()
    assert [s.node_used for s in snaps] == [0, 0, 2000, 2000, 2000, 2000]
    assert snaps[2] == GpuSnapshot(2, name="10.0.0.1/a-big GPU 0", node="a-big", node_used=2000)
    api.finish("x", 0)  # an ended job no longer counts
    assert probe.snapshot()[2].node_used == 1500


def test_an_unreachable_cluster_makes_every_gpu_unhealthy_without_raising(
    api: FakeRayApi, table: GpuTable
) -> None:
    probe = RayProbe(api, table)
    api.unreachable = "connection refused by 10.0.0.1:6379"
    snaps = probe.snapshot()
    assert len(snaps) == 6 and not any(s.healthy for s in snaps)
    assert {s.error for s in snaps} == {
        "Ray cluster not reachable: connection refused by 10.0.0.1:6379"
    }
    api.unreachable = ""
    assert all(s.healthy for s in probe.snapshot())


def test_a_probe_that_never_reached_the_cluster_has_no_gpus(table: GpuTable) -> None:
    api = FakeRayApi({"n": 1})
    api.unreachable = "down"
    probe = RayProbe(api, table)  # does not raise
    assert probe.snapshot() == () and probe.count() == 0


# --------------------------------------------------------------------------- launching


def test_ray_num_gpus_is_the_share_or_whole_gpus_above_one() -> None:
    assert ray_num_gpus("0.5", 1) == 0.5
    assert ray_num_gpus("1", 1) == 1.0
    assert ray_num_gpus("2", 2) == 2.0
    assert ray_num_gpus("1.5", 2) == 2.0  # Ray takes only whole GPUs above one
    assert ray_num_gpus("0", 0) == 0.0


def test_a_half_gpu_job_is_submitted_pinned_to_its_node(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    launched = launcher.launch(request("j1", (3,), "0.5"))
    assert (launched.pid, launched.pid_started_at) == (0, 0.0)
    job = api.submitted["j1"]
    assert (job.num_gpus, job.num_cpus, job.node_id) == (0.5, 0, "a-big")
    assert job.env == {"GPU_SCHEDULER_ATTEMPT": "1"}  # Ray sets CUDA_VISIBLE_DEVICES itself
    argv, spec = runner_spec(job.entrypoint)
    assert argv == ["/opt/py/bin/python", "-m", "gpu_scheduler.runner"]
    assert spec["gpus"] is None and spec["record_path"] is None
    assert spec["log_path"] == os.devnull  # the output goes to Ray's log (stdout)
    assert spec["cwd"] == "/shared/exp"  # the launcher's folder, the same on every node
    assert (spec["job_id"], spec["attempt"], spec["session"], spec["share"]) == (
        "j1",
        1,
        "j1",
        "0.5",
    )
    assert spec["script"] == "/shared/exp/train.py"
    assert spec["args"] == ["--lr", "1e-3; rm -rf ~"]  # one argument, quoted, never a shell's


def test_a_two_gpu_job_asks_ray_for_two_whole_gpus_on_the_node_of_its_first_gpu(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    launcher.launch(request("j2", (0, 1), "2"))
    assert (api.submitted["j2"].num_gpus, api.submitted["j2"].node_id) == (2.0, "head")
    launcher.launch(request("j3", (4, 5), "1.5", cwd=Path("/elsewhere")))
    assert (api.submitted["j3"].num_gpus, api.submitted["j3"].node_id) == (2.0, "a-big")
    assert runner_spec(api.submitted["j3"].entrypoint)[1]["cwd"] == "/elsewhere"


def test_a_job_without_gpus_sees_none(api: FakeRayApi, launcher: RayLauncher) -> None:
    launcher.launch(request("cpu", (), "0"))
    job = api.submitted["cpu"]
    assert (job.num_gpus, job.node_id) == (0.0, "")
    assert job.env["CUDA_VISIBLE_DEVICES"] == ""  # not every GPU of whichever node it lands on


def test_a_duplicate_submission_is_adopted(api: FakeRayApi, launcher: RayLauncher) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    first = api.submitted["j1"]
    again = launcher.launch(request("j1", (3,), "0.5"))  # submitted before a crash
    assert again.pid == 0 and api.submitted == {"j1": first}


def test_a_refused_submission_is_a_readable_launch_error(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    api.fail_submit = (
        'Traceback (most recent call last):\n  File "sdk.py", line 1\n'
        "RuntimeError: Request failed with status code 500: no node matches the label selector\n"
    )
    with pytest.raises(LaunchError) as caught:
        launcher.launch(request("j1", (3,), "0.5"))
    assert str(caught.value) == (
        "Ray refused the job: RuntimeError: Request failed with status code 500: "
        "no node matches the label selector"
    )
    api.fail_submit = "connection reset"
    with pytest.raises(LaunchError, match="^Ray refused the job: connection reset$"):
        launcher.launch(request("j1", (3,), "0.5"))
    assert api.submitted == {}


def test_stop_asks_ray_and_never_raises(api: FakeRayApi, launcher: RayLauncher) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    launcher.stop(0, 0.0, "j1", grace_s=5)
    assert api.submitted["j1"].status == "STOPPED"
    launcher.stop(0, 0.0, "never-submitted", grace_s=5)  # logged, not raised
    assert launcher.alive(0, 0.0) is True


def test_live_sessions_are_the_jobs_ray_still_runs(api: FakeRayApi, launcher: RayLauncher) -> None:
    for sid in ("a", "b", "c"):
        launcher.launch(request(sid, (0,), "0.25"))
    api.finish("b", 0)
    api.stop("c")
    assert launcher.live_sessions() == {"a"}


# --------------------------------------------------------------------------- exits


@pytest.mark.parametrize(
    ("end", "record"),
    [
        (("finish", 0, ""), {"state": "exited", "exit_code": 0}),
        (("finish", 3, "Traceback...\nValueError: bad\n"), {"state": "exited", "exit_code": 3}),
        (("finish", -9, ""), {"state": "exited", "exit_code": 137}),  # killed by SIGKILL
        (("finish", -15, ""), {"state": "exited", "exit_code": 143}),
        (("stop", None, ""), {"state": "exited", "exit_code": 143}),  # before its runner ran
        (
            (
                "finish",
                127,
                "some output\ngpu_scheduler: launch failed: script not found: /x/t.py (working "
                "directory /w)\n",
            ),
            {
                "state": "launch_failed",
                "message": "script not found: /x/t.py (working directory /w)",
            },
        ),
        (  # the job's own 127 (e.g. a shell's "command not found"), as it would be locally
            ("finish", 127, "sh: 1: nosuch: not found\n"),
            {"state": "exited", "exit_code": 127},
        ),
    ],
)
def test_exit_record_maps_rays_end_to_the_runners_record(
    api: FakeRayApi, launcher: RayLauncher, end: tuple[str, int | None, str], record: dict[str, Any]
) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    how, code, text = end
    if how == "finish":
        assert code is not None
        api.finish("j1", code, text)
    else:
        api.stop("j1")
    assert launcher.exit_record("j1") == record


def test_a_failed_job_without_exit_code_is_a_launch_failure(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    api.submitted["j1"].status = "FAILED"  # e.g. its runtime env could not be set up
    assert launcher.exit_record("j1") == {"state": "launch_failed", "message": "Ray: FAILED"}


def test_no_exit_record_while_running_or_unknown(api: FakeRayApi, launcher: RayLauncher) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    assert launcher.exit_record("j1") == {}
    assert launcher.exit_record("nope") == {}
    api.finish("j1", 0)
    assert launcher.exit_record("j1") == {"state": "exited", "exit_code": 0}  # polled again


def counted_polls(api: FakeRayApi, failures: int = 0) -> dict[str, int]:
    """Count the cluster's job listings; the first ``failures`` of them raise."""
    calls = {"n": 0}
    real_jobs = api.jobs

    def jobs() -> Any:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionError("GCS unavailable")
        return real_jobs()

    api.jobs = jobs  # type: ignore[method-assign]
    return calls


def test_follow_calls_back_once_after_the_job_ends(api: FakeRayApi, launcher: RayLauncher) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    launcher.launch(request("j2", (4,), "0.5"))
    polls = counted_polls(api)
    ended: list[str] = []
    launcher.follow("j1", ended.append)
    launcher.follow("j2", ended.append)
    wait_until(lambda: polls["n"] >= 2, timeout=5, what="polls")
    assert ended == []  # running jobs are not reported
    api.finish("j1", 4)
    wait_until(lambda: ended, timeout=5, what="the end of j1")
    seen = polls["n"]
    wait_until(lambda: polls["n"] >= seen + 5, timeout=5, what="more polls")
    assert ended == ["j1"]  # once, however often it is seen ended
    api.stop("j2")
    wait_until(lambda: len(ended) == 2, timeout=5, what="the end of j2")
    assert ended == ["j1", "j2"]


def test_follow_survives_a_cluster_hiccup(api: FakeRayApi, launcher: RayLauncher) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    calls = counted_polls(api, failures=3)
    ended: list[str] = []
    launcher.follow("j1", ended.append)
    api.finish("j1", 0)
    wait_until(lambda: ended == ["j1"], timeout=5, what="the end after the hiccup")
    assert calls["n"] > 3


def test_fetch_log_appends_rays_log_to_ours(
    api: FakeRayApi, launcher: RayLauncher, tmp_path: Path
) -> None:
    launcher.launch(request("j1", (3,), "0.5"))
    api.finish("j1", 0, "epoch 1\nepoch 2\n")
    path = tmp_path / "logs" / "j1.log"
    launcher.fetch_log("j1", path)
    assert path.read_text() == "epoch 1\nepoch 2\n"
    launcher.fetch_log("gone", tmp_path / "logs" / "gone.log")  # Ray dropped it: no raise
    assert not (tmp_path / "logs" / "gone.log").exists()


# --------------------------------------------------------------------------- recovery


def _running_scheduler(*job_ids: str) -> Scheduler:
    gpus = [GpuSnapshot(g, node="head" if g < 2 else "a-big", node_used=0) for g in range(6)]
    sched = Scheduler(Policy(sessions_by_attempt=True), range(6))
    for job_id in job_ids:
        sched.add(JobSpec(job_id, "jobs.txt", 1, job_id, 0, "/x/t.py"), 500, NOW)
    assert len(sched.schedule(gpus, NOW).launches) == len(job_ids)
    return sched


def test_recovery_facts_adopt_running_finish_ended_and_requeue_unknown(
    api: FakeRayApi, launcher: RayLauncher
) -> None:
    sched = _running_scheduler("alive", "done", "broken", "never")
    for sid in ("alive", "done", "broken"):
        launcher.launch(request(sid, (3,), "0.5"))
    api.finish("done", 4)
    api.finish("broken", 127, "gpu_scheduler: launch failed: conda env not found: ml\n")
    facts = launcher.recovery_facts(sched)
    assert facts == {
        "alive": RunFacts(pid=0, pid_started_at=0.0, alive=True),
        "done": RunFacts(exit_code=4, pid=0),
        "broken": RunFacts(launch_error="conda env not found: ml", pid=0),
        "never": RunFacts(),  # never reached Ray: requeued, so it runs once
    }
    reconcile(sched, facts, NOW + 60)
    assert isinstance(sched.jobs["alive"].status, Running)
    assert sched.jobs["alive"].status.session == "alive"
    done = sched.jobs["done"].status
    assert isinstance(done, Finished) and done.outcome == Failed(4)
    assert sched.jobs["broken"].state == "pending" and sched.jobs["broken"].launch_failures == 1
    assert sched.jobs["never"].state == "pending" and sched.jobs["never"].requeues == 1
    # the requeued jobs come back under new submission ids: Ray never sees an id twice
    gpus = [GpuSnapshot(g, node="head" if g < 2 else "a-big", node_used=0) for g in range(6)]
    sessions = {lc.session for lc in sched.schedule(gpus, NOW + 120).launches}
    assert sessions == {"broken-2", "never-2"}


def test_recovery_facts_of_a_succeeded_job(api: FakeRayApi, launcher: RayLauncher) -> None:
    sched = _running_scheduler("ok")
    launcher.launch(request("ok", (0,), "0.5"))
    api.finish("ok", 0)
    reconcile(sched, launcher.recovery_facts(sched), NOW + 1)
    status = sched.jobs["ok"].status
    assert isinstance(status, Finished) and status.outcome == Succeeded()


# --------------------------------------------------------------------------- without Ray


def test_mode_ray_without_ray_installed_says_what_to_install(tmp_path: Path) -> None:
    """`start --mode ray` where `import ray` fails: a clear message and exit 1, no traceback."""
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"files": {
        "jobs_file": str(tmp_path / "jobs.txt"), "state_file": str(tmp_path / "s" / "state.json"),
        "log_dir": str(tmp_path / "logs"), "log_file": str(tmp_path / "sched.log"),
        "llm_config_file": str(tmp_path / "llm.json")}, "logging": {"console": False}}))
    (tmp_path / "jobs.txt").write_text("")
    (tmp_path / "llm.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    out = subprocess.run(
        [sys.executable, "-m", "gpu_scheduler", "start", "--mode", "ray", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, out.stderr
    assert "pip install 'gpu-scheduler[ray]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_real_api_reads_rays_job_list_shape() -> None:
    """RealRayApi.jobs over a stand-in for Ray's client, shaped like Ray 2.60's JobDetails
    (which has no entrypoint_num_gpus: the GPUs asked for come back from our metadata)."""
    from types import SimpleNamespace

    from gpu_scheduler.adapters.ray_api import RealRayApi

    details = SimpleNamespace(
        submission_id="j1", status=SimpleNamespace(value="PENDING"), driver_exit_code=None,
        message=None, driver_node_id=None, metadata={"owner": "o", "num_gpus": "0.5"})
    driverless = SimpleNamespace(submission_id=None)  # a job not from the Jobs API
    api = object.__new__(RealRayApi)
    api._client = SimpleNamespace(list_jobs=lambda: [details, driverless])  # noqa: SLF001
    (job,) = api.jobs().values()
    assert (job.submission_id, job.status, job.exit_code, job.node_id, job.num_gpus) == (
        "j1", "PENDING", None, "", 0.5)
    assert job.metadata["owner"] == "o" and not job.finished
