"""``jobs_from_dicts``: the fast decoder for the saved jobs that make up a big state file.

Apart from the checked decoders (``codec_decode``) because it is an optimisation with its own
rules: it must give exactly what ``job_from_dict`` gives, or hand the item to it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gpu_scheduler.core.codec_decode import job_from_dict
from gpu_scheduler.core.model import Job, JobSpec, Pending

# A big state file is almost all pending jobs, each with exactly the keys job_to_dict writes.
# ``jobs_from_dicts`` decodes those with the same checks as codec_decode but none of their
# bookkeeping (a path string per field, a check function per value), and fills the frozen
# dataclasses directly: about 3x faster (95 ms rather than 265 for 10,000 jobs). Anything else
# (a hand-written short form, a running or finished job, a value the checks refuse, any
# surprise) goes to job_from_dict, which decodes it or names the bad field. So both paths give the same Job, or the same error; tests/unit/test_codec_fast.py
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


# The same rules as codec_decode's _SPEC, _JOB and _STATUSES["pending"]: by type, or by hand below.
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
