"""Notice process exits at once, also for processes that are not our children.

Why: in screen mode a job's runner is a child of the screen server, not of the daemon, so
``waitpid`` cannot see it end, and polling adds its period to every job's turnaround. A pidfd
(``os.pidfd_open``, Linux 5.3+) becomes readable the moment its process exits (zombie or
reaped), so one thread blocked in ``poll`` on all of them reacts within microseconds and
costs nothing while it waits. A self-pipe wakes that thread when watches are added or removed.
Where pidfds are unavailable (old kernel, seccomp) the watch falls back to checking with
psutil every ``fallback_interval_s``.

``on_exit(key)`` runs on the watcher thread: keep it short and thread-safe (set an Event,
put on a queue). It is called at most once per watch and never after ``unwatch``/``close``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

from gpu_scheduler.adapters import processes

log = logging.getLogger(__name__)


@dataclass
class _Watch:
    pid: int
    started_at: float | None
    on_exit: Callable[[str], None]
    fd: int | None  # the pidfd; None = psutil polling


class ExitWatcher:
    """One thread that calls ``on_exit(key)`` when a watched process ends."""

    def __init__(self, fallback_interval_s: float = 0.2) -> None:
        self._fallback_interval_s = fallback_interval_s
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._to_close: list[int] = []  # pidfds of removed watches; the thread closes them
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="exit-watcher", daemon=True)
        self._thread.start()

    def watch(
        self,
        key: str,
        pid: int,
        on_exit: Callable[[str], None],
        started_at: float | None = None,
    ) -> None:
        """Call ``on_exit(key)`` once ``pid`` has exited (at once if it already has).

        ``started_at`` (the process's create time) makes a reused pid count as exited.
        Watching an existing key replaces the old watch.
        """
        fd = self._open_pidfd(pid)
        if fd is not None and started_at is not None and not processes.is_alive(pid, started_at):
            # The pidfd pins whatever process has this pid now; it is not the one we meant.
            os.close(fd)
            fd = None
            pid = -1  # a pid that is never alive: the fallback path reports it at once
        with self._lock:
            if self._closed:
                if fd is not None:
                    os.close(fd)
                raise RuntimeError("ExitWatcher is closed")
            old = self._watches.pop(key, None)
            if old is not None and old.fd is not None:
                self._to_close.append(old.fd)
            self._watches[key] = _Watch(pid, started_at, on_exit, fd)
        self._wake()

    def unwatch(self, key: str) -> None:
        """Stop watching ``key``; its callback will not run after this returns
        (unless it is already running on the watcher thread)."""
        with self._lock:
            old = self._watches.pop(key, None)
            if old is not None and old.fd is not None:
                self._to_close.append(old.fd)
        self._wake()

    def watching(self) -> set[str]:
        """The keys still being watched."""
        with self._lock:
            return set(self._watches)

    def close(self) -> None:
        """End the thread and release every pidfd; pending callbacks are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join()
        with self._lock:
            fds = [w.fd for w in self._watches.values() if w.fd is not None] + self._to_close
            self._watches.clear()
            self._to_close.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _open_pidfd(pid: int) -> int | None:
        """A pidfd for ``pid``; None when pidfds are unsupported or the pid does not exist
        (both handled by the polling path, which reports a missing pid at once)."""
        if pid <= 0:
            return None
        try:
            return os.pidfd_open(pid)
        except (OSError, AttributeError):
            return None

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already means "wake up"
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                for fd in self._to_close:
                    os.close(fd)
                self._to_close.clear()
                by_fd = {w.fd: k for k, w in self._watches.items() if w.fd is not None}
                polled = {k: w for k, w in self._watches.items() if w.fd is None}
            exited = [k for k, w in polled.items() if not processes.is_alive(w.pid, w.started_at)]
            if exited:
                self._fire(exited, fds=set())
                continue
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            timeout_ms = None if not polled else int(self._fallback_interval_s * 1000)
            ready = poller.poll(timeout_ms)
            ready_fds = {fd for fd, _ in ready}
            if self._wake_r in ready_fds:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            keys = [by_fd[fd] for fd in ready_fds if fd in by_fd]
            if keys:
                self._fire(keys, fds={fd for fd in ready_fds if fd in by_fd})

    def _fire(self, keys: list[str], fds: set[int]) -> None:
        """Remove these watches (if still the same ones) and run their callbacks."""
        calls: list[tuple[str, Callable[[str], None]]] = []
        with self._lock:
            for key in keys:
                watch = self._watches.get(key)
                if watch is None or (watch.fd is not None and watch.fd not in fds):
                    continue  # unwatched or replaced meanwhile
                del self._watches[key]
                if watch.fd is not None:
                    os.close(watch.fd)
                calls.append((key, watch.on_exit))
        for key, on_exit in calls:
            try:
                on_exit(key)
            except Exception:  # a bad callback must not stop the watching of everyone else
                log.exception("exit callback for %s failed", key)
