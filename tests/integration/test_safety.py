"""Issue 7, safety, end to end with the real daemon, real processes and simulated GPUs: allowed
script paths, hostile names, the per-job memory limit, GPU memory overruns, CUDA OOM requeues
and GPU holds, the control socket under garbage, insecure file modes, and queue limits."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from gpu_scheduler.core.model import Finished, Job
from tests.helpers import wait_until
from tests.integration.harness import JOB_SCRIPT, DaemonHarness, alive

pytestmark = pytest.mark.slow

SAFE = re.compile(r"[A-Za-z0-9_.-]+")
MakeDaemon = Callable[..., DaemonHarness]


def observed(daemon: DaemonHarness) -> dict[str, Any]:
    state = daemon.state()
    return dict(state.observed) if state else {}


def events(daemon: DaemonHarness, name: str) -> list[dict[str, Any]]:
    out = []
    for line in daemon.scheduler_log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == name:
            out.append(entry)
    return out


def wait_ticks(daemon: DaemonHarness, ticks: int = 3) -> None:
    """Let the daemon's monitor run ``ticks`` more times (its heartbeat shows each save)."""
    state = daemon.state()
    assert state is not None
    since = state.daemon["heartbeat_at"]
    interval = daemon.config["gpu"]["monitor_interval_s"]

    def later() -> bool:
        now = daemon.state()
        return now is not None and now.daemon["heartbeat_at"] >= since + ticks * interval

    wait_until(later, timeout=10, interval=0.05, what=f"{ticks} monitor ticks")


def reason(job: Job) -> str:
    assert isinstance(job.status, Finished)
    return getattr(job.status.outcome, "reason", "")


# =========================================================================== paths and names


def test_scripts_outside_the_allowed_folder_and_hostile_names_are_refused(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon(mode="screen")
    approved = daemon.root / "approved"
    approved.mkdir()
    (approved / "job.py").write_text(JOB_SCRIPT)
    (approved / "a b;$(id).py").write_text(JOB_SCRIPT)
    (daemon.root / "outside.py").write_text(JOB_SCRIPT)
    os.symlink(daemon.root / "outside.py", approved / "link.py")
    daemon.write_config(security={"allowed_script_paths": [str(approved)]})
    out = f"--out {daemon.out_file}"
    daemon.jobs_file.write_text("\n".join([
        f"0,{approved}/job.py,,{out} --tag ok",
        f"0,{approved}/../outside.py,,{out} --tag dotdot",
        f"0,{approved}/link.py,,{out} --tag link",
        f"0,{approved}/job.py,,{out} --tag badname,name=x;reboot",
        f"0,{approved}/job.py,my env,{out} --tag badenv",
        f"0,{approved}/job.py,$(touch {daemon.root}/pwned),{out} --tag subst",
        f'0,"{approved}/a b;$(id).py",,{out} --tag meta',
    ]) + "\n")
    daemon.start()
    daemon.wait_tag("ok", "completed")
    meta = daemon.wait_tag("meta", "completed")
    errors = {e["line_no"]: e["message"] for e in observed(daemon)["errors"]}
    assert errors[2] == f"not under an allowed path: {daemon.root}/outside.py"
    assert errors[3] == f"not under an allowed path: {daemon.root}/outside.py"
    assert "name" in errors[4] and "env" in errors[5] and "env" in errors[6]
    assert sorted(errors) == [2, 3, 4, 5, 6]
    assert {r["rest"][-1] for r in daemon.records()} == {"ok", "meta"}
    assert not (daemon.root / "pwned").exists()
    (launched,) = [e for e in events(daemon, "launched") if e["job_id"] == meta.job_id]
    assert SAFE.fullmatch(launched["session"]), launched["session"]
    assert launched["session"].endswith(f"_a-b-id_{meta.job_id}")
    assert daemon.stop() == 0


# =========================================================================== host memory limit

HOG = """\
import json, os, sys, time
mb = int(sys.argv[sys.argv.index("--mb") + 1])
until = sys.argv[sys.argv.index("--until") + 1]
# record first: the limit may stop this process while it is still allocating
with open(sys.argv[sys.argv.index("--out") + 1], "a") as fh:
    fh.write(json.dumps({"pid": os.getpid(), "rest": sys.argv[1:], "mb": mb}) + "\\n")
block = bytearray(b"x") * (mb * 2**20)
deadline = time.time() + 30
while time.time() < deadline and not os.path.exists(until):
    time.sleep(0.02)
"""


@pytest.mark.parametrize("mode", ["screen", "direct"])
def test_a_job_over_its_memory_limit_is_stopped_and_one_under_it_is_not(
    make_daemon: MakeDaemon, mode: str
) -> None:
    daemon = make_daemon(mode=mode)
    hog = daemon.root / "hog.py"
    hog.write_text(HOG)
    daemon.write_config(security={"max_memory_per_job_gb": 0.2, "enable_resource_limits": True},
                        scheduler={"graceful_shutdown_timeout_s": 2})
    done = daemon.root / "done"
    daemon.start()
    line = f"0,{hog},,--out {daemon.out_file} --until {done} --tag {{}} --mb {{}},gpus=0.5"
    daemon.append(line.format("big", 300), line.format("small", 20))
    big = daemon.wait_tag("big", "failed", timeout=20)
    assert big.status.outcome.kind == "killed"  # type: ignore[union-attr]
    assert re.fullmatch(r"memory limit exceeded \(0\.\d\d GiB > 0\.20 GiB\)", reason(big)), reason(big)
    (big_record,) = [r for r in daemon.records() if "big" in r["rest"]]
    wait_until(lambda: not alive(big_record["pid"]), timeout=10, what="the hog to be gone")
    daemon.wait_tag("small", "running")
    wait_ticks(daemon, 2)
    assert daemon.job_with("small").state == "running"  # type: ignore[union-attr]
    done.touch()
    daemon.wait_tag("small", "completed")
    assert [e["job_id"] for e in events(daemon, "limit_exceeded")] == [big.job_id]
    assert daemon.stop() == 0


# =========================================================================== GPU memory overrun


@pytest.mark.parametrize("action", ["warn", "kill"])
def test_gpu_memory_overrun_is_reported_and_in_kill_mode_stopped(
    make_daemon: MakeDaemon, action: str
) -> None:
    daemon = make_daemon(mode="direct" if action == "warn" else "screen")
    daemon.write_config(gpu={"memory_overrun": action})
    done = daemon.root / "done"
    daemon.start()
    daemon.append(
        daemon.job_line(f"--tag over --gpu-mib 50000 --until-file {done}", sleep=30,
                        options="0 gpus=0.5"),
        daemon.job_line(f"--tag within --gpu-mib 30000 --until-file {done}", sleep=30,
                        options="1 gpus=0.5"),
    )
    over = daemon.wait_tag("over", "running")
    within = daemon.wait_tag("within", "running")
    expected = "uses 48.8 GiB of GPU 0, share 0.5 = 40.0 GiB"
    if action == "kill":
        over = daemon.wait_tag("over", "failed")
        assert over.status.outcome.kind == "killed"  # type: ignore[union-attr]
        assert reason(over) == f"GPU memory overrun ({expected})"
    else:
        wait_until(lambda: observed(daemon).get("overruns", {}).get(over.job_id) == expected,
                   timeout=10, what="the overrun in status")
        wait_ticks(daemon, 3)
        assert daemon.job_with("over").state == "running"  # type: ignore[union-attr]
        assert observed(daemon)["overruns"] == {over.job_id: expected}
    logged = events(daemon, "gpu_memory_overrun")
    assert [(e["job_id"], expected in e["message"]) for e in logged] == [(over.job_id, True)]
    assert daemon.job_with("within").state == "running"  # type: ignore[union-attr]
    done.touch()
    daemon.wait_tag("within", "completed")
    if action == "warn":
        daemon.wait_tag("over", "completed")
        wait_until(lambda: observed(daemon).get("overruns") == {}, timeout=10,
                   what="the overrun to leave status")
    assert within.job_id not in observed(daemon).get("overruns", {})
    assert daemon.stop() == 0


# =========================================================================== CUDA out of memory

OOM_JOB = """\
import json, os, sys
attempt = os.environ["GPU_SCHEDULER_ATTEMPT"]
with open(sys.argv[sys.argv.index("--out") + 1], "a") as fh:
    fh.write(json.dumps({"pid": os.getpid(), "rest": sys.argv[1:], "attempt": attempt}) + "\\n")
if attempt == "1":
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB", flush=True)
    sys.exit(1)
print("fits now", flush=True)
"""


def test_cuda_oom_is_requeued_and_its_gpu_held_until_the_memory_is_back(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon(mode="direct", gpus=2)
    oom = daemon.root / "oom.py"
    oom.write_text(OOM_JOB)
    done = daemon.root / "done"
    daemon.start()
    # a job of ours that uses more than its half of GPU 0 (60,000 of 81,920 MiB)
    daemon.append(daemon.job_line(f"--tag greedy --gpu-mib 60000 --until-file {done}", sleep=30,
                                  options="0 gpus=0.5"))
    daemon.wait_tag("greedy", "running")
    wait_until(lambda: (observed(daemon).get("gpus") or [{}])[0].get("memory_used_mib") == 60000,
               timeout=10, what="the probe to see its memory")
    daemon.append(f"0,{oom},,--out {daemon.out_file} --tag victim,0 gpus=0.5")

    def held() -> Job | None:
        job = daemon.job_with("victim")
        seen = observed(daemon)
        if job is None or job.state != "pending" or not seen.get("oom_holds"):
            return None
        return job

    victim = wait_until(held, timeout=20, interval=0.05, what="the OOM job requeued, GPU 0 held")
    assert victim.status.reason == (  # type: ignore[union-attr]
        "CUDA out of memory on GPU 0 (exit 1); requeued (1 of 3)"
    )
    seen = observed(daemon)
    assert seen["oom_holds"] == {"0": 40960}
    assert seen["unusable"]["0"].startswith("CUDA OOM here; waiting for 40960 MiB to be free")
    assert "CUDA OOM here" in seen["waiting"][victim.job_id]
    (oom_event,) = events(daemon, "cuda_oom")
    assert "CUDA out of memory" in oom_event["message"]
    wait_ticks(daemon, 3)
    assert daemon.job_with("victim").state == "pending"  # type: ignore[union-attr]
    done.touch()  # the greedy job ends: its memory is freed, the hold ends, the job runs again
    victim = daemon.wait_tag("victim", "completed", timeout=20)
    assert [r["attempt"] for r in daemon.records_with("victim")] == ["1", "2"]
    assert victim.requeues == 1 and victim.state == "completed"
    assert observed(daemon).get("oom_holds") == {}
    assert daemon.stop() == 0


# =========================================================================== control + files


def test_garbage_on_the_control_socket_is_answered_and_the_daemon_goes_on(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon(mode="direct")
    daemon.jobs_file.chmod(0o664)  # group-writable: anyone in the group can run code as you
    daemon.start()
    # the warning is logged during start-up, maybe just after the socket answers: wait for it
    (warning,) = wait_until(lambda: events(daemon, "insecure_file"), timeout=10,
                            what="the insecure_file warning")
    assert warning["message"].startswith(f"{daemon.jobs_file} is writable by group")
    for garbage in (b"\xff\xfe\x00 garbage\n", b"[1, 2, 3]\n", b'{"cmd": 42}\n', b"{" * 5000 + b"\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(daemon.paths.control_socket))
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        answer = json.loads(reply)
        assert answer["ok"] is False and answer["error"], (garbage[:20], answer)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # connect and hang up
        sock.connect(str(daemon.paths.control_socket))
    assert daemon.proc is not None and daemon.proc.poll() is None
    result = daemon.cli("pause-gpu", "0")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: (s := daemon.state()) and 0 in s.paused, timeout=10, what="GPU 0 paused")
    assert daemon.stop() == 0


# =========================================================================== queue limits


def test_queue_and_concurrency_limits_hold_lines_back_without_losing_any(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon(mode="direct")
    daemon.write_config(jobs={"queue_size_limit": 2, "max_concurrent_jobs": 1})
    daemon.start()
    tags = [f"q{n}" for n in range(6)]
    daemon.append(*(daemon.job_line(f"--tag {t}", sleep=0.4, options="gpus=0.25") for t in tags))
    wait_until(lambda: observed(daemon).get("backlog", 0) > 0, timeout=10, what="a backlog")
    wait_until(
        lambda: "max_concurrent_jobs (1) reached; waits for a job to end"
        in observed(daemon).get("waiting", {}).values(),
        timeout=10, what="the max_concurrent_jobs reason")
    jobs = daemon.wait_states(6, "completed", timeout=40)
    runs = sorted((j.status for j in jobs.values()), key=lambda s: s.started_at)  # type: ignore[union-attr]
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert later.started_at >= earlier.finished_at  # type: ignore[union-attr]
    assert [r["rest"][-1] for r in daemon.records()] == tags  # each once, in file order
    (full,) = events(daemon, "queue_full")
    assert re.fullmatch(r"queue_full : queue full \(limit 2\): [1-4] lines? wait in the jobs file",
                        full["message"]), full["message"]
    assert observed(daemon)["backlog"] == 0
    assert len(daemon.jobs_file.read_text().splitlines()) == 6
    assert daemon.stop() == 0
