"""Workload traces for the simulator: a CSV trace, or a jobs.txt with one duration estimate.

A CSV trace has a header; one row is one job:

* ``submit_time`` — seconds from the start of the trace (``0``, ``90.5``), or an ISO-8601
  timestamp (``2024-05-01T09:30:00``, zone optional, no zone = UTC; times are then counted from
  the earliest timestamp). One file uses one kind.
* ``duration_s`` — how long the job runs once started: seconds (``3600``) or ``90s/30m/2h``.
* ``gpu_share`` or ``num_gpus`` — the GPUs it needs, a fraction or a count (``0.5``, ``2``);
  when a row fills both, ``gpu_share`` wins.
* optional ``priority`` (integer, lower runs first, default 0), ``tenant`` (default
  ``default``), ``name`` (default ``row<N>``). Other columns are ignored with a warning.

Blank lines and lines starting with ``#`` are skipped; a row is one physical line (no quoted
line breaks), so a row's number is its line number. A bad row becomes a located ``LineError``
(file:line: what, expected) and the good rows still run.

A jobs.txt (extension ``.txt``, or a file whose first line is not a CSV header) is parsed by the
real jobs.txt grammar (``core.jobfile``); every line is submitted at t=0 and runs for the one
``duration_s`` estimate given; its share is resolved exactly as the daemon does
(``core.llm.resolve_share``: ``gpus=``, else llm_config, else ``default_requirement``).

Every job becomes a ``JobSpec`` built here: ``job_id`` is ``row<N>`` (CSV) or ``line<N>``
(jobs.txt), ``source`` the trace path and ``line_no`` the row's line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from gpu_scheduler.core.jobfile import parse_duration, parse_jobs
from gpu_scheduler.core.llm import LlmTable, resolve_share
from gpu_scheduler.core.model import JobSpec, LineError
from gpu_scheduler.core.units import share_from_gpus
from gpu_scheduler.errors import GpuSchedulerError

REQUIRED = ("submit_time", "duration_s")
SHARE_COLUMNS = ("gpu_share", "num_gpus")
OPTIONAL = ("priority", "tenant", "name")
COLUMNS = (*REQUIRED, *SHARE_COLUMNS, *OPTIONAL)

EXPECTED_HEADER = (
    "a header naming submit_time, duration_s and gpu_share or num_gpus "
    "(optional: priority, tenant, name)"
)
EXPECTED_TIME = (
    "seconds from the start such as 0 or 90.5, or an ISO timestamp such as 2024-05-01T09:30:00"
)
EXPECTED_DURATION = "a run time in seconds >= 0 such as 3600 (or 90s, 30m, 2h)"
EXPECTED_SHARE = "a positive GPU share or count such as 0.25, 0.5, 1 or 2"
EXPECTED_PRIORITY = "an integer priority such as 0 (lower runs first)"


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace: what it asks for, when it arrives and how long it runs.

    ``submit_s`` is seconds from the trace's start (>= 0); ``share`` is the requested total
    milli-GPU, already rounded to the allocation precision.
    """

    spec: JobSpec
    submit_s: float
    duration_s: float
    share: int

    @property
    def row(self) -> int:
        return self.spec.line_no

    @property
    def name(self) -> str:
        return self.spec.label


@dataclass(frozen=True)
class Trace:
    path: str
    kind: str  # "csv" | "jobs.txt"
    jobs: tuple[TraceJob, ...]
    errors: tuple[LineError, ...] = ()
    warnings: tuple[str, ...] = ()


class _RowProblem(Exception):
    def __init__(self, message: str, expected: str) -> None:
        super().__init__(message)
        self.message, self.expected = message, expected


# --------------------------------------------------------------------------- reading a file


def read_trace(
    path: str | Path,
    *,
    unit: int = 5,
    duration_s: float | None = None,
    llm_table: Callable[[], LlmTable] | None = None,
    gpu_count: int | None = None,
) -> Trace:
    """Read a CSV trace or a jobs.txt (see the module docstring for how the kind is told).

    ``unit`` is the share rounding unit in milli-GPU (the config's allocation precision);
    ``duration_s`` and ``llm_table`` (called only for a jobs.txt) are needed for a jobs.txt;
    ``gpu_count`` lets the jobs.txt grammar report GPU indices this machine does not have.
    Raises GpuSchedulerError when the file cannot be read or a jobs.txt lacks ``duration_s``.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GpuSchedulerError(f"{source}: trace file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GpuSchedulerError(f"{source}: cannot read the trace: {exc}") from None
    if is_jobs_file(source, text):
        if duration_s is None:
            raise GpuSchedulerError(
                f"{source} is a jobs.txt file, not a CSV trace: give --duration (e.g. "
                "--duration 30m), the run time assumed for every line"
            )
        table = llm_table() if llm_table is not None else LlmTable()
        return parse_jobs_trace(text, source, duration_s, table, unit, gpu_count)
    return parse_csv_trace(text, source, unit)


def is_jobs_file(source: str, text: str) -> bool:
    """A ``.txt`` file, or one whose first non-blank, non-comment line names no trace column.

    (A ``.csv`` file is always read as CSV, so a CSV with a broken header gets a located error
    about its header rather than a confusing one from the jobs.txt grammar.)
    """
    suffix = Path(source).suffix.lower()
    if suffix == ".txt":
        return True
    if suffix == ".csv":
        return False
    first = next((ln for ln in text.split("\n") if ln.strip() and not _comment(ln)), "")
    return not set(_cells(first)) & set(COLUMNS)


# --------------------------------------------------------------------------- CSV


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _cells(line: str) -> list[str]:
    line = line.rstrip("\r")
    if '"' not in line:  # the common case; csv gives the same answer, slower
        return [c.strip() for c in line.split(",")]
    return [c.strip() for c in next(csv.reader([line]), [])]


def parse_csv_trace(text: str, source: str, unit: int = 5) -> Trace:
    """Every usable row as a TraceJob and every bad row as a located LineError."""
    lines = text.split("\n")
    numbered = [(n, ln.rstrip("\r")) for n, ln in enumerate(lines, 1) if ln.strip()]
    numbered = [(n, ln) for n, ln in numbered if not _comment(ln)]
    if not numbered:
        return Trace(
            source, "csv", (), (LineError(source, 1, "", "the trace is empty", EXPECTED_HEADER),)
        )
    header_no, header_line = numbered[0]
    header = _cells(header_line)
    problem = _header_problem(header)
    if problem:
        return Trace(
            source,
            "csv",
            (),
            (LineError(source, header_no, header_line.strip(), problem, EXPECTED_HEADER),),
        )
    unknown = [c for c in header if c not in COLUMNS]
    warnings = tuple(
        f"{source}:{header_no}: column {c!r} is not a trace column and is ignored "
        f"(known: {', '.join(COLUMNS)})"
        for c in unknown
    )
    jobs: list[tuple[TraceJob, datetime | None]] = []
    errors: list[LineError] = []
    iso: bool | None = None  # decided by the first usable row
    for line_no, line in numbered[1:]:
        try:
            cells = _cells(line)
            if len(cells) > len(header):
                raise _RowProblem(
                    f"the row has {len(cells)} fields but the header names {len(header)}",
                    EXPECTED_HEADER.replace("a header naming", "one field per header column:"),
                )
            row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
            job, stamp = _row(row, source, line_no, line.strip(), unit)
            if iso is None:
                iso = stamp is not None
            elif iso != (stamp is not None):
                first = "ISO timestamps" if iso else "seconds"
                raise _RowProblem(
                    f"submit_time {row['submit_time']!r} mixes kinds: earlier rows give {first}",
                    "one kind of submit_time in a file: " + EXPECTED_TIME,
                )
            jobs.append((job, stamp))
        except _RowProblem as p:
            errors.append(LineError(source, line_no, line.strip(), p.message, p.expected))
    if iso:
        start = min(stamp for _, stamp in jobs if stamp is not None)
        jobs = [(replace(j, submit_s=(s - start).total_seconds()), s) for j, s in jobs if s]
    return Trace(source, "csv", tuple(j for j, _ in jobs), tuple(errors), warnings)


def _header_problem(header: list[str]) -> str:
    dupes = sorted({c for c in header if c and header.count(c) > 1})
    if dupes:
        return f"column {dupes[0]} is named twice in the header"
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        return f"the header lacks column {' and '.join(missing)}"
    if not any(c in header for c in SHARE_COLUMNS):
        return "the header lacks a gpu_share or num_gpus column"
    return ""


def _row(
    row: dict[str, str], source: str, line_no: int, text: str, unit: int
) -> tuple[TraceJob, datetime | None]:
    submit_s, stamp = _submit_time(row["submit_time"])
    duration = _duration(row["duration_s"])
    share = _share(row)
    priority = _priority(row.get("priority", ""))
    tenant = row.get("tenant", "") or "default"
    name = row.get("name", "") or f"row{line_no}"
    milli = share_from_gpus(share, unit)
    spec = JobSpec(
        job_id=f"row{line_no}", source=source, line_no=line_no, text=text, priority=priority,
        script=name, name=name, share=milli, tenant=tenant,
    )  # fmt: skip
    return TraceJob(spec, submit_s, duration, milli), stamp


def _submit_time(value: str) -> tuple[float, datetime | None]:
    if not value:
        raise _RowProblem("submit_time is empty", EXPECTED_TIME)
    try:
        seconds = float(value)
    except ValueError:
        return 0.0, _timestamp(value)
    if not math.isfinite(seconds):
        raise _RowProblem(f"submit_time {value!r} is not a finite number", EXPECTED_TIME)
    if seconds < 0:
        raise _RowProblem(f"submit_time {value} is negative", EXPECTED_TIME)
    return seconds, None


def _timestamp(value: str) -> datetime:
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise _RowProblem(
            f"submit_time {value!r} is neither seconds nor an ISO timestamp", EXPECTED_TIME
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _duration(value: str) -> float:
    if not value:
        raise _RowProblem("duration_s is empty", EXPECTED_DURATION)
    if value.lstrip().startswith("-"):
        raise _RowProblem(f"duration_s {value} is negative", EXPECTED_DURATION)
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parse_duration(value)  # 90s, 30m, 2h, 1h30m
        except ValueError:
            raise _RowProblem(
                f"duration_s {value!r} is not a duration", EXPECTED_DURATION
            ) from None
    if not math.isfinite(seconds):
        raise _RowProblem(f"duration_s {value!r} is not a finite duration", EXPECTED_DURATION)
    return seconds


def _share(row: dict[str, str]) -> float:
    column = "gpu_share" if row.get("gpu_share") else "num_gpus"
    value = row.get(column, "")
    if not value:
        raise _RowProblem("neither gpu_share nor num_gpus is given", EXPECTED_SHARE)
    try:
        gpus = float(value)
    except ValueError:
        raise _RowProblem(f"{column} {value!r} is not a number", EXPECTED_SHARE) from None
    if not math.isfinite(gpus) or gpus <= 0:
        raise _RowProblem(f"{column} {value} is not a positive share", EXPECTED_SHARE)
    if gpus > 4096:
        raise _RowProblem(f"{column} {value} is more GPUs than any machine has", EXPECTED_SHARE)
    return gpus


def _priority(value: str) -> int:
    if not value:
        return 0
    try:
        priority = int(value)
    except ValueError:
        raise _RowProblem(f"priority {value!r} is not an integer", EXPECTED_PRIORITY) from None
    if abs(priority) > 10**9:
        raise _RowProblem(f"priority {value} is too large", EXPECTED_PRIORITY)
    return priority


# --------------------------------------------------------------------------- jobs.txt


def parse_jobs_trace(
    text: str,
    source: str,
    duration_s: float,
    table: LlmTable,
    unit: int = 5,
    gpu_count: int | None = None,
) -> Trace:
    """A jobs.txt as a trace: every good line submitted at t=0, running for ``duration_s``."""
    parsed = parse_jobs(text, source, gpu_count=gpu_count)
    jobs: list[TraceJob] = []
    errors = list(parsed.errors)
    for spec in parsed.specs:
        try:
            share = resolve_share(spec, table, unit)
        except ValueError as exc:
            errors.append(LineError(source, spec.line_no, spec.text, str(exc), EXPECTED_SHARE))
            continue
        spec = replace(spec, job_id=f"line{spec.line_no}")
        jobs.append(TraceJob(spec, 0.0, duration_s, share))
    ignored = sorted({opt for j in jobs for opt, on in _options_used(j.spec).items() if on})
    warnings = ()
    if ignored:
        warnings = (
            f"{source}: {', '.join(ignored)} are not simulated (every job runs once, for "
            f"{duration_s:g} s, with no dependencies)",
        )
    errors.sort(key=lambda e: e.line_no)
    return Trace(source, "jobs.txt", tuple(jobs), tuple(errors), warnings)


def _options_used(spec: JobSpec) -> dict[str, bool]:
    return {"after=": bool(spec.after), "timeout=": spec.timeout_s is not None,
            "retries=": spec.retries > 0}  # fmt: skip
