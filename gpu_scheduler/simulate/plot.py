"""Queue length and GPU-share utilisation over time, one line per policy, as a PNG.

matplotlib is not a runtime dependency: it is imported here, only when ``--plot`` is given, with
the Agg backend (no display needed). Series are averaged over equal time bins (time-weighted), so
a 100,000-job run draws as quickly and as legibly as a 300-job one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.errors import GpuSchedulerError
from gpu_scheduler.simulate.engine import Run

BINS = 150
MISSING = (
    "--plot needs matplotlib, which is not installed: "
    "pip install matplotlib (or pip install 'gpu-scheduler[plot]')"
)


def require_matplotlib() -> None:
    """Fail early, before a long simulation, when the plot could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise GpuSchedulerError(MISSING) from None


def binned(
    times: Sequence[float], values: Sequence[float], end: float, bins: int = BINS
) -> tuple[list[float], list[float]]:
    """Time-weighted mean of a step series (value k holds from times[k] to times[k+1], the last
    one until ``end``) over each of ``bins`` equal bins of [times[0], end].

    Returns the bin mid-points and the means."""
    start = times[0] if times else 0.0
    width = (end - start) / bins if end > start else 1.0
    edges = [start + i * width for i in range(bins)] + [max(end, start + width)]
    sums = [0.0] * bins
    for k, value in enumerate(values):
        a = times[k]
        b = times[k + 1] if k + 1 < len(times) else end
        i = max(0, min(bins - 1, bisect_right(edges, a) - 1))
        while a < b and i < bins:
            e = min(b, edges[i + 1])
            if e > a:
                sums[i] += value * (e - a)
                a = e
            i += 1
    mids = [start + (i + 0.5) * width for i in range(bins)]
    return mids, [s / width for s in sums]


def write_plot(runs: Sequence[Run], out: str | Path, title: str = "") -> None:
    """Two stacked panels sharing the time axis: jobs waiting, and GPU-share utilisation."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    end = max((max(r.finish_s, default=0.0) for r in runs), default=0.0)
    hours = end > 3 * 3600
    scale, unit = (3600.0, "hours") if hours else (60.0, "minutes")
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    queue_ax, util_ax = fig.subplots(2, 1, sharex=True)
    for run in runs:
        if not run.times:
            continue
        capacity = ONE_GPU * run.gpu_count
        x, queue = binned(run.times, run.pending, end)
        _, used = binned(run.times, [u / capacity * 100 for u in run.used_share], end)
        xs = [t / scale for t in x]
        queue_ax.plot(xs, queue, label=run.policy.name, linewidth=1.2)
        util_ax.plot(xs, used, label=run.policy.name, linewidth=1.2)
    queue_ax.set_ylabel("jobs waiting")
    queue_ax.legend(loc="upper left")
    queue_ax.grid(alpha=0.3)
    util_ax.set_ylabel("GPU-share utilisation (%)")
    util_ax.set_ylim(0, 105)
    util_ax.set_xlabel(f"time since the first submit ({unit})")
    util_ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    try:
        fig.savefig(str(out), dpi=110)
    except OSError as exc:
        raise GpuSchedulerError(f"cannot write the plot to {out}: {exc.strerror or exc}") from None
