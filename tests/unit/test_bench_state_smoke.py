"""scripts/bench_state.py still runs: it is how the README's state figures are reproduced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_state.py"


def test_bench_state_quick_prints_its_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for heading in ("live jobs", "save, jobs unchanged", "archived jobs", "history_states()"):
        assert heading in done.stdout, done.stdout
    assert list(tmp_path.iterdir()) == []  # its temp folder is cleaned up
