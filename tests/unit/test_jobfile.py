"""The jobs.txt grammar as a user meets it: what a line means, what a bad line says, stable ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_scheduler.core.jobfile import (
    LineFields,
    fingerprint,
    format_line,
    make_spec,
    parse_duration,
    parse_fields,
    parse_jobs,
)


def fields(line: str, gpu_count: int | None = None) -> LineFields:
    parsed = parse_fields(line, gpu_count)
    assert isinstance(parsed, LineFields), parsed
    return parsed


def problem(line: str, gpu_count: int | None = None) -> tuple[str, str]:
    parsed = parse_fields(line, gpu_count)
    assert isinstance(parsed, tuple), parsed
    return parsed


def ids(text: str, tenant: str = "default") -> list[str]:
    result = parse_jobs(text, "jobs.txt", tenant=tenant)
    assert not result.errors, result.errors
    return [s.job_id for s in result.specs]


# --------------------------------------------------------------------------- good lines


def test_issue_example_line() -> None:
    line = "1,/exp/train.py,ml_env,--llm qwen2.5-7b-inst --epochs 10,4-7 timeout=12h name=train7b"
    f = fields(line, gpu_count=8)
    assert f.priority == 1
    assert f.script == "/exp/train.py"
    assert f.conda_env == "ml_env"
    assert f.args == ("--llm", "qwen2.5-7b-inst", "--epochs", "10")
    assert f.allowed_gpus == (4, 5, 6, 7)
    assert f.timeout_s == 12 * 3600
    assert f.name == "train7b"
    assert f.llm == "qwen2.5-7b-inst"
    assert f.share is None and f.retries == 0 and f.after == ()


def test_classic_five_field_line() -> None:
    f = fields("2, /x/eval.py, base, --seed 3, 0")
    assert (f.priority, f.script, f.conda_env, f.args, f.allowed_gpus) == (
        2,
        "/x/eval.py",
        "base",
        ("--seed", "3"),
        (0,),
    )


@pytest.mark.parametrize(
    "line",
    ["0,/x/eval.py", "0,/x/eval.py,", "0,/x/eval.py,,", "0,/x/eval.py,,,", "  0 , /x/eval.py  "],
)
def test_trailing_fields_are_optional_and_empty_means_not_given(line: str) -> None:
    f = fields(line)
    assert f == LineFields(priority=0, script="/x/eval.py")


@pytest.mark.parametrize("prio", [0, 7, -3, 1000])
def test_any_integer_priority(prio: int) -> None:
    assert fields(f"{prio},/a.py").priority == prio


def test_quoted_fields_may_hold_commas_and_doubled_quotes() -> None:
    f = fields('0,"/data/a, b/run.py","env","--title ""x, y"" --n 2",1')
    assert f.script == "/data/a, b/run.py"
    assert f.conda_env == "env"
    assert f.args == ("--title", "x, y", "--n", "2")
    assert f.allowed_gpus == (1,)


def test_quoted_gpu_field_of_classic_files() -> None:
    assert fields('0,/a.py,,,"0,1"').allowed_gpus == (0, 1)


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ("3", (3,)),
        ("0-3", (0, 1, 2, 3)),
        ("0-3,5", (0, 1, 2, 3, 5)),
        ("0,2,5", (0, 2, 5)),
        ("5,0-2,1", (0, 1, 2, 5)),  # duplicates merged, sorted
        ("2 3", (2, 3)),
        ("", None),
    ],
)
def test_gpu_lists_and_ranges(gpus: str, expected: tuple[int, ...] | None) -> None:
    assert fields(f"0,/a.py,,,{gpus}", gpu_count=8).allowed_gpus == expected


def test_options_without_gpu_list_and_separated_by_commas_or_spaces() -> None:
    f = fields("0,/a.py,,,gpus=0.25, retries=2 after=prep;train,name=x.1")
    assert f.allowed_gpus is None
    assert f.share == 250
    assert f.retries == 2
    assert f.after == ("prep", "train")
    assert f.name == "x.1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("1d2h3m4s", 93784),
        ("2H", 7200),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert fields(f"0,/a.py,,,timeout={text}").timeout_s == seconds


@pytest.mark.parametrize("text", ["", "h", "2x", "-1", "1m1h", "1h1h", "1e3", "nan", "1 h"])
def test_bad_durations_raise_value_error_saying_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("args", "llm"),
    [
        ("--llm qwen2.5-3b-inst", "qwen2.5-3b-inst"),
        ("--llm=qwen2.5-3b-inst", "qwen2.5-3b-inst"),
        ("--model llama-3.1-8b-inst --x", "llama-3.1-8b-inst"),
        ("--model=mistral-7b-inst", "mistral-7b-inst"),
        ("--a 1 --llm first --model second", "first"),
        ("--llmx foo", None),
        ("--llm", None),
        ("", None),
    ],
)
def test_llm_name_comes_from_the_first_llm_or_model_flag(args: str, llm: str | None) -> None:
    assert fields(f"0,/a.py,,{args}").llm == llm


def test_arguments_never_go_through_a_shell() -> None:
    f = fields("0,/a.py,,--x $(rm -rf /) ; echo `id` | cat > out &")
    assert f.args == ("--x", "$(rm", "-rf", "/)", ";", "echo", "`id`", "|", "cat", ">", "out", "&")


def test_shell_quotes_group_arguments() -> None:
    assert fields("0,/a.py,,--msg 'hello world' --n \"a b\"").args == (
        "--msg",
        "hello world",
        "--n",
        "a b",
    )


@pytest.mark.parametrize("line", ["", "   ", "# a comment", "   # 0,/a.py", "#0,/a.py,,,0"])
def test_blank_and_comment_lines_are_ignored(line: str) -> None:
    assert parse_fields(line) is None


def test_crlf_line_endings_do_not_leak_into_fields() -> None:
    result = parse_jobs("0,/a.py,,--x\r\n1,/b.py,,,0\r\n", "jobs.txt")
    assert [s.args for s in result.specs] == [("--x",), ()]
    assert result.specs[1].allowed_gpus == (0,)


def test_byte_order_mark_at_start_is_ignored() -> None:
    assert parse_jobs("\ufeff0,/a.py\n", "jobs.txt").specs[0].priority == 0


# --------------------------------------------------------------------------- bad lines

BAD_LINES = [
    ("x,/a.py", "priority 'x' is not an integer", "an integer priority such as 0"),
    ("1.5,/a.py", "not an integer", "an integer priority"),
    ("9" * 30 + ",/a.py", "is too large", "an integer priority"),
    (",/a.py", "missing priority", "priority,script"),
    ("0", "missing script", "priority,script[,conda_env"),
    ("0,,env", "missing script", "priority,script"),
    ("0,/a.py,,,9", "GPU 9 not found; this machine has GPUs 0-7", "0-3,5"),
    ("0,/a.py,,,6-9", "GPUs 8, 9 not found; this machine has GPUs 0-7", "GPU indices"),
    ("0,/a.py,,,5-3", "GPU range 5-3 is reversed", "GPU indices"),
    ("0,/a.py,,,-1", "'-1' is neither a GPU index", "GPU indices"),
    ("0,/a.py,,,x", "'x' is neither a GPU index", "GPU indices"),
    ("0,/a.py,,,0-99999999", "out of range", "GPU indices"),
    ("0,/a.py,,,0 mem=4", "unknown option 'mem'; known options: gpus, timeout, name", "key=value"),
    ("0,/a.py,,,gpus=0", "bad value for gpus: '0'", "positive GPU share"),
    ("0,/a.py,,,gpus=-1", "bad value for gpus", "positive GPU share"),
    ("0,/a.py,,,gpus=half", "bad value for gpus", "positive GPU share"),
    ("0,/a.py,,,gpus=nan", "bad value for gpus", "positive GPU share"),
    ("0,/a.py,,,timeout=2x", "bad value for timeout: '2x'", "1h30m"),
    ("0,/a.py,,,timeout=0", "bad value for timeout", "positive"),
    ("0,/a.py,,,name=a/b", "bad value for name", "1-64 letters"),
    ("0,/a.py,,,name=" + "n" * 65, "bad value for name", "1-64 letters"),
    ("0,/a.py,,,retries=-1", "bad value for retries", ">= 0"),
    ("0,/a.py,,,retries=two", "bad value for retries", ">= 0"),
    ("0,/a.py,,,after=a;;b", "bad value for after", "separated by ';'"),
    ("0,/a.py,,,name=a name=b", "option name is given twice", "1-64"),
    ('0,"/a.py', "unclosed double quote in field 2", 'with "" for a literal quote'),
    ('0,"/a.py" x,env', "unexpected text after the closing quote of field 2", '"a, b"'),
    ("0,/a.py,,--msg 'hi", "unbalanced quote in the arguments", "balanced quotes"),
    ('0,/a.py,,--msg "a, b"', "unbalanced quote in the arguments", "double-quoted"),
    ("0,/a.py,my env", "conda env 'my env' is not a valid env name", "conda env name"),
    ("0,/a.py,env;rm", "conda env 'env;rm' is not", "conda env name"),
    ("0,/a.py,../env", "conda env '../env' is not", "conda env name"),
]


@pytest.mark.parametrize(("line", "message", "expected"), BAD_LINES)
def test_bad_line_says_what_is_wrong_and_what_was_expected(
    line: str, message: str, expected: str
) -> None:
    got_message, got_expected = problem(line, gpu_count=8)
    assert message in got_message
    assert expected in got_expected


def test_gpu_count_wording_for_small_machines() -> None:
    assert problem("0,/a.py,,,1", gpu_count=1)[0] == "GPU 1 not found; this machine has GPU 0"
    assert problem("0,/a.py,,,0", gpu_count=0)[0] == "GPU 0 not found; this machine has no GPUs"


def test_without_gpu_count_any_index_is_accepted() -> None:
    assert fields("0,/a.py,,,12").allowed_gpus == (12,)


def test_bad_lines_are_located_and_never_stop_good_ones() -> None:
    text = '# jobs\n0,/a.py\nx,/b.py\n\n1,/c.py,,,0 bogus=1\n  2,/d.py  \n0,"/e.py\n'
    result = parse_jobs(text, "/q/jobs.txt", gpu_count=8)
    assert [(s.line_no, s.script) for s in result.specs] == [(2, "/a.py"), (6, "/d.py")]
    assert result.specs[1].text == "2,/d.py"
    assert result.specs[0].source == "/q/jobs.txt"
    assert [(e.line_no, e.text) for e in result.errors] == [
        (3, "x,/b.py"),
        (5, "1,/c.py,,,0 bogus=1"),
        (7, '0,"/e.py'),
    ]
    assert all(e.source == "/q/jobs.txt" and e.message and e.expected for e in result.errors)
    assert str(result.errors[0]).startswith("/q/jobs.txt:3: priority 'x' is not an integer")


def test_a_quote_in_an_unquoted_field_is_literal() -> None:
    # 0,'/e.py: single quotes mean nothing to the CSV layer; the script is taken as written
    assert fields("0,'/e.py").script == "'/e.py"


# --------------------------------------------------------------------------- ids


def test_ids_are_stable_across_reparse() -> None:
    text = "0,/a.py,,--x 1\n1,/b.py,env,,0-1 timeout=1h\n"
    assert ids(text) == ids(text)
    assert len(ids(text)[0]) == 10


def test_ids_do_not_depend_on_line_position() -> None:
    assert ids("0,/a.py\n")[0] == ids("# new comment\n\n5,/z.py\n0,/a.py\n")[1]


@pytest.mark.parametrize(
    "edited",
    [
        "1,/a.py,env,--x 1,0 timeout=1h",
        "0,/b.py,env,--x 1,0 timeout=1h",
        "0,a.py,env,--x 1,0 timeout=1h",
        "0,/a.py,env2,--x 1,0 timeout=1h",
        "0,/a.py,,--x 1,0 timeout=1h",
        "0,/a.py,env,--x 2,0 timeout=1h",
        "0,/a.py,env,--x 1,1 timeout=1h",
        "0,/a.py,env,--x 1,timeout=1h",
        "0,/a.py,env,--x 1,0 timeout=2h",
        "0,/a.py,env,--x 1,0",
        "0,/a.py,env,--x 1,0 timeout=1h gpus=0.5",
        "0,/a.py,env,--x 1,0 timeout=1h name=n",
        "0,/a.py,env,--x 1,0 timeout=1h retries=1",
        "0,/a.py,env,--x 1,0 timeout=1h after=n",
    ],
)
def test_any_edit_gives_a_new_id(edited: str) -> None:
    assert ids("0,/a.py,env,--x 1,0 timeout=1h\n") != ids(edited + "\n")


@pytest.mark.parametrize(
    "same",
    [
        "0, /a.py , env , --x   1 , 0  timeout=1h",
        '0,"/a.py","env","--x 1",0 timeout=1h',
        "0,/a.py,env,--x '1',0 timeout=60m",
        "00,/a.py,env,--x 1,0-0,timeout=3600",
        "+0,/a.py,env,--x 1,0,0 timeout=1h",
    ],
)
def test_spacing_and_spelling_that_keep_the_meaning_keep_the_id(same: str) -> None:
    assert ids("0,/a.py,env,--x 1,0 timeout=1h\n") == ids(same + "\n")


def test_args_order_matters() -> None:
    assert ids("0,/a.py,,--a 1 --b 2\n") != ids("0,/a.py,,--b 2 --a 1\n")


def test_duplicate_lines_are_separate_jobs_and_earlier_ids_are_kept() -> None:
    one = ids("0,/a.py\n")
    two = ids("0,/a.py\n0,/a.py\n")
    assert len(set(two)) == 2
    assert two[0] == one[0]
    assert ids("0,/a.py\n1,/b.py\n0, /a.py\n") == [two[0], ids("1,/b.py\n")[0], two[1]]


def test_tenant_is_part_of_the_id() -> None:
    assert ids("0,/a.py\n", tenant="alice") != ids("0,/a.py\n", tenant="bob")
    spec = parse_jobs("0,/a.py\n", "f", tenant="alice").specs[0]
    assert spec.tenant == "alice"


def test_make_spec_carries_every_field() -> None:
    f = fields("3,/a.py,env,--llm m,1-2 gpus=1.5 timeout=10 name=n retries=4 after=p")
    spec = make_spec(f, source="s", line_no=9, text=" t ", tenant="ten", occurrence=2)
    assert (spec.source, spec.line_no, spec.text, spec.tenant) == ("s", 9, "t", "ten")
    assert (spec.priority, spec.script, spec.conda_env, spec.args) == (
        3,
        "/a.py",
        "env",
        ("--llm", "m"),
    )
    assert (spec.allowed_gpus, spec.share, spec.timeout_s) == ((1, 2), 1500, 10.0)
    assert (spec.name, spec.retries, spec.after, spec.llm) == ("n", 4, ("p",), "m")
    other = make_spec(f, source="s2", line_no=1, text="", tenant="ten", occurrence=2)
    assert other.job_id == spec.job_id  # position and file name are not part of the id
    assert (
        make_spec(f, source="s", line_no=9, text="", tenant="ten", occurrence=1).job_id
        != spec.job_id
    )
    assert fingerprint(f, "ten") == fingerprint(
        fields("3,/a.py,env,--llm m,2,1 gpus=1.5 timeout=10s name=n retries=4 after=p"), "ten"
    )


# --------------------------------------------------------------------------- format_line


def test_format_line_quotes_what_needs_quoting() -> None:
    line = format_line(1, "/data/a, b.py", "env", ["--msg", "x, y", 'say "hi"'], [0, 1, 2, 5])
    assert line == '1,"/data/a, b.py",env,"--msg \'x, y\' \'say ""hi""\'",0-2,5'
    f = fields(line)
    assert f.script == "/data/a, b.py"
    assert f.args == ("--msg", "x, y", 'say "hi"')
    assert f.allowed_gpus == (0, 1, 2, 5)


def test_format_line_minimal_and_with_options() -> None:
    assert format_line(0, "/x/eval.py") == "0,/x/eval.py"
    line = format_line(
        2,
        "/t.py",
        options={"gpus": 0.25, "timeout": "1h30m", "name": "n", "retries": 1, "after": ["a", "b"]},
    )
    assert line == "2,/t.py,,,gpus=0.25 timeout=1h30m name=n retries=1 after=a;b"
    f = fields(line)
    assert (f.share, f.timeout_s, f.name, f.retries, f.after) == (250, 5400, "n", 1, ("a", "b"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"args": ["a\nb"]},
        {"options": {"mem": 4}},
        {"options": {"gpus": 0}},
        {"conda_env": "my env"},
    ],
)
def test_format_line_refuses_what_cannot_be_read_back(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        format_line(0, "/a.py", **kwargs)  # type: ignore[arg-type]


_ARG = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(" ,;\"'$()`\\|&<>*?#=\t{}[]~!-")),
        st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"),
    ),
    max_size=12,
)


@given(
    argv=st.lists(_ARG, max_size=6),
    script=st.text(
        alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"), min_size=1
    ).filter(lambda s: s.strip()),
    priority=st.integers(-1000, 1000),
    gpus=st.none() | st.lists(st.integers(0, 15), min_size=1, max_size=5),
)
@settings(max_examples=300)
def test_format_line_round_trips_any_argv(
    argv: list[str], script: str, priority: int, gpus: list[int] | None
) -> None:
    line = format_line(priority, script, "env", argv, gpus)
    f = fields(line)
    assert f.args == tuple(argv)
    assert f.script == script
    assert f.priority == priority
    assert f.allowed_gpus == (tuple(sorted(set(gpus))) if gpus else None)


# --------------------------------------------------------------------------- fuzzing

_LINE_CHARS = st.one_of(
    st.sampled_from(list('0123456789,,,"" \'=-;#.:/\\$gpustimeoutnameretriesafter\t\r\x00\ufeff')),
    st.characters(exclude_characters="\n"),
)
_LINES = st.one_of(
    st.text(alphabet=_LINE_CHARS, max_size=60),
    st.builds(
        lambda p, s, e, a, g: f"{p},{s},{e},{a},{g}",
        st.sampled_from(["0", "-2", "x", "", " 3 ", '"1"']),
        st.sampled_from(["/a.py", "", '"/a, b.py"', '"/x', "rel.py"]),
        st.sampled_from(["", "env", "bad env", '"e"']),
        st.sampled_from(["", "--llm m", "'x", '--a=1 "b c"', '"--q ""1, 2"""']),
        st.sampled_from(
            ["", "0-3", "3-1", "9", "gpus=0.5 timeout=2h", "foo=1", "name=a,after=b;c"]
        ),
    ),
)


@given(lines=st.lists(_LINES, max_size=12), gpu_count=st.none() | st.integers(0, 8))
@settings(max_examples=400)
def test_random_text_never_crashes_and_each_line_gives_one_result(
    lines: list[str], gpu_count: int | None
) -> None:
    text = "\n".join(lines)
    result = parse_jobs(text, "jobs.txt", gpu_count=gpu_count)
    got = [s.line_no for s in result.specs] + [e.line_no for e in result.errors]
    wanted = []
    for no, line in enumerate(lines, start=1):
        stripped = (line.removeprefix("\ufeff") if no == 1 else line).strip()
        if stripped and not stripped.startswith("#"):
            wanted.append(no)
    assert sorted(got) == wanted
    for err in result.errors:
        assert err.message and err.expected
        assert (
            err.text
            == (
                lines[err.line_no - 1].removeprefix("\ufeff")
                if err.line_no == 1
                else lines[err.line_no - 1]
            ).strip()
        )
    assert len({s.job_id for s in result.specs}) == len(result.specs)
