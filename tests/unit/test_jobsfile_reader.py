"""The jobs-file reader: what the daemon sees of a jobs file on disk, read again and again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_scheduler.adapters.jobsfile import JobsFileReader, ReadResult
from gpu_scheduler.core import jobfile


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "exp").mkdir()
    for name in ("a.py", "b.py"):
        (tmp_path / "exp" / name).write_text("print('hi')\n")
    return tmp_path


@pytest.fixture
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every line the grammar is asked to parse, via the reader's module-level lookup."""
    calls: list[str] = []
    real = jobfile.parse_fields

    def counting(line: str, gpu_count: int | None = None) -> object:
        calls.append(line)
        return real(line, gpu_count)

    monkeypatch.setattr(jobfile, "parse_fields", counting)
    yield calls


def jobs_file(folder: Path, text: str) -> Path:
    path = folder / "jobs.txt"
    path.write_text(text)
    return path


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def summary(result: ReadResult) -> list[tuple[int, str]]:
    out = [(s.line_no, s.job_id) for s in result.specs]
    return sorted(out + [(e.line_no, e.message) for e in result.errors])


# --------------------------------------------------------------------------- basics


def test_relative_scripts_resolve_against_the_jobs_files_folder(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n1,./exp/../exp/b.py,,--x\n")
    result = JobsFileReader(path).read()
    assert not result.errors
    assert [s.script for s in result.specs] == [
        str(folder / "exp" / "a.py"),
        str(folder / "exp" / "b.py"),
    ]
    # the id is that of the line as written, whatever folder the file is in
    assert result.specs[0].job_id == jobfile.parse_jobs("0,exp/a.py\n", "x").specs[0].job_id


def test_relative_resolution_does_not_depend_on_the_working_directory(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = jobs_file(folder, "0,exp/a.py\n")
    monkeypatch.chdir(folder / "exp")
    reader = JobsFileReader(Path(os.path.relpath(path)))
    assert reader.read().specs[0].script == str(folder / "exp" / "a.py")


def test_tenant_goes_into_specs_and_ids(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n")
    alice = JobsFileReader(path, tenant="alice").read().specs[0]
    bob = JobsFileReader(path, tenant="bob").read().specs[0]
    assert (alice.tenant, bob.tenant) == ("alice", "bob")
    assert alice.job_id != bob.job_id


def test_bad_lines_are_located_and_good_ones_still_come_through(folder: Path) -> None:
    path = jobs_file(folder, "# c\n0,exp/a.py\nx,exp/a.py\n0,exp/b.py,,,9\n")
    result = JobsFileReader(path, gpu_count=8).read()
    assert [s.line_no for s in result.specs] == [2]
    assert [(e.line_no, e.text) for e in result.errors] == [
        (3, "x,exp/a.py"),
        (4, "0,exp/b.py,,,9"),
    ]
    assert result.errors[1].message == "GPU 9 not found; this machine has GPUs 0-7"
    assert result.errors[0].source == str(path)


# --------------------------------------------------------------------------- partial lines


def test_last_line_without_newline_is_held_back(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n1,exp/b.py,,--epo")
    reader = JobsFileReader(path)
    result = reader.read()
    assert result.partial_line
    assert [s.line_no for s in result.specs] == [1]
    append(path, "chs 3\n")
    result = reader.read()
    assert not result.partial_line
    assert [s.args for s in result.specs] == [(), ("--epochs", "3")]


def test_include_partial_reads_the_last_line_too(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n0,exp/a.py")
    reader = JobsFileReader(path)
    result = reader.read(include_partial=True)
    assert not result.partial_line
    assert [s.line_no for s in result.specs] == [1, 2]
    assert len({s.job_id for s in result.specs}) == 2  # a duplicate even on the held-back line
    # once it is finished, the line keeps the id it had, and reading again does not count it twice
    append(path, "\n")
    assert [s.job_id for s in reader.read().specs] == [s.job_id for s in result.specs]
    assert [s.job_id for s in reader.read().specs] == [s.job_id for s in result.specs]


def test_whitespace_after_the_last_newline_is_not_a_partial_line(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n   ")
    assert not JobsFileReader(path).read().partial_line


# --------------------------------------------------------------------------- the cache


def test_one_line_append_parses_only_the_new_line(
    folder: Path, parse_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "".join(f"{i % 5},exp/a.py,,--i {i}\n" for i in range(2000))
    path = jobs_file(folder, lines)
    reader = JobsFileReader(path)
    first = reader.read()
    assert len(parse_calls) == 2000
    made: list[int] = []
    real_make_spec = jobfile.make_spec

    def counting_make_spec(*args: object, **kwargs: object) -> object:
        made.append(1)
        return real_make_spec(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jobfile, "make_spec", counting_make_spec)
    append(path, "0,exp/b.py,,--new\n")
    second = reader.read()
    assert parse_calls[2000:] == ["0,exp/b.py,,--new"]
    assert len(made) == 1  # the old lines were not even walked again
    assert len(second.specs) == 2001
    assert second.specs[:2000] == first.specs


def test_appended_duplicate_gets_the_same_id_as_a_fresh_read(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n1,exp/b.py\n")
    reader = JobsFileReader(path)
    reader.read()
    append(path, "0,exp/a.py\n")
    incremental = reader.read()
    fresh = JobsFileReader(path).read()
    assert incremental == fresh
    assert len({s.job_id for s in incremental.specs}) == 3


def test_an_edit_reparses_only_the_edited_line(folder: Path, parse_calls: list[str]) -> None:
    path = jobs_file(folder, "0,exp/a.py,,--n 1\n0,exp/a.py,,--n 2\n0,exp/a.py,,--n 3\n")
    reader = JobsFileReader(path)
    before = reader.read()
    parse_calls.clear()
    path.write_text("0,exp/a.py,,--n 1\n0,exp/a.py,,--n 22\n0,exp/a.py,,--n 3\n")
    after = reader.read()
    assert parse_calls == ["0,exp/a.py,,--n 22"]
    assert after.specs[0].job_id == before.specs[0].job_id
    assert after.specs[1].job_id != before.specs[1].job_id
    assert after.specs[2].job_id == before.specs[2].job_id


def test_moving_lines_around_keeps_ids_and_parses_only_new_text(
    folder: Path, parse_calls: list[str]
) -> None:
    path = jobs_file(folder, "0,exp/a.py\n1,exp/b.py\n")
    reader = JobsFileReader(path)
    before = {s.text: s.job_id for s in reader.read().specs}
    parse_calls.clear()
    path.write_text("# reordered\n1,exp/b.py\n0,exp/a.py\n")
    after = reader.read()
    assert parse_calls == ["# reordered"]
    assert {s.text: s.job_id for s in after.specs} == before
    assert [s.line_no for s in after.specs] == [2, 3]


def test_truncated_file_is_read_afresh(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n1,exp/b.py\n")
    reader = JobsFileReader(path)
    reader.read()
    path.write_text("1,exp/b.py\n")
    result = reader.read()
    assert [(s.line_no, s.script) for s in result.specs] == [(1, str(folder / "exp" / "b.py"))]


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["append", "append_partial", "edit", "delete", "finish"]),
        st.sampled_from(
            ["0,exp/a.py", "0,exp/a.py", "1,exp/b.py,,--x", "2,exp/gone.py", "x,bad", "# c", ""]
        ),
        st.integers(0, 20),
        st.booleans(),
    ),
    max_size=12,
)


@given(ops=_OPS)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_incremental_reads_always_match_a_fresh_read(
    folder: Path, ops: list[tuple[str, str, int, bool]]
) -> None:
    path = jobs_file(folder, "0,exp/a.py\n")
    gone = folder / "exp" / "gone.py"
    gone.unlink(missing_ok=True)
    reader = JobsFileReader(path)
    for op, line, where, toggle_script in ops:
        text = path.read_text()
        lines = text.split("\n")
        if op == "append":
            text += line + "\n"
        elif op == "append_partial":
            text += line
        elif op == "finish":
            text += "\n"
        elif op == "edit" and len(lines) > 1:
            lines[where % (len(lines) - 1)] = line
            text = "\n".join(lines)
        elif op == "delete" and len(lines) > 1:
            del lines[where % (len(lines) - 1)]
            text = "\n".join(lines)
        path.write_text(text)
        if toggle_script:  # a script that appears or vanishes between reads
            gone.unlink() if gone.exists() else gone.write_text("")
        for partial in (False, True):
            assert reader.read(include_partial=partial) == JobsFileReader(path).read(
                include_partial=partial
            )


# --------------------------------------------------------------------------- scripts


def test_missing_script_is_a_located_error(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n0,exp/nope.py,,--x\n")
    result = JobsFileReader(path).read()
    assert [s.line_no for s in result.specs] == [1]
    (err,) = result.errors
    assert (err.line_no, err.text) == (2, "0,exp/nope.py,,--x")
    assert err.message == f"script not found: {folder / 'exp' / 'nope.py'}"


def test_a_script_created_later_is_found_on_the_next_read(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n0,exp/later.py\n")
    reader = JobsFileReader(path)
    assert len(reader.read().errors) == 1
    (folder / "exp" / "later.py").write_text("")
    result = reader.read()
    assert not result.errors
    assert [s.line_no for s in result.specs] == [1, 2]


def test_a_directory_is_not_a_script(folder: Path) -> None:
    path = jobs_file(folder, "0,exp\n")
    assert JobsFileReader(path).read().errors[0].message.startswith("script is not a file:")


def test_allowed_paths_accept_scripts_inside(folder: Path) -> None:
    path = jobs_file(folder, "0,exp/a.py\n0,exp/sub/../b.py\n")
    result = JobsFileReader(path, allowed_script_paths=[folder / "exp"]).read()
    assert not result.errors
    assert len(result.specs) == 2


def test_allowed_paths_reject_dotdot_escape(folder: Path) -> None:
    (folder / "outside.py").write_text("")
    path = jobs_file(folder, "0,exp/../outside.py\n0,exp/a.py\n")
    result = JobsFileReader(path, allowed_script_paths=[folder / "exp"]).read()
    assert [s.line_no for s in result.specs] == [2]
    (err,) = result.errors
    assert err.line_no == 1
    assert err.message.startswith(f"not under an allowed path: {folder / 'outside.py'}")


def test_allowed_paths_reject_a_symlink_pointing_outside(folder: Path) -> None:
    (folder / "outside.py").write_text("")
    (folder / "exp" / "link.py").symlink_to(folder / "outside.py")
    path = jobs_file(folder, "0,exp/link.py\n")
    result = JobsFileReader(path, allowed_script_paths=[folder / "exp"]).read()
    assert not result.specs
    assert result.errors[0].message.startswith("not under an allowed path:")


def test_allowed_paths_reject_a_sibling_with_a_common_prefix(folder: Path) -> None:
    (folder / "exp2").mkdir()
    (folder / "exp2" / "c.py").write_text("")
    path = jobs_file(folder, "0,exp2/c.py\n")
    result = JobsFileReader(path, allowed_script_paths=[folder / "exp"]).read()
    assert result.errors[0].message.startswith("not under an allowed path:")


def test_allowed_path_given_through_a_symlink_still_allows_its_scripts(folder: Path) -> None:
    (folder / "alias").symlink_to(folder / "exp")
    path = jobs_file(folder, "0,exp/a.py\n")
    result = JobsFileReader(path, allowed_script_paths=[folder / "alias"]).read()
    assert not result.errors


# --------------------------------------------------------------------------- the file itself


def test_missing_jobs_file_says_how_to_create_it(folder: Path) -> None:
    path = folder / "jobs.txt"
    reader = JobsFileReader(path)
    result = reader.read()
    assert result.specs == ()
    (err,) = result.errors
    assert err.line_no == 0
    assert "jobs file not found" in err.message
    assert f">> {path}" in err.message
    path.write_text("0,exp/a.py\n")
    assert len(reader.read().specs) == 1


def test_unreadable_jobs_file_is_an_error_not_an_exception(folder: Path) -> None:
    (folder / "jobs.txt").mkdir()
    result = JobsFileReader(folder / "jobs.txt").read()
    assert result.specs == ()
    assert "cannot read the jobs file" in result.errors[0].message


def test_line_with_bad_bytes_is_reported_and_the_rest_runs(folder: Path) -> None:
    path = folder / "jobs.txt"
    path.write_bytes(b"0,exp/a.py\n1,exp/b.py,,--name caf\xe9\n2,exp/b.py\n")
    result = JobsFileReader(path).read()
    assert [s.line_no for s in result.specs] == [1, 3]
    (err,) = result.errors
    assert err.line_no == 2
    assert "not valid UTF-8" in err.message
    assert err.text == "1,exp/b.py,,--name caf\ufffd"
