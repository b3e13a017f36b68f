"""Carrying out a scheduling pass -- write-ahead, launches, stops, freezes -- and taking back
what the launch workers and the exit watchers report.

Apart from daemon.py because this is where the daemon's decisions touch processes: the loop
says *when* (one pass per tick); this says *how*, and keeps the one ordering crash safety rests
on -- a pass's launches are written ahead before any runner starts (see daemon.py's docstring).
Launcher calls run on the daemon's worker pools and report back only by posting an Event.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from gpu_scheduler.adapters import processes
from gpu_scheduler.adapters.launchers import LaunchRequest
from gpu_scheduler.core.model import Launch, Resume, Running, Stop, Suspend
from gpu_scheduler.core.units import format_share
from gpu_scheduler.daemon_events import Event
from gpu_scheduler.daemon_records import end_remains, read_record
from gpu_scheduler.daemon_saving import save_state, write_ahead
from gpu_scheduler.errors import GpuSchedulerError
from gpu_scheduler.guards import cuda_oom_in_log

if TYPE_CHECKING:
    from gpu_scheduler.daemon import Daemon

log = logging.getLogger("gpu_scheduler.daemon")


def run_pass(daemon: Daemon) -> None:
    """One scheduling pass, carried out: its preemptions, then its launches written ahead."""
    if daemon.save_error:
        return
    if daemon.remote and (daemon._in_flight or daemon._probe_due):
        return  # Ray's count of each node must include our last submissions first
    report = daemon.scheduler.schedule(daemon.gpus, daemon.clock.now(), daemon._own_pids)
    for notice in report.notices:  # backlog lines taken into the queue
        daemon._log_notice(notice)
    for action in report.actions:  # preemptions decided by the pass
        daemon._dirty = True
        if isinstance(action, Stop):
            carry_out_stop(daemon, action)
        else:
            _freeze(daemon, action)
    if not report.launches:
        return
    daemon._dirty = True
    # Write ahead: the journal (cheap, whatever the state's size), or -- when the pass also
    # froze or stopped jobs, which the journal does not carry -- the whole state.
    written = (save_state(daemon, force=True) if report.actions
               else write_ahead(daemon, report.launches))
    if not written:
        for launch in report.launches:
            daemon._log_notice(daemon.scheduler.abort_launch(launch.job_id, "state not saved"))
        return
    for launch in report.launches:
        daemon._in_flight += 1
        daemon._launches.submit(_launch, daemon, launch, _request(daemon, launch))


def _request(daemon: Daemon, launch: Launch) -> LaunchRequest:
    job = daemon.scheduler.jobs[launch.job_id]
    env = {"GPU_SCHEDULER_ATTEMPT": str(launch.attempt)}
    if launch.preempted:
        env["GPU_SCHEDULER_PREEMPTED"] = "1"
    sim_dir = daemon.settings.gpu.simulated.state_dir
    if daemon.probe.name == "simulated" and sim_dir is not None:
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
        log_path=daemon.paths.log_path(job.job_id),
        record_path=daemon.paths.record_path(job.job_id, launch.attempt),
        python=daemon.settings.execution.python,
        env=env,
        append_cuda_arg=daemon.settings.execution.append_cuda_arg,
    )


def _launch(daemon: Daemon, launch: Launch, request: LaunchRequest) -> None:
    """Runs on a launch worker: start the runner and report back to the loop."""
    try:
        process = daemon.launcher.launch(request)
    except GpuSchedulerError as exc:
        daemon.events.put(Event("launch_error", launch.job_id, launch.attempt,
                                {"message": str(exc)}))
        return
    except Exception as exc:  # a launcher bug must not lose the job
        log.exception("launcher failed for %s", launch.job_id)
        daemon.events.put(Event("launch_error", launch.job_id, launch.attempt,
                                {"message": f"internal error: {exc}"}))
        return
    daemon.events.put(Event("launched", launch.job_id, launch.attempt,
                            {"pid": process.pid, "pid_started_at": process.pid_started_at}))


def follow(daemon: Daemon, job_id: str) -> None:
    """Watch a running job's runner (or, in Ray mode, its remote run) and post its exit."""
    job = daemon.scheduler.jobs[job_id]
    run = job.status
    if not isinstance(run, Running) or run.pid is None:
        return
    attempt = job.attempts
    if daemon.remote:
        daemon.launcher.follow(  # type: ignore[attr-defined]
            run.session, lambda _s: daemon.events.put(Event("exit", job_id, attempt)))
        return
    daemon._exit_watcher.watch(
        f"{job_id}:{attempt}", run.pid,
        lambda _key: daemon.events.put(Event("exit", job_id, attempt)),
        started_at=run.pid_started_at,
    )


def _freeze(daemon: Daemon, action: Suspend | Resume) -> None:
    """SIGSTOP (suspend) or SIGCONT (resume) a preempted job's whole process tree."""
    job = daemon.scheduler.jobs[action.job_id]
    run = job.status
    if not isinstance(run, Running) or run.pid is None or daemon.remote:
        return
    sig = signal.SIGSTOP if isinstance(action, Suspend) else signal.SIGCONT
    processes.signal_tree(run.pid, sig, run.pid_started_at)
    verb = "suspended" if isinstance(action, Suspend) else "resumed"
    log.info("%s %s %s", verb, job.spec.label, getattr(action, "detail", ""),
             extra={"event": verb, "job_id": job.job_id})


def carry_out_stop(daemon: Daemon, stop: Stop) -> None:
    job = daemon.scheduler.jobs[stop.job_id]
    run = job.status
    if not isinstance(run, Running) or run.pid is None:
        return  # still launching: stopped as soon as its launch is reported
    log.info("stopping %s (%s)", job.spec.label, stop.reason,
             extra={"event": "stopping", "job_id": job.job_id, "reason": stop.reason})
    daemon._stops.submit(daemon.launcher.stop, run.pid, run.pid_started_at, run.session,
                         stop.grace_s)


def on_launched(daemon: Daemon, event: Event, now: float) -> None:
    daemon._in_flight -= 1
    if daemon.remote:  # probe the cluster again before the next pass
        daemon._probe_due, daemon._next_monitor = True, 0.0
    if not daemon._current(event):
        return
    pid, started = event.data["pid"], event.data["pid_started_at"]
    daemon.scheduler.launched(event.job_id, pid, started)
    job = daemon.scheduler.jobs[event.job_id]
    run = job.status
    assert isinstance(run, Running)
    log.info("launched %s on GPU %s in %s (pid %d)", job.spec.label,
             ",".join(map(str, run.gpus)), run.session, pid,
             extra={"event": "launched", "job_id": job.job_id, "gpus": list(run.gpus),
                    "session": run.session, "share": format_share(job.share)})
    follow(daemon, event.job_id)
    if run.stopping:  # cancelled while it was being launched
        carry_out_stop(daemon, Stop(job.job_id, run.stopping, daemon.scheduler.policy.stop_grace_s))


def on_exit(daemon: Daemon, job_id: str, attempt: int, now: float) -> None:
    job = daemon.scheduler.jobs[job_id]
    run = job.status
    assert isinstance(run, Running)
    if daemon.remote:  # the job's end as Ray tells it; its output kept in our log folder
        record = daemon.launcher.exit_record(run.session)  # type: ignore[attr-defined]
        daemon.launcher.fetch_log(run.session, daemon.paths.log_path(job_id))  # type: ignore[attr-defined]
        daemon._next_monitor = 0.0  # Ray's count of the node's GPUs changed: look again now
    else:
        record = read_record(daemon.paths.record_path(job_id, attempt))
    if record.get("state") == "exited":
        code = int(record["exit_code"])
        oom = "" if code == 0 or run.stopping else \
            cuda_oom_in_log(daemon.paths.log_path(job_id), job_id, attempt)
        if oom:  # probe again before the next pass: its GPU is held until memory is back
            daemon._next_monitor = 0.0
            log.warning("job %s ran out of GPU memory: %s", job_id, oom,
                        extra={"event": "cuda_oom", "job_id": job_id})
        notice = daemon.scheduler.exited(job_id, code, now, oom=bool(oom))
    elif record.get("state") == "launch_failed":
        notice = daemon.scheduler.launch_failed(job_id, str(record.get("message")), now)
    elif run.stopping:
        notice = daemon.scheduler.exited(job_id, 137, now)
    else:
        if run.pid is not None and not daemon.remote:  # a killed runner may leave its job
            end_remains(job_id, run.pid, run.pid_started_at)
        notice = daemon.scheduler.lost(job_id, "its runner ended without an exit record", now)
    daemon._log_notice(notice)
