"""The other views, rendered from their JSON objects only: ``list-jobs``, ``metrics``, ``health``.

Pure formatting, like ``status_render``; the JSON objects are documented in docs/status_json.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from gpu_scheduler.core.units import format_share
from gpu_scheduler.status import format_duration
from gpu_scheduler.status_widgets import (
    STATE_STYLE,
    LineTable,
    Row,
    gpu_list,
    meter,
    result_text,
    section_title,
)

HEALTH_MARK = {"ok": ("✔", "green"), "degraded": ("▲", "yellow"), "down": ("✘", "bold red")}
OVERALL_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "down": "bold red"}


# ----------------------------------------------------------------------------- list-jobs


def job_table(rows: Sequence[Row]) -> RenderableType:
    """``list-jobs``: one line per job, the same rows as ``list-jobs --json``."""
    if not rows:
        return Text("no jobs", style="bright_black")
    table = LineTable(
        ("id", {}),
        ("job", {"max_width": 24}),
        ("state", {}),
        ("prio", {"justify": "right"}),
        ("share", {"justify": "right"}),
        ("GPU", {}),
        ("time", {"justify": "right"}),
        ("result", {"ratio": 1}),
    )
    for r in rows:
        time_s = (
            r["elapsed_s"]
            if r["state"] == "running"
            else (r["run_s"] if r["state"] != "pending" else r["wait_s"])
        )
        result = (
            result_text(r)
            if r["finished_at"] is not None
            else Text(r["reason"] or "", style="bright_black")
        )
        table.add_row(
            r["id"],
            r["label"],
            Text(r["state"], style=STATE_STYLE.get(r["state"], "")),
            str(r["priority"]),
            format_share(r["share_milli"]),
            gpu_list(r["gpus"]),
            format_duration(time_s),
            result,
        )
    result_column = table.table.columns[-1]
    result_column.no_wrap, result_column.overflow = False, "fold"  # the whole reason, wrapped
    return Group(table, Text(f"{len(rows)} job(s)", style="bright_black"))


# ----------------------------------------------------------------------------- metrics


def _secs(value: float | None) -> str:
    """Durations for statistics: tenths below 10 s (a 0.4 s wait is not "0s")."""
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 10 else format_duration(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else format_share(round(value * 1000))


def render_metrics(m: Mapping[str, Any]) -> RenderableType:
    """``metrics``: job counts, times, throughput, and per GPU now / average / peak."""
    d, jobs, window = m["daemon"], m["jobs"], m["window"]
    head = Text("gpu-scheduler metrics", style="bold")
    status = d.get("status") or "?"
    words = {"never_started": "not started", "up": "up", "down": "down", "stale": "stale"}
    head.append(f" · daemon {words.get(status, status)}",
                style="green" if status == "up" else "bold red")  # fmt: skip
    parts: list[RenderableType] = [head]

    parts.append(section_title(f"Jobs · {jobs['total']}"))
    counts = Text()
    for state, n in jobs["by_state"].items():
        counts.append(f"{state} {n}   ", style=STATE_STYLE.get(state, ""))
    if jobs["archived"]:
        counts.append(f"({jobs['archived']} archived)", style="bright_black")
    parts.append(counts)

    parts.append(section_title("Times · recent jobs"))
    times = LineTable(
        ("", {}),
        ("jobs", {"justify": "right"}),
        ("mean", {"justify": "right"}),
        ("median", {"justify": "right"}),
        ("p95", {"justify": "right"}),
        ("max", {"justify": "right"}),
        ("", {"ratio": 1}),
    )
    for label, key in (("wait", "wait_s"), ("run", "run_s"), ("queued now", "queue_wait_s")):
        s = m[key]
        times.add_row(
            label,
            str(s["count"]),
            _secs(s["mean"]),
            _secs(s["median"]),
            _secs(s["p95"]),
            _secs(s["max"]),
            "",
        )
    parts.append(times)
    t = m["throughput"]
    line = Text(
        f"throughput: {t['finished']} finished in the last "
        f"{format_duration(t['window_s'])} ({t['completed']} ✔  {t['failed']} ✘  "
        f"{t['cancelled']} cancelled) = {t['per_hour']:.1f}/h"
    )
    parts.append(line)

    span = (
        f"last {format_duration(window['window_s'])}, {window['samples']} samples"
        if window.get("samples")
        else "no samples yet (the daemon takes one per tick)"
    )
    parts.append(section_title(f"GPUs · {span}"))
    gpus = LineTable(
        ("GPU", {}),
        ("allocated", {"min_width": 16}),
        ("avg", {"justify": "right"}),
        ("peak", {"justify": "right"}),
        ("util", {"min_width": 11}),
        ("avg", {"justify": "right"}),
        ("peak", {"justify": "right"}),
        ("", {"ratio": 1}),
    )
    for g in m["gpus"]:
        util = g["utilization_pct"]
        mark = "" if g["healthy"] else " ✘"
        gpus.add_row(
            f"{g['index']}{mark}",
            meter(g["allocated"], 8) + Text(f" {_ratio(g['allocated']):>4}"),
            _ratio(g["allocated_avg"]),
            _ratio(g["allocated_peak"]),
            meter(None if util is None else util / 100, 5) + Text(f" {_pct(util):>4}"),
            _pct(g["utilization_avg_pct"]),
            _pct(g["utilization_peak_pct"]),
            "",
        )
    parts.append(gpus)
    return Group(*parts)


# ----------------------------------------------------------------------------- health


def render_health(report: Mapping[str, Any]) -> RenderableType:
    """``health``: one line per check, the overall verdict first."""
    head = Text("gpu-scheduler health: ", style="bold")
    head.append(report["status"], style=OVERALL_STYLE[report["status"]])
    table = LineTable(("", {}), ("check", {}), ("", {"ratio": 1}))
    for c in report["checks"]:
        mark, style = HEALTH_MARK[c["status"]]
        table.add_row(
            Text(mark, style=style),
            c["name"],
            Text(c["message"], style="" if c["status"] == "ok" else style),
        )
    table.table.show_header = False
    for column in table.table.columns[2:]:
        column.no_wrap, column.overflow = False, "fold"
    return Group(head, table)
