"""Reading traces: CSV rows and their located errors, ISO times, and a jobs.txt as a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_scheduler.core.llm import LlmTable
from gpu_scheduler.errors import GpuSchedulerError
from gpu_scheduler.simulate.trace import is_jobs_file, parse_csv_trace, read_trace

HEADER = "submit_time,duration_s,gpu_share,priority,tenant,name\n"


def test_a_good_row_becomes_a_job_spec_with_a_row_based_id() -> None:
    t = parse_csv_trace(HEADER + "5,30m,0.5,2,alice,eval-a\n", "t.csv")
    assert t.errors == ()
    (job,) = t.jobs
    assert (job.submit_s, job.duration_s, job.share) == (5.0, 1800.0, 500)
    spec = job.spec
    assert (spec.job_id, spec.source, spec.line_no) == ("row2", "t.csv", 2)
    assert (spec.priority, spec.tenant, spec.name) == (2, "alice", "eval-a")


def test_optional_columns_default_and_num_gpus_is_accepted() -> None:
    t = parse_csv_trace("submit_time,duration_s,num_gpus\n0,10,2\n", "t.csv")
    (job,) = t.jobs
    assert (job.share, job.spec.priority, job.spec.tenant, job.name) == (2000, 0, "default", "row2")


def test_bad_rows_are_located_and_the_good_rows_still_run() -> None:
    text = (
        HEADER
        + "0,10,0.5,0,a,good1\n"  # line 2
        + "# a comment line\n"  # line 3
        + "1,-5,0.5,0,a,negative\n"  # line 4
        + "2,10,0,0,a,zero-share\n"  # line 5
        + "yesterday,10,1,0,a,bad-time\n"  # line 6
        + "3,10,,0,a,no-share\n"  # line 7
        + "4,10,1,high,a,bad-priority\n"  # line 8
        + "\n"  # line 9
        + "5,10,1,0,a,good2\n"  # line 10
        + "6,10,1,0,a,x,extra\n"  # line 11
        + "-1,10,1,0,a,before-start\n"  # line 12
    )
    t = parse_csv_trace(text, "trace.csv")
    assert [j.name for j in t.jobs] == ["good1", "good2"]
    got = {e.line_no: str(e).split("\n")[0] for e in t.errors}
    assert got == {
        4: "trace.csv:4: duration_s -5 is negative (expected a run time in seconds >= 0 "
        "such as 3600 (or 90s, 30m, 2h))",
        5: "trace.csv:5: gpu_share 0 is not a positive share (expected a positive GPU share "
        "or count such as 0.25, 0.5, 1 or 2)",
        6: "trace.csv:6: submit_time 'yesterday' is neither seconds nor an ISO timestamp "
        "(expected seconds from the start such as 0 or 90.5, or an ISO timestamp such as "
        "2024-05-01T09:30:00)",
        7: "trace.csv:7: neither gpu_share nor num_gpus is given (expected a positive GPU "
        "share or count such as 0.25, 0.5, 1 or 2)",
        8: "trace.csv:8: priority 'high' is not an integer (expected an integer priority "
        "such as 0 (lower runs first))",
        11: "trace.csv:11: the row has 7 fields but the header names 6 (expected one field "
        "per header column: submit_time, duration_s and gpu_share or num_gpus (optional: "
        "priority, tenant, name))",
        12: "trace.csv:12: submit_time -1 is negative (expected seconds from the start such "
        "as 0 or 90.5, or an ISO timestamp such as 2024-05-01T09:30:00)",
    }
    assert t.errors[0].text == "1,-5,0.5,0,a,negative"  # the row itself is shown too


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("submit_time,gpu_share\n", "the header lacks column duration_s"),
        ("duration_s,gpu_share\n", "the header lacks column submit_time"),
        ("submit_time,duration_s\n", "the header lacks a gpu_share or num_gpus column"),
        ("submit_time,duration_s,gpu_share,name,name\n", "column name is named twice"),
    ],
)
def test_a_missing_column_is_one_located_error_and_no_job(header: str, problem: str) -> None:
    t = parse_csv_trace(header + "0,10,1\n", "t.csv")
    assert t.jobs == ()
    (error,) = t.errors
    assert error.line_no == 1
    assert problem in error.message
    assert "submit_time, duration_s and gpu_share or num_gpus" in error.expected


def test_unknown_columns_are_ignored_with_a_warning() -> None:
    t = parse_csv_trace("submit_time,duration_s,gpu_share,priorty\n0,10,1,2\n", "t.csv")
    assert len(t.jobs) == 1 and t.jobs[0].spec.priority == 0
    assert t.warnings == (
        "t.csv:1: column 'priorty' is not a trace column and is ignored (known: submit_time, "
        "duration_s, gpu_share, num_gpus, priority, tenant, name)",
    )


def test_iso_timestamps_count_from_the_earliest_and_may_not_mix_with_seconds() -> None:
    text = (
        "submit_time,duration_s,gpu_share\n"
        "2024-05-01T10:00:30Z,10,1\n"
        "2024-05-01T10:00:00+00:00,10,1\n"
        "2024-05-01T12:00:00+02:00,10,1\n"  # the same instant as 10:00 UTC
        "2024-05-01T10:01:00,10,1\n"  # no zone: UTC
        "30,10,1\n"
    )
    t = parse_csv_trace(text, "t.csv")
    assert [j.submit_s for j in t.jobs] == [30.0, 0.0, 0.0, 60.0]
    (error,) = t.errors
    assert error.line_no == 6
    assert "mixes kinds: earlier rows give ISO timestamps" in error.message


def test_a_share_is_rounded_to_the_allocation_precision() -> None:
    t = parse_csv_trace("submit_time,duration_s,gpu_share\n0,10,0.333\n", "t.csv", unit=10)
    assert t.jobs[0].share == 330


def test_what_is_read_as_a_jobs_file() -> None:
    assert is_jobs_file("queue.txt", HEADER)
    assert not is_jobs_file("trace.csv", "0, a.py\n")
    assert is_jobs_file("queue", "# comment\n0, /exp/a.py, , --llm x\n")
    assert not is_jobs_file("trace", HEADER + "0,10,1,0,a,b\n")


def test_a_jobs_file_runs_every_line_at_zero_for_the_estimated_duration(tmp_path: Path) -> None:
    path = tmp_path / "queue.txt"
    path.write_text(
        "# my queue\n"
        "0, /exp/eval.py, , --llm qwen2.5-3b-inst --task mmlu\n"
        "1, /exp/train.py, , --llm unknown-model, name=train after=prep\n"
        "2, /exp/x.py, , , gpus=0.25\n"
        "x, /exp/bad.py\n"
    )
    table = LlmTable(1.0, {"qwen2.5-3b-inst": 0.5})
    t = read_trace(path, duration_s=1800, llm_table=lambda: table, unit=5)
    assert t.kind == "jobs.txt"
    assert [(j.row, j.share, j.submit_s, j.duration_s) for j in t.jobs] == [
        (2, 500, 0.0, 1800),  # llm_config
        (3, 1000, 0.0, 1800),  # default_requirement
        (4, 250, 0.0, 1800),  # gpus=
    ]
    assert [j.spec.job_id for j in t.jobs] == ["line2", "line3", "line4"]
    assert t.jobs[1].name == "train"
    (error,) = t.errors
    assert str(error).startswith(f"{path}:5: priority 'x' is not an integer")
    assert t.warnings and "after= are not simulated" in t.warnings[0]


def test_a_jobs_file_needs_a_duration(tmp_path: Path) -> None:
    path = tmp_path / "queue.txt"
    path.write_text("0, /exp/a.py\n")
    with pytest.raises(GpuSchedulerError, match="give --duration"):
        read_trace(path)


def test_a_missing_trace_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(GpuSchedulerError, match="trace file not found"):
        read_trace(tmp_path / "nope.csv")
