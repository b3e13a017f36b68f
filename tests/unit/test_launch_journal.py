"""Write-ahead of launches through the store's launch journal, and saves only when needed.

The promise is the one a full write-ahead save kept: whatever moment the daemon dies, a launch
is known after the restart (adopted, or fenced and requeued) -- never lost, never run twice --
while the write-ahead costs a few hundred bytes instead of the whole state. And an idle daemon
does not rewrite its state on every monitor tick, yet its heartbeat stays fresh.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest

from gpu_scheduler.adapters.clock import FakeClock
from gpu_scheduler.adapters.gpus import FakeProbe
from gpu_scheduler.adapters.launchers import FakeLauncher
from gpu_scheduler.adapters.store import SavedState, StateStore
from gpu_scheduler.config import settings_from_dict
from gpu_scheduler.core.model import Finished, Job, JobSpec, Pending, Running, Succeeded
from gpu_scheduler.core.recovery import replay_launches
from gpu_scheduler.daemon import HEARTBEAT_S, LAUNCH_SAVE_DELAY_S, SAVE_INTERVAL_S, Daemon, Event
from gpu_scheduler.errors import StateFileError
from gpu_scheduler.health import heartbeat_s
from tests.helpers import wait_until

NOW = 1_700_000_000.0


def _job(n: int, status: object = None, attempts: int = 0) -> Job:
    spec = JobSpec(f"job{n:03d}", "jobs.txt", n, f"t.py --n {n}", 0, "t.py", share=500)
    return Job(spec, 500, status or Pending(enqueued_at=NOW), seq=n, submitted_at=NOW,  # type: ignore[arg-type]
               attempts=attempts)  # fmt: skip


def _launched(n: int, attempt: int = 1) -> Job:
    return _job(n, Running(NOW + 1, (0,), 500, f"s{n}"), attempts=attempt)


# ----------------------------------------------------------------------------- the store


def test_launches_written_ahead_are_read_back_after_the_state_they_extend(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(SavedState((_job(1), _job(2)), next_seq=3, saved_at=NOW))
    store.append_launches([_launched(1)], next_seq=3)
    store.append_launches([_launched(2), _launched(7)], next_seq=8)
    restart = StateStore(tmp_path / "state.json")
    loaded = restart.load()
    assert loaded is not None
    jobs, next_seq = restart.read_launches()
    assert jobs == [_launched(1), _launched(2), _launched(7)] and next_seq == 8
    replayed = {j.job_id: j for j in replay_launches(loaded.state.jobs, jobs, ())}
    assert all(isinstance(replayed[f"job{n:03d}"].status, Running) for n in (1, 2, 7))


def test_a_full_save_empties_the_journal_and_old_lines_are_never_replayed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(SavedState((_job(1),), saved_at=NOW))
    store.append_launches([_launched(1)], next_seq=2)
    store.save(SavedState((_launched(1),), saved_at=NOW))  # same saved_at: the file still differs
    assert store.launches.read_bytes() == b""
    # kill -9 between a full save and the journal's truncation: the lines name the older file
    store.append_launches([_launched(1, attempt=2)], next_seq=2)
    stale = store.launches.read_bytes()
    store.save(SavedState((_job(1, Finished(NOW + 5, Succeeded(), NOW + 1, (0,))),), saved_at=NOW))
    store.launches.write_bytes(stale)
    restart = StateStore(tmp_path / "state.json")
    assert restart.load() is not None
    assert restart.read_launches() == ([], 0)


def test_a_line_cut_short_is_skipped_and_the_next_append_starts_a_new_line(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(SavedState((), saved_at=NOW))
    store.append_launches([_launched(1)], next_seq=2)
    with open(store.launches, "ab") as f:
        f.write(b'{"v":1,"base":[1,2')  # a crash mid-append: that launch never started
    store.append_launches([_launched(2)], next_seq=3)
    restart = StateStore(tmp_path / "state.json")
    assert restart.load() is not None
    assert restart.read_launches() == ([_launched(1), _launched(2)], 3)


def test_no_replay_from_a_backup_or_after_a_reset(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(SavedState((_job(1),), saved_at=NOW))
    store.save(SavedState((_job(1),), saved_at=NOW + 1))
    store.append_launches([_launched(1)], next_seq=2)
    store.path.write_text("{ broken")  # the file the lines extend is gone
    restart = StateStore(tmp_path / "state.json")
    loaded = restart.load()
    assert loaded is not None and loaded.from_backup
    assert restart.read_launches() == ([], 0)

    fresh = StateStore(tmp_path / "other.json")
    fresh.save(SavedState((), saved_at=NOW))
    fresh.append_launches([_launched(3)], next_seq=4)
    fresh.reset()
    fresh.save(SavedState((), saved_at=NOW))
    again = StateStore(tmp_path / "other.json")
    assert again.load() is not None and again.read_launches() == ([], 0)


def test_append_before_any_save_or_on_a_failing_disk_is_an_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    with pytest.raises(StateFileError, match="no state saved yet"):
        store.append_launches([_launched(1)], next_seq=2)
    store.save(SavedState((), saved_at=NOW))
    store.launches.mkdir()  # cannot be opened for appending
    with pytest.raises(StateFileError, match="cannot write a launch ahead"):
        store.append_launches([_launched(1)], next_seq=2)


def test_replay_never_takes_a_job_back() -> None:
    saved = (_launched(1, attempt=2), _job(2), _job(3))
    launched = [_launched(1, attempt=1), _launched(2), _launched(3)]
    jobs = {j.job_id: j for j in replay_launches(saved, launched, archived={"job003"})}
    assert jobs["job001"].attempts == 2  # the state is newer for this one
    assert isinstance(jobs["job002"].status, Running)
    assert isinstance(jobs["job003"].status, Pending)  # archived: never back


# ----------------------------------------------------------------------------- the daemon


def _daemon(tmp_path: Path, launcher: FakeLauncher, lines: int = 1,
            probe: FakeProbe | None = None) -> Daemon:  # fmt: skip
    (tmp_path / "jobs.txt").write_text(
        "".join(f"0,{tmp_path}/train.py,,--n {n},gpus=1\n" for n in range(lines))
    )
    (tmp_path / "train.py").write_text("")
    (tmp_path / "llm.json").write_text('{"default_requirement": 1.0, "models": {}}')
    settings = settings_from_dict({
        "gpu": {"provider": "simulated", "simulated": {"count": 2}, "monitor_interval_s": 0.5},
        "files": {"jobs_file": str(tmp_path / "jobs.txt"),
                  "llm_config_file": str(tmp_path / "llm.json"),
                  "state_file": str(tmp_path / "state" / "state.json"),
                  "log_dir": str(tmp_path / "logs")},
    }, tmp_path / "config.json")  # fmt: skip
    return Daemon(settings, probe=probe or FakeProbe.uniform(2, 81920), launcher=launcher,
                  clock=FakeClock(NOW), mode="fake", watch_files=False)  # fmt: skip


def _tick(daemon: Daemon, seconds: float = 0.05) -> None:
    daemon.clock.advance(seconds)  # type: ignore[attr-defined]
    daemon.step(0.001)


def _die(daemon: Daemon) -> None:
    """kill -9, as far as the files are concerned: no further save, nothing cleaned up."""
    daemon._launches.shutdown(wait=True)
    daemon._control.stop()  # type: ignore[union-attr]
    daemon._exit_watcher.close()
    daemon._stops.shutdown()


def _saved_states(daemon: Daemon) -> dict[str, str]:
    saved = StateStore(daemon.store.path).read_only_snapshot()
    assert saved is not None
    return {j.job_id: j.state for j in saved.jobs}


def test_launch_is_written_ahead_and_the_full_save_follows_coalesced(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    daemon = _daemon(tmp_path, launcher)
    try:
        daemon.start()
        inode = daemon.store.path.stat().st_ino
        daemon.step(0)  # the pass: journal, then the launch
        wait_until(lambda: launcher.requests, what="the launch")
        assert daemon.store.launches.read_bytes().count(b"\n") == 1
        assert daemon.store.path.stat().st_ino == inode, "no full save before the launch"
        assert set(_saved_states(daemon).values()) == {"pending"}
        _tick(daemon, SAVE_INTERVAL_S / 2)
        assert daemon.store.path.stat().st_ino == inode, "the full save waits its interval"
        _tick(daemon, SAVE_INTERVAL_S)
        assert set(_saved_states(daemon).values()) == {"running"}
        assert daemon.store.launches.read_bytes() == b""
    finally:
        daemon.stopping = True
        daemon.close()


def test_a_save_due_at_a_launch_waits_a_moment_for_the_runner(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    daemon = _daemon(tmp_path, launcher, lines=0)
    try:
        daemon.start()
        _tick(daemon, 0.5)  # idle: a save would be due at once
        jobs = tmp_path / "jobs.txt"
        jobs.write_text(f"0,{tmp_path}/train.py,,--n 1,gpus=1\n")
        daemon._on_file_change(jobs)
        inode = daemon.store.path.stat().st_ino
        daemon.step(0)
        wait_until(lambda: launcher.requests, what="the launch")
        assert daemon.store.path.stat().st_ino == inode
        _tick(daemon, LAUNCH_SAVE_DELAY_S / 2)
        assert daemon.store.path.stat().st_ino == inode
        _tick(daemon, LAUNCH_SAVE_DELAY_S)
        assert set(_saved_states(daemon).values()) == {"running"}
    finally:
        daemon.stopping = True
        daemon.close()


def test_kill9_after_the_journal_append_before_the_runner_starts_runs_the_job_once(
    tmp_path: Path,
) -> None:
    launcher = FakeLauncher()
    first = _daemon(tmp_path, launcher)
    first.start()
    first._launches.submit = lambda *args, **kwargs: None  # type: ignore[method-assign,assignment]
    first.step(0)  # journal appended; the daemon dies before any runner starts
    assert first.store.launches.read_bytes().count(b"\n") == 1 and launcher.requests == []
    _die(first)
    second = _daemon(tmp_path, launcher)
    try:
        second.start()  # the launch is known: fenced (no runner), requeued, launched again
        wait_until(lambda: _tick(second) or launcher.requests, what="the relaunch")
        [job_id] = second.scheduler.jobs
        assert [r.job_id for r in launcher.requests] == [job_id]
        assert second.scheduler.jobs[job_id].attempts == 2
    finally:
        second.stopping = True
        second.close()


def test_kill9_after_the_runner_started_before_the_full_save_adopts_it(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    first = _daemon(tmp_path, launcher, lines=2)
    first.start()
    first.step(0)
    wait_until(lambda: len(launcher.requests) == 2, what="two launches")
    _die(first)  # before the coalesced full save: the state file still says pending
    assert set(_saved_states(first).values()) == {"pending"}
    second = _daemon(tmp_path, launcher, lines=2)
    try:
        second.start()  # (no ticks: the monitor would find the fake pids dead)
        assert len(launcher.requests) == 2, "adopted, not launched again"
        assert {j.state for j in second.scheduler.jobs.values()} == {"running"}
        assert {j.status.pid for j in second.scheduler.jobs.values()} == set(  # type: ignore[union-attr]
            launcher.processes
        )
        assert set(_saved_states(second).values()) == {"running"}
    finally:
        second.stopping = True
        second.close()


def test_monitor_tick_with_nothing_changed_does_not_rewrite_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = FakeProbe.uniform(2, 81920)
    daemon = _daemon(tmp_path, FakeLauncher(), lines=0, probe=probe)
    try:
        daemon.start()
        _tick(daemon, 1.0)
        with monkeypatch.context() as patch:
            patch.setattr(Daemon, "_heartbeat_s", 3600.0)  # no heartbeat in the way
            inode = daemon.store.path.stat().st_ino
            for _ in range(20):  # 20 monitor ticks, all alike
                _tick(daemon, 0.5)
            assert daemon.store.path.stat().st_ino == inode, "an idle tick rewrote the state"
            probe.set_gpu(1, memory_used_mib=4000)  # something status shows
            _tick(daemon, 0.5)
            changed = StateStore(daemon.store.path).read_only_snapshot()
            assert changed is not None and changed.observed["gpus"][1]["memory_used_mib"] == 4000
        beat = changed.daemon["heartbeat_at"]
        inode = daemon.store.path.stat().st_ino
        _tick(daemon, 0.5)
        assert daemon.store.path.stat().st_ino == inode
        _tick(daemon, 0.5)  # nothing changed, but the heartbeat (every other tick) is due
        assert daemon.store.path.stat().st_ino != inode
        later = StateStore(daemon.store.path).read_only_snapshot()
        assert later is not None and later.daemon["heartbeat_at"] == beat + 1.0
        assert later.observed["metrics"]["samples"] > changed.observed["metrics"]["samples"]
    finally:
        daemon.stopping = True
        daemon.close()


def test_heartbeat_is_every_other_tick_at_most_ten_seconds(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, FakeLauncher(), lines=0)
    assert daemon._heartbeat_s == 1.0 == heartbeat_s(0.5)  # 2 x 0.5 s ticks; health agrees
    slow = replace(daemon.settings, gpu=replace(daemon.settings.gpu, monitor_interval_s=60.0))
    daemon.settings = slow
    assert daemon._heartbeat_s == HEARTBEAT_S == heartbeat_s(60.0)
    daemon._control = None
    daemon._launches.shutdown()
    daemon._stops.shutdown()
    daemon._exit_watcher.close()


def test_a_failing_journal_stops_launching_like_a_failing_save(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    daemon = _daemon(tmp_path, launcher)
    try:
        daemon.start()
        daemon.store.launches.unlink(missing_ok=True)
        daemon.store.launches.mkdir()  # appends fail
        daemon.step(0)
        assert launcher.requests == [] and "cannot write a launch ahead" in daemon.save_error
        [job] = daemon.scheduler.jobs.values()
        assert isinstance(job.status, Pending) and job.attempts == 0
        daemon.store.launches.rmdir()
        wait_until(lambda: _tick(daemon, 0.1) or launcher.requests, what="launching to resume")
        assert not daemon.save_error
    finally:
        daemon.stopping = True
        daemon.close()


def test_a_slow_full_save_is_made_less_often_but_a_command_is_saved_at_once(
    tmp_path: Path,
) -> None:
    """A state of 100,000 jobs takes ~0.3 s to save: saved every 0.2 s while jobs change,
    the daemon would do little else. Full saves are spaced to cost at most a tenth of its
    time (launches are journalled and exits recorded by the runners either way); a user's
    command still reaches the disk within SAVE_INTERVAL_S."""
    launcher = FakeLauncher()
    daemon = _daemon(tmp_path, launcher, lines=0)
    real_save = daemon.store.save
    saves: list[SavedState] = []

    def slow_save(state: SavedState) -> None:  # the fake clock says each save took 1 s
        real_save(state)
        saves.append(state)
        daemon.clock.advance(1.0)  # type: ignore[attr-defined]

    try:
        daemon.start()
        daemon.store.save = slow_save  # type: ignore[method-assign]
        daemon._save()  # measured: 1 s
        daemon._dirty = True  # e.g. a job exited
        _tick(daemon, 2 * SAVE_INTERVAL_S)
        _tick(daemon, 2.0)
        assert len(saves) == 1, "a 1 s save is not made every 0.2 s"
        _tick(daemon, 8.0)  # 10 s after the last one
        assert len(saves) == 2
        done: Future[dict[str, object]] = Future()  # `gpu-scheduler pause-gpu 1`, as posted
        daemon.events.put(Event("control", data={"cmd": "pause", "gpus": [1]}, reply=done))
        daemon.step(0.001)
        assert done.result(timeout=5)["ok"]
        def saved_paused() -> tuple[int, ...]:
            saved = StateStore(daemon.store.path).read_only_snapshot()
            assert saved is not None
            return saved.paused

        assert saved_paused() == ()
        _tick(daemon, 1.5 * SAVE_INTERVAL_S)
        assert saved_paused() == (1,), "a command is saved within SAVE_INTERVAL_S, not 10 s"
    finally:
        daemon.stopping = True
        daemon.close()
