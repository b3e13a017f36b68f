"""Process helpers: is this pid still *our* job, and end a job's whole process tree.

Why the start time everywhere: pids are reused. A job's runner is followed by ``(pid, create
time)``; a live pid whose create time differs by more than ``START_TIME_TOLERANCE_S`` is some
other program and must never be signalled. Create times come from psutil (Linux: the
``starttime`` of ``/proc/PID/stat`` plus the boot time), the same formula the runner uses for
its own record, so the two agree exactly.

Nothing here reaps children: a zombie counts as gone, and reaping is left to the process's
parent (``DirectLauncher`` reaps its runners; the runner reaps the job).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

START_TIME_TOLERANCE_S = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_start_time(pid: int) -> float | None:
    """The process's create time (POSIX seconds), or None when there is no such process.

    Equal to ``psutil.Process(pid).create_time()`` (same formula), read with one bare
    open+read, which is cheaper than psutil's (see ``start_time_between`` for a fresh pid).
    """
    if pid <= 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
        ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        return ticks / _CLOCK_TICKS + psutil.boot_time()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except (OSError, ValueError, IndexError):
        pass  # no /proc (not Linux) or an unexpected format: ask psutil
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def boot_clock_ns() -> int | None:
    """CLOCK_BOOTTIME in ns: the clock the kernel stamps process creation with (Linux)."""
    try:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return None


def start_time_between(pid: int, earliest_ns: int | None, latest_ns: int | None) -> float | None:
    """Create time of ``pid``, known to have been created between two ``boot_clock_ns()``
    readings. The kernel reports creation in whole clock ticks (10 ms), so when both readings
    fall in the same tick the answer is exact without touching /proc -- which matters right
    after a spawn, when reading the new process's stat file can stall for ~3 ms. Otherwise
    it is read as usual. Equal to psutil's create_time either way (same formula)."""
    if earliest_ns is not None and latest_ns is not None:
        tick_ns = 1_000_000_000 // _CLOCK_TICKS
        if earliest_ns // tick_ns == latest_ns // tick_ns:
            return (earliest_ns // tick_ns) / _CLOCK_TICKS + psutil.boot_time()
    return process_start_time(pid)


def _is_running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_alive(pid: int, started_at: float | None) -> bool:
    """True when ``pid`` exists, is not a zombie and (if given) started at ``started_at``.

    ``started_at`` None skips the identity check: only for callers that never learnt it.
    """
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if started_at is not None and abs(proc.create_time() - started_at) > START_TIME_TOLERANCE_S:
            return False
    except psutil.Error:
        return False
    return _is_running(proc)


def _snapshot(pid: int, started_at: float | None) -> tuple[list[psutil.Process], set[int]]:
    """The processes to end (the tree under ``pid`` plus the members of its process groups)
    and those groups.

    Nothing when the pid belongs to someone else now. When the root is gone but its process
    group lives on (the runner died, the job did not), the group's members are still found:
    Linux never hands out a pid that is still in use as a group id, so a group numbered
    ``pid`` without a process ``pid`` can only be the remains of that root's group.
    """
    tree: list[psutil.Process] = []
    groups: set[int] = set()
    try:
        root = psutil.Process(pid)
        if started_at is not None and abs(root.create_time() - started_at) > START_TIME_TOLERANCE_S:
            return [], set()
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        groups.add(pid)
    except psutil.Error:
        return [], set()
    for proc in tree:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(proc.pid))
    groups = {g for g in groups if g > 1 and g != os.getpgrp()}
    return _with_group_members(tree, groups), groups


def _with_group_members(tree: list[psutil.Process], groups: set[int]) -> list[psutil.Process]:
    """Add the members of ``groups`` that left the tree (re-parented, double-forked)."""
    procs = {p.pid: p for p in tree}
    if groups:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if proc.pid not in procs and os.getpgid(proc.pid) in groups:
                    procs[proc.pid] = proc
    return list(procs.values())


def _send(procs: list[psutil.Process], groups: set[int], sig: int) -> None:
    """Signal each group, then each process; never pid 1, our own process or our own group."""
    own_group, own_pid = os.getpgrp(), os.getpid()
    for group in sorted(groups):
        if group > 1 and group != own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
    for proc in procs:
        if proc.pid > 1 and proc.pid != own_pid:
            # psutil's send_signal re-checks the create time, so a reused pid is left alone.
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> bool:
    """Wait (polling from 1 ms up to 50 ms) until every process has exited (or is a zombie)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        procs[:] = [p for p in procs if _is_running(p)]
        if not procs:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def terminate_tree(pid: int, grace_s: float, started_at: float | None = None) -> None:
    """End ``pid`` and all its descendants: SIGTERM (+SIGCONT), wait ``grace_s``, SIGKILL.

    The tree is snapshotted before the first signal, so children re-parented during shutdown
    are still reached; their process groups get ``killpg`` too, which also reaches
    grandchildren that the snapshot missed. SIGCONT follows SIGTERM so a paused (SIGSTOP) job
    can act on it. ``started_at`` guards against a reused pid: mismatch means "not ours", and
    nothing is signalled. Returns once everything is gone (zombies count as gone) or after
    SIGKILL plus up to one more second.
    """
    procs, groups = _snapshot(pid, started_at)
    if not procs and not groups:
        return
    _send(procs, groups, signal.SIGTERM)
    _send(procs, groups, signal.SIGCONT)
    if _wait_gone(procs, grace_s):
        return
    _send(procs, groups, signal.SIGKILL)
    _wait_gone(procs, 1.0)


def signal_tree(pid: int, sig: int, started_at: float | None = None) -> None:
    """Send ``sig`` (e.g. SIGSTOP/SIGCONT) to ``pid``'s whole tree and its process groups."""
    procs, groups = _snapshot(pid, started_at)
    _send(procs, groups, sig)
