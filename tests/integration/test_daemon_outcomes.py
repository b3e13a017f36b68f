"""Issue 3, how a job ends: exit codes, timeouts, retries=N, launches that fail and are retried."""

from __future__ import annotations

import json

import pytest

from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness, alive

pytestmark = pytest.mark.slow


def test_exit_codes_are_recorded_in_state_and_list_jobs(daemon: DaemonHarness) -> None:
    daemon.start()
    daemon.append(daemon.job_line("--tag ok"), daemon.job_line("--tag three", exit_code=3))
    ok = daemon.wait_tag("ok", "completed")
    three = daemon.wait_tag("three", "failed")
    assert ok.last_exit_code == 0 and ok.status.outcome.kind == "succeeded"  # type: ignore[union-attr]
    assert three.last_exit_code == 3
    assert three.status.outcome.exit_code == 3  # type: ignore[union-attr]
    out = daemon.cli("list-jobs", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["id"]: row for row in json.loads(out.stdout)}
    assert rows[ok.job_id]["state"] == "completed" and rows[ok.job_id]["exit_code"] == 0
    assert rows[three.job_id]["state"] == "failed" and rows[three.job_id]["exit_code"] == 3
    assert rows[three.job_id]["reason"] == "exit 3"
    failed = json.loads(daemon.cli("list-jobs", "--json", "--status", "failed").stdout)
    assert [row["id"] for row in failed] == [three.job_id]
    assert daemon.stop() == 0


def test_timeout_stops_the_job_and_its_children(daemon: DaemonHarness) -> None:
    daemon.start()
    daemon.append(daemon.job_line("--tag slow --child-sleep 60", sleep=30, options="timeout=1s"))
    daemon.wait_tag("slow", "running")
    (record,) = wait_until(lambda: daemon.records_with("slow"), what="the job to start")
    job = daemon.wait_tag("slow", "failed", timeout=15)
    assert job.status.outcome.kind == "timed_out"  # type: ignore[union-attr]
    assert job.status.outcome.timeout_s == 1  # type: ignore[union-attr]
    wait_until(
        lambda: not alive(record["pid"]) and not alive(record["child_pid"]),
        timeout=10,
        what="the job and its child to be gone",
    )
    assert daemon.stop() == 0


def test_retries_run_a_failing_job_n_more_times(daemon: DaemonHarness) -> None:
    daemon.start()
    daemon.append(daemon.job_line("--tag flaky", exit_code=1, options="retries=2"))
    job = daemon.wait_tag("flaky", "failed")
    runs = daemon.records_with("flaky")
    assert [r["attempt"] for r in runs] == ["1", "2", "3"]
    assert job.retries_used == 2 and job.attempts == 3 and job.last_exit_code == 1
    assert daemon.stop() == 0


def test_failed_launches_are_retried_then_fail_with_the_reason(daemon: DaemonHarness) -> None:
    daemon.write_config(jobs={"max_assignment_attempts": 2, "assignment_retry_wait_s": 0.2})
    script = daemon.root / "not_executable.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    daemon.start()
    daemon.append(
        daemon.job_line("--tag noenv", env="no-such-env-3f9a"),
        f"0,{script},,--tag noexec",
    )
    noenv = daemon.wait_tag("noenv", "failed", timeout=20)
    noexec = daemon.wait_tag("noexec", "failed", timeout=20)
    for job, words in ((noenv, "no-such-env-3f9a"), (noexec, "not executable")):
        outcome = job.status.outcome  # type: ignore[union-attr]
        assert outcome.kind == "launch_failed", outcome
        assert words in outcome.message
        assert job.launch_failures == 2, "retried max_assignment_attempts times"
        assert job.attempts == 2
    assert daemon.records() == []
    log = daemon.scheduler_log()
    assert log.count('"launch_retry"') >= 2
    rows = {r["id"]: r for r in json.loads(daemon.cli("list-jobs", "--json").stdout)}
    assert "not executable" in rows[noexec.job_id]["reason"]
    assert daemon.stop() == 0
