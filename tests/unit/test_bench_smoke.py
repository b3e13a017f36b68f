"""The core benchmark still runs and prints its table (figures are not checked: no speed asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench_core.py"


def test_bench_core_quick_prints_a_table() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--gpus", "8"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("pending"))
    for column in ("blocked pass ms", "placing pass ms", "decisions/s", "memory MiB"):
        assert column in header
    rows = [line.split("|") for line in lines if "|" in line and line != header]
    assert [row[0].strip() for row in rows] == ["100", "1,000"]
    assert all(len(row) == header.count("|") + 1 for row in rows)
    assert "1,000 vs 100 pending" in done.stdout


def test_bench_core_rejects_bad_sizes() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "ten"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "--sizes" in done.stderr
