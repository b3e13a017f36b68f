"""`status --watch` in a real terminal (tmux), and the status commands against a real daemon.

tmux runs on a private server socket (``tmux -L <unique>``) with a unique session name; teardown
kills that session and that server by name, even when the test fails. The pane is kept after its
process exits (``remain-on-exit``), and the command's exit status is written to a file.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpu_scheduler.adapters.store import StateStore
from gpu_scheduler.core.model import Running
from gpu_scheduler.status_sample import sample_state, spec
from tests.helpers import wait_until
from tests.integration.harness import DaemonHarness

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class Tmux:
    """One tmux session on its own server socket: run a command, read the screen, type keys.

    The command runs under ``bash -c 'COMMAND; echo $? > FILE'``: tmux marks a pane dead when
    its terminal closes but does not always learn the exit status, so the status goes to a file
    (bash, given Ctrl-C, waits for its child and carries on if the child handled it).
    """

    def __init__(self, folder: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.socket, self.name = f"gs-test-{tag}", f"gs-watch-{tag}"
        self.status_file = folder / f"exit-status-{tag}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=10, check=False)  # fmt: skip

    def start(self, command: str, width: int = 80, height: int = 30) -> None:
        script = f"{command}; echo $? > {shlex.quote(str(self.status_file))}"
        done = self.run("new-session", "-d", "-x", str(width), "-y", str(height), "-s", self.name,
                        "-c", str(REPO), f"bash -c {shlex.quote(script)}",
                        ";", "set-option", "-t", self.name, "remain-on-exit", "on",
                        ";", "set-option", "-t", self.name, "window-size", "manual")  # fmt: skip
        assert done.returncode == 0, done.stderr

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name).stdout

    def value(self, fmt: str) -> str:
        done = self.run("display-message", "-p", "-t", self.name, fmt)
        assert done.returncode == 0, f"tmux display-message {fmt}: {done.stderr}"
        return done.stdout.strip()

    def exit_status(self) -> str:
        """"" while the command runs, then its exit status (and the pane's process is gone)."""
        if self.value("#{pane_dead}") != "1" or not self.status_file.exists():
            return ""
        return self.status_file.read_text().strip()

    def close(self) -> None:
        socket = self.run("display-message", "-p", "#{socket_path}").stdout.strip()
        self.run("kill-session", "-t", self.name)
        self.run("kill-server")
        if socket.endswith(self.socket):  # tmux can leave its socket file behind
            Path(socket).unlink(missing_ok=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None or shutil.which("bash") is None:
        pytest.skip("tmux is not installed (scripts/test.sh installs it when run as root)")
    session = Tmux(tmp_path)
    try:
        yield session
    finally:
        session.close()


def write_config(root: Path) -> Path:
    config = root / "config.json"
    config.write_text(json.dumps({
        "gpu": {"provider": "simulated"},
        "files": {"jobs_file": str(root / "jobs.txt"), "state_file": str(root / "state.json"),
                  "log_dir": str(root / "logs"), "log_file": str(root / "scheduler.log"),
                  "llm_config_file": str(root / "llm.json")},
        "execution": {"mode": "direct"},
    }))  # fmt: skip
    (root / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
    return config


def with_new_running_job(now: float, label: str):  # type: ignore[no-untyped-def]
    """The sample state with one more running job, so a redraw has something new to show."""
    from gpu_scheduler.core.model import Job

    saved = sample_state(now)
    new = Job(spec(label, 20, "/home/ana/exp/eval.py"), 250,
              Running(now - 5, (3,), 250, "gpujob_3_eval_new", 4321), 99, now - 10, attempts=1)  # fmt: skip
    return replace(saved, jobs=(*saved.jobs, new))


def test_watch_draws_redraws_on_a_save_adapts_to_width_and_exits_on_ctrl_c(
    tmux: Tmux, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    store = StateStore(tmp_path / "state.json")
    store.save(sample_state(time.time()))
    tmux.start(f"{sys.executable} -m gpu_scheduler status --watch --interval 5 --config {config}")

    first = wait_until(lambda: "Finished ·" in (s := tmux.screen()) and s, timeout=20,
                       what="the first frame")  # fmt: skip
    assert "GPUs · 4 · 2.25 of 4 allocated" in first and "eval-mmlu" in first
    assert "● down" in first  # no daemon answers: said plainly, in the header
    assert max(len(line) for line in first.splitlines()) <= 80

    # A save (a new inode) is drawn at once, long before the 5 s interval is up.
    started = time.monotonic()
    store.save(with_new_running_job(time.time(), "brand-new-job"))
    wait_until(lambda: "brand-new-job" in tmux.screen(), timeout=4, what="the redraw")
    assert time.monotonic() - started < 4

    # Wider terminal, wider layout: GPU names and pids appear (even though COLUMNS=80 may be
    # in the environment, as it is under pytest).
    tmux.run("resize-window", "-t", tmux.name, "-x", "120", "-y", "30")
    wide = wait_until(lambda: "A100-SXM4-80GB" in (s := tmux.screen()) and s, timeout=10,
                      what="the wide layout")  # fmt: skip
    assert "4321" in wide

    # Redrawn in place on the alternate screen: nothing piles up in the scroll-back.
    # (tmux may answer an empty string while it redraws: ask again, briefly)
    seen: list[str] = []
    wait_until(lambda: seen.append(tmux.value("#{alternate_on} #{history_size}")) or
               seen[-1] == "1 0", timeout=3, what=f"alternate screen, no history: {seen[-3:]}")  # fmt: skip

    tmux.run("send-keys", "-t", tmux.name, "C-c")
    status = wait_until(tmux.exit_status, timeout=10, what="status --watch to exit on Ctrl-C")
    assert status == "0"
    after = tmux.screen()
    assert "GPUs ·" not in after and "Traceback" not in after  # the terminal is as it was


def test_watch_keeps_going_through_a_bad_state_file(tmux: Tmux, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state.json"
    StateStore(state).save(sample_state(time.time()))
    tmux.start(f"{sys.executable} -m gpu_scheduler status --watch --interval 0.2 --config {config}")
    wait_until(lambda: "eval-mmlu" in tmux.screen(), timeout=20, what="the first frame")
    backup = state.with_suffix(".json.bak")
    backup.unlink(missing_ok=True)
    state.write_text("{broken")
    wait_until(lambda: "cannot load the scheduler state" in tmux.screen(), timeout=10,
               what="the error shown in place of the screen")  # fmt: skip
    assert tmux.exit_status() == ""  # still running
    StateStore(state).save(sample_state(time.time()))
    wait_until(lambda: "eval-mmlu" in tmux.screen(), timeout=10, what="the screen back")
    tmux.run("send-keys", "-t", tmux.name, "C-c")
    assert wait_until(tmux.exit_status, timeout=10, what="exit") == "0"


# ----------------------------------------------------------------------------- a real daemon


def test_status_metrics_health_against_a_running_daemon(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon: DaemonHarness = make_daemon("direct")
    daemon.start()
    daemon.append(daemon.job_line("--llm small-model", sleep=30),
                  daemon.job_line("--llm tiny-model", exit_code=3),
                  "0, /no/such/script.py, , , gpu=0.5")  # fmt: skip
    daemon.wait_jobs(lambda jobs: any(j.state == "failed" for j in jobs.values())
                     and any(j.state == "running" for j in jobs.values()), what="a run and a fail")  # fmt: skip

    status = daemon.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["daemon"]["status"] == "up" and view["daemon"]["mode"] == "direct"
    assert view["counts"]["running"] == 1 and view["counts"]["failed"] == 1
    assert view["errors"] and view["errors"][0]["line_no"] == 3
    running = next(r for r in view["jobs"] if r["state"] == "running")
    gpu = next(g for g in view["gpus"] if g["index"] == running["gpus"][0])
    assert [j["id"] for j in gpu["jobs"]] == [running["id"]] and gpu["allocated"] == 0.5

    table = daemon.cli("status")
    assert table.returncode == 0 and "● up" in table.stdout and running["id"] in table.stdout
    assert "jobs.txt:3" in table.stdout

    listed = json.loads(daemon.cli("list-jobs", "--status", "failed", "--json").stdout)
    assert [r["exit_code"] for r in listed] == [3]

    # The daemon samples the GPUs each tick and writes the Prometheus textfile.
    wait_until(lambda: (daemon.state().observed.get("metrics") or {}).get("samples", 0) >= 2,
               timeout=20, what="two GPU samples in the state")  # fmt: skip
    metrics = json.loads(daemon.cli("metrics", "--json").stdout)
    assert metrics["window"]["samples"] >= 2 and metrics["jobs"]["by_state"]["failed"] == 1
    assert any((g["allocated_peak"] or 0) >= 0.5 for g in metrics["gpus"])
    prom = daemon.state_file.parent / "metrics.prom"
    names = {f.name for f in text_string_to_metric_families(prom.read_text())}
    assert {"gpu_scheduler_jobs", "gpu_scheduler_gpu_utilization_ratio"} <= names

    healthy = daemon.cli("health", "--json")
    assert healthy.returncode == 0, healthy.stdout
    daemon.cli("cancel-job", running["id"])
    assert daemon.stop() == 0
    down = daemon.cli("health")
    assert down.returncode == 2 and "down" in down.stdout
    after = json.loads(daemon.cli("status", "--json").stdout)
    assert after["daemon"]["status"] == "down"
