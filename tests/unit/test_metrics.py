"""Metrics: the figures, the GPU sample ring, and the Prometheus textfile the daemon writes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpu_scheduler.core.model import GpuSnapshot, Running
from gpu_scheduler.metrics import (
    MAX_SAMPLES,
    GpuSamples,
    MetricsRecorder,
    describe,
    prometheus_text,
    write_textfile,
)
from gpu_scheduler.status import metrics_view
from gpu_scheduler.status_sample import T0, sample_gpus, sample_state


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class FakeScheduler:
    """What MetricsRecorder reads from the daemon's scheduler: jobs, archived, used()."""

    def __init__(self, jobs: Any = (), archived: dict[str, str] | None = None) -> None:
        self.jobs = {j.job_id: j for j in jobs}
        self.archived = dict(archived or {})

    def used(self) -> dict[int, int]:
        used: dict[int, int] = {}
        for job in self.jobs.values():
            if isinstance(job.status, Running):
                for g in job.status.gpus:
                    used[g] = used.get(g, 0) + job.status.share_per_gpu
        return used


# ----------------------------------------------------------------------------- figures


def test_describe() -> None:
    assert describe([]) == {"count": 0, "mean": None, "median": None, "p95": None, "max": None}
    assert describe([5.0]) == {"count": 1, "mean": 5.0, "median": 5.0, "p95": 5.0, "max": 5.0}
    figures = describe([float(n) for n in range(100, 0, -1)])
    assert (figures["median"], figures["p95"], figures["max"]) == (50.5, 95.0, 100.0)
    assert figures["mean"] == pytest.approx(50.5)


def test_metrics_of_the_sample_state() -> None:
    m = metrics_view(sample_state(), True, T0)
    assert m["jobs"]["by_state"] == {"pending": 5, "running": 4, "completed": 39, "failed": 4,
                                     "cancelled": 1}  # fmt: skip
    assert m["jobs"]["total"] == 53 and m["jobs"]["archived"] == 39
    assert m["run_s"]["count"] == 5 and m["run_s"]["max"] == 3600
    assert m["wait_s"]["count"] == 9  # 4 running and 5 finished jobs started
    assert m["queue_wait_s"]["count"] == 5 and m["queue_wait_s"]["max"] == 1500
    t = m["throughput"]
    assert (t["finished"], t["completed"], t["failed"], t["cancelled"]) == (5, 2, 2, 1)
    assert t["per_hour"] == 5.0
    gpu0 = m["gpus"][0]
    assert (gpu0["allocated"], gpu0["allocated_avg"], gpu0["utilization_peak_pct"]) == (1, 0.9, 91)
    assert m["window"] == {"window_s": 300.0, "samples": 60, "since": T0 - 295}


def test_throughput_counts_only_the_last_hour() -> None:
    m = metrics_view(sample_state(), True, T0 + 40 * 60)  # 31 and 50 minutes become 71, 90
    assert m["throughput"]["finished"] == 3


def test_metrics_without_a_daemon_summary_have_no_window_figures() -> None:
    saved = sample_state()
    observed = {k: v for k, v in saved.observed.items() if k != "metrics"}
    from dataclasses import replace

    m = metrics_view(replace(saved, observed=observed), False, T0)
    assert m["window"]["samples"] == 0 and m["gpus"][0]["allocated_avg"] is None
    assert m["gpus"][0]["utilization_pct"] == 72.0  # the last snapshot is still known
    assert m["daemon"]["status"] == "down"


# ----------------------------------------------------------------------------- the ring


def gpu(index: int, util: float | None, healthy: bool = True) -> GpuSnapshot:
    return GpuSnapshot(index, "GPU", 1000, 100, util, healthy=healthy)


def test_ring_averages_and_peaks_per_gpu() -> None:
    ring = GpuSamples(window_s=60, interval_s=5)
    ring.add(T0, [gpu(0, 10.0), gpu(1, 50.0)], {0: 500})
    ring.add(T0 + 5, [gpu(0, 30.0), gpu(1, None)], {0: 1000, 1: 250})
    s = ring.summary()
    assert s["samples"] == 2 and s["since"] == T0 and s["window_s"] == 60
    assert s["gpus"]["0"] == {"allocated_avg": 0.75, "allocated_peak": 1.0,
                              "utilization_avg_pct": 20.0, "utilization_peak_pct": 30.0}  # fmt: skip
    assert s["gpus"]["1"]["utilization_avg_pct"] == 50.0  # an unknown reading is not a zero
    assert s["gpus"]["1"]["allocated_avg"] == 0.125


def test_ring_forgets_samples_older_than_the_window() -> None:
    ring = GpuSamples(window_s=10, interval_s=1)
    for t in range(30):
        ring.add(T0 + t, [gpu(0, float(t))], {})
    assert len(ring) == 11 and ring.summary()["since"] == T0 + 19
    assert ring.summary()["gpus"]["0"]["utilization_peak_pct"] == 29.0


def test_ring_is_bounded_even_when_the_clock_stands_still() -> None:
    ring = GpuSamples(window_s=10, interval_s=1)
    for _ in range(100):
        ring.add(T0, [gpu(0, 1.0)], {})
    assert len(ring) == 12  # window / interval + 2
    huge = GpuSamples(window_s=1e9, interval_s=0.001)
    assert huge._ring.maxlen == MAX_SAMPLES


def test_an_unhealthy_gpu_contributes_no_utilisation() -> None:
    ring = GpuSamples(60, 5)
    ring.add(T0, [gpu(0, 99.0, healthy=False)], {0: 1000})
    assert ring.summary()["gpus"]["0"]["utilization_avg_pct"] is None


# ----------------------------------------------------------------------------- Prometheus


def test_prometheus_text_has_the_documented_series() -> None:
    m = metrics_view(sample_state(), True, T0)
    samples = samples_of(prometheus_text(m))
    assert samples[("gpu_scheduler_jobs", (("state", "failed"),))] == 4
    assert samples[("gpu_scheduler_queue_length", ())] == 5
    assert samples[("gpu_scheduler_job_run_seconds", (("stat", "max"),))] == 3600
    assert samples[("gpu_scheduler_gpu_allocated_ratio", (("gpu", "1"), ("stat", "current")))] == 0.25
    assert samples[("gpu_scheduler_gpu_utilization_ratio", (("gpu", "2"), ("stat", "peak")))] == 0.99
    assert samples[("gpu_scheduler_gpu_memory_total_bytes", (("gpu", "0"),))] == 81920 * 2**20
    assert samples[("gpu_scheduler_gpu_paused", (("gpu", "3"),))] == 1
    assert samples[("gpu_scheduler_last_update_timestamp_seconds", ())] == T0
    info = [k for k in samples if k[0] == "gpu_scheduler_info"]
    assert dict(info[0][1])["provider"] == "nvml"


def test_empty_figures_leave_series_out_rather_than_invent_zeros() -> None:
    samples = samples_of(prometheus_text(metrics_view(None, False, T0)))
    assert not any(name == "gpu_scheduler_job_wait_seconds" for name, _ in samples)
    assert samples[("gpu_scheduler_jobs", (("state", "pending"),))] == 0


def test_textfile_is_replaced_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.prom"
    path.write_text("old")
    write_textfile(path, metrics_view(sample_state(), True, T0))
    assert os.listdir(tmp_path) == ["metrics.prom"]
    assert samples_of(path.read_text())[("gpu_scheduler_queue_length", ())] == 5


# ----------------------------------------------------------------------------- the recorder


def test_recorder_samples_writes_and_summarises(tmp_path: Path) -> None:
    saved = sample_state()
    scheduler = FakeScheduler(saved.jobs, {"a": "completed", "b": "completed", "c": "failed"})
    recorder = MetricsRecorder(300, 5, tmp_path / "prom" / "metrics.prom")
    info = dict(saved.daemon)
    for tick in range(3):
        recorder.sample(T0 + 5 * tick, sample_gpus(), scheduler, info, paused={3})
    summary = recorder.summary(scheduler)
    assert summary["samples"] == 3 and summary["archived_by_state"] == {"completed": 2, "failed": 1}
    assert summary["gpus"]["2"]["allocated_avg"] == 1.0
    samples = samples_of((tmp_path / "prom" / "metrics.prom").read_text())
    assert samples[("gpu_scheduler_jobs", (("state", "completed"),))] == 2 + 2
    assert samples[("gpu_scheduler_gpu_paused", (("gpu", "3"),))] == 1
    assert samples[("gpu_scheduler_gpu_allocated_ratio", (("gpu", "0"), ("stat", "avg")))] == 1.0


def test_recorder_recounts_the_history_only_when_it_grew() -> None:
    scheduler = FakeScheduler((), {"a": "completed"})
    recorder = MetricsRecorder(60, 5, None)
    assert recorder.archived_by_state(scheduler) == {"completed": 1}
    scheduler.archived["b"] = "failed"
    assert recorder.archived_by_state(scheduler) == {"completed": 1, "failed": 1}
    first = recorder.archived_by_state(scheduler)
    assert recorder.archived_by_state(scheduler) is first  # not recounted


def test_a_metrics_file_that_cannot_be_written_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    recorder = MetricsRecorder(60, 5, blocker / "metrics.prom")
    scheduler = FakeScheduler()
    with caplog.at_level(logging.INFO, logger="gpu_scheduler.metrics"):
        for tick in range(3):
            recorder.sample(T0 + tick, sample_gpus(), scheduler, {})
        assert [r.event for r in caplog.records] == ["metrics_write_failed"]  # type: ignore[attr-defined]
        blocker.unlink()
        recorder.sample(T0 + 9, sample_gpus(), scheduler, {})
    assert [r.event for r in caplog.records][-1] == "metrics_written"  # type: ignore[attr-defined]
    assert (blocker / "metrics.prom").exists()
    assert len(recorder.samples) == 4  # sampling went on throughout
