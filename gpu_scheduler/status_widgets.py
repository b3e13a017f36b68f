"""Small rich pieces the views share: per-job colours, share bars and meters, borderless
one-line tables, section titles. Pure formatting; used by status_render and report_render."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.status import format_duration

# Job colours: cool colours only, so a job never looks like a level (green/yellow/red meters)
# or a state (red failed). 256-colour names; rich maps them down on a 16-colour terminal.
PALETTE = (
    "cyan",
    "magenta",
    "dodger_blue1",
    "orchid",
    "turquoise2",
    "slate_blue1",
    "bright_magenta",
    "deep_sky_blue1",
    "medium_purple1",
    "aquamarine3",
)
STATE_STYLE = {
    "pending": "blue",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
}
Row = Mapping[str, Any]


def job_style(seq: int) -> str:
    """A job's colour, the same in its GPU's bar and in every list (stable: from its seq)."""
    return PALETTE[seq % len(PALETTE)]


def _level(fraction: float) -> str:
    return "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"


def share_bar(jobs: Sequence[Row], width: int) -> Text:
    """One GPU's allocated share, a segment per job in its colour; cumulative rounding keeps
    the total exact (a full GPU is a full bar, never one cell short)."""
    bar = Text()
    done, filled = 0, 0
    for job in jobs:
        done += job["share_milli"]
        end = min(width, round(done * width / ONE_GPU))
        if end > filled:
            bar.append("█" * (end - filled), style=job_style(job["seq"]))
            filled = end
    bar.append("░" * (width - filled), style="bright_black")
    return bar


def meter(fraction: float | None, width: int) -> Text:
    """A small level bar: green, yellow from 70 %, red from 90 %."""
    if fraction is None:
        return Text("·" * width, style="bright_black")
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    if fraction > 0 and filled == 0:
        filled = 1
    bar = Text()
    bar.append("█" * filled, style=_level(fraction))
    bar.append("░" * (width - filled), style="bright_black")
    return bar


def gib(mib: int) -> str:
    gib = mib / 1024
    return f"{gib:.1f}" if gib < 9.95 else f"{gib:.0f}"


def ago(seconds: float | None) -> str:
    """5s ago, 12m ago, 3h07m ago: coarser than a duration (seconds do not matter here)."""
    if seconds is None:
        return "-"
    if 60 <= seconds < 3600:
        return f"{int(seconds) // 60}m ago"
    return f"{format_duration(seconds)} ago"


def gpu_list(indices: Sequence[int]) -> str:
    return ",".join(map(str, indices)) or "-"


class LineTable:
    """A borderless rich Table whose fixed columns never shrink: each gets the width of its
    widest cell, and only the one ``ratio`` column (why, session, result, ...) gives way
    (ellipsis) on a narrow terminal. Rows stay one line each, so heights are predictable."""

    def __init__(self, *columns: tuple[str, dict[str, Any]]) -> None:
        self.table = Table(
            box=None,
            padding=(0, 1),
            pad_edge=False,
            show_edge=False,
            header_style="bold bright_black",
            expand=True,
        )
        self.widths: list[int] = []
        for name, kw in columns:
            self.table.add_column(name, no_wrap=True, overflow="ellipsis", **kw)
            self.widths.append(cell_len(name))

    def add_row(self, *cells: RenderableType) -> None:
        for i, cell in enumerate(cells):
            width = cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))
            self.widths[i] = max(self.widths[i], width)
        self.table.add_row(*cells)

    def __rich__(self) -> Table:
        for column, width in zip(self.table.columns, self.widths, strict=True):
            if not column.ratio:
                column.min_width = min(width, column.max_width or width)
        return self.table


def section_title(text: str | Text, style: str = "bold") -> Rule:
    title = text if isinstance(text, Text) else Text(text, style=style)
    return Rule(title, align="left", style="bright_black")


def result_text(row: Row) -> Text:
    """✔ exit 0 / ✘ exit 1 / ✘ timed out after 7200s / cancelled by user."""
    state = row["state"]
    mark = {"completed": "✔ ", "failed": "✘ "}.get(state, "")
    return Text(mark + (row["reason"] or state), style=STATE_STYLE.get(state, ""))
