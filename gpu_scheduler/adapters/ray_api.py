"""The thin seam over the ``ray`` package: the Jobs API and the GCS's per-node resource view.

The only module that imports ``ray``, and lazily: Ray is the optional extra
``gpu-scheduler[ray]``. ``FakeRayApi`` is an in-memory cluster for tests (the same protocol).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpu_scheduler.core.units import ONE_GPU
from gpu_scheduler.errors import GpuSchedulerError

RAY_REQUIREMENT = "ray[default]>=2.60,<2.61"  # the tested range; pyproject's [ray] extra
INSTALL_HINT = f"pip install 'gpu-scheduler[ray]'  (or: pip install '{RAY_REQUIREMENT}')"
NODE_LABEL = "ray.io/node-id"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayUnavailable(GpuSchedulerError):
    """Ray is not installed or the cluster cannot be reached: the message says what to do."""


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str  # the node's IP as Ray reports it
    gpus: int  # whole GPUs it declares
    used: int  # milli-GPU Ray counts as taken there (all users, ours included)
    is_head: bool = False

    @property
    def name(self) -> str:
        """IP plus the start of the node id: two nodes may share an IP (one machine)."""
        return f"{self.address}/{self.node_id[:6]}"


@dataclass(frozen=True)
class RayJob:
    submission_id: str
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    exit_code: int | None = None
    message: str = ""
    node_id: str = ""  # where its driver runs (once placed)
    num_gpus: float = 0.0  # what it asked Ray for
    metadata: dict[str, str] = field(default_factory=dict)  # ours: owner token, pinned node

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class RayApi(Protocol):
    def nodes(self) -> list[RayNode]: ...

    def submit(self, submission_id: str, entrypoint: str, *, num_gpus: float, num_cpus: float,
               node_id: str, env: dict[str, str], metadata: dict[str, str]) -> None: ...

    def jobs(self) -> dict[str, RayJob]: ...

    def stop(self, submission_id: str) -> None: ...

    def logs(self, submission_id: str) -> str: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- the real cluster


def import_ray() -> Any:
    """The ``ray`` package, or a RayUnavailable that says what to install."""
    try:
        import ray
        from ray.job_submission import JobSubmissionClient  # noqa: F401
    except ImportError as exc:
        raise RayUnavailable(
            f"execution.mode ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return ray


class RealRayApi:
    """The Jobs API (submit, status, logs, stop) and the GCS's live per-node resource view."""

    def __init__(self, address: str) -> None:
        import_ray()
        from ray.job_submission import JobSubmissionClient

        self.address = address
        try:
            self._client = JobSubmissionClient(address)
        except Exception as exc:
            raise RayUnavailable(
                f"cannot reach the Ray cluster at {address!r} (execution.ray.address): {exc}. "
                "Start it with `ray start --head --num-gpus=N` or fix the address."
            ) from None
        self.dashboard = self._client.get_address()
        self._gcs = _gcs_address(address)

    def nodes(self) -> list[RayNode]:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(self._gcs, timeout=5)
        found = []
        for node in [*status.active_nodes, *status.idle_nodes]:
            usage = {u.resource_name: u for u in node.resource_usage.usage}
            gpu = usage.get("GPU")
            found.append(RayNode(
                node_id=node.node_id,
                address=node.ip_address,
                gpus=int(gpu.total) if gpu else 0,
                used=round(gpu.used * ONE_GPU) if gpu else 0,
                is_head="node:__internal_head__" in usage,
            ))
        return found

    def submit(self, submission_id: str, entrypoint: str, *, num_gpus: float, num_cpus: float,
               node_id: str, env: dict[str, str], metadata: dict[str, str]) -> None:
        self._client.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            entrypoint_num_gpus=num_gpus,
            entrypoint_num_cpus=num_cpus,
            entrypoint_label_selector={NODE_LABEL: node_id} if node_id else None,
            runtime_env={"env_vars": env},
            metadata=metadata,
        )

    def jobs(self) -> dict[str, RayJob]:
        found = {}
        for info in self._client.list_jobs():
            if not info.submission_id:
                continue
            found[info.submission_id] = RayJob(
                submission_id=info.submission_id,
                status=str(getattr(info.status, "value", info.status)),
                exit_code=info.driver_exit_code,
                message=info.message or "",
                node_id=info.driver_node_id or "",
                num_gpus=float(getattr(info, "entrypoint_num_gpus", None)
                               or (info.metadata or {}).get("num_gpus") or 0),
                metadata=dict(info.metadata or {}),
            )
        return found

    def stop(self, submission_id: str) -> None:
        self._client.stop_job(submission_id)

    def logs(self, submission_id: str) -> str:
        return str(self._client.get_job_logs(submission_id))

    def tail(self, submission_id: str) -> Iterator[str]:
        """The job's log as it grows (for ``logs --follow``); ends when the job does."""
        import asyncio

        stream = self._client.tail_job_logs(submission_id)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()

    def close(self) -> None:
        pass


def _gcs_address(address: str) -> str:
    """The GCS address (host:port) for the resource view; the dashboard URL's host on the
    default GCS port when an http address was given."""
    if address.startswith(("http://", "https://")):
        host = address.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        return f"{host}:6379"
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        return str(canonicalize_bootstrap_address_or_die("auto"))
    return address


# --------------------------------------------------------------------------- fake cluster


@dataclass
class FakeRayJob:
    submission_id: str
    entrypoint: str
    num_gpus: float
    num_cpus: float
    node_id: str
    env: dict[str, str]
    status: str = "RUNNING"  # set "PENDING" by a test: Ray has not placed it (not counted)
    exit_code: int | None = None
    log: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class FakeRayApi:
    """An in-memory cluster: nodes with GPU counts; submitted jobs run until told to end.
    Safe to call from several threads at once, as the daemon does (launch workers, the
    launcher's poll thread, the loop's probe)."""

    def __init__(self, nodes: dict[str, int], clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.RLock()
        self.gpus = dict(nodes)  # node id -> GPUs
        self.down: set[str] = set()
        self.submitted: dict[str, FakeRayJob] = {}
        self.foreign: dict[str, int] = {}  # node id -> milli-GPU taken by other users
        self.fail_submit = ""
        self.unreachable = ""

    def nodes(self) -> list[RayNode]:
        if self.unreachable:
            raise ConnectionError(self.unreachable)
        with self._lock:
            used: dict[str, int] = dict(self.foreign)
            for job in self.submitted.values():
                if job.status == "RUNNING":
                    used[job.node_id] = used.get(job.node_id, 0) + round(job.num_gpus * ONE_GPU)
        return [RayNode(n, "10.0.0.1", g, used.get(n, 0), is_head=i == 0)
                for i, (n, g) in enumerate(self.gpus.items()) if n not in self.down]

    def submit(self, submission_id: str, entrypoint: str, *, num_gpus: float, num_cpus: float,
               node_id: str, env: dict[str, str], metadata: dict[str, str]) -> None:
        if self.fail_submit:
            raise RuntimeError(self.fail_submit)
        with self._lock:
            if submission_id in self.submitted:
                raise RuntimeError(f"Job with submission_id {submission_id} already exists.")
            self.submitted[submission_id] = FakeRayJob(submission_id, entrypoint, num_gpus,
                                                       num_cpus, node_id, dict(env),
                                                       metadata=dict(metadata))

    def finish(self, submission_id: str, exit_code: int, log_text: str = "") -> None:
        with self._lock:
            job = self.submitted[submission_id]
            job.status, job.exit_code = ("SUCCEEDED" if exit_code == 0 else "FAILED"), exit_code
            job.log += log_text

    def jobs(self) -> dict[str, RayJob]:
        with self._lock:
            return {sid: RayJob(sid, j.status, j.exit_code, "", j.node_id, j.num_gpus,
                                dict(j.metadata))
                    for sid, j in self.submitted.items()}

    def stop(self, submission_id: str) -> None:
        with self._lock:
            job = self.submitted[submission_id]
            if job.status == "RUNNING":
                job.status = "STOPPED"

    def logs(self, submission_id: str) -> str:
        return self.submitted[submission_id].log

    def close(self) -> None:
        pass
