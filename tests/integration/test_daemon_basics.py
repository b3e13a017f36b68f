"""The daemon's core promise: append a line, find the job running on the right GPUs."""

from __future__ import annotations

import pytest

from gpu_scheduler.adapters.screen import ScreenSessions
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness

pytestmark = pytest.mark.slow


def test_appended_jobs_run_on_shared_and_gang_gpus(daemon: DaemonHarness) -> None:
    daemon.start()
    daemon.append(
        daemon.job_line("--llm small-model", sleep=1.5),
        daemon.job_line("--llm small-model", sleep=1.5),
        daemon.job_line("--llm big-model", sleep=1.5),
    )
    records = wait_until(lambda: len(daemon.records()) == 3 and daemon.records(), timeout=20,
                         what="three jobs to start")
    small = [r for r in records if "small-model" in r["argv"]]
    big = [r for r in records if "big-model" in r["argv"]][0]
    assert small[0]["cuda"] == small[1]["cuda"], "two 0.5 jobs share one GPU"
    big_gpus = set(big["cuda"].split(","))
    assert len(big_gpus) == 2 and small[0]["cuda"] not in big_gpus
    assert all(r["order"] == "PCI_BUS_ID" for r in records)
    assert {r["share"] for r in records} == {"0.5", "2"}
    jobs = daemon.wait_states(3, "completed")
    if daemon.mode == "screen":
        for job in jobs.values():
            stem = "job"
            gpu = job.status.gpus[0]
            assert job.job_id in {r["job_id"] for r in records}
            assert f"gpujob_{gpu}_{stem}_{job.job_id}" in (daemon.root / "scheduler.log").read_text()
    assert daemon.stop() == 0


def test_screen_session_is_named_and_visible(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon("screen")
    daemon.start()
    daemon.append(daemon.job_line("--llm small-model", sleep=30))
    jobs = daemon.wait_states(1, "running")
    job = next(iter(jobs.values()))
    wait_until(lambda: job.status.pid is not None or daemon.jobs()[job.job_id].status.pid,
               what="pid")
    expected = f"gpujob_{job.status.gpus[0]}_job_{job.job_id}"
    assert job.status.session == expected
    assert expected in ScreenSessions(daemon.screen_dir).list()
    out = daemon.cli("screens")
    assert expected in out.stdout
    cancel = daemon.cli("cancel-job", job.job_id)
    assert cancel.returncode == 0, cancel.stderr
    daemon.wait_states(1, "cancelled")
    wait_until(lambda: expected not in ScreenSessions(daemon.screen_dir).list(),
               what="session gone")
    daemon.stop()
