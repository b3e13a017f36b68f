"""The GPU table of the status screen: a row per GPU with its allocated share as a bar
coloured per job, real memory and utilisation from the probe, its jobs by name and its marks
(unhealthy, paused, held, unusable).

Split from ``status_render`` to keep that module about the screen's layout (sections, row
budget, header); this is the one section built from ``view["gpus"]`` alone. Pure formatting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from gpu_scheduler.core.units import ONE_GPU, format_share
from gpu_scheduler.status import gpu_share_total
from gpu_scheduler.status_widgets import (
    LineTable,
    Row,
    gib,
    job_style,
    meter,
    section_title,
    share_bar,
)


def gpu_section(view: Mapping[str, Any], wide: bool, *, roomy: bool) -> list[RenderableType]:
    """The GPUs title, then a table with a row per GPU (one table per node on a cluster)."""
    gpus = view["gpus"]
    allocated, capacity = gpu_share_total(view)
    title = Text("GPUs", style="bold")
    if gpus:
        title.append(
            f" · {len(gpus)} · {format_share(allocated)} of {capacity // ONE_GPU} allocated",
            style="",
        )
    if not gpus:
        return [
            section_title(title),
            Text("  no GPU snapshot in the state file yet", style="bright_black"),
        ]
    bar_w, mini_w = (20, 10) if wide else (10, 5)
    cols: list[tuple[str, dict[str, Any]]] = [("GPU", {"min_width": 3})]
    if roomy:
        cols.append(("name", {"max_width": 22, "style": "bright_black"}))
    cols += [
        ("share", {"min_width": bar_w + 5}),
        ("memory", {"min_width": mini_w + 8}),
        ("util", {"min_width": mini_w + 5}),
        ("jobs", {"ratio": 1}),
    ]
    out: list[RenderableType] = [section_title(title)]
    node = None
    table = LineTable(*cols)
    for g in gpus:
        if g.get("node") and g["node"] != node:  # a cluster: one table per node
            if node is not None:
                out.append(table)
                table = LineTable(*cols)
            node = g["node"]
            out.append(Text(f" node {node}", style="bold cyan"))
        cells: list[RenderableType] = [gpu_label(g)]
        if roomy:
            cells.append(str(g["name"]).replace("NVIDIA ", ""))
        holding = [j for j in g["jobs"] if not j["suspended"]]  # a frozen job lent its share
        cells.append(share_bar(holding, bar_w) + Text(f" {format_share(g['allocated_milli']):>4}"))
        total, used = g["memory_total_mib"], g["memory_used_mib"]
        if total:
            mem = meter((used or 0) / total, mini_w) + Text(f" {gib(used or 0)}/{gib(total)}G")
        else:
            mem = Text("-", style="bright_black")
        util = g["utilization_pct"]
        cells.append(mem)
        cells.append(
            meter(None if util is None else util / 100, mini_w)
            + Text(" -" if util is None else f" {util:3.0f}%")
        )
        cells.append(gpu_jobs(g, roomy))
        table.add_row(*cells)
    return [*out, table]


def gpu_label(g: Row) -> Text:
    """The GPU's index, marked ✘ unhealthy, ‖ paused, ⚑ held for the queue head, ! unusable."""
    label = Text(str(g["index"]), style="bold")
    if not g["healthy"]:
        label.append(" ✘", style="bold red")
    elif g["paused"]:
        label.append(" ‖", style="yellow")
    elif g["reserved"]:
        label.append(" ⚑", style="yellow")
    elif not g["usable"]:
        label.append(" !", style="yellow")
    return label


def gpu_jobs(g: Row, roomy: bool) -> Text:
    """The jobs on a GPU by name, each in its bar colour (with its share when roomy)."""
    out = Text()
    for job in g["jobs"]:
        label = job["label"] if roomy or len(job["label"]) <= 14 else job["label"][:13] + "…"
        if roomy:
            label += f" {format_share(job['share_milli'])}"
        if job["suspended"]:
            out.append(("  " if out else "") + label + " (suspended)", style="bright_black")
            continue
        out.append(("  " if out else "") + label, style=job_style(job["seq"]))
    if not g["healthy"]:
        note, style = g["error"] or "unhealthy", "red"
    elif g["paused"]:
        note, style = "paused", "yellow"
    elif g["reserved"]:
        note, style = "held", "yellow"  # for the queue head (the Queue title says which)
    else:
        note, style = g["unusable_reason"], "yellow"
    if note:
        out.append(("  " if out else "") + note, style=style)
    if not out:
        out.append("idle", style="bright_black")
    return out
