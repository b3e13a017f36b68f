"""codec.jobs_from_dicts (the fast path for saved jobs) gives exactly what job_from_dict gives.

"Exactly": equal, the same repr (so 5.0 stays a float and a tuple stays a tuple), the same
instance attributes; and for bad data the same DecodeError, word for word.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_scheduler.core import codec
from gpu_scheduler.core.model import (
    Cancelled,
    DependencyFailed,
    Failed,
    Finished,
    Job,
    JobSpec,
    Killed,
    LaunchFailed,
    Pending,
    Running,
    Succeeded,
    TimedOut,
)
from gpu_scheduler.status_sample import T0, many_jobs_state, sample_state
from tests.unit.test_codec import jobs as any_job
from tests.unit.test_codec import through_json

DELETE = object()


def plain_spec(n: int) -> JobSpec:
    return JobSpec(f"id{n}", "jobs.txt", n, f"0, /exp/eval{n}.py", 0, f"/exp/eval{n}.py")


def full_spec(n: int) -> JobSpec:
    return JobSpec(
        f"id{n}", "/home/ana/jobs/ü.txt", n, "1, train.py, env, --x 1, 0-3 name=t",
        -5, "/exp/tr\u00e4in.py", conda_env="env", args=("--x", "1", "\u00e9"),
        allowed_gpus=(0, 1, 2, 3), share=2500, timeout_s=7200.0, name=f"t{n}", retries=3,
        llm="qwen2.5-7b-inst", after=("prep", "id0"), tenant="alice",
    )  # fmt: skip


OUTCOMES = [Succeeded(), Failed(3), TimedOut(60.5), LaunchFailed("no such env"),
            Cancelled(), Cancelled("bob"), Killed("over its memory limit"),
            DependencyFailed("prep")]  # fmt: skip
STATUSES = [
    Pending(T0),
    Pending(T0 + 0.25, not_before=T0 + 60.0, reason="lost its process; retry 1 of 3"),
    Running(T0, (0,), 500, "gs-a"),
    Running(T0, (0, 1), 1000, "gs-b", pid=42, pid_started_at=T0 + 0.1, suspended=True),
    *[Running(T0, (2,), 250, "gs-c", pid=7, stopping=reason, stop_detail="why",
              stop_requested_at=T0 + 9.0)
      for reason in ("cancel", "timeout", "preempt", "memory", "shutdown")],
    *[Finished(T0 + 99.0, outcome, T0, (3,)) for outcome in OUTCOMES],
    Finished(T0 + 1.0, LaunchFailed("screen: not found")),
]  # fmt: skip


def varied_jobs() -> list[Job]:
    """Every status variant and outcome, with plain and fully-filled specs and counters."""
    out = []
    for n, status in enumerate(STATUSES):
        spec = full_spec(n) if n % 2 else plain_spec(n)
        counters = {"attempts": n, "launch_failures": 1, "retries_used": 2, "requeues": n % 3,
                    "preemptions": 1, "oom_requeues": n % 2,
                    "last_exit_code": None if n % 3 else -9}  # fmt: skip
        out.append(Job(spec, 500 + n, status, n, T0 - n, **counters))
    return out


def checked(items: list[Any]) -> tuple[Job, ...]:
    return tuple(codec.job_from_dict(d, f"jobs[{i}]") for i, d in enumerate(items))


def assert_identical(fast: tuple[Job, ...], slow: tuple[Job, ...]) -> None:
    assert fast == slow
    assert repr(fast) == repr(slow)  # 5 == 5.0 and (1,) vs [1] would pass == but not this
    for a, b in zip(fast, slow, strict=True):
        for x, y in ((a, b), (a.spec, b.spec), (a.status, b.status)):
            assert type(x) is type(y)
            assert list(vars(x).items()) == list(vars(y).items())  # same fields, same order


def outcome(decode: Any, items: list[Any]) -> Any:
    try:
        return decode(items)
    except codec.DecodeError as exc:
        return ("error", str(exc), exc.path)


# ----------------------------------------------------------------------------- good data


def test_a_varied_state_decodes_identically_on_both_paths() -> None:
    items = through_json({"jobs": [codec.job_to_dict(j) for j in varied_jobs()]})["jobs"]
    fast = codec.jobs_from_dicts(items)
    assert_identical(fast, checked(items))
    assert fast == tuple(varied_jobs())
    assert {type(j.status) for j in fast} == {Pending, Running, Finished}
    assert {type(j.status.outcome) for j in fast if isinstance(j.status, Finished)} == {
        type(o) for o in OUTCOMES
    }


def test_the_sample_states_decode_identically_on_both_paths() -> None:
    for saved in (sample_state(), many_jobs_state(500)):
        items = through_json({"jobs": [codec.job_to_dict(j) for j in saved.jobs]})["jobs"]
        assert_identical(codec.jobs_from_dicts(items), checked(items))


@settings(max_examples=300)
@given(st.lists(any_job, max_size=4))
def test_any_jobs_decode_identically_on_both_paths(jobs: list[Job]) -> None:
    items = through_json({"jobs": [codec.job_to_dict(j) for j in jobs]})["jobs"]
    fast = codec.jobs_from_dicts(items)
    assert_identical(fast, checked(items))
    assert fast == tuple(jobs)


def test_the_fast_path_takes_every_saved_pending_job() -> None:
    """Otherwise the fast path silently stops being fast (say, the encoder changed its order)."""
    for job in varied_jobs():
        if isinstance(job.status, Pending):
            data = through_json(codec.job_to_dict(job))
            assert codec._common_job(data) == job


def test_hand_written_short_forms_still_decode() -> None:
    data = {"spec": {"job_id": "x", "source": "j.txt", "line_no": 1, "text": "t.py",
                     "priority": 2, "script": "t.py"},
            "share": 1000, "status": {"kind": "pending", "enqueued_at": 100}, "seq": 0,
            "submitted_at": 100}  # fmt: skip
    assert_identical(codec.jobs_from_dicts([data]), checked([data]))


def test_keys_in_another_order_decode_identically() -> None:
    data = through_json(codec.job_to_dict(varied_jobs()[1]))
    shuffled = {k: data[k] for k in reversed(list(data))}
    shuffled["spec"] = {k: data["spec"][k] for k in sorted(data["spec"])}
    shuffled["status"] = {k: data["status"][k] for k in reversed(list(data["status"]))}
    assert_identical(codec.jobs_from_dicts([shuffled]), checked([shuffled]))


# ----------------------------------------------------------------------------- bad data

ODD_VALUES = [None, True, False, 0, 1, -1, 2**70, 2.5, 3.0, math.inf, -math.inf, math.nan, "",
              "x", "pending", [], ["x"], [1], [1.0], [True], [None], {}, {"kind": "pending"},
              DELETE]  # fmt: skip


def field_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in data.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += field_paths(value, (*prefix, key))
    return out


def changed(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for name in path[:-1]:
        node = node[name]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize("index", [0, 1, 3, 4])
def test_every_field_set_to_any_odd_value_decodes_or_fails_the_same_on_both_paths(
    index: int,
) -> None:
    good = through_json(codec.job_to_dict(varied_jobs()[index]))
    for path in field_paths(good):
        for value in ODD_VALUES:
            items = [good, changed(good, path, value)]
            fast, slow = outcome(codec.jobs_from_dicts, items), outcome(checked, items)
            assert fast == slow, (path, value)
            if not isinstance(fast, tuple) or fast[:1] != ("error",):
                assert_identical(fast, slow)


def test_an_unexpected_key_fails_the_same_on_both_paths() -> None:
    good = through_json(codec.job_to_dict(varied_jobs()[0]))
    for where in ((), ("spec",), ("status",)):
        bad = copy.deepcopy(good)
        node = bad
        for name in where:
            node = node[name]
        node["colour"] = "red"
        fast = outcome(codec.jobs_from_dicts, [good, bad])
        assert fast == outcome(checked, [good, bad])
        assert fast[0] == "error" and "jobs[1]" in fast[2] and "unexpected key 'colour'" in fast[1]


def test_not_an_object_at_all_names_its_index() -> None:
    good = through_json(codec.job_to_dict(varied_jobs()[0]))
    with pytest.raises(ValueError, match=r"^jobs\[2\]: 7 is not of type 'object'"):
        codec.jobs_from_dicts([good, good, 7])


def test_a_file_read_back_keeps_its_float_and_int_types() -> None:
    """JSON writes 5.0 as 5.0, but a hand-edited 5 must still come back as the float 5.0."""
    data = through_json(codec.job_to_dict(varied_jobs()[0]))
    data["submitted_at"] = 5
    data["status"]["enqueued_at"] = 6
    data["spec"]["timeout_s"] = 60
    (job,) = codec.jobs_from_dicts(json.loads(json.dumps([data])))
    assert repr(job.submitted_at) == "5.0" and repr(job.status.enqueued_at) == "6.0"  # type: ignore[union-attr]
    assert repr(job.spec.timeout_s) == "60.0"


def test_the_fast_path_checks_every_field_of_the_model() -> None:
    """A field added to JobSpec, Job or Pending must be added to the fast path's lists too;
    until then the fast path is off (slow, never wrong) and this test says why."""
    assert codec._FAST
