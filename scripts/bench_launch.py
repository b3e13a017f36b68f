"""How soon a saved line runs, and how many jobs a second the scheduler keeps up with, measured
against this machine's own floor (what the OS costs to start a process and see it exit).

    python scripts/bench_launch.py [--quick] [--trials N] [--jobs N] [--idle-s S]
                                   [--mode screen|direct|both] [--profile DIR] [--reload-only]

One run prints two markdown tables (paste them into the README) with the date, core count and
load average:

* floor: ``SCREENDIR=<private> screen -dmS NAME true`` from the call to the session's exit
  (sequential: latency; POOL threads at once: rate), and ``subprocess.run(["true"])`` likewise.
  "by hand" rows start the bench's job script the same way without the scheduler: the job's own
  start cost, which every edit-to-launch figure includes;
* edit-to-launch: a real daemon (``python -m gpu_scheduler start`` with simulated GPUs, a private
  SCREENDIR, no console log) sits idle; the bench appends one line to jobs.txt and takes the time
  the job's process wrote down with ``time.time()`` as its first act (and, shown in the row, the
  time its runner recorded having spawned it: the rest is the job's own interpreter start). Median and p99 over
  ``--trials`` trials (after one warm-up launch; each after the last job exited and the daemon
  went idle again; p99 of 50 trials is the slowest);
* throughput: ``--jobs`` lines of ``true`` at ``gpus=0.125`` on 8 simulated GPUs (64 slots),
  appended in one write; from the write to the last exit the runners recorded;
* the same two with 10,000 lines already completed (in jobs.txt, in the history and the state,
  written with the StateStore API, as a daemon that ran them would have left them);
* reload and pass cost in this process (no daemon): a one-line append to a file of 100 /
  10,000 / 100,000 pending lines, through JobsFileReader, JobSource, and the daemon's whole
  re-read (``JobSource.read_with_dependencies`` and ``Scheduler.sync``, as ``Daemon._read_jobs``;
  ``--reload-only`` runs this section alone); one ``Scheduler.schedule`` pass (every GPU
  paused: nothing placed; and placing 64 jobs); the write-ahead state save the daemon makes
  before each pass's launches (jobs unchanged since the last save);
* idle: daemon CPU over ``--idle-s`` seconds with ``--jobs`` pending jobs and every GPU paused
  (``gpu-scheduler pause-gpu all``), and its resident memory.

Every process and screen session the bench starts is ended by pid or session name, and its temp
folder removed, in a ``finally`` (Ctrl-C included). ``--profile DIR`` attaches py-spy to each
daemon and runs the reload section under pyinstrument, when those are installed (neither is
needed otherwise). Nothing here is a test: tests never assert on these figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import ChainMap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from gpu_scheduler.adapters.control import is_daemon_listening  # noqa: E402
from gpu_scheduler.adapters.jobsfile import JobsFileReader  # noqa: E402
from gpu_scheduler.adapters.store import SavedState, StateStore  # noqa: E402
from gpu_scheduler.core.model import Finished, GpuSnapshot, Job, JobSpec, Succeeded  # noqa: E402
from gpu_scheduler.core.scheduler import Policy, Scheduler  # noqa: E402
from gpu_scheduler.jobsource import JobSource  # noqa: E402
from gpu_scheduler.paths import DaemonPaths  # noqa: E402

T = TypeVar("T")
GPUS = 8  # simulated GPUs; at gpus=0.125 that is 64 slots
SHARE = "0.125"
POOL = 4  # concurrent starts for the floor's rate (on 2 cores more do not help)
IDLE_GAP_S = 0.3  # between edit-to-launch trials: the daemon's coalesced save is done (0.2 s)
JOB_SCRIPT = """\
#!{python} -IS
import time
t = time.time()
import os, sys
out = sys.argv[sys.argv.index("--out") + 1]
with open(out + ".tmp", "w") as f:
    f.write(f"{{t!r}} {{os.environ.get('GPU_SCHEDULER_JOB_ID', '')}} {{os.getpid()}}\\n")
os.replace(out + ".tmp", out)
"""


# ----------------------------------------------------------------------------- small helpers


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, poll: float = 0.002
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def py_spy() -> str | None:
    """py-spy on PATH or beside this interpreter (``.venv/bin``)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 50 values is the 50th smallest: the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


@dataclass
class Cleanup:
    """Everything started, ended in reverse by pid (with its create time) or session name."""

    processes: list[psutil.Process] = field(default_factory=list)
    screen_dirs: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    hooks: list[Callable[[], None]] = field(default_factory=list)

    def process(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.processes.append(psutil.Process(pid))

    def close(self) -> None:
        for hook in reversed(self.hooks):
            with contextlib.suppress(Exception):
                hook()
        for proc in reversed(self.processes):  # psutil checks pid *and* create time
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()
                    proc.wait(5)
        for folder in self.screen_dirs:
            quit_sessions(folder)
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


def quit_sessions(screen_dir: Path) -> None:
    """End every session in our private SCREENDIR by its full ``PID.NAME``."""
    env = {**os.environ, "SCREENDIR": str(screen_dir)}
    with contextlib.suppress(OSError):
        for entry in os.listdir(screen_dir):
            pid, _, name = entry.partition(".")
            if pid.isdigit() and name:
                subprocess.run(
                    ["screen", "-S", entry, "-X", "quit"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=10,
                )
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(int(pid))
                    if proc.name().lower() == "screen":
                        proc.kill()


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def read_job_record(path: Path) -> tuple[float, str, int] | None:
    """What the job script wrote: its start time, job id and pid."""
    try:
        started, job_id, pid = path.read_text().rstrip("\n").split(" ")
    except (OSError, ValueError):
        return None
    return float(started), job_id, int(pid)


# ----------------------------------------------------------------------------- the floor


@dataclass
class Row:
    what: str
    mode: str
    median_s: float | None = None
    p99_s: float | None = None
    rate: float | None = None
    vs_floor: str = ""
    target: str = ""
    met: str = ""


def screen_exit_s(screen_dir: Path, name: str, command: list[str]) -> float:
    """``screen -dmS NAME command`` from the call until the session has ended.

    ``-dmS`` returns once the session's socket ``PID.NAME`` exists (checked: never alive
    without it), so a missing socket right after means it has ended already; else a pidfd on
    the session's server says the moment it exits.
    """
    env = {**os.environ, "SCREENDIR": str(screen_dir)}
    t0 = time.perf_counter()
    subprocess.run(
        ["screen", "-dmS", name, *command], env=env, stdin=subprocess.DEVNULL, check=True
    )
    suffix = "." + name
    server = next((int(e.split(".")[0]) for e in os.listdir(screen_dir) if e.endswith(suffix)), 0)
    if server:
        with contextlib.suppress(ProcessLookupError):
            fd = os.pidfd_open(server)
            try:
                select.select([fd], [], [])
            finally:
                os.close(fd)
    return time.perf_counter() - t0


def direct_exit_s(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - t0


def rate_of(start_one: Callable[[int], object], total: int, pool: int) -> float:
    """Starts per second with ``pool`` starts in flight at any time."""
    counter = iter(range(total))
    lock = threading.Lock()
    stop = threading.Event()  # set on Ctrl-C: the workers finish the start they are in

    def worker() -> None:
        while not stop.is_set():
            with lock:
                n = next(counter, None)
            if n is None:
                return
            start_one(n)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(pool) as ex:
        futures = [ex.submit(worker) for _ in range(pool)]
        try:
            for future in futures:
                future.result()
        finally:
            stop.set()
    return total / (time.perf_counter() - t0)


def by_hand_s(job: Path, out: Path, screen_dir: Path | None) -> float:
    """The job script started without the scheduler: from the call to its own first line."""
    t0 = time.time()
    if screen_dir is None:
        proc = subprocess.Popen([str(job), "--out", str(out)])
    else:
        env = {**os.environ, "SCREENDIR": str(screen_dir)}
        subprocess.run(
            ["screen", "-dmS", out.name, str(job), "--out", str(out)],
            env=env,
            stdin=subprocess.DEVNULL,
            check=True,
        )
    started = wait_for(lambda: read_job_record(out), 30, f"{out.name} to start", 0.001)[0]
    if screen_dir is None:
        proc.wait()
    return started - t0


def measure_floor(
    root: Path, modes: list[str], trials: int, rate_n: int, job: Path, cleanup: Cleanup
) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    out = private_dir(root / "floor")
    if "screen" in modes:
        sd = private_dir(root / "screen-floor")
        cleanup.screen_dirs.append(sd)
        lat = [screen_exit_s(sd, f"f{i}", ["true"]) for i in range(trials)]
        rate = rate_of(lambda n: screen_exit_s(sd, f"r{n}", ["true"]), rate_n, POOL)
        rows["screen"] = Row(
            "floor: `screen -dmS NAME true`, call to exit",
            "screen",
            statistics.median(lat),
            pct(lat, 99),
            rate,
            "1",
            "",
            "",
        )
        hand = [by_hand_s(job, out / f"s{i}", sd) for i in range(trials)]
        rows["screen-hand"] = Row(
            "by hand: `screen -dmS NAME job`, call to the job's first line",
            "screen",
            statistics.median(hand),
            pct(hand, 99),
        )
    if "direct" in modes:
        true = shutil.which("true") or "/bin/true"
        lat = [direct_exit_s([true]) for _ in range(trials)]
        rate = rate_of(lambda n: direct_exit_s([true]), rate_n * 4, POOL)
        rows["direct"] = Row(
            'floor: `subprocess.run(["true"])`, call to exit',
            "direct",
            statistics.median(lat),
            pct(lat, 99),
            rate,
            "1",
            "",
            "",
        )
        hand = [by_hand_s(job, out / f"d{i}", None) for i in range(trials)]
        rows["direct-hand"] = Row(
            "by hand: `Popen([job])`, call to the job's first line",
            "direct",
            statistics.median(hand),
            pct(hand, 99),
        )
    return rows


# ----------------------------------------------------------------------------- a real daemon


class BenchDaemon:
    """``python -m gpu_scheduler start`` in its own folder, session and SCREENDIR."""

    def __init__(self, root: Path, mode: str, cleanup: Cleanup, profile: Path | None) -> None:
        self.root, self.mode, self.cleanup, self.profile = private_dir(root), mode, cleanup, profile
        self.screen_dir = private_dir(root / "s")
        cleanup.screen_dirs.append(self.screen_dir)
        # The layout of the shipped configs/: config files, jobs and run-time files in three
        # folders, so the daemon's own writes (log, state) do not wake its jobs-file watcher.
        configs, run = private_dir(root / "configs"), private_dir(root / "run")
        self.jobs_file = private_dir(root / "jobs") / "jobs.txt"
        self.llm_file = configs / "llm_config.json"
        self.state_file = run / "state.json"
        self.log_file = run / "scheduler.log"
        self.paths = DaemonPaths(self.state_file, run / "logs")
        self.config_path = configs / "config.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self._tree: list[psutil.Process] = []
        self.llm_file.write_text('{"default_requirement": 1.0, "models": {}}')
        self.jobs_file.touch()
        self.config_path.write_text(json.dumps({
            "gpu": {"provider": "simulated",
                    "simulated": {"count": GPUS, "memory_mb": 81920, "state_dir": str(run / "sim")}},
            "files": {"jobs_file": str(self.jobs_file), "llm_config_file": str(self.llm_file),
                      "state_file": str(self.state_file), "log_dir": str(self.paths.log_dir),
                      "log_file": str(self.log_file)},
            "logging": {"console": False},
            "execution": {"mode": mode, "screen_dir": str(self.screen_dir), "session_prefix": "bl"},
        }, indent=1))  # fmt: skip

    def start(self) -> float:
        """Start the daemon; seconds until its control socket answers."""
        t0 = time.perf_counter()
        with open(self.root / "daemon.out", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpu_scheduler", "start", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to pass on, in order
            )
        self.cleanup.process(self.proc.pid)
        self.cleanup.hooks.append(self.stop)
        wait_for(lambda: self.proc.poll() is not None or is_daemon_listening(self.paths.control_socket),
                 60, "the daemon's control socket", 0.01)  # fmt: skip
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the daemon exited at start: {(self.root / 'daemon.out').read_text()}"
            )
        started = time.perf_counter() - t0
        spy = py_spy()
        if self.profile is not None and spy is not None:
            svg = self.profile / f"{self.root.name}.svg"
            self.spy = subprocess.Popen(
                [spy, "record", "--nonblocking", "--rate", "250", "--pid", str(self.proc.pid),
                 "-o", str(svg)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)  # fmt: skip
            self.cleanup.process(self.spy.pid)
        return started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gpu_scheduler", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"gpu-scheduler {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def append(self, text: str) -> float:
        """Append ``text`` in one write(), so the daemon never reads half a line of it (it would
        hold that back until the file has been quiet for 0.3 s); the wall time just before."""
        data = text.encode()
        fd = os.open(self.jobs_file, os.O_WRONLY | os.O_APPEND)
        try:
            t0 = time.time()
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        return t0

    def head(self) -> dict[str, Any]:
        """The state file's header (everything but the jobs, which come last): cheap to poll
        while the daemon works, unlike the whole file (~0.6 KB per job)."""
        with contextlib.suppress(OSError, ValueError):
            with open(self.state_file, "rb") as f:
                data = f.read(1 << 20)
            end = data.find(b',"jobs":[')
            return json.loads(data[:end] + b"}") if end > 0 else {}  # type: ignore[no-any-return]
        return {}

    def waiting(self) -> int:
        """Pending jobs (and backlog lines) as of the last save."""
        seen = self.head().get("observed", {})
        return int(seen.get("pending", 0)) + int(seen.get("backlog", 0))

    def idle_since(self, t0: float) -> bool:
        """Saved after ``t0`` with nothing pending, running or in flight."""
        head = self.head()
        seen = head.get("observed", {})
        return (head.get("saved_at", 0) > t0 and self.waiting() == 0
                and not any(seen.get("used", {}).values()))  # fmt: skip

    def exit_record(self, job_id: str) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(self.paths.record_path(job_id, 1).read_text())
            if record.get("state") in ("exited", "launch_failed"):
                return record  # type: ignore[no-any-return]
        return None

    def exits_since(self, t0: float) -> list[dict[str, Any]]:
        found = []
        for path in self.paths.run_dir.glob("*.json"):
            if path.name.endswith(".spec.json"):
                continue
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text())
                if record.get("state") == "exited" and record.get("started_at", 0) >= t0:
                    found.append(record)
        return found

    def cpu_s(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        """SIGTERM (graceful: jobs keep running), then end the runners and jobs it left by pid."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            self._tree = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.spy is not None:
            try:
                self.spy.wait(15)  # py-spy writes its file once its target has exited
            except subprocess.TimeoutExpired:
                self.spy.send_signal(signal.SIGINT)
                self.spy.wait(15)
        for proc in self._tree + self._recorded():
            with contextlib.suppress(psutil.Error):
                for member in [*proc.children(recursive=True), proc]:
                    member.kill()
        quit_sessions(self.screen_dir)
        self.proc = None

    def _recorded(self) -> list[psutil.Process]:
        """Runners and jobs the runners' records name, when pid and start time still match."""
        found = []
        for path in self.paths.run_dir.glob("*.json") if self.paths.run_dir.exists() else ():
            record: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text())
            for pid_key, time_key, slack in (("runner_pid", "runner_started_at", 0.1),
                                             ("job_pid", "started_at", 1.5)):  # fmt: skip
                with contextlib.suppress(psutil.Error, KeyError, TypeError, ValueError):
                    proc = psutil.Process(int(record[pid_key]))
                    if abs(proc.create_time() - float(record[time_key])) < slack:
                        found.append(proc)
        return found


def edit_to_launch(daemon: BenchDaemon, job: Path, trials: int) -> tuple[list[float], list[float]]:
    """Append one line to the idle daemon's jobs file; until the job's first line ran, and
    until its runner had spawned it (the runner's record: the rest is the job's own start)."""
    out_dir = private_dir(daemon.root / "out")
    latencies, spawned = [], []
    for i in range(-1, trials):  # trial -1 warms the daemon up (first launch: lazy imports)
        out = out_dir / f"t{i}"
        t0 = daemon.append(f"0,{job},,--out {out},gpus={SHARE}\n")
        started, job_id, _ = wait_for(lambda: read_job_record(out), 60, "the job to start")  # noqa: B023
        record = wait_for(lambda: daemon.exit_record(job_id), 60, "the job to exit")  # noqa: B023
        if i >= 0:
            latencies.append(started - t0)
            spawned.append(float(record["started_at"]) - t0)
        time.sleep(IDLE_GAP_S)  # idle again: the exit is saved, nothing is due
    return latencies, spawned


def throughput(daemon: BenchDaemon, jobs: int, tag: str) -> tuple[float, float]:
    """``jobs`` lines of ``true`` in one write; (jobs/s to the last exit, daemon CPU ms/job)."""
    true = shutil.which("true") or "/bin/true"
    lines = "".join(f"0,{true},,--batch {tag} --n {n},gpus={SHARE}\n" for n in range(jobs))
    cpu0 = daemon.cpu_s()
    t0 = daemon.append(lines)
    exits: list[dict[str, Any]] = []

    def done() -> bool:  # every runner wrote its exit, and a later save shows an idle daemon
        if not daemon.idle_since(t0):
            return False
        exits[:] = daemon.exits_since(t0)
        last = max((float(r["finished_at"]) for r in exits), default=math.inf)
        return len(exits) >= jobs and daemon.idle_since(last)

    wait_for(done, 120 + jobs / 2, f"{jobs} jobs to finish", 0.25)
    cpu = daemon.cpu_s() - cpu0
    last = max(float(r["finished_at"]) for r in exits)
    return jobs / (last - t0), cpu * 1000 / jobs


def completed_history(daemon: BenchDaemon, count: int) -> None:
    """``count`` lines in jobs.txt that a daemon has already run: in the history file (all but
    the newest 200) and the state, with the ids the daemon will compute for those lines."""
    true = shutil.which("true") or "/bin/true"
    daemon.jobs_file.write_text(
        "".join(f"0,{true},,--old {n},gpus={SHARE}\n" for n in range(count))
    )
    source = JobSource(str(daemon.jobs_file), daemon.llm_file,
                       gpu_indices=range(GPUS), precision_unit=5)  # fmt: skip
    now = time.time() - count
    jobs = [
        Job(spec, share, Finished(now + n + 0.5, Succeeded(), now + n, (n % GPUS,)), seq=n,
            submitted_at=now + n, attempts=1)
        for n, (spec, share) in enumerate(source.read().jobs)
    ]  # fmt: skip
    store = StateStore(daemon.state_file)
    for lo in range(0, max(0, len(jobs) - 200), 10_000):
        store.append_history(jobs[lo : min(lo + 10_000, len(jobs) - 200)])
    store.save(SavedState(tuple(jobs[-200:]), next_seq=len(jobs), saved_at=time.time()))


def idle_cost(daemon: BenchDaemon, pending: int, idle_s: float) -> tuple[float, float, int]:
    """(% of one core, RSS MiB, threads) with ``pending`` jobs waiting on paused GPUs."""
    daemon.cli("pause-gpu", "all")
    true = shutil.which("true") or "/bin/true"
    daemon.append("".join(f"0,{true},,--idle {n},gpus={SHARE}\n" for n in range(pending)))
    wait_for(lambda: daemon.waiting() >= pending, 120, f"{pending} pending jobs", 0.1)
    time.sleep(1.0)  # the coalesced save after the burst
    proc = psutil.Process(daemon.pid)
    cpu0, t0 = daemon.cpu_s(), time.monotonic()
    time.sleep(idle_s)
    cpu, elapsed = daemon.cpu_s() - cpu0, time.monotonic() - t0
    return 100 * cpu / elapsed, proc.memory_info().rss / 2**20, proc.num_threads()


# ----------------------------------------------------------------------------- in process


@dataclass
class ReloadRow:
    pending: int
    cold_us_per_line: float
    reader_ms: float
    source_ms: float
    sync_ms: float
    blocked_ms: float
    placing_ms: float
    journal_ms: float  # the write-ahead: one fsynced journal line before a launch
    save_ms: float  # a full (coalesced) save of the state


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def reload_and_pass(root: Path, size: int, repeat: int) -> ReloadRow:
    """A one-line append to ``size`` pending lines, layer by layer, and one pass."""
    folder = private_dir(root / f"reload{size}")
    (folder / "job").write_text("")
    (folder / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
    path = folder / "jobs.txt"
    path.write_text("".join(f"0,job,,--out o/{n} --seed {n},gpus={SHARE}\n" for n in range(size)))
    _, cold = timed(JobsFileReader(path, gpu_count=GPUS).read)
    reader = JobsFileReader(path, gpu_count=GPUS)
    reader.read()
    source = JobSource(str(path), folder / "llm.json", gpu_indices=range(GPUS), precision_unit=5)
    source.reload_llm()
    scheduler = Scheduler(Policy(aging_interval_s=600.0), range(GPUS))
    scheduler.pause(range(GPUS))  # the pass below places nothing: every job stays pending

    def daemon_reread() -> None:  # what Daemon._read_jobs does after a change
        jobs = scheduler.jobs
        result = source.read_with_dependencies(
            known_names=lambda: {j.spec.name: j.job_id for j in jobs.values() if j.spec.name},
            known_ids=ChainMap[str, object](jobs, scheduler.archived),
        )
        scheduler.sync(result.jobs, 1.0, result.deps, unchanged=result.unchanged_jobs)

    daemon_reread()
    times: dict[str, list[float]] = {"reader": [], "source": [], "sync": []}
    for n in range(repeat):
        for key, fn in (("reader", reader.read), ("source", source.read), ("sync", daemon_reread)):
            with open(path, "a") as f:
                f.write(f"0,job,,--out o/new{key}{n},gpus={SHARE}\n")
            times[key].append(timed(fn)[1])
    snapshots = [GpuSnapshot(g, memory_total_mib=81920, processes=()) for g in range(GPUS)]
    blocked = [timed(lambda: scheduler.schedule(snapshots, 2.0))[1] for _ in range(repeat * 5)]
    store = StateStore(folder / "state.json")
    state = SavedState(tuple(scheduler.jobs.values()), next_seq=scheduler.next_seq)
    store.save(state)  # the first save encodes every job; later ones reuse unchanged jobs' JSON
    saves = [timed(lambda: store.save(state))[1] for _ in range(repeat)]
    one = state.jobs[:1]  # the write-ahead before a launch (Daemon: store.append_launches)
    journal = [timed(lambda: store.append_launches(one, state.next_seq))[1] for _ in range(repeat)]
    scheduler.resume(range(GPUS))
    placing = []
    for r in range(repeat):  # each pass fills the 64 slots; the queue is topped up to ``size``
        placing.append(timed(lambda: scheduler.schedule(snapshots, 3.0))[1])
        for k, job_id in enumerate(sorted(scheduler.running_ids)):
            scheduler.exited(job_id, 0, 3.0)
            spec = JobSpec(f"t{r:03d}{k:06d}", str(path), 0, "", 0, str(folder / "job"))
            scheduler.add(spec, 125, 3.0)
    return ReloadRow(size, cold / size * 1e6, *(statistics.median(times[k]) * 1000
                     for k in ("reader", "source", "sync")), statistics.median(blocked) * 1000,
                     statistics.median(placing) * 1000, statistics.median(journal) * 1000,
                     statistics.median(saves) * 1000)  # fmt: skip


@contextlib.contextmanager
def maybe_pyinstrument(profile: Path | None, name: str) -> Iterator[None]:
    profiler = None
    if profile is not None:
        try:
            from pyinstrument import Profiler
        except ImportError:
            print("(pyinstrument not installed: no profile of the reload section)", file=sys.stderr)
        else:
            profiler = Profiler()
            profiler.start()
    try:
        yield
    finally:
        if profiler is not None and profile is not None:
            profiler.stop()
            (profile / f"{name}.html").write_text(profiler.output_html())


# ----------------------------------------------------------------------------- report


def print_reloads(reloads: list[ReloadRow]) -> None:
    print(
        "\n| pending lines | cold read | append 1 line: JobsFileReader | + JobSource | "
        "+ deps and Scheduler.sync (the daemon's re-read) | blocked pass | placing pass "
        "(64 slots) | write-ahead (journal line) | full state save |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in reloads:
        print(
            f"| {r.pending:,} | {r.cold_us_per_line:.0f} µs/line | {r.reader_ms:.2f} ms | "
            f"{r.source_ms:.2f} ms | {r.sync_ms:.2f} ms | {r.blocked_ms:.3f} ms | "
            f"{r.placing_ms:.3f} ms | {r.journal_ms:.2f} ms | {r.save_ms:.1f} ms |"
        )
    small, big = reloads[0], reloads[-1]
    x = {k: getattr(big, k) / max(getattr(small, k), 1e-9)
         for k in ("reader_ms", "sync_ms", "blocked_ms", "placing_ms", "journal_ms", "save_ms")}  # fmt: skip
    flat = {k: "flat" if v <= 2 else "grows with the file" for k, v in x.items()}
    print(
        f"\n{big.pending:,} vs {small.pending:,} pending lines (target: a one-line append costs "
        f"what the appended bytes cost, a pass is flat): append through JobsFileReader "
        f"x{x['reader_ms']:.1f} ({flat['reader_ms']}), the daemon's whole re-read "
        f"x{x['sync_ms']:.0f} ({flat['sync_ms']}); blocked pass x{x['blocked_ms']:.1f} "
        f"({flat['blocked_ms']}), placing pass x{x['placing_ms']:.1f} ({flat['placing_ms']});"
        f" write-ahead before a launch x{x['journal_ms']:.1f} ({flat['journal_ms']}); a full"
        f" state save x{x['save_ms']:.0f} ({flat['save_ms']}: it holds every pending job; the"
        " daemon spaces them to take at most a tenth of its time, off the launch path)."
    )


def reload_only(argv: list[str] | None, sizes: list[int], repeat: int, profile: Path | None) -> int:
    """``--reload-only``: the reload and pass section alone, in a temp folder removed after."""
    machine = machine_line()
    root = Path(tempfile.mkdtemp(prefix="bl-", dir="/tmp"))
    try:
        if profile is not None:
            profile = private_dir(profile.resolve())
        with maybe_pyinstrument(profile, "reload"):
            reloads = [reload_and_pass(root, size, repeat) for size in sizes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = " ".join(["python scripts/bench_launch.py",
                        *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    print(f"\n### gpu_scheduler reload benchmark: {machine}\n\n`{command}`; median of {repeat}.")
    print_reloads(reloads)
    return 0


def machine_line() -> str:
    screen = "not installed"
    if shutil.which("screen"):
        done = subprocess.run(["screen", "--version"], capture_output=True, text=True, check=False)
        screen = " ".join(done.stdout.split()[2:3]) or "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
            f"({platform.processor() or platform.machine()}), load average at start {load}, "
            f"Python {platform.python_version()}, screen {screen}, "
            f"ulimit -n {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")  # fmt: skip


def print_rows(rows: list[Row]) -> None:
    print("| measurement | mode | median | p99 | rate | vs floor | target | met |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        cells = [
            r.what,
            r.mode,
            "" if r.median_s is None else ms(r.median_s),
            "" if r.p99_s is None else ms(r.p99_s),
            "" if r.rate is None else f"{r.rate:,.0f} jobs/s",
            r.vs_floor,
            r.target,
            r.met,
        ]
        print("| " + " | ".join(cells) + " |")


def latency_row(what: str, mode: str, lat: list[float], floor: Row, hand: Row) -> Row:
    """The ratio to the floor, and what the scheduler adds to starting the job by hand."""
    median, target = statistics.median(lat), 2 * (floor.median_s or 0) + 0.020
    return Row(
        what,
        mode,
        median,
        pct(lat, 99),
        None,
        f"{median / (floor.median_s or 1):.1f}x (by hand +{ms(median - (hand.median_s or 0))})",
        f"≤ 2×floor + 20 ms = {ms(target)}",
        "yes" if median <= target else "no",
    )


def rate_row(what: str, mode: str, rate: float, cpu_ms: float, floor: Row) -> Row:
    share = rate / (floor.rate or 1)
    return Row(
        f"{what} (daemon CPU {cpu_ms:.1f} ms/job)",
        mode,
        None,
        None,
        rate,
        f"{share:.0%}",
        "≥ 80% of the floor rate",
        "yes" if share >= 0.8 else "no",
    )


def run_modes(args: argparse.Namespace, root: Path, modes: list[str], cleanup: Cleanup,
              floor: dict[str, Row], job: Path) -> list[Row]:  # fmt: skip
    rows: list[Row] = []
    for mode in modes:
        base, hand = floor[mode], floor[f"{mode}-hand"]
        daemon = BenchDaemon(root / f"{mode[0]}e", mode, cleanup, args.profile)
        daemon.start()
        lat, spawned = edit_to_launch(daemon, job, args.trials)
        what = f"edit-to-launch, idle daemon (job spawned at {ms(statistics.median(spawned))})"
        rows.append(latency_row(what, mode, lat, base, hand))
        rate, cpu = throughput(daemon, args.jobs, "a")
        rows.append(rate_row(f"throughput, {args.jobs:,} jobs on 64 slots", mode, rate, cpu, base))
        daemon.stop()
        print(f"  {mode}: edit-to-launch and throughput done", file=sys.stderr, flush=True)

        daemon = BenchDaemon(root / f"{mode[0]}h", mode, cleanup, args.profile)
        completed_history(daemon, args.completed)
        up = daemon.start()
        lat, spawned = edit_to_launch(daemon, job, args.trials)
        done = f"{args.completed:,} completed"
        what = (f"edit-to-launch, {done} (daemon up in {ms(up)}; "
                f"job spawned at {ms(statistics.median(spawned))})")  # fmt: skip
        rows.append(latency_row(what, mode, lat, base, hand))
        rate, cpu = throughput(daemon, args.jobs, "b")
        rows.append(rate_row(f"throughput, {args.jobs:,} jobs, {done}", mode, rate, cpu, base))
        daemon.stop()
        print(f"  {mode}: with {done} done", file=sys.stderr, flush=True)
    return rows


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny sizes, 3 trials, 5 s idle (figures not to quote)",
    )
    parser.add_argument("--trials", type=int, help="edit-to-launch trials per case (default 50)")
    parser.add_argument(
        "--jobs", type=int, help="jobs per throughput batch and idle (default 1000)"
    )
    parser.add_argument("--idle-s", type=float, help="idle measurement seconds (default 60)")
    parser.add_argument("--mode", choices=("screen", "direct", "both"), default="both")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy flame graphs of each daemon, pyinstrument of the reload section",
    )
    parser.add_argument(
        "--reload-only",
        action="store_true",
        help="only the reload and pass section (no daemon, no screen; seconds, not minutes)",
    )
    args = parser.parse_args(argv)
    q = args.quick
    args.trials = args.trials if args.trials is not None else (3 if q else 50)
    args.jobs = args.jobs if args.jobs is not None else (20 if q else 1000)
    args.idle_s = args.idle_s if args.idle_s is not None else (5.0 if q else 60.0)
    args.completed = 300 if q else 10_000
    sizes = [100, 2_000] if q else [100, 10_000, 100_000]
    if min(args.trials, args.jobs) < 1 or args.idle_s < 0:
        parser.error("--trials and --jobs must be at least 1, --idle-s at least 0")
    if args.reload_only:
        return reload_only(argv, sizes, 3 if q else 7, args.profile)
    modes = ["screen", "direct"] if args.mode == "both" else [args.mode]
    if "screen" in modes and shutil.which("screen") is None:
        print("GNU screen is not installed: screen mode left out", file=sys.stderr)
        modes.remove("screen")
    if not modes:
        parser.error("nothing to measure without screen; use --mode direct")
    if args.profile is not None:
        args.profile = private_dir(args.profile.resolve())
        if py_spy() is None:
            print("(py-spy not installed: no daemon profiles)", file=sys.stderr)

    # A SIGTERM ends the run through the same finally as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    machine = machine_line()  # before the bench's own processes count in the load average
    cleanup = Cleanup()
    root = Path(tempfile.mkdtemp(prefix="bl-", dir="/tmp"))  # short: screen and socket paths
    cleanup.folders.append(root)
    command = " ".join(
        ["python scripts/bench_launch.py", *(argv if argv is not None else sys.argv[1:])]
    )
    try:
        print(f"work folder: {root} (removed at exit)", file=sys.stderr, flush=True)
        job = root / "job"
        job.write_text(JOB_SCRIPT.format(python=sys.executable))
        job.chmod(0o755)
        floor = measure_floor(root, modes, max(args.trials, 10), 40 if q else 400, job, cleanup)
        print("  floor done", file=sys.stderr, flush=True)
        rows = [floor[k] for k in ("screen", "screen-hand", "direct", "direct-hand") if k in floor]
        rows += run_modes(args, root, modes, cleanup, floor, job)

        idle = BenchDaemon(root / "idle", modes[0], cleanup, args.profile)
        idle.start()
        cpu_pct, rss, threads = idle_cost(idle, args.jobs, args.idle_s)
        idle.stop()
        rows.append(
            Row(
                f"idle {args.idle_s:g} s, {args.jobs:,} pending on paused GPUs: "
                f"CPU {cpu_pct:.2f}% of a core, RSS {rss:.0f} MiB, {threads} threads",
                modes[0],
                target="< 0.5% of a core",
                met="yes" if cpu_pct < 0.5 else "no",
            )
        )

        with maybe_pyinstrument(args.profile, "reload"):
            reloads = [reload_and_pass(root, size, 3 if q else 7) for size in sizes]

        print(f"\n### gpu_scheduler launch benchmark: {machine}\n")
        print(
            f"`{command}`; floor rate with {POOL} starts in flight; {GPUS} simulated GPUs, "
            f"gpus={SHARE}; edit-to-launch over {args.trials} trials each.\n"
        )
        print_rows(rows)
        print_reloads(reloads)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up itself is not interrupted
        cleanup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
