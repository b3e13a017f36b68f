"""Issue 6, sharing a machine fairly, end to end: preemption (requeue and suspend), per-team quotas
and fair share between tenant files, and job dependencies (``name=`` / ``after=``).

Every test runs the real daemon as a subprocess on simulated GPUs with real job processes (direct
mode; the requeue test runs in screen mode too). Jobs that must stay up until the test says so
wait for a release file (``--until-file``) instead of sleeping for a guessed time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpu_scheduler.core.model import Finished, Job, Running
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness, alive

pytestmark = pytest.mark.slow


def _preemption(daemon: DaemonHarness, mode: str, **extra: Any) -> None:
    daemon.write_config(
        scheduler={
            "graceful_shutdown_timeout_s": 3,
            "preemption": {"enabled": True, "mode": mode, "grace_s": 2, **extra},
        }
    )


def _tenant_files(
    daemon: DaemonHarness, tenants: dict[str, Any], half_life_s: float = 3600
) -> Path:
    """Point ``files.jobs_file`` at the glob ``<root>/jobs/*.txt``: one file per tenant."""
    folder = daemon.root / "jobs"
    folder.mkdir()
    daemon.write_config(
        files={"jobs_file": str(folder / "*.txt")},
        scheduler={"graceful_shutdown_timeout_s": 3, "fair_share_half_life_s": half_life_s},
        tenants=tenants,
    )
    return folder


def _write(path: Path, lines: list[str]) -> None:
    """Save a jobs file the way an editor does (a new file renamed over the old one)."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _by_tag(daemon: DaemonHarness, jobs: dict[str, Job], *tags: str) -> list[Job]:
    found = [daemon.job_with(tag, jobs) for tag in tags]
    assert all(found), f"missing jobs among {tags}"
    return found  # type: ignore[return-value]


def _list_jobs(daemon: DaemonHarness) -> dict[str, dict[str, Any]]:
    out = daemon.cli("list-jobs", "--json")
    assert out.returncode == 0, out.stderr
    return {row["id"]: row for row in json.loads(out.stdout)}


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


# ---------------------------------------------------------------------------- preemption


@pytest.mark.parametrize("mode", ["direct", "screen"])
def test_requeue_preemption_stops_the_victim_and_restarts_it_after_the_urgent_job(
    make_daemon: Callable[..., DaemonHarness], mode: str
) -> None:
    daemon = make_daemon(mode, gpus=2)
    _preemption(daemon, "requeue")
    release, urgent_release = daemon.root / "release", daemon.root / "urgent-release"
    daemon.append(
        daemon.job_line(
            f"--tag victim --until-file {release}", priority=5, sleep=60, options="gpus=2"
        )
    )
    daemon.start()
    victim = daemon.wait_tag("victim", "running")
    (first,) = wait_until(lambda: daemon.records_with("victim"), what="the victim to start")

    daemon.append(
        daemon.job_line(
            f"--tag urgent --until-file {urgent_release}", priority=0, sleep=30, options="gpus=1"
        )
    )
    urgent = daemon.wait_tag("urgent", "running", timeout=15)
    pushed = daemon.job_with("victim")
    assert pushed is not None and pushed.state == "pending", pushed
    assert pushed.preemptions == 1 and pushed.attempts == 1
    assert f"preempted by {urgent.spec.label} ({urgent.job_id})" in pushed.status.reason  # type: ignore[union-attr]
    assert "preempted by" in _list_jobs(daemon)[victim.job_id]["reason"]
    # SIGTERM to the whole tree, well within grace_s: the job ended by the signal (143), not
    # by a SIGKILL after the grace period (137).
    assert not alive(first["pid"]) and not alive(victim.status.pid)  # type: ignore[union-attr]
    exit_record = json.loads(daemon.paths.record_path(victim.job_id, 1).read_text())
    assert exit_record["exit_code"] == 143, exit_record
    assert f"preempted {victim.job_id}" in daemon.scheduler_log()

    urgent_release.touch()
    done = daemon.wait_tag("urgent", "completed")
    rerun = daemon.wait_tag("victim", "running")
    assert rerun.attempts == 2
    _, second = wait_until(
        lambda: len(daemon.records_with("victim")) == 2 and daemon.records_with("victim"),
        what="the victim's second run",
    )
    assert second["preempted"] == "1" and second["attempt"] == "2"
    assert first["preempted"] is None and first["attempt"] == "1"
    assert second["started"] >= done.status.finished_at  # type: ignore[union-attr]
    assert second["cuda"] == "0,1"

    release.touch()
    finished = daemon.wait_tag("victim", "completed")
    assert finished.preemptions == 1 and finished.attempts == 2
    assert len(daemon.records_with("victim")) == 2, "the victim ran exactly twice"
    assert len(daemon.records_with("urgent")) == 1
    assert daemon.stop() == 0


def test_suspend_preemption_freezes_the_victim_and_continues_it_afterwards(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)
    _preemption(daemon, "suspend")
    release, urgent_release = daemon.root / "release", daemon.root / "urgent-release"
    daemon.append(
        daemon.job_line(
            f"--tag victim --until-file {release}", priority=5, sleep=60, options="gpus=2"
        )
    )
    daemon.start()
    victim = daemon.wait_tag("victim", "running")
    (record,) = wait_until(lambda: daemon.records_with("victim"), what="the victim to start")
    runner_pid = victim.status.pid  # type: ignore[union-attr]

    # Simulated GPUs report no memory in use: half of an 80 GB GPU fits beside the frozen job.
    daemon.append(
        daemon.job_line(
            f"--tag urgent --until-file {urgent_release}", priority=0, sleep=30, options="gpus=0.5"
        )
    )
    urgent = daemon.wait_tag("urgent", "running", timeout=15)
    wait_until(
        lambda: _stopped(record["pid"]) and _stopped(runner_pid),
        what="the victim's job and runner to be stopped (T)",
    )
    frozen = daemon.job_with("victim")
    assert frozen is not None and isinstance(frozen.status, Running)
    assert frozen.status.suspended and frozen.preemptions == 1
    assert f"preempted by {urgent.spec.label}" in frozen.status.stop_detail
    row = _list_jobs(daemon)[victim.job_id]
    assert row["state"] == "running" and row["suspended"] is True
    assert row["reason"].startswith("suspended: preempted by"), row["reason"]

    urgent_release.touch()
    daemon.wait_tag("urgent", "completed")

    def continued() -> bool:
        job = daemon.job_with("victim")
        assert job is not None and isinstance(job.status, Running)
        return not (job.status.suspended or _stopped(record["pid"]) or _stopped(runner_pid))

    wait_until(continued, what="the victim to be continued")
    assert alive(record["pid"])
    release.touch()
    done = daemon.wait_tag("victim", "completed")
    assert done.attempts == 1 and done.preemptions == 1
    assert len(daemon.records_with("victim")) == 1, "a suspended job is continued, not re-run"
    assert daemon.stop() == 0


def _used_within_capacity(daemon: DaemonHarness) -> dict[str, int]:
    """The scheduler's own per-GPU accounting (a frozen job's shares are lent out)."""
    state = daemon.state()
    assert state is not None
    used = state.observed["used"]
    assert all(v <= 1000 for v in used.values()), f"over-committed GPUs: {used}"
    return used


def test_a_job_suspended_across_a_daemon_restart_is_still_continued(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    # Regression: restore counted a frozen job's lent-out shares again (GPU 0 at 1.5), so it
    # never fitted again and stayed stopped for good.
    daemon = make_daemon("direct", gpus=2)
    _preemption(daemon, "suspend")
    release, urgent_release = daemon.root / "release", daemon.root / "urgent-release"
    daemon.append(
        daemon.job_line(
            f"--tag victim --until-file {release}", priority=5, sleep=60, options="gpus=2"
        ),
    )
    daemon.start()
    daemon.wait_tag("victim", "running")
    (record,) = wait_until(lambda: daemon.records_with("victim"), what="the victim to start")
    daemon.append(
        daemon.job_line(
            f"--tag urgent --until-file {urgent_release}", priority=0, sleep=30, options="gpus=0.5"
        )
    )
    daemon.wait_tag("urgent", "running", timeout=15)
    wait_until(lambda: _stopped(record["pid"]), what="the victim to be stopped (T)")
    assert daemon.stop() == 0  # a graceful stop leaves both jobs as they are

    daemon.start()
    wait_until(lambda: "adopted" in daemon.scheduler_log(), what="the jobs to be adopted")
    _used_within_capacity(daemon)
    urgent_release.touch()
    daemon.wait_tag("urgent", "completed")

    def continued() -> bool:
        _used_within_capacity(daemon)
        job = daemon.job_with("victim")
        assert job is not None and isinstance(job.status, Running)
        return not job.status.suspended and not _stopped(record["pid"])

    wait_until(continued, timeout=10, what="the victim to be continued after the restart")
    release.touch()
    done = daemon.wait_tag("victim", "completed")
    assert done.attempts == 1 and len(daemon.records_with("victim")) == 1
    assert daemon.stop() == 0


def test_max_preemptions_per_job_bounds_how_often_a_job_is_pushed_back(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)
    _preemption(daemon, "requeue", max_preemptions_per_job=1)
    release = daemon.root / "release"
    daemon.append(
        daemon.job_line(
            f"--tag victim --until-file {release}", priority=5, sleep=60, options="gpus=2"
        )
    )
    daemon.start()
    daemon.wait_tag("victim", "running")
    daemon.append(daemon.job_line("--tag u1", priority=0, sleep=0.2, options="gpus=1"))
    daemon.wait_tag("u1", "completed", timeout=15)
    victim = daemon.wait_tag("victim", "running")
    assert victim.attempts == 2 and victim.preemptions == 1

    daemon.append(daemon.job_line("--tag u2", priority=0, sleep=0.2, options="gpus=1"))
    u2 = daemon.wait_tag("u2", "pending")
    reason = wait_until(
        lambda: daemon.state().observed["waiting"].get(u2.job_id),  # type: ignore[union-attr]
        what="u2's waiting reason",
    )
    assert "preempt" not in reason, reason
    # Several passes later (monitor ticks every 0.5 s) the victim still runs, undisturbed.
    since = daemon.state().saved_at  # type: ignore[union-attr]

    def undisturbed_for_a_while() -> bool:
        state = daemon.state()
        assert state is not None
        jobs = {j.job_id: j for j in state.jobs}
        job = jobs[victim.job_id]
        assert isinstance(job.status, Running) and not job.status.stopping, job.status
        assert job.preemptions == 1 and jobs[u2.job_id].state == "pending"
        return state.saved_at >= since + 1.5

    wait_until(undisturbed_for_a_while, timeout=10, interval=0.05, what="passes to go by")
    release.touch()
    done = daemon.wait_tag("victim", "completed")
    later = daemon.wait_tag("u2", "completed")
    (u2_record,) = daemon.records_with("u2")
    assert u2_record["started"] >= done.status.finished_at  # type: ignore[union-attr]
    assert later.attempts == 1
    assert len(daemon.records_with("victim")) == 2
    assert daemon.stop() == 0


# ---------------------------------------------------------------------------- tenants


def _share_seconds(jobs: list[Job], start: float, end: float) -> float:
    """GPU-share-seconds the jobs held within [start, end] (shares in GPUs)."""
    total = 0.0
    for job in jobs:
        st = job.status
        assert isinstance(st, Finished) and st.started_at is not None
        overlap = min(st.finished_at, end) - max(st.started_at, start)
        total += max(0.0, overlap) * job.share / 1000
    return total


def test_two_equal_tenants_flooding_the_queue_get_about_half_each(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)
    folder = _tenant_files(daemon, {"alice": {"weight": 1}, "bob": {"weight": 1}}, half_life_s=30)
    count = 20
    # alice's file sorts (and is read) first: first come, first served would run all of hers
    # before any of bob's.
    _write(
        folder / "alice.txt",
        [daemon.job_line(f"--tag a{i}-", sleep=0.3, options="gpus=1") for i in range(count)],
    )
    _write(
        folder / "bob.txt",
        [daemon.job_line(f"--tag b{i}-", sleep=0.3, options="gpus=1") for i in range(count)]
        + ["soon,train.py"],
    )
    daemon.start()

    def all_done() -> dict[str, Job] | None:
        jobs = daemon.jobs()
        daemon.overcommit(jobs)
        done = len(jobs) == 2 * count and all(j.state == "completed" for j in jobs.values())
        return jobs if done else None

    jobs = wait_until(all_done, timeout=90, interval=0.1, what="all tenant jobs completed")
    by_tenant = {t: [j for j in jobs.values() if j.spec.tenant == t] for t in ("alice", "bob")}
    assert {t: len(js) for t, js in by_tenant.items()} == {"alice": count, "bob": count}
    # Over the time both tenants had work queued (until the first one ran out of it).
    start = min(j.status.started_at for j in jobs.values())  # type: ignore[union-attr]
    end = min(max(j.status.finished_at for j in js) for js in by_tenant.values())  # type: ignore[union-attr]
    used = {t: _share_seconds(js, start, end) for t, js in by_tenant.items()}
    fraction = used["alice"] / (used["alice"] + used["bob"])
    assert abs(fraction - 0.5) <= 0.05, f"alice got {fraction:.0%} of {used}"

    # The bad line in bob's file is reported with bob's file and line; everything else ran.
    (error,) = daemon.state().observed["errors"]  # type: ignore[union-attr]
    assert error["source"] == str(folder / "bob.txt") and error["line_no"] == count + 1, error
    out = daemon.cli("validate")
    assert out.returncode == 1
    assert f"{folder / 'bob.txt'}:{count + 1}:" in out.stderr, out.stderr
    assert "alice.txt" not in out.stderr
    assert daemon.stop() == 0


def test_a_tenant_at_its_max_gpus_gets_nothing_more_while_others_run(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)
    folder = _tenant_files(daemon, {"alice": {"max_gpus": 1}})
    release = daemon.root / "release"
    _write(
        folder / "alice.txt",
        [
            daemon.job_line(f"--tag a{i}- --until-file {release}", sleep=30, options="gpus=0.5")
            for i in range(4)
        ],
    )
    _write(
        folder / "bob.txt",
        [daemon.job_line(f"--tag b0- --until-file {release}", sleep=30, options="gpus=0.5")],
    )
    peak = {"alice": 0}

    def alice_held(jobs: dict[str, Job]) -> int:
        daemon.overcommit(jobs)
        held = sum(
            j.share for j in jobs.values() if j.spec.tenant == "alice" and j.state == "running"
        )
        assert held <= 1000, f"alice holds {held} milli-GPU, over her max_gpus of 1"
        peak["alice"] = max(peak["alice"], held)
        return held

    daemon.start()
    why = "tenant alice is at its max_gpus (1)"

    def capped() -> dict[str, Job] | None:
        state = daemon.state()
        if state is None:
            return None
        jobs = {j.job_id: j for j in state.jobs}
        alice_held(jobs)
        bob = daemon.job_with("b0-", jobs)
        running = bob is not None and bob.state == "running" and alice_held(jobs) == 1000
        return jobs if running and why in state.observed["waiting"].values() else None

    jobs = wait_until(capped, timeout=20, interval=0.05, what="alice capped while bob runs")
    waiting = [j for j in jobs.values() if j.spec.tenant == "alice" and j.state == "pending"]
    assert len(waiting) == 2
    # There is room on the GPUs (2 GPUs, 1.5 in use): the cap, not the machine, holds her back.
    assert sum(daemon.overcommit(jobs).values()) == 1500
    status = daemon.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    whys = [row["why"] for row in json.loads(status.stdout)["queue"]["next"]]
    assert why in whys, whys

    release.touch()
    wait_until(
        lambda: (
            (jobs := daemon.jobs())
            and alice_held(jobs) >= 0
            and len(jobs) == 5
            and all(j.state == "completed" for j in jobs.values())
        ),
        timeout=20,
        interval=0.05,
        what="all jobs completed",
    )
    assert peak["alice"] == 1000
    assert daemon.stop() == 0


# ---------------------------------------------------------------------------- dependencies


def test_a_pipeline_runs_in_order_and_a_failed_step_fails_its_dependants(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)
    # Lines in reverse order: the order comes from after=, not from the file.
    daemon.append(
        daemon.job_line("--tag eval-", sleep=0.2, options="name=eval,after=train"),
        daemon.job_line("--tag train-", sleep=0.2, options="name=train,after=prep"),
        daemon.job_line("--tag prep-", sleep=0.6, options="name=prep"),
        daemon.job_line("--tag bprep-", exit_code=3, options="name=bprep"),
        daemon.job_line("--tag btrain-", options="name=btrain,after=bprep"),
        daemon.job_line("--tag beval-", options="name=beval,after=btrain"),
    )
    daemon.start()
    train_id = wait_until(lambda: daemon.job_with("train-"), what="train queued").job_id
    reason = wait_until(
        lambda: daemon.state().observed["waiting"].get(train_id),  # type: ignore[union-attr]
        what="train's waiting reason",
    )
    assert reason == "waiting for prep to complete"

    jobs = daemon.wait_jobs(
        lambda js: (
            len(js) == 6 and all(j.state in ("completed", "failed") for j in js.values()) and js
        ),
        timeout=30,
        what="the pipelines to end",
    )
    prep, train, evaluate = _by_tag(daemon, jobs, "prep-", "train-", "eval-")
    assert [j.state for j in (prep, train, evaluate)] == ["completed"] * 3
    for before, after in ((prep, train), (train, evaluate)):
        (record,) = daemon.records_with(after.spec.args[after.spec.args.index("--tag") + 1])
        assert record["started"] >= before.status.finished_at, (before.spec.name, after.spec.name)  # type: ignore[union-attr]

    bprep, btrain, beval = _by_tag(daemon, jobs, "bprep-", "btrain-", "beval-")
    assert bprep.status.outcome.kind == "failed"  # type: ignore[union-attr]
    rows = _list_jobs(daemon)
    for job, dependency in ((btrain, "bprep"), (beval, "btrain")):
        assert job.state == "failed"
        assert job.status.outcome.kind == "dependency_failed"  # type: ignore[union-attr]
        assert rows[job.job_id]["reason"] == f"dependency failed: {dependency}"
        assert rows[job.job_id]["outcome"] == "dependency_failed"
        assert job.attempts == 0
    assert daemon.records_with("btrain-") == [] and daemon.records_with("beval-") == []
    assert daemon.stop() == 0


def test_a_dependency_that_ends_while_the_daemon_is_down_releases_its_dependant(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)
    release = daemon.root / "release"
    daemon.append(
        daemon.job_line(f"--tag prep- --until-file {release}", sleep=30, options="name=prep"),
        daemon.job_line("--tag train-", options="name=train,after=prep"),
    )
    daemon.start()
    prep = daemon.wait_tag("prep-", "running")
    assert daemon.job_with("train-").state == "pending"  # type: ignore[union-attr]
    assert daemon.stop() == 0  # prep keeps running without the daemon ...
    release.touch()
    exit_record = daemon.paths.record_path(prep.job_id, 1)
    wait_until(
        lambda: exit_record.exists() and json.loads(exit_record.read_text())["state"] == "exited",
        what="prep to exit while the daemon is down",
    )
    daemon.start()  # ... and the next start finds its exit record and releases train
    prep = daemon.wait_tag("prep-", "completed")
    daemon.wait_tag("train-", "completed")
    (record,) = daemon.records_with("train-")
    assert record["started"] >= prep.status.finished_at  # type: ignore[union-attr]
    assert daemon.stop() == 0


def _bad_dependency_lines(daemon: DaemonHarness) -> None:
    daemon.append(
        daemon.job_line("--tag lonely-", options="after=nope"),  # line 1
        daemon.job_line("--tag x-", options="name=x,after=y"),  # line 2
        daemon.job_line("--tag y-", options="name=y,after=x"),  # line 3
        daemon.job_line("--tag fine-", options="name=fine"),  # line 4
        daemon.job_line("--tag next-", options="after=fine"),  # line 5
    )


def test_unknown_and_cyclic_after_are_line_errors_and_the_other_lines_run(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)
    _bad_dependency_lines(daemon)
    daemon.start()
    daemon.wait_tag("next-", "completed")
    state = daemon.state()
    assert state is not None
    errors = {e["line_no"]: e for e in state.observed["errors"]}
    assert sorted(errors) == [1, 2, 3], errors
    assert all(e["source"] == str(daemon.jobs_file) for e in errors.values())
    assert errors[1]["message"] == "after=nope: no job has this name or id"
    assert errors[2]["message"].startswith("dependency cycle: ")
    assert errors[2]["message"] == errors[3]["message"]
    assert set(errors[2]["message"].removeprefix("dependency cycle: ").split(" -> ")) == {"x", "y"}
    tags = {t for j in state.jobs for t in j.spec.args if t.endswith("-")}
    assert tags == {"fine-", "next-"}, "lines with errors never become jobs"
    assert {r["rest"][1] for r in daemon.records()} == {"fine-", "next-"}
    assert daemon.stop() == 0


def test_validate_reports_unknown_and_cyclic_after(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=2)  # no daemon needed: validate reads the files
    _bad_dependency_lines(daemon)
    out = daemon.cli("validate")
    assert out.returncode == 1, out
    assert f"{daemon.jobs_file}:1: after=nope: no job has this name or id" in out.stderr
    assert f"{daemon.jobs_file}:2: dependency cycle: " in out.stderr
    assert f"{daemon.jobs_file}:3: dependency cycle: " in out.stderr
    assert ":4:" not in out.stderr and ":5:" not in out.stderr
    assert "3 error(s)" in out.stderr
