"""The state file: saved atomically, restored defensively, with finished jobs rotated out.

The promise: whatever dies (the daemon, the machine, the disk filling mid-write), no job is lost
and no job runs twice. So:

* ``save`` writes a temp file in the same folder, fsyncs it, hard-links the current file onto the
  backup (via a temp name + ``os.replace``), ``os.replace``-s the temp file onto the state file and
  fsyncs the folder. At every instant ``path`` names a complete file; the backup is the previous
  good state. Any OSError leaves the old files intact and no temp file behind.
* ``load`` checks format version (migrating older ones, refusing newer ones), the JSON Schema and
  then the codec. A bad file falls back to the backup with the reason in ``LoadResult.problem``;
  when both are bad it raises rather than start with no record of the jobs. ``reset`` is the
  deliberate way out.
* Finished jobs move to an append-only JSON Lines history so that saving stays as cheap with
  100,000 jobs behind it as with none. The daemon must ``append_history(jobs)`` BEFORE saving a
  state without them: a crash in between leaves a job in both (harmless, history is de-duplicated
  on read), never in neither.
* Launches are written ahead cheaply: before the daemon starts a runner it appends the launched
  jobs, fsynced, to ``<stem>.launches.jsonl`` (``append_launches``), a few hundred bytes however
  big the state; the full save follows, coalesced, and empties that journal. Each line names the
  state file it extends (inode and ``saved_at`` of the file last saved), so a restart
  replays (``read_launches``) exactly the lines written after the file it loaded: a crash
  between a full save and the journal's truncation replays nothing twice, and a line cut short
  (its fsync never returned, so its runner never started) is skipped.

One writer (the daemon) per state file; readers (the CLI) use ``read_only_snapshot``.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import io
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gpu_scheduler.core import codec
from gpu_scheduler.core.model import Finished, Job
from gpu_scheduler.errors import StateFileError
from gpu_scheduler.schema_precheck import surely_valid

if TYPE_CHECKING:  # jsonschema is imported only for a file that may be bad (80 ms)
    from jsonschema import Draft202012Validator

log = logging.getLogger(__name__)

STATE_VERSION = 1
HISTORY_VERSION = 1  # each history line carries its own "v"
LAUNCH_JOURNAL_VERSION = 1  # each launch journal line carries its own "v"
RESET_HINT = "`gpu-scheduler start --reset-state` moves the bad files aside for a deliberate fresh start"
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
_MAX_BAD_LINE_WARNINGS = 5
# append_history writes id and state first, so the daemon's start-up read need not parse each
# job: 100,000 lines in ~0.2 s rather than ~2 s. Any other line (escapes, spaces) is parsed.
_HISTORY_HEAD = re.compile(rb'\{"v":1,"id":"([\x20-\x21\x23-\x5b\x5d-\x7e]*)","state":"([a-z_]+)",')


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


# ----------------------------------------------------------------------------- migration


def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 0 had no "version" key and called the paused GPUs "paused_gpus"."""
    out = dict(doc)
    if "paused_gpus" in out:
        out["paused"] = out.pop("paused_gpus")
    out["version"] = 1
    return out


# version N -> a function turning a version-N document into a version-N+1 one (without mutating)
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


class _Unusable(Exception):
    """This file cannot be used (corrupt, truncated, invalid); a backup may stand in for it."""


def _migrate(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _Unusable(f"the top level is a JSON {type(doc).__name__}, not an object")
    version = doc.get("version", 0)  # version 0 predates the key
    if type(version) is not int:
        raise _Unusable(f"version: {_show(version)} is not of type 'integer'")
    if version > STATE_VERSION:
        # Not a corrupt file: falling back to an older backup would lose a newer daemon's jobs.
        raise StateFileError(
            f"format version {version} is newer than this gpu-scheduler understands "
            f"({STATE_VERSION}); upgrade gpu-scheduler"
        )
    while version < STATE_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise _Unusable(f"format version {version} is unknown (expected 0 to {STATE_VERSION})")
        doc = step(doc)
        version = doc["version"]
    return doc


# ----------------------------------------------------------------------------- decoding


@functools.cache
def state_schema() -> dict[str, Any]:
    """The full schema of the file (every job field), for tools, docs and tests."""
    text = (resources.files("gpu_scheduler") / "schemas" / "state.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


@functools.cache
def _header_schema() -> dict[str, Any]:
    """The schema without the jobs' own: the codec checks jobs with the same strictness and
    wording some 30x faster (jsonschema takes ~10 s for 10,000 jobs)."""
    schema = copy.deepcopy(state_schema())
    del schema["properties"]["jobs"]["items"]
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_header_schema())


def _header_error(doc: dict[str, Any]) -> str:
    """What is wrong with the file outside its jobs, in jsonschema's words; "" if nothing."""
    if surely_valid(doc, _header_schema()):
        return ""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(doc))
    if error is None:
        return ""
    where = _dotted(list(error.absolute_path))
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    return f"{where}: {message}" if where else message


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(raw: bytes) -> SavedState:
    """The state in ``raw``; raises _Unusable (say what is wrong) or StateFileError (too new)."""
    if not raw.strip():
        raise _Unusable("the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unusable(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        # An unterminated string runs to the end of the file, so it too says "cut short".
        ended = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        hint = " (truncated?)" if ended else ""
        raise _Unusable(
            f"not valid JSON{hint} at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _Unusable("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise _Unusable(f"not valid JSON: {exc}") from None
    doc = _migrate(doc)
    problem = _header_error(doc)
    if problem:
        raise _Unusable(problem)
    try:
        jobs = codec.jobs_from_dicts(doc["jobs"], "jobs")
    except codec.DecodeError as exc:
        raise _Unusable(str(exc)) from None
    duplicate = _first_duplicate(jobs)
    if duplicate:
        raise _Unusable(duplicate)
    return SavedState(
        jobs=jobs,
        paused=tuple(int(g) for g in doc.get("paused", ())),
        next_seq=int(doc.get("next_seq", 0)),
        saved_at=float(doc.get("saved_at", 0.0)),
        daemon=doc.get("daemon", {}),
        observed=doc.get("observed", {}),
    )


def _first_duplicate(jobs: Sequence[Job]) -> str:
    """A job id given twice would be scheduled twice: report it instead of guessing."""
    if len({job.spec.job_id for job in jobs}) == len(jobs):  # every save: the common case first
        return ""
    seen: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if job.job_id in seen:
            return f"jobs[{i}]: job id {job.job_id!r} appears twice (also jobs[{seen[job.job_id]}])"
        seen[job.job_id] = i
    return ""


# ensure_ascii (the default): a lone surrogate (an undecodable file name) still round-trips
_dumps = functools.partial(json.dumps, separators=(",", ":"), allow_nan=False)
_Encoded = dict[int, tuple[Job, bytes]]  # id(job) -> (that job, its JSON)


def _encode(state: SavedState, previous: _Encoded) -> tuple[bytes, _Encoded]:
    """The whole file's bytes (see ``_encode_parts``)."""
    chunks, encoded = _encode_parts(state, previous)
    return b"".join(chunks), encoded


def _encode_parts(state: SavedState, previous: _Encoded) -> tuple[list[bytes], _Encoded]:
    """Compact JSON, header keys first (``head -c 300`` shows them), jobs last, in three chunks
    to be written one after the other (gluing them would copy the whole file twice more).

    Jobs are frozen, so one that is the very same object as at the last save has the same JSON:
    a tick that touches 3 of 10,000 pending jobs encodes 3. Raises TypeError or ValueError on
    a value JSON cannot hold (a NaN time, a set in ``observed``).
    """
    head: dict[str, Any] = {"version": STATE_VERSION, "saved_at": state.saved_at}
    with contextlib.suppress(OverflowError, OSError, ValueError):
        head["saved_at_utc"] = datetime.fromtimestamp(state.saved_at, timezone.utc).isoformat()
    head["next_seq"] = state.next_seq
    head["paused"] = list(state.paused)
    head["daemon"] = dict(state.daemon)
    head["observed"] = dict(state.observed)
    encoded: _Encoded = {}
    parts = []
    for job in state.jobs:
        hit = previous.get(id(job))
        if hit is None or hit[0] is not job:
            hit = (job, _dumps(codec.job_to_dict(job)).encode("ascii"))
        encoded[id(job)] = hit
        parts.append(hit[1])
    opening = (_dumps(head)[:-1] + ',"jobs":[').encode("ascii")
    return [opening, b",".join(parts), b"]}"], encoded


# ----------------------------------------------------------------------------- small OS helpers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _append_lines(
    path: Path, lines: Sequence[str], what: str, *, data_only: bool = False,
    sync_folder: bool | None = None,
) -> None:
    """Append whole lines and sync them before returning (fdatasync when ``data_only``). A
    line cut short by an earlier crash is ended first, so it spoils only itself; a failed
    append is cut off again. The folder is synced too when ``sync_folder`` (None: when the
    file was empty, i.e. new). Raises StateFileError naming ``path`` and ``what`` failed."""
    data = ("\n".join(lines) + "\n").encode("ascii")
    fd: int | None = None
    size: int | None = None
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        _write_all(fd, data)
        (os.fdatasync if data_only else os.fsync)(fd)
        if (size == 0) if sync_folder is None else sync_folder:
            _fsync_folder(path.parent)  # a new file's name must survive too
    except OSError as exc:
        if fd is not None and size is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
        raise StateFileError(f"{path}: {what}: {_reason(exc)}") from exc
    finally:
        if fd is not None:
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make renames and new names in ``folder`` durable (some file systems cannot: EINVAL)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


# ----------------------------------------------------------------------------- the store


class StateStore:
    """The state file at ``path``, its ``.bak`` and its ``.history.jsonl``, all mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.backup = self.path.with_suffix(self.path.suffix + ".bak")
        self.history = self.path.with_name(self.path.stem + ".history.jsonl")
        self._main_is_good: bool | None = None  # may the current file become the backup?
        self._encoded: _Encoded = {}  # the last save's jobs and their JSON
        self.launches = self.path.with_name(self.path.stem + ".launches.jsonl")
        self._saved_as: list[float] | None = None  # [inode, saved_at] of the last save
        self._loaded_as: list[float] | None = None  # ... of the main file ``load`` used
        self._journal_lines = -1  # launch lines since the last full save (-1: unknown, e.g. a
        # dead daemon's, or an older state's after a reset): the next full save empties the file
        self._journal_named = False  # is the journal's name durable (folder fsynced since)?

    # ------------------------------------------------------------------ loading

    def load(self) -> LoadResult | None:
        """The saved state for the daemon; None on a fresh start (no state, no backup).

        A bad main file is used neither as state nor (at the next save) as backup; a copy is
        kept beside it as ``<name>.bad-<UTC>`` for a post-mortem before the next save replaces it.
        """
        self._remove_stale_temp_files()
        result = self._choose()
        if result is None:
            return None
        self._main_is_good = not result.from_backup
        self._loaded_as = None
        if not result.from_backup:
            with contextlib.suppress(OSError):
                self._loaded_as = _identity(os.stat(self.path), result.state.saved_at)
        if result.from_backup and self.path.exists():
            try:  # a courtesy for the post-mortem: never a reason not to start
                kept = self._move_aside(self.path, _stamp(time.time()), keep=True)
                result = LoadResult(result.state, True, f"{result.problem} (copy kept at {kept})")
            except OSError as exc:
                log.warning("%s: cannot keep a copy of the bad file: %s", self.path, _reason(exc))
        if result.from_backup:
            log.warning("%s; carrying on from the backup %s", result.problem, self.backup)
        return result

    def read_only_snapshot(self) -> SavedState | None:
        """The state as the CLI's status sees it: never writes, falls back to the backup.

        A save replaces the file by rename, so an open file is always one complete version.
        """
        result = self._choose()
        return None if result is None else result.state

    def _choose(self) -> LoadResult | None:
        main = self._try(self.path)
        if isinstance(main, SavedState):
            return LoadResult(main, False, "")
        backup = self._try(self.backup)
        if main is None and backup is None:
            return None
        main_problem = main or f"{self.path}: missing"
        if isinstance(backup, SavedState):
            return LoadResult(backup, True, main_problem)
        raise StateFileError(
            "cannot load the scheduler state; the state file and its backup are both unusable:\n"
            f"  {main_problem}\n  {backup or f'{self.backup}: missing'}\n"
            f"Refusing to start with no record of the jobs; {RESET_HINT}."
        )

    def _try(self, path: Path) -> SavedState | str | None:
        """The state in ``path``, or why it is unusable, or None if there is no such file.

        Raises StateFileError when the file cannot be read at all (EACCES, EIO: it may well be
        fine, so no backup may stand in for it) or is of a newer format.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"{path}: cannot read the state file: {_reason(exc)}") from exc
        try:
            return _decode(raw)
        except _Unusable as exc:
            return f"{path}: {exc}"
        except StateFileError as exc:
            raise StateFileError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ saving

    def save(self, state: SavedState) -> None:
        """Atomically replace the state file; the file it replaces becomes the backup.

        Raises StateFileError (naming the path and the OS reason) on any failure; unless the
        message says otherwise, the previous state file is intact.
        """
        problem = _first_duplicate(state.jobs)
        if problem:  # load would refuse this file: keep the old one instead
            raise StateFileError(f"{self.path}: refusing to save a broken state: {problem}")
        try:
            chunks, self._encoded = _encode_parts(state, self._encoded)
        except (TypeError, ValueError) as exc:  # a NaN time, a non-JSON value in observed
            raise StateFileError(f"{self.path}: cannot save the scheduler state: {exc}") from exc
        folder = self.path.parent
        tmp: Path | None = None
        link_tmp: Path | None = None
        replaced = False
        try:
            folder.mkdir(parents=True, exist_ok=True)
            rotate = self._main_is_good
            if rotate is None:  # nothing loaded yet: only a good file may become the backup
                rotate = isinstance(self._try(self.path), SavedState)
            tmp = self._temp_name("new")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for chunk in chunks:
                    _write_all(fd, chunk)
                os.fsync(fd)
                saved_as = _identity(os.fstat(fd), state.saved_at)
            finally:
                os.close(fd)
            if rotate:
                link_tmp = self._temp_name("bak")
                self._link_or_copy(self.path, link_tmp)
                os.replace(link_tmp, self.backup)
                link_tmp = None
            os.replace(tmp, self.path)
            tmp, replaced = None, True
            self._main_is_good = True
            _fsync_folder(folder)
            self._saved_as = saved_as
        except OSError as exc:
            for leftover in (tmp, link_tmp):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            after = (
                "the new state was written but may not survive a power cut"
                if replaced
                else "the previous state file is intact"
            )
            raise StateFileError(
                f"{self.path}: cannot save the scheduler state: {_reason(exc)}; {after}"
            ) from exc
        self._clear_launches()

    # ------------------------------------------------------------------ the launch journal

    def append_launches(self, jobs: Sequence[Job], next_seq: int) -> None:
        """Write ahead a pass's launches: one line per job (as it is now: running, its runner
        not started yet), all in one write, fdatasynced before this returns. The next full save
        empties the journal. Raises StateFileError, having cut off any partial line; then no
        runner may start (the caller takes the launches back)."""
        if self._saved_as is None:
            raise StateFileError(
                f"{self.launches}: no state saved yet for launches to extend; save first"
            )
        try:
            head = _dumps({"v": LAUNCH_JOURNAL_VERSION, "base": self._saved_as,
                           "next_seq": next_seq})[:-1]  # fmt: skip
            lines = [f'{head},"job":{_dumps(codec.job_to_dict(job))}}}' for job in jobs]
        except ValueError as exc:
            raise StateFileError(f"{self.launches}: cannot write a launch ahead: {exc}") from exc
        if not lines:
            return
        _append_lines(self.launches, lines, "cannot write a launch ahead",
                      data_only=True, sync_folder=not self._journal_named)
        self._journal_named = True
        if self._journal_lines >= 0:
            self._journal_lines += len(lines)

    def read_launches(self) -> tuple[list[Job], int]:
        """The launches written ahead after the state file ``load`` returned (none when it fell
        back to the backup, or nothing was loaded), in order, with the highest ``next_seq`` they
        carry (0 if none). Lines for another state file, and bad lines, are skipped: a line
        cut short was never fsynced, so its runner never started."""
        jobs: list[Job] = []
        next_seq = 0
        if self._loaded_as is None:
            return jobs, next_seq
        bad = _BadLines(self.launches)
        try:
            with open(self.launches, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return jobs, next_seq
        except OSError as exc:
            raise StateFileError(
                f"{self.launches}: cannot read the launch journal: {_reason(exc)}"
            ) from exc
        for line_no, line in enumerate(raw.splitlines(keepends=True), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("v") != LAUNCH_JOURNAL_VERSION:
                    raise ValueError(f"unknown journal version {record.get('v')!r}")
                if record["base"] != self._loaded_as:
                    continue  # written before the loaded file was saved: it holds them already
                job = codec.job_from_dict(record["job"], "job")
                seq = int(record["next_seq"])
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                bad.report(f"line {line_no}", line, exc)
                continue
            jobs.append(job)
            next_seq = max(next_seq, seq)
        bad.summary()
        return jobs, next_seq

    def _clear_launches(self) -> None:
        """Empty the journal after a full save (which holds its launches). Not fsynced, and a
        failure is only logged: lines left behind name an older state file, so no restart
        replays them."""
        if self._journal_lines == 0:
            return
        try:
            os.truncate(self.launches, 0)  # (kept, not removed: its name stays durable)
        except FileNotFoundError:
            self._journal_named = False
        except OSError as exc:
            log.warning("%s: cannot empty the launch journal: %s", self.launches, _reason(exc))
            return
        self._journal_lines = 0

    def _temp_name(self, tag: str) -> Path:
        """``.<name>.<tag>.<pid>.<random>.tmp``: hidden, unique, and traceable to its writer."""
        token = secrets.token_hex(4)
        return self.path.with_name(f".{self.path.name}.{tag}.{os.getpid()}.{token}.tmp")

    @staticmethod
    def _link_or_copy(source: Path, target: Path) -> None:
        """Hard-link (instant, whatever the size); copy where the file system has no links."""
        try:
            os.link(source, target)
            return
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, source.read_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_stale_temp_files(self) -> None:
        """Temp files of a writer that died mid-save (kill -9) are garbage: remove them."""
        try:
            candidates = list(self.path.parent.glob(f".{self.path.name}.*.tmp"))
        except OSError:
            return
        for candidate in candidates:
            pid = candidate.name.split(".")[-3]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)  # raises if no such process: its writer is gone
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    candidate.unlink()
            except OSError:
                pass  # EPERM: alive, someone else's

    # ------------------------------------------------------------------ reset

    def reset(self, now: float | None = None) -> Path | None:
        """Move the state file and its backup aside (``<name>.bad-<UTC>``) for a fresh start.

        The history stays: it still says which jobs completed, so they do not run again.
        Returns where the state file (else the backup) went; None if there was neither.
        The caller makes sure no daemon is running: it would save its state again.
        """
        stamp = _stamp(time.time() if now is None else now)
        try:
            moved = [self._move_aside(p, stamp) for p in (self.path, self.backup) if p.exists()]
            if moved:
                _fsync_folder(self.path.parent)
        except OSError as exc:
            raise StateFileError(
                f"{self.path}: cannot move the state aside: {_reason(exc)}"
            ) from exc
        self._main_is_good = None
        return moved[0] if moved else None

    @staticmethod
    def _move_aside(path: Path, stamp: str, keep: bool = False) -> Path:
        target = path.with_name(f"{path.name}.bad-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.bad-{stamp}-{n}")
        if keep:
            StateStore._link_or_copy(path, target)
        else:
            os.rename(path, target)
        return target

    # ------------------------------------------------------------------ history

    def append_history(self, jobs: Sequence[Job]) -> None:
        """Append one line per finished job, fsynced. Raises StateFileError on OSError, having
        cut off any partial line it wrote; ValueError for a job that is not finished."""
        lines = []
        for job in jobs:
            if not isinstance(job.status, Finished):
                raise ValueError(
                    f"job {job.job_id} is {job.state}; only finished jobs are archived"
                )
            record = {"v": HISTORY_VERSION, "id": job.job_id, "state": job.state}
            record["job"] = codec.job_to_dict(job)
            try:
                lines.append(_dumps(record))
            except ValueError as exc:
                raise StateFileError(
                    f"{self.history}: cannot archive job {job.job_id}: {exc}"
                ) from exc
        if not lines:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateFileError(
                f"{self.history}: cannot append to the job history: {_reason(exc)}"
            ) from exc
        _append_lines(self.history, lines, "cannot append to the job history")

    def history_states(self) -> dict[str, str]:
        """Job id -> state name ("completed", ...) of every archived job; the last record wins."""
        states: dict[str, str] = {}
        bad = _BadLines(self.history)
        with self._open_history() as f:
            for line_no, line in enumerate(f, 1):
                fast = _HISTORY_HEAD.match(line)
                if fast and line.endswith((b"}}\n", b"}}")):  # whole, as append_history wrote it
                    states[fast[1].decode("ascii")] = fast[2].decode("ascii")
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    job_id, state = record["id"], record["state"]
                except (ValueError, KeyError, TypeError, RecursionError) as exc:
                    bad.report(f"line {line_no}", line, exc)
                    continue
                if isinstance(job_id, str) and isinstance(state, str):
                    states[job_id] = state
                else:
                    bad.report(f"line {line_no}", line, ValueError("id or state is not a string"))
        bad.summary()
        return states

    def read_history(self, *, limit: int | None = None, newest_first: bool = True) -> list[Job]:
        """Archived jobs in archive order (or newest first), at most ``limit``, each once.

        With a limit and newest first only the file's tail is read, so ``list-jobs`` stays fast.
        """
        jobs: dict[Job, None] = {}  # ordered set: a re-archived job (crash) is listed once
        bad = _BadLines(self.history)
        with self._open_history() as f:
            lines = (
                _lines_backwards(f) if newest_first and limit is not None else (line for line in f)
            )
            for line in lines:
                if limit is not None and len(jobs) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if record.get("v") != HISTORY_VERSION:
                        raise ValueError(f"unknown history version {record.get('v')!r}")
                    jobs.setdefault(codec.job_from_dict(record["job"], "job"), None)
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                    bad.report("a line", line, exc)
        bad.summary()
        out = list(jobs)
        if newest_first and limit is None:
            out.reverse()
        return out

    @contextlib.contextmanager
    def _open_history(self) -> Iterator[IO[bytes]]:
        try:
            f = open(self.history, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            yield io.BytesIO()
            return
        except OSError as exc:
            raise StateFileError(
                f"{self.history}: cannot read the job history: {_reason(exc)}"
            ) from exc
        with f:
            yield f


class _BadLines:
    """Warn about the first few bad history lines and count the rest: a damaged file is
    reported once, not 100,000 times. A last line cut short is a crash while appending."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0

    def report(self, where: str, line: bytes, exc: BaseException) -> None:
        self.count += 1
        if self.count <= _MAX_BAD_LINE_WARNINGS:
            cut = "" if line.endswith(b"\n") else " (cut short: a crash while appending?)"
            log.warning("%s: skipping bad %s%s: %s", self.path, where, cut, exc)

    def summary(self) -> None:
        if self.count > _MAX_BAD_LINE_WARNINGS:
            log.warning("%s: skipped %d bad lines in all", self.path, self.count)


def _lines_backwards(f: IO[bytes], block: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, last first, each with its newline (a line cut short has none),
    reading backwards block by block so the tail of a huge file costs only the tail."""
    pos = f.seek(0, os.SEEK_END)
    buffer = b""
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        buffer = f.read(step) + buffer
        # The bytes up to the first newline may be the end of a line that starts further back.
        start = buffer.find(b"\n") + 1 if pos > 0 else 0
        if start == 0 and pos > 0:
            continue
        parts = buffer[start:].split(b"\n")
        buffer = buffer[:start]
        if parts[-1]:
            yield parts[-1]
        for part in reversed(parts[:-1]):
            yield part + b"\n"


def _identity(st: os.stat_result, saved_at: float) -> list[float]:
    """What tells one saved state file from every other: its inode and ``saved_at`` (a JSON
    list, as each launch journal line carries it). Not the device number: that may change
    at a reboot, after which the journal matters most (a job that finished before a power cut
    must be found finished, not started again)."""
    return [st.st_ino, saved_at]


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
