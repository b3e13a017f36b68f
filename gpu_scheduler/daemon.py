"""The daemon: the imperative shell around the scheduler, and the only place side effects are sequenced.

One thread owns the scheduler. Everything else — the file watcher, the exit watcher, launch and
stop workers, the control socket — only posts events to its queue. The loop blocks on that queue
(no sleep-and-poll): an event or a due deadline (monitor tick, retry, timeout, a held-back half
line) wakes it; it handles what arrived, runs one scheduling pass, carries out the actions, saves.

Crash safety: a pass's launches are written ahead (as running, pid unknown) BEFORE any process
starts -- appended to the store's launch journal, fsynced, a few hundred bytes whatever the size
of the state; a pass that also suspends or stops jobs (preemption) saves the whole state instead.
So after a kill -9 the restart finds them and checks their exit records and processes instead of
starting them again. Exits need no write-ahead: the runner's exit record survives the daemon.

Saves: changes are coalesced into at most one full save per SAVE_INTERVAL_S; one that falls due
at a launch waits LAUNCH_SAVE_DELAY_S more, so it does not compete with the runners being
started (only the first launch since a save can delay it: a stream cannot starve it). A monitor
tick marks the state dirty only when something it shows changed (the GPU snapshot, an overrun);
otherwise a heartbeat save every ``_heartbeat_s`` keeps ``heartbeat_at`` (status: "state fresh")
and the rolling metrics current.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gpu_scheduler import __version__
from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.clock import Clock, SystemClock
from gpu_scheduler.adapters.control import ControlServer
from gpu_scheduler.adapters.exitwatch import ExitWatcher
from gpu_scheduler.adapters.gpus import GpuProbe
from gpu_scheduler.adapters.jobwatch import FileWatcher
from gpu_scheduler.adapters.launchers import Launcher, LaunchRequest
from gpu_scheduler.adapters.store import SavedState, StateStore
from gpu_scheduler.config import Settings
from gpu_scheduler.core import codec
from gpu_scheduler.core.model import (
    Finished,
    GpuSnapshot,
    Launch,
    LineError,
    Notice,
    Resume,
    Running,
    Stop,
    Suspend,
)
from gpu_scheduler.core.recovery import reconcile, replay_launches, resumed_stops
from gpu_scheduler.core.scheduler import Scheduler
from gpu_scheduler.core.units import format_share
from gpu_scheduler.daemon_control import handle_command
from gpu_scheduler.daemon_records import end_remains, gather_facts, read_record
from gpu_scheduler.errors import GpuSchedulerError, StateFileError
from gpu_scheduler.guards import JobGuard, cuda_oom_in_log, insecure_files, trusted_files
from gpu_scheduler.jobsource import JobSource, jobs_files
from gpu_scheduler.metrics import MetricsRecorder, tenant_info
from gpu_scheduler.paths import DaemonPaths
from gpu_scheduler.policy import policy_from

log = logging.getLogger("gpu_scheduler.daemon")

SAVE_INTERVAL_S = 0.2  # coalesce bursts of changes into at most ~5 saves a second
HEARTBEAT_S = 10.0  # an unchanged state is saved this often (status calls 30 s stale)
LAUNCH_SAVE_DELAY_S = 0.05  # a full save due at a launch waits this long: runners start first
KEEP_FINISHED = 200  # finished jobs kept in live state for status; older ones go to history


def _tree_pids(pid: int) -> set[int]:
    """A runner and all its descendants: the processes whose GPU memory is ours."""
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()


@dataclass
class Event:
    kind: str  # files | launched | launch_error | exit | stopped | control | shutdown
    job_id: str = ""
    attempt: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    reply: Future[dict[str, Any]] | None = None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        probe: GpuProbe,
        launcher: Launcher,
        clock: Clock | None = None,
        store: StateStore | None = None,
        mode: str | None = None,
        watch_files: bool = True,
    ) -> None:
        self.settings = settings
        self.probe = probe
        self.launcher = launcher
        self.clock = clock or SystemClock()
        self.mode = mode or settings.execution.mode
        self.paths = DaemonPaths(settings.files.state_file, settings.files.log_dir)
        self.store = store or StateStore(settings.files.state_file)
        self.events: queue.Queue[Event] = queue.Queue()
        self.gpus: tuple[GpuSnapshot, ...] = probe.snapshot()
        policy = policy_from(settings, self.mode)
        # Ray mode: jobs run on other machines; the launcher follows them, not our pid watcher.
        self.remote = bool(getattr(launcher, "remote", False))
        self.scheduler = Scheduler(policy, [g.index for g in self.gpus])
        self.source = JobSource(
            settings.files.jobs_file,
            settings.files.llm_config_file,
            gpu_indices=[g.index for g in self.gpus],
            precision_unit=settings.gpu.precision_unit,
            allowed_script_paths=settings.security.allowed_script_paths,
            tenant_caps={name: rule.max_gpus for name, rule in settings.tenants.items()},
            gpu_nodes={g.index: g.node for g in self.gpus if g.node},
        )
        self.errors: tuple[LineError, ...] = ()
        self.started_at = self.clock.now()
        self.save_error = ""
        self.guard = JobGuard.from_settings(settings)  # memory limit, GPU memory overrun
        self.overruns: dict[str, str] = {}  # job id -> its GPU memory overrun, while it lasts
        self.metrics = MetricsRecorder(settings.gpu.utilization_window_s,
                                       settings.gpu.monitor_interval_s, settings.files.metrics_file)
        self._watch_files = watch_files
        self._launches = ThreadPoolExecutor(settings.scheduler.max_workers, "launch")
        self._stops = ThreadPoolExecutor(4, "stop")
        self._exit_watcher = ExitWatcher()
        self._file_watcher: FileWatcher | None = None
        self._control: ControlServer | None = None
        self._dirty = True
        self._last_save = float("-inf")
        self._next_monitor = 0.0
        self._partial_since: float | None = None  # a half-written last line is being held back
        self._last_file_event = 0.0
        self._in_flight = 0  # launches submitted and not yet reported
        self._probe_due = False  # Ray mode: submissions reported since the last probe
        self._own_pids: frozenset[int] = frozenset()
        self.stopping = False
        self.exit_requested = False
        self._kill_jobs = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Recover saved state, read the jobs files, start watchers and the control socket."""
        for folder in (self.paths.state_dir, self.paths.run_dir, self.paths.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        now = self.clock.now()
        loaded = self.store.load()
        archived = self.store.history_states()
        if loaded is not None:
            if loaded.from_backup:
                log.warning("state file not usable (%s); recovered from the backup", loaded.problem,
                            extra={"event": "state_from_backup"})
            state = loaded.state
            launched, journal_seq = self.store.read_launches()
            jobs = replay_launches(state.jobs, launched, archived)
            if launched:
                log.info("%d launch(es) written ahead after the last save: checking them",
                         len(launched), extra={"event": "launches_replayed"})
            self.scheduler.restore(jobs, state.paused, max(state.next_seq, journal_seq), archived)
            facts = (self.launcher.recovery_facts(self.scheduler) if self.remote  # type: ignore[attr-defined]
                     else gather_facts(self.scheduler, self.paths, self.launcher))
            for notice in reconcile(self.scheduler, facts, now):
                self._log_notice(notice)
        else:
            self.scheduler.restore((), (), 0, archived)
        self.source.reload_llm()
        self._read_jobs(include_partial=self._jobs_write_age() >= self._quiet_s)
        for job_id in self.scheduler.running_ids:
            self._follow(job_id)
        for stop in resumed_stops(self.scheduler):  # decided before a crash, maybe not done
            self._carry_out_stop(stop)
        if self._watch_files:
            self._file_watcher = FileWatcher(self.source.watched_paths(), self._on_file_change)
            self._file_watcher.start()
        self._control = ControlServer(self.paths.control_socket, self._on_control)
        self._control.start()
        for problem in insecure_files(trusted_files(self.settings)):
            log.warning("%s", problem, extra={"event": "insecure_file"})
        log.info("scheduler started: %d GPUs (%s), mode %s, %d jobs pending, %d running",
                 len(self.gpus), self.probe.name, self.mode, self.scheduler.pending_count(),
                 len(self.scheduler.running_ids), extra={"event": "daemon_started"})
        self._save(force=True)

    def run(self) -> None:
        """Serve until a stop request; callers handle signals by calling ``request_stop``."""
        self.start()
        try:
            while not self.exit_requested:
                self.step(self._wait_timeout())
        finally:
            self.close()

    def step(self, timeout: float | None = 0.0) -> None:
        """Handle what has arrived (waiting up to ``timeout``), run a pass, save: one tick."""
        batch: list[Event] = []
        try:
            batch.append(self.events.get(timeout=timeout) if timeout else self.events.get_nowait())
            while True:
                batch.append(self.events.get_nowait())
        except queue.Empty:
            pass
        for event in batch:
            self._handle(event)
        self._on_time()
        if not self.stopping:
            self._pass()
        self._maybe_save()
        if self.stopping and self._in_flight == 0 and not self._stopping_jobs():
            self.exit_requested = True

    def request_stop(self, kill_jobs: bool = False) -> None:
        """Thread-safe: ask for a graceful stop (jobs keep running unless ``kill_jobs``)."""
        self.events.put(Event("shutdown", data={"kill_jobs": kill_jobs}))

    def close(self) -> None:
        self._launches.shutdown(wait=True)
        while not self.events.empty():
            self.step(0)
        if self._file_watcher:
            self._file_watcher.stop()
        if self._control:
            self._control.stop()
        self._stops.shutdown(wait=True)
        self._exit_watcher.close()
        self.launcher.close()  # its threads, warm host or windows; the jobs keep running
        self._save(force=True)
        log.info("scheduler stopped; %d jobs left running", len(self.scheduler.running_ids),
                 extra={"event": "daemon_stopped"})

    # ------------------------------------------------------------------ events

    def _handle(self, event: Event) -> None:
        now = self.clock.now()
        if event.kind == "files":
            self._last_file_event = self.clock.monotonic()
            if Path(event.data["path"]) == self.source.llm_config_file:
                if self.source.reload_llm():
                    log.info("llm_config reloaded", extra={"event": "llm_config_reloaded"})
            # A last line without newline in a file quiet for long enough is a job already
            # (see _on_time): leaving it out now would dequeue it and queue it again later.
            self._read_jobs(include_partial=self._jobs_write_age() >= self._quiet_s)
        elif event.kind == "launched":
            self._on_launched(event, now)
        elif event.kind == "launch_error":
            self._in_flight -= 1
            if self._current(event):
                self._log_notice(self.scheduler.launch_failed(event.job_id, event.data["message"], now))
        elif event.kind == "exit":
            if self._current(event):
                self._on_exit(event.job_id, event.attempt, now)
        elif event.kind == "control":
            assert event.reply is not None
            try:
                event.reply.set_result(handle_command(self, event.data, now))
            except GpuSchedulerError as exc:
                event.reply.set_result({"ok": False, "error": str(exc)})
        elif event.kind == "shutdown":
            self._begin_stop(bool(event.data.get("kill_jobs")), now)
        self._dirty = True

    def _current(self, event: Event) -> bool:
        """Events about an attempt that is no longer running are stale and ignored."""
        job = self.scheduler.jobs.get(event.job_id)
        return job is not None and isinstance(job.status, Running) and job.attempts == event.attempt

    def _on_launched(self, event: Event, now: float) -> None:
        self._in_flight -= 1
        if self.remote:  # probe the cluster again before the next pass
            self._probe_due, self._next_monitor = True, 0.0
        if not self._current(event):
            return
        pid, started = event.data["pid"], event.data["pid_started_at"]
        self.scheduler.launched(event.job_id, pid, started)
        job = self.scheduler.jobs[event.job_id]
        run = job.status
        assert isinstance(run, Running)
        log.info("launched %s on GPU %s in %s (pid %d)", job.spec.label,
                 ",".join(map(str, run.gpus)), run.session, pid,
                 extra={"event": "launched", "job_id": job.job_id, "gpus": list(run.gpus),
                        "session": run.session, "share": format_share(job.share)})
        self._follow(event.job_id)
        if run.stopping:  # cancelled while it was being launched
            self._carry_out_stop(Stop(job.job_id, run.stopping, self.scheduler.policy.stop_grace_s))

    def _on_exit(self, job_id: str, attempt: int, now: float) -> None:
        job = self.scheduler.jobs[job_id]
        run = job.status
        assert isinstance(run, Running)
        if self.remote:  # the job's end as Ray tells it; its output kept in our log folder
            record = self.launcher.exit_record(run.session)  # type: ignore[attr-defined]
            self.launcher.fetch_log(run.session, self.paths.log_path(job_id))  # type: ignore[attr-defined]
            self._next_monitor = 0.0  # Ray's count of the node's GPUs changed: look again now
        else:
            record = read_record(self.paths.record_path(job_id, attempt))
        if record.get("state") == "exited":
            code = int(record["exit_code"])
            oom = "" if code == 0 or run.stopping else \
                cuda_oom_in_log(self.paths.log_path(job_id), job_id, attempt)
            if oom:  # probe again before the next pass: its GPU is held until memory is back
                self._next_monitor = 0.0
                log.warning("job %s ran out of GPU memory: %s", job_id, oom,
                            extra={"event": "cuda_oom", "job_id": job_id})
            notice = self.scheduler.exited(job_id, code, now, oom=bool(oom))
        elif record.get("state") == "launch_failed":
            notice = self.scheduler.launch_failed(job_id, str(record.get("message")), now)
        elif run.stopping:
            notice = self.scheduler.exited(job_id, 137, now)
        else:
            if run.pid is not None and not self.remote:  # a killed runner may leave its job
                end_remains(job_id, run.pid, run.pid_started_at)
            notice = self.scheduler.lost(job_id, "its runner ended without an exit record", now)
        self._log_notice(notice)

    def _on_file_change(self, path: Path) -> None:
        self.events.put(Event("files", data={"path": str(path)}))

    def _on_control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Runs on the control thread: hand the request to the loop and wait for its answer."""
        reply: Future[dict[str, Any]] = Future()
        self.events.put(Event("control", data=request, reply=reply))
        return reply.result(timeout=4.0)

    # ------------------------------------------------------------------ reading files

    def _read_jobs(self, *, include_partial: bool) -> None:
        """Re-read the jobs files and sync the scheduler, at the cost of what changed: a
        one-line append to a huge file looks at that line only (JobSource, Scheduler.sync)."""
        from collections import ChainMap

        jobs = self.scheduler.jobs
        result = self.source.read_with_dependencies(
            include_partial=include_partial,
            # jobs the scheduler remembers whose lines may be gone, looked up, never copied
            known_names=lambda: {j.spec.name: j.job_id for j in jobs.values() if j.spec.name},
            known_ids=ChainMap[str, object](jobs, self.scheduler.archived),
        )
        if result.errors != self.errors:
            for error in set(result.errors) - set(self.errors):
                log.warning("%s", error, extra={"event": "line_error", "path": error.source})
        self.errors = result.errors
        self._partial_since = self.clock.monotonic() if result.partial else None
        for notice in self.scheduler.sync(result.jobs, self.clock.now(), result.deps,
                                          unchanged=result.unchanged_jobs):
            self._log_notice(notice)

    # ------------------------------------------------------------------ time

    def _wait_timeout(self) -> float:
        """How long the loop may block: until the next thing that is due on its own."""
        mono, now = self.clock.monotonic(), self.clock.now()
        due = [self._next_monitor - mono]
        deadline = self.scheduler.next_deadline()
        if deadline is not None:
            due.append(deadline - now)
        if self._partial_since is not None:
            due.append(self._partial_since + self._quiet_s - mono)
        if self._dirty:
            due.append(self._last_save + SAVE_INTERVAL_S - mono)
        return min(max(0.005, min(due)), self.settings.gpu.monitor_interval_s)

    @property
    def _quiet_s(self) -> float:
        return 0.3

    def _on_time(self) -> None:
        mono, now = self.clock.monotonic(), self.clock.now()
        if self._partial_since is not None and mono - self._last_file_event >= self._quiet_s \
                and mono - self._partial_since >= self._quiet_s:
            # The watcher holds back events while a file keeps changing, so "no event for
            # 0.3 s" is not "quiet": ask the file itself when it was last written.
            age = self._jobs_write_age()
            if age < self._quiet_s:
                self._partial_since = mono - age
            else:
                self._read_jobs(include_partial=True)
        if mono >= self._next_monitor:
            self._next_monitor = mono + self.settings.gpu.monitor_interval_s
            self._monitor(now)
        for stop in self.scheduler.check_timeouts(now):
            log.warning("job %s passed its timeout; stopping it", stop.job_id,
                        extra={"event": "timeout", "job_id": stop.job_id})
            self._carry_out_stop(stop)

    def _jobs_write_age(self) -> float:
        """Seconds since the newest write to a jobs file (file times are wall-clock times;
        a time in the future, e.g. clock skew, counts as long ago so nothing waits for it)."""
        newest = float("-inf")
        for path in jobs_files(self.source.jobs_file):
            with contextlib.suppress(OSError):
                newest = max(newest, path.stat().st_mtime)
        age = time.time() - newest
        return age if age >= 0 else float("inf")

    def _monitor(self, now: float) -> None:
        """The slow tick: GPU snapshot, our processes, and a check of every running job.

        Marks the state dirty only when what it shows changed (GPU snapshot, overruns; stops
        change jobs, which marks it too): an idle daemon does not rewrite its state every tick.
        The rolling metrics and the heartbeat ride on the next save (``_maybe_save``)."""
        self._probe_due = False
        shown = (self.gpus, self.overruns)
        jobs = self.scheduler.jobs
        running = [(job_id, jobs[job_id]) for job_id in self.scheduler.running_ids]
        try:
            self.gpus = self.probe.snapshot()
        except Exception as exc:  # a probe must not take the loop down
            log.error("GPU probe failed: %s", exc, extra={"event": "probe_error"})
        pids: set[int] = set()
        trees: dict[str, set[int]] = {}
        if self.remote:
            joined = self.scheduler.add_gpus(g.index for g in self.gpus)
            if joined:  # lines too big for the cluster until now may fit: check them again
                log.info("GPUs %s joined the cluster", joined, extra={"event": "gpu_joined"})
                self.source.set_gpus(self.scheduler.gpu_indices,
                                     {g.index: g.node for g in self.gpus if g.node})
                self._read_jobs(include_partial=self._jobs_write_age() >= self._quiet_s)
        for job_id in self.scheduler.running_ids:
            run = self.scheduler.jobs[job_id].status
            if not isinstance(run, Running) or run.pid is None or self.remote:
                continue
            if not processes.is_alive(run.pid, run.pid_started_at):
                self.events.put(Event("exit", job_id, self.scheduler.jobs[job_id].attempts))
                continue
            trees[job_id] = _tree_pids(run.pid)
            pids.update(trees[job_id])
        self._own_pids = frozenset(pids)
        self._enforce_limits(now, trees)
        self.metrics.sample(now, self.gpus, self.scheduler, self.info(now), self.scheduler.paused)
        if (self.gpus, self.overruns) != shown or any(jobs.get(i) is not j for i, j in running):
            self._dirty = True  # (a job stopped for its memory is a changed job)

    def _enforce_limits(self, now: float, trees: dict[str, set[int]]) -> None:
        """Host memory limit and GPU memory overrun (see guards): log, and stop if so set."""
        found = self.guard.check(self.scheduler.jobs, trees, self.gpus)
        self.overruns = found.overruns
        for job_id, overrun in found.new_overruns.items():
            log.warning("job %s GPU memory overrun: %s", job_id, overrun,
                        extra={"event": "gpu_memory_overrun", "job_id": job_id})
        for job_id, reason in found.stops:
            log.warning("job %s: %s; stopping it", job_id, reason,
                        extra={"event": "limit_exceeded", "job_id": job_id})
            self._carry_out_stop(self.scheduler.request_stop(job_id, "memory", now, reason))

    # ------------------------------------------------------------------ actions

    def _pass(self) -> None:
        if self.save_error:
            return
        if self.remote and (self._in_flight or self._probe_due):
            return  # Ray's count of each node must include our last submissions first
        report = self.scheduler.schedule(self.gpus, self.clock.now(), self._own_pids)
        for notice in report.notices:  # backlog lines taken into the queue
            self._log_notice(notice)
        for action in report.actions:  # preemptions decided by the pass
            self._dirty = True
            if isinstance(action, Stop):
                self._carry_out_stop(action)
            else:
                self._freeze(action)
        if not report.launches:
            return
        self._dirty = True
        # Write ahead: the journal (cheap, whatever the state's size), or -- when the pass also
        # froze or stopped jobs, which the journal does not carry -- the whole state.
        written = self._save(force=True) if report.actions else self._write_ahead(report.launches)
        if not written:
            for launch in report.launches:
                self._log_notice(self.scheduler.abort_launch(launch.job_id, "state not saved"))
            return
        for launch in report.launches:
            self._in_flight += 1
            self._launches.submit(self._launch, launch, self._request(launch))

    def _request(self, launch: Launch) -> LaunchRequest:
        job = self.scheduler.jobs[launch.job_id]
        env = {"GPU_SCHEDULER_ATTEMPT": str(launch.attempt)}
        if launch.preempted:
            env["GPU_SCHEDULER_PREEMPTED"] = "1"
        sim_dir = self.settings.gpu.simulated.state_dir
        if self.probe.name == "simulated" and sim_dir is not None:
            env["GPU_SCHEDULER_SIMULATED_DIR"] = str(sim_dir)
        return LaunchRequest(
            job_id=job.job_id,
            attempt=launch.attempt,
            session=launch.session,
            script=job.spec.script,
            args=job.spec.args,
            conda_env=job.spec.conda_env,
            gpus=launch.gpus,
            share=format_share(job.share),
            log_path=self.paths.log_path(job.job_id),
            record_path=self.paths.record_path(job.job_id, launch.attempt),
            python=self.settings.execution.python,
            env=env,
            append_cuda_arg=self.settings.execution.append_cuda_arg,
        )

    def _launch(self, launch: Launch, request: LaunchRequest) -> None:
        """Runs on a launch worker: start the runner and report back to the loop."""
        try:
            process = self.launcher.launch(request)
        except GpuSchedulerError as exc:
            self.events.put(Event("launch_error", launch.job_id, launch.attempt,
                                  {"message": str(exc)}))
            return
        except Exception as exc:  # a launcher bug must not lose the job
            log.exception("launcher failed for %s", launch.job_id)
            self.events.put(Event("launch_error", launch.job_id, launch.attempt,
                                  {"message": f"internal error: {exc}"}))
            return
        self.events.put(Event("launched", launch.job_id, launch.attempt,
                              {"pid": process.pid, "pid_started_at": process.pid_started_at}))

    def _follow(self, job_id: str) -> None:
        job = self.scheduler.jobs[job_id]
        run = job.status
        if not isinstance(run, Running) or run.pid is None:
            return
        attempt = job.attempts
        if self.remote:
            self.launcher.follow(  # type: ignore[attr-defined]
                run.session, lambda _s: self.events.put(Event("exit", job_id, attempt)))
            return
        self._exit_watcher.watch(
            f"{job_id}:{attempt}", run.pid,
            lambda _key: self.events.put(Event("exit", job_id, attempt)),
            started_at=run.pid_started_at,
        )

    def _freeze(self, action: Suspend | Resume) -> None:
        """SIGSTOP (suspend) or SIGCONT (resume) a preempted job's whole process tree."""
        job = self.scheduler.jobs[action.job_id]
        run = job.status
        if not isinstance(run, Running) or run.pid is None or self.remote:
            return
        sig = signal.SIGSTOP if isinstance(action, Suspend) else signal.SIGCONT
        processes.signal_tree(run.pid, sig, run.pid_started_at)
        verb = "suspended" if isinstance(action, Suspend) else "resumed"
        log.info("%s %s %s", verb, job.spec.label, getattr(action, "detail", ""),
                 extra={"event": verb, "job_id": job.job_id})

    def _carry_out_stop(self, stop: Stop) -> None:
        job = self.scheduler.jobs[stop.job_id]
        run = job.status
        if not isinstance(run, Running) or run.pid is None:
            return  # still launching: stopped as soon as its launch is reported
        log.info("stopping %s (%s)", job.spec.label, stop.reason,
                 extra={"event": "stopping", "job_id": job.job_id, "reason": stop.reason})
        self._stops.submit(self.launcher.stop, run.pid, run.pid_started_at, run.session,
                           stop.grace_s)

    def _begin_stop(self, kill_jobs: bool, now: float) -> None:
        self.stopping = True
        self._kill_jobs = kill_jobs
        log.info("stopping the scheduler%s", " and its jobs" if kill_jobs else
                 "; running jobs keep running and are adopted at the next start",
                 extra={"event": "daemon_stopping"})
        if kill_jobs:
            for job_id in sorted(self.scheduler.running_ids):
                stops, notice = self.scheduler.cancel(job_id, now, by="stop --kill-jobs")
                self._log_notice(notice)
                for stop in stops:
                    self._carry_out_stop(stop)

    def _stopping_jobs(self) -> bool:
        return self._kill_jobs and bool(self.scheduler.running_ids)

    # ------------------------------------------------------------------ state

    _first_ahead: float | None = None  # when launches were first written ahead since a save

    @property
    def _heartbeat_s(self) -> float:
        """How often an unchanged state is saved anyway: every other monitor tick, at most
        HEARTBEAT_S apart (status calls a state stale after max(30 s, 3 ticks))."""
        return min(HEARTBEAT_S, 2 * self.settings.gpu.monitor_interval_s)

    def _maybe_save(self) -> None:
        since = self.clock.monotonic() - self._last_save
        if (self._dirty and since >= SAVE_INTERVAL_S) or since >= self._heartbeat_s:
            self._save()

    def _write_ahead(self, launches: tuple[Launch, ...]) -> bool:
        """Journal the pass's launches before any runner starts (see the module docstring);
        on failure stop launching, as a failed save does. The full save follows, coalesced:
        the first launch written ahead since the last save holds it back to at least
        LAUNCH_SAVE_DELAY_S from now (later ones do not, so a stream cannot starve it)."""
        try:
            self.store.append_launches(
                [self.scheduler.jobs[launch.job_id] for launch in launches],
                self.scheduler.next_seq,
            )
        except StateFileError as exc:
            if not self.save_error:
                log.error("CANNOT SAVE STATE, no new jobs will be launched: %s", exc,
                          extra={"event": "state_save_failed"})
            self.save_error = str(exc)
            self._last_save = self.clock.monotonic()  # retry at the save interval
            return False
        if self._first_ahead is None:
            self._first_ahead = mono = self.clock.monotonic()
            self._last_save = max(self._last_save, mono - SAVE_INTERVAL_S + LAUNCH_SAVE_DELAY_S)
        return True

    def _save(self, force: bool = False) -> bool:
        """Write the state; on failure stop launching and say so loudly until a save works."""
        try:
            self._archive_old_finished()
            self.store.save(self._saved_state())
        except StateFileError as exc:
            if not self.save_error:
                log.error("CANNOT SAVE STATE, no new jobs will be launched: %s", exc,
                          extra={"event": "state_save_failed"})
            self.save_error = str(exc)
            self._last_save = self.clock.monotonic()  # retry at the save interval, not in a spin
            return False
        if self.save_error:
            log.warning("state saved again; launching resumes", extra={"event": "state_saved"})
        self.save_error = ""
        self._dirty = False
        self._first_ahead = None
        self._last_save = self.clock.monotonic()
        return True

    def _archive_old_finished(self) -> None:
        finished = [j for j in self.scheduler.jobs.values() if isinstance(j.status, Finished)]
        if len(finished) <= KEEP_FINISHED:
            return
        finished.sort(key=lambda j: j.status.finished_at)  # type: ignore[union-attr]
        old = finished[: len(finished) - KEEP_FINISHED]
        self.store.append_history(old)
        for job in old:
            self.scheduler.archive(job.job_id)

    def _saved_state(self) -> SavedState:
        now = self.clock.now()
        report = self.scheduler.last_pass
        return SavedState(
            jobs=tuple(self.scheduler.jobs.values()),
            paused=tuple(sorted(self.scheduler.paused)),
            next_seq=self.scheduler.next_seq,
            saved_at=now,
            daemon=self.info(now),
            observed={
                "gpus": [codec.gpu_snapshot_to_dict(g) for g in self.gpus],
                "used": {str(g): s for g, s in self.scheduler.used().items()},
                "errors": [codec.line_error_to_dict(e) for e in self.errors],
                "waiting": dict(report.waiting),
                "reserved_for": report.reserved_for,
                "reserved_gpus": list(report.reserved_gpus),
                "unusable": {str(g): r.reason for g, r in report.rooms.items() if not r.usable},
                "queue": self.scheduler.queue_order(now, limit=50),
                "pending": self.scheduler.pending_count(),
                "archived": len(self.scheduler.archived),
                "save_error": self.save_error,
                "overruns": dict(self.overruns),  # job id -> GPU memory beyond its share
                "backlog": len(self.scheduler.backlog),  # new lines waiting for queue room
                "oom_holds": {str(g): mib for g, mib in self.scheduler.oom_holds.items()},
                "metrics": self.metrics.summary(self.scheduler),  # GPU samples, history counts
                "tenants": tenant_info(self.scheduler),  # weight, quota, fair-share usage
            },
        )

    def info(self, now: float) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "version": __version__,
            "started_at": self.started_at,
            "heartbeat_at": now,
            "monitor_interval_s": self.settings.gpu.monitor_interval_s,
            "mode": self.mode,
            "provider": self.probe.name,
            "config": str(self.settings.config_path),
            "screen_dir": str(self.settings.execution.screen_dir or ""),
            "stopping": self.stopping,
            "save_error": self.save_error,
        }

    def _log_notice(self, notice: Notice) -> None:
        level = logging.WARNING if notice.event in {
            "failed", "launch_failed", "requeued", "launch_retry", "timed_out", "killed",
            "oom_requeued", "queue_full",
        } else logging.INFO
        log.log(level, "%s %s: %s", notice.event, notice.job_id, notice.message,
                extra={"event": notice.event, "job_id": notice.job_id or None,
                       "exit_code": notice.data.get("exit_code")})

    def _log_notice_text(self, event: str, message: str) -> None:
        log.info("%s", message, extra={"event": event})
