"""The config file as a user meets it: defaults, paths, every kind of mistake, the sample."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gpu_scheduler import config
from gpu_scheduler.config import (
    AgingSettings,
    ExecutionSettings,
    GpuSettings,
    JobsSettings,
    LoggingSettings,
    PreemptionSettings,
    RaySettings,
    SchedulerSettings,
    SecuritySettings,
    Settings,
    SimulatedGpuSettings,
    TenantSettings,
    check_config,
    config_sample,
    default_settings,
    load_settings,
    settings_from_dict,
)
from gpu_scheduler.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, content: Any, name: str = "config.json") -> Path:
    """A config file holding `content` (text as is, anything else as JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


def errors_of(tmp_path: Path, content: Any) -> list[str]:
    settings, errors = check_config(write(tmp_path, content))
    assert settings is None
    return [str(e) for e in errors]


# ----------------------------------------------------------------------------- defaults


def test_missing_sections_and_keys_take_the_documented_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {"gpu": {"provider": "simulated"}, "scheduler": {}}))
    assert s.gpu.provider == "simulated"
    assert s.gpu.memory_threshold == 0.9 and s.gpu.load_threshold == 0.9
    assert s.gpu.precision_unit == 5
    assert s.gpu.simulated == SimulatedGpuSettings(4, 81920, "Simulated GPU", None)
    assert s.scheduler.max_workers == 8 and s.scheduler.job_timeout_s is None
    assert s.scheduler.fair_share_half_life_s == 3600
    assert s.scheduler.aging.interval_s == 600
    assert s.scheduler.preemption == PreemptionSettings(False, "requeue", 1, 30.0, 3)
    assert s.jobs.max_assignment_attempts == 3 and s.jobs.queue_size_limit is None
    assert s.logging.level == "INFO" and s.logging.console is True
    assert s.security.allowed_script_paths == ()
    assert s.execution.mode == "screen" and s.execution.session_prefix == "gpujob"
    assert s.execution.warm_screen_sessions == 1
    assert s.execution.ray.address == "auto" and s.execution.python is None
    assert dict(s.tenants) == {}
    assert s.files.state_file == tmp_path.parent / "run" / "state.json"
    assert s.files.metrics_file == s.files.state_file.parent / "metrics.prom"


def test_dataclass_defaults_agree_with_the_schema_defaults(tmp_path: Path) -> None:
    s = default_settings(tmp_path / "config.json")
    assert s.scheduler == SchedulerSettings()
    assert s.gpu == GpuSettings()
    assert s.jobs == JobsSettings()
    assert s.logging == LoggingSettings()
    assert s.security == SecuritySettings()
    assert s.execution == ExecutionSettings()
    assert settings_from_dict({"tenants": {"a": {}}}, tmp_path / "c.json").tenants["a"] == (
        TenantSettings()
    )
    assert AgingSettings().interval_s == 600 and RaySettings().address == "auto"


def _properties(node: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, sub in node.get("properties", {}).items():
        found.append((where + name, sub))
        found += _properties(sub, f"{where}{name}.")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        found += _properties(extra, f"{where}<name>.")
    return found


def test_schema_documents_every_key_and_its_defaults_are_valid() -> None:
    schema = config.schema()
    Draft202012Validator.check_schema(schema)
    props = _properties(schema)
    assert len(props) > 50
    for name, sub in props:
        assert sub.get("description"), f"{name} has no description"
        assert "default" in sub, f"{name} has no default"
        assert not list(Draft202012Validator(sub).iter_errors(sub["default"])), name
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is not True, name
            assert "^_comment" in sub["patternProperties"], name


def test_allocation_precision_becomes_a_milli_gpu_unit(tmp_path: Path) -> None:
    s = settings_from_dict({"gpu": {"allocation_precision": 0.01}}, tmp_path / "c.json")
    assert s.gpu.precision_unit == 10


def test_whole_numbers_for_seconds_become_floats_and_tenants_are_read_only(tmp_path: Path) -> None:
    s = settings_from_dict(
        {"scheduler": {"job_timeout_s": 60}, "tenants": {"alice": {"max_gpus": 2, "weight": 3}}},
        tmp_path / "c.json",
    )
    assert s.scheduler.job_timeout_s == 60.0 and isinstance(s.scheduler.job_timeout_s, float)
    assert s.tenants["alice"] == TenantSettings(max_gpus=2.0, weight=3.0)
    with pytest.raises(TypeError):
        s.tenants["bob"] = TenantSettings()  # type: ignore[index]


# ----------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "etc" / "gs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = {
        "files": {
            "jobs_file": "../jobs/*.txt",
            "state_file": "state/s.json",
            "log_dir": "/var/tmp/gs-logs",
            "metrics_file": "m.prom",
        },
        "gpu": {"simulated": {"state_dir": "sim"}},
        "security": {"allowed_script_paths": ["scripts", "/opt/ok"]},
        "execution": {"screen_dir": "screens", "python": "venv/bin/python"},
    }
    s = load_settings(os.path.relpath(write(cfg, data), elsewhere))
    assert s.config_path == cfg / "config.json"
    assert s.files.jobs_file == str(tmp_path / "etc" / "jobs" / "*.txt")  # a glob stays a pattern
    assert s.files.state_file == cfg / "state" / "s.json"
    assert s.files.llm_config_file == cfg / "llm_config.json"
    assert s.files.log_dir == Path("/var/tmp/gs-logs")
    assert s.files.log_file == tmp_path / "etc" / "run" / "scheduler.log"
    assert s.files.metrics_file == cfg / "m.prom"
    assert s.gpu.simulated.state_dir == cfg / "sim"
    assert s.security.allowed_script_paths == (cfg / "scripts", Path("/opt/ok"))
    assert s.execution.screen_dir == cfg / "screens"
    assert s.execution.python == str(cfg / "venv" / "bin" / "python")


def test_python_given_as_a_command_name_is_left_for_path_lookup(tmp_path: Path) -> None:
    s = settings_from_dict({"execution": {"python": "python3.11"}}, tmp_path / "c.json")
    assert s.execution.python == "python3.11"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"gpu": {"memory_threshold": 1.7}},
            "gpu.memory_threshold: 1.7 is greater than the maximum of 1",
        ),
        (
            {"scheduler": {"job_timout_s": 5}},
            "scheduler.job_timout_s: unknown key (did you mean job_timeout_s?)",
        ),
        ({"execution": {"mode": "ssh"}}, "execution.mode: 'ssh' is not one of 'screen', 'direct'"),
        ({"scheduler": {"max_workers": "8"}}, "scheduler.max_workers: '8' is not an integer"),
        (
            {"jobs": {"queue_size_limit": 0}},
            "jobs.queue_size_limit: 0 is less than the minimum of 1",
        ),
        ({"logging": {"console": "yes"}}, "logging.console: 'yes' is not true or false"),
        (
            {"tenants": {"alice": {"weight": 0}}},
            "tenants.alice.weight: 0 is less than or equal to the minimum of 0",
        ),
        (
            {"security": {"allowed_script_paths": ["ok", 3]}},
            "security.allowed_script_paths[1]: 3 is not a string",
        ),
        (
            {"execution": {"session_prefix": "my jobs"}},
            "execution.session_prefix: 'my jobs' does not match",
        ),
        (
            {"execution": {"warm_screen_sessions": -1}},
            "execution.warm_screen_sessions: -1 is less than the minimum of 0",
        ),
        (
            {"fair_share_half_life_s": 60},
            "fair_share_half_life_s: unknown key (did you mean scheduler.fair_share_half_life_s?)",
        ),
        (
            {"gpu": {"allocation_precision": 0.3}},
            "gpu.allocation_precision: 0.3 does not divide one GPU evenly",
        ),
        ([1, 2], "the top level must be a JSON object"),
    ],
)
def test_each_mistake_names_its_key_and_what_was_expected(
    tmp_path: Path, data: Any, expected: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_missing_config_file_is_reported_as_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(missing)
    assert check_config(missing)[1][0].path == str(missing)


def test_not_json_is_reported_with_line_and_column(tmp_path: Path) -> None:
    text = '{\n  "gpu": {\n    "provider": "nvml",\n  }\n}\n'
    (message,) = errors_of(tmp_path, text)
    assert "not valid JSON at line 4, column 3" in message


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_threshold_of_nan_or_infinity_is_rejected_not_silently_accepted(
    tmp_path: Path, number: str
) -> None:
    (message,) = errors_of(tmp_path, f'{{"gpu": {{"memory_threshold": {number}}}}}')
    assert "not valid JSON" in message


def test_a_key_given_twice_is_an_error_but_repeated_comments_are_fine(tmp_path: Path) -> None:
    text = '{"_comment": "a", "_comment": "b", "gpu": {"provider": "nvml", "provider": "auto"}}'
    assert errors_of(tmp_path, text) == [
        f"{tmp_path / 'config.json'}: gpu.provider: duplicate key (only the last would count)"
    ]


def test_empty_file_says_so(tmp_path: Path) -> None:
    assert "empty" in errors_of(tmp_path, "  \n")[0]


def test_unknown_nested_key_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    data = {"gpu": {"simulated": {"cont": 2}}, "tenants": {"alice": {"weigth": 2}}}
    messages = errors_of(tmp_path, data)
    assert any("gpu.simulated.cont: unknown key (did you mean count?)" in m for m in messages)
    assert any("tenants.alice.weigth: unknown key (did you mean weight?)" in m for m in messages)


def test_check_config_reports_every_error_together(tmp_path: Path) -> None:
    data = {
        "gpu": {"memory_threshold": 1.7, "provider": "cuda"},
        "scheduler": {"max_workers": 0, "aging": {"interval": 5}},
        "logging": {"level": "LOUD"},
    }
    path = write(tmp_path, data)
    settings, errors = check_config(path)
    assert settings is None
    assert sorted(e.key for e in errors) == [
        "gpu.memory_threshold",
        "gpu.provider",
        "logging.level",
        "scheduler.aging.interval",
        "scheduler.max_workers",
    ]
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 5 problems:"
    assert len(lines) == 6 and all(any(e.key in line for e in errors) for line in lines[1:])


def test_settings_from_dict_rejects_what_a_file_would(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jobs.max_assignment_attempts"):
        settings_from_dict({"jobs": {"max_assignment_attempts": 0}}, tmp_path / "c.json")


def test_comment_keys_are_accepted_in_every_object(tmp_path: Path) -> None:
    data = {
        "_comment": "top",
        "scheduler": {"_comment_why": "x", "preemption": {"_comment": ["any", "value"]}},
        "tenants": {"_comment": "map", "alice": {"_comment": "limits", "max_gpus": 1.5}},
    }
    s = load_settings(write(tmp_path, data))
    assert list(s.tenants) == ["alice"] and s.tenants["alice"].max_gpus == 1.5


# ----------------------------------------------------------------------------- sample, shipped


def test_config_sample_is_valid_commented_and_round_trips(tmp_path: Path) -> None:
    sample = json.loads(config_sample())
    Draft202012Validator(config.schema()).validate(sample)

    def objects(node: Any) -> list[dict[str, Any]]:
        if not isinstance(node, dict):
            return []
        kids = [v for k, v in node.items() if not k.startswith("_comment")]
        return [node] + [o for kid in kids for o in objects(kid)]

    assert len(objects(sample)) == 13  # root, 11 sections and subsections, tenants
    for obj in objects(sample):
        assert any(k.startswith("_comment") for k in obj), obj
    assert (
        "used by processes not started by the scheduler"
        in sample["gpu"]["_comment_memory_threshold"]
    )
    path = write(tmp_path, config_sample())
    assert load_settings(path) == default_settings(path)


def test_shipped_default_config_loads_and_holds_the_defaults() -> None:
    path = REPO / "configs" / "config.json"
    s = load_settings(path)
    assert s == default_settings(path)
    assert s.gpu.provider == "auto"
    assert s.files.jobs_file == str(REPO / "jobs" / "jobs.txt")
    assert s.files.log_dir == REPO / "run" / "logs"


def test_shipped_simulated_config_loads_with_four_80gb_gpus() -> None:
    path = REPO / "configs" / "config.simulated.json"
    s = load_settings(path)
    assert s.gpu.provider == "simulated"
    assert (s.gpu.simulated.count, s.gpu.simulated.memory_mb) == (4, 81920)
    assert s.files == default_settings(REPO / "configs" / "config.json").files


# ----------------------------------------------------------------------------- never crashes

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes them, the loader must refuse
    | st.text(max_size=20)
)


def json_like(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
        ),
        max_leaves=25,
    )


json_values = json_like(json_scalars)
# integers beyond any float: rare in json_values, so that most documents get past parsing
huge_ints = st.integers(min_value=10**300, max_value=10**320) | st.integers(max_value=-(10**300))


def shaped_like(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Objects with the schema's keys (plus typos and comments) holding right or wrong values."""
    props = node.get("properties", {})
    optional = {name: shaped_like(sub) | json_values for name, sub in props.items()}
    optional.update({"_comment": json_values, "typo_key": json_values})
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):  # tenants
        return st.dictionaries(st.text(max_size=8), shaped_like(extra) | json_values, max_size=3)
    if not props:
        edges = st.sampled_from([0, -1, 0.5, 1, 1.7, 10**6, 10**400, "", "auto", None, True, []])
        return edges | st.just(node.get("default"))
    return st.fixed_dictionaries({}, optional=optional)


def assert_only_config_errors(path: Path) -> None:
    settings, errors = check_config(path)
    assert (settings is None) == bool(errors)
    assert all(isinstance(e, ConfigError) and str(e).startswith(str(path)) for e in errors)
    if settings is not None:
        assert isinstance(settings, Settings) and load_settings(path) == settings


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | json_like(json_scalars | huge_ints))
def test_random_json_gives_config_errors_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, value: Any
) -> None:
    path = tmp_path_factory.getbasetemp() / "random.json"
    path.write_text(json.dumps(value), "utf-8")
    assert_only_config_errors(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=shaped_like(config.schema()))
def test_config_shaped_json_with_wrong_types_gives_config_errors_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, value: Any
) -> None:
    path = tmp_path_factory.getbasetemp() / "shaped.json"
    path.write_text(json.dumps(value), "utf-8")
    assert_only_config_errors(path)


def leaf_keys(node: dict[str, Any], where: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every settable key's path, with a tenant named alice standing for the tenants map."""
    found = []
    for name, sub in node.get("properties", {}).items():
        found += leaf_keys(sub, (*where, name)) if "properties" in sub else [(*where, name)]
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        found += leaf_keys(extra, (*where, "alice"))
    return found


def nested(path: tuple[str, ...], value: Any) -> Any:
    for name in reversed(path):
        value = {name: value}
    return value


@settings(max_examples=400, deadline=None)
@given(
    key=st.sampled_from(leaf_keys(config.schema())),
    value=json_values | huge_ints | st.floats(allow_nan=False) | st.sampled_from([0, 1e-9, 1e308]),
)
def test_one_odd_value_is_either_loaded_or_reported_at_its_own_key(
    tmp_path_factory: pytest.TempPathFactory, key: tuple[str, ...], value: Any
) -> None:
    path = tmp_path_factory.getbasetemp() / "one.json"
    path.write_text(json.dumps(nested(key, value)), "utf-8")
    assert_only_config_errors(path)
    dotted = ".".join(key)
    for error in check_config(path)[1]:
        assert error.key.startswith(dotted) or "not valid JSON" in error.message, error


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(alphabet='{}[]":,0123456789.eE-+ntrufalsNI\n '))
def test_random_bytes_give_config_errors_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes | str
) -> None:
    path = tmp_path_factory.getbasetemp() / "bytes.json"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    assert_only_config_errors(path)


def test_absurdly_deep_nesting_is_an_error_not_a_recursion_crash(tmp_path: Path) -> None:
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    assert "nested more than" in errors_of(tmp_path, {"scheduler": deep})[0]
    assert "nested too deeply" in errors_of(tmp_path, "[" * 100_000 + "]" * 100_000)[0]
