"""Jobs, statuses, GPU snapshots and line errors to JSON-safe dicts and back, exactly.

Why a hand-written codec rather than ``dataclasses.asdict``: the state file must survive the
code changing under it, so its shape is spelled out here, once, and every value read back is
checked. A decoder never trusts its input: a wrong type, a missing key or an unknown key raises
``DecodeError`` (a ``ValueError``) naming the field path, e.g. ``jobs[3].status.gpus[0]: 'x' is
not of type 'integer'`` (jsonschema's wording, so schema and codec complaints read alike).

Shape: tuples become lists, ``None`` stays ``null``, every field is written (defaults too, so a
file is self-describing); on reading, fields that have a default in the dataclass may be left out
(hand-written files stay short). A status and an outcome carry a ``"kind"`` tag. Encoding then
decoding gives back an equal object; floats must be finite (JSON has no NaN), which the caller's
``json.dumps(..., allow_nan=False)`` enforces.

Pure: no I/O, stdlib only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_args

from gpu_scheduler.core.model import (
    Cancelled,
    DependencyFailed,
    Failed,
    Finished,
    GpuProcess,
    GpuSnapshot,
    Job,
    JobSpec,
    Killed,
    LaunchFailed,
    LineError,
    Outcome,
    Pending,
    Running,
    Status,
    StopReason,
    Succeeded,
    TimedOut,
)


class DecodeError(ValueError):
    """Bad data at ``path`` (``jobs[3].status.gpus[0]``); ``message`` says what is wrong."""

    def __init__(self, path: str, message: str) -> None:
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}" if path else message)


# ----------------------------------------------------------------------------- encoding
# Dict literals rather than reflection: encoding runs for every live job on every save.


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return {
        "job_id": spec.job_id,
        "source": spec.source,
        "line_no": spec.line_no,
        "text": spec.text,
        "priority": spec.priority,
        "script": spec.script,
        "conda_env": spec.conda_env,
        "args": list(spec.args),
        "allowed_gpus": None if spec.allowed_gpus is None else list(spec.allowed_gpus),
        "share": spec.share,
        "timeout_s": spec.timeout_s,
        "name": spec.name,
        "retries": spec.retries,
        "llm": spec.llm,
        "after": list(spec.after),
        "tenant": spec.tenant,
    }


def outcome_to_dict(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Succeeded):
        return {"kind": outcome.kind}
    if isinstance(outcome, Failed):
        return {"kind": outcome.kind, "exit_code": outcome.exit_code}
    if isinstance(outcome, TimedOut):
        return {"kind": outcome.kind, "timeout_s": outcome.timeout_s}
    if isinstance(outcome, LaunchFailed):
        return {"kind": outcome.kind, "message": outcome.message}
    if isinstance(outcome, Cancelled):
        return {"kind": outcome.kind, "by": outcome.by}
    if isinstance(outcome, Killed):
        return {"kind": outcome.kind, "reason": outcome.reason}
    if isinstance(outcome, DependencyFailed):
        return {"kind": outcome.kind, "dependency": outcome.dependency}
    raise TypeError(f"not an outcome: {outcome!r}")


def status_to_dict(status: Status) -> dict[str, Any]:
    if isinstance(status, Pending):
        return {
            "kind": "pending",
            "enqueued_at": status.enqueued_at,
            "not_before": status.not_before,
            "reason": status.reason,
        }
    if isinstance(status, Running):
        return {
            "kind": "running",
            "started_at": status.started_at,
            "gpus": list(status.gpus),
            "share_per_gpu": status.share_per_gpu,
            "session": status.session,
            "pid": status.pid,
            "pid_started_at": status.pid_started_at,
            "stopping": status.stopping,
            "stop_detail": status.stop_detail,
            "stop_requested_at": status.stop_requested_at,
            "suspended": status.suspended,
        }
    if isinstance(status, Finished):
        return {
            "kind": "finished",
            "finished_at": status.finished_at,
            "outcome": outcome_to_dict(status.outcome),
            "started_at": status.started_at,
            "gpus": list(status.gpus),
        }
    raise TypeError(f"not a job status: {status!r}")


def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "spec": spec_to_dict(job.spec),
        "share": job.share,
        "status": status_to_dict(job.status),
        "seq": job.seq,
        "submitted_at": job.submitted_at,
        "attempts": job.attempts,
        "launch_failures": job.launch_failures,
        "retries_used": job.retries_used,
        "requeues": job.requeues,
        "preemptions": job.preemptions,
        "oom_requeues": job.oom_requeues,
        "last_exit_code": job.last_exit_code,
    }


def gpu_snapshot_to_dict(gpu: GpuSnapshot) -> dict[str, Any]:
    processes = gpu.processes
    return {
        "index": gpu.index,
        "name": gpu.name,
        "memory_total_mib": gpu.memory_total_mib,
        "memory_used_mib": gpu.memory_used_mib,
        "utilization_pct": gpu.utilization_pct,
        "processes": None
        if processes is None
        else [{"pid": p.pid, "used_mib": p.used_mib} for p in processes],
        "healthy": gpu.healthy,
        "error": gpu.error,
        "uuid": gpu.uuid,
        **({"node": gpu.node} if gpu.node else {}),  # cluster GPUs only (Ray)
        **({"node_used": gpu.node_used} if gpu.node_used is not None else {}),
    }


def line_error_to_dict(error: LineError) -> dict[str, Any]:
    return {
        "source": error.source,
        "line_no": error.line_no,
        "text": error.text,
        "message": error.message,
        "expected": error.expected,
    }


# ----------------------------------------------------------------------------- value checks

Check = Callable[[Any, str], Any]  # (value, path) -> the checked value, or raise DecodeError


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any, path: str) -> int:
    if type(value) is not int:  # bool is an int subclass but never a count or an index
        raise DecodeError(path, f"{_show(value)} is not of type 'integer'")
    return value


def _float(value: Any, path: str) -> float:
    """A JSON number as a float: ``5`` is accepted for ``5.0`` (hand-written files)."""
    if type(value) is float:
        if not math.isfinite(value):
            raise DecodeError(path, f"{_show(value)} is not a finite number")
        return value
    if type(value) is int:
        return float(value)
    raise DecodeError(path, f"{_show(value)} is not of type 'number'")


def _str(value: Any, path: str) -> str:
    if type(value) is not str:
        raise DecodeError(path, f"{_show(value)} is not of type 'string'")
    return value


def _bool(value: Any, path: str) -> bool:
    if type(value) is not bool:
        raise DecodeError(path, f"{_show(value)} is not of type 'boolean'")
    return value


def _optional(check: Check) -> Check:
    def optional(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    return optional


def _tuple_of(check: Check) -> Check:
    def tuple_of(value: Any, path: str) -> tuple[Any, ...]:
        if type(value) is not list:
            raise DecodeError(path, f"{_show(value)} is not of type 'array'")
        return tuple(check(item, f"{path}[{i}]") for i, item in enumerate(value))

    return tuple_of


def _one_of(choices: tuple[str, ...]) -> Check:
    def one_of(value: Any, path: str) -> str:
        if type(value) is not str or value not in choices:
            raise DecodeError(path, f"{_show(value)} is not one of {list(choices)}")
        return value

    return one_of


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if type(value) is not dict:
        raise DecodeError(path, f"{_show(value)} is not of type 'object'")
    return value


@functools.cache
def _required(cls: type) -> frozenset[str]:
    """Fields without a default: the only keys a hand-written file must give."""
    return frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def _build(cls: type, data: Any, path: str, checks: Mapping[str, Check], tag: str = "") -> Any:
    """``cls(**checked fields)``; unknown keys are errors so a typo cannot drop a value."""
    obj = _object(data, path)
    for key in obj:
        if key not in checks and key != tag:
            raise DecodeError(path, f"unexpected key {key!r}")
    kwargs: dict[str, Any] = {}
    for name, check in checks.items():
        if name in obj:
            kwargs[name] = check(obj[name], f"{path}.{name}")
        elif name in _required(cls):
            raise DecodeError(path, f"{name!r} is a required property")
    return cls(**kwargs)


def _kind(data: Any, path: str, known: Mapping[str, Any]) -> str:
    obj = _object(data, path)
    if "kind" not in obj:
        raise DecodeError(path, "'kind' is a required property")
    return _one_of(tuple(known))(obj["kind"], f"{path}.kind")  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- decoding

_SPEC: dict[str, Check] = {
    "job_id": _str,
    "source": _str,
    "line_no": _int,
    "text": _str,
    "priority": _int,
    "script": _str,
    "conda_env": _optional(_str),
    "args": _tuple_of(_str),
    "allowed_gpus": _optional(_tuple_of(_int)),
    "share": _optional(_int),
    "timeout_s": _optional(_float),
    "name": _optional(_str),
    "retries": _int,
    "llm": _optional(_str),
    "after": _tuple_of(_str),
    "tenant": _str,
}

_OUTCOMES: dict[str, tuple[type, dict[str, Check]]] = {
    "succeeded": (Succeeded, {}),
    "failed": (Failed, {"exit_code": _int}),
    "timed_out": (TimedOut, {"timeout_s": _float}),
    "launch_failed": (LaunchFailed, {"message": _str}),
    "cancelled": (Cancelled, {"by": _str}),
    "killed": (Killed, {"reason": _str}),
    "dependency_failed": (DependencyFailed, {"dependency": _str}),
}

_STOP_REASONS: tuple[str, ...] = get_args(StopReason)


def _outcome(value: Any, path: str) -> Outcome:
    cls, checks = _OUTCOMES[_kind(value, path, _OUTCOMES)]
    return _build(cls, value, path, checks, tag="kind")  # type: ignore[no-any-return]


_STATUSES: dict[str, tuple[type, dict[str, Check]]] = {
    "pending": (Pending, {"enqueued_at": _float, "not_before": _float, "reason": _str}),
    "running": (
        Running,
        {
            "started_at": _float,
            "gpus": _tuple_of(_int),
            "share_per_gpu": _int,
            "session": _str,
            "pid": _optional(_int),
            "pid_started_at": _optional(_float),
            "stopping": _optional(_one_of(_STOP_REASONS)),
            "stop_detail": _str,
            "stop_requested_at": _optional(_float),
            "suspended": _bool,
        },
    ),
    "finished": (
        Finished,
        {
            "finished_at": _float,
            "outcome": _outcome,
            "started_at": _optional(_float),
            "gpus": _tuple_of(_int),
        },
    ),
}


def _status(value: Any, path: str) -> Status:
    cls, checks = _STATUSES[_kind(value, path, _STATUSES)]
    return _build(cls, value, path, checks, tag="kind")  # type: ignore[no-any-return]


def _spec(value: Any, path: str) -> JobSpec:
    return _build(JobSpec, value, path, _SPEC)  # type: ignore[no-any-return]


_JOB: dict[str, Check] = {
    "spec": _spec,
    "share": _int,
    "status": _status,
    "seq": _int,
    "submitted_at": _float,
    "attempts": _int,
    "launch_failures": _int,
    "retries_used": _int,
    "requeues": _int,
    "preemptions": _int,
    "oom_requeues": _int,
    "last_exit_code": _optional(_int),
}


def _process(value: Any, path: str) -> GpuProcess:
    return _build(GpuProcess, value, path, {"pid": _int, "used_mib": _int})  # type: ignore[no-any-return]


_GPU: dict[str, Check] = {
    "index": _int,
    "name": _str,
    "memory_total_mib": _int,
    "memory_used_mib": _int,
    "utilization_pct": _optional(_float),
    "processes": _optional(_tuple_of(_process)),
    "healthy": _bool,
    "error": _str,
    "uuid": _str,
    "node": _str,
    "node_used": _optional(_int),
}

_LINE_ERROR: dict[str, Check] = {
    "source": _str,
    "line_no": _int,
    "text": _str,
    "message": _str,
    "expected": _str,
}


def spec_from_dict(data: Any, path: str = "spec") -> JobSpec:
    """Raises DecodeError (a ValueError) naming ``path`` and the bad field."""
    return _spec(data, path)


def outcome_from_dict(data: Any, path: str = "outcome") -> Outcome:
    return _outcome(data, path)


def status_from_dict(data: Any, path: str = "status") -> Status:
    return _status(data, path)


def job_from_dict(data: Any, path: str = "job") -> Job:
    """Raises DecodeError (a ValueError) naming ``path`` and the bad field."""
    return _build(Job, data, path, _JOB)  # type: ignore[no-any-return]


def gpu_snapshot_from_dict(data: Any, path: str = "gpu") -> GpuSnapshot:
    return _build(GpuSnapshot, data, path, _GPU)  # type: ignore[no-any-return]


def line_error_from_dict(data: Any, path: str = "line_error") -> LineError:
    return _build(LineError, data, path, _LINE_ERROR)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- the fast path
# A big state file is almost all pending jobs, each with exactly the keys job_to_dict writes.
# ``jobs_from_dicts`` decodes those with the same checks as above but none of their bookkeeping
# (a path string per field, a check function per value), and fills the frozen dataclasses
# directly: about 3x faster (95 ms rather than 265 for 10,000 jobs). Anything else (a hand-written short form, a running or finished job,
# a value the checks refuse, any surprise) goes to job_from_dict, which decodes it or names the
# bad field. So both paths give the same Job, or the same error; tests/unit/test_codec_fast.py
# holds them to it, field by field.


class _NotCommon(Exception):
    """Not a saved pending job in the common shape: the checked decoder takes it."""


def _filler(cls: type) -> Callable[[dict[str, Any]], Any]:
    """``cls(**fields)`` for a frozen dataclass given every one of its fields.

    The generated ``__init__`` calls ``object.__setattr__`` once per field (some 6 µs for a
    JobSpec); handing the new instance its ``__dict__`` does the same in under 0.5 µs, as long as
    that ``__init__`` does nothing else (no ``__post_init__``, no slots).
    """
    if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        return lambda fields: cls(**fields)

    def fill(fields: dict[str, Any]) -> Any:
        obj = object.__new__(cls)
        object.__setattr__(obj, "__dict__", fields)
        return obj

    return fill


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _as_written(data: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``data`` if its keys are ``keys``, in that order, as the encoder writes them."""
    if type(data) is not dict or tuple(data) != keys:
        raise _NotCommon
    return dict(data)


def _in_order(data: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """``data``'s values for exactly the keys ``names``, in that order. A missing name raises
    KeyError, which ``jobs_from_dicts`` takes as any other surprise."""
    if type(data) is not dict or len(data) != len(names):
        raise _NotCommon
    return {name: data[name] for name in names}


def _check_types(
    fields: Mapping[str, Any],
    exact: tuple[tuple[str, type], ...],
    or_none: tuple[tuple[str, type], ...] = (),
) -> None:
    for name, kind in exact:
        if type(fields[name]) is not kind:
            raise _NotCommon
    for name, kind in or_none:
        value = fields[name]
        if value is not None and type(value) is not kind:
            raise _NotCommon


def _finite(value: Any) -> float:
    """What ``_float`` accepts, as it converts it (5 -> 5.0); NaN and infinities refused."""
    if type(value) is float and math.isfinite(value):
        return value
    if type(value) is int:
        return float(value)
    raise _NotCommon


def _all_of(kind: type, value: Any) -> tuple[Any, ...]:
    """What ``_tuple_of`` accepts: a list whose items are all exactly of type ``kind``."""
    if type(value) is not list:
        raise _NotCommon
    for item in value:
        if type(item) is not kind:
            raise _NotCommon
    return tuple(value)


# The same rules as _SPEC, _JOB and _STATUSES["pending"]: by type, or by hand below.
_SPEC_FIELDS = _field_names(JobSpec)
_SPEC_EXACT = (("job_id", str), ("source", str), ("line_no", int), ("text", str),
               ("priority", int), ("script", str), ("retries", int), ("tenant", str))  # fmt: skip
_SPEC_OR_NONE = (("conda_env", str), ("share", int), ("name", str), ("llm", str))
_SPEC_BY_HAND = ("args", "allowed_gpus", "timeout_s", "after")
_JOB_FIELDS = _field_names(Job)
_JOB_EXACT = (("share", int), ("seq", int), ("attempts", int), ("launch_failures", int),
              ("retries_used", int), ("requeues", int), ("preemptions", int),
              ("oom_requeues", int))  # fmt: skip
_JOB_OR_NONE = (("last_exit_code", int),)
_JOB_BY_HAND = ("spec", "status", "submitted_at")
_PENDING_KEYS = ("kind", *_field_names(Pending))
_new_spec, _new_job, _new_pending = _filler(JobSpec), _filler(Job), _filler(Pending)

# A field added to the model (and the codec) but not to the lists above would pass unchecked:
# then the fast path stays off, slower but never wrong (test_codec_fast.py says so).
_FAST = (
    {name for name, _ in _SPEC_EXACT + _SPEC_OR_NONE} | set(_SPEC_BY_HAND) == set(_SPEC_FIELDS)
    and {name for name, _ in _JOB_EXACT + _JOB_OR_NONE} | set(_JOB_BY_HAND) == set(_JOB_FIELDS)
    and _PENDING_KEYS == ("kind", "enqueued_at", "not_before", "reason")
)


def _common_spec(data: Any) -> JobSpec:
    fields = _as_written(data, _SPEC_FIELDS)  # spec_to_dict writes them in field order
    _check_types(fields, _SPEC_EXACT, _SPEC_OR_NONE)
    fields["args"] = _all_of(str, fields["args"])
    fields["after"] = _all_of(str, fields["after"])
    if fields["allowed_gpus"] is not None:
        fields["allowed_gpus"] = _all_of(int, fields["allowed_gpus"])
    if fields["timeout_s"] is not None:
        fields["timeout_s"] = _finite(fields["timeout_s"])
    return _new_spec(fields)  # type: ignore[no-any-return]


def _common_pending(data: Any) -> Pending:
    fields = _as_written(data, _PENDING_KEYS)
    if fields.pop("kind") != "pending" or type(fields["reason"]) is not str:
        raise _NotCommon
    fields["enqueued_at"] = _finite(fields["enqueued_at"])
    fields["not_before"] = _finite(fields["not_before"])
    return _new_pending(fields)  # type: ignore[no-any-return]


def _common_job(data: Any) -> Job:
    if not _FAST:
        raise _NotCommon
    fields = _in_order(data, _JOB_FIELDS)  # job_to_dict writes them in another order
    _check_types(fields, _JOB_EXACT, _JOB_OR_NONE)
    fields["spec"] = _common_spec(fields["spec"])
    fields["status"] = _common_pending(fields["status"])
    fields["submitted_at"] = _finite(fields["submitted_at"])
    return _new_job(fields)  # type: ignore[no-any-return]


def jobs_from_dicts(items: Iterable[Any], path: str = "jobs") -> tuple[Job, ...]:
    """``job_from_dict`` of each item, named ``{path}[i]`` in errors; fast for saved jobs.

    Raises DecodeError (a ValueError) for the first bad item, as ``job_from_dict`` would.
    """
    jobs = []
    for i, data in enumerate(items):
        try:
            job = _common_job(data)
        except Exception:  # any surprise, not only _NotCommon: the checked decoder decides
            job = job_from_dict(data, f"{path}[{i}]")
        jobs.append(job)
    return tuple(jobs)
