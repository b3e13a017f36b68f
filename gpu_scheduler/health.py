"""`gpu-scheduler health`: is the scheduler doing its job? For people, cron and systemd.

Five checks, each ok / degraded / down: the daemon answers on its control socket; its state
file is fresh (saved within max(30 s, 3 monitor intervals); an idle daemon saves a heartbeat
every other tick, at most 10 s apart) and saving works; the GPU probe
reads every GPU (the daemon's last snapshot); GNU screen is on PATH (screen mode only); the
disks holding the state and the logs have at least 1 GiB and 5 % free. The overall status is
the worst check's; the exit status is 0 healthy, 1 degraded, 2 down.

``assess`` is pure (a status view and measured facts in, the report out); ``gather`` measures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_scheduler.status import format_duration

MIN_FREE_BYTES = 1 << 30  # 1 GiB
MIN_FREE_FRACTION = 0.05
SEVERITY = {"ok": 0, "degraded": 1, "down": 2}
OVERALL = {0: "healthy", 1: "degraded", 2: "down"}


@dataclass(frozen=True)
class Disk:
    """Free space on one file system, and what lives there (``state``, ``logs``)."""

    purpose: str
    path: str
    total_bytes: int
    free_bytes: int


def heartbeat_s(monitor_interval_s: float | None) -> float:
    """How often a running daemon saves its state even when nothing changed (its heartbeat):
    every other monitor tick, at most 10 s apart (the daemon's ``_heartbeat_s``). A state
    older than max(30 s, 3 ticks) is stale (``status``), so a live daemon is never called so."""
    return min(10.0, 2 * (monitor_interval_s or 5.0))


def _check(name: str, status: str, message: str) -> dict[str, str]:
    return {"name": name, "status": status, "message": message}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # not reached


def _daemon(d: Mapping[str, Any]) -> dict[str, str]:
    if d["status"] == "never_started":
        return _check("daemon", "down", "not running, and no state file yet")
    if not d["running"]:
        return _check("daemon", "down", "not running (no answer on its control socket)")
    uptime = f"up {format_duration(d['uptime_s'])}" if d.get("uptime_s") is not None else "up"
    pid = f", pid {d['pid']}" if d.get("pid") else ""
    if d.get("stopping"):
        return _check("daemon", "degraded", f"{uptime}{pid}, stopping")
    return _check("daemon", "ok", f"{uptime}{pid}")


def _state(d: Mapping[str, Any], problem: str) -> dict[str, str]:
    if problem:
        return _check("state", "down", problem)
    if d["status"] == "never_started":
        return _check("state", "down", "no state file yet")
    saved = f"saved {format_duration(d.get('heartbeat_age_s'))} ago"
    if d.get("save_error"):
        return _check("state", "degraded", f"NOT SAVED, launching stopped: {d['save_error']}")
    if not d["running"]:
        return _check("state", "down", f"{saved}; nothing updates it while the daemon is down")
    if d["stale"]:
        return _check(
            "state",
            "degraded",
            f"{saved}, expected at least every "
            f"{format_duration(heartbeat_s(d.get('monitor_interval_s')))}: the daemon may be stuck",
        )
    return _check("state", "ok", saved)


def _gpus(view: Mapping[str, Any]) -> dict[str, str]:
    gpus = view["gpus"]
    d = view["daemon"]
    when = "" if d["running"] else " (as last observed)"
    if not gpus:
        return _check("gpus", "degraded", "no GPU in the daemon's last snapshot" + when)
    bad = [g for g in gpus if not g["healthy"]]
    if bad:
        what = "; ".join(f"GPU {g['index']}: {g['error'] or 'unhealthy'}" for g in bad)
        return _check("gpus", "degraded", f"{len(bad)} of {len(gpus)} unreadable: {what}{when}")
    provider = f" ({d['provider']})" if d.get("provider") else ""
    return _check("gpus", "ok", f"{len(gpus)} GPU(s) read by the probe{provider}{when}")


def _screen(mode: str, screen_path: str | None) -> dict[str, str]:
    if mode != "screen":
        return _check("screen", "ok", f"not needed ({mode} mode)")
    if screen_path is None:
        return _check(
            "screen",
            "degraded",
            "GNU screen not found on PATH: jobs cannot launch "
            "(apt-get install screen, or --mode direct)",
        )
    return _check("screen", "ok", screen_path)


def _disks(
    disks: Sequence[Disk], min_free_bytes: int, min_free_fraction: float
) -> list[dict[str, str]]:
    out = []
    for disk in disks:
        fraction = disk.free_bytes / disk.total_bytes if disk.total_bytes else 0.0
        text = f"{_size(disk.free_bytes)} free ({fraction:.0%}) at {disk.path} ({disk.purpose})"
        low = disk.free_bytes < min_free_bytes or fraction < min_free_fraction
        out.append(_check("disk", "degraded" if low else "ok", ("low: " if low else "") + text))
    return out


def assess(
    view: Mapping[str, Any],
    *,
    mode: str,
    screen_path: str | None,
    disks: Sequence[Disk],
    min_free_bytes: int = MIN_FREE_BYTES,
    min_free_fraction: float = MIN_FREE_FRACTION,
    state_problem: str = "",
    insecure: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``health --json`` object: ``status``, ``exit_code`` and one entry per check.

    ``insecure``: config/jobs/llm_config files others can write (anyone who can write them can
    run code as you): each makes the machine degraded.

    ``state_problem``: why the state file could not be read (it then counts as down)."""
    d = view["daemon"]
    checks = [
        _daemon(d),
        _state(d, state_problem),
        _gpus(view),
        _screen(mode, screen_path),
        *_disks(disks, min_free_bytes, min_free_fraction),
        *(_check("files", "degraded", problem) for problem in insecure),
    ]
    worst = max(SEVERITY[c["status"]] for c in checks)
    return {
        "status": OVERALL[worst],
        "exit_code": worst,
        "generated_at": view["generated_at"],
        "checks": checks,
    }


# ----------------------------------------------------------------------------- measuring


def _existing(path: Path) -> Path:
    """The path, or its nearest existing ancestor (the log folder may not exist yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def measure_disks(folders: Mapping[str, Path]) -> list[Disk]:
    """Free space per file system (``purpose -> folder``); folders sharing one are merged."""
    seen: dict[int, tuple[list[str], Path]] = {}
    for purpose, folder in folders.items():
        place = _existing(folder)
        try:
            device = os.stat(place).st_dev
        except OSError:
            continue
        seen.setdefault(device, ([], place))[0].append(purpose)
    disks = []
    for purposes, place in seen.values():
        try:
            usage = shutil.disk_usage(place)
        except OSError:
            continue
        disks.append(Disk(" and ".join(purposes), str(place), usage.total, usage.free))
    return disks


def gather(settings: Any, view: Mapping[str, Any], state_problem: str = "") -> dict[str, Any]:
    """Measure what the view cannot know (screen on PATH, free disk) and assess."""
    mode = view["daemon"].get("mode") or settings.execution.mode
    disks = measure_disks(
        {"state": settings.files.state_file.parent, "logs": settings.files.log_dir}
    )
    from gpu_scheduler.guards import insecure_files, trusted_files

    return assess(
        view,
        mode=mode,
        screen_path=shutil.which("screen"),
        disks=disks,
        state_problem=state_problem,
        insecure=insecure_files(trusted_files(settings)),
    )
