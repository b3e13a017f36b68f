"""Ray as the placement engine across machines; our daemon stays the brain for order.

Why this shape: Ray's GPU resources are fractional like ours and its Jobs API maps one to one
onto our jobs, so we write no cluster protocol. But a pile of pending Ray jobs has no order,
so a job is submitted only when our allocator, fed with Ray's own count of the GPUs taken on
each node (``RayProbe``), says it fits now. It is pinned to the node our allocator chose (label
``ray.io/node-id``); Ray picks the GPU ids there and sets CUDA_VISIBLE_DEVICES.

* Our GPU indices: every node's GPUs get a block of indices, kept in ``ray_gpus.json`` beside
  the state file, so an index means the same GPU across restarts and nodes joining or leaving.
* Submission id = the job id (attempt 1), ``<id>-<attempt>`` after (the session of the job in
  the state): Ray refuses a second submission with the same id, and a restarted daemon finds
  its jobs by it -- nothing runs twice.
* The job runs under the same runner as locally (``python -m gpu_scheduler.runner SPEC-JSON``),
  so its exit code, pty and output look the same; Ray keeps the output as the job's log.

``ray_api.RayApi`` is the thin seam over the ``ray`` package; ``FakeRayApi`` its in-memory twin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpu_scheduler.adapters.launchers import LaunchedProcess, LaunchRequest
from gpu_scheduler.adapters.ray_api import (  # noqa: F401  (re-exported for callers and tests)
    INSTALL_HINT,
    NODE_LABEL,
    RAY_REQUIREMENT,
    FakeRayApi,
    FakeRayJob,
    RayApi,
    RayJob,
    RayNode,
    RayUnavailable,
    RealRayApi,
    import_ray,
)
from gpu_scheduler.core.model import GpuSnapshot, Running
from gpu_scheduler.core.recovery import RunFacts
from gpu_scheduler.core.scheduler import Scheduler
from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.errors import LaunchError

log = logging.getLogger("gpu_scheduler.ray")

LAUNCH_FAILED_EXIT = 127  # the runner's "could not start the job"
POLL_S = 0.5  # how often running Ray jobs are checked for an end


# --------------------------------------------------------------------------- GPU indices


class GpuTable:
    """node id -> its first GPU index and GPU count, stable across restarts (a JSON file)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.nodes: dict[str, tuple[int, int, str]] = {}  # node id -> (base, count, name)
        # Marks the Ray jobs this scheduler (this state) submitted: a job id can come back
        # from another scheduler on the cluster, or from before a --reset-state.
        self.owner = secrets.token_hex(6)
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                self.owner = str(data.get("owner") or self.owner)
                for row in data["nodes"]:
                    self.nodes[row["node_id"]] = (int(row["base"]), int(row["gpus"]),
                                                  str(row.get("name", "")))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RayUnavailable(
                    f"{path} is unreadable ({exc}); it maps Ray nodes to our GPU indices, which "
                    "the state's running jobs refer to. Restore it, or start with --reset-state."
                ) from None
        if path is not None and not path.exists():
            self._write()

    def learn(self, nodes: list[RayNode]) -> bool:
        """Give new nodes (head first, then by id) a block of indices; True if any was new.
        Copy on write: launch workers read ``nodes`` while the loop thread learns."""
        known = dict(self.nodes)
        new = [n for n in sorted(nodes, key=lambda n: (not n.is_head, n.node_id))
               if n.node_id not in known and n.gpus > 0]
        alive = {n.node_id for n in nodes}
        for node in new:
            # A restarted node comes back under a new id: it takes over the block of a gone
            # node at the same address with as many GPUs, so indices do not pile up.
            gone = [k for k, (_, c, name) in known.items() if k not in alive
                    and c == node.gpus and name.split("/")[0] == node.address]
            if gone:
                base = known.pop(gone[0])[0]
            else:
                base = max((b + c for b, c, _ in known.values()), default=0)
            known[node.node_id] = (base, node.gpus, node.name)
        if new:
            self.nodes = known
            self._write()
        return bool(new)

    def _write(self) -> None:
        """Durably (tmp, fsync, rename, fsync folder): indices must survive a power cut."""
        if self.path is None:
            return
        rows = [{"node_id": k, "base": b, "gpus": c, "name": n}
                for k, (b, c, n) in sorted(self.nodes.items(), key=lambda kv: kv[1][0])]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"owner": self.owner, "nodes": rows}, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def node_of(self, gpu: int) -> str:
        for node_id, (base, count, _) in self.nodes.items():
            if base <= gpu < base + count:
                return node_id
        raise KeyError(gpu)


# --------------------------------------------------------------------------- probe


class RayProbe:
    """The cluster's GPUs as snapshots: one per GPU of every node Ray knows, with the node and
    Ray's count of GPUs taken there. Memory and utilisation are not known (0 / None): Ray
    does not report them per GPU, so admission is by shares alone."""

    name = "ray"

    def __init__(self, api: RayApi, table: GpuTable) -> None:
        self.api = api
        self.table = table
        self.nodes: dict[str, RayNode] = {}
        self.snapshot()

    def count(self) -> int:
        return sum(c for _, c, _ in self.table.nodes.values())

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        error = ""
        waiting: dict[str, int] = {}
        try:
            alive = self.api.nodes()
            self.table.learn(alive)
            self.nodes = {n.node_id: n for n in alive}
            # Ray counts a job once it has placed it; ours it has not placed yet are taken too
            # (the allocator takes our own shares out of node_used to find foreign work).
            for job in self.api.jobs().values():
                if job.status == "PENDING" and job.metadata.get("owner") == self.table.owner:
                    node = job.metadata.get("node", "")
                    waiting[node] = waiting.get(node, 0) + round(job.num_gpus * ONE_GPU)
        except Exception as exc:  # the loop must survive a cluster hiccup
            error = f"Ray cluster not reachable: {exc}"
            self.nodes = {}
        snaps = []
        for node_id, (base, count, name) in sorted(self.table.nodes.items(),
                                                   key=lambda kv: kv[1][0]):
            node = self.nodes.get(node_id)
            for i in range(count):
                snap = GpuSnapshot(index=base + i, name=f"{name} GPU {i}", node=node_id)
                if node is None:
                    snap = replace(snap, healthy=False,
                                   error=error or f"Ray node {name} is not alive")
                else:
                    snap = replace(snap, node_used=node.used + waiting.get(node_id, 0))
                snaps.append(snap)
        return tuple(snaps)

    def close(self) -> None:
        self.api.close()


# --------------------------------------------------------------------------- launcher


def ray_num_gpus(share: str, gpus: int) -> float:
    """Ray's ``entrypoint_num_gpus``: the share (a fraction of one GPU), or whole GPUs above 1."""
    value = float(share)
    return value if gpus <= 1 and value <= 1 else float(gpus)


@dataclass
class RayLauncher:
    """Submits runners to Ray; follows them by polling the job list (one request per tick)."""

    api: RayApi
    table: GpuTable
    python: str = "python"  # the interpreter on the nodes (gpu_scheduler installed there)
    cwd: str = field(default_factory=os.getcwd)  # scripts' folder, the same path on every node
    mode: str = "ray"
    remote: bool = True  # no local process: the daemon follows it through the launcher
    poll_s: float = POLL_S

    def __post_init__(self) -> None:
        self._watched: dict[str, Callable[[str], None]] = {}
        self._lock = threading.Lock()
        self._known: dict[str, RayJob] = {}
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreachable = False
        self._ran: set[str] = set()  # sessions seen RUNNING: a later FAILED is not a launch failure

    # -- Launcher protocol
    def launch(self, req: LaunchRequest) -> LaunchedProcess:
        node = self.table.node_of(req.gpus[0]) if req.gpus else ""
        spec = req.spec()
        # On the node: Ray's CUDA_VISIBLE_DEVICES (gpus None), output to Ray's log (stdout).
        spec.update(gpus=None, log_path=os.devnull, cwd=spec.get("cwd") or self.cwd,
                    record_path=None, python=self.python)  # paths of the nodes, not ours
        entrypoint = shlex.join([self.python, "-m", "gpu_scheduler.runner", json.dumps(spec)])
        env = {str(k): str(v) for k, v in req.env.items()}
        if not req.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""  # else the job would see every GPU of its node
        num_gpus = ray_num_gpus(req.share, len(req.gpus))
        try:
            self.api.submit(req.session, entrypoint, num_gpus=num_gpus, num_cpus=0, node_id=node,
                            env=env, metadata={  # Ray's job list lacks the GPUs asked for
                                "gpu_scheduler_job": req.job_id, "owner": self.table.owner,
                                "node": node, "num_gpus": str(num_gpus),
                                "attempt": str(req.attempt)})
        except Exception as exc:
            # Submitted before a crash, or accepted but the answer was lost: follow that one,
            # if it is ours. A job id from another scheduler, or from before a reset, is not.
            try:
                found = self.api.jobs().get(req.session)
            except Exception:
                found = None
            if found is None or found.metadata.get("owner") != self.table.owner:
                if found is not None:
                    raise LaunchError(
                        f"a Ray job {req.session} exists that this scheduler did not submit "
                        "(another scheduler on the cluster with the same line, or a state reset); "
                        "`ray job delete` it or change the line") from None
                raise LaunchError(f"Ray refused the job: {_first_line(exc)}") from None
        return LaunchedProcess(pid=0, pid_started_at=0.0)

    def stop(self, pid: int, pid_started_at: float | None, session: str, grace_s: float) -> None:
        try:
            self.api.stop(session)
        except Exception as exc:
            log.warning("could not stop Ray job %s: %s", session, _first_line(exc))

    def alive(self, pid: int, pid_started_at: float | None) -> bool:
        return True  # not a local process; the poller reports the end

    def live_sessions(self) -> set[str]:
        return {sid for sid, job in self._poll().items() if not job.finished}

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- following jobs
    def follow(self, session: str, on_end: Callable[[str], None]) -> None:
        """Call ``on_end(session)`` once the Ray job has ended (from the poll thread)."""
        with self._lock:
            self._watched[session] = on_end
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="ray-poll", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while not self._closed.wait(self.poll_s):
            with self._lock:
                if not self._watched:
                    continue
                before = set(self._watched)  # a job followed later may not be listed yet
            try:
                jobs = self._poll()
            except Exception as exc:  # said once per outage, not twice a second
                if not self._unreachable:
                    log.warning("cannot list Ray jobs (will keep trying): %s", _first_line(exc))
                self._unreachable = True
                continue
            if self._unreachable:
                log.info("Ray job list reachable again")
                self._unreachable = False
            with self._lock:  # ended, or gone from Ray (head restarted, `ray job delete`)
                ended = [s for s in before if s in self._watched
                         and (s not in jobs or jobs[s].finished)]
                calls = [(s, self._watched.pop(s)) for s in ended]
            for session, on_end in calls:
                on_end(session)

    def _poll(self) -> dict[str, RayJob]:
        jobs = self.api.jobs()
        self._known = jobs
        self._ran.update(s for s, j in jobs.items() if j.status == "RUNNING")
        return jobs

    def job(self, session: str) -> RayJob | None:
        """The Ray job as last seen (polled again when unknown)."""
        found = self._known.get(session)
        if found is None or not found.finished:
            found = self._poll().get(session)
        return found

    def exit_record(self, session: str) -> dict[str, Any]:
        """The Ray job's end in the runner's record format (what the daemon reads locally)."""
        job = self.job(session)
        if job is None or not job.finished:
            return {}
        if job.exit_code is None and job.status == "FAILED":
            if session in self._ran:  # it ran, then its node or supervisor died: lost
                return {}
            return {"state": "launch_failed", "message": self._failure(session, job)}
        if job.exit_code == LAUNCH_FAILED_EXIT:  # the runner's, or the job's own 127?
            reason = self._runner_failure(session)
            if reason:
                return {"state": "launch_failed", "message": reason}
        if job.exit_code is None:  # stopped before its runner started
            return {"state": "exited", "exit_code": 143}
        code = job.exit_code if job.exit_code >= 0 else 128 - job.exit_code  # -15: SIGTERM
        return {"state": "exited", "exit_code": code}

    def _runner_failure(self, session: str) -> str:
        """The runner's own "could not start the job" line in the log, or ""."""
        with contextlib.suppress(Exception):
            for line in reversed(self.api.logs(session).splitlines()):
                if line.startswith("gpu_scheduler: launch failed:"):
                    return line.split("launch failed:", 1)[1].strip()
        return ""

    def _failure(self, session: str, job: RayJob) -> str:
        return self._runner_failure(session) or f"Ray: {_first_line(job.message) or job.status}"

    def recovery_facts(self, scheduler: Scheduler) -> dict[str, RunFacts]:
        """After a restart: what became of each job the state calls running, by its
        submission id. Not found = never submitted (requeued); nothing is submitted twice."""
        jobs = self._poll()
        facts: dict[str, RunFacts] = {}
        for job_id in scheduler.running_ids:
            run = scheduler.jobs[job_id].status
            found = jobs.get(run.session) if isinstance(run, Running) else None
            if found is None:
                facts[job_id] = RunFacts()
            elif not found.finished:
                facts[job_id] = RunFacts(pid=0, pid_started_at=0.0, alive=True)
            else:
                record = self.exit_record(found.submission_id)
                if record["state"] == "launch_failed":
                    facts[job_id] = RunFacts(launch_error=record["message"], pid=0)
                else:
                    facts[job_id] = RunFacts(exit_code=record["exit_code"], pid=0)
        return facts

    def fetch_log(self, session: str, path: Path) -> None:
        """Keep the ended job's output in our log folder (Ray may drop old jobs)."""
        try:
            text = self.api.logs(session)
        except Exception as exc:
            log.warning("cannot fetch the log of Ray job %s: %s", session, _first_line(exc))
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "Error:" in line and "Traceback" not in line:
            return line.strip()
    return text.splitlines()[0] if text else ""


def connect(address: str, state_dir: Path, python: str = "python") -> tuple[RayProbe, RayLauncher]:
    """The probe and launcher of ``execution.mode: ray`` (RayUnavailable says what is wrong)."""
    api = RealRayApi(address)
    state_dir.mkdir(parents=True, exist_ok=True)
    table = GpuTable(state_dir / "ray_gpus.json")
    probe = RayProbe(api, table)
    if probe.count() == 0:
        raise RayUnavailable(
            f"the Ray cluster at {address} has no GPUs: start its nodes with --num-gpus=N"
        )
    return probe, RayLauncher(api, table, python=python)
