"""Issue 8: a one-line append to a huge jobs file reloads at the cost of that line, end to end.

The fast paths (JobSource keeping shares, AppendResolver, Scheduler.sync's ``unchanged``) must
give exactly what the full path gives: the property test below drives random edits, llm_config
changes and scheduler events, and compares every read and every sync with the full path (fresh
readers, ``with_dependencies``, ``sync`` without ``unchanged``) on a second scheduler.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import ChainMap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_scheduler import jobsource
from gpu_scheduler.core import dependencies
from gpu_scheduler.core.model import GpuSnapshot, Pending, Running
from gpu_scheduler.core.scheduler import Policy, Scheduler
from gpu_scheduler.jobsource import JobSource, SourceResult, with_dependencies

GPUS = 2
NAMES = ("a", "b", "c")


def _job_line(prio: int, script: str, n: int, name: str | None, after: list[str], gpus: str) -> str:
    options = [f"name={name}"] if name else []
    if after:
        options.append("after=" + ";".join(after))
    if gpus:
        options.append(f"gpus={gpus}")
    return f"{prio},{script},,--n {n},{' '.join(options)}"


LINE = st.one_of(
    st.builds(
        _job_line,
        st.integers(0, 2),
        st.sampled_from(["job.py", "job.py", "job.py", "missing.py"]),
        st.integers(0, 4),  # few values: repeated lines and moved lines happen
        st.sampled_from([None, None, *NAMES]),
        st.lists(st.sampled_from([*NAMES, "zz"]), max_size=2),
        st.sampled_from(["", "", "0.5", "1", "1.5", "3"]),  # 1.5: over alice's cap; 3: never
    ),
    st.sampled_from(["", "# a comment", "garbage", "0,job.py,,,gpus=0"]),
)
STEP = st.builds(  # pipelines: a new step's name is new, its after= names an earlier step
    lambda n, after, gpus: _job_line(0, "job.py", n, f"u{n}", [after], gpus),
    st.integers(0, 10**6),
    st.sampled_from(NAMES),
    st.sampled_from(["", "0.5"]),
)
APPEND = st.tuples(
    st.just("append"), st.integers(0, 1), st.lists(LINE | STEP | STEP, min_size=1, max_size=3)
)
EDIT = st.one_of(
    APPEND,
    APPEND,
    APPEND,
    APPEND,
    st.tuples(st.just("partial"), st.integers(0, 1), LINE),  # a last line without newline
    st.tuples(st.just("newline"), st.integers(0, 1)),
    st.tuples(st.just("delete"), st.integers(0, 1), st.integers(0, 50)),
    st.tuples(st.just("replace"), st.integers(0, 1), st.integers(0, 50), LINE),  # same inode
    st.tuples(st.just("insert"), st.integers(0, 1), st.integers(0, 50), LINE),
    st.tuples(st.just("swap_file"), st.integers(0, 1), st.integers(0, 50), LINE),  # new inode
    st.tuples(st.just("truncate"), st.integers(0, 1)),
    st.tuples(st.just("remove_file"), st.integers(0, 1)),
    st.tuples(st.just("llm"), st.sampled_from([0.25, 0.5, 1.0])),
    st.tuples(st.just("partial_flag"), st.booleans()),
    st.tuples(st.just("schedule")),
    st.tuples(st.sampled_from(["exit0", "exit1", "launch_failed", "lost"]), st.integers(0, 99)),
    st.tuples(st.sampled_from(["cancel", "retry", "archive"]), st.integers(0, 99)),
)


class Files:
    """The jobs files on disk: a single file, a folder of tenants, or a glob whose two files
    have the same stem (so their job ids can repeat)."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root = root
        if mode == "file":
            self.paths = [root / "jobs.txt"]
            self.setting = str(self.paths[0])
        elif mode == "folder":
            self.paths = [root / "alice.txt", root / "bob.txt"]
            self.setting = str(root)
        else:
            self.paths = [root / "x" / "jobs.txt", root / "y" / "jobs.txt"]
            self.setting = str(root / "*" / "jobs.txt")
        for path in self.paths:
            path.parent.mkdir(exist_ok=True)
            (path.parent / "job.py").write_text("")
        self.llm = root / "llm.json"
        self.set_llm(1.0)

    def set_llm(self, gpus: float) -> None:
        self.llm.write_text(json.dumps({"default_requirement": gpus, "models": {}}))

    def source(self) -> JobSource:
        source = JobSource(self.setting, self.llm, gpu_indices=range(GPUS), precision_unit=5,
                           tenant_caps={"alice": 1.0})  # fmt: skip
        source.reload_llm()
        return source

    def edit(self, op: tuple[Any, ...]) -> None:
        kind, which = op[0], op[1]
        path = self.paths[which % len(self.paths)]
        text = path.read_text() if path.exists() else ""
        if kind == "append":
            with open(path, "a") as f:
                f.write("".join(line + "\n" for line in op[2]))
            return
        if kind in ("partial", "newline"):
            with open(path, "a") as f:
                f.write(op[2] if kind == "partial" else "\n")
            return
        if kind in ("truncate", "remove_file"):
            if kind == "truncate":
                path.write_text("")
            elif path.exists():
                path.unlink()
            return
        lines = text.split("\n")  # the last element is a partial line, or ""
        at = op[2] % len(lines)
        if kind == "delete":
            del lines[at]
        elif kind == "insert":
            lines.insert(at, op[3])
        else:
            lines[at] = op[3]
        new = "\n".join(lines)
        if kind == "swap_file":  # an editor's save: write a copy, rename it over
            tmp = path.with_suffix(".tmp")
            tmp.write_text(new)
            os.replace(tmp, path)
        else:  # nano, VS Code, open("w"): the same inode, maybe longer than before
            with open(path, "w") as f:
                f.write(new)


def _known(s: Scheduler) -> tuple[dict[str, str], set[str]]:
    return {j.spec.name: j.job_id for j in s.jobs.values() if j.spec.name}, set(s.jobs) | set(
        s.archived
    )


def _state(s: Scheduler, now: float) -> tuple[object, ...]:
    return (
        list(s.jobs.items()),  # in order: removals follow it
        s.backlog,
        s.backlog_noticed,
        sorted(s.held),
        dict(s._delayed),
        s.queue_order(now),
        s.deps,
        {k: v for k, v in s._dependents.items() if v},
        s.next_seq,
        s.archived,
        s.used(),
    )


def _event(s: Scheduler, op: tuple[Any, ...], now: float) -> object:
    """One scheduler event, as the daemon would feed it (the same on both schedulers)."""
    kind = op[0]
    if kind == "schedule":
        snapshot = [GpuSnapshot(g, memory_total_mib=80_000) for g in range(GPUS)]
        return s.schedule(snapshot, now).launches
    ids = sorted(s.jobs)
    running = [j for j in ids if isinstance(s.jobs[j].status, Running)]
    if kind in ("exit0", "exit1", "launch_failed", "lost"):
        if not running:
            return None
        job_id = running[op[1] % len(running)]
        if kind == "launch_failed":
            return s.launch_failed(job_id, "no such file", now)
        if kind == "lost":
            return s.lost(job_id, "gone", now)
        return s.exited(job_id, 0 if kind == "exit0" else 1, now)
    if not ids:
        return None
    job_id = ids[op[1] % len(ids)]
    state = s.jobs[job_id].state
    if kind == "cancel" and state in ("pending", "running"):
        return s.cancel(job_id, now)
    if kind == "retry" and state in ("completed", "failed", "cancelled"):
        return s.retry(job_id, now)
    if kind == "archive" and state in ("completed", "failed", "cancelled"):
        return s.archive(job_id)
    return None


@given(
    mode=st.sampled_from(["file", "folder", "glob"]),
    limit=st.sampled_from([None, 1, 3]),
    edits=st.lists(EDIT, max_size=25),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_incremental_reload_and_sync_give_what_the_full_path_gives(
    mode: str, limit: int | None, edits: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = Files(Path(tmp), mode)
        source = files.source()
        fast = Scheduler(Policy(queue_size_limit=limit), range(GPUS))
        full = Scheduler(Policy(queue_size_limit=limit), range(GPUS))
        include_partial = False
        last: tuple[object, ...] = ()
        for step, op in enumerate([("append", 0, ["0,job.py,,--n 0"]), *edits]):
            now = float(step)
            if op[0] == "llm":
                files.set_llm(op[1])
                source.reload_llm()
            elif op[0] == "partial_flag":
                include_partial = op[1]
            elif op[0] in ("schedule", "exit0", "exit1", "launch_failed", "lost", "cancel",
                           "retry", "archive"):  # fmt: skip
                assert _event(fast, op, now) == _event(full, op, now)
                assert _state(fast, now) == _state(full, now)
                continue
            else:
                files.edit(op)
            jobs = fast.jobs
            got = source.read_with_dependencies(
                include_partial=include_partial,
                known_names=lambda jobs=jobs: {  # type: ignore[misc]
                    j.spec.name: j.job_id for j in jobs.values() if j.spec.name
                },
                known_ids=ChainMap[str, object](fast.jobs, fast.archived),
            )
            names, ids = _known(full)
            want = with_dependencies(files.source().read(include_partial=include_partial),
                                     names, ids)  # fmt: skip
            assert got == want
            assert got.unchanged_jobs <= len(last)  # the very pairs of the last read, in place
            assert all(a is b for a, b in zip(got.jobs[: got.unchanged_jobs], last, strict=False))
            last = got.jobs
            fast_notices = fast.sync(got.jobs, now, got.deps, unchanged=got.unchanged_jobs)
            assert fast_notices == full.sync(want.jobs, now, want.deps)
            assert _state(fast, now) == _state(full, now)


# ------------------------------------------------------------------------ the fast paths are taken


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Calls to the per-line work of each layer: shares, the full dependency resolution."""
    found = {"share": 0, "resolve_all": 0}
    real_share, real_resolve = jobsource.resolve_share, dependencies.resolve_dependencies

    def share(*args: Any) -> int:
        found["share"] += 1
        return real_share(*args)

    def resolve(*args: Any) -> dependencies.Resolved:
        found["resolve_all"] += 1
        return real_resolve(*args)

    monkeypatch.setattr(jobsource, "resolve_share", share)
    monkeypatch.setattr(dependencies, "resolve_dependencies", resolve)
    return found


class Daemonish:
    """What Daemon._read_jobs does, counting what it looks at."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        (path.parent / "llm.json").write_text('{"default_requirement": 0.5, "models": {}}')
        self.path = path
        self.source = JobSource(str(path), path.parent / "llm.json", gpu_indices=range(GPUS),
                                precision_unit=5)  # fmt: skip
        self.source.reload_llm()
        self.scheduler = Scheduler(Policy(queue_size_limit=limit), range(GPUS))
        self.adds = 0
        self.name_builds = 0
        real_add = self.scheduler.add

        def add(*args: Any) -> Any:
            self.adds += 1
            return real_add(*args)

        self.scheduler.add = add  # type: ignore[method-assign]

    def names(self) -> dict[str, str]:
        self.name_builds += 1
        return {j.spec.name: j.job_id for j in self.scheduler.jobs.values() if j.spec.name}

    def reread(self, now: float = 1.0) -> tuple[SourceResult, list[Any]]:
        s = self.scheduler
        result = self.source.read_with_dependencies(
            known_names=self.names, known_ids=ChainMap[str, object](s.jobs, s.archived)
        )
        return result, s.sync(result.jobs, now, result.deps, unchanged=result.unchanged_jobs)

    def append(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")


def test_a_one_line_append_to_a_big_file_looks_at_that_line_only(
    tmp_path: Path, counts: dict[str, int]
) -> None:
    (tmp_path / "job.py").write_text("")
    path = tmp_path / "jobs.txt"
    path.write_text("".join(f"0,job.py,,--n {n}\n" for n in range(500)))
    d = Daemonish(path)
    d.reread()
    counts.update(share=0, resolve_all=0)
    d.adds = 0
    result, notices = d.reread()  # nothing changed: nothing looked at
    assert (counts["share"], d.adds, notices) == (0, 0, []) and result.unchanged_jobs == 500
    d.append("0,job.py,,--n new")
    result, notices = d.reread()
    assert result.unchanged_jobs == 500 and len(result.jobs) == 501
    assert [n.event for n in notices] == ["enqueued"]
    assert (counts["share"], counts["resolve_all"], d.adds, d.name_builds) == (1, 0, 1, 0)


def test_appended_after_lines_are_resolved_without_resolving_the_old_ones(
    tmp_path: Path, counts: dict[str, int]
) -> None:
    (tmp_path / "job.py").write_text("")
    path = tmp_path / "jobs.txt"
    path.write_text(
        "0,job.py,,--n 0,name=prep\n" + "".join(f"0,job.py,,--n {n}\n" for n in range(1, 300))
    )
    d = Daemonish(path)
    d.reread()
    d.append("0,job.py,,--n t1,after=prep name=t1")  # the first after=: everything, once
    d.reread()
    counts.update(share=0, resolve_all=0)
    d.adds = d.name_builds = 0
    d.append("0,job.py,,--n t2,after=t1;prep")
    result, notices = d.reread()
    assert (counts["share"], counts["resolve_all"], d.adds, d.name_builds) == (1, 0, 1, 0)
    assert result.unchanged_jobs == 301 and [n.event for n in notices] == ["enqueued"]
    t2 = result.jobs[-1][0].job_id
    assert result.deps[t2] == (result.jobs[-2][0].job_id, result.jobs[0][0].job_id)
    assert t2 in d.scheduler.held


def test_a_new_line_named_by_an_old_after_resolves_the_old_line_again(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("")
    path = tmp_path / "jobs.txt"
    path.write_text("0,job.py,,--n 1,after=later\n0,job.py,,--n 2\n")
    d = Daemonish(path)
    result, _ = d.reread()
    assert [e.message for e in result.errors] == ["after=later: no job has this name or id"]
    d.append("0,job.py,,--n 3,name=later")
    result, notices = d.reread()
    assert result.errors == () and len(result.jobs) == 3
    assert sorted(n.event for n in notices) == ["enqueued", "enqueued"]


def test_an_in_place_edit_that_grows_the_file_is_an_edit_not_an_append(tmp_path: Path) -> None:
    """nano, VS Code and open("w") keep the inode; the file may even grow: only the bytes
    tell an edit from an append."""
    (tmp_path / "job.py").write_text("")
    path = tmp_path / "jobs.txt"
    path.write_text("0,job.py,,--n 1\n0,job.py,,--n 2\n0,job.py,,--n 3\n")
    d = Daemonish(path)
    before, _ = d.reread()
    inode = path.stat().st_ino
    with open(path, "w") as f:
        f.write("0,job.py,,--n 1\n0,job.py,,--n 22222\n0,job.py,,--n 3\n0,job.py,,--n 4\n")
    assert path.stat().st_ino == inode
    after, notices = d.reread()
    assert after.unchanged_jobs == 0  # an edit: every line is looked at again
    assert {n.event for n in notices} == {"dequeued", "enqueued"}
    assert before.jobs[1][0].job_id not in d.scheduler.jobs
    assert [spec.text for spec, _ in after.jobs][1] == "0,job.py,,--n 22222"


def test_a_retried_job_whose_line_is_gone_is_dequeued_by_an_append_sync(tmp_path: Path) -> None:
    """The append-only sync does not walk every job for lines that are gone: a job that became
    pending again since the last sync (here: retried after a cancel, so it never ran) must still
    be dequeued as the full walk would."""
    (tmp_path / "job.py").write_text("")
    path = tmp_path / "jobs.txt"
    path.write_text("0,job.py,,--n 1\n0,job.py,,--n 2\n")
    d = Daemonish(path)
    first, _ = d.reread()
    gone = first.jobs[0][0].job_id
    d.scheduler.cancel(gone, 1.0)
    path.write_text("0,job.py,,--n 2\n")  # its line is removed while it is cancelled
    d.reread(2.0)
    assert d.scheduler.jobs[gone].state == "cancelled"
    d.scheduler.retry(gone, 3.0)
    assert isinstance(d.scheduler.jobs[gone].status, Pending)
    d.append("0,job.py,,--n 3")
    result, notices = d.reread(4.0)
    assert result.unchanged_jobs == 1
    assert [(n.event, n.job_id) for n in notices][0] == ("enqueued", result.jobs[1][0].job_id)
    assert ("dequeued", gone) in [(n.event, n.job_id) for n in notices]
    assert gone not in d.scheduler.jobs


def test_backlog_lines_kept_from_the_last_sync_are_taken_first_in_file_order(
    tmp_path: Path,
) -> None:
    (tmp_path / "job.py").write_text("")
    path = tmp_path / "jobs.txt"
    path.write_text("".join(f"0,job.py,,--n {n}\n" for n in range(5)))
    d = Daemonish(path, limit=2)
    first, _ = d.reread()
    assert [e[0].job_id for e in d.scheduler.backlog] == [s.job_id for s, _ in first.jobs[2:]]
    d.scheduler.cancel(first.jobs[0][0].job_id, 1.0)  # room for one backlog line
    d.append("0,job.py,,--n 5")
    result, notices = d.reread(2.0)
    assert result.unchanged_jobs == 5
    assert [n.job_id for n in notices if n.event == "enqueued"] == [first.jobs[2][0].job_id]
    backlog = [e[0].job_id for e in d.scheduler.backlog]
    assert backlog == [s.job_id for s, _ in result.jobs[3:]]


# ------------------------------------------------------------------------ AppendResolver alone

REF = st.sampled_from(["p", "q", "r", "s", "j0", "j3", "j7", "k1", "gone"])
SPEC = st.tuples(
    st.sampled_from([None, None, "p", "q", "r", "s", "t"]),  # name=
    st.lists(REF, max_size=2),  # after=
)
RESOLVER_STEP = st.one_of(
    st.tuples(st.just("append"), st.lists(SPEC, min_size=1, max_size=4)),
    st.tuples(st.just("append"), st.lists(SPEC, min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 30)),
    st.tuples(st.just("known"), st.dictionaries(REF, REF, max_size=2), st.sets(REF, max_size=3)),
)


@given(steps=st.lists(RESOLVER_STEP, max_size=30), start=st.lists(SPEC, max_size=6))
@settings(max_examples=300, deadline=None)
def test_append_resolver_gives_what_resolve_dependencies_gives(
    steps: list[tuple[Any, ...]], start: list[tuple[str | None, list[str]]]
) -> None:
    from gpu_scheduler.core.model import JobSpec

    made = 0

    def pair(name: str | None, after: list[str]) -> tuple[JobSpec, int]:
        nonlocal made
        job_id = f"j{made}" if made % 11 else "k1"  # an id may repeat, and be a name
        made += 1
        return (
            JobSpec(job_id, "f", made, f"line {made}", 0, "/s", name=name, after=tuple(after)),
            500,
        )

    resolver = dependencies.AppendResolver()
    pairs: tuple[tuple[JobSpec, int], ...] = tuple(pair(*s) for s in start)
    names: dict[str, str] = {}
    ids: set[str] = set()
    unchanged = 0
    before: tuple[tuple[JobSpec, int], ...] = ()
    for op in [("append", []), *steps]:
        if op[0] == "append":
            unchanged = len(pairs)
            pairs = pairs + tuple(pair(*s) for s in op[1])
        elif op[0] == "truncate":
            unchanged = min(op[1], len(pairs))
            pairs = pairs[:unchanged]
        else:
            names, ids, unchanged = op[1], op[2], len(pairs)
        got = resolver.resolve(pairs, unchanged, lambda names=names: names, ids)  # type: ignore[misc]
        want = dependencies.resolve_dependencies([s for s, _ in pairs], names, ids)
        assert [s for s, _ in got.good] == list(want.specs)
        assert got.errors == want.errors and dict(got.deps) == dict(want.deps)
        assert all(a is b for a, b in zip(got.good[: got.unchanged], before, strict=False))
        assert got.unchanged <= len(before)
        before = got.good
