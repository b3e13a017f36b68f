"""The warm runner host (direct mode) with real processes: a forked runner keeps every promise
of a runner started on its own, and no way the host can fail runs a job twice.

The protocol's safety rests on one ordering (``runner_host``): the host answers the launcher
before it lets the child go. So an answer never read means the child never ran anything, and
the launcher may start the runner another way; and a child writes its ``starting`` record
before it opens its spec, so recovery can find it although its command line is the host's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from gpu_scheduler.adapters.clock import FakeClock
from gpu_scheduler.adapters.gpus import FakeProbe
from gpu_scheduler.adapters.launchers import DirectLauncher, LaunchRequest, read_record
from gpu_scheduler.adapters.runnerhost import HostGone, RunnerHost
from gpu_scheduler.config import settings_from_dict
from gpu_scheduler.core.model import GpuSnapshot, JobSpec, Running
from gpu_scheduler.core.recovery import RunFacts, reconcile
from gpu_scheduler.core.scheduler import Policy, Scheduler
from gpu_scheduler.daemon import Daemon
from gpu_scheduler.daemon_records import gather_facts
from gpu_scheduler.paths import DaemonPaths
from tests.conftest import PidTracker
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

NOW = 1_700_000_000.0
# Appends its pid to argv[1], waits for the file argv[2] (if given, at most 30 s), exits 0.
JOB = """\
import os, sys, time
with open(sys.argv[1], "a") as fh:
    fh.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')} {sys.stdout.isatty()}\\n")
deadline = time.monotonic() + 30
while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def _request(tmp_path: Path, job_id: str, *args: str) -> LaunchRequest:
    paths = DaemonPaths(tmp_path / "state" / "state.json", tmp_path / "logs")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return LaunchRequest(
        job_id=job_id, attempt=1, session=f"s_{job_id}", script=str(script),
        args=(str(tmp_path / f"runs-{job_id}.txt"), *args), conda_env=None, gpus=(1,),
        share="1", log_path=paths.log_path(job_id), record_path=paths.record_path(job_id, 1),
        python=sys.executable,
    )  # fmt: skip


def _runs(tmp_path: Path, job_id: str) -> list[str]:
    path = tmp_path / f"runs-{job_id}.txt"
    return path.read_text().splitlines() if path.exists() else []


def _host_request(req: LaunchRequest, spec_path: Path) -> dict[str, object]:
    return {"spec": str(spec_path), "log": str(req.log_path), "record": str(req.record_path),
            "job_id": req.job_id, "attempt": req.attempt, "session": req.session,
            "cwd": os.getcwd()}  # fmt: skip


def _write_spec(tmp_path: Path, req: LaunchRequest) -> Path:
    spec_path = tmp_path / "state" / "records" / f"{req.job_id}.1.spec.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    req.log_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(req.spec()))
    return spec_path


def test_forked_runner_keeps_the_runners_promises(tmp_path: Path, pids: PidTracker) -> None:
    """A pty, its GPUs, output in the log, start and exit records, its own session, reaped."""
    launcher = DirectLauncher(tmp_path / "state" / "records")
    exited: list[int] = []
    launcher.set_exit_callback(exited.append)
    try:
        req = _request(tmp_path, "j", str(tmp_path / "go"))
        proc = launcher.launch(req)
        pids.add(proc.pid)
        assert launcher._host is not None
        assert psutil.Process(proc.pid).ppid() == launcher._host.proc.pid, "forked by the host"
        wait_until(lambda: _runs(tmp_path, "j"), what="the job")
        (tmp_path / "go").touch()
        wait_until(lambda: exited == [proc.pid], what="the exit callback")
        record = read_record(req.record_path)
        assert record is not None and record["state"] == "exited" and record["exit_code"] == 0
        assert record["runner_pid"] == proc.pid
        assert abs(record["runner_started_at"] - proc.pid_started_at) <= 0.02
        [line] = _runs(tmp_path, "j")
        job_pid, cuda, tty = line.split()
        assert (cuda, tty) == ("1", "True") and int(job_pid) == record["job_pid"]
        assert "job j attempt 1 on GPUs 1" in req.log_path.read_text()
        assert not psutil.pid_exists(proc.pid), "reaped, not left a zombie"
    finally:
        launcher.close()


def test_forked_runner_is_its_own_session_and_stop_ends_its_tree(
    tmp_path: Path, pids: PidTracker
) -> None:
    launcher = DirectLauncher(tmp_path / "state" / "records")
    try:
        req = _request(tmp_path, "j", str(tmp_path / "never"))
        proc = launcher.launch(req)
        pids.add(proc.pid)
        job_pid = int(wait_until(lambda: _runs(tmp_path, "j"), what="the job")[0].split()[0])
        pids.add(job_pid)
        assert os.getsid(proc.pid) == proc.pid and os.getpgid(job_pid) == proc.pid
        launcher.stop(proc.pid, proc.pid_started_at, req.session, grace_s=5)
        wait_until(lambda: (read_record(req.record_path) or {}).get("state") == "exited",
                   what="the exit record")  # fmt: skip
        assert read_record(req.record_path)["exit_code"] == 128 + signal.SIGTERM  # type: ignore[index]
    finally:
        launcher.close()


def test_child_that_is_never_let_go_runs_nothing(tmp_path: Path) -> None:
    """The host cannot deliver its answer (the launcher is gone): it never lets the child go,
    and the child exits having written nothing and run nothing."""
    req = _request(tmp_path, "j")
    spec_path = _write_spec(tmp_path, req)
    probe = textwrap.dedent(f"""\
        import os, sys
        sys.path.append({str(Path(__file__).resolve().parents[2])!r})
        from gpu_scheduler import runner_host
        r, w = os.pipe()
        os.close(r)  # nobody will read the answer
        answered = runner_host._fork_runner({_host_request(req, spec_path)!r}, w, ())
        pid, status = os.wait()
        print(answered, os.waitstatus_to_exitcode(status))
    """)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    assert done.stdout.split() == ["False", "0"], done.stderr
    assert _runs(tmp_path, "j") == [] and not req.record_path.exists()


def _tagged(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries this test's token (the host and its forks)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("GS_HOST_TEST") == token and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("timeout_s", [0.0, 0.0002, 0.001, 0.003, 0.01])
def test_an_answer_not_read_in_time_never_runs_the_job_twice(
    tmp_path: Path, pids: PidTracker, timeout_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the moment the launcher gives up on the host, either it gets a pid (the job
    runs once) or it gets none (the job never runs, so starting it otherwise is safe)."""
    req = _request(tmp_path, "j")
    spec_path = _write_spec(tmp_path, req)
    token = f"{os.getpid()}-{tmp_path.name}"
    monkeypatch.setenv("GS_HOST_TEST", token)
    host = RunnerHost(sys.executable)
    pids.add(host.proc.pid)
    try:
        wait_until(lambda: "runner_host" in " ".join(psutil.Process(host.proc.pid).cmdline()),
                   what="the host")  # fmt: skip
        try:
            pid: int | None = host.start(_host_request(req, spec_path), timeout_s=timeout_s)
        except HostGone:
            pid = None
        assert host.proc.poll() is not None or pid is not None
        if pid is not None:
            pids.add(pid)
            wait_until(lambda: (read_record(req.record_path) or {}).get("state") == "exited",
                       what="the exit record")  # fmt: skip
            assert len(_runs(tmp_path, "j")) == 1
        else:
            # a child it forked reads EOF instead of its go: wait until none is left at all
            for proc in _tagged(token):
                pids.add(proc.pid)
            wait_until(lambda: not _tagged(token), what="the host's children to end")
            assert _runs(tmp_path, "j") == [] and not req.record_path.exists()
    finally:
        host.close()
        host.release()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_killed_host_is_replaced_and_each_job_runs_once(tmp_path: Path, pids: PidTracker) -> None:
    launcher = DirectLauncher(tmp_path / "state" / "records")
    try:
        first = launcher.launch(_request(tmp_path, "a"))
        pids.add(first.pid)
        assert launcher._host is not None
        old = launcher._host.proc
        old.kill()
        old.wait()
        second = launcher.launch(_request(tmp_path, "b"))
        pids.add(second.pid)
        assert launcher._host is not None and launcher._host.proc.pid != old.pid
        wait_until(lambda: _runs(tmp_path, "b"), what="job b")
        # a: killed right after it answered, the host may not have let a's runner go yet; then
        # that runner exits having run nothing and without a record (the daemon requeues it).
        # Either way a ran at most once.
        wait_until(lambda: _runs(tmp_path, "a") or _gone(first.pid),
                   what="job a run, or its runner gone")  # fmt: skip
        assert len(_runs(tmp_path, "a")) <= 1 and len(_runs(tmp_path, "b")) == 1
    finally:
        launcher.close()


def test_host_that_cannot_start_falls_back_to_a_plain_runner(
    tmp_path: Path, pids: PidTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = DirectLauncher(tmp_path / "state" / "records")

    def broken(_python: str) -> RunnerHost:
        raise OSError("no host today")

    monkeypatch.setattr("gpu_scheduler.adapters.launchers.RunnerHost", broken)
    try:
        req = _request(tmp_path, "j", str(tmp_path / "go"))
        proc = launcher.launch(req)
        pids.add(proc.pid)
        assert proc.pid in launcher._children and launcher._host is None
        (tmp_path / "go").touch()
        wait_until(lambda: (read_record(req.record_path) or {}).get("state") == "exited",
                   what="the exit record")  # fmt: skip
        assert len(_runs(tmp_path, "j")) == 1
    finally:
        launcher.close()


# ----------------------------------------------------------------------------- recovery


def _in_flight(job_id: str) -> Scheduler:
    """A restored scheduler whose one job is running attempt 1, its runner not known yet."""
    sched = Scheduler(Policy(stop_grace_s=5.0), range(2))
    sched.add(JobSpec(job_id=job_id, source="jobs.txt", line_no=1, text=job_id, priority=0,
                      script="job.py", share=1000), 1000, NOW)  # fmt: skip
    gpus = [GpuSnapshot(i, memory_total_mib=81920, processes=()) for i in range(2)]
    sched.schedule(gpus, NOW)
    assert sched.running_ids == {job_id}
    after = Scheduler(Policy(stop_grace_s=5.0), range(2))
    after.restore(sched.jobs.values(), (), sched.next_seq)
    return after


def test_forked_runner_still_opening_its_spec_is_adopted_by_its_record(
    tmp_path: Path, pids: PidTracker
) -> None:
    """A forked runner's command line is the host's: recovery finds it by the ``starting``
    record it writes before it reads its spec (here a FIFO nobody writes: it blocks)."""
    req = _request(tmp_path, "j")
    spec_path = tmp_path / "state" / "records" / "j.1.spec.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    req.log_path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(spec_path)
    host = RunnerHost(sys.executable)
    pids.add(host.proc.pid)
    try:
        pid = host.start(_host_request(req, spec_path))
        pids.add(pid)
        wait_until(lambda: read_record(req.record_path), what="the starting record")
        launcher = DirectLauncher(tmp_path / "state" / "records", warm=False)
        try:
            sched = _in_flight("j")
            paths = DaemonPaths(tmp_path / "state" / "state.json", tmp_path / "logs")
            facts = gather_facts(sched, paths, launcher, settle_s=5)
            assert facts["j"].pid == pid and facts["j"].alive
            [notice] = reconcile(sched, facts, NOW)
            assert notice.event == "adopted"
        finally:
            launcher.close()
    finally:
        os.kill(pid, signal.SIGKILL)
        host.close()
        host.release()


def test_forked_runner_whose_spec_was_fenced_runs_nothing_and_is_requeued(
    tmp_path: Path, pids: PidTracker
) -> None:
    req = _request(tmp_path, "j")
    spec_path = tmp_path / "state" / "records" / "j.1.spec.json"  # fenced: not there
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    req.log_path.parent.mkdir(parents=True, exist_ok=True)
    host = RunnerHost(sys.executable)
    pids.add(host.proc.pid)
    try:
        pid = host.start(_host_request(req, spec_path))
        wait_until(lambda: not psutil.pid_exists(pid), what="the runner to give up")
        assert (read_record(req.record_path) or {}).get("state") == "starting"
        launcher = DirectLauncher(tmp_path / "state" / "records", warm=False)
        try:
            sched = _in_flight("j")
            paths = DaemonPaths(tmp_path / "state" / "state.json", tmp_path / "logs")
            facts = gather_facts(sched, paths, launcher, settle_s=5)
            assert facts["j"] == RunFacts(pid=pid, pid_started_at=facts["j"].pid_started_at)
            [notice] = reconcile(sched, facts, NOW)
            assert notice.event == "requeued"
            assert _runs(tmp_path, "j") == []
        finally:
            launcher.close()
    finally:
        host.close()
        host.release()


# ----------------------------------------------------------------------------- the daemon


def _daemon(tmp_path: Path, launcher: DirectLauncher) -> Daemon:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    (tmp_path / "jobs.txt").write_text(
        f"0,{script},,{tmp_path}/runs-x.txt {tmp_path}/go,gpus=1\n"
    )
    (tmp_path / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
    settings = settings_from_dict({
        "gpu": {"provider": "simulated", "simulated": {"count": 2}, "monitor_interval_s": 0.5},
        "files": {"jobs_file": str(tmp_path / "jobs.txt"),
                  "llm_config_file": str(tmp_path / "llm.json"),
                  "state_file": str(tmp_path / "state" / "state.json"),
                  "log_dir": str(tmp_path / "logs")},
        "execution": {"python": sys.executable},
    }, tmp_path / "config.json")  # fmt: skip
    return Daemon(settings, probe=FakeProbe.uniform(2, 81920), launcher=launcher,
                  clock=FakeClock(NOW), mode="direct", watch_files=False)  # fmt: skip


def test_daemon_killed_after_the_journal_before_the_full_save_adopts_the_real_runner(
    tmp_path: Path, pids: PidTracker
) -> None:
    """kill -9 between the launch's journal line and the full save that would show it: the
    state file still says pending, yet the restart adopts the runner and the job runs once."""
    first_launcher = DirectLauncher(tmp_path / "state" / "records")
    first = _daemon(tmp_path, first_launcher)
    first.start()
    first.step(0)
    [line] = wait_until(lambda: _runs(tmp_path, "x"), what="the job to start")
    pids.add(int(line.split()[0]))
    first._launches.shutdown(wait=True)  # then it dies: no save, nothing cleaned up
    first._control.stop()  # type: ignore[union-attr]
    first._exit_watcher.close()
    first._stops.shutdown()
    first_launcher.close()
    saved = first.store.read_only_snapshot()
    assert saved is not None and [j.state for j in saved.jobs] == ["pending"]
    second_launcher = DirectLauncher(tmp_path / "state" / "records")
    second = _daemon(tmp_path, second_launcher)
    try:
        second.start()
        [job] = second.scheduler.jobs.values()
        assert isinstance(job.status, Running) and job.status.pid is not None
        pids.add(job.status.pid)
        (tmp_path / "go").touch()
        wait_until(lambda: second.step(0.05) or second.scheduler.jobs[job.job_id].state
                   == "completed", timeout=20, what="the adopted job to complete")  # fmt: skip
        assert len(_runs(tmp_path, "x")) == 1
    finally:
        second.stopping = True
        second.close()
        second_launcher.close()
