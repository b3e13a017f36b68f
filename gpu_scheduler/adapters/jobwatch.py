"""Wake the daemon when a jobs file or the LLM config changes: a hint, never the truth.

Why the FOLDER is watched and not the file: editors save by rename (vim writes a new file and
renames it over the old one, ``sed -i`` does the same), which gives the file a new inode. A
watch on the old inode would go silent after the first save; a watch on the folder sees the
new name arrive.

Why events are coalesced the way they are: the first event for a file is delivered at once,
so a job appended with ``echo ... >> jobs.txt`` launches without a fixed debounce delay. Later
events for that file are held back until the file has been quiet for ``quiet_s``, and then ONE
more callback is delivered (the trailing edge) so the reader gets a final read once the editor
is done. A file that never goes quiet (a script appending forever) still gets a callback at
least every ``_max_hold_s`` seconds.

Why there is a safety timer: inotify can miss events (NFS, overflowing queues, a folder
recreated under us), so every ``safety_interval_s`` every watched file is reported anyway. The
daemon re-reads and compares; a spurious callback costs one cheap read.

Callbacks run on one worker thread owned by the watcher, never concurrently with themselves,
and an exception in a callback is logged and does not stop the watcher.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from watchdog.events import (
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from gpu_scheduler.errors import GpuSchedulerError

logger = logging.getLogger(__name__)

# Only events that can mean "the content changed". Opening or reading a file (which the
# daemon does on every callback) must not produce an event, or the watcher would feed itself.
_CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    FileAttribEvent,
]
_GLOB_CHARS = frozenset("*?[")
_FOLDER_PATTERN = "*.txt"
_POLLING_INTERVAL_S = 0.5  # PollingObserver rescans the folder this often: a stat per file


class WatchError(GpuSchedulerError):
    """The watcher cannot start: a watched folder is missing, or the OS refused the watch."""


@dataclass(frozen=True)
class _Target:
    """One watched thing: an exact file name, or a pattern, inside one folder.

    ``folder`` keeps the caller's spelling (used to build the paths handed to the callback);
    ``folder_abs`` is the absolute form that event paths are compared with.
    """

    folder: Path
    folder_abs: str
    pattern: str
    exact: Path | None  # the caller's own Path for a single-file target, else None

    def match(self, abs_path: str) -> bool:
        folder, name = os.path.split(abs_path)
        if folder != self.folder_abs:
            return False
        if self.exact is not None:
            return name == self.pattern
        # Shell glob semantics: "*" does not match a leading dot, so editor droppings such as
        # emacs' ".#jobs.txt" lock link are not taken for jobs files.
        if name.startswith(".") and not self.pattern.startswith("."):
            return False
        return fnmatchcase(name, self.pattern)

    def report_path(self, abs_path: str) -> Path:
        return self.exact if self.exact is not None else self.folder / os.path.basename(abs_path)

    def current_files(self) -> list[Path]:
        """The files the safety timer reports: the exact file (even if missing: a deletion is
        news too), or every matching file present in the folder now."""
        if self.exact is not None:
            return [self.exact]
        try:
            entries = sorted(e.name for e in os.scandir(self.folder_abs) if e.is_file())
        except OSError as exc:
            logger.debug("safety scan of %s failed: %s", self.folder_abs, exc)
            return []
        return [self.folder / n for n in entries if self.match(os.path.join(self.folder_abs, n))]


def _target_for(path: Path) -> _Target:
    """Classify one watched path: a glob (pattern in the last part), a folder that exists now
    (all ``*.txt`` in it), or a file (exact name in its parent folder)."""
    path = Path(path)
    if _GLOB_CHARS & set(path.name):
        if _GLOB_CHARS & set(str(path.parent)):
            raise ValueError(f"only the file name may contain a pattern: {path}")
        return _Target(path.parent, os.path.abspath(path.parent), path.name, None)
    if path.is_dir():
        return _Target(path, os.path.abspath(path), _FOLDER_PATTERN, None)
    return _Target(path.parent, os.path.abspath(path.parent), path.name, path)


@dataclass
class _Gate:
    """Coalescing state of one file inside its quiet window (times from time.monotonic)."""

    quiet_until: float
    last_delivery: float
    pending: bool = False


class _Handler(FileSystemEventHandler):
    """Runs on the observer thread: maps an event to watched files and hands them on."""

    def __init__(self, watcher: FileWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        paths = [event.src_path]
        if event.dest_path:
            paths.append(event.dest_path)
        for raw in paths:
            self._watcher._note(os.path.abspath(os.fsdecode(raw)))


class FileWatcher:
    """Calls ``on_change(path)`` soon after a watched file changes, and now and then anyway.

    ``paths`` entries may be a file (``/x/jobs.txt``), a folder that exists at construction
    (every ``*.txt`` in it) or a glob whose last part is a pattern (``/x/jobs/*.txt``). The
    folders must exist when ``start()`` is called: the watcher creates nothing and raises
    ``WatchError("folder does not exist: ...")`` instead, so a typo in the config is reported
    rather than silently watched forever.

    ``quiet_s``: how long a file must see no events before the trailing callback.
    ``safety_interval_s``: period of the unconditional "check everything" callbacks.
    ``use_polling``: watchdog's PollingObserver, for filesystems without inotify (NFS, some
    container mounts); it notices changes within about half a second.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        on_change: Callable[[Path], None],
        *,
        quiet_s: float = 0.3,
        safety_interval_s: float = 30.0,
        use_polling: bool = False,
    ) -> None:
        if not paths:
            raise ValueError("FileWatcher needs at least one path to watch")
        if quiet_s < 0:
            raise ValueError(f"quiet_s must be >= 0, got {quiet_s}")
        if safety_interval_s <= 0:
            raise ValueError(f"safety_interval_s must be > 0, got {safety_interval_s}")
        self._targets = [_target_for(Path(p)) for p in paths]
        self._on_change = on_change
        self._quiet_s = quiet_s
        self._max_hold_s = max(10 * quiet_s, 1.0)
        self._safety_interval_s = safety_interval_s
        self._use_polling = use_polling
        self._cond = threading.Condition()
        self._gates: dict[str, _Gate] = {}
        self._ready: dict[str, Path] = {}  # insertion-ordered, deduplicated
        self._stop_event = threading.Event()
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None

    def matches(self, path: str | os.PathLike[str]) -> bool:
        """True if a change to ``path`` would be reported (same folder, name matches)."""
        abs_path = os.path.abspath(os.fspath(path))
        return any(t.match(abs_path) for t in self._targets)

    def start(self) -> None:
        """Check the folders, start the observer and the worker. Raises WatchError."""
        if self._worker is not None:
            raise RuntimeError("FileWatcher already started")
        folders: dict[str, Path] = {}
        for target in self._targets:
            if not os.path.isdir(target.folder_abs):
                raise WatchError(f"folder does not exist: {target.folder}")
            folders.setdefault(target.folder_abs, target.folder)
        observer: BaseObserver = (
            PollingObserver(timeout=_POLLING_INTERVAL_S) if self._use_polling else Observer()
        )
        handler = _Handler(self)
        for folder_abs in folders:
            observer.schedule(handler, folder_abs, recursive=False, event_filter=_CHANGE_EVENTS)
        try:
            observer.start()
        except OSError as exc:
            # e.g. "inotify watch limit reached" or "inotify instance limit reached"
            observer.unschedule_all()  # stops and joins the emitters that did start
            raise WatchError(
                f"cannot watch {', '.join(map(str, folders.values()))}: {exc}"
                " (raise fs.inotify.max_user_watches/instances, or use polling)"
            ) from exc
        with self._cond:
            self._gates.clear()
            self._ready.clear()
            self._stop_event = threading.Event()
        self._observer = observer
        self._worker = threading.Thread(
            target=self._run, args=(self._stop_event,), name="gpu-scheduler-jobwatch", daemon=True
        )
        self._worker.start()

    def stop(self) -> None:
        """Stop the observer and the worker and join their threads. Idempotent; safe to call
        from inside a callback (the worker then finishes on its own right after)."""
        with self._cond:
            self._stop_event.set()
            self._cond.notify_all()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    # --- observer thread -------------------------------------------------------------------

    def _note(self, abs_path: str) -> None:
        """Record one event for ``abs_path``: deliver now (leading edge) or hold it back."""
        targets = [t for t in self._targets if t.match(abs_path)]
        if not targets:
            return
        now = time.monotonic()
        with self._cond:
            gate = self._gates.get(abs_path)
            if gate is None:
                self._gates[abs_path] = _Gate(quiet_until=now + self._quiet_s, last_delivery=now)
                self._ready.setdefault(abs_path, targets[0].report_path(abs_path))
            else:
                gate.pending = True
                gate.quiet_until = now + self._quiet_s
            self._cond.notify_all()

    # --- worker thread ---------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        next_safety = time.monotonic() + self._safety_interval_s
        while True:
            with self._cond:
                while not stop.is_set() and not self._ready:
                    now = time.monotonic()
                    if now >= next_safety:
                        for target in self._targets:
                            for path in target.current_files():
                                self._ready.setdefault(os.path.abspath(path), path)
                        next_safety = now + self._safety_interval_s
                        continue
                    deadline = min(next_safety, self._release_gates(now))
                    if not self._ready:
                        self._cond.wait(timeout=max(0.0, deadline - now))
                if stop.is_set():
                    return
                batch = list(self._ready.values())
                self._ready.clear()
            for path in batch:
                if stop.is_set():  # stop() was called from inside a callback
                    return
                self._deliver(path)

    def _release_gates(self, now: float) -> float:
        """Close quiet windows that have expired, queueing their trailing callback, and
        deliver held events of files that have not been quiet for ``_max_hold_s``. Returns the
        next moment a gate needs attention (inf if none). Caller holds the lock."""
        next_due = float("inf")
        for abs_path, gate in list(self._gates.items()):
            target = next(t for t in self._targets if t.match(abs_path))
            if now >= gate.quiet_until:
                del self._gates[abs_path]
                if gate.pending:
                    self._ready.setdefault(abs_path, target.report_path(abs_path))
                continue
            if gate.pending and now >= gate.last_delivery + self._max_hold_s:
                gate.pending = False
                gate.last_delivery = now
                self._ready.setdefault(abs_path, target.report_path(abs_path))
            due = gate.quiet_until
            if gate.pending:
                due = min(due, gate.last_delivery + self._max_hold_s)
            next_due = min(next_due, due)
        return next_due

    def _deliver(self, path: Path) -> None:
        try:
            self._on_change(path)
        except Exception:  # the callback is someone else's code: log it, keep watching
            logger.exception("jobs-file change callback failed for %s", path)
