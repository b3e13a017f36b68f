"""The fast paths added for issue 8 give the same answers as the plain ones they replace.

Job ids are stored in users' state files: the literal ids below were computed before the
fingerprint got its hand-written JSON, and must never change.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_scheduler.adapters.jobsfile import JobsFileReader
from gpu_scheduler.adapters.store import SavedState, StateStore
from gpu_scheduler.core import jobfile
from gpu_scheduler.core.jobfile import LineFields, parse_jobs
from gpu_scheduler.core.model import Job, JobSpec, Pending

LINES = [
    "0,/exp/eval.py",
    "0, /exp/eval.py, , --llm qwen2.5-3b-inst --task mmlu",
    "1, /exp/train.py, ml_env, --llm qwen2.5-7b-inst --epochs 10, 4-7 timeout=12h name=train7b",
    '2, /exp/sweep.py, , "--tags a,b --note ""quoted""", 0,2,5 gpus=0.25 retries=2',
    "3, /exp/report.py, , --input results/, after=train7b;x",
    "0,/exp/eval.py",
    "-5,relative/\u00fc.py,,--n\u00e9v \"\u00f6 \u00fc\" '\\u00e9' \U0001f600,timeout=1.5h gpus=2",
    "7,/a.py,,,timeout=90 retries=3",
]
IDS = {
    "default": ["2fb96a7142", "38097d1417", "95ecc1b685", "b9adc27dab",
                "3ce020e0a1", "dd63ad354f", "9e151a29dd", "707bb821ff"],
    "alice": ["e045980a62", "af443bb72e", "b134f91e34", "780102e274",
              "f3a37ffe58", "41b88c57a3", "0cfea240d8", "b7a00a37b2"],
}  # fmt: skip


def test_job_ids_are_the_ones_users_have_in_their_state_files() -> None:
    for tenant, ids in IDS.items():
        result = parse_jobs("\n".join(LINES) + "\n", "jobs.txt", tenant=tenant, gpu_count=8)
        assert not result.errors
        assert [s.job_id for s in result.specs] == ids


def test_the_reader_gives_the_same_ids_as_the_grammar(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("")
    (tmp_path / "sub").mkdir()
    text = "0,a.py\n1, a.py, , --x 1, 0-1 name=n timeout=2h\n0,a.py\n0,sub/../a.py\n"
    (tmp_path / "jobs.txt").write_text(text)
    specs = JobsFileReader(tmp_path / "jobs.txt", gpu_count=8).read().specs
    assert [s.job_id for s in specs] == [s.job_id for s in parse_jobs(text, "x", gpu_count=8).specs]
    assert {s.script for s in specs} == {str(tmp_path / "a.py")}  # absolute in the spec


_TEXT = st.text(max_size=8)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**6) | st.none()


@given(
    priority=st.integers(-(10**18), 10**18) | st.booleans(),
    script=_TEXT,
    env=st.none() | _TEXT,
    args=st.lists(_TEXT, max_size=4).map(tuple),
    gpus=st.none() | st.lists(st.integers(0, 99) | st.booleans(), max_size=4).map(tuple),
    share=st.none() | st.integers(0, 10**6) | st.booleans(),
    timeout=_FLOATS | st.booleans(),
    name=st.none() | _TEXT,
    retries=st.integers(0, 10**6) | st.booleans(),
    after=st.lists(_TEXT, max_size=3).map(tuple),
    tenant=_TEXT,
)
@settings(max_examples=400)
def test_hand_written_canonical_json_is_json_dumps_exactly(
    priority, script, env, args, gpus, share, timeout, name, retries, after, tenant
) -> None:  # type: ignore[no-untyped-def]
    fields = LineFields(
        priority=priority, script=script, conda_env=env, args=args, allowed_gpus=gpus,
        share=share, timeout_s=timeout, name=name, retries=retries, after=after,
    )  # fmt: skip
    reference = jobfile._canonical_json(fields, tenant)
    fast = jobfile._canonical_fast(fields, tenant)
    assert fast is None or fast == reference
    if type(timeout) is float and math.isfinite(timeout) and not isinstance(priority, bool):
        if not any(isinstance(v, bool) for v in (share, retries, *(gpus or ()))):
            assert fast is not None  # the parser's values always take the fast path
    expected = hashlib.sha256(reference.encode("ascii")).hexdigest()
    assert jobfile.fingerprint(fields, tenant) == expected


def test_a_bad_last_field_is_reported_every_time_not_remembered() -> None:
    for _ in range(2):
        assert parse_jobs("0,/a.py,,,gpus=0\n", "f").errors
    assert parse_jobs("0,/a.py,,,gpus=0.5\n", "f").specs[0].share == 500


def test_unchanged_specs_counts_the_same_objects_after_an_append(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    (tmp_path / "a.py").write_text("")
    path.write_text("0,a.py,,--n 1\n0,a.py,,--n 2\n")
    reader = JobsFileReader(path)
    first = reader.read()
    assert first.unchanged_specs == 0
    with open(path, "a") as f:
        f.write("0,a.py,,--n 3\n0,a.py")  # and a half-written line, held back
    second = reader.read()
    assert second.unchanged_specs == 2 and len(second.specs) == 3
    assert all(a is b for a, b in zip(first.specs, second.specs[:2], strict=True))
    third = reader.read(include_partial=True)  # the tail line is not kept between reads
    assert third.unchanged_specs == 3 and len(third.specs) == 4
    assert reader.read().unchanged_specs == 3
    path.write_text("0,a.py,,--n 1\n1,a.py,,--n 2\n")  # an edit: nothing is kept
    assert reader.read().unchanged_specs == 0
    (tmp_path / "a.py").unlink()  # a script check changed: nothing is kept either
    assert reader.read().unchanged_specs == 0


def test_a_save_after_one_job_changed_writes_that_job_anew(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    jobs = [
        Job(JobSpec(f"{n:010x}", "j.txt", n, "", 0, "a.py"), 500, Pending(1.0), n, 1.0)
        for n in range(3)
    ]
    store.save(SavedState(tuple(jobs), next_seq=3))
    jobs[1] = Job(jobs[1].spec, 250, Pending(2.0), 1, 1.0)
    store.save(SavedState(tuple(jobs), next_seq=3))
    loaded = StateStore(store.path).load()
    assert loaded is not None and list(loaded.state.jobs) == jobs
