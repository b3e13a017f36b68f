"""The runner as a Ray node starts it: ``python -m gpu_scheduler.runner '<spec JSON>'`` with
``gpus: null`` (keep the CUDA_VISIBLE_DEVICES Ray set), ``record_path: null`` (no record: Ray
keeps the exit code) and the output on stdout (``log_path`` /dev/null), for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
JOB = """\
import os, sys
print("CVD=[" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>") + "]")
print("SHARE=" + os.environ["GPU_SCHEDULER_GPU_SHARE"], "ARGS=" + "|".join(sys.argv[1:]))
sys.exit(5)
"""


def run_runner(
    tmp_path: Path, env_gpus: str | None, **spec_changes: Any
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "job.py").write_text(JOB)
    spec: dict[str, Any] = {
        "job_id": "j1", "attempt": 1, "session": "j1", "script": str(tmp_path / "job.py"),
        "args": ["--x", "a b"], "conda_env": None, "gpus": None, "share": "0.5",
        "log_path": os.devnull, "record_path": None, "cwd": str(tmp_path),
        "python": sys.executable, "env": {}, "append_cuda_arg": False,
    }  # fmt: skip
    spec.update(spec_changes)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if env_gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = env_gpus
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "gpu_scheduler.runner", json.dumps(spec)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*")}


@pytest.fixture(autouse=True)
def _venv() -> None:
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the project's .venv")


def test_the_job_keeps_rays_gpus_and_its_exit_code_and_no_record_is_written(tmp_path: Path) -> None:
    done = run_runner(tmp_path, "3")
    assert done.returncode == 5, done.stderr
    assert "CVD=[3]" in done.stdout
    assert "SHARE=0.5 ARGS=--x|a b" in done.stdout
    assert files_in(tmp_path) == {"job.py"}  # no record, no log: Ray keeps both


def test_a_job_given_no_gpus_sees_none(tmp_path: Path) -> None:
    done = run_runner(tmp_path, None)
    assert done.returncode == 5, done.stderr
    assert "CVD=[]" in done.stdout  # empty, not unset: CUDA then shows no GPU at all


def test_explicit_gpus_still_win_over_the_environment(tmp_path: Path) -> None:
    done = run_runner(tmp_path, "3", gpus=[0, 1])
    assert done.returncode == 5 and "CVD=[0,1]" in done.stdout


def test_a_launch_failure_is_said_in_rays_log_when_there_is_no_record(tmp_path: Path) -> None:
    # regression: the message went only to the runner's log, /dev/null on Ray, so the daemon
    # could only report "Ray: FAILED" instead of why
    done = run_runner(tmp_path, "3", script=str(tmp_path / "missing.py"))
    assert done.returncode == 127
    output = done.stdout + done.stderr
    assert f"launch failed: script not found: {tmp_path / 'missing.py'}" in output
    assert files_in(tmp_path) == {"job.py"}


def test_a_bad_inline_spec_is_a_usage_error_not_a_crash(tmp_path: Path) -> None:
    # regression: the runner's C-only JSON parser raised SystemError (exit 1, a traceback)
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "gpu_scheduler.runner", "{not json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "usage: python -m gpu_scheduler.runner" in done.stderr
