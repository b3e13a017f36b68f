"""What the daemon does with a request from the CLI (runs on the loop thread).

Requests are JSON objects ``{"cmd": ..., ...}``; replies are ``{"ok": bool, "message"|"error": ...}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpu_scheduler.core.scheduler import UnknownJob

if TYPE_CHECKING:
    from gpu_scheduler.daemon import Daemon


def _gpus(daemon: Daemon, value: Any) -> list[int]:
    if value == "all":
        return list(daemon.scheduler.gpu_indices)
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return value
    if isinstance(value, str) and any(g.node for g in daemon.gpus):
        return _node_gpus(daemon, value)
    raise ValueError(f"expected a GPU index or 'all', got {value!r}")


def _node_gpus(daemon: Daemon, value: str) -> list[int]:
    """``NODE`` (all its GPUs) or ``NODE:K`` (its K-th GPU) on a cluster; NODE is the start of
    the node id or its name as status shows it (``10.0.0.5/3f2a1b``)."""
    node, _, local = value.partition(":") if value.count(":") == 1 else (value, "", "")
    by_node: dict[str, list[tuple[int, str]]] = {}
    for g in daemon.gpus:
        by_node.setdefault(g.node, []).append((g.index, g.name.rsplit(" GPU ", 1)[0]))
    hits = [n for n, gs in by_node.items() if n and (n.startswith(node) or gs[0][1] == node)]
    if len(hits) != 1:
        names = ", ".join(gs[0][1] for n, gs in by_node.items() if n) or "none"
        what = "matches several nodes" if hits else "is not a GPU index, 'all' or a node"
        raise ValueError(f"{value!r} {what}; nodes: {names}")
    gpus = sorted(i for i, _ in by_node[hits[0]])
    if not local:
        return gpus
    if not local.isdigit() or int(local) >= len(gpus):
        raise ValueError(f"node {hits[0][:6]} has GPUs 0-{len(gpus) - 1}, not {local!r}")
    return [gpus[int(local)]]


def handle_command(daemon: Daemon, request: dict[str, Any], now: float) -> dict[str, Any]:
    cmd = request.get("cmd")
    sched = daemon.scheduler
    try:
        if cmd == "ping":
            return {"ok": True, "daemon": daemon.info(now)}
        if cmd == "cancel":
            job = sched.find(str(request.get("job", "")))
            stops, notice = sched.cancel(job.job_id, now, by=str(request.get("by", "user")))
            daemon._log_notice(notice)
            for stop in stops:
                daemon._carry_out_stop(stop)
            return {"ok": True, "job": job.job_id, "message": notice.message}
        if cmd in ("pause", "resume"):
            gpus = _gpus(daemon, request.get("gpus"))
            done = (sched.pause if cmd == "pause" else sched.resume)(gpus)
            verb = "paused" if cmd == "pause" else "resumed"
            daemon._log_notice_text(f"gpu_{verb}", f"GPUs {done} {verb}")
            return {"ok": True, "gpus": done, "message": f"GPU {','.join(map(str, done))} {verb}"}
        if cmd == "retry":
            job = sched.find(str(request.get("job", "")))
            notice = sched.retry(job.job_id, now)
            daemon._log_notice(notice)
            return {"ok": True, "job": job.job_id, "message": notice.message}
        if cmd == "stop":
            daemon._begin_stop(bool(request.get("kill_jobs")), now)
            return {"ok": True, "message": "stopping"}
        if cmd == "reload":
            daemon.source.reload_llm()
            daemon._read_jobs(include_partial=True)
            return {"ok": True, "message": "reloaded"}
    except UnknownJob as exc:
        key = str(exc.args[0])
        hits = [j for j in sched.jobs.values() if j.spec.name == key or j.job_id.startswith(key)]
        if len(hits) > 1:  # Scheduler.find wants exactly one match
            return {"ok": False, "error": f"{key!r} matches {len(hits)} jobs; give more of the id"}
        return {"ok": False, "error": f"no such job: {key}"}
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": False, "error": f"unknown command {cmd!r}"}
