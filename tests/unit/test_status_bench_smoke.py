"""scripts/bench_status.py still runs: it is how the README's status figure is reproduced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_status.py"


def test_bench_status_quick_prints_its_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for label in ("status on 1,000 jobs", "load the state file", "`status --json`, end to end"):
        assert label in done.stdout, done.stdout
    assert list(tmp_path.iterdir()) == []  # its temp folder is cleaned up
