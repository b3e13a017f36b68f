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

``StateStore`` is the one door; behind it ``store_files`` (durable writes), ``store_format``
(the bytes), ``store_history`` and ``store_journal``. The format's version policy stays here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpu_scheduler.adapters import store_files, store_format, store_history, store_journal
from gpu_scheduler.adapters.store_format import (
    Encoded,
    LoadResult,
    SavedState,
    Unusable,
    state_schema,
)
from gpu_scheduler.adapters.store_history import HISTORY_VERSION
from gpu_scheduler.adapters.store_journal import LAUNCH_JOURNAL_VERSION, LaunchJournal
from gpu_scheduler.core.model import Job
from gpu_scheduler.errors import StateFileError
from gpu_scheduler.schema_precheck import surely_valid

if TYPE_CHECKING:  # jsonschema is imported only for a file that may be bad (80 ms)
    from jsonschema import Draft202012Validator

log = logging.getLogger(__name__)

__all__ = [
    "HISTORY_VERSION", "LAUNCH_JOURNAL_VERSION", "MIGRATIONS", "RESET_HINT", "STATE_VERSION",
    "LoadResult", "SavedState", "StateStore", "state_schema",
]  # fmt: skip

STATE_VERSION = 1
RESET_HINT = (
    "`gpu-scheduler start --reset-state` moves the bad files aside for a deliberate fresh start"
)

# Kept for the tests that use the old private name (an alias: patch store_format instead).
_header_schema = store_format.header_schema


# ----------------------------------------------------------------------------- version policy
# Kept in this module: tests pretend to be a newer release by patching STATE_VERSION and
# _validator here, and both the load path and the save path must see the patch.


def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 0 had no "version" key and called the paused GPUs "paused_gpus"."""
    out = dict(doc)
    if "paused_gpus" in out:
        out["paused"] = out.pop("paused_gpus")
    out["version"] = 1
    return out


# version N -> a function turning a version-N document into a version-N+1 one (without mutating)
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


def _migrate(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise Unusable(f"the top level is a JSON {type(doc).__name__}, not an object")
    version = doc.get("version", 0)  # version 0 predates the key
    if type(version) is not int:
        raise Unusable(f"version: {store_format.show(version)} is not of type 'integer'")
    if version > STATE_VERSION:
        # Not a corrupt file: falling back to an older backup would lose a newer daemon's jobs.
        raise StateFileError(
            f"format version {version} is newer than this gpu-scheduler understands "
            f"({STATE_VERSION}); upgrade gpu-scheduler"
        )
    while version < STATE_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise Unusable(f"format version {version} is unknown (expected 0 to {STATE_VERSION})")
        doc = step(doc)
        version = doc["version"]
    return doc


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
    where = store_format.dotted(list(error.absolute_path))
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    return f"{where}: {message}" if where else message


def _decode(raw: bytes) -> SavedState:
    """The state in ``raw``; raises Unusable (say what is wrong) or StateFileError (too new)."""
    doc = _migrate(store_format.parse_document(raw))
    problem = _header_error(doc)
    if problem:
        raise Unusable(problem)
    return store_format.state_from_document(doc)


def _encode(state: SavedState, previous: Encoded) -> tuple[bytes, Encoded]:
    """The whole file's bytes (see ``_encode_parts``)."""
    chunks, encoded = _encode_parts(state, previous)
    return b"".join(chunks), encoded


def _encode_parts(state: SavedState, previous: Encoded) -> tuple[list[bytes], Encoded]:
    """``store_format.encode_parts`` at this release's format version."""
    return store_format.encode_parts(state, previous, STATE_VERSION)


# ----------------------------------------------------------------------------- the store


class StateStore:
    """The state file at ``path``, its ``.bak`` and its ``.history.jsonl``, all mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.backup = self.path.with_suffix(self.path.suffix + ".bak")
        self.history = self.path.with_name(self.path.stem + ".history.jsonl")
        self._main_is_good: bool | None = None  # may the current file become the backup?
        self._encoded: Encoded = {}  # the last save's jobs and their JSON
        self.launches = self.path.with_name(self.path.stem + ".launches.jsonl")
        self._journal = LaunchJournal(self.launches)  # told what each save and load used

    # ------------------------------------------------------------------ loading

    def load(self) -> LoadResult | None:
        """The saved state for the daemon; None on a fresh start (no state, no backup).

        A bad main file is used neither as state nor (at the next save) as backup; a copy is
        kept beside it as ``<name>.bad-<UTC>`` for a post-mortem before the next save replaces it.
        """
        store_files.remove_stale_temp_files(self.path)
        result = self._choose()
        if result is None:
            return None
        self._main_is_good = not result.from_backup
        self._journal.loaded_as = None
        if not result.from_backup:
            with contextlib.suppress(OSError):
                self._journal.loaded_as = store_journal.state_identity(
                    os.stat(self.path), result.state.saved_at
                )
        if result.from_backup and self.path.exists():
            try:  # a courtesy for the post-mortem: never a reason not to start
                kept = store_files.move_aside(
                    self.path, store_files.utc_stamp(time.time()), keep=True
                )
                result = LoadResult(result.state, True, f"{result.problem} (copy kept at {kept})")
            except OSError as exc:
                log.warning(
                    "%s: cannot keep a copy of the bad file: %s",
                    self.path,
                    store_files.os_reason(exc),
                )
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
            raise StateFileError(
                f"{path}: cannot read the state file: {store_files.os_reason(exc)}"
            ) from exc
        try:
            return _decode(raw)
        except Unusable as exc:
            return f"{path}: {exc}"
        except StateFileError as exc:
            raise StateFileError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ saving

    def save(self, state: SavedState) -> None:
        """Atomically replace the state file; the file it replaces becomes the backup.

        Raises StateFileError (naming the path and the OS reason) on any failure; unless the
        message says otherwise, the previous state file is intact.
        """
        problem = store_format.first_duplicate(state.jobs)
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
            tmp = store_files.temp_name(self.path, "new")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for chunk in chunks:
                    store_files.write_all(fd, chunk)
                os.fsync(fd)
                saved_as = store_journal.state_identity(os.fstat(fd), state.saved_at)
            finally:
                os.close(fd)
            if rotate:
                link_tmp = store_files.temp_name(self.path, "bak")
                store_files.link_or_copy(self.path, link_tmp)
                os.replace(link_tmp, self.backup)
                link_tmp = None
            os.replace(tmp, self.path)
            tmp, replaced = None, True
            self._main_is_good = True
            store_files.fsync_folder(folder)
            self._journal.saved_as = saved_as
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
                f"{self.path}: cannot save the scheduler state: {store_files.os_reason(exc)}; {after}"
            ) from exc
        self._journal.clear()

    # ------------------------------------------------------------------ the launch journal

    def append_launches(self, jobs: Sequence[Job], next_seq: int) -> None:
        """Write ahead a pass's launches, fdatasynced, before their runners start; raises
        StateFileError, and then no runner may start (see ``LaunchJournal.append``)."""
        self._journal.append(jobs, next_seq)

    def read_launches(self) -> tuple[list[Job], int]:
        """The launches written ahead after the state file ``load`` returned, and the highest
        ``next_seq`` they carry (see ``LaunchJournal.read``)."""
        return self._journal.read()

    # ------------------------------------------------------------------ reset

    def reset(self, now: float | None = None) -> Path | None:
        """Move the state file and its backup aside (``<name>.bad-<UTC>``) for a fresh start.

        The history stays: it still says which jobs completed, so they do not run again.
        Returns where the state file (else the backup) went; None if there was neither.
        The caller makes sure no daemon is running: it would save its state again.
        """
        stamp = store_files.utc_stamp(time.time() if now is None else now)
        try:
            moved = [store_files.move_aside(p, stamp) for p in (self.path, self.backup)
                     if p.exists()]  # fmt: skip
            if moved:
                store_files.fsync_folder(self.path.parent)
        except OSError as exc:
            raise StateFileError(
                f"{self.path}: cannot move the state aside: {store_files.os_reason(exc)}"
            ) from exc
        self._main_is_good = None
        return moved[0] if moved else None

    # ------------------------------------------------------------------ history

    def append_history(self, jobs: Sequence[Job]) -> None:
        """Archive finished jobs, fsynced, BEFORE saving a state without them (see
        ``store_history.append_history``)."""
        store_history.append_history(self.history, jobs)

    def history_states(self) -> dict[str, str]:
        """Job id -> state name ("completed", ...) of every archived job; the last record wins."""
        return store_history.history_states(self.history)

    def read_history(self, *, limit: int | None = None, newest_first: bool = True) -> list[Job]:
        """Archived jobs in archive order (or newest first), at most ``limit``, each once; with
        a limit and newest first only the file's tail is read."""
        return store_history.read_history(self.history, limit=limit, newest_first=newest_first)
