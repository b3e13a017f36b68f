"""What `status` shows, as a pure function of the saved state: a JSON view, then rich renderables.

``build_view`` makes the documented, stable JSON object (``daemon``, ``gpus``, ``queue``, ``jobs``,
``errors``); every rendering is made from that view only, so the table and ``--json`` never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gpu_scheduler import __version__
from gpu_scheduler.core.model import Finished, Job, Pending, Running, describe_outcome
from gpu_scheduler.core.units import ONE_GPU, format_share

STALE_AFTER_S = 30.0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def job_row(job: Job, now: float) -> dict[str, Any]:
    """One job as the stable JSON row used by status --json and list-jobs --json."""
    st = job.status
    row: dict[str, Any] = {
        "id": job.job_id,
        "name": job.spec.name,
        "label": job.spec.label,
        "state": job.state,
        "priority": job.spec.priority,
        "share": format_share(job.share),
        "script": job.spec.script,
        "args": list(job.spec.args),
        "tenant": job.spec.tenant,
        "source": f"{job.spec.source}:{job.spec.line_no}",
        "attempts": job.attempts,
        "submitted_at": job.submitted_at,
        "gpus": [],
        "session": None,
        "pid": None,
        "started_at": None,
        "finished_at": None,
        "exit_code": job.last_exit_code,
        "reason": "",
    }
    if isinstance(st, Pending):
        row["reason"] = st.reason
        row["wait_s"] = max(0.0, now - st.enqueued_at)
    elif isinstance(st, Running):
        row.update(gpus=list(st.gpus), session=st.session, pid=st.pid, started_at=st.started_at,
                   elapsed_s=max(0.0, now - st.started_at), reason=st.stopping or "")
    elif isinstance(st, Finished):
        row.update(gpus=list(st.gpus), started_at=st.started_at, finished_at=st.finished_at,
                   reason=describe_outcome(st.outcome), outcome=st.outcome.kind)
    return row


def build_view(saved: Any, daemon_alive: bool, now: float) -> dict[str, Any]:
    """The stable JSON object. ``saved`` is a SavedState or None (never started)."""
    if saved is None:
        return {"daemon": {"running": daemon_alive, "state": "no state file yet", "stale": False},
                "gpus": [], "queue": {"length": 0, "next": []}, "jobs": [], "errors": []}
    info = dict(saved.daemon)
    observed = dict(saved.observed)
    heartbeat = float(info.get("heartbeat_at") or saved.saved_at or 0)
    interval = float(info.get("monitor_interval_s") or 5)
    stale = daemon_alive and now - heartbeat > max(STALE_AFTER_S, 3 * interval)
    jobs = sorted(saved.jobs, key=lambda j: j.seq)
    rows = {j.job_id: job_row(j, now) for j in jobs}
    used = {int(k): v for k, v in observed.get("used", {}).items()}
    unusable = {int(k): v for k, v in observed.get("unusable", {}).items()}
    gpus = []
    for g in observed.get("gpus", []):
        idx = int(g["index"])
        gpus.append({
            "index": idx, "name": g.get("name", "GPU"),
            "allocated": format_share(used.get(idx, 0)),
            "allocated_fraction": used.get(idx, 0) / ONE_GPU,
            "memory_used_mib": g.get("memory_used_mib"),
            "memory_total_mib": g.get("memory_total_mib"),
            "utilization_pct": g.get("utilization_pct"),
            "healthy": g.get("healthy", True),
            "paused": idx in saved.paused,
            "unusable_reason": unusable.get(idx, ""),
            "jobs": [r["id"] for r in rows.values() if r["state"] == "running" and idx in r["gpus"]],
        })
    waiting = observed.get("waiting", {})
    queue_ids = [i for i in observed.get("queue", []) if i in rows]
    return {
        "daemon": {
            "running": daemon_alive, "stale": stale, "pid": info.get("pid"),
            "version": info.get("version", __version__), "mode": info.get("mode"),
            "provider": info.get("provider"), "started_at": info.get("started_at"),
            "uptime_s": (now - info["started_at"]) if daemon_alive and info.get("started_at") else None,
            "heartbeat_at": heartbeat, "save_error": observed.get("save_error", ""),
            "screen_dir": info.get("screen_dir") or None,
        },
        "gpus": gpus,
        "queue": {
            "length": int(observed.get("pending", len(queue_ids))),
            "next": [{**rows[i], "waiting_reason": waiting.get(i, "")} for i in queue_ids[:20]],
            "reserved_for": observed.get("reserved_for"),
            "reserved_gpus": observed.get("reserved_gpus", []),
        },
        "jobs": list(rows.values()),
        "errors": observed.get("errors", []),
        "archived_jobs": observed.get("archived", 0),
    }


def _bar(fraction: float, width: int = 10) -> Text:
    filled = min(width, round(fraction * width))
    colour = "green" if fraction < 0.75 else "yellow" if fraction < 1 else "red"
    return Text("█" * filled, style=colour) + Text("░" * (width - filled), style="dim")


def render_status(view: dict[str, Any], *, detailed: bool = False) -> RenderableType:
    d = view["daemon"]
    if d["running"]:
        state = Text("up", style="bold green")
        state += Text(f" {_age(d.get('uptime_s'))}  pid {d.get('pid')}  mode {d.get('mode')}")
        if d.get("stale"):
            state += Text("  (state is stale: daemon not saving)", style="bold red")
    else:
        state = Text("down", style="bold red")
        state += Text(" (showing the last saved state)")
    counts: dict[str, int] = {}
    for row in view["jobs"]:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    header = Text(f"gpu-scheduler {d.get('version')}  daemon ") + state
    header += Text("\n" + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no jobs")
    if d.get("save_error"):
        header += Text(f"\nSTATE NOT SAVED, launching stopped: {d['save_error']}", style="bold red")

    gpu_table = Table(box=box.SIMPLE_HEAD, expand=False, title="GPUs", title_justify="left")
    for col in ("GPU", "allocated", "memory", "util", "jobs"):
        gpu_table.add_column(col, overflow="fold")
    for g in view["gpus"]:
        mem = (f"{(g['memory_used_mib'] or 0) / 1024:.0f}/{(g['memory_total_mib'] or 0) / 1024:.0f}G"
               if g.get("memory_total_mib") else "-")
        util = f"{g['utilization_pct']:.0f}%" if g.get("utilization_pct") is not None else "-"
        mark = " paused" if g["paused"] else "" if g["healthy"] else " unhealthy"
        label = Text(f"{g['index']}{mark}", style="yellow" if mark else "")
        gpu_table.add_row(label, _bar(g["allocated_fraction"]) + Text(f" {g['allocated']}"), mem,
                          util, " ".join(g["jobs"]) or "-")

    running = Table(box=box.SIMPLE_HEAD, title="Running", title_justify="left")
    for col in ("id", "job", "GPUs", "share", "session", "elapsed"):
        running.add_column(col, overflow="fold")
    for r in view["jobs"]:
        if r["state"] == "running":
            running.add_row(r["id"], r["label"], ",".join(map(str, r["gpus"])), r["share"],
                            r["session"] or "-", _age(r.get("elapsed_s")))

    q = view["queue"]
    queue = Table(box=box.SIMPLE_HEAD, title=f"Queue ({q['length']} pending)", title_justify="left")
    for col in ("id", "job", "prio", "share", "waiting", "why"):
        queue.add_column(col, overflow="fold")
    for r in q["next"][: 20 if detailed else 5]:
        queue.add_row(r["id"], r["label"], str(r["priority"]), r["share"], _age(r.get("wait_s")),
                      r.get("waiting_reason") or r.get("reason") or "")

    done = [r for r in view["jobs"] if r["state"] in ("completed", "failed", "cancelled")]
    done.sort(key=lambda r: r.get("finished_at") or 0, reverse=True)
    finished = Table(box=box.SIMPLE_HEAD, title="Finished", title_justify="left")
    for col in ("id", "job", "state", "result"):
        finished.add_column(col, overflow="fold")
    for r in done[: 20 if detailed else 5]:
        style = {"completed": "green", "failed": "red"}.get(r["state"], "yellow")
        finished.add_row(r["id"], r["label"], Text(r["state"], style=style), r["reason"])

    parts: list[RenderableType] = [header, gpu_table, running, queue, finished]
    if view["errors"]:
        errs = Text("Errors in jobs files / llm_config:\n", style="bold red")
        for e in view["errors"][:10]:
            errs += Text(f"  {e['source']}:{e['line_no']}: {e['message']}\n")
        parts.append(errs)
    return Group(*parts)


def print_status(view: dict[str, Any], *, detailed: bool = False,
                 console: Console | None = None) -> None:
    (console or Console()).print(render_status(view, detailed=detailed))


def watch(load: Callable[[], tuple[Any, bool]], interval: float, detailed: bool) -> int:
    """Redraw in place with rich Live until Ctrl-C."""
    from rich.live import Live

    def frame() -> RenderableType:
        saved, alive = load()
        return render_status(build_view(saved, alive, time.time()), detailed=detailed)

    try:
        with Live(frame(), auto_refresh=False, screen=False, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return 0


def print_job_table(rows: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("id", "job", "state", "prio", "share", "GPUs", "result"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["id"], r["label"], r["state"], str(r["priority"]), r["share"],
                      ",".join(map(str, r["gpus"])) or "-", r["reason"])
    (console or Console()).print(table)
