"""How long `status` takes on a big state: it must feel instant, also with 10,000 jobs.

    python scripts/bench_status.py [--quick] [--jobs N] [--repeat N] [--dir FOLDER]

Writes a state file of N jobs (default 10,000: a few running, 200 finished, the rest pending,
on the 4-GPU sample machine of gpu_scheduler/status_sample.py) in a fresh temp folder, then
prints the median time of:

* load: reading and checking the state file (``StateStore.read_only_snapshot``);
* view: ``status.build_view`` (the JSON object), and ``json.dumps`` of it, compact (what
  ``status --json`` writes into a pipe) and indented (what it writes on a terminal);
* screen: rendering the status screen at 120 columns;
* ``status --json`` and ``status`` end to end: a new ``python -m gpu_scheduler`` process each
  time (interpreter start-up, imports, config, load, view, print into a pipe), as a script
  sees it.

The load average is printed too: on a busy machine every figure grows with it.

--quick uses 1,000 jobs and one repeat (a smoke test, not figures to quote).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from gpu_scheduler.adapters.store import StateStore  # noqa: E402
from gpu_scheduler.status import build_view  # noqa: E402
from gpu_scheduler.status_render import StatusScreen  # noqa: E402
from gpu_scheduler.status_sample import many_jobs_state  # noqa: E402

COMPACT = {"separators": (",", ":")}


def median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def write_config(root: Path) -> Path:
    config = root / "config.json"
    config.write_text(
        json.dumps(
            {
                "gpu": {"provider": "simulated"},
                "files": {
                    "jobs_file": str(root / "jobs.txt"),
                    "llm_config_file": str(root / "llm.json"),
                    "state_file": str(root / "state.json"),
                    "log_dir": str(root / "logs"),
                    "log_file": str(root / "scheduler.log"),
                },
            }
        )
    )
    (root / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, one repeat")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to make the temp folder")
    args = parser.parse_args()
    jobs, repeat = (1_000, 1) if args.quick else (args.jobs, args.repeat)

    root = Path(tempfile.mkdtemp(prefix="bench-status-", dir=args.dir))
    try:
        saved = many_jobs_state(jobs)
        store = StateStore(root / "state.json")
        store.save(saved)
        config = write_config(root)
        now = time.time()
        size_kib = (root / "state.json").stat().st_size / 1024
        view = build_view(saved, True, now)

        def render() -> None:
            console = Console(width=120, height=40, file=io.StringIO(), color_system="truecolor")
            console.print(StatusScreen(view))

        def cli(*extra: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "gpu_scheduler", "status", "--config", str(config), *extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )

        rows = [
            ("load the state file", median_ms(store.read_only_snapshot, repeat)),
            ("build the view", median_ms(lambda: build_view(saved, True, now), repeat)),
            ("json.dumps, compact (piped)", median_ms(lambda: json.dumps(view, **COMPACT), repeat)),
            ("json.dumps, indented (a tty)", median_ms(lambda: json.dumps(view, indent=2), repeat)),
            ("render the screen (120 cols)", median_ms(render, repeat)),
            ("`status --json`, end to end", median_ms(lambda: cli("--json"), max(1, repeat // 2))),
            ("`status`, end to end", median_ms(cli, max(1, repeat // 2))),
        ]
        load = os.getloadavg()[0]
        print(f"status on {jobs:,} jobs (state file {size_kib:,.0f} KiB), median of {repeat}, "
              f"load average {load:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
        for label, ms in rows:
            print(f"  {label:<32} {ms:8.1f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
