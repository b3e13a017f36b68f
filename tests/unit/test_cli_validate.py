"""`gpu-scheduler validate`: the shipped files pass; broken ones list every error with its place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpu_scheduler", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)


def test_shipped_config_jobs_and_llm_config_validate() -> None:
    result = run_cli("validate", "--config", str(ROOT / "configs" / "config.json"))
    assert result.returncode == 0, result.stderr
    assert "job line(s) are valid" in result.stdout


def test_broken_config_lists_every_error_with_its_key(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "gpu": {"memory_threshold": 1.7},
        "scheduler": {"job_timout_s": 5},
        "execution": {"mode": "ssh"},
    }))
    result = run_cli("validate", "--config", str(config))
    assert result.returncode == 1
    assert "gpu.memory_threshold: 1.7 is greater than the maximum of 1" in result.stderr
    assert "scheduler.job_timout_s: unknown key (did you mean job_timeout_s?)" in result.stderr
    assert "execution.mode: 'ssh' is not one of" in result.stderr
    assert "3 error(s)" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_jobs_and_llm_config_list_every_located_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "gpu": {"provider": "simulated", "simulated": {"count": 4}},
        "files": {"jobs_file": "jobs.txt", "llm_config_file": "llm.json"},
    }))
    (tmp_path / "llm.json").write_text('{"default_requirement": 1,\n "models": {"a": -1}}\n')
    (tmp_path / "jobs.txt").write_text(
        "x,/bin/true\n"
        "0,/nonexistent.py\n"
        "0,/bin/true,,,gpu=0.5\n"
        '0,/bin/true,,"unbalanced\n'
        "0,/bin/true,,,9\n"
        "0,/bin/true\n"
    )
    result = run_cli("validate", "--config", str(tmp_path / "config.json"))
    assert result.returncode == 1
    err = result.stderr
    jobs = str(tmp_path / "jobs.txt")
    assert f"{jobs}:1: priority 'x' is not an integer" in err
    assert f"{jobs}:2: script not found: /nonexistent.py" in err
    assert f"{jobs}:3: unknown option 'gpu'" in err
    assert f"{jobs}:4: unclosed double quote" in err
    assert f"{jobs}:5: GPU 9 not found; this machine has GPUs 0-3" in err
    assert f"{tmp_path / 'llm.json'}:2: models.a" in err
    assert err.count("models.a") == 1, "each error is reported once"
    assert "6 error(s)" in err
