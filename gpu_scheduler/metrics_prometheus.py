"""The metrics figures in Prometheus text format, for node_exporter's textfile collector.

Apart from ``metrics`` because the exposition format is a subject of its own (metric names, units
and labels) and needs ``prometheus_client``, imported only when a file is written. ``metrics``
re-exports these names; the daemon's ``MetricsRecorder`` there calls ``write_textfile``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def prometheus_registry(m: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> Any:
    """The figures as a prometheus_client CollectorRegistry (names ``gpu_scheduler_*``;
    ratios 0-1, times in seconds, memory in bytes, per-GPU series labelled ``gpu``)."""
    from prometheus_client import CollectorRegistry, Gauge

    from gpu_scheduler.metrics import FINISHED_STATES  # here: metrics imports this module

    reg = CollectorRegistry()

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=reg)

    d = {**m.get("daemon", {}), **(info or {})}
    gauge(
        "gpu_scheduler_info",
        "Scheduler build and mode (always 1)",
        ["version", "mode", "provider", "hostname"],
    ).labels(
        str(d.get("version") or ""),
        str(d.get("mode") or ""),
        str(d.get("provider") or ""),
        str(d.get("hostname") or ""),
    ).set(1)
    gauge(
        "gpu_scheduler_last_update_timestamp_seconds",
        "When these figures were computed (POSIX seconds); alert when it falls behind",
    ).set(m["generated_at"])
    if d.get("started_at") is not None:
        gauge("gpu_scheduler_start_time_seconds", "When the daemon started (POSIX seconds)").set(
            float(d["started_at"])
        )
    jobs = gauge("gpu_scheduler_jobs", "Jobs by state, live and archived", ["state"])
    for state, n in m["jobs"]["by_state"].items():
        jobs.labels(state).set(n)
    gauge("gpu_scheduler_queue_length", "Pending jobs").set(m["jobs"]["by_state"]["pending"])
    for key, name, doc in (
        ("wait_s", "gpu_scheduler_job_wait_seconds", "From submission to start, recent jobs"),
        ("run_s", "gpu_scheduler_job_run_seconds", "From start to finish, recent finished jobs"),
        ("queue_wait_s", "gpu_scheduler_queue_wait_seconds", "How long pending jobs have waited"),
    ):
        g = gauge(name, doc, ["stat"])
        for stat in ("mean", "median", "p95", "max"):
            if m[key][stat] is not None:
                g.labels(stat).set(m[key][stat])
    t = m["throughput"]
    fin = gauge(
        "gpu_scheduler_jobs_finished_recent",
        f"Jobs finished in the last {t['window_s']:g} s, by state",
        ["state"],
    )
    for state in FINISHED_STATES:
        fin.labels(state).set(t[state])
    gauge("gpu_scheduler_throughput_jobs_per_hour", "Finished jobs per hour, recent").set(
        t["per_hour"]
    )
    alloc = gauge(
        "gpu_scheduler_gpu_allocated_ratio",
        "Share of the GPU allocated to scheduled jobs (0-1)",
        ["gpu", "stat"],
    )
    util = gauge(
        "gpu_scheduler_gpu_utilization_ratio",
        "GPU utilisation from the probe (0-1)",
        ["gpu", "stat"],
    )
    mem_used = gauge("gpu_scheduler_gpu_memory_used_bytes", "GPU memory in use", ["gpu"])
    mem_total = gauge("gpu_scheduler_gpu_memory_total_bytes", "GPU memory", ["gpu"])
    healthy = gauge("gpu_scheduler_gpu_healthy", "1 when the probe reads the GPU", ["gpu"])
    paused = gauge("gpu_scheduler_gpu_paused", "1 when the GPU takes no new jobs", ["gpu"])
    for g in m["gpus"]:
        label = str(g["index"])
        for stat, value in (
            ("current", g["allocated"]),
            ("avg", g["allocated_avg"]),
            ("peak", g["allocated_peak"]),
        ):
            if value is not None:
                alloc.labels(label, stat).set(value)
        for stat, value in (
            ("current", g["utilization_pct"]),
            ("avg", g["utilization_avg_pct"]),
            ("peak", g["utilization_peak_pct"]),
        ):
            if value is not None:
                util.labels(label, stat).set(value / 100.0)
        if g["memory_total_mib"]:
            mem_used.labels(label).set((g["memory_used_mib"] or 0) * 1024 * 1024)
            mem_total.labels(label).set(g["memory_total_mib"] * 1024 * 1024)
        healthy.labels(label).set(1 if g["healthy"] else 0)
        paused.labels(label).set(1 if g["paused"] else 0)
    held = gauge("gpu_scheduler_tenant_running_share", "GPUs a tenant's running jobs hold", ["tenant"])
    usage = gauge("gpu_scheduler_tenant_usage_gpu_seconds",
                  "A tenant's decayed GPU-share-seconds (fair share)", ["tenant"])
    quota = gauge("gpu_scheduler_tenant_max_gpus", "A tenant's cap on running shares", ["tenant"])
    for t in m.get("tenants", ()):
        held.labels(t["name"]).set(t["running_share"])
        usage.labels(t["name"]).set(t["usage_gpu_s"])
        if t["max_gpus"] is not None:
            quota.labels(t["name"]).set(t["max_gpus"])
    return reg


def prometheus_text(m: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str:
    """The Prometheus text exposition format of the figures."""
    from prometheus_client import generate_latest

    return generate_latest(prometheus_registry(m, info)).decode("utf-8")


def write_textfile(path: Path, m: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> None:
    """node_exporter textfile-collector convention: write a temp file beside it, then rename
    (prometheus_client's ``write_to_textfile``), so a scrape never sees half a file."""
    from prometheus_client import write_to_textfile

    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), prometheus_registry(m, info))
