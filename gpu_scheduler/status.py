"""What `status` shows, as a pure function of the saved state: the status view.

``build_view(saved, daemon_alive, now)`` turns the daemon's state file into the documented,
stable JSON object of ``status --json`` (``daemon``, ``counts``, ``gpus``, ``queue``, ``jobs``,
``errors``; every field is described in docs/status_json.md). The rich screen
(``status_render``), ``list-jobs``, ``metrics`` and ``health`` are all made from the same view or
the same rows (one per job and per tenant, from ``status_jobs``), so the table and the JSON
never disagree.

Pure: no I/O, no clock (``now`` is passed in), and defensive about the free-form ``daemon`` and
``observed`` sections (an older or newer daemon may have written other keys).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from gpu_scheduler.core.model import Job, Pending, Running
from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.metrics import FINISHED_STATES, compute_metrics, count_states
from gpu_scheduler.status_jobs import job_row, share_gpus, tenant_rows  # importers use these too

SCHEMA_VERSION = 1  # bumped only on an incompatible change to the JSON shape
STALE_AFTER_S = 30.0  # a state older than max(this, 3 monitor intervals) is stale
QUEUE_NEXT = 50  # pending jobs listed in queue.next


# ----------------------------------------------------------------------------- small helpers


def format_duration(seconds: float | None) -> str:
    """45s, 12m03s, 3h07m, 2d04h; '-' when unknown. Negative durations (clock skew) are 0s."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ----------------------------------------------------------------------------- the view


def _daemon_section(saved: Any, alive: bool, now: float) -> dict[str, Any]:
    if saved is None:
        info: Mapping[str, Any] = {}
        observed: Mapping[str, Any] = {}
    else:
        info = saved.daemon if isinstance(saved.daemon, Mapping) else {}
        observed = saved.observed if isinstance(saved.observed, Mapping) else {}
    saved_at = saved.saved_at if saved is not None else None
    heartbeat = _number(info.get("heartbeat_at")) or saved_at
    interval = _number(info.get("monitor_interval_s")) or 5.0
    age = None if heartbeat is None else max(0.0, now - heartbeat)
    stale = age is not None and age > max(STALE_AFTER_S, 3 * interval)
    started = _number(info.get("started_at"))
    status = (
        "never_started" if saved is None else "down" if not alive else "stale" if stale else "up"
    )
    return {
        "status": status,
        "running": alive,
        "stale": stale,
        "stopping": bool(info.get("stopping", False)),
        "pid": _int_or_none(info.get("pid")),
        "hostname": info.get("hostname"),
        "version": info.get("version"),
        "mode": info.get("mode"),
        "provider": info.get("provider"),
        "config": info.get("config"),
        "screen_dir": info.get("screen_dir") or None,
        "started_at": started,
        "uptime_s": max(0.0, now - started) if alive and started is not None else None,
        "saved_at": saved_at,
        "heartbeat_at": heartbeat,
        "heartbeat_age_s": age,
        "monitor_interval_s": interval,
        "save_error": str(observed.get("save_error") or ""),
    }


def _gpu_rows(
    observed: Mapping[str, Any], running: list[Job], paused: set[int], reserved: set[int]
) -> list[dict[str, Any]]:
    on_gpu: dict[int, list[dict[str, Any]]] = {}
    for job in running:
        st = job.status
        assert isinstance(st, Running)
        for g in st.gpus:
            on_gpu.setdefault(g, []).append(
                {
                    "id": job.job_id,
                    "label": job.spec.label,
                    "seq": job.seq,
                    "share": share_gpus(st.share_per_gpu),
                    "share_milli": st.share_per_gpu,
                    "suspended": st.suspended,
                }
            )
    unusable = observed.get("unusable")
    unusable = unusable if isinstance(unusable, Mapping) else {}
    snapshots = [
        g
        for g in observed.get("gpus") or []
        if isinstance(g, Mapping) and _int_or_none(g.get("index")) is not None
    ]
    known = {g["index"] for g in snapshots}
    # a GPU our jobs run on that the last probe did not report still gets a row
    snapshots += [
        {"index": g, "healthy": False, "error": "not reported by the GPU probe"}
        for g in sorted(set(on_gpu) - known)
    ]
    rows = []
    for g in sorted(snapshots, key=lambda g: g["index"]):
        idx = g["index"]
        jobs = on_gpu.get(idx, [])
        allocated = sum(j["share_milli"] for j in jobs if not j["suspended"])  # lent out
        reason = str(unusable.get(str(idx), "") or "")
        rows.append(
            {
                "index": idx,
                "name": str(g.get("name") or "GPU"),
                "node": str(g.get("name") or "").rsplit(" GPU ", 1)[0] if g.get("node") else "",
                "uuid": str(g.get("uuid") or ""),
                "healthy": bool(g.get("healthy", True)),
                "error": str(g.get("error") or ""),
                "paused": idx in paused,
                "reserved": idx in reserved,
                "usable": not reason,
                "unusable_reason": reason,
                "allocated": share_gpus(allocated) if allocated else 0.0,
                "allocated_milli": allocated,
                "memory_used_mib": _int_or_none(g.get("memory_used_mib")),
                "memory_total_mib": _int_or_none(g.get("memory_total_mib")),
                "utilization_pct": _number(g.get("utilization_pct")),
                "jobs": jobs,
            }
        )
    return rows


def _queue_section(
    pending: list[Job], observed: Mapping[str, Any], now: float, reserved_gpus: list[int]
) -> dict[str, Any]:
    by_id = {j.job_id: j for j in pending}
    order = [i for i in observed.get("queue") or [] if isinstance(i, str) and i in by_id]
    if len(order) < min(len(pending), QUEUE_NEXT):  # new jobs since the last pass, or no order
        listed = set(order)
        order += [
            j.job_id
            for j in sorted(pending, key=lambda j: (j.spec.priority, j.seq))
            if j.job_id not in listed
        ]
    waiting = observed.get("waiting")
    waiting = waiting if isinstance(waiting, Mapping) else {}
    nxt = []
    for job_id in order[:QUEUE_NEXT]:
        job = by_id[job_id]
        st = job.status
        assert isinstance(st, Pending)
        nxt.append(
            {
                "id": job_id,
                "label": job.spec.label,
                "priority": job.spec.priority,
                "share": share_gpus(job.share),
                "wait_s": max(0.0, now - st.enqueued_at),
                "why": str(waiting.get(job_id) or st.reason or ""),
            }
        )
    counts = Counter(j.spec.priority for j in pending)
    oldest = min(
        (j.status.enqueued_at for j in pending if isinstance(j.status, Pending)), default=None
    )
    reserved_for = observed.get("reserved_for")
    return {
        "length": len(pending),
        "by_priority": [{"priority": p, "count": counts[p]} for p in sorted(counts)],
        "oldest_wait_s": None if oldest is None else max(0.0, now - oldest),
        "next": nxt,
        "reserved_for": reserved_for if isinstance(reserved_for, str) else None,
        "reserved_gpus": reserved_gpus,
    }


def _errors(observed: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = observed.get("errors", observed.get("line_errors")) or []
    out = []
    for e in raw:
        if isinstance(e, Mapping):
            out.append(
                {
                    "source": str(e.get("source", "")),
                    "line_no": _int_or_none(e.get("line_no")),
                    "text": str(e.get("text", "")),
                    "message": str(e.get("message", "")),
                    "expected": str(e.get("expected", "")),
                }
            )
    return out


def archived_by_state(observed: Mapping[str, Any]) -> dict[str, int] | None:
    """History jobs per state as the daemon summarised them (``observed.metrics``), if it did."""
    metrics = observed.get("metrics")
    raw = metrics.get("archived_by_state") if isinstance(metrics, Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    return {str(k): v for k, v in raw.items() if _int_or_none(v) is not None}


def build_view(
    saved: Any,
    daemon_alive: bool,
    now: float,
    *,
    default_timeout_s: float | None = None,
    archived: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The stable ``status --json`` object (docs/status_json.md).

    ``saved`` is a ``SavedState`` or None (no state file yet); ``daemon_alive`` says whether the
    control socket answers; ``archived`` (state -> count of history jobs) overrides the daemon's
    own summary in ``observed.metrics.archived_by_state``; with neither, ``observed.archived``
    gives only their total, counted in ``counts.done``.
    """
    observed: Mapping[str, Any] = {}
    jobs: list[Job] = []
    paused: set[int] = set()
    if saved is not None:
        observed = saved.observed if isinstance(saved.observed, Mapping) else {}
        jobs = sorted(saved.jobs, key=lambda j: j.seq)
        paused = set(saved.paused)
    overruns = _mapping(observed.get("overruns"))  # jobs using more GPU memory than their share
    rows = []
    running: list[Job] = []
    pending: list[Job] = []
    for job in jobs:  # one pass: 10,000 jobs make each pass count
        rows.append(job_row(job, now, default_timeout_s, str(overruns.get(job.spec.job_id, ""))))
        if isinstance(job.status, Pending):
            pending.append(job)
        elif isinstance(job.status, Running):
            running.append(job)
    reserved_gpus = sorted(g for g in observed.get("reserved_gpus") or [] if isinstance(g, int))
    if archived is None:
        archived = archived_by_state(observed)
    counts: dict[str, int] = count_states(jobs, archived)
    counts["done"] = sum(counts[s] for s in FINISHED_STATES)
    if archived is not None:
        counts["archived"] = sum(archived.values())
    else:  # an older daemon: only the total is known; it counts as done
        counts["archived"] = _int_or_none(observed.get("archived")) or 0
        counts["done"] += counts["archived"]
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": now,
        "daemon": _daemon_section(saved, daemon_alive, now),
        "counts": counts,
        "gpus": _gpu_rows(observed, running, paused, set(reserved_gpus)),
        "queue": _queue_section(pending, observed, now, reserved_gpus),
        "jobs": rows,
        "errors": _errors(observed),
        "tenants": tenant_rows(jobs, _mapping(observed.get("tenants"))),
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def gpu_share_total(view: Mapping[str, Any]) -> tuple[int, int]:
    """(allocated, capacity) in milli-GPU over the view's GPUs."""
    gpus = view.get("gpus", [])
    return sum(g["allocated_milli"] for g in gpus), ONE_GPU * len(gpus)


def metrics_view(
    saved: Any, alive: bool, now: float, archived: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The ``metrics --json`` object from the state file (the daemon computes the same figures
    from memory for the Prometheus file)."""
    view = build_view(saved, alive, now, archived=archived)
    observed = saved.observed if saved is not None and isinstance(saved.observed, Mapping) else {}
    window = observed.get("metrics")
    return compute_metrics(
        saved.jobs if saved is not None else (),
        now=now,
        counts=view["counts"],
        gpus=view["gpus"],
        window=window if isinstance(window, Mapping) else {},
        daemon=view["daemon"],
        tenants=view["tenants"],
    )
