"""The status screen: rich renderables made from the status view only (pure formatting).

``StatusScreen(view)`` renders ``status.build_view``'s object: a header (version, host, daemon
up/down/stale, job counts), one row per GPU (the allocated share as a bar coloured per job, real
memory and utilisation from the probe, paused/held/unhealthy marks), the running jobs, the queue
by priority, the latest finished jobs and the jobs files' line errors. It adapts to the width it
is given (80 columns: the essentials; from 100: wider bars, pids, time left; from 120: GPU
names and shares per job) and, under ``--watch``, to the terminal's height (each section shows
as many rows as fit and says how many it left out); ``status_watch.watch`` redraws it in place.
The GPU table is drawn by ``status_gpu_table``.

Tested like text: tests/unit/test_status_render.py renders fixed views on a colourless
fixed-width Console and compares with tests/unit/snapshots/*.txt.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from gpu_scheduler.core.units import ONE_GPU, format_share
from gpu_scheduler.status import format_duration
from gpu_scheduler.status_gpu_table import gpu_section
from gpu_scheduler.status_widgets import (
    LineTable,
    ago,
    gpu_list,
    job_style,
    result_text,
    section_title,
)

WIDE = 100  # from this many columns on: wider bars, pids, time left, held-for in the queue
ROOMY = 120  # and from this many: GPU names, each job's share beside its name


# ----------------------------------------------------------------------------- the screen


class StatusScreen:
    """The whole status screen for one view. ``fit_height``: use only the terminal's height."""

    def __init__(
        self, view: Mapping[str, Any], *, detailed: bool = False, fit_height: bool = False
    ) -> None:
        self.view = view
        self.detailed = detailed
        self.fit_height = fit_height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = options.max_width >= WIDE
        height = (options.height or console.height) if self.fit_height else None
        view = self.view
        header = list(self._header(wide))
        gpus = gpu_section(view, wide, roomy=options.max_width >= ROOMY)
        used = len(header) + 2 + len(view["gpus"])  # GPU title and column header
        limits = self._limits(None if height is None else height - used)
        yield from header
        yield from gpus
        yield from self._running(wide, limits["running"])
        yield from self._queue(wide, limits["queue"])
        yield from self._tenants()
        yield from self._finished(wide, limits["finished"])
        yield from self._errors(limits["errors"], fold=height is None)

    # -------------------------------------------------------------- row budget

    def _limits(self, lines: int | None) -> dict[str, int]:
        """How many rows each section shows.

        Without a height (one-shot ``status``): fixed caps, higher with --detailed. With one
        (``--watch``), fill it: each section first gets its title, column header and up to
        two rows; then running jobs get all they need, then line errors (up to 5), then the
        queue and the finished jobs share what is left, row by row.
        """
        view = self.view
        running = sum(r["state"] == "running" for r in view["jobs"])
        finished = sum(r["state"] in ("completed", "failed", "cancelled") for r in view["jobs"])
        if lines is None:
            d = self.detailed
            return {
                "running": min(running, 1000 if d else 20),
                "queue": min(len(view["queue"]["next"]), 20 if d else 5),
                "finished": min(finished, 20 if d else 5),
                "errors": min(len(view["errors"]), 1000 if d else 10),
            }
        wanted = {
            "running": running,
            "queue": len(view["queue"]["next"]),
            "finished": finished,
            "errors": len(view["errors"]),
        }
        cost = {"running": 1, "queue": 1, "finished": 1, "errors": 2}  # lines per row
        limits = dict.fromkeys(wanted, 0)
        # a title and a column header each; line errors have no header, and no title if none
        left = lines - sum(1 + (n > 0) for n in wanted.values()) + 1

        def give(name: str, upto: int) -> bool:
            nonlocal left
            take = max(0, min(wanted[name], upto) - limits[name])
            take = min(take, left // cost[name])
            limits[name] += take
            left -= take * cost[name]
            return take > 0

        for name in wanted:
            give(name, 2)
        give("running", wanted["running"])
        give("errors", 5)
        while give("queue", limits["queue"] + 1) | give("finished", limits["finished"] + 1):
            pass
        return limits

    # -------------------------------------------------------------- header

    def _header(self, wide: bool) -> Iterator[RenderableType]:
        d, counts = self.view["daemon"], self.view["counts"]
        status = d["status"]
        left = Text("gpu-scheduler", style="bold")
        left.append(f" {d.get('version') or ''}".rstrip())
        if d.get("hostname"):
            left.append(f" · {d['hostname']}")
        left.append(" · ")
        dot = {
            "up": ("● up", "bold green"),
            "stale": ("● stale", "bold red"),
            "down": ("● down", "bold red"),
            "never_started": ("● not started", "bold red"),
        }
        label, style = dot.get(status, (status, "bold red"))
        left.append(label, style=style)
        if status == "up" and d.get("uptime_s") is not None:
            left.append(f" {format_duration(d['uptime_s'])}", style="green")
        if d.get("stopping") and status == "up":
            left.append(" (stopping)", style="yellow")
        extras = [d.get("mode"), d.get("provider")]
        if wide and d.get("pid"):
            extras.insert(0, f"pid {d['pid']}")
        for extra in extras:
            if extra:
                left.append(f" · {extra}")
        right = Text(
            f"saved {ago(d.get('heartbeat_age_s'))}" if d.get("saved_at") else "",
            style="red" if status in ("stale", "down") else "bright_black",
        )
        grid = Table.grid(expand=True)
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        grid.add_column(no_wrap=True, justify="right")
        grid.add_row(left, right)
        yield grid

        line = Text("jobs ", style="bold")
        line.append(f"{counts['running']} running", style="cyan")
        line.append(f" · {counts['pending']} pending", style="blue")
        line.append(f" · {counts['done']} done")
        parts = [
            (counts["completed"], "✔", "green"),
            (counts["failed"], "✘", "red"),
            (counts["cancelled"], "cancelled", "yellow"),
        ]
        inner = [(f"{n} {mark}", style) for n, mark, style in parts if n]
        if inner:
            line.append(" (")
            for i, (text, style) in enumerate(inner):
                line.append((" " if i else "") + text, style=style)
            line.append(")")
        line.no_wrap, line.overflow = True, "ellipsis"
        yield line

        problem = self._problem()
        if problem is not None:
            yield problem

    def _problem(self) -> Text | None:
        d = self.view["daemon"]
        if d["status"] == "never_started":
            return Text(
                "no state file yet: start the scheduler with `gpu-scheduler start`",
                style="bold red",
            )
        if d["status"] == "down":
            return Text(
                "daemon not running: this is the last saved state; running jobs may have "
                "ended since (`gpu-scheduler start` adopts them)",
                style="bold red",
            )
        if d["status"] == "stale":
            return Text(
                f"daemon answers but has not saved for "
                f"{format_duration(d.get('heartbeat_age_s'))}: it may be stuck "
                "(see its log)",
                style="bold red",
            )
        if d.get("save_error"):
            return Text(f"STATE NOT SAVED, launching stopped: {d['save_error']}", style="bold red")
        return None

    # -------------------------------------------------------------- jobs

    def _count_title(
        self,
        name: str,
        total: int,
        shown: int,
        *,
        unit: str = "",
        extra: str = "",
        style: str = "bold",
    ) -> Rule:
        """``Queue · 96 pending · 10 shown · p0:24 ...``: what was left out comes before the
        extras, so a narrow terminal cuts the extras, never the truth about the list."""
        title = Text(name, style=style)
        title.append(f" · {total}{unit}")
        if shown < total:
            title.append(f" · {shown} shown", style="bright_black")
        title.append(extra)
        return section_title(title)

    def _running(self, wide: bool, limit: int) -> Iterator[RenderableType]:
        rows = [r for r in self.view["jobs"] if r["state"] == "running"]
        rows.sort(key=lambda r: (r["started_at"] or 0, r["seq"]))
        yield self._count_title("Running", len(rows), min(limit, len(rows)))
        if not rows or not limit:
            return
        cols: list[tuple[str, dict[str, Any]]] = [
            ("id", {}),
            ("job", {"max_width": 24 if wide else 16}),
            ("GPU", {}),
            ("share", {"justify": "right"}),
            ("elapsed", {"justify": "right"}),
            ("timeout", {"justify": "right"}),
            ("session", {"ratio": 1, "style": "bright_black"}),
        ]
        if wide or self.detailed:
            cols.insert(6, ("pid", {"justify": "right"}))
        table = LineTable(*cols)
        for r in rows[:limit]:
            label = Text(r["label"])
            if r["reason"]:
                state = "stopping" if r["reason"].startswith("stopping") else "suspended"
                label = Text(f"{r['label']} ({state})", style="yellow")
            if r.get("gpu_memory_overrun"):
                label = Text(f"⚠ {r['label']}", style="bold red")
            timeout = "-"
            if r["timeout_s"] is not None:
                timeout = format_duration(r["timeout_s"])
                if wide and r["elapsed_s"] is not None:
                    timeout += f" ({format_duration(r['timeout_s'] - r['elapsed_s'])} left)"
            cells: list[RenderableType] = [
                Text(r["id"], style=job_style(r["seq"])),
                label,
                gpu_list(r["gpus"]),
                format_share(r["share_milli"]),
                format_duration(r["elapsed_s"]),
                timeout,
            ]
            if wide or self.detailed:
                cells.append(str(r["pid"]) if r["pid"] else "…")
            cells.append(r["session"] if r["pid"] is not None else f"{r['session']} (launching)")
            table.add_row(*cells)
        yield table
        for r in rows:
            if r.get("gpu_memory_overrun"):
                yield Text(f"⚠ {r['id']} GPU memory overrun: {r['gpu_memory_overrun']}",
                           style="bold red", no_wrap=True, overflow="ellipsis")

    def _queue(self, wide: bool, limit: int) -> Iterator[RenderableType]:
        q = self.view["queue"]
        extra = ""
        if q["by_priority"]:
            extra += " · " + " ".join(f"p{p['priority']}:{p['count']}" for p in q["by_priority"])
        if q["reserved_gpus"] and wide:
            extra += f" · GPU {gpu_list(q['reserved_gpus'])} held for {q['reserved_for'] or '?'}"
        yield self._count_title(
            "Queue", q["length"], min(limit, q["length"]), unit=" pending", extra=extra
        )
        if not q["next"] or not limit:
            return
        table = LineTable(
            ("id", {}),
            ("job", {"max_width": 24 if wide else 16}),
            ("prio", {"justify": "right"}),
            ("share", {"justify": "right"}),
            ("waiting", {"justify": "right"}),
            ("why", {"ratio": 1, "style": "bright_black"}),
        )
        for r in q["next"][:limit]:
            table.add_row(
                r["id"],
                r["label"],
                str(r["priority"]),
                format_share(round(r["share"] * ONE_GPU)),
                format_duration(r["wait_s"]),
                r["why"],
            )
        yield table

    def _tenants(self) -> Iterator[RenderableType]:
        """Per-tenant use and quota, when several tenants share the machine or one is capped."""
        tenants = self.view.get("tenants") or []
        if len(tenants) < 2 and not any(t["max_gpus"] is not None for t in tenants):
            return
        yield self._count_title("Tenants", len(tenants), len(tenants))
        table = LineTable(
            ("tenant", {}),
            ("run", {"justify": "right"}),
            ("wait", {"justify": "right"}),
            ("GPUs held", {"justify": "right"}),
            ("quota", {"justify": "right"}),
            ("weight", {"justify": "right"}),
            ("recent use", {"justify": "right", "ratio": 1}),
        )
        for t in tenants:
            quota = "-" if t["max_gpus"] is None else f"{t['max_gpus']:g}"
            table.add_row(t["name"], str(t["running"]), str(t["pending"]),
                          f"{t['running_share']:g}", quota, f"{t['weight']:g}",
                          f"{t['usage_gpu_s'] / 3600:.1f} GPU-h")
        yield table

    def _finished(self, wide: bool, limit: int) -> Iterator[RenderableType]:
        rows = [r for r in self.view["jobs"] if r["state"] in ("completed", "failed", "cancelled")]
        rows.sort(key=lambda r: (r["finished_at"] or 0, r["seq"]), reverse=True)
        total = self.view["counts"]["done"]
        yield self._count_title("Finished", total, min(limit, len(rows)))
        if not rows or not limit:
            return
        table = LineTable(
            ("id", {}),
            ("job", {"max_width": 24 if wide else 16}),
            ("GPU", {}),
            ("ran", {"justify": "right"}),
            ("ended", {"justify": "right"}),
            ("result", {"ratio": 1}),
        )
        now = self.view["generated_at"]
        for r in rows[:limit]:
            ended = None if r["finished_at"] is None else now - r["finished_at"]
            table.add_row(
                r["id"],
                r["label"],
                gpu_list(r["gpus"]),
                format_duration(r["run_s"]),
                ago(ended),
                result_text(r),
            )
        yield table

    def _errors(self, limit: int, *, fold: bool) -> Iterator[RenderableType]:
        errors = self.view["errors"]
        if not errors:
            return
        yield self._count_title(
            "Line errors", len(errors), min(limit, len(errors)), style="bold red"
        )
        overflow = "fold" if fold else "ellipsis"
        for e in errors[:limit]:
            where = f"{e['source']}:{e['line_no']}" if e["line_no"] is not None else e["source"]
            message = Text(where, style="bold")
            message.append(f": {e['message']}", style="red")
            if e["expected"]:
                message.append(f" (expected {e['expected']})")
            message.no_wrap, message.overflow = not fold, overflow
            yield message
            if e["text"]:
                yield Text(
                    f"    {e['text']}", style="bright_black", no_wrap=not fold, overflow=overflow
                )


def render_status(view: Mapping[str, Any], *, detailed: bool = False) -> RenderableType:
    return StatusScreen(view, detailed=detailed)
