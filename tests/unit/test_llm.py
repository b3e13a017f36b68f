"""How much GPU a job gets without gpus=: the llm_config table, its lookup and its loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_scheduler.core.jobfile import parse_jobs
from gpu_scheduler.core.llm import LlmTable, resolve_share, share_source
from gpu_scheduler.core.model import JobSpec
from gpu_scheduler.errors import JobFileError
from gpu_scheduler.llmconfig import check_llm_config, load_llm_config

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "llm_config.json"
TABLE = LlmTable(
    default_requirement=1.0,
    models={"qwen2.5-3b-inst": 0.5, "Llama-3.1-70B-Inst": 4.0, "third": 0.333},
)


def spec(line: str) -> JobSpec:
    result = parse_jobs(line + "\n", "jobs.txt")
    assert not result.errors, result.errors
    return result.specs[0]


# --------------------------------------------------------------------------- the table


def test_lookup_exact_then_case_insensitive() -> None:
    assert TABLE.lookup("qwen2.5-3b-inst") == 0.5
    assert TABLE.lookup("QWEN2.5-3B-INST") == 0.5
    assert TABLE.lookup("llama-3.1-70b-inst") == 4.0
    assert TABLE.lookup("qwen2.5-7b-inst") is None


def test_exact_match_wins_over_a_case_insensitive_one() -> None:
    table = LlmTable(models={"Model": 2.0, "model": 0.5})
    assert table.lookup("Model") == 2.0
    assert table.lookup("model") == 0.5


def test_table_is_immutable_comparable_and_accepts_pairs() -> None:
    a = LlmTable(0.5, {"b": 1, "a": 2})
    b = LlmTable(0.5, [("a", 2.0), ("b", 1.0)])
    assert a == b and hash(a) == hash(b)
    assert a.models == (("a", 2.0), ("b", 1.0))
    with pytest.raises(AttributeError):
        a.default_requirement = 2.0  # type: ignore[misc]


# --------------------------------------------------------------------------- resolving a share


@pytest.mark.parametrize(
    "args",
    [
        "--llm qwen2.5-3b-inst",
        "--llm=qwen2.5-3b-inst",
        "--model qwen2.5-3b-inst",
        "--model=Qwen2.5-3B-Inst",
        "--epochs 3 --llm qwen2.5-3b-inst --model other",
    ],
)
def test_share_from_the_named_model(args: str) -> None:
    s = spec(f"0,/a.py,,{args}")
    assert resolve_share(s, TABLE, unit=10) == 500
    assert share_source(s, TABLE) == "llm_config: qwen2.5-3b-inst"


def test_gpus_option_overrides_the_table() -> None:
    s = spec("0,/a.py,,--llm qwen2.5-3b-inst,gpus=2")
    assert resolve_share(s, TABLE, unit=10) == 2000
    assert share_source(s, TABLE) == "gpus="


@pytest.mark.parametrize("args", ["", "--llm unknown-model", "--llm"])
def test_default_requirement_when_no_known_model(args: str) -> None:
    s = spec(f"0,/a.py,,{args}")
    assert resolve_share(s, LlmTable(default_requirement=0.75), unit=10) == 750
    assert resolve_share(s, TABLE, unit=10) == 1000
    assert share_source(s, TABLE) == "default_requirement"


@pytest.mark.parametrize(
    ("line", "unit", "share"),
    [
        ("0,/a.py,,--llm third", 10, 330),  # 0.333 → 0.33 at precision 0.01
        ("0,/a.py,,--llm third", 1, 333),
        ("0,/a.py,,--llm third", 250, 250),
        ("0,/a.py,,,gpus=0.125", 10, 120),  # an exact tie rounds down: eight still fit
        ("0,/a.py,,,gpus=0.001", 50, 50),  # a positive request never rounds to zero
        ("0,/a.py,,,gpus=1.26", 100, 1300),
    ],
)
def test_precision_rounding_goes_through_units(line: str, unit: int, share: int) -> None:
    assert resolve_share(spec(line), TABLE, unit=unit) == share


# --------------------------------------------------------------------------- llm_config.json


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llm_config.json"
    path.write_text(text)
    return path


def test_shipped_table_loads_with_the_documented_sizes() -> None:
    table = load_llm_config(SHIPPED)
    assert table.default_requirement == 1.0
    expected = {
        "qwen2.5-3b-inst": 0.5,
        "qwen2.5-7b-inst": 1.0,
        "llama-3.1-8b-inst": 1.0,
        "qwen2.5-32b-inst": 2.0,
        "qwen2.5-72b-inst": 4.0,
        "llama-3.1-70b-inst": 4.0,
        "small-model": 0.5,
        "tiny-model": 0.25,
    }
    for name, gpus in expected.items():
        assert table.lookup(name) == gpus, name
    assert table.lookup("qwen2.5-14b-inst") in (1.0, 1.5)
    assert not any(key.startswith("_comment") for key, _ in table.models)


def test_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, '{"default_requirement": 0.5, "models": {"m": 2, "_comment": "x"}}')
    assert load_llm_config(path) == LlmTable(0.5, {"m": 2.0})
    assert load_llm_config(write(tmp_path, "{}")) == LlmTable()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JobFileError) as info:
        load_llm_config(tmp_path / "nope.json")
    assert info.value.line == 0
    assert "llm_config file not found" in str(info.value)
    assert "default_requirement" in info.value.hint


def test_bad_json_gives_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "models": {\n    "a": 1,\n    "b" 2\n  }\n}\n')
    with pytest.raises(JobFileError) as info:
        load_llm_config(path)
    assert info.value.line == 4
    assert info.value.text == '"b" 2'
    assert "not valid JSON" in info.value.message


def test_negative_value_names_the_key_and_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, '{\n  "default_requirement": 1,\n  "models": {\n    "qwen": -1\n  }\n}\n'
    )
    with pytest.raises(JobFileError) as info:
        load_llm_config(path)
    assert info.value.message == "models.qwen: -1 is less than or equal to the minimum of 0"
    assert info.value.line == 4
    assert str(info.value).startswith(f"{path}:4: models.qwen")


def test_unknown_top_level_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "models": {},\n  "defaults": 1\n}\n')
    table, errors = check_llm_config(path)
    assert table is None
    assert len(errors) == 1
    assert errors[0].line == 3
    assert "unknown key 'defaults'" in errors[0].message
    assert "default_requirement" in errors[0].message and "models" in errors[0].message


def test_every_problem_is_reported_for_validate(tmp_path: Path) -> None:
    data = {"default_requirement": 0, "models": {"a": "big", "b": True, "c": 0.5}, "extra": 1}
    path = write(tmp_path, json.dumps(data, indent=2))
    table, errors = check_llm_config(path)
    assert table is None
    messages = sorted(e.message for e in errors)
    assert len(messages) == 4, messages
    assert any(m.startswith("default_requirement:") for m in messages)
    assert any(m.startswith("models.a:") for m in messages)
    assert any(m.startswith("models.b:") for m in messages)
    assert any("extra" in m for m in messages)
    assert all(e.line > 0 for e in errors)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"models": {"a": 1,\n "a": 2}}', "key 'a' is given twice"),
        ('{"models": {"a": NaN}}', "NaN is not a number"),
        ('{"models": {"a": 1e999}}', "models.a: inf is not finite"),
        ('{"models": {"A": 1, "a": 2}}', "differ only by case"),
        ("[1, 2]", "is not of type 'object'"),
        ('{"models": {"": 1}}', "should be non-empty"),
    ],
)
def test_other_mistakes_are_caught(tmp_path: Path, text: str, message: str) -> None:
    table, errors = check_llm_config(write(tmp_path, text))
    assert table is None
    assert message in errors[0].message


def test_non_utf8_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "llm_config.json"
    path.write_bytes(b'{"models": {"\xff": 1}}')
    with pytest.raises(JobFileError, match="cannot read"):
        load_llm_config(path)
