"""``status --watch``: the status screen redrawn in place, like htop, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, RenderableType
from rich.text import Text

from gpu_scheduler.status_render import StatusScreen


def watch(
    load: Callable[[], Mapping[str, Any]],
    *,
    interval: float,
    detailed: bool = False,
    stamp: Callable[[], object] | None = None,
    console: Console | None = None,
) -> int:
    """Redraw in place (rich Live on the alternate screen, like htop) until Ctrl-C.

    Redraws every ``interval`` seconds, and at once when ``stamp()`` changes (the state file
    was saved) or the terminal is resized (COLUMNS and LINES in the environment are ignored:
    they would pin the size). ``load`` returns a view or raises; a failing load
    shows its message in red instead of the screen and is retried. Ctrl-C and SIGTERM leave
    the terminal as it was and return 0; without a terminal it refuses (2).
    """
    from rich.live import Live

    if console is None:  # the live terminal size, even if COLUMNS/LINES were exported
        environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        console = Console(_environ=environ)
    if not console.is_terminal:
        print("gpu-scheduler: status --watch needs a terminal; in scripts use `status --json`",
              file=sys.stderr)  # fmt: skip
        return 2
    poll = max(0.05, min(interval, 0.2))

    def frame() -> RenderableType:
        try:
            return StatusScreen(load(), detailed=detailed, fit_height=True)
        except Exception as exc:  # show it and keep watching: the next save may be fine
            return Text(f"gpu-scheduler status: {exc}", style="bold red")

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with Live(
            frame(),
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="crop",
        ) as live:
            last = (stamp() if stamp else None, console.size)
            due = time.monotonic() + interval
            while True:
                time.sleep(poll)
                now = (stamp() if stamp else None, console.size)
                if now != last or time.monotonic() >= due:
                    live.update(frame(), refresh=True)
                    last, due = now, time.monotonic() + interval
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
