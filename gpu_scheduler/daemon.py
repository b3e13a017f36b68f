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

This module sequences; its siblings do the parts: daemon_actions.py (a pass's launches, stops
and freezes, and their reports), daemon_monitor.py (the monitor tick), daemon_saving.py (the
journal and coalesced saves), daemon_jobfiles.py (reading the jobs files), daemon_control.py
(control requests), daemon_records.py (the runners' records; recovery's facts) and
daemon_events.py (the Event the loop receives).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpu_scheduler import __version__
from gpu_scheduler.adapters.clock import Clock, SystemClock
from gpu_scheduler.adapters.control import ControlServer
from gpu_scheduler.adapters.exitwatch import ExitWatcher
from gpu_scheduler.adapters.gpus import GpuProbe
from gpu_scheduler.adapters.jobwatch import FileWatcher
from gpu_scheduler.adapters.launchers import Launcher
from gpu_scheduler.adapters.store import StateStore
from gpu_scheduler.config import Settings
from gpu_scheduler.core.model import GpuSnapshot, LineError, Notice, Running, Stop
from gpu_scheduler.core.recovery import reconcile, replay_launches, resumed_stops
from gpu_scheduler.core.scheduler import Scheduler
from gpu_scheduler.daemon_actions import carry_out_stop, follow, on_exit, on_launched, run_pass
from gpu_scheduler.daemon_control import handle_command
from gpu_scheduler.daemon_events import Event
from gpu_scheduler.daemon_jobfiles import jobs_write_age, read_held_back_line, read_jobs
from gpu_scheduler.daemon_monitor import monitor
from gpu_scheduler.daemon_records import gather_facts
from gpu_scheduler.daemon_saving import (
    HEARTBEAT_S,
    KEEP_FINISHED,
    LAUNCH_SAVE_DELAY_S,
    SAVE_INTERVAL_S,
    save_if_due,
    save_state,
)
from gpu_scheduler.errors import GpuSchedulerError
from gpu_scheduler.guards import JobGuard, insecure_files, trusted_files
from gpu_scheduler.jobsource import JobSource
from gpu_scheduler.metrics import MetricsRecorder
from gpu_scheduler.paths import DaemonPaths
from gpu_scheduler.policy import policy_from

# Names other modules and tests import from here, though they now live in the siblings.
__all__ = ["HEARTBEAT_S", "KEEP_FINISHED", "LAUNCH_SAVE_DELAY_S", "SAVE_INTERVAL_S", "Daemon",
           "Event", "policy_from"]

log = logging.getLogger("gpu_scheduler.daemon")


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
        self._urgent = False  # a user's command changed the state: save it without waiting
        self._save_cost = 0.0  # how long the last full save took (spaces the next ones)
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
            follow(self, job_id)
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
            run_pass(self)
        save_if_due(self)
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
            # (see read_held_back_line): leaving it out now would dequeue it and queue it again.
            self._read_jobs(include_partial=self._jobs_write_age() >= self._quiet_s)
        elif event.kind == "launched":
            on_launched(self, event, now)
        elif event.kind == "launch_error":
            self._in_flight -= 1
            if self._current(event):
                self._log_notice(self.scheduler.launch_failed(event.job_id, event.data["message"], now))
        elif event.kind == "exit":
            if self._current(event):
                on_exit(self, event.job_id, event.attempt, now)
        elif event.kind == "control":
            assert event.reply is not None
            self._urgent = self._urgent or event.data.get("cmd") != "ping"
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

    def _on_file_change(self, path: Path) -> None:
        self.events.put(Event("files", data={"path": str(path)}))

    def _on_control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Runs on the control thread: hand the request to the loop and wait for its answer."""
        reply: Future[dict[str, Any]] = Future()
        self.events.put(Event("control", data=request, reply=reply))
        return reply.result(timeout=4.0)

    # ------------------------------------------------------------------ reading files

    def _read_jobs(self, *, include_partial: bool) -> None:
        """Re-read the jobs files and sync the scheduler (daemon_jobfiles; also daemon_control)."""
        read_jobs(self, include_partial=include_partial)

    def _jobs_write_age(self) -> float:
        return jobs_write_age(self.source.jobs_file)

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
        read_held_back_line(self, mono)
        if mono >= self._next_monitor:
            self._next_monitor = mono + self.settings.gpu.monitor_interval_s
            monitor(self, now)
        for stop in self.scheduler.check_timeouts(now):
            log.warning("job %s passed its timeout; stopping it", stop.job_id,
                        extra={"event": "timeout", "job_id": stop.job_id})
            self._carry_out_stop(stop)

    # ------------------------------------------------------------------ stopping

    def _carry_out_stop(self, stop: Stop) -> None:
        """Send a decided stop to a stop worker (daemon_actions; also used by daemon_control)."""
        carry_out_stop(self, stop)

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

    # Kept here, read and written by daemon_saving:
    _first_ahead: float | None = None  # when launches were first written ahead since a save

    @property
    def _heartbeat_s(self) -> float:
        """How often an unchanged state is saved anyway: every other monitor tick, at most
        HEARTBEAT_S apart (status calls a state stale after max(30 s, 3 ticks))."""
        return min(HEARTBEAT_S, 2 * self.settings.gpu.monitor_interval_s)

    def _save(self, force: bool = False) -> bool:
        """Write the full state now (see daemon_saving); False if it failed."""
        return save_state(self, force)

    # ------------------------------------------------------------------ reporting

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
