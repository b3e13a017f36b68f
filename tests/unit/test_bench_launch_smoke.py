"""scripts/bench_launch.py still runs (it is how the README's launch figures are reproduced), and
leaves nothing behind. Its figures are not checked: tests never assert on speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_launch.py"


def _left_behind(folder: str) -> list[str]:
    """Live processes whose command line names the bench's work folder (runners, screens)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if folder in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.pid}: {cmdline}")
    return found


@pytest.mark.slow
def test_bench_launch_quick_prints_its_tables_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| measurement | mode | median | p99 |" in out
    for row in ("floor: `subprocess.run", "edit-to-launch, idle daemon", "throughput, 20 jobs",
                "300 completed", "idle 5 s, 20 pending"):  # fmt: skip
        assert row in out, out
    assert re.search(r"^\| 2,000 \| .* µs/line \|", out, re.MULTILINE), out
    assert re.search(r"\d+ cores", out) and "load average at start" in out
    folder = re.search(r"work folder: (\S+)", done.stderr)
    assert folder is not None, done.stderr
    assert not Path(folder[1]).exists()
    assert _left_behind(folder[1]) == []


def test_bench_launch_rejects_bad_flags() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--trials", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--trials" in done.stderr
