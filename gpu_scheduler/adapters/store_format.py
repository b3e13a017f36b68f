"""The state file's contents: what a saved state holds, and its bytes both ways.

Apart from the store's file handling so that the format (compact JSON, header first, jobs
encoded once and reused while unchanged) can be read and tested on its own. The version
policy (``STATE_VERSION``, migrations, the header check) stays in ``store.py``, which hands
the version to ``encode_parts`` and checks a document between ``parse_document`` and
``state_from_document``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from gpu_scheduler.core import codec
from gpu_scheduler.core.model import Job


@dataclass(frozen=True)
class SavedState:
    """Everything the daemon needs to carry on after a restart. ``saved_at`` is POSIX seconds."""

    jobs: tuple[Job, ...]  # live jobs: pending, running and recently finished
    paused: tuple[int, ...] = ()
    next_seq: int = 0
    saved_at: float = 0.0
    daemon: Mapping[str, Any] = field(default_factory=dict)  # pid, started_at, heartbeat_at, ...
    observed: Mapping[str, Any] = field(default_factory=dict)  # what status shows; JSON-safe


@dataclass(frozen=True)
class LoadResult:
    """What ``load`` found; the daemon should log ``problem`` loudly when ``from_backup``."""

    state: SavedState
    from_backup: bool
    problem: str  # why the main file was not used, naming it; "" when it was


class Unusable(Exception):
    """This file cannot be used (corrupt, truncated, invalid); a backup may stand in for it."""


# ----------------------------------------------------------------------------- the schema


@functools.cache
def state_schema() -> dict[str, Any]:
    """The full schema of the file (every job field), for tools, docs and tests."""
    text = (resources.files("gpu_scheduler") / "schemas" / "state.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


@functools.cache
def header_schema() -> dict[str, Any]:
    """The schema without the jobs' own: the codec checks jobs with the same strictness and
    wording some 30x faster (jsonschema takes ~10 s for 10,000 jobs)."""
    schema = copy.deepcopy(state_schema())
    del schema["properties"]["jobs"]["items"]
    return schema


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ----------------------------------------------------------------------------- decoding


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_document(raw: bytes) -> Any:
    """The JSON document in ``raw``, not yet checked; raises Unusable saying what is wrong."""
    if not raw.strip():
        raise Unusable("the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unusable(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        return json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        # An unterminated string runs to the end of the file, so it too says "cut short".
        ended = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        hint = " (truncated?)" if ended else ""
        raise Unusable(
            f"not valid JSON{hint} at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise Unusable("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise Unusable(f"not valid JSON: {exc}") from None


def state_from_document(doc: dict[str, Any]) -> SavedState:
    """The state in a current-version document whose header is valid; raises Unusable."""
    try:
        jobs = codec.jobs_from_dicts(doc["jobs"], "jobs")
    except codec.DecodeError as exc:
        raise Unusable(str(exc)) from None
    duplicate = first_duplicate(jobs)
    if duplicate:
        raise Unusable(duplicate)
    return SavedState(
        jobs=jobs,
        paused=tuple(int(g) for g in doc.get("paused", ())),
        next_seq=int(doc.get("next_seq", 0)),
        saved_at=float(doc.get("saved_at", 0.0)),
        daemon=doc.get("daemon", {}),
        observed=doc.get("observed", {}),
    )


def first_duplicate(jobs: Sequence[Job]) -> str:
    """A job id given twice would be scheduled twice: report it instead of guessing."""
    if len({job.spec.job_id for job in jobs}) == len(jobs):  # every save: the common case first
        return ""
    seen: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if job.job_id in seen:
            return f"jobs[{i}]: job id {job.job_id!r} appears twice (also jobs[{seen[job.job_id]}])"
        seen[job.job_id] = i
    return ""


# ----------------------------------------------------------------------------- encoding

# ensure_ascii (the default): a lone surrogate (an undecodable file name) still round-trips
dumps = functools.partial(json.dumps, separators=(",", ":"), allow_nan=False)
Encoded = dict[int, tuple[Job, bytes]]  # id(job) -> (that job, its JSON)


def encode_parts(state: SavedState, previous: Encoded, version: int) -> tuple[list[bytes], Encoded]:
    """Compact JSON, header keys first (``head -c 300`` shows them), jobs last, in three chunks
    to be written one after the other (gluing them would copy the whole file twice more).

    Jobs are frozen, so one that is the very same object as at the last save has the same JSON:
    a tick that touches 3 of 10,000 pending jobs encodes 3. Raises TypeError or ValueError on
    a value JSON cannot hold (a NaN time, a set in ``observed``).
    """
    head: dict[str, Any] = {"version": version, "saved_at": state.saved_at}
    with contextlib.suppress(OverflowError, OSError, ValueError):
        head["saved_at_utc"] = datetime.fromtimestamp(state.saved_at, timezone.utc).isoformat()
    head["next_seq"] = state.next_seq
    head["paused"] = list(state.paused)
    head["daemon"] = dict(state.daemon)
    head["observed"] = dict(state.observed)
    encoded: Encoded = {}
    parts = []
    for job in state.jobs:
        hit = previous.get(id(job))
        if hit is None or hit[0] is not job:
            hit = (job, dumps(codec.job_to_dict(job)).encode("ascii"))
        encoded[id(job)] = hit
        parts.append(hit[1])
    opening = (dumps(head)[:-1] + ',"jobs":[').encode("ascii")
    return [opening, b",".join(parts), b"]}"], encoded
