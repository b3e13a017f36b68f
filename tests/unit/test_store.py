"""The state store against real files and real fsync: nothing lost, nothing run twice."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_scheduler.adapters import store as store_module
from gpu_scheduler.adapters.store import (
    MIGRATIONS,
    STATE_VERSION,
    LoadResult,
    SavedState,
    StateStore,
)
from gpu_scheduler.core import codec
from gpu_scheduler.core.model import (
    Cancelled,
    Failed,
    Finished,
    GpuSnapshot,
    Job,
    JobSpec,
    LineError,
    Pending,
    Running,
    Succeeded,
    TimedOut,
)
from gpu_scheduler.errors import StateFileError

KEPT_V1 = Path(__file__).parent.parent / "data" / "state_v1.json"


def make_job(n: int, status: Any = None) -> Job:
    spec = JobSpec(f"job{n:05d}", "/home/ana/jobs.txt", n + 1, f"python t.py --n {n}", n % 3,
                   "t.py", args=("--n", str(n)), share=500)  # fmt: skip
    return Job(spec, 500, status or Pending(enqueued_at=100.0 + n), seq=n, submitted_at=100.0 + n)


def make_state(tag: int = 0) -> SavedState:
    jobs = (
        make_job(1),
        make_job(2, Running(200.0, (0, 1), 250, "gs-job2", pid=99)),
        make_job(3, Finished(300.0, Failed(2), 250.0, (1,))),
        make_job(4 + tag),
    )
    observed = {"gpus": [codec.gpu_snapshot_to_dict(GpuSnapshot(0, memory_total_mib=1024))],
                "line_errors": [codec.line_error_to_dict(LineError("j.txt", 3, "x", "bad"))]}  # fmt: skip
    return SavedState(jobs, paused=(1,), next_seq=10 + tag, saved_at=1_700_000_000.0 + tag,
                      daemon={"pid": 1234, "mode": "screen"}, observed=observed)  # fmt: skip


@pytest.fixture()
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.json")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- saving and loading


def test_round_trip_save_load(store: StateStore) -> None:
    state = make_state()
    store.save(state)
    assert store.load() == LoadResult(state, from_backup=False, problem="")
    assert StateStore(store.path).read_only_snapshot() == state


def test_fresh_start_is_none(store: StateStore) -> None:
    assert store.load() is None
    assert store.read_only_snapshot() is None
    assert store.history_states() == {} and store.read_history() == []


def test_file_is_compact_versioned_and_private(store: StateStore) -> None:
    store.save(make_state(1))
    store.save(make_state(2))
    text = store.path.read_text("ascii")
    assert "\n" not in text and text.startswith('{"version":1,"saved_at":')
    for path in (store.path, store.backup):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftovers(store.path.parent) == []


def test_backup_holds_the_previous_state_after_two_saves(store: StateStore) -> None:
    store.save(make_state(1))
    store.save(make_state(2))
    assert StateStore(store.backup).read_only_snapshot() == make_state(1)
    assert store.load() == LoadResult(make_state(2), False, "")


def test_first_save_over_a_bad_file_does_not_make_it_the_backup(store: StateStore) -> None:
    store.save(make_state(1))
    store.save(make_state(2))
    store.path.write_bytes(b"{garbage")
    StateStore(store.path).save(make_state(3))  # a new process that never loaded
    assert StateStore(store.backup).read_only_snapshot() == make_state(1)


def test_changed_jobs_are_saved_even_though_encodings_are_cached(store: StateStore) -> None:
    state = make_state()
    store.save(state)
    finished = replace(state.jobs[0], status=Finished(400.0, Succeeded(), 350.0, (0,)))
    changed = replace(state, jobs=(finished, *state.jobs[1:]))
    store.save(changed)
    assert StateStore(store.path).read_only_snapshot() == changed


def test_lone_surrogate_in_a_command_round_trips(store: StateStore) -> None:
    job = make_job(1)
    odd = replace(job, spec=replace(job.spec, text="python t.py caf\udce9.txt"))
    store.save(SavedState((odd,)))
    assert store.load().state.jobs == (odd,)  # type: ignore[union-attr]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(0, 10**6), unique=True, max_size=6), st.lists(st.integers(0, 64)))
def test_any_state_saved_loads_back_equal(
    tmp_path: Path, seqs: list[int], paused: list[int]
) -> None:
    state = SavedState(tuple(make_job(n) for n in seqs), tuple(paused), next_seq=len(seqs))
    store = StateStore(tmp_path / "any.json")
    store.save(state)
    assert StateStore(store.path).load() == LoadResult(state, False, "")


def test_kept_v1_file_loads_forever(tmp_path: Path) -> None:
    """tests/data/state_v1.json was written by hand in format 1; it must always load."""
    path = tmp_path / "state.json"
    shutil.copy(KEPT_V1, path)
    result = StateStore(path).load()
    assert result is not None and not result.from_backup, result
    state = result.state
    assert state.paused == (3,) and state.next_seq == 5 and state.saved_at == 1700000100.5
    assert state.daemon["hostname"] == "gpu-box"
    by_id = {job.job_id: job for job in state.jobs}
    assert [job.state for job in state.jobs] == [
        "running", "pending", "pending", "failed", "cancelled"
    ]  # fmt: skip
    running = by_id["a1b2c3d4e5"].status
    assert isinstance(running, Running) and running.gpus == (0,) and running.pid == 31337
    assert by_id["e5f6a7b8c9"].spec.after == ("lr-0.1",)
    assert by_id["0f1e2d3c4b"].spec.tenant == "default"  # left out in the file: the default
    assert by_id["0f1e2d3c4b"].last_exit_code == 1
    assert by_id["9a8b7c6d5e"].status.outcome == TimedOut(60.0)  # type: ignore[union-attr]
    assert by_id["1122334455"].status.outcome == Cancelled("ana")  # type: ignore[union-attr]
    gpus = [codec.gpu_snapshot_from_dict(g) for g in state.observed["gpus"]]
    assert gpus[1].processes is None and not gpus[1].healthy
    assert codec.line_error_from_dict(state.observed["line_errors"][0]).line_no == 7
    StateStore(path).save(state)  # and what it becomes when saved loads again, equal
    assert StateStore(path).load() == LoadResult(state, False, "")


# ----------------------------------------------------------------------------- bad files


def two_saves(store: StateStore) -> None:
    store.save(make_state(1))
    store.save(make_state(2))


def test_truncated_file_falls_back_to_the_backup(store: StateStore) -> None:
    two_saves(store)
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])
    result = store.load()
    assert result is not None and result.from_backup and result.state == make_state(1)
    assert result.problem.startswith(f"{store.path}: not valid JSON (truncated?) at line 1 column")
    kept = list(store.path.parent.glob("state.json.bad-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == data[: len(data) // 2]
    assert store.path.read_bytes() == data[: len(data) // 2]  # only reset moves it away
    assert StateStore(store.path).read_only_snapshot() == make_state(1)


def test_garbage_bytes_fall_back_to_the_backup(store: StateStore) -> None:
    two_saves(store)
    store.path.write_bytes(os.urandom(64) + b"\xff")
    result = store.load()
    assert result is not None and result.from_backup and result.state == make_state(1)
    assert result.problem.startswith(f"{store.path}: not UTF-8 text")


def test_after_falling_back_the_next_save_keeps_the_good_backup(store: StateStore) -> None:
    two_saves(store)
    store.path.write_bytes(b"")
    assert store.load().from_backup  # type: ignore[union-attr]
    store.save(make_state(3))
    assert StateStore(store.backup).read_only_snapshot() == make_state(1)
    store.save(make_state(4))
    assert StateStore(store.backup).read_only_snapshot() == make_state(3)


def test_both_bad_refuses_naming_both(store: StateStore) -> None:
    two_saves(store)
    store.path.write_bytes(b'{"version": 1, "jobs": [')
    store.backup.write_bytes(b"[1, 2]")
    with pytest.raises(StateFileError) as info:
        store.load()
    message = str(info.value)
    assert f"{store.path}: not valid JSON (truncated?)" in message
    assert f"{store.backup}: the top level is a JSON list, not an object" in message
    assert "gpu-scheduler start --reset-state" in message and "Traceback" not in message
    with pytest.raises(StateFileError):
        store.read_only_snapshot()


def test_bad_file_without_backup_refuses(store: StateStore) -> None:
    store.path.write_text("{}")
    with pytest.raises(StateFileError, match=r"'jobs' is a required property[\s\S]*\.bak: missing"):
        store.load()


def test_missing_file_with_a_good_backup_uses_it(store: StateStore) -> None:
    two_saves(store)
    store.path.unlink()
    assert store.load() == LoadResult(make_state(1), True, f"{store.path}: missing")


def document(**changes: Any) -> dict[str, Any]:
    return json.loads(store_module._encode(make_state(), {})[0]) | changes


def test_schema_failure_names_path_and_field(store: StateStore) -> None:
    doc = document()
    doc["jobs"][3]["status"]["enqueued_at"] = "x"
    store.path.write_text(json.dumps(doc))
    with pytest.raises(StateFileError) as info:
        store.load()
    assert f"{store.path}: jobs[3].status.enqueued_at: 'x' is not of type 'number'" in str(
        info.value
    )


def test_status_gpus_of_the_wrong_type(store: StateStore) -> None:
    doc = document()
    doc["jobs"][1]["status"]["gpus"] = ["x"]
    store.path.write_text(json.dumps(doc))
    with pytest.raises(
        StateFileError, match=r"jobs\[1\]\.status\.gpus\[0\]: 'x' is not of type 'integer'"
    ):
        store.load()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"paused": ["x"]}, "paused[0]: 'x' is not of type 'integer'"),
        ({"observed": []}, "observed: [] is not of type 'object'"),
        ({"extra": 1}, "Additional properties are not allowed ('extra' was unexpected)"),
        ({"version": "1"}, "version: '1' is not of type 'integer'"),
        ({"version": -1}, "format version -1 is unknown"),
        ({"saved_at": float("nan")}, "not valid JSON: NaN is not a JSON number"),
    ],
)
def test_envelope_problems_are_named(
    store: StateStore, changes: dict[str, Any], problem: str
) -> None:
    store.path.write_text(json.dumps(document(**changes)))
    with pytest.raises(StateFileError) as info:
        store.load()
    assert f"{store.path}: {problem}" in str(info.value)


def test_a_job_id_given_twice_is_refused_on_load_and_on_save(store: StateStore) -> None:
    doc = document()
    doc["jobs"].append(doc["jobs"][0])
    store.path.write_text(json.dumps(doc))
    with pytest.raises(StateFileError, match=r"jobs\[4\]: job id 'job00001' appears twice"):
        store.load()
    with pytest.raises(StateFileError, match="refusing to save"):
        StateStore(store.path.with_name("other.json")).save(SavedState((make_job(1), make_job(1))))


def test_newer_version_is_refused_even_with_a_good_backup(store: StateStore) -> None:
    two_saves(store)
    store.path.write_text(json.dumps(document(version=7)))
    expected = (f"{store.path}: format version 7 is newer than this gpu-scheduler understands "
                f"({STATE_VERSION}); upgrade gpu-scheduler")  # fmt: skip
    with pytest.raises(StateFileError) as info:
        store.load()
    assert str(info.value) == expected
    with pytest.raises(StateFileError, match="newer"):
        StateStore(store.path).save(make_state(3))  # never overwrite a newer state unread
    assert json.loads(store.path.read_text())["version"] == 7


def test_version_0_document_is_migrated(store: StateStore) -> None:
    doc = document()
    del doc["version"]
    doc["paused_gpus"] = doc.pop("paused")
    store.path.write_text(json.dumps(doc, indent=2))
    assert 0 in MIGRATIONS
    assert store.load() == LoadResult(make_state(), False, "")
    store.save(make_state())
    assert '"version":1' in store.path.read_text() and "paused_gpus" not in store.path.read_text()


def test_migrations_chain_from_any_older_version(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a pretend version 2, a version-0 file goes 0 -> 1 -> 2, one step at a time."""
    steps: list[int] = []

    def v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
        steps.append(doc["version"])
        return dict(doc, version=2)

    monkeypatch.setattr(store_module, "STATE_VERSION", 2)
    monkeypatch.setitem(MIGRATIONS, 1, v1_to_v2)
    monkeypatch.setattr(store_module, "_validator", lambda: _validator_for_version(2))
    doc = document()
    del doc["version"]
    doc["paused_gpus"] = doc.pop("paused")
    store.path.write_text(json.dumps(doc))
    assert store.load().state == make_state()  # type: ignore[union-attr]
    assert steps == [1]


def _validator_for_version(version: int) -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads(json.dumps(store_module.state_schema()))
    schema["properties"]["version"] = {"const": version}
    return Draft202012Validator(schema)


# ----------------------------------------------------------------------------- failed saves


def test_unwritable_folder_gives_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()  # root (CAP_DAC_OVERRIDE) ignores the mode
        privileged = True
    except PermissionError:
        privileged = False
    if privileged:
        (folder / "probe").unlink()
        folder = Path("/sys")  # sysfs refuses new files even to root
        if not folder.is_dir():
            pytest.skip("running privileged and there is no /sys to refuse a write")
    path = folder / f"gpu-scheduler-test-{os.getpid()}.json"
    try:
        with pytest.raises(StateFileError) as info:
            StateStore(path).save(make_state())
    finally:
        tmp_path.joinpath("ro").chmod(0o700)
    message = str(info.value)
    assert message.startswith(
        f"{path}: cannot save the scheduler state: Permission denied (EACCES)"
    )
    assert "Traceback" not in message and not path.exists()


def test_state_folder_that_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("not a folder")
    path = tmp_path / "blocker" / "state.json"
    with pytest.raises(StateFileError, match=rf"^{path}: cannot save the scheduler state: .*\(E"):
        StateStore(path).save(make_state())


def fill_disk_after(monkeypatch: pytest.MonkeyPatch, allowed: int) -> None:
    """os.write writes ``allowed`` more bytes, then fails like a full disk."""
    real_write = os.write
    budget = [allowed]

    def write(fd: int, data: Any) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[: budget[0]]))
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)


def test_disk_full_mid_write_keeps_the_old_state(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_saves(store)
    before = (store.path.read_bytes(), store.backup.read_bytes())
    fill_disk_after(monkeypatch, 1000)
    with pytest.raises(StateFileError) as info:
        store.save(make_state(3))
    monkeypatch.undo()
    assert str(info.value) == (f"{store.path}: cannot save the scheduler state: "
                               "No space left on device (ENOSPC); the previous state file is intact")  # fmt: skip
    assert (store.path.read_bytes(), store.backup.read_bytes()) == before
    assert leftovers(store.path.parent) == []
    assert store.load() == LoadResult(make_state(2), False, "")
    store.save(make_state(3))  # once there is room again, it carries on
    assert store.load().state == make_state(3)  # type: ignore[union-attr]


def test_unencodable_state_is_refused_before_touching_disk(store: StateStore) -> None:
    store.save(make_state(1))
    with pytest.raises(StateFileError, match="cannot save the scheduler state"):
        store.save(replace(make_state(2), observed={"gpus": {1, 2}}))
    with pytest.raises(StateFileError, match="Out of range float"):
        store.save(replace(make_state(2), saved_at=float("inf")))
    assert store.load() == LoadResult(make_state(1), False, "")
    assert leftovers(store.path.parent) == []


def test_stale_temp_file_of_a_dead_writer_is_removed_on_load(store: StateStore) -> None:
    store.save(make_state())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = store.path.with_name(f".state.json.new.{dead}.abcd1234.tmp")
    live = store.path.with_name(f".state.json.new.{os.getppid()}.abcd1234.tmp")
    stale.write_text("half a sta")
    live.write_text("being written")
    store.load()
    assert not stale.exists() and live.exists()


def test_read_only_snapshot_never_writes_and_tolerates_concurrent_saves(store: StateStore) -> None:
    store.save(make_state(0))
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_saving() -> None:
        writer, n = StateStore(store.path), 0
        try:
            while not stop.is_set():
                n += 1
                writer.save(make_state(n % 7))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=keep_saving)
    thread.start()
    try:
        reader = StateStore(store.path)
        seen = [reader.read_only_snapshot() for _ in range(60)]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    states = [make_state(n) for n in range(7)]
    assert all(state in states for state in seen)


def test_read_only_snapshot_leaves_the_folder_untouched(store: StateStore) -> None:
    two_saves(store)
    store.path.write_bytes(b"\x00\x01")
    before = sorted(os.listdir(store.path.parent))
    assert StateStore(store.path).read_only_snapshot() == make_state(1)
    assert sorted(os.listdir(store.path.parent)) == before


# ----------------------------------------------------------------------------- reset


def test_reset_moves_bad_files_aside_and_keeps_history(store: StateStore) -> None:
    two_saves(store)
    store.append_history([make_job(7, Finished(1.0, Succeeded()))])
    store.path.write_bytes(b"junk")
    store.backup.write_bytes(b"junk")
    moved = store.reset(now=1_700_000_000.0)
    assert moved == store.path.with_name("state.json.bad-20231114T221320Z")
    assert moved.read_bytes() == b"junk"
    assert store.backup.with_name("state.json.bak.bad-20231114T221320Z").exists()
    assert store.load() is None
    assert store.history_states() == {"job00007": "completed"}
    assert store.reset() is None
    store.save(make_state())
    assert store.load().state == make_state()  # type: ignore[union-attr]


def test_reset_twice_in_one_second_keeps_both(store: StateStore) -> None:
    for _ in range(2):
        store.path.write_text("x")
        store.reset(now=0.0)
    assert len(list(store.path.parent.glob("state.json.bad-*"))) == 2


# ----------------------------------------------------------------------------- history


def finished(n: int, outcome: Any = None) -> Job:
    return make_job(n, Finished(500.0 + n, outcome or Succeeded(), 400.0, (0,)))


def test_history_append_and_read(store: StateStore) -> None:
    store.append_history([finished(1), finished(2, Failed(3))])
    store.append_history([finished(3, Cancelled())])
    assert stat.S_IMODE(store.history.stat().st_mode) == 0o600
    assert store.history_states() == {"job00001": "completed", "job00002": "failed",
                                      "job00003": "cancelled"}  # fmt: skip
    assert store.read_history(newest_first=False) == [finished(1), finished(2, Failed(3)),
                                                     finished(3, Cancelled())]  # fmt: skip
    assert store.read_history() == [finished(3, Cancelled()), finished(2, Failed(3)), finished(1)]
    assert store.read_history(limit=2) == [finished(3, Cancelled()), finished(2, Failed(3))]
    assert store.read_history(limit=1, newest_first=False) == [finished(1)]
    with pytest.raises(ValueError, match="only finished jobs"):
        store.append_history([make_job(9)])


def test_history_tail_read_across_many_blocks(store: StateStore) -> None:
    jobs = [finished(n) for n in range(400)]  # ~250 KB: several 64 KiB blocks
    store.append_history(jobs)
    assert store.read_history(limit=300) == jobs[::-1][:300]
    assert store.read_history(limit=1000) == jobs[::-1]


def test_job_archived_twice_after_a_crash_is_listed_once(store: StateStore) -> None:
    store.append_history([finished(1), finished(2)])
    store.append_history([finished(2)])  # crashed before the state without it was saved
    assert store.read_history() == [finished(2), finished(1)]
    assert store.read_history(limit=5) == [finished(2), finished(1)]


def test_truncated_last_history_line_is_tolerated(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.append_history([finished(1), finished(2)])
    data = store.history.read_bytes()
    store.history.write_bytes(data[:-40])  # a crash mid-append
    with caplog.at_level(logging.WARNING):
        assert store.history_states() == {"job00001": "completed"}
        assert store.read_history(limit=5) == [finished(1)]
    assert "cut short" in caplog.text
    store.append_history([finished(3)])  # the next append is not glued to the broken line
    assert store.history_states() == {"job00001": "completed", "job00003": "completed"}
    assert store.read_history() == [finished(3), finished(1)]


def test_bad_history_lines_are_skipped_with_a_capped_warning(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.append_history([finished(1)])
    with store.history.open("ab") as f:
        f.write(b"not json\n" * 20 + b'{"v": 1, "id": 5, "state": "completed"}\n\n')
    store.append_history([finished(2)])
    with caplog.at_level(logging.WARNING):
        assert set(store.history_states()) == {"job00001", "job00002"}
    assert caplog.text.count("skipping bad line") == 5 and "skipped 21 bad lines" in caplog.text


def test_history_append_on_a_full_disk_leaves_no_partial_line(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_history([finished(1)])
    before = store.history.read_bytes()
    fill_disk_after(monkeypatch, 100)
    with pytest.raises(StateFileError, match=r"history\.jsonl: cannot append .*\(ENOSPC\)"):
        store.append_history([finished(2), finished(3)])
    monkeypatch.undo()
    assert store.history.read_bytes() == before


def test_saving_a_small_state_does_not_touch_the_history(store: StateStore) -> None:
    store.append_history([finished(n) for n in range(50)])
    before = store.history.stat()
    store.save(make_state())
    after = store.history.stat()
    assert (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def test_history_lines_not_in_the_writers_exact_form_are_still_read(store: StateStore) -> None:
    """history_states skips parsing lines it wrote itself; any other valid line is parsed."""
    odd = replace(finished(1), spec=replace(finished(1).spec, job_id='we"ird\u00e9'))
    store.append_history([odd, finished(2, Failed(1))])
    with store.history.open("ab") as f:
        f.write(b'{ "v": 1, "id": "spaced", "state": "cancelled", "job": {} }\n')
    assert store.history_states() == {
        'we"ird\u00e9': "completed",
        "job00002": "failed",
        "spaced": "cancelled",
    }
    assert store.read_history(newest_first=False)[0] == odd
