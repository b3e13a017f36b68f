"""Scheduler metrics: job counts, wait and run times, throughput, GPU share and utilisation.

One pure function, ``compute_metrics``, makes the documented ``metrics --json`` object; the CLI
feeds it from the state file (``status.metrics_view``) and the daemon from memory
(``MetricsRecorder``), which also writes the same figures in Prometheus text format to
``files.metrics_file`` for node_exporter's textfile collector (the format: ``metrics_prometheus``).

The daemon keeps a bounded ring of GPU samples (allocated share and probe utilisation, one per
monitor tick, over ``gpu.utilization_window_s``) in memory only; at each save it puts a compact
summary (average and peak per GPU, and the history's job counts per state) in the state file's
``observed.metrics``, which is all the CLI needs.

Wait and run times and throughput are computed over the jobs in the state file: the pending
and running ones and the most recent finished ones (older jobs are archived to the history).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpu_scheduler.core.model import Finished, GpuSnapshot, Job, Pending, Running
from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.metrics_prometheus import (  # noqa: F401 (the Prometheus names, re-exported)
    prometheus_registry,
    prometheus_text,
    write_textfile,
)

log = logging.getLogger("gpu_scheduler.metrics")

STATES = ("pending", "running", "completed", "failed", "cancelled")
FINISHED_STATES = ("completed", "failed", "cancelled")

THROUGHPUT_WINDOW_S = 3600.0
MAX_SAMPLES = 100_000  # a hard bound on the ring, whatever the window and interval


# ----------------------------------------------------------------------------- pure figures


def count_states(jobs: Iterable[Job], archived: Mapping[str, int] | None = None) -> dict[str, int]:
    """Jobs per state (all five keys), live plus ``archived`` (state -> count from the history)."""
    counts = Counter(j.state for j in jobs)
    for state, n in (archived or {}).items():
        counts[state] += n
    return {s: counts.get(s, 0) for s in STATES}


def describe(values: Sequence[float]) -> dict[str, Any]:
    """count, mean, median, p95 (nearest rank) and max in seconds; null figures when empty."""
    if not values:
        return {"count": 0, "mean": None, "median": None, "p95": None, "max": None}
    ordered = sorted(values)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return {
        "count": len(ordered),
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[rank - 1],
        "max": ordered[-1],
    }


def _window_gpu(summary: Mapping[str, Any], index: int) -> Mapping[str, Any]:
    gpus = summary.get("gpus") if isinstance(summary, Mapping) else None
    entry = gpus.get(str(index)) if isinstance(gpus, Mapping) else None
    return entry if isinstance(entry, Mapping) else {}


def compute_metrics(
    jobs: Iterable[Job],
    *,
    now: float,
    counts: Mapping[str, int],
    gpus: Sequence[Mapping[str, Any]],
    window: Mapping[str, Any],
    daemon: Mapping[str, Any],
    throughput_window_s: float = THROUGHPUT_WINDOW_S,
    tenants: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The ``metrics --json`` object (docs/status_json.md).

    ``counts`` are jobs per state (live plus archived), ``gpus`` the status view's GPU rows (the
    current figures), ``window`` the daemon's sample summary (``observed.metrics``).
    """
    waits: list[float] = []
    runs: list[float] = []
    queued: list[float] = []
    recent: Counter[str] = Counter()
    since = now - throughput_window_s
    for job in jobs:
        st = job.status
        if isinstance(st, Pending):
            queued.append(max(0.0, now - st.enqueued_at))
        elif isinstance(st, Running):
            waits.append(max(0.0, st.started_at - job.submitted_at))
        elif isinstance(st, Finished):
            if st.started_at is not None:
                waits.append(max(0.0, st.started_at - job.submitted_at))
                runs.append(max(0.0, st.finished_at - st.started_at))
            if st.finished_at >= since:
                recent[job.state] += 1
    finished = sum(recent[s] for s in FINISHED_STATES)
    gpu_rows = []
    for g in gpus:
        w = _window_gpu(window, g["index"])
        gpu_rows.append(
            {
                "index": g["index"],
                "name": g["name"],
                "allocated": g["allocated_milli"] / ONE_GPU,
                "allocated_avg": w.get("allocated_avg"),
                "allocated_peak": w.get("allocated_peak"),
                "utilization_pct": g["utilization_pct"],
                "utilization_avg_pct": w.get("utilization_avg_pct"),
                "utilization_peak_pct": w.get("utilization_peak_pct"),
                "memory_used_mib": g["memory_used_mib"],
                "memory_total_mib": g["memory_total_mib"],
                "healthy": g["healthy"],
                "paused": g["paused"],
            }
        )
    return {
        "generated_at": now,
        "daemon": {
            k: daemon.get(k)
            for k in (
                "status",
                "running",
                "stale",
                "version",
                "mode",
                "provider",
                "hostname",
                "started_at",
                "uptime_s",
            )
        },
        "jobs": {
            "total": sum(counts.get(s, 0) for s in STATES),
            "by_state": {s: counts.get(s, 0) for s in STATES},
            "archived": counts.get("archived", 0),
        },
        "wait_s": describe(waits),
        "run_s": describe(runs),
        "queue_wait_s": describe(queued),
        "throughput": {
            "window_s": throughput_window_s,
            "finished": finished,
            **{s: recent[s] for s in FINISHED_STATES},
            "per_hour": finished * 3600.0 / throughput_window_s,
        },
        "window": {
            "window_s": window.get("window_s"),
            "samples": window.get("samples", 0),
            "since": window.get("since"),
        },
        "gpus": gpu_rows,
        "tenants": [dict(t) for t in tenants],
    }


def tenant_info(scheduler: Any) -> dict[str, dict[str, Any]]:
    """Each tenant's weight, quota and decayed fair-share usage (the daemon's observed.tenants)."""
    from gpu_scheduler.core.fairshare import FairShare

    fair = getattr(scheduler, "fair", None) or FairShare()
    names = set(fair.rules) | set(fair.usage) | {j.spec.tenant for j in scheduler.jobs.values()}
    return {
        name: {
            "weight": fair.rule(name).weight,
            "max_gpus": fair.rule(name).max_gpus,
            "usage_gpu_s": round(fair.usage.get(name, 0.0), 3),
        }
        for name in sorted(names)
    }


# ----------------------------------------------------------------------------- the sample ring


class GpuSamples:
    """Allocated share and utilisation per GPU, one sample per monitor tick, over a window.

    Bounded twice: by time (samples older than ``window_s`` are dropped) and by count. The
    summary is computed when a sample is added, so saving the state (up to 5 times a second)
    costs nothing.
    """

    def __init__(self, window_s: float, interval_s: float) -> None:
        self.window_s = float(window_s)
        size = math.ceil(self.window_s / max(interval_s, 0.001)) + 2
        self._ring: deque[tuple[float, tuple[tuple[int, int, float | None], ...]]] = deque(
            maxlen=min(MAX_SAMPLES, max(2, size))
        )
        self._summary: dict[str, Any] = {
            "window_s": self.window_s,
            "samples": 0,
            "since": None,
            "gpus": {},
        }

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, now: float, gpus: Iterable[GpuSnapshot], used: Mapping[int, int]) -> None:
        sample = tuple(
            (g.index, used.get(g.index, 0), g.utilization_pct if g.healthy else None) for g in gpus
        )
        self._ring.append((now, sample))
        while self._ring and self._ring[0][0] < now - self.window_s:
            self._ring.popleft()
        self._summary = self._summarise()

    def _summarise(self) -> dict[str, Any]:
        shares: dict[int, list[int]] = {}
        utils: dict[int, list[float]] = {}
        for _, sample in self._ring:
            for index, share, util in sample:
                shares.setdefault(index, []).append(share)
                if util is not None:
                    utils.setdefault(index, []).append(util)
        gpus = {}
        for index in sorted(shares):
            s, u = shares[index], utils.get(index, [])
            gpus[str(index)] = {
                "allocated_avg": round(sum(s) / len(s) / ONE_GPU, 4),
                "allocated_peak": max(s) / ONE_GPU,
                "utilization_avg_pct": round(sum(u) / len(u), 2) if u else None,
                "utilization_peak_pct": max(u) if u else None,
            }
        return {
            "window_s": self.window_s,
            "samples": len(self._ring),
            "since": self._ring[0][0] if self._ring else None,
            "gpus": gpus,
        }

    def summary(self) -> dict[str, Any]:
        return self._summary


class MetricsRecorder:
    """The daemon's side: sample each monitor tick, write the Prometheus file, summarise.

    ``scheduler`` is the daemon's ``core.scheduler.Scheduler`` (``jobs``, ``archived``,
    ``used()`` are read, never changed). Writing the file never raises: a full disk or a bad
    path is logged once and retried at the next tick.
    """

    def __init__(self, window_s: float, interval_s: float, metrics_file: Path | None) -> None:
        self.samples = GpuSamples(window_s, interval_s)
        self.metrics_file = metrics_file
        self._archived_len = -1
        self._archived: dict[str, int] = {}
        self._write_failed = False

    def archived_by_state(self, scheduler: Any) -> dict[str, int]:
        """History jobs per state; recounted only when the history grew (it never shrinks)."""
        if len(scheduler.archived) != self._archived_len:
            self._archived = dict(Counter(scheduler.archived.values()))
            self._archived_len = len(scheduler.archived)
        return self._archived

    def summary(self, scheduler: Any) -> dict[str, Any]:
        """What goes into ``observed.metrics`` at each save."""
        return {**self.samples.summary(), "archived_by_state": self.archived_by_state(scheduler)}

    def sample(
        self,
        now: float,
        gpus: Sequence[GpuSnapshot],
        scheduler: Any,
        daemon_info: Mapping[str, Any],
        paused: Iterable[int] = (),
    ) -> None:
        """One monitor tick: add a sample, then rewrite the metrics file."""
        self.samples.add(now, gpus, scheduler.used())
        if self.metrics_file is None:
            return
        try:
            figures = self.figures(now, gpus, scheduler, daemon_info, paused)
            write_textfile(self.metrics_file, figures, daemon_info)
        except (OSError, ValueError, ImportError) as exc:  # ImportError: no prometheus-client
            if not self._write_failed:
                log.warning(
                    "cannot write the metrics file %s: %s",
                    self.metrics_file,
                    exc,
                    extra={"event": "metrics_write_failed", "path": str(self.metrics_file)},
                )
            self._write_failed = True
        else:
            if self._write_failed:
                log.info("metrics file written again", extra={"event": "metrics_written"})
            self._write_failed = False

    def figures(
        self,
        now: float,
        gpus: Sequence[GpuSnapshot],
        scheduler: Any,
        daemon_info: Mapping[str, Any],
        paused: Iterable[int] = (),
    ) -> dict[str, Any]:
        jobs = list(scheduler.jobs.values())
        counts = count_states(jobs, self.archived_by_state(scheduler))
        counts["archived"] = len(scheduler.archived)
        used, paused_set = scheduler.used(), set(paused)
        rows = [
            {
                "index": g.index,
                "name": g.name,
                "allocated_milli": used.get(g.index, 0),
                "utilization_pct": g.utilization_pct,
                "memory_used_mib": g.memory_used_mib,
                "memory_total_mib": g.memory_total_mib,
                "healthy": g.healthy,
                "paused": g.index in paused_set,
            }
            for g in gpus
        ]
        daemon = {
            **daemon_info,
            "status": "up",
            "running": True,
            "stale": False,
            "uptime_s": now - float(daemon_info.get("started_at") or now),
        }
        from gpu_scheduler.status import tenant_rows

        return compute_metrics(
            jobs, now=now, counts=counts, gpus=rows, window=self.samples.summary(), daemon=daemon,
            tenants=tenant_rows(jobs, tenant_info(scheduler)),
        )
