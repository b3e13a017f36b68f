"""The one message the daemon's loop receives: every other thread only posts an ``Event``.

A module of its own so that the loop (daemon.py) and the code that builds events for it
(daemon_actions.py: launch workers and exit watchers post them from their threads) share it
without importing each other.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    kind: str  # files | launched | launch_error | exit | stopped | control | shutdown
    job_id: str = ""
    attempt: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    reply: Future[dict[str, Any]] | None = None
