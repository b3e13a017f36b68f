"""What every launcher shares: the request, the launched runner, the protocol, the runner's argv.

Kept apart from ``launchers.py`` so the screen launcher (``launchers_screen``) and the fake
(``launchers_fake``) can import these without importing ``launchers``, which re-exports them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from gpu_scheduler import runner
from gpu_scheduler.adapters.screen import SESSION_NAME
from gpu_scheduler.errors import LaunchError

RUNNER_PATH = Path(runner.__file__).resolve()


@dataclass(frozen=True)
class LaunchRequest:
    """Everything the runner needs to start one attempt of one job."""

    job_id: str
    attempt: int
    session: str  # letters, digits, _ - . only
    script: str
    args: tuple[str, ...]
    conda_env: str | None
    gpus: tuple[int, ...]
    share: str  # e.g. "0.5", exported as GPU_SCHEDULER_GPU_SHARE
    log_path: Path
    record_path: Path
    cwd: Path | None = None
    python: str | None = None  # interpreter for .py scripts without a conda env
    env: Mapping[str, str] = field(default_factory=dict)
    append_cuda_arg: bool = False

    def spec(self) -> dict[str, Any]:
        """The runner's spec, JSON-ready (paths as strings, tuples as lists)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(args=list(self.args), gpus=list(self.gpus), env=dict(self.env))
        for key in ("log_path", "record_path", "cwd"):
            data[key] = None if data[key] is None else str(data[key])
        return data


@dataclass(frozen=True)
class LaunchedProcess:
    """The runner (what the daemon follows and stops): pid and create time (POSIX s)."""

    pid: int
    pid_started_at: float


class Launcher(Protocol):
    """``launch`` returns once the runner exists (LaunchError if it cannot); ``stop`` ends
    the runner's whole tree (SIGTERM, SIGKILL after ``grace_s``) and its session;
    ``alive`` is false for a dead runner and for a pid now used by another process;
    ``live_sessions`` names the screen sessions that exist (empty for direct)."""

    mode: str

    def launch(self, req: LaunchRequest) -> LaunchedProcess: ...

    def stop(
        self, pid: int, pid_started_at: float | None, session: str, grace_s: float
    ) -> None: ...

    def alive(self, pid: int, pid_started_at: float | None) -> bool: ...

    def live_sessions(self) -> set[str]: ...

    def close(self) -> None: ...


# Imported rather than run as a script: a script is compiled on every start (~8 ms here),
# an imported module comes from its cached .pyc. Appended to sys.path, so the package
# cannot shadow the standard library.
_RUNNER_CODE = (
    f"import sys; sys.path.append({str(RUNNER_PATH.parents[1])!r}); "
    "from gpu_scheduler.runner import exit_now, main; exit_now(main())"
)


_WARM_CODE = (
    f"import sys; sys.path.append({str(RUNNER_PATH.parents[1])!r}); "
    "from gpu_scheduler.runner_host import wait_in_window; wait_in_window(sys.argv[1])"
)


def warm_window_argv(python_exe: str, fifo: Path) -> list[str]:
    """A warm screen window's command: the runner, imported, waiting on ``fifo`` for a job."""
    return [python_exe, "-I", "-S", "-c", _WARM_CODE, str(fifo)]


def runner_argv(python_exe: str, spec_path: Path) -> list[str]:
    """How launchers start the runner: ``python -I -S -c <import runner> SPEC``."""
    return [python_exe, "-I", "-S", "-c", _RUNNER_CODE, str(spec_path)]


def runner_request(req: LaunchRequest, spec_path: Path, **extra: Any) -> dict[str, Any]:
    """What a runner started from a warm process (the direct-mode host's child, a warm screen
    window) is told: ``runner_host.become_runner`` reads these keys."""
    return {
        "spec": str(spec_path), "record": str(req.record_path), "job_id": req.job_id,
        "attempt": req.attempt, "session": req.session, "cwd": os.getcwd(), **extra,
    }  # fmt: skip


def prepare_launch(run_dir: Path | None, req: LaunchRequest) -> Path:
    """Check the request, drop a stale record, write the spec (unless no ``run_dir``)."""
    if not SESSION_NAME.fullmatch(req.session):
        raise LaunchError(
            f"invalid session name {req.session!r}: use letters, digits, '_', '-' and '.' only"
        )
    spec_path = Path(run_dir or ".") / f"{req.job_id}.{req.attempt}.spec.json"
    try:
        # A record left at this path by an earlier run would be mistaken for this one's.
        req.record_path.unlink(missing_ok=True)
        req.record_path.parent.mkdir(parents=True, exist_ok=True)
        if run_dir is not None:
            spec_path.write_text(json.dumps(req.spec()))
    except OSError as exc:
        raise LaunchError(f"cannot write the job's spec or record folder: {exc}") from None
    return spec_path


def check_python(python_exe: str) -> str:
    """The runner's interpreter as a path; checked once, as screen would hide a bad one."""
    found = shutil.which(python_exe)
    if found is None:
        raise LaunchError(f"python for the runner not found or not executable: {python_exe}")
    return found
