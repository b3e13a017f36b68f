"""A damaged, missing or unwritable state file, and saves failing while the daemon runs.

Documented behaviour, each with a clear message and never a traceback:

* truncated or garbage state file, good backup -> start from the backup, warn naming the file
  and the problem;
* truncated or garbage, no good backup -> ``start`` refuses (exit 1), naming the path, what is
  wrong and ``--reset-state``; ``start --reset-state`` moves the bad file aside and starts
  fresh from jobs.txt, and jobs in the history file still do not run again;
* missing state file -> a fresh start;
* an unusable state folder -> a clear error;
* saves failing mid-run (a full disk) -> no new launches, said loudly, the daemon keeps running
  and launching resumes once saves work again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpu_scheduler.adapters.control import send_command
from gpu_scheduler.adapters.store import StateStore
from gpu_scheduler.core.jobfile import parse_jobs
from gpu_scheduler.core.model import Job
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness

pytestmark = pytest.mark.slow


def _events(d: DaemonHarness, event: str) -> list[dict[str, Any]]:
    path = d.root / "scheduler.log"
    found = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


def _warnings(d: DaemonHarness) -> str:
    path = d.root / "scheduler.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(json.loads(x)["message"] for x in lines if '"WARNING"' in x)


def _tagged(d: DaemonHarness, tag: str) -> Job | None:
    hits = [j for j in d.jobs().values() if tag in j.spec.args]
    return hits[0] if hits else None


def _runs(d: DaemonHarness, tag: str) -> int:
    return sum(tag in r["rest"] for r in d.records())


def _wait_state(d: DaemonHarness, tag: str, state: str, timeout: float = 20) -> Job:
    return wait_until(
        lambda: (job := _tagged(d, tag)) is not None and job.state == state and job,
        timeout=timeout,
        interval=0.05,
        what=f"{tag} {state}",
    )


def _backup(d: DaemonHarness) -> Path:
    return StateStore(d.state_file).backup


DAMAGE: dict[str, Callable[[Path], str]] = {
    # how to damage the file -> a phrase the message must contain
    "truncated": lambda p: (
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "not valid JSON (truncated?)",
    )[1],
    "garbage": lambda p: (p.write_bytes(bytes(range(256)) * 4), "not UTF-8")[1],
    "missing": lambda p: (p.unlink(), "missing")[1],
}


def _run_one_job(d: DaemonHarness, tag: str = "done") -> Job:
    """Start, complete one job, let a later save make the backup hold it too, stop."""
    d.start()
    d.append(d.job_line(f"--tag {tag}"))
    job = _wait_state(d, tag, "completed")

    def backup_knows() -> bool:
        saved = StateStore(_backup(d)).read_only_snapshot()  # reads the .bak as its main file
        return saved is not None and any(
            j.job_id == job.job_id and j.state == "completed" for j in saved.jobs
        )

    wait_until(backup_knows, what="a backup that knows the job completed")
    assert d.stop() == 0
    return job


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_bad_state_file_with_a_good_backup_starts_from_the_backup(
    make_daemon: Callable[..., DaemonHarness], damage: str
) -> None:
    d = make_daemon("direct")
    job = _run_one_job(d)
    phrase = DAMAGE[damage](d.state_file)
    d.start()
    warned = _warnings(d)
    assert f"{d.state_file}: {phrase}" in warned, warned
    assert "carrying on from the backup" in warned
    assert _events(d, "state_from_backup")
    d.append(d.job_line("--tag after"))
    _wait_state(d, "after", "completed")
    jobs = d.jobs()
    assert jobs[job.job_id].state == "completed" and _runs(d, "done") == 1
    assert d.stop() == 0
    if damage != "missing":
        kept = list(d.state_file.parent.glob("state.json.bad-*"))
        assert len(kept) == 1, "a copy of the bad file is kept for a post-mortem"
    assert "Traceback" not in d.daemon_output()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_bad_state_file_without_a_backup_refuses_to_start_until_reset(
    make_daemon: Callable[..., DaemonHarness], damage: str
) -> None:
    d = make_daemon("direct")
    job = _run_one_job(d)
    store = StateStore(d.state_file)
    store.append_history([d.jobs()[job.job_id]])  # as the daemon archives old finished jobs
    phrase = DAMAGE[damage](d.state_file)
    _backup(d).unlink()
    d.append(d.job_line("--tag new"))

    refused = d.cli("start", timeout=30)
    assert refused.returncode == 1
    message = refused.stderr
    assert "Traceback" not in message + refused.stdout
    assert str(d.state_file) in message and phrase in message
    assert f"{_backup(d)}: missing" in message
    assert "--reset-state" in message
    assert not d.listening()

    d.start("--reset-state")
    _wait_state(d, "new", "completed")
    moved = list(d.state_file.parent.glob("state.json.bad-*"))
    assert len(moved) == 1 and phrase != "" and moved[0].stat().st_size > 0
    assert _runs(d, "done") == 1, "a job in the history ran again after --reset-state"
    assert d.stop() == 0
    assert "Traceback" not in d.daemon_output()


def test_missing_state_file_and_backup_is_a_fresh_start(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    d = make_daemon("direct")
    assert not d.state_file.parent.exists()
    d.start()
    d.append(d.job_line("--tag first"))
    _wait_state(d, "first", "completed")
    assert d.stop() == 0
    assert "Traceback" not in d.daemon_output()
    assert not _events(d, "state_from_backup") and not _warnings(d)


@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_unusable_state_folder_is_a_clear_error(
    make_daemon: Callable[..., DaemonHarness], where: str
) -> None:
    d = make_daemon("direct")
    blocker = d.root / "not-a-folder"
    blocker.write_text("a file where the state folder should be\n")
    if where == "under a file":
        state_file, folder = blocker / "state" / "state.json", blocker / "state"
    else:
        state_file = Path(f"/proc/gpu-scheduler-test-{os.getpid()}/state.json")
        folder = state_file.parent
    d.write_config(files={**d.config["files"], "state_file": str(state_file)})
    for args in (("start",), ("start", "--daemon")):
        result = d.cli(*args, timeout=30)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr + result.stdout
        assert f"cannot use {folder} as the state folder" in result.stderr
        assert "files.state_file" in result.stderr


def _break_saves(d: DaemonHarness) -> None:
    """Make every save fail while the state file stays readable: put a folder where the
    backup goes (a save rotates the current file onto it with a rename, which then fails),
    as a full disk would fail it. The daemon may be saving meanwhile, so retry."""
    backup = _backup(d)

    def swapped() -> bool:
        try:
            backup.unlink(missing_ok=True)
            backup.mkdir()
        except FileExistsError:
            return backup.is_dir()
        return True

    wait_until(swapped, timeout=10, what="the backup swapped for a folder")


def test_failing_saves_stop_launching_loudly_and_launching_resumes(
    make_daemon: Callable[..., DaemonHarness],
) -> None:
    d = make_daemon("direct")
    d.start()
    d.append(d.job_line("--tag before"))
    _wait_state(d, "before", "completed")
    wait_until(_backup(d).exists, what="a first backup")  # the file is being rotated
    _break_saves(d)
    failed = wait_until(lambda: _events(d, "state_save_failed"), timeout=10,
                        what="a failed save to be logged")[0]  # fmt: skip
    assert failed["level"] == "ERROR"
    assert "CANNOT SAVE STATE, no new jobs will be launched" in failed["message"]
    assert str(d.state_file) in failed["message"]

    d.append(d.job_line("--tag during"))
    during = _line_id(d, "during")
    wait_until(lambda: any(e.get("job_id") == during for e in _events(d, "enqueued")),
               timeout=10, what="the new line to be read")  # fmt: skip
    ping = send_command(d.paths.control_socket, {"cmd": "ping"}, timeout_s=5)
    assert "cannot save the scheduler state" in ping["daemon"]["save_error"]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a bounded look for something that must not happen
        assert _runs(d, "during") == 0, "a job was launched although its launch was not saved"
        time.sleep(0.05)
    assert d.proc is not None and d.proc.poll() is None, "the daemon must keep running"
    assert len(_events(d, "state_save_failed")) == 1, "said once, not once per retry"

    shutil.rmtree(_backup(d))  # space again
    _wait_state(d, "during", "completed")
    assert _events(d, "state_saved"), "the recovery is logged"
    assert _runs(d, "during") == 1 and _runs(d, "before") == 1
    ping = send_command(d.paths.control_socket, {"cmd": "ping"}, timeout_s=5)
    assert ping["daemon"]["save_error"] == ""
    assert d.stop() == 0
    assert "Traceback" not in d.daemon_output()


def test_status_shows_that_saves_are_failing(make_daemon: Callable[..., DaemonHarness]) -> None:
    d = make_daemon("direct")
    d.start()
    d.append(d.job_line("--tag before"))
    _wait_state(d, "before", "completed")
    wait_until(_backup(d).exists, what="a first backup")
    _break_saves(d)
    wait_until(lambda: _events(d, "state_save_failed"), timeout=10, what="a failed save")
    status = d.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert "cannot save" in json.loads(status.stdout)["daemon"]["save_error"]


def _line_id(d: DaemonHarness, tag: str) -> str:
    """The job id of the jobs.txt line tagged ``tag`` (the state may not say: saves fail)."""
    parsed = parse_jobs(d.jobs_file.read_text(), str(d.jobs_file))
    [spec] = [s for s in parsed.specs if tag in s.args]
    return spec.job_id
