"""The codec: every Job survives dict -> JSON -> dict exactly, and bad data names its field."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gpu_scheduler.adapters.store import state_schema
from gpu_scheduler.core import codec
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
    Pending,
    Running,
    Succeeded,
    TimedOut,
)

# ----------------------------------------------------------------------------- strategies
# builds() only infers required arguments; "..." asks it to infer an optional one too.

times = st.floats(allow_nan=False, allow_infinity=False)
opt_times = st.none() | times
ints = st.integers()
int_tuples = st.lists(ints, max_size=4).map(tuple)

specs = st.builds(
    JobSpec,
    job_id=st.text(min_size=1, max_size=12),
    args=st.lists(st.text(), max_size=4).map(tuple),
    allowed_gpus=st.none() | int_tuples,
    after=st.lists(st.text(), max_size=3).map(tuple),
    timeout_s=opt_times,
    conda_env=...,
    share=...,
    name=...,
    retries=...,
    llm=...,
    tenant=...,
)
outcomes = st.one_of(
    st.builds(Succeeded),
    st.builds(Failed),
    st.builds(TimedOut, timeout_s=times),
    st.builds(LaunchFailed),
    st.builds(Cancelled, by=...),
    st.builds(Killed),
    st.builds(DependencyFailed),
)
statuses = st.one_of(
    st.builds(Pending, enqueued_at=times, not_before=times, reason=...),
    st.builds(
        Running,
        started_at=times,
        gpus=int_tuples,
        pid=...,
        pid_started_at=opt_times,
        stopping=...,
        stop_detail=...,
        stop_requested_at=opt_times,
    ),
    st.builds(Finished, finished_at=times, outcome=outcomes, started_at=opt_times, gpus=int_tuples),
)
jobs = st.builds(
    Job,
    spec=specs,
    status=statuses,
    submitted_at=times,
    attempts=...,
    launch_failures=...,
    retries_used=...,
    requeues=...,
    last_exit_code=...,
)
gpus = st.builds(
    GpuSnapshot,
    name=...,
    memory_total_mib=...,
    memory_used_mib=...,
    utilization_pct=opt_times,
    processes=st.none() | st.lists(st.builds(GpuProcess), max_size=3).map(tuple),
    healthy=...,
    error=...,
    uuid=...,
)
line_errors = st.builds(LineError, expected=...)


def through_json(data: dict[str, Any]) -> Any:
    """What a file gives back: strict JSON (no NaN), so the dict must be JSON-safe."""
    return json.loads(json.dumps(data, allow_nan=False))


def assert_json_types_only(value: Any) -> None:
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        for item in value.values():
            assert_json_types_only(item)
    elif isinstance(value, list):
        for item in value:
            assert_json_types_only(item)
    else:
        assert value is None or isinstance(value, (str, int, float, bool)), repr(value)


# ----------------------------------------------------------------------------- round trips


@given(jobs)
def test_any_job_round_trips_through_json_exactly(job: Job) -> None:
    data = codec.job_to_dict(job)
    assert_json_types_only(data)
    back = codec.job_from_dict(through_json(data))
    assert back == job
    assert type(back.status) is type(job.status)


@given(gpus)
def test_any_gpu_snapshot_round_trips(gpu: GpuSnapshot) -> None:
    data = codec.gpu_snapshot_to_dict(gpu)
    assert_json_types_only(data)
    assert codec.gpu_snapshot_from_dict(through_json(data)) == gpu


@given(line_errors)
def test_any_line_error_round_trips(error: LineError) -> None:
    assert codec.line_error_from_dict(through_json(codec.line_error_to_dict(error))) == error


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs)
def test_the_schema_accepts_whatever_the_codec_writes(job: Job) -> None:
    """The schema documents the job format; the codec enforces it at run time. Keep them equal."""
    state = {"version": 1, "jobs": [codec.job_to_dict(job)]}
    errors = list(Draft202012Validator(state_schema()).iter_errors(through_json(state)))
    assert errors == []


# ----------------------------------------------------------------------------- examples


def running_job() -> Job:
    spec = JobSpec("a1", "jobs.txt", 4, "train.py gpus=0.5", 0, "train.py", args=("--x", "1"))
    status = Running(started_at=10.0, gpus=(0, 1), share_per_gpu=250, session="gs-a1", pid=42)
    return Job(spec=spec, share=500, status=status, seq=3, submitted_at=5.0, attempts=1)


def test_shape_is_tagged_and_keeps_none() -> None:
    data = codec.job_to_dict(running_job())
    assert data["status"]["kind"] == "running"
    assert data["status"]["gpus"] == [0, 1]
    assert data["status"]["stopping"] is None
    assert data["spec"]["allowed_gpus"] is None
    assert data["last_exit_code"] is None


@pytest.mark.parametrize(
    "outcome",
    [Succeeded(), Failed(3), TimedOut(60.0), LaunchFailed("no such env"), Cancelled("bob"),
     Killed("over its memory limit"), DependencyFailed("prep")],
)  # fmt: skip
def test_every_outcome_round_trips(outcome: Any) -> None:
    job = Job(running_job().spec, 500, Finished(20.0, outcome, 10.0, (0,)), 3, 5.0)
    assert codec.job_from_dict(through_json(codec.job_to_dict(job))) == job
    assert codec.outcome_to_dict(outcome)["kind"] == outcome.kind


def test_hand_written_job_may_leave_out_fields_with_defaults() -> None:
    data = {
        "spec": {"job_id": "x", "source": "j.txt", "line_no": 1, "text": "t.py",
                 "priority": 2, "script": "t.py"},
        "share": 1000,
        "status": {"kind": "pending", "enqueued_at": 100},
        "seq": 0,
        "submitted_at": 100,
    }  # fmt: skip
    job = codec.job_from_dict(data)
    assert job.spec.args == () and job.spec.allowed_gpus is None and job.spec.tenant == "default"
    assert job.status == Pending(enqueued_at=100.0)
    assert isinstance(job.submitted_at, float) and isinstance(job.status.enqueued_at, float)


def broken(change: str, value: Any) -> dict[str, Any]:
    """A valid job dict with the field at dotted ``change`` set to ``value`` (or deleted)."""
    data = copy.deepcopy(codec.job_to_dict(running_job()))
    *parents, last = change.split(".")
    node = data
    for name in parents:
        node = node[name]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


@pytest.mark.parametrize(
    ("change", "value", "message"),
    [
        ("status.gpus", ["x"], "jobs[3].status.gpus[0]: 'x' is not of type 'integer'"),
        ("status.gpus", "0,1", "jobs[3].status.gpus: '0,1' is not of type 'array'"),
        ("seq", True, "jobs[3].seq: True is not of type 'integer'"),
        ("seq", 3.0, "jobs[3].seq: 3.0 is not of type 'integer'"),
        ("submitted_at", "yesterday", "jobs[3].submitted_at: 'yesterday' is not of type 'number'"),
        ("submitted_at", math.nan, "jobs[3].submitted_at: nan is not a finite number"),
        ("spec.script", None, "jobs[3].spec.script: None is not of type 'string'"),
        ("spec.job_id", DELETE, "jobs[3].spec: 'job_id' is a required property"),
        ("spec.colour", "red", "jobs[3].spec: unexpected key 'colour'"),
        ("status.kind", "sleeping", "jobs[3].status.kind: 'sleeping' is not one of"),
        ("status.kind", DELETE, "jobs[3].status: 'kind' is a required property"),
        ("status.stopping", "nap", "jobs[3].status.stopping: 'nap' is not one of"),
        ("status.exit_code", 1, "jobs[3].status: unexpected key 'exit_code'"),
        ("status", [], "jobs[3].status: [] is not of type 'object'"),
    ],
)
def test_bad_data_raises_value_error_naming_the_field(
    change: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        codec.job_from_dict(broken(change, value), "jobs[3]")
    assert str(info.value).startswith(message)
    assert isinstance(info.value, codec.DecodeError) and info.value.path.startswith("jobs[3]")


def test_bad_outcome_names_its_field() -> None:
    job = Job(running_job().spec, 500, Finished(20.0, Failed(2)), 3, 5.0)
    data = codec.job_to_dict(job)
    data["status"]["outcome"]["exit_code"] = "2"
    with pytest.raises(ValueError, match=r"^job\.status\.outcome\.exit_code: '2' is not of type"):
        codec.job_from_dict(data)


def test_not_an_object_at_all() -> None:
    with pytest.raises(ValueError, match=r"^job: 7 is not of type 'object'"):
        codec.job_from_dict(7)


def test_bad_gpu_process_names_its_index() -> None:
    data = codec.gpu_snapshot_to_dict(GpuSnapshot(0, processes=(GpuProcess(1, 2),)))
    data["processes"][0]["used_mib"] = -0.5
    with pytest.raises(ValueError, match=r"^gpu\.processes\[0\]\.used_mib: -0\.5 is not of type"):
        codec.gpu_snapshot_from_dict(data)
