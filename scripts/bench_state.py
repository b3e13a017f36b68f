"""How long saving and loading the state takes, and that it does not grow with the history.

    python scripts/bench_state.py [--quick] [--repeat N] [--dir FOLDER]

Real files, real fsync, in a fresh temp folder under --dir (default: the system temp folder;
point it at the disk that will hold the state, since fsync cost is the disk's). Prints:

* save and load times for live states of 10 / 1,000 / 10,000 pending jobs. "save, jobs
  unchanged" is the daemon's usual tick (the same Job objects as last time: their JSON is
  reused); "save, all new" is the first save after a start, every job encoded afresh;
* save time for a small live state with 0 / 10,000 / 100,000 jobs in the history, which must
  stay flat: the history is appended to, never rewritten;
* history_states() over the whole history (what the daemon reads at start) and
  read_history(limit=50) (what list-jobs reads).

--quick uses small sizes and few repeats (a smoke test, not figures to quote).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_scheduler.adapters.store import SavedState, StateStore  # noqa: E402
from gpu_scheduler.core.model import Failed, Finished, Job, JobSpec, Pending, Succeeded  # noqa: E402

T0 = 1_700_000_000.0


def job(n: int, finished: bool = False) -> Job:
    """A realistic line: a script with a handful of arguments, a share, a tenant."""
    text = f"python train.py --config cfg/run{n}.yaml --lr 3e-4 --seed {n} gpus=0.5 priority=2"
    spec = JobSpec(
        job_id=f"{n:010x}", source="/home/ana/jobs.txt", line_no=n + 1, text=text, priority=2,
        script="train.py", conda_env="torch", args=("--config", f"cfg/run{n}.yaml", "--lr",
        "3e-4", "--seed", str(n)), share=500, name=f"run{n}", tenant="ana",
    )  # fmt: skip
    status = (
        Finished(T0 + n + 60, Succeeded() if n % 7 else Failed(1), T0 + n, (n % 8,))
        if finished
        else Pending(enqueued_at=T0 + n)
    )
    return Job(spec, 500, status, seq=n, submitted_at=T0 + n, attempts=int(finished))


def median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def size(path: Path) -> str:
    n = path.stat().st_size if path.exists() else 0
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def bench_live(folder: Path, sizes: list[int], repeat: int) -> None:
    print(f"{'live jobs':>10} {'file':>9} {'save, jobs unchanged':>21} {'save, all new':>14} "
          f"{'load':>9}")  # fmt: skip
    for n in sizes:
        store = StateStore(folder / f"live{n}.json")
        state = SavedState(tuple(job(i) for i in range(n)), next_seq=n, saved_at=T0)
        store.save(state)
        warm = median_ms(lambda: store.save(state), repeat)  # noqa: B023 - called at once
        fresh = iter([replace(state, jobs=tuple(replace(j) for j in state.jobs))
                      for _ in range(repeat)])  # fmt: skip
        cold = median_ms(lambda: store.save(next(fresh)), repeat)  # noqa: B023
        load = median_ms(StateStore(store.path).load, max(1, repeat // 2))
        print(f"{n:>10,} {size(store.path):>9} {warm:>18.1f} ms {cold:>11.1f} ms {load:>6.1f} ms")


def bench_history(folder: Path, sizes: list[int], repeat: int) -> StateStore:
    print(f"\n{'archived jobs':>13} {'history':>9} {'save (10 live jobs)':>20}")
    store = StateStore(folder / "with_history.json")
    state = SavedState(tuple(job(i) for i in range(10)), next_seq=10, saved_at=T0)
    archived = 0
    for target in sizes:
        while archived < target:
            chunk = min(10_000, target - archived)
            store.append_history([job(100 + archived + i, True) for i in range(chunk)])
            archived += chunk
        store.save(state)
        save = median_ms(lambda: store.save(state), repeat)
        print(f"{target:>13,} {size(store.history):>9} {save:>17.1f} ms")
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--repeat", type=int, help="saves per figure (median); default 7, quick 3")
    parser.add_argument("--dir", type=Path, help="where to make the temp folder")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 7)
    live = [10, 100, 1_000] if args.quick else [10, 1_000, 10_000]
    history = [0, 1_000, 5_000] if args.quick else [0, 10_000, 100_000]
    with tempfile.TemporaryDirectory(prefix="bench_state-", dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"state store benchmark: median of {repeat}, real fsync, in {folder}\n")
        bench_live(folder, live, repeat)
        store = bench_history(folder, history, repeat)
        states = median_ms(store.history_states, max(1, repeat // 2))
        tail = median_ms(lambda: store.read_history(limit=50), repeat)
        print(f"\nhistory of {history[-1]:,} jobs: history_states() {states:.0f} ms, "
              f"read_history(limit=50) {tail:.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
