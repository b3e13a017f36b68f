"""Issue 3, the CLI against a running daemon: cancel, pause/resume, retry, llm_config reload,
add/logs/attach/screens, a second start, stop and the next start."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpu_scheduler.adapters.screen import ScreenSessions
from tests.conftest import PidTracker
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness, alive

pytestmark = pytest.mark.slow


@pytest.fixture(params=["screen", "direct"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_cancel_running_pending_and_unknown_jobs(
    make_daemon: Callable[..., DaemonHarness], mode: str
) -> None:
    daemon = make_daemon(mode, gpus=1)
    daemon.start()
    daemon.append(
        daemon.job_line("--tag tree --child-sleep 60", sleep=60), daemon.job_line("--tag waiting")
    )
    running = daemon.wait_tag("tree", "running")
    assert daemon.job_with("waiting").state == "pending"  # type: ignore[union-attr]
    (record,) = wait_until(lambda: daemon.records_with("tree"), what="the job to start")
    session = running.status.session  # type: ignore[union-attr]
    screens = ScreenSessions(daemon.screen_dir)
    if mode == "screen":
        assert session in screens.list()

    # The pending job first: dequeued, never runs (the GPU is still busy).
    out = daemon.cli("cancel-job", daemon.job_with("waiting").job_id)  # type: ignore[union-attr]
    assert out.returncode == 0, out.stderr
    daemon.wait_tag("waiting", "cancelled")

    out = daemon.cli("cancel-job", running.job_id)
    assert out.returncode == 0, out.stderr
    job = daemon.wait_tag("tree", "cancelled", timeout=15)
    assert job.status.outcome.kind == "cancelled"  # type: ignore[union-attr]
    pids = [running.status.pid, record["pid"], record["child_pid"]]  # type: ignore[union-attr]
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what="the whole tree gone")
    if mode == "screen":
        wait_until(lambda: session not in screens.list(), timeout=10, what="the session gone")
    assert daemon.records_with("waiting") == []

    out = daemon.cli("cancel-job", "feedbeef")
    assert out.returncode == 1
    assert "no such job: feedbeef" in out.stderr
    # A name two jobs share is not "no such job": the message says it is ambiguous.
    daemon.append(*(daemon.job_line(f"--tag twin{i}", options="name=twin") for i in range(2)))
    daemon.wait_jobs(lambda js: sum(j.spec.name == "twin" for j in js.values()) == 2, what="twins")
    out = daemon.cli("cancel-job", "twin")
    assert out.returncode == 1
    assert "'twin' matches 2 jobs" in out.stderr, out.stderr
    assert daemon.stop() == 0


def test_cancel_without_a_daemon_says_so(make_daemon: Callable[..., DaemonHarness]) -> None:
    daemon = make_daemon("direct")
    out = daemon.cli("cancel-job", "abc")
    assert out.returncode == 3
    assert "no daemon is running" in out.stderr
    assert "Traceback" not in out.stderr


def test_pause_and_resume_gpus(make_daemon: Callable[..., DaemonHarness], mode: str) -> None:
    daemon = make_daemon(mode, gpus=2)
    daemon.start()
    out = daemon.cli("pause-gpu", "0")
    assert out.returncode == 0, out.stderr
    release = daemon.root / "release"
    daemon.append(
        daemon.job_line(f"--tag a1 --until-file {release}", sleep=30), daemon.job_line("--tag a2")
    )
    a1 = daemon.wait_tag("a1", "running")
    assert a1.status.gpus == (1,)  # type: ignore[union-attr]
    # a2 waits for GPU 1 although GPU 0 is free: GPU 0 is paused.
    a2 = daemon.job_with("a2")
    assert a2 is not None and a2.state == "pending"
    wait_until(lambda: a2.job_id in daemon.state().observed["waiting"], what="a2's reason")

    out = daemon.cli("pause-gpu", "all")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: daemon.state().paused == (0, 1), what="both GPUs paused")
    release.touch()  # the running job finishes on a paused GPU ...
    daemon.wait_tag("a1", "completed")
    daemon.append(daemon.job_line("--tag a3"))
    wait_until(lambda: daemon.job_with("a3"), what="a3 to be queued")
    # ... and nothing new starts: a2 and a3 stay pending through the passes that follow.
    state = daemon.state()
    assert state is not None and set(state.observed["unusable"]) == {"0", "1"}
    assert daemon.job_with("a2").state == "pending"  # type: ignore[union-attr]
    assert daemon.job_with("a3").state == "pending"  # type: ignore[union-attr]
    assert daemon.records_with("a2") == [] and daemon.records_with("a3") == []

    out = daemon.cli("resume-gpu", "all")
    assert out.returncode == 0, out.stderr
    daemon.wait_tag("a2", "completed")
    daemon.wait_tag("a3", "completed")

    out = daemon.cli("pause-gpu", "7")
    assert out.returncode == 1
    assert "GPU 7 not found; this machine has GPUs 0-1" in out.stderr
    assert daemon.stop() == 0


def test_retry_runs_a_failed_job_again(daemon: DaemonHarness) -> None:
    daemon.start()
    daemon.append(daemon.job_line("--tag again", exit_code=3))
    job = daemon.wait_tag("again", "failed")
    out = daemon.cli("retry", job.job_id)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: len(daemon.records_with("again")) == 2, what="a second run")
    # (the state file may show the first failure for up to a save interval longer)
    wait_until(lambda: (j := daemon.wait_tag("again", "failed")).attempts == 2 and j,
               what="the second failure saved")  # fmt: skip
    out = daemon.cli("retry", "feedbeef")
    assert out.returncode == 1 and "no such job" in out.stderr
    assert daemon.stop() == 0


def test_retried_job_whose_line_was_removed_still_runs(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    daemon = make_daemon("direct", gpus=1)
    daemon.append(daemon.job_line("--tag gone", exit_code=3))
    daemon.start()
    failed = daemon.wait_tag("gone", "failed")
    release = daemon.root / "release"
    daemon.replace_jobs(daemon.job_line(f"--tag blocker --until-file {release}", sleep=30))
    daemon.wait_tag("blocker", "running")
    assert daemon.cli("retry", failed.job_id).returncode == 0
    daemon.wait_tag("gone", "pending")
    daemon.append(daemon.job_line("--tag later"))  # any later change to the jobs file
    daemon.wait_tag("later", "pending")
    release.touch()
    daemon.wait_tag("later", "completed")
    assert len(daemon.records_with("gone")) == 2, "the retry the user asked for never ran"


def test_llm_config_edit_reshares_pending_jobs(
    make_daemon: Callable[..., DaemonHarness], mode: str
) -> None:
    daemon = make_daemon(mode, gpus=2)
    release = daemon.root / "release"
    daemon.start()
    daemon.append(
        *(
            daemon.job_line(f"--tag blk{i} --until-file {release}", sleep=30, options="gpus=1")
            for i in range(2)
        )
    )
    daemon.wait_tag("blk0", "running")
    daemon.wait_tag("blk1", "running")
    daemon.append(*(daemon.job_line(f"--llm small-model --tag m{i}", sleep=0.8) for i in range(2)))
    jobs = daemon.wait_jobs(lambda js: len(js) == 4 and js, what="two pending jobs")
    assert {daemon.job_with(t, jobs).share for t in ("m0", "m1")} == {500}  # type: ignore[union-attr]

    daemon.replace_llm({"small-model": 1.0})
    daemon.wait_jobs(
        lambda js: all(daemon.job_with(t, js).share == 1000 for t in ("m0", "m1")),
        what="the pending jobs' shares to become 1",
    )
    release.touch()

    def done() -> bool:
        jobs = daemon.jobs()
        daemon.overcommit(jobs)
        return all(j.state == "completed" for j in jobs.values())

    wait_until(done, timeout=20, interval=0.05, what="all jobs to complete")
    (m0,), (m1,) = daemon.records_with("m0"), daemon.records_with("m1")
    assert {m0["cuda"], m1["cuda"]} == {"0", "1"}, "one job per GPU"
    assert m0["share"] == m1["share"] == "1"
    assert daemon.stop() == 0


def test_shell_metacharacters_arrive_literally(daemon: DaemonHarness) -> None:
    daemon.start()
    args = (
        f'--out {daemon.out_file} --tag meta --name ""a b; rm -rf ~"" '
        "'$(id)' '*' '|' --note 'x,y' `touch pwned`"
    )
    daemon.append(f'0,{daemon.job_script},,"{args}"')
    daemon.wait_tag("meta", "completed")
    (record,) = daemon.records_with("meta")
    assert record["rest"] == [
        "--tag",
        "meta",
        "--name",
        "a b; rm -rf ~",
        "$(id)",
        "*",
        "|",
        "--note",
        "x,y",
        "`touch",
        "pwned`",
    ]
    assert not (daemon.root / "pwned").exists()
    assert daemon.stop() == 0


def test_add_prints_the_id_that_runs_and_logs_attach_screens(daemon: DaemonHarness) -> None:
    daemon.start()
    release = daemon.root / "release"
    args = f"--out {daemon.out_file} --until-file {release} --sleep 30 --tag added --x 'a b'"
    out = daemon.cli(
        "add", str(daemon.job_script), "--args", args, "--share", "0.5", "--name", "n1"
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    line = daemon.jobs_file.read_text().splitlines()[-1]
    assert "name=n1" in line and "gpus=0.5" in line
    job = daemon.wait_tag("added", "running")
    assert job.job_id == job_id and job.share == 500 and job.spec.name == "n1"
    (record,) = wait_until(lambda: daemon.records_with("added"), what="the job to start")
    assert record["rest"][-3:] == ["added", "--x", "a b"]

    if daemon.mode == "screen":
        out = daemon.cli("screens")
        assert job.status.session in out.stdout  # type: ignore[union-attr]
    else:
        out = daemon.cli("attach", "n1")
        assert out.returncode == 1
        assert "no screen session" in out.stderr and f"logs {job_id}" in out.stderr
    release.touch()
    daemon.wait_tag("added", "completed")
    out = daemon.cli("logs", "n1")
    assert out.returncode == 0, out.stderr
    assert f"job running {job_id}" in out.stdout
    assert daemon.stop() == 0


def test_add_refuses_bad_options_with_a_message(make_daemon: Callable[..., DaemonHarness]) -> None:
    daemon = make_daemon("direct")  # no daemon needed: add only writes jobs.txt
    for option, value, words in (
        ("--timeout", "bogus", "bad value for timeout"),
        ("--name", "bad name!", "name!"),
    ):
        out = daemon.cli("add", str(daemon.job_script), option, value)
        assert out.returncode == 1, out
        assert words in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert daemon.jobs_file.read_text() == ""


def test_second_start_refuses_and_stop_leaves_jobs_running(daemon: DaemonHarness) -> None:
    release = daemon.root / "release"
    daemon.start()
    daemon.append(daemon.job_line(f"--tag keep --until-file {release}", sleep=30))
    job = daemon.wait_tag("keep", "running")
    second = daemon.cli("start")
    assert second.returncode == 1
    assert "already running on this state file" in second.stderr
    assert "gpu-scheduler stop" in second.stderr
    assert daemon.listening()

    out = daemon.cli("stop")
    assert out.returncode == 0, out.stderr
    assert "running jobs keep running" in out.stdout
    assert daemon.proc is not None and daemon.proc.wait(timeout=10) == 0
    assert alive(job.status.pid)  # type: ignore[union-attr]
    if daemon.mode == "screen":
        assert job.status.session in ScreenSessions(daemon.screen_dir).list()  # type: ignore[union-attr]

    daemon.start()
    release.touch()
    done = daemon.wait_tag("keep", "completed")
    assert done.attempts == 1 and len(daemon.records_with("keep")) == 1
    assert daemon.stop() == 0


def test_start_daemon_detaches_and_stop_ends_it(
    make_daemon: Callable[..., DaemonHarness], pids: PidTracker
) -> None:
    daemon = make_daemon("direct")
    out = daemon.cli("start", "--daemon")
    assert out.returncode == 0, out.stderr
    assert "running in the background" in out.stdout
    pid = pids.add(int(daemon.paths.pid_file.read_text()))
    assert daemon.listening()
    daemon.echo_append(daemon.job_line("--tag detached"))
    daemon.wait_tag("detached", "completed")
    out = daemon.cli("stop")
    assert out.returncode == 0, out.stderr
    assert not alive(pid) and not daemon.listening()
