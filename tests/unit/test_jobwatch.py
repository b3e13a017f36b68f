"""FileWatcher against real files and a real watchdog observer (inotify, and polling)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_scheduler.adapters.jobwatch import FileWatcher, WatchError
from tests.helpers import wait_until

WAIT_S = 5.0



class Recorder:
    """Collects callbacks (path, monotonic time) and notices overlapping calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, float]] = []
        self._lock = threading.Lock()
        self._inside = 0
        self.overlapped = False

    def __call__(self, path: Path) -> None:
        with self._lock:
            self._inside += 1
            self.overlapped |= self._inside > 1
            self.calls.append((path, time.monotonic()))
        with self._lock:
            self._inside -= 1

    def count(self, path: Path | None = None) -> int:
        with self._lock:
            return sum(1 for p, _ in self.calls if path is None or p == path)

    def paths(self) -> set[Path]:
        with self._lock:
            return {p for p, _ in self.calls}


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert wait_until(lambda: set(threading.enumerate()) <= before, timeout=2.0), (
        f"leaked threads: {set(threading.enumerate()) - before}"
    )


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.txt"
    path.write_text("# jobs\n")
    return path


def started(watcher: FileWatcher, request: pytest.FixtureRequest) -> FileWatcher:
    watcher.start()
    request.addfinalizer(watcher.stop)
    return watcher


@pytest.mark.parametrize("use_polling", [False, True], ids=["inotify", "polling"])
def test_append_is_reported_promptly(
    jobs: Path, request: pytest.FixtureRequest, no_leaked_threads: None, use_polling: bool
) -> None:
    rec = Recorder()
    started(FileWatcher([jobs], rec, use_polling=use_polling), request)
    time.sleep(0.6 if use_polling else 0)  # let the polling observer take its first snapshot
    with open(jobs, "a") as f:
        f.write("python train.py\n")
    assert wait_until(lambda: rec.count(jobs) >= 1)


def test_vim_style_replace_is_reported(
    jobs: Path, request: pytest.FixtureRequest, no_leaked_threads: None
) -> None:
    rec = Recorder()
    started(FileWatcher([jobs], rec), request)
    tmp = jobs.with_name("4913.tmp")
    tmp.write_text("# jobs\npython a.py\n")
    os.replace(tmp, jobs)
    assert wait_until(lambda: rec.count(jobs) >= 1)
    assert rec.paths() == {jobs}  # the temporary name is not a watched file


def test_second_replace_after_first_is_still_seen(
    jobs: Path, request: pytest.FixtureRequest, no_leaked_threads: None
) -> None:
    """Regression: a watch on the file's inode goes deaf after the first rename-over."""
    rec = Recorder()
    started(FileWatcher([jobs], rec, quiet_s=0.05), request)
    for i in range(2):
        tmp = jobs.with_name(f"jobs.txt.new{i}")
        tmp.write_text(f"python {i}.py\n")
        os.replace(tmp, jobs)
        assert wait_until(lambda i=i: rec.count(jobs) >= i + 1)
        time.sleep(0.15)  # let the quiet window close so the next save is a fresh burst


def test_burst_is_coalesced_with_leading_and_trailing_callbacks(
    jobs: Path, request: pytest.FixtureRequest, no_leaked_threads: None
) -> None:
    rec = Recorder()
    started(FileWatcher([jobs], rec, quiet_s=0.3), request)
    start = time.monotonic()
    for i in range(200):
        with open(jobs, "a") as f:
            f.write(f"python job{i}.py\n")
    burst_end = time.monotonic()
    assert wait_until(lambda: rec.count(jobs) >= 2)
    # no more callbacks once the trailing one has come
    time.sleep(0.6)
    calls = [t for p, t in rec.calls if p == jobs]
    assert 2 <= len(calls) < 20
    assert calls[0] - start < 1.0  # leading edge: not held back by the quiet window
    assert calls[-1] >= burst_end  # trailing edge: after the last write of the burst
    assert not rec.overlapped


def test_other_files_in_the_folder_do_not_trigger(
    jobs: Path, request: pytest.FixtureRequest, no_leaked_threads: None
) -> None:
    rec = Recorder()
    sentinel = jobs.parent / "llm_config.json"
    watcher = started(FileWatcher([jobs, sentinel], rec), request)
    (jobs.parent / "notes.txt").write_text("hello\n")
    (jobs.parent / ".jobs.txt.swp").write_text("swap\n")
    (jobs.parent / "jobs.txt~").write_text("backup\n")
    # events come in order from one observer: once the sentinel is reported, the other
    # files' events have been seen and ignored
    sentinel.write_text("{}\n")
    assert wait_until(lambda: rec.count(sentinel) >= 1)
    assert rec.paths() == {sentinel}
    assert watcher.matches(jobs) and not watcher.matches(jobs.parent / "notes.txt")


def test_two_files_are_reported_separately(
    tmp_path: Path, request: pytest.FixtureRequest, no_leaked_threads: None
) -> None:
    jobs = tmp_path / "jobs.txt"
    config = tmp_path / "cfg" / "llm_config.json"
    config.parent.mkdir()
    rec = Recorder()
    started(FileWatcher([jobs, config], rec), request)
    jobs.write_text("python a.py\n")
    config.write_text("{}\n")
    assert wait_until(lambda: rec.paths() == {jobs, config})


def test_folder_and_glob_targets(
    tmp_path: Path, request: pytest.FixtureRequest, no_leaked_threads: None
) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    globbed = tmp_path / "more"
    globbed.mkdir()
    rec = Recorder()
    watcher = started(FileWatcher([folder, globbed / "q*.txt"], rec), request)
    (folder / "a.txt").write_text("python a.py\n")
    (globbed / "queue1.txt").write_text("python b.py\n")
    assert wait_until(lambda: rec.paths() == {folder / "a.txt", globbed / "queue1.txt"})
    (folder / "a.json").write_text("{}\n")
    (folder / ".#a.txt").write_text("emacs lock\n")
    (globbed / "other.txt").write_text("x\n")
    assert watcher.matches(globbed / "q2.txt")
    assert not watcher.matches(globbed / "other.txt")
    assert not watcher.matches(folder / ".#a.txt")
    assert not watcher.matches(folder / "sub" / "a.txt")


def test_safety_timer_fires_without_edits(
    tmp_path: Path, request: pytest.FixtureRequest, no_leaked_threads: None
) -> None:
    jobs = tmp_path / "jobs.txt"  # need not exist: the reader is told to look anyway
    folder = tmp_path / "queue"
    folder.mkdir()
    (folder / "q.txt").write_text("python q.py\n")
    rec = Recorder()
    started(FileWatcher([jobs, folder], rec, safety_interval_s=0.2), request)
    assert wait_until(lambda: rec.count(jobs) >= 2 and rec.count(folder / "q.txt") >= 2)


def test_callback_exception_is_logged_and_watching_goes_on(
    jobs: Path,
    request: pytest.FixtureRequest,
    no_leaked_threads: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Path] = []

    def flaky(path: Path) -> None:
        seen.append(path)
        if len(seen) == 1:
            raise RuntimeError("reader blew up")

    started(FileWatcher([jobs], flaky, quiet_s=0.05), request)
    jobs.write_text("python a.py\n")
    assert wait_until(lambda: len(seen) >= 1)
    time.sleep(0.15)
    jobs.write_text("python b.py\n")
    assert wait_until(lambda: len(seen) >= 2)
    assert "reader blew up" in caplog.text


def test_missing_folder_is_a_clear_error(tmp_path: Path, no_leaked_threads: None) -> None:
    watcher = FileWatcher([tmp_path / "nope" / "jobs.txt"], lambda p: None)
    with pytest.raises(WatchError, match="folder does not exist: .*nope"):
        watcher.start()
    watcher.stop()


def test_stop_joins_every_thread_and_is_idempotent(jobs: Path) -> None:
    before = set(threading.enumerate())
    watcher = FileWatcher([jobs], Recorder(), safety_interval_s=0.05)
    watcher.start()
    assert len(set(threading.enumerate()) - before) >= 2  # observer + worker (+ emitter)
    jobs.write_text("python a.py\n")
    watcher.stop()
    assert set(threading.enumerate()) <= before
    watcher.stop()
    assert set(threading.enumerate()) <= before


def test_stop_from_inside_the_callback_does_not_deadlock(
    jobs: Path, no_leaked_threads: None
) -> None:
    done = threading.Event()
    holder: list[FileWatcher] = []

    def stop_self(path: Path) -> None:
        holder[0].stop()
        done.set()

    watcher = FileWatcher([jobs], stop_self, safety_interval_s=0.05)
    holder.append(watcher)
    watcher.start()
    assert done.wait(WAIT_S)
