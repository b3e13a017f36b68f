"""Subcommands that read files rather than command the daemon: status, lists, logs, add, validate."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gpu_scheduler.cli import config_path
from gpu_scheduler.cli_output import (  # noqa: F401 (the rest re-exported: they lived here)
    _OWN_DECIMAL,
    _OWN_EXPONENT,
    _by_orjson,
    _collector_paused,
    _console,
    _emit_json,
    _spelled_as_json,
    compact_json,
)
from gpu_scheduler.config import Settings, load_settings
from gpu_scheduler.core.model import Job, Running
from gpu_scheduler.errors import GpuSchedulerError, StateFileError
from gpu_scheduler.paths import DaemonPaths


def _paths(settings: Settings) -> DaemonPaths:
    return DaemonPaths(settings.files.state_file, settings.files.log_dir)


def load_view(settings: Settings):  # type: ignore[no-untyped-def]
    """The saved state plus whether the daemon answers: what every view is built from."""
    from gpu_scheduler.adapters.control import is_daemon_listening
    from gpu_scheduler.adapters.store import StateStore

    saved = StateStore(settings.files.state_file).read_only_snapshot()
    socket_path = _paths(settings).control_socket
    alive = is_daemon_listening(socket_path)
    if alive and saved is not None:
        saved = _with_live_save_error(saved, socket_path)
    return saved, alive


def _with_live_save_error(saved, socket_path: Path):  # type: ignore[no-untyped-def]
    """A failing save cannot update the state file, so ask the daemon whether it can save."""
    import dataclasses

    from gpu_scheduler.adapters.control import send_command
    from gpu_scheduler.errors import ControlError

    try:
        info = send_command(socket_path, {"cmd": "ping"}, timeout_s=1.0).get("daemon") or {}
    except ControlError:
        return saved
    error = str(info.get("save_error") or "")
    if error == str(saved.observed.get("save_error") or ""):
        return saved
    return dataclasses.replace(saved, observed={**saved.observed, "save_error": error})


def _all_jobs(settings: Settings, include_history: bool) -> list[Job]:
    from gpu_scheduler.adapters.store import StateStore

    store = StateStore(settings.files.state_file)
    saved = store.read_only_snapshot()
    jobs = list(saved.jobs) if saved else []
    if include_history:
        live = {j.job_id for j in jobs}
        jobs += [j for j in store.read_history(newest_first=False) if j.job_id not in live]
    return jobs


def _find_job(settings: Settings, key: str) -> Job:
    jobs = _all_jobs(settings, include_history=True)
    exact = [j for j in jobs if j.job_id == key]
    hits = exact or [j for j in jobs if j.spec.name == key or j.job_id.startswith(key)]
    if len(hits) != 1:
        raise GpuSchedulerError(f"no such job: {key}" if not hits else
                                f"{key!r} matches {len(hits)} jobs; give more of the id")
    return hits[-1]


def _status_view(settings: Settings):  # type: ignore[no-untyped-def]
    """The status view (status.build_view) of the state file as it is now."""
    from gpu_scheduler import status

    saved, alive = load_view(settings)
    return status.build_view(saved, alive, time.time(),
                             default_timeout_s=settings.scheduler.job_timeout_s)


def _state_stamp(settings: Settings) -> object:
    """Changes whenever the daemon saves (it replaces the file by rename: a new inode)."""
    try:
        st = settings.files.state_file.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(config_path(args))
    if args.watch and args.json:
        print("gpu-scheduler: status: --watch and --json do not go together", file=sys.stderr)
        return 2
    if args.watch:
        from gpu_scheduler.status_watch import watch

        return watch(lambda: _status_view(settings), interval=max(0.1, args.interval),
                     detailed=args.detailed, stamp=lambda: _state_stamp(settings))
    with _collector_paused():
        view = _status_view(settings)
        if args.json:
            _emit_json(view)
        else:
            from gpu_scheduler.status_render import StatusScreen

            _console().print(StatusScreen(view, detailed=args.detailed))
    return 0


def _live_overruns(settings: Settings) -> dict[str, str]:
    """The daemon's current GPU memory overruns (job id -> what), from the state file."""
    from gpu_scheduler.adapters.store import StateStore

    saved = StateStore(settings.files.state_file).read_only_snapshot()
    found = saved.observed.get("overruns") if saved is not None else None
    return dict(found) if isinstance(found, dict) else {}


def cmd_list_jobs(args: argparse.Namespace) -> int:
    from gpu_scheduler.status import job_row

    settings = load_settings(config_path(args))
    jobs = _all_jobs(settings, include_history=args.all)
    now, timeout = time.time(), settings.scheduler.job_timeout_s
    overruns = _live_overruns(settings)
    rows = [job_row(j, now, timeout, str(overruns.get(j.job_id, "")))
            for j in sorted(jobs, key=lambda j: j.seq)
            if not args.status or j.state == args.status]
    if args.json:
        _emit_json(rows)
    else:
        from gpu_scheduler.report_render import job_table

        _console().print(job_table(rows))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from gpu_scheduler.adapters.store import StateStore
    from gpu_scheduler.status import archived_by_state, metrics_view

    settings = load_settings(config_path(args))
    saved, alive = load_view(settings)
    archived = archived_by_state(saved.observed) if saved is not None else None
    if archived is None and saved is not None:  # an older daemon: count the history itself
        states = StateStore(settings.files.state_file).history_states()
        archived = {}
        for state in states.values():
            archived[state] = archived.get(state, 0) + 1
    figures = metrics_view(saved, alive, time.time(), archived)
    if args.json:
        _emit_json(figures)
    else:
        from gpu_scheduler.report_render import render_metrics

        _console().print(render_metrics(figures))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit status 0 healthy, 1 degraded, 2 down (for cron and systemd)."""
    from gpu_scheduler.health import gather

    settings = load_settings(config_path(args))
    try:
        view, problem = _status_view(settings), ""
    except StateFileError as exc:  # unreadable state: report it as a failed check, not a crash
        from gpu_scheduler.adapters.control import is_daemon_listening
        from gpu_scheduler.status import build_view

        alive = is_daemon_listening(_paths(settings).control_socket)
        view, problem = build_view(None, alive, time.time()), str(exc)
    report = gather(settings, view, problem)
    if args.json:
        _emit_json(report)
    else:
        from gpu_scheduler.report_render import render_health

        _console().print(render_health(report))
    return int(report["exit_code"])


def cmd_add(args: argparse.Namespace) -> int:
    from gpu_scheduler.core.jobfile import format_line, parse_jobs
    from gpu_scheduler.jobsource import is_pattern, jobs_files

    settings = load_settings(config_path(args))
    pattern = settings.files.jobs_file
    if args.jobs_file:
        target = Path(args.jobs_file)
    elif is_pattern(pattern) or Path(pattern).is_dir():
        raise GpuSchedulerError("jobs_file is a folder or glob: say which file with --jobs-file")
    else:
        target = jobs_files(pattern)[0]
    import shlex

    try:
        argv = shlex.split(args.args)
    except ValueError as exc:
        raise GpuSchedulerError(f"--args: {exc}") from None
    options: dict[str, str] = {}
    if args.share is not None:
        options["gpus"] = f"{args.share:g}"
    for key in ("name", "timeout", "retries"):
        if getattr(args, key) is not None:
            options[key] = str(getattr(args, key))
    script = str(Path(args.script).resolve()) if not os.path.isabs(args.script) else args.script
    try:
        line = format_line(args.priority, script, args.env, argv, args.gpus, options)
    except ValueError as exc:  # a bad --timeout, --name or --gpus: say which, no traceback
        raise GpuSchedulerError(str(exc)) from None
    parsed = parse_jobs(line + "\n", str(target))
    if parsed.errors:
        raise GpuSchedulerError(str(parsed.errors[0]))
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a+", encoding="utf-8") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(fh.tell() - 1)
            if fh.read(1) != "\n":
                fh.write("\n")
        fh.write(line + "\n")
    text = target.read_text(encoding="utf-8")
    tenant = "default" if not (is_pattern(pattern) or Path(pattern).is_dir()) else target.stem
    specs = parse_jobs(text, str(target), tenant=tenant).specs
    print(specs[-1].job_id if specs else "?")
    return 0


def cmd_screens(args: argparse.Namespace) -> int:
    from gpu_scheduler.adapters.screen import ScreenSessions

    settings = load_settings(config_path(args))
    sessions = ScreenSessions(settings.execution.screen_dir).list()
    prefix = settings.execution.session_prefix + "_"
    ours = sorted(name for name in sessions if name.startswith(prefix))
    if not ours:
        print("no job sessions")
    for name in ours:
        print(f"{sessions[name]}.{name}")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from gpu_scheduler.adapters.screen import ScreenSessions

    settings = load_settings(config_path(args))
    job = _find_job(settings, args.job)
    if not isinstance(job.status, Running):
        raise GpuSchedulerError(f"job {job.job_id} is {job.state}; see `gpu-scheduler logs {job.job_id}`")
    if _on_ray(settings, job):
        raise GpuSchedulerError(
            f"job {job.job_id} runs on the Ray cluster and has no terminal to attach to; "
            f"follow its output with `gpu-scheduler logs {job.job_id} --follow`")
    screens = ScreenSessions(settings.execution.screen_dir)
    if job.status.session not in screens.list():
        raise GpuSchedulerError(
            f"job {job.job_id} has no screen session (direct mode?); "
            f"follow it with `gpu-scheduler logs {job.job_id} --follow`")
    env = dict(os.environ)
    if settings.execution.screen_dir:
        env["SCREENDIR"] = str(settings.execution.screen_dir)
    argv = screens.attach_argv(job.status.session)
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def cmd_logs(args: argparse.Namespace) -> int:
    settings = load_settings(config_path(args))
    job = _find_job(settings, args.job)
    path = _paths(settings).log_path(job.job_id)
    if isinstance(job.status, Running) and _on_ray(settings, job):
        return _ray_logs(settings, job.status.session, args.follow)
    if not path.exists():
        raise GpuSchedulerError(f"no log yet for job {job.job_id} ({path})")
    out = sys.stdout.buffer
    with open(path, "rb") as fh:
        out.write(fh.read())
        out.flush()
        while args.follow:
            chunk = fh.read()
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if _find_job(settings, job.job_id).state != "running":
                out.write(fh.read())
                break
            time.sleep(0.2)
    return 0


def _on_ray(settings: Settings, job: Job) -> bool:
    """A running job the daemon submitted to Ray (pid 0: no local process)."""
    return isinstance(job.status, Running) and job.status.pid == 0 \
        and settings.execution.mode == "ray"


def _ray_logs(settings: Settings, session: str, follow: bool) -> int:
    """A running Ray job's output, from Ray (the daemon keeps a copy once it ends)."""
    from gpu_scheduler.adapters.ray_api import RealRayApi

    api = RealRayApi(settings.execution.ray.address)
    out = sys.stdout
    if not follow:
        out.write(api.logs(session))
        return 0
    for chunk in api.tail(session):
        out.write(chunk)
        out.flush()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from gpu_scheduler.config import check_config
    from gpu_scheduler.jobsource import JobSource, with_dependencies
    from gpu_scheduler.llmconfig import check_llm_config

    settings, config_errors = check_config(config_path(args))
    problems = [str(e) for e in config_errors]
    jobs = 0
    if settings is not None:
        _, llm_errors = check_llm_config(settings.files.llm_config_file)
        problems += [str(e) for e in llm_errors]
        count = _gpu_count(settings)
        source = JobSource(settings.files.jobs_file, settings.files.llm_config_file,
                           gpu_indices=range(count), precision_unit=settings.gpu.precision_unit,
                           allowed_script_paths=settings.security.allowed_script_paths,
                           tenant_caps={n: r.max_gpus for n, r in settings.tenants.items()})
        source.reload_llm()
        try:  # after= may name jobs that already ran (their lines may be gone)
            known = _all_jobs(settings, include_history=True)
        except StateFileError as exc:
            known = []
            problems.append(f"(jobs that already ran are not known: {exc})")
        result = with_dependencies(
            source.read(include_partial=True),
            {j.spec.name: j.job_id for j in known if j.spec.name},
            {j.job_id for j in known},
        )
        jobs = len(result.jobs)
        problems += [str(e) for e in result.errors if e not in source.llm_errors]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} error(s)", file=sys.stderr)
        return 1
    print(f"ok: config, llm_config and {jobs} job line(s) are valid")
    return 0


def _gpu_count(settings: Settings) -> int:
    from gpu_scheduler.cli_commands import make_probe_for

    probe, _ = make_probe_for(settings)
    try:
        return probe.count()
    finally:
        probe.close()


def cmd_config_sample(args: argparse.Namespace) -> int:
    from gpu_scheduler.config import config_sample

    print(config_sample())
    return 0
