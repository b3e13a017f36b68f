"""The subcommands behind `gpu-scheduler` (argument parsing lives in cli.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from gpu_scheduler.cli import config_path
from gpu_scheduler.config import Settings, load_settings
from gpu_scheduler.errors import ControlError, GpuSchedulerError, StateFileError
from gpu_scheduler.paths import DaemonPaths


def _paths(settings: Settings) -> DaemonPaths:
    return DaemonPaths(settings.files.state_file, settings.files.log_dir)


def _send(settings: Settings, request: dict[str, Any]) -> dict[str, Any]:
    from gpu_scheduler.adapters.control import send_command

    reply = send_command(_paths(settings).control_socket, request, timeout_s=5.0)
    if not reply.get("ok"):
        raise GpuSchedulerError(str(reply.get("error", "the daemon refused the request")))
    return reply


# ---------------------------------------------------------------------------- start / stop


class StateLock:
    """One scheduler per state file: an exclusive flock held for the daemon's lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        import fcntl

        make_state_folder(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateFileError(
                f"cannot create the lock file {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise GpuSchedulerError(
                f"another gpu-scheduler (pid {holder}) is already running on this state file "
                f"({self.path.with_suffix('')}); stop it with `gpu-scheduler stop` first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_state_folder(folder: Path) -> None:
    """Create the folder that holds the state file, or say plainly why it cannot be used."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        problem = "" if folder.is_dir() else "it exists but is not a folder"
    except FileExistsError:
        problem = "it exists but is not a folder"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        raise StateFileError(
            f"cannot use {folder} as the state folder: {problem}; "
            "set files.state_file in the config to a path in a writable folder"
        )


def make_launcher(mode: str, settings: Settings):  # type: ignore[no-untyped-def]
    import shutil

    from gpu_scheduler.adapters.launchers import DirectLauncher, ScreenLauncher

    paths = _paths(settings)
    if mode == "screen":
        if shutil.which("screen") is None:
            raise GpuSchedulerError(
                "GNU screen is not installed: install it (sudo apt-get install -y screen) "
                "or run with --mode direct"
            )
        return ScreenLauncher(
            paths.run_dir,
            screen_dir=settings.execution.screen_dir,
            warm_windows=settings.execution.warm_screen_sessions,
        )
    return DirectLauncher(paths.run_dir)


def make_probe_for(settings: Settings):  # type: ignore[no-untyped-def]
    from gpu_scheduler.adapters.gpus import make_probe

    sim = settings.gpu.simulated
    return make_probe(
        settings.gpu.provider,
        simulated_count=sim.count,
        simulated_memory_mib=sim.memory_mb,
        simulated_name=sim.name,
        simulated_state_dir=sim.state_dir,
    )


def cmd_start(args: argparse.Namespace) -> int:
    settings = load_settings(config_path(args))
    if args.daemon:
        return _start_detached(args, settings)
    from gpu_scheduler.adapters.store import StateStore
    from gpu_scheduler.daemon import Daemon
    from gpu_scheduler.logs import setup_logging

    mode = args.mode or settings.execution.mode
    paths = _paths(settings)
    logger = setup_logging(
        args.log_level or settings.logging.level,
        settings.files.log_file,
        console=settings.logging.console and not os.environ.get("GPU_SCHEDULER_DETACHED"),
        max_bytes=int(settings.logging.max_log_size_mb * 1024 * 1024),
        backup_count=settings.logging.backup_count,
    )
    store = StateStore(settings.files.state_file)
    with StateLock(paths.lock_file):
        if args.reset_state:
            moved = store.reset()
            if moved is not None:
                logger.warning("moved the old state file aside to %s", moved)
            # Ray mode: a new owner token, so jobs of the old state are not taken for ours
            (paths.state_dir / "ray_gpus.json").unlink(missing_ok=True)
        if mode == "ray":  # the cluster is both the probe and the launcher
            from gpu_scheduler.adapters.ray_cluster import connect

            probe, launcher = connect(settings.execution.ray.address, paths.state_dir,
                                      python=settings.execution.ray.python)
            warnings: list[str] = []
        else:
            probe, warnings = make_probe_for(settings)
            launcher = make_launcher(mode, settings)
        for warning in warnings:
            logger.warning(warning)
        daemon = Daemon(settings, probe=probe, launcher=launcher, store=store, mode=mode)
        _install_signals(daemon)
        paths.pid_file.write_text(f"{os.getpid()}\n")
        try:
            daemon.run()
        finally:
            paths.pid_file.unlink(missing_ok=True)
            probe.close()
    return 0


def _install_signals(daemon: Any) -> None:
    """First SIGINT/SIGTERM: graceful stop (jobs keep running). Second: exit now."""
    import signal

    seen = {"count": 0}

    def on_signal(signum: int, _frame: object) -> None:
        seen["count"] += 1
        if seen["count"] > 1:
            os._exit(128 + signum)
        daemon.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _start_detached(args: argparse.Namespace, settings: Settings) -> int:
    import subprocess

    from gpu_scheduler.adapters.control import is_daemon_listening

    paths = _paths(settings)
    argv = [sys.executable, "-m", "gpu_scheduler", "start", "--config", str(config_path(args))]
    for flag, value in (("--mode", args.mode), ("--log-level", args.log_level)):
        if value:
            argv += [flag, value]
    if args.reset_state:
        argv.append("--reset-state")
    make_state_folder(paths.state_dir)
    err_path = paths.state_dir / "daemon.stderr"
    with open(err_path, "wb") as err:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, start_new_session=True,
                                 env={**os.environ, "GPU_SCHEDULER_DETACHED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(err_path.read_text(errors="replace").strip() or "the daemon exited at once",
                  file=sys.stderr)
            return 1
        if is_daemon_listening(paths.control_socket):
            print(f"gpu-scheduler running in the background (pid {child.pid}); "
                  f"log: {settings.files.log_file}")
            return 0
        time.sleep(0.05)
    print("the daemon did not answer within 30 s; see " + str(settings.files.log_file),
          file=sys.stderr)
    return 1


def cmd_stop(args: argparse.Namespace) -> int:
    settings = load_settings(config_path(args))
    paths = _paths(settings)
    pid = _daemon_pid(paths)
    _send(settings, {"cmd": "stop", "kill_jobs": args.kill_jobs})
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if pid is None or not _pid_alive(pid):
            print("stopped" + ("" if args.kill_jobs else "; running jobs keep running"))
            return 0
        time.sleep(0.05)
    print(f"the daemon (pid {pid}) has not exited after {args.wait:g} s", file=sys.stderr)
    return 1


def _daemon_pid(paths: DaemonPaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    """A zombie counts as gone: a daemon whose parent has not reaped it yet (a supervisor,
    a container's pid 1, a test) has exited all the same."""
    from gpu_scheduler.adapters import processes

    return processes.is_alive(pid, None)


# ---------------------------------------------------------------------------- requests


def cmd_cancel_job(args: argparse.Namespace) -> int:
    reply = _send(load_settings(config_path(args)), {"cmd": "cancel", "job": args.job})
    print(f"{reply['job']}: {reply['message']}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    reply = _send(load_settings(config_path(args)), {"cmd": "retry", "job": args.job})
    print(f"{reply['job']}: {reply['message']}")
    return 0


def _gpu_arg(value: str) -> int | str:
    if value == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        return value  # a Ray node (NODE or NODE:K): the daemon knows the nodes


def cmd_pause_gpu(args: argparse.Namespace) -> int:
    reply = _send(load_settings(config_path(args)), {"cmd": "pause", "gpus": _gpu_arg(args.gpu)})
    print(reply["message"])
    return 0


def cmd_resume_gpu(args: argparse.Namespace) -> int:
    reply = _send(load_settings(config_path(args)), {"cmd": "resume", "gpus": _gpu_arg(args.gpu)})
    print(reply["message"])
    return 0


# ---------------------------------------------------------------------------- the rest

from gpu_scheduler.cli_simulate import cmd_simulate  # noqa: E402, F401 (cli.main looks it up)
from gpu_scheduler.cli_views import (  # noqa: E402
    cmd_add,
    cmd_attach,
    cmd_config_sample,
    cmd_health,
    cmd_list_jobs,
    cmd_logs,
    cmd_metrics,
    cmd_screens,
    cmd_status,
    cmd_validate,
)

__all__ = [
    "ControlError", "cmd_add", "cmd_attach", "cmd_cancel_job", "cmd_config_sample", "cmd_health",
    "cmd_list_jobs", "cmd_logs", "cmd_metrics", "cmd_pause_gpu", "cmd_resume_gpu", "cmd_retry",
    "cmd_screens", "cmd_start", "cmd_status", "cmd_stop", "cmd_validate",
]
