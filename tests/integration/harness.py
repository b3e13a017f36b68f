"""A real daemon in a temp folder: config, jobs file, llm_config, state, logs, private SCREENDIR.

The daemon runs as a real subprocess (`python -m gpu_scheduler start`); tests edit the real jobs
file, read the real state file, call the real CLI. Teardown ends the daemon, then every runner and
job process its records name (by pid and start time), and the screen_dir fixture quits every
session in the private SCREENDIR by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from gpu_scheduler.adapters.control import is_daemon_listening
from gpu_scheduler.adapters.store import SavedState, StateStore
from gpu_scheduler.core.model import Job
from gpu_scheduler.paths import DaemonPaths
from tests.helpers import wait_until

LLM_CONFIG = {
    "default_requirement": 1.0,
    "models": {"small-model": 0.5, "tiny-model": 0.25, "big-model": 2.0, "whole-model": 1.0},
}

# A job script for tests: records what it saw, optionally sleeps, spawns a child, exits with a code.
JOB_SCRIPT = textwrap.dedent(
    """\
    import argparse, json, os, subprocess, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--exit", type=int, default=0)
    p.add_argument("--child-sleep", type=float, default=0.0)
    p.add_argument("--llm", default="")
    p.add_argument("--model", default="")
    p.add_argument("--until-file", default="")
    p.add_argument("--gpu-mib", type=int, default=0)  # simulated GPU memory, on each of its GPUs
    args, rest = p.parse_known_args()
    if args.gpu_mib:  # report it the way gpu_simulated reads it: procs/<pid>.json, atomically
        procs = os.path.join(os.environ["GPU_SCHEDULER_SIMULATED_DIR"], "procs")
        mine = [int(g) for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",")]
        tmp = os.path.join(procs, f".{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump({"gpus": mine, "used_mib": args.gpu_mib}, fh)
        os.replace(tmp, os.path.join(procs, f"{os.getpid()}.json"))
    child = None
    if args.child_sleep:
        child = subprocess.Popen(["sleep", str(args.child_sleep)])
    record = {
        "job_id": os.environ.get("GPU_SCHEDULER_JOB_ID"),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "order": os.environ.get("CUDA_DEVICE_ORDER"),
        "share": os.environ.get("GPU_SCHEDULER_GPU_SHARE"),
        "attempt": os.environ.get("GPU_SCHEDULER_ATTEMPT"),
        "preempted": os.environ.get("GPU_SCHEDULER_PREEMPTED"),
        "argv": sys.argv[1:], "rest": rest, "pid": os.getpid(),
        "child_pid": child.pid if child else None, "tty": sys.stdout.isatty(),
        "started": time.time(),
    }
    with open(args.out, "a") as fh:
        fh.write(json.dumps(record) + "\\n")
    print("job running", record["job_id"], flush=True)
    deadline = time.time() + args.sleep
    while time.time() < deadline:
        if args.until_file and os.path.exists(args.until_file):
            break
        time.sleep(0.02)
    sys.exit(args.exit)
    """
)


class DaemonHarness:
    def __init__(self, root: Path, screen_dir: Path, mode: str = "screen", gpus: int = 4) -> None:
        self.root = root
        self.screen_dir = screen_dir
        self.mode = mode
        self.gpus = gpus
        self.config_path = root / "config.json"
        self.jobs_file = root / "jobs.txt"
        self.llm_file = root / "llm_config.json"
        self.out_file = root / "out.jsonl"
        self.job_script = root / "job.py"
        self.sim_dir = root / "sim"
        self.state_file = root / "state" / "state.json"
        self.paths = DaemonPaths(self.state_file, root / "logs")
        self.proc: subprocess.Popen[bytes] | None = None
        self._daemons: list[psutil.Process] = []
        self.config: dict[str, Any] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.job_script.write_text(JOB_SCRIPT)
        self.llm_file.write_text(json.dumps(LLM_CONFIG))
        self.jobs_file.write_text("")
        self.write_config()

    # ------------------------------------------------------------------ files

    def write_config(self, **sections: dict[str, Any]) -> None:
        config: dict[str, Any] = {
            "scheduler": {"graceful_shutdown_timeout_s": 3},
            "gpu": {
                "provider": "simulated",
                "simulated": {"count": self.gpus, "memory_mb": 81920, "state_dir": str(self.sim_dir)},
                "monitor_interval_s": 0.5,
            },
            "jobs": {"assignment_retry_wait_s": 0.2},
            "files": {
                "jobs_file": str(self.jobs_file),
                "llm_config_file": str(self.llm_file),
                "state_file": str(self.state_file),
                "log_dir": str(self.root / "logs"),
                "log_file": str(self.root / "scheduler.log"),
            },
            "logging": {"level": "DEBUG", "console": False},
            "execution": {"mode": self.mode, "screen_dir": str(self.screen_dir),
                          "python": sys.executable},
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        self.config = config
        self.config_path.write_text(json.dumps(config, indent=1))

    def job_line(self, args: str = "", priority: int = 0, options: str = "", *,
                 sleep: float = 0.0, exit_code: int = 0, env: str = "") -> str:
        """A jobs.txt line running the test job script (records to out.jsonl)."""
        argv = f"--out {self.out_file} --sleep {sleep} --exit {exit_code} {args}".strip()
        line = f"{priority},{self.job_script},{env},{argv}"
        if options:
            line += f",{options}"
        return line

    def append(self, *lines: str) -> None:
        with open(self.jobs_file, "a") as fh:
            for line in lines:
                fh.write(line + "\n")

    def replace_jobs(self, *lines: str, newline: bool = True) -> None:
        """Save jobs.txt the way vim does: write a new file beside it, rename it over the old."""
        text = "\n".join(lines) + ("\n" if newline and lines else "")
        self._replace(self.jobs_file, text)

    def replace_llm(self, models: dict[str, float], default: float = 1.0) -> None:
        """Save llm_config.json the way an editor does (new file renamed over the old one)."""
        self._replace(self.llm_file, json.dumps({"default_requirement": default,
                                                 "models": models}))

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.swp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def echo_append(self, line: str) -> None:
        """Append like a shell user does: ``echo 'LINE' >> jobs.txt`` (line without quotes)."""
        assert "'" not in line
        subprocess.run(["sh", "-c", f"echo '{line}' >> {self.jobs_file}"], check=True)

    def write_raw(self, text: str) -> None:
        """Append raw text to jobs.txt (no newline added): a half-written line."""
        with open(self.jobs_file, "a") as fh:
            fh.write(text)

    def job_with(self, tag: str, jobs: dict[str, Job] | None = None) -> Job | None:
        """The job whose arguments hold ``tag`` (tests mark lines with ``--tag NAME``)."""
        jobs = self.jobs() if jobs is None else jobs
        hits = [j for j in jobs.values() if tag in j.spec.args]
        assert len(hits) <= 1, f"{len(hits)} jobs carry {tag}"
        return hits[0] if hits else None

    def wait_tag(self, tag: str, state: str, timeout: float = 20) -> Job:
        """Wait until the job tagged ``tag`` is in ``state`` (running: with its pid known)."""

        def ready() -> Job | None:
            job = self.job_with(tag)
            if job is None or job.state != state:
                return None
            if state == "running" and getattr(job.status, "pid", None) is None:
                return None
            return job

        return wait_until(ready, timeout=timeout, interval=0.05, what=f"job {tag} {state}")

    def records_with(self, tag: str) -> list[dict[str, Any]]:
        """What the job processes of the line tagged ``tag`` recorded (one per run)."""
        return [r for r in self.records() if tag in r["rest"]]

    def overcommit(self, jobs: dict[str, Job] | None = None) -> dict[int, int]:
        """Per-GPU milli-GPU held by running jobs in the saved state; fails above one GPU."""
        jobs = self.jobs() if jobs is None else jobs
        used: dict[int, int] = {}
        for job in jobs.values():
            if job.state == "running" and not job.status.suspended:  # type: ignore[union-attr]
                for gpu in job.status.gpus:  # type: ignore[union-attr]
                    used[gpu] = used.get(gpu, 0) + job.status.share_per_gpu  # type: ignore[union-attr]
        assert all(v <= 1000 for v in used.values()), f"over-committed GPUs: {used}"
        return used

    def scheduler_log(self) -> str:
        path = self.root / "scheduler.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """What the job processes recorded, in the order they started."""
        if not self.out_file.exists():
            return []
        return [json.loads(line) for line in self.out_file.read_text().splitlines() if line]

    def job_sessions(self) -> set[str]:
        """The screen sessions in the daemon's SCREENDIR, less the running daemon's own warm
        windows (waiting for its next job). Any other session -- a job's, or a warm window
        of a daemon that is gone -- is listed."""
        from gpu_scheduler.adapters.screen import ScreenSessions
        from gpu_scheduler.adapters.screen_warm import WARM_NAME

        own = f"{WARM_NAME}-{self.proc.pid}-" if self.proc is not None else None
        names = ScreenSessions(self.screen_dir).list()
        return {n for n in names if own is None or not n.startswith(own)}

    # ------------------------------------------------------------------ daemon

    def start(self, *args: str, wait: bool = True) -> subprocess.Popen[bytes]:
        log = open(self.root / "daemon.out", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpu_scheduler", "start", "--config", str(self.config_path),
             *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )
        log.close()
        with contextlib.suppress(psutil.Error):
            self._daemons.append(psutil.Process(self.proc.pid))
        if wait:
            wait_until(lambda: self.listening() or self.proc.poll() is not None, timeout=20,
                       what="the daemon's control socket")
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited at start: {self.daemon_output()}")
        return self.proc

    def listening(self) -> bool:
        return is_daemon_listening(self.paths.control_socket)

    def daemon_output(self) -> str:
        path = self.root / "daemon.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gpu_scheduler", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    # ------------------------------------------------------------------ state

    def state(self) -> SavedState | None:
        return StateStore(self.state_file).read_only_snapshot()

    def jobs(self) -> dict[str, Job]:
        state = self.state()
        return {j.job_id: j for j in state.jobs} if state else {}

    def wait_jobs(self, predicate: Callable[[dict[str, Job]], Any], timeout: float = 20,
                  what: str = "") -> Any:
        return wait_until(lambda: predicate(self.jobs()), timeout=timeout, interval=0.05,
                          what=what or "job states")

    def wait_states(self, count: int, state: str, timeout: float = 20) -> dict[str, Job]:
        return self.wait_jobs(
            lambda jobs: jobs if sum(j.state == state for j in jobs.values()) >= count else None,
            timeout, f"{count} jobs {state}")

    # ------------------------------------------------------------------ clean-up

    def recorded_pids(self) -> list[tuple[int, float | None]]:
        """Every runner and job pid the runners' records name (with start times when known)."""
        found: list[tuple[int, float | None]] = []
        if self.paths.run_dir.exists():
            for path in self.paths.run_dir.glob("*.json"):
                if path.name.endswith(".spec.json"):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    rec = json.loads(path.read_text())
                    if rec.get("runner_pid"):
                        found.append((int(rec["runner_pid"]), rec.get("runner_started_at")))
                    if rec.get("job_pid"):
                        found.append((int(rec["job_pid"]), None))
        for rec in self.records():
            for key in ("pid", "child_pid"):
                if rec.get(key):
                    found.append((int(rec[key]), None))
        return found

    def cleanup(self) -> None:
        for daemon in self._daemons:
            with contextlib.suppress(psutil.Error):
                if daemon.is_running():
                    daemon.kill()
        for pid, started in self.recorded_pids():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if started is not None and abs(proc.create_time() - float(started)) > 0.1:
                    continue
                for member in [*proc.children(recursive=True), proc]:
                    with contextlib.suppress(psutil.Error):
                        member.kill()


def alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
