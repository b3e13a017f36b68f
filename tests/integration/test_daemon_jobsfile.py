"""Issue 3, the daemon and its jobs file: lines appended, edited, removed, duplicated, half-written.

Every test runs a real daemon (screen and direct mode) on simulated GPUs and changes the real
jobs.txt the way people do: an editor's save (new file renamed over the old one), ``echo >>``,
a slow writer that leaves the last line without its newline for a moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gpu_scheduler.adapters.screen import ScreenSessions
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness, alive

pytestmark = pytest.mark.slow


def test_appended_lines_share_and_gang_gpus_and_never_overcommit(daemon: DaemonHarness) -> None:
    daemon.start()
    tags = {f"s{i}": "small-model" for i in range(6)} | {
        "b0": "big-model",
        "b1": "big-model",
        "w0": "whole-model",
    }
    daemon.append(
        *(daemon.job_line(f"--llm {model} --tag {tag}", sleep=0.6) for tag, model in tags.items())
    )
    screens = ScreenSessions(daemon.screen_dir)
    seen_sessions: set[str] = set()

    def all_done() -> bool:
        jobs = daemon.jobs()
        daemon.overcommit(jobs)  # sampled on every poll while the jobs come and go
        if daemon.mode == "screen":
            seen_sessions.update(screens.list())
        return len(jobs) == len(tags) and all(j.state == "completed" for j in jobs.values())

    wait_until(all_done, timeout=40, interval=0.05, what="all jobs completed")

    jobs = daemon.jobs()
    for tag, model in tags.items():
        job = daemon.job_with(tag, jobs)
        assert job is not None
        (record,) = daemon.records_with(tag)
        gpus = job.status.gpus  # type: ignore[union-attr]
        assert record["job_id"] == job.job_id
        assert record["cuda"] == ",".join(map(str, gpus)), "the job sees the GPUs it was given"
        assert len(gpus) == (2 if model == "big-model" else 1)
        assert (
            record["share"] == {"small-model": "0.5", "big-model": "2", "whole-model": "1"}[model]
        )
        assert record["order"] == "PCI_BUS_ID"
        assert record["attempt"] == "1"
        session = f"gpujob_{gpus[0]}_job_{job.job_id}"
        assert f"in {session}" in daemon.scheduler_log()
        if daemon.mode == "screen":
            assert session in seen_sessions, session
            assert record["tty"], "a screen job runs on a terminal"
    # two 0.5 jobs shared a GPU at some point: the first two went to the same one (best fit)
    first_two = sorted(
        daemon.records_with("s0") + daemon.records_with("s1"), key=lambda r: r["started"]
    )
    assert first_two[0]["cuda"] == first_two[1]["cuda"]
    if daemon.mode == "screen":
        # (the daemon keeps a warm window waiting for the next job: not a job's session)
        wait_until(lambda: not daemon.job_sessions(), timeout=10, what="sessions to end")
    assert daemon.stop() == 0


def test_zero_second_job_is_noticed_at_once_without_polling(daemon: DaemonHarness) -> None:
    # A monitor tick of 60 s: only the exit watcher can notice the end in time.
    daemon.write_config(gpu={"monitor_interval_s": 60})
    daemon.start()
    for tag in ("z1", "z2"):
        t0 = time.monotonic()
        daemon.append(daemon.job_line(f"--tag {tag}"))
        daemon.wait_tag(tag, "completed", timeout=10)
        assert time.monotonic() - t0 < 10
    assert daemon.stop() == 0


def test_editor_save_and_echo_append_both_enqueue(daemon: DaemonHarness) -> None:
    daemon.start()
    first = daemon.job_line("--tag vim1")
    daemon.replace_jobs("# my jobs", first)
    daemon.wait_tag("vim1", "completed")
    daemon.echo_append(daemon.job_line("--tag echo1"))
    daemon.wait_tag("echo1", "completed")
    # Another editor save: the finished lines stay, one line is new. Only the new one runs.
    daemon.replace_jobs(
        "# my jobs", first, daemon.job_line("--tag echo1"), daemon.job_line("--tag vim2")
    )
    daemon.wait_tag("vim2", "completed")
    assert [len(daemon.records_with(t)) for t in ("vim1", "echo1", "vim2")] == [1, 1, 1]
    assert daemon.stop() == 0


def test_half_written_line_waits_for_quiet_then_runs_complete(daemon: DaemonHarness) -> None:
    daemon.start()
    # 1. A last line without its newline is held until the file has been quiet ~0.3 s.
    written = time.time()
    daemon.write_raw(daemon.job_line("--tag held"))
    daemon.wait_tag("held", "completed")
    (record,) = daemon.records_with("held")
    assert record["started"] - written >= 0.25, "a half-written line launched before the quiet"
    daemon.write_raw("\n")
    # 2. The rest of the line arrives before the quiet period ends: the whole line runs.
    line = daemon.job_line("--tag partial")
    daemon.write_raw(line[:-4])  # "... --tag part"
    daemon.write_raw(line[-4:] + "\n")
    daemon.wait_tag("partial", "completed")
    assert daemon.records_with("part") == []
    assert len(daemon.records_with("partial")) == 1
    assert daemon.stop() == 0


def test_slow_writer_never_launches_a_line_being_typed(daemon: DaemonHarness) -> None:
    """A writer that keeps adding to the last line (every 0.05 s, for twice the quiet period)
    must not have a prefix of it launched: only the finished line runs. (The watcher holds
    back events while a file keeps changing, so the daemon must not take "no event for
    0.3 s" for "quiet".)"""
    daemon.start()
    line = daemon.job_line("--tag typed")
    pieces = [line[: len(line) - 12], *line[len(line) - 12 :]]  # the last 12 characters one by one
    for piece in pieces:
        daemon.write_raw(piece)
        time.sleep(0.05)  # the writer's pace (not a wait for the daemon)
    daemon.write_raw("\n")
    daemon.wait_tag("typed", "completed")
    ran = [r["rest"] for r in daemon.records()]
    assert ran == [["--tag", "typed"]], f"prefixes of the line ran: {ran}"
    assert daemon.stop() == 0


def test_last_line_without_newline_stays_queued_when_other_files_change(
    make_daemon: Callable[..., DaemonHarness], mode: str
) -> None:
    """Editors often save without a final newline. Once the file is quiet that last line is a
    job like any other: re-reading the file later (llm_config edited, the safety timer) must
    not dequeue it and queue it again (losing its place) just because it still has no newline."""
    daemon = make_daemon(mode, gpus=1)
    release = daemon.root / "release"
    daemon.append(daemon.job_line(f"--tag blocker --until-file {release}", sleep=30))
    daemon.start()
    daemon.wait_tag("blocker", "running")
    daemon.write_raw(daemon.job_line("--tag nonl"))
    held = daemon.wait_tag("nonl", "pending")
    daemon.replace_llm({"small-model": 0.5, "other-model": 0.25})
    wait_until(lambda: "llm_config reloaded" in daemon.scheduler_log(), what="the reload")
    assert daemon.cli("resume-gpu", "0").returncode == 0  # the loop has finished that step
    assert f"dequeued {held.job_id}" not in daemon.scheduler_log()
    job = daemon.job_with("nonl")
    assert job is not None and (job.seq, job.submitted_at) == (held.seq, held.submitted_at)
    # The same after a restart: the saved pending job is the line's job, not a vanished one.
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.cli("resume-gpu", "0").returncode == 0
    assert f"dequeued {held.job_id}" not in daemon.scheduler_log()
    job = daemon.job_with("nonl")
    assert job is not None and (job.seq, job.submitted_at) == (held.seq, held.submitted_at)
    release.touch()
    daemon.wait_tag("nonl", "completed")
    assert daemon.stop() == 0


def test_edit_remove_duplicate_and_restart(
    make_daemon: Callable[..., DaemonHarness], mode: str
) -> None:
    daemon = make_daemon(mode, gpus=1)
    release = daemon.root / "release"
    blocker = daemon.job_line(f"--tag blocker --until-file {release}", sleep=30)
    p1, p2, p3 = (daemon.job_line(f"--tag {t}") for t in ("p1", "p2", "p3"))
    failing = daemon.job_line("--tag bad", exit_code=3)
    daemon.append(blocker)
    daemon.start()
    running = daemon.wait_tag("blocker", "running")
    daemon.append(p1, p2, p3, p3, failing)
    jobs = daemon.wait_jobs(lambda js: len(js) == 6 and js, what="five pending jobs")
    dup_ids = {j.job_id for j in jobs.values() if "p3" in j.spec.args}
    assert len(dup_ids) == 2, "a duplicated line is a second job"
    old_p1 = daemon.job_with("p1", jobs)
    assert old_p1 is not None and old_p1.state == "pending"

    # Edit p1 (-> p1b), remove p2 and the running blocker's line, keep the duplicate.
    daemon.replace_jobs(daemon.job_line("--tag p1b"), p3, p3, failing)
    jobs = daemon.wait_jobs(
        lambda js: daemon.job_with("p1b", js) and daemon.job_with("p2", js) is None and js,
        what="the edit to be read",
    )
    assert old_p1.job_id not in jobs, "an edited line's pending job is dequeued"
    assert daemon.job_with("p1", jobs) is None
    assert jobs[running.job_id].state == "running", "a removed line never stops a running job"
    assert alive(running.status.pid)  # type: ignore[union-attr]

    release.touch()
    daemon.wait_jobs(
        lambda js: (
            len(js) == 5 and all(j.state in ("completed", "failed") for j in js.values()) and js
        ),
        what="all to finish",
    )
    assert daemon.job_with("bad").state == "failed"  # type: ignore[union-attr]
    ran = sorted(r["rest"][1] for r in daemon.records())
    assert ran == ["bad", "blocker", "p1b", "p3", "p3"]

    # Restart: completed and failed jobs whose lines are still there never run again.
    assert daemon.stop() == 0
    daemon.start()
    daemon.append(daemon.job_line("--tag marker"))
    daemon.wait_tag("marker", "completed")  # 1 GPU, FIFO: a re-run would have come first
    ran = sorted(r["rest"][1] for r in daemon.records())
    assert ran == ["bad", "blocker", "marker", "p1b", "p3", "p3"]
    assert daemon.stop() == 0


def test_line_errors_are_logged_and_validated_and_good_lines_run(daemon: DaemonHarness) -> None:
    daemon.start()
    good = daemon.job_line("--tag good")
    bad_priority = daemon.job_line("--tag x1").replace("0,", "high,", 1)
    bad_option = daemon.job_line("--tag x2", options="gpu=0.5")
    daemon.append(bad_priority, good, bad_option)
    daemon.wait_tag("good", "completed")
    wait_until(lambda: "unknown option" in daemon.scheduler_log(), timeout=10, what="logged")
    log = daemon.scheduler_log()
    assert f"{daemon.jobs_file}:1:" in log and f"{daemon.jobs_file}:3:" in log
    state = daemon.state()
    assert state is not None
    assert sorted(e["line_no"] for e in state.observed["errors"]) == [1, 3]
    out = daemon.cli("validate")
    assert out.returncode == 1
    assert f"{daemon.jobs_file}:1:" in out.stderr and "priority" in out.stderr
    assert f"{daemon.jobs_file}:3: unknown option 'gpu'" in out.stderr
    assert "2 error(s)" in out.stderr
    assert daemon.records_with("x1") == [] and daemon.records_with("x2") == []
    assert daemon.stop() == 0


@pytest.fixture(params=["screen", "direct"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)
