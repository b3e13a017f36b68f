"""How long `status` takes on a big state: it must feel instant, also with 10,000 jobs.

    python scripts/bench_status.py [--quick] [--jobs N] [--repeat N] [--dir FOLDER]

Writes a state file of N jobs (default 10,000: a few running, 200 finished, the rest pending,
on the 4-GPU sample machine of gpu_scheduler/status_sample.py) in a fresh temp folder, then
prints the median time of:

* load: reading and checking the state file (``StateStore.read_only_snapshot``), and two of its
  parts: parsing the JSON, and decoding the jobs by the codec's fast path for saved jobs
  (``codec.jobs_from_dicts``) against the checked decoder it falls back to (``job_from_dict``);
* view: ``status.build_view`` (the JSON object), and the JSON text of it: compact as
  ``status --json`` writes it into a pipe (``cli_views.compact_json``: orjson, the same text as
  json's), compact by ``json.dumps`` for comparison, and indented (what it writes on a terminal);
* screen: rendering the status screen at 120 columns;
* ``status --json`` and ``status`` end to end: a new ``python -m gpu_scheduler`` process each
  time (interpreter start-up, imports, config, load, view, print into a pipe), as a script
  sees it; the median and, in brackets, the fastest run (the least disturbed by other work).

In-process figures are timed with the cyclic garbage collector paused, as the CLI runs them.

The load average is printed too: on a busy machine every figure grows with it.

--quick uses 1,000 jobs and one repeat (a smoke test, not figures to quote).
"""

from __future__ import annotations

import argparse
import gc
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
from gpu_scheduler.cli_views import compact_json  # noqa: E402
from gpu_scheduler.core import codec  # noqa: E402
from gpu_scheduler.status import build_view  # noqa: E402
from gpu_scheduler.status_render import StatusScreen  # noqa: E402
from gpu_scheduler.status_sample import many_jobs_state  # noqa: E402

COMPACT = {"separators": (",", ":")}


def times_ms(action: Callable[..., object], repeat: int, *args: object) -> list[float]:
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            action(*args)
            times.append((time.perf_counter() - start) * 1000)
        finally:
            gc.enable()
    return times


def median_ms(action: Callable[..., object], repeat: int, *args: object) -> str:
    return f"{statistics.median(times_ms(action, repeat, *args)):8.1f} ms"


def median_and_min_ms(action: Callable[[], object], repeat: int) -> str:
    times = times_ms(action, repeat)
    return f"{statistics.median(times):8.1f} ms  (fastest {min(times):.1f})"


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
        text = (root / "state.json").read_text()
        items = json.loads(text)["jobs"]
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

        def checked() -> object:
            return [codec.job_from_dict(d, f"jobs[{i}]") for i, d in enumerate(items)]

        rows = [
            ("load the state file", median_ms(store.read_only_snapshot, repeat)),
            ("  parse its JSON", median_ms(lambda: json.loads(text), repeat)),
            ("  decode the jobs (fast path)", median_ms(codec.jobs_from_dicts, repeat, items)),
            ("  decode the jobs (checked)", median_ms(checked, repeat)),
            ("build the view", median_ms(lambda: build_view(saved, True, now), repeat)),
            ("compact JSON (piped)", median_ms(compact_json, repeat, view)),
            ("  the same by json.dumps", median_ms(lambda: json.dumps(view, **COMPACT), repeat)),
            ("json.dumps, indented (a tty)", median_ms(lambda: json.dumps(view, indent=2), repeat)),
            ("render the screen (120 cols)", median_ms(render, repeat)),
            ("`status --json`, end to end", median_and_min_ms(lambda: cli("--json"), repeat)),
            ("`status`, end to end", median_and_min_ms(cli, repeat)),
        ]
        load = os.getloadavg()[0]
        print(f"status on {jobs:,} jobs (state file {size_kib:,.0f} KiB), median of {repeat}, "
              f"load average {load:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
        for label, figure in rows:
            print(f"  {label:<32} {figure}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
