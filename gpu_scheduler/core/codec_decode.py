"""The checked decoders: JSON-ready dicts back to the model, every value checked, errors located.

The reading half of ``codec`` (which describes the shape): a wrong type, a missing key or an
unknown key raises ``DecodeError`` naming the field path. Also the reference the fast path
(``codec_fast``) falls back to and is tested against.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
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
