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
    raise ValueError(f"expected a GPU index or 'all', got {value!r}")


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
