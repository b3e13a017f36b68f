"""The per-job runner: ``python -m gpu_scheduler.runner SPEC.json`` (or the spec's JSON itself).

Why it exists: GNU screen does not report the exit code of what it ran, and a job must be
told its GPUs. The launcher writes a spec (JSON) and starts this runner -- inside a screen
session or as a plain child. The runner sets the job's environment, starts the job on a new
pseudo-terminal (so it sees a tty: colours, progress bars), copies that terminal's output to
its own stdout (the screen window) and to the job's log, and writes a record file the daemon
reads: ``started`` right after the spawn, then ``exited`` with the exit code, or
``launch_failed`` (exit 127) when the job could not be started at all.

Constraints: stdlib only (plus ``runner_records``, which has the record format) and few
imports: it starts once per job, so its import time is part of every job's start latency;
the launchers start it with ``python -I -S`` for the same reason (``launchers.runner_argv``).
The job stays in the runner's process group, so ``killpg`` of the runner's group -- what
the daemon does to stop a job -- reaches the job and everything it started.
"""

from __future__ import annotations

import _thread
import os
import select
import sys
import time

from gpu_scheduler.runner_records import dumps, loads, own_start_time, write_all, write_record

# Start-up time counts here (once per job). The public `signal` and `threading` pull in enum
# and collections (~10 ms on the 2-core test machine); their C cores are all we need.
try:
    import _signal as signal
except ImportError:  # not CPython
    import signal  # type: ignore[no-redef]

TYPE_CHECKING = False  # (typing.TYPE_CHECKING would import typing: ~5 ms per job start)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

LAUNCH_FAILED_EXIT = 127
_SI_KERNEL = 0x80  # si_code of signals sent by the kernel itself, e.g. ^C typed on a tty
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_WAITED = {*_FORWARDED, signal.SIGCHLD, signal.SIGWINCH}
# Dispositions a job must start with, whatever the runner inherited (Python ignores SIGPIPE;
# a daemon started with nohup or `&` ignores SIGHUP or SIGINT).
_RESET = (*_WAITED, signal.SIGPIPE, signal.SIGXFSZ)
_DRAIN_IDLE_S = 0.1  # after the job exits: stop copying once its terminal is quiet this long
_DRAIN_MAX_S = 1.0  # ... or after this long, when a leftover grandchild keeps it busy
_DEFAULT_SIZE = (40, 120)  # rows, columns of the job's terminal when ours is not a tty
_CONDA_CHECK_TIMEOUT_S = 120.0


class LaunchFailure(Exception):
    """The job could not be started; the message is shown to the user as is."""


# --------------------------------------------------------------------------- the command


def _which(name: str, env: Mapping[str, str]) -> str | None:
    """``name`` resolved like exec would: as a path if it has a slash, else along $PATH."""
    if "/" in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def job_env(spec: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: ``base``, then ``spec.env``, then its GPUs, share and attempt
    (last, so a job's own env cannot step outside the GPUs it was given)."""
    env = dict(base)
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    if spec["gpus"] is None:  # on a Ray node: the GPUs Ray gave it (none: see none)
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec["gpus"])
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["GPU_SCHEDULER_JOB_ID"] = str(spec["job_id"])
    env["GPU_SCHEDULER_GPU_SHARE"] = str(spec["share"])
    env["GPU_SCHEDULER_ATTEMPT"] = str(spec["attempt"])
    return env


def job_command(spec: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, list[str]]:
    """(executable path, argv) for the job -- never through a shell, so arguments arrive as
    written. Relative paths are relative to the current directory (the job's cwd).
    Raises LaunchFailure for a missing script, interpreter, conda or conda env."""
    script, conda_env = str(spec["script"]), spec.get("conda_env")
    args = [str(a) for a in spec.get("args") or ()]
    if spec.get("append_cuda_arg"):
        args += ["--cuda", env.get("CUDA_VISIBLE_DEVICES", "")]
    where = f"(working directory {os.getcwd()})"
    if script.endswith(".py"):
        if not os.path.isfile(script):
            raise LaunchFailure(f"script not found: {script} {where}")
        python = spec.get("python") or _which("python3", env) or sys.executable
        argv = ["python" if conda_env else python, script, *args]
    else:
        if "/" not in script and os.path.isfile(script):
            script = "./" + script  # a file here wins over $PATH, as a shell's ./ would
        argv = [script, *args]
        if not conda_env and _which(script, env) is None:
            if os.path.exists(script):
                raise LaunchFailure(f"script is not executable: {script} (chmod +x it)")
            raise LaunchFailure(f"script not found: {script} {where}")
    if conda_env:
        conda = env.get("CONDA_EXE") or _which("conda", env)
        if not conda or _which(conda, env) is None:
            raise LaunchFailure(
                f"conda not found (needed for env {conda_env!r}): set CONDA_EXE or put it on PATH"
            )
        _check_conda_env(conda, str(conda_env), env)
        return conda, [conda, "run", "-n", str(conda_env), "--no-capture-output", *argv]
    exe = _which(argv[0], env)
    if exe is None:
        raise LaunchFailure(f"interpreter not found: {argv[0]}")
    return exe, argv


def _check_conda_env(conda: str, name: str, env: Mapping[str, str]) -> None:
    """Fail the launch unless ``conda env list --json`` knows ``name`` (or it is ``base``).
    Runs before the runner blocks its signals, so a stop request simply ends it."""
    import json
    import subprocess

    try:
        done = subprocess.run(
            [conda, "env", "list", "--json"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_CONDA_CHECK_TIMEOUT_S,
            check=False,
        )
        names = {os.path.basename(str(p).rstrip("/")) for p in json.loads(done.stdout)["envs"]}
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        raise LaunchFailure(f"`{conda} env list --json` failed: {exc}") from None
    if name != "base" and name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise LaunchFailure(f"conda env not found: {name} (known: {known})")


def _spawn(exe: str, argv: list[str], env: Mapping[str, str], slave: int) -> int:
    """Start the job on the pty with an empty signal mask and default dispositions."""
    actions = [(os.POSIX_SPAWN_DUP2, slave, fd) for fd in (0, 1, 2)]
    return os.posix_spawn(
        exe, argv, dict(env), file_actions=actions, setsigmask=(), setsigdef=_RESET
    )


# --------------------------------------------------------------------------- terminal


def _configure_terminals(slave: int) -> None:
    """The job's pty: no echo (typed input is already echoed by the screen window), no
    \\n -> \\r\\n (the log stays plain; the window's own terminal adds \\r), the window's
    size. The window's terminal (our stdin in screen): ^Z switched off, as it would stop the
    job with no shell there to resume it (^C and ^\\ keep working)."""
    import fcntl
    import termios

    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR
    attrs[3] &= ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    size = _winsize(*_DEFAULT_SIZE)
    try:
        window_size = fcntl.ioctl(1, termios.TIOCGWINSZ, b"\0" * 8)
        if window_size[0:2] != b"\0\0" and window_size[2:4] != b"\0\0":  # rows, columns
            size = window_size
    except OSError:
        pass
    fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    try:
        if os.tcgetpgrp(0) == os.getpgrp():  # (changing it from the background would stop us)
            window = termios.tcgetattr(0)
            window[6][termios.VSUSP] = b"\0"
            termios.tcsetattr(0, termios.TCSANOW, window)
    except (OSError, termios.error):
        pass  # not a terminal (direct mode)


def _winsize(rows: int, columns: int) -> bytes:
    """A ``struct winsize`` (four native unsigned shorts), without importing struct: one
    module less to load at every job's start (~0.4 ms here)."""
    return b"".join(n.to_bytes(2, sys.byteorder) for n in (rows, columns, 0, 0))


def _read(fd: int, size: int) -> bytes | None:
    """Up to ``size`` bytes; None when nothing is there yet, b"" at EOF or on an error."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _pump(master: int, log_fd: int, stop_fd: int, done: _thread.LockType) -> None:
    """Copy the job's terminal to stdout and the log, and our stdin to the job, until the
    job's terminal closes, or -- once ``stop_fd`` says the job exited -- it goes quiet."""
    out_fd: int | None = 1
    watched = [master, stop_fd, 0]
    deadline: float | None = None
    try:
        while True:
            timeout = None if deadline is None else min(_DRAIN_IDLE_S, deadline - time.monotonic())
            if timeout is not None and timeout <= 0:
                return
            ready = select.select(watched, [], [], timeout)[0]
            if not ready:
                return
            if master in ready:
                data = _read(master, 65536)
                if data == b"":  # EIO: every process holding the terminal has closed it
                    return
                if data:
                    write_all(log_fd, data)
                    if out_fd is not None:
                        try:
                            write_all(out_fd, data)
                        except OSError:  # the screen window is gone; keep logging
                            out_fd = None
            if 0 in ready:
                typed = _read(0, 4096)
                if typed == b"":  # EOF (or /dev/null): let the job read EOF too
                    watched.remove(0)
                    typed = b"\x04"
                try:
                    os.write(master, typed or b"")
                except OSError:  # the job's input is full or closed: drop what was typed
                    pass
            if stop_fd in ready:
                watched.remove(stop_fd)
                deadline = time.monotonic() + _DRAIN_MAX_S
    finally:
        done.release()


# --------------------------------------------------------------------------- supervision


def _forward(sig: int, si_code: int, job_pid: int) -> None:
    """Pass a stop signal on to the job's process group (ours), without signalling twice.

    A signal the kernel raised itself (^C or ^\\ typed in the screen window, a hangup) went
    to the terminal's whole foreground group, the job included: forwarding it would make the
    job see it twice ("press ^C again to force quit"). Anything sent with kill() is forwarded.
    """
    if si_code == _SI_KERNEL:
        return
    if os.getpgrp() != os.getpid():  # not a group leader (started by hand): the job alone
        os.kill(job_pid, sig)
        return
    try:
        os.killpg(os.getpid(), sig)
    except ProcessLookupError:
        return
    signal.sigtimedwait([sig], 0)  # the copy that killpg just queued for ourselves


def _resize(master: int, job_pid: int) -> None:
    """Give the job's terminal the screen window's new size and tell the job."""
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(1, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)
        os.kill(job_pid, signal.SIGWINCH)
    except OSError:
        pass


def _supervise(job_pid: int, master: int, log_fd: int) -> int:
    """Copy output and pass on signals until the job exits; its shell-style exit code."""
    os.set_blocking(master, False)
    stop_r, stop_w = os.pipe()
    done = _thread.allocate_lock()  # held while _pump copies
    done.acquire()
    _thread.start_new_thread(_pump, (master, log_fd, stop_r, done))
    while True:
        info = signal.sigwaitinfo(_WAITED)
        if info.si_signo == signal.SIGCHLD:
            pid, status = os.waitpid(job_pid, os.WNOHANG)
            if pid == job_pid:
                break
        elif info.si_signo == signal.SIGWINCH:
            _resize(master, job_pid)
        else:
            _forward(info.si_signo, info.si_code, job_pid)
    os.write(stop_w, b"x")
    done.acquire(timeout=_DRAIN_MAX_S + 1.0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _log_line(log_fd: int, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_all(log_fd, f"[gpu_scheduler {stamp}] {text}\n".encode())


def _start(spec: Mapping[str, Any]) -> tuple[int, int, int, list[str]]:
    """Open the log, spawn the job on a new pty: (log fd, job pid, pty master, argv).
    Raises LaunchFailure (after logging it, once the log is open)."""
    log_path = str(spec["log_path"])
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LaunchFailure(f"cannot open log file {log_path}: {exc.strerror}") from None
    try:
        if spec.get("cwd"):
            try:
                os.chdir(spec["cwd"])
            except OSError as exc:
                raise LaunchFailure(
                    f"cannot use working directory {spec['cwd']}: {exc.strerror}"
                ) from None
        env = job_env(spec, os.environ)
        exe, argv = job_command(spec, env)
        # From here on stop signals wait for sigwaitinfo() in _supervise, which also tells
        # who sent them; one arriving before the job exists is passed on once it does.
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        master, slave = os.openpty()
        try:
            _configure_terminals(slave)
            pid = _spawn(exe, argv, env, slave)
        except OSError as exc:
            os.close(master)
            raise LaunchFailure(f"cannot start {argv[0]}: {exc.strerror}") from None
        finally:
            os.close(slave)
    except LaunchFailure as exc:
        _log_line(log_fd, f"launch failed: {exc}")
        raise
    return log_fd, pid, master, argv


def main(argv: list[str] | None = None) -> int:
    """Run one job as the spec says; returns the job's exit code (127: launch failed)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        (spec_path,) = args
        if spec_path.startswith("{"):  # the spec itself (Ray: no shared run folder)
            spec = loads(spec_path)
        else:
            with open(spec_path, "rb") as f:
                spec = loads(f.read().decode())
        record_path, job_id, attempt = spec["record_path"], spec["job_id"], spec["attempt"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"usage: python -m gpu_scheduler.runner SPEC.json ({exc!r})", file=sys.stderr)
        return 2
    base = {
        "job_id": job_id,
        "attempt": attempt,
        "session": spec.get("session"),
        "runner_pid": os.getpid(),
        "runner_started_at": own_start_time(),
    }
    try:
        log_fd, job_pid, master, job_argv = _start(spec)
    except (LaunchFailure, KeyError) as exc:
        message = str(exc) if isinstance(exc, LaunchFailure) else f"spec lacks {exc}"
        # The screen window: say it there too (the log already has it). On Ray (no record,
        # log_path /dev/null) stderr is the only place left: Ray's log, where the daemon
        # looks for "launch failed:" (RayLauncher.exit_record).
        if os.isatty(2) or record_path is None:
            print(f"gpu_scheduler: launch failed: {message}", file=sys.stderr)
        failed = {**base, "state": "launch_failed", "message": message}
        _record(record_path, {**failed, "finished_at": time.time()})
        return LAUNCH_FAILED_EXIT
    started = {**base, "state": "started", "job_pid": job_pid, "started_at": time.time()}
    _record(record_path, started, durable=False)
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "") if spec["gpus"] is None else \
        ",".join(str(g) for g in spec["gpus"])
    gpus = gpus or "none"
    _log_line(log_fd, f"job {job_id} attempt {attempt} on GPUs {gpus}: {dumps(job_argv)}")
    code = _supervise(job_pid, master, log_fd)
    _log_line(log_fd, f"job {job_id} attempt {attempt} exited with code {code}")
    _record(
        record_path, {**started, "state": "exited", "exit_code": code, "finished_at": time.time()}
    )
    return code


def _record(path: str | None, record: Mapping[str, Any], durable: bool = True) -> None:
    """Write a record; a Ray node has no record (the daemon asks Ray for the exit code)."""
    if path is not None:
        write_record(path, record, durable)


def exit_now(code: int) -> NoReturn:
    """End the runner with ``code`` at once, skipping the interpreter's teardown: ~3 ms of CPU
    per job on the 2-core test machine, and the daemon sees the exit that much sooner. Nothing
    is lost: the runner writes with os.write, its records are on disk, its threads are done."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # None, closed, or its pipe is gone
            pass
    os._exit(code & 0xFF)


if __name__ == "__main__":
    exit_now(main())
