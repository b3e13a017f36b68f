"""The scheduler's vocabulary as frozen dataclasses.

A job's status carries its own data: a running job *has* its GPUs and session, a finished one *has*
its outcome. Impossible combinations (a pending job with an exit code) cannot be written down.
Units are in the names: ``share`` is integer milli-GPU, memory is ``*_mib``, times are seconds
(``*_at`` are POSIX timestamps passed in by the caller, never read from a clock here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# --------------------------------------------------------------------------- jobs file

@dataclass(frozen=True)
class LineError:
    """One bad line: where it is, what it says, what is wrong and what was expected."""

    source: str
    line_no: int
    text: str
    message: str
    expected: str = ""

    def __str__(self) -> str:
        out = f"{self.source}:{self.line_no}: {self.message}"
        if self.expected:
            out += f" (expected {self.expected})"
        if self.text:
            out += f"\n    {self.text}"
        return out


@dataclass(frozen=True)
class JobSpec:
    """What one line of a jobs file asks for. ``job_id`` is stable across re-reads of the file."""

    job_id: str
    source: str  # the jobs file's path, as given
    line_no: int  # 1-based
    text: str  # the line, stripped
    priority: int  # lower runs first; 0 is the most urgent
    script: str
    conda_env: str | None = None
    args: tuple[str, ...] = ()
    allowed_gpus: tuple[int, ...] | None = None  # sorted, unique; None = any GPU
    share: int | None = None  # from gpus=, milli-GPU; None = resolve from llm_config
    timeout_s: float | None = None
    name: str | None = None
    retries: int = 0
    llm: str | None = None  # model named by --llm/--model in args, if any
    after: tuple[str, ...] = ()  # names or ids of jobs that must complete first
    tenant: str = "default"

    @property
    def label(self) -> str:
        """What a person calls this job: its name, else its script's file name."""
        return self.name or self.script.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- job status

@dataclass(frozen=True)
class Succeeded:
    kind: Literal["succeeded"] = "succeeded"


@dataclass(frozen=True)
class Failed:
    exit_code: int
    kind: Literal["failed"] = "failed"


@dataclass(frozen=True)
class TimedOut:
    timeout_s: float
    kind: Literal["timed_out"] = "timed_out"


@dataclass(frozen=True)
class LaunchFailed:
    message: str
    kind: Literal["launch_failed"] = "launch_failed"


@dataclass(frozen=True)
class Cancelled:
    by: str = "user"
    kind: Literal["cancelled"] = "cancelled"


@dataclass(frozen=True)
class Killed:
    """Stopped by the scheduler for breaking a rule (memory limit, GPU memory overrun)."""

    reason: str
    kind: Literal["killed"] = "killed"


@dataclass(frozen=True)
class DependencyFailed:
    dependency: str
    kind: Literal["dependency_failed"] = "dependency_failed"


Outcome = Succeeded | Failed | TimedOut | LaunchFailed | Cancelled | Killed | DependencyFailed


def describe_outcome(outcome: Outcome) -> str:
    """A short human reason, as shown in status and logs."""
    if isinstance(outcome, Succeeded):
        return "exit 0"
    if isinstance(outcome, Failed):
        return f"exit {outcome.exit_code}"
    if isinstance(outcome, TimedOut):
        return f"timed out after {outcome.timeout_s:g}s"
    if isinstance(outcome, LaunchFailed):
        return f"launch failed: {outcome.message}"
    if isinstance(outcome, Cancelled):
        return f"cancelled by {outcome.by}"
    if isinstance(outcome, Killed):
        return outcome.reason
    return f"dependency failed: {outcome.dependency}"


@dataclass(frozen=True)
class Pending:
    """Waiting for a placement. ``not_before`` delays a retry; ``reason`` says why it came back."""

    enqueued_at: float
    not_before: float = 0.0
    reason: str = ""


StopReason = Literal["cancel", "timeout", "preempt", "memory", "shutdown"]


@dataclass(frozen=True)
class Running:
    """Placed and launched (or being launched: ``pid`` is None until the launcher reports)."""

    started_at: float
    gpus: tuple[int, ...]
    share_per_gpu: int
    session: str
    pid: int | None = None
    pid_started_at: float | None = None  # the process's own start time, to tell a reused pid
    stopping: StopReason | None = None  # a stop was requested; the exit is interpreted by it
    stop_detail: str = ""
    stop_requested_at: float | None = None
    suspended: bool = False  # preempted in suspend mode: frozen (SIGSTOP), its shares lent out


@dataclass(frozen=True)
class Finished:
    finished_at: float
    outcome: Outcome
    started_at: float | None = None
    gpus: tuple[int, ...] = ()


Status = Pending | Running | Finished

StateName = Literal["pending", "running", "completed", "failed", "cancelled"]


def state_name(status: Status) -> StateName:
    """The five states users see: pending, running, completed, failed, cancelled."""
    if isinstance(status, Pending):
        return "pending"
    if isinstance(status, Running):
        return "running"
    if isinstance(status.outcome, Succeeded):
        return "completed"
    if isinstance(status.outcome, Cancelled):
        return "cancelled"
    return "failed"


@dataclass(frozen=True)
class Job:
    """A spec plus everything the scheduler learned about it.

    ``share`` is the resolved total milli-GPU (explicit ``gpus=``, else llm_config).
    ``seq`` is the arrival order used for FIFO within a priority; it never changes, so a
    requeued job keeps its place.
    """

    spec: JobSpec
    share: int
    status: Status
    seq: int
    submitted_at: float
    attempts: int = 0  # launches that reached a process
    launch_failures: int = 0  # launches that failed before the job's process started
    retries_used: int = 0  # re-runs after a non-zero exit (retries=N)
    requeues: int = 0  # times put back after losing its process or being preempted
    preemptions: int = 0  # times pushed back (requeued or suspended) for a more urgent job
    last_exit_code: int | None = None
    oom_requeues: int = 0  # times put back after dying of CUDA out-of-memory

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def state(self) -> StateName:
        return state_name(self.status)


# --------------------------------------------------------------------------- GPUs

@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_mib: int


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU as one probe saw it. ``processes`` is None when the probe cannot list them."""

    index: int
    name: str = "GPU"
    memory_total_mib: int = 0
    memory_used_mib: int = 0
    utilization_pct: float | None = None
    processes: tuple[GpuProcess, ...] | None = None
    healthy: bool = True
    error: str = ""
    uuid: str = ""
    # A cluster's GPUs belong to nodes: a multi-GPU gang never spans two. "" = this machine.
    node: str = ""
    # milli-GPU the cluster manager (Ray) counts as taken on this GPU's whole node, our jobs
    # included; what is not ours is foreign work. None when there is no such manager.
    node_used: int | None = None


# --------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...]
    share_per_gpu: int


@dataclass(frozen=True)
class Rejection:
    reason: str


@dataclass(frozen=True)
class Launch:
    """Start this job's process on these GPUs in this session. Shares are already counted."""

    job_id: str
    gpus: tuple[int, ...]
    share_per_gpu: int
    session: str
    attempt: int
    preempted: bool = False


@dataclass(frozen=True)
class Stop:
    """End this job's whole process group: SIGTERM, SIGKILL after ``grace_s``."""

    job_id: str
    reason: StopReason
    grace_s: float
    detail: str = ""


@dataclass(frozen=True)
class Suspend:
    """Freeze this job's process tree (SIGSTOP): preempted in suspend mode."""

    job_id: str
    detail: str = ""


@dataclass(frozen=True)
class Resume:
    """Continue a frozen job (SIGCONT): its shares are counted again."""

    job_id: str


Action = Launch | Stop | Suspend | Resume


@dataclass(frozen=True)
class Notice:
    """Something the daemon should log: a decision with its reason (requeued, dequeued, ...)."""

    event: str
    job_id: str = ""
    message: str = ""
    data: dict[str, object] = field(default_factory=dict)
