"""`health`: each check, the overall verdict and the exit status cron and systemd see."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpu_scheduler.adapters.store import StateStore
from gpu_scheduler.core import codec
from gpu_scheduler.core.model import GpuSnapshot
from gpu_scheduler.health import Disk, assess, measure_disks
from gpu_scheduler.status import build_view
from gpu_scheduler.status_sample import T0, sample_state

GiB = 1 << 30
ROOMY = [Disk("state and logs", "/srv", 1000 * GiB, 400 * GiB)]


def report(saved: Any = None, alive: bool = True, now: float = T0, **kw: Any) -> dict[str, Any]:
    view = build_view(sample_state() if saved is None else saved, alive, now)
    args: dict[str, Any] = {"mode": "screen", "screen_path": "/usr/bin/screen", "disks": ROOMY}
    args.update(kw)
    return assess(view, **args)


def statuses(r: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in r["checks"]}


def test_healthy() -> None:
    r = report()
    assert (r["status"], r["exit_code"]) == ("healthy", 0)
    assert set(statuses(r).values()) == {"ok"}
    assert [c["name"] for c in r["checks"]] == ["daemon", "state", "gpus", "screen", "disk"]


def test_daemon_down_is_down() -> None:
    r = report(alive=False)
    assert (r["status"], r["exit_code"]) == ("down", 2)
    assert statuses(r)["daemon"] == "down" and statuses(r)["state"] == "down"
    assert "as last observed" in r["checks"][2]["message"]


def test_never_started_is_down() -> None:
    view = build_view(None, False, T0)
    r = assess(view, mode="screen", screen_path="/usr/bin/screen", disks=ROOMY)
    assert r["exit_code"] == 2 and statuses(r)["gpus"] == "degraded"


def test_a_stale_state_is_degraded() -> None:
    r = report(now=T0 + 120)
    assert (r["status"], statuses(r)["state"]) == ("degraded", "degraded")
    assert "may be stuck" in r["checks"][1]["message"]


def test_a_failing_save_is_degraded() -> None:
    saved = sample_state()
    saved = replace(saved, observed={**saved.observed, "save_error": "disk full"})
    r = report(saved)
    assert r["exit_code"] == 1 and "NOT SAVED" in r["checks"][1]["message"]


def test_an_unreadable_state_file_is_down() -> None:
    view = build_view(None, True, T0)
    r = assess(view, mode="screen", screen_path="/usr/bin/screen", disks=ROOMY,
               state_problem="cannot load the scheduler state: ...")  # fmt: skip
    assert statuses(r)["state"] == "down" and r["exit_code"] == 2


def test_an_unhealthy_gpu_is_degraded_and_named() -> None:
    saved = sample_state()
    gpus = list(saved.observed["gpus"])
    gpus[1] = codec.gpu_snapshot_to_dict(GpuSnapshot(1, healthy=False, error="NVML: GPU is lost"))
    r = report(replace(saved, observed={**saved.observed, "gpus": gpus}))
    assert statuses(r)["gpus"] == "degraded" and "GPU 1: NVML: GPU is lost" in r["checks"][2][
        "message"]  # fmt: skip


def test_missing_screen_matters_only_in_screen_mode() -> None:
    assert statuses(report(screen_path=None))["screen"] == "degraded"
    assert statuses(report(screen_path=None, mode="direct"))["screen"] == "ok"


@pytest.mark.parametrize(
    ("free", "total", "status"),
    [(400 * GiB, 1000 * GiB, "ok"), (GiB - 1, 1000 * GiB, "degraded"),
     (40 * GiB, 1000 * GiB, "degraded"), (2 * GiB, 10 * GiB, "ok")],
)  # fmt: skip
def test_low_disk_is_degraded_under_1_gib_or_5_percent(free: int, total: int, status: str) -> None:
    r = report(disks=[Disk("logs", "/var", total, free)])
    assert statuses(r)["disk"] == status


def test_measure_disks_merges_folders_on_one_file_system(tmp_path: Path) -> None:
    disks = measure_disks({"state": tmp_path / "run", "logs": tmp_path / "run" / "logs" / "x"})
    assert len(disks) == 1 and disks[0].purpose == "state and logs"
    assert disks[0].path == str(tmp_path) and 0 < disks[0].free_bytes <= disks[0].total_bytes


# ----------------------------------------------------------------------------- the command


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpu_scheduler", *args], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


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


def test_health_exit_status_is_2_without_a_daemon_and_json_says_why(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    StateStore(tmp_path / "state.json").save(sample_state())
    done = run_cli("health", "--config", str(config), "--json")
    assert done.returncode == 2, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "down" and out["exit_code"] == 2
    text = run_cli("health", "--config", str(config))
    assert text.returncode == 2 and "health: down" in text.stdout and "not running" in text.stdout


def test_health_reports_a_corrupt_state_file_as_down(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    done = run_cli("health", "--config", str(config), "--json")
    assert done.returncode == 2, done.stderr
    state = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "state")
    assert state["status"] == "down" and "not valid JSON" in state["message"]
