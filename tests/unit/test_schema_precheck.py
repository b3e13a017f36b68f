"""schema_precheck.surely_valid: never True where jsonschema finds a problem; True for the
config and state files we actually write (else it saves nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gpu_scheduler import config
from gpu_scheduler.adapters import store
from gpu_scheduler.adapters.store import StateStore
from gpu_scheduler.schema_precheck import surely_valid
from gpu_scheduler.status_sample import many_jobs_state, sample_state
from tests.unit.test_config import huge_ints, json_values, leaf_keys, nested, shaped_like

REPO = Path(__file__).resolve().parents[2]
CONFIG = Draft202012Validator(config.schema())
HEADER = Draft202012Validator(store._header_schema())


def assert_sound(value: Any, schema: dict[str, Any], validator: Draft202012Validator) -> None:
    if surely_valid(value, schema):
        assert list(validator.iter_errors(value)) == [], value


# ----------------------------------------------------------------------------- it is used


def test_the_configs_we_ship_and_write_are_surely_valid() -> None:
    schema = config.schema()
    assert surely_valid({}, schema)
    assert surely_valid(json.loads(config.config_sample()), schema)
    for name in ("config.json", "config.simulated.json"):
        assert surely_valid(json.loads((REPO / "configs" / name).read_text()), schema), name


def test_the_state_files_we_save_are_surely_valid(tmp_path: Path) -> None:
    for saved in (sample_state(), many_jobs_state(50)):
        StateStore(tmp_path / "state.json").save(saved)
        doc = json.loads((tmp_path / "state.json").read_text())
        assert surely_valid(doc, store._header_schema())


def test_a_valid_config_is_loaded_without_importing_jsonschema(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "config.json"
    path.write_text(config.config_sample())
    code = (
        "import sys; from gpu_scheduler.config import load_settings; "
        f"load_settings({str(path)!r}); print('jsonschema' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ----------------------------------------------------------------------------- it is sound


def test_what_it_does_not_know_it_is_never_sure_of() -> None:
    assert not surely_valid(1, {"oneOf": [{"type": "integer"}]})
    assert not surely_valid({"a": 1}, {"$ref": "#/$defs/x", "$defs": {"x": {}}})
    assert not surely_valid(2.0, {"type": "integer"})  # valid, but not plainly
    assert not surely_valid(1, {"enum": [1.0]})
    assert not surely_valid([1], {"const": [1]})
    assert not surely_valid(True, {"type": "integer"})
    assert not surely_valid({"x": 1}, {"additionalProperties": False})
    assert not surely_valid("2", {"type": "string", "format": "date"})
    assert surely_valid(True, {"minimum": 5})  # bounds apply to numbers only, as in the spec
    assert surely_valid({"_comment a": [1]}, {"patternProperties": {"^_comment": {}},
                                              "additionalProperties": False})  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=shaped_like(config.schema()) | json_values)
def test_config_shaped_json_is_never_surely_valid_when_jsonschema_objects(value: Any) -> None:
    assert_sound(json.loads(json.dumps(value)), config.schema(), CONFIG)


@settings(max_examples=400, deadline=None)
@given(
    key=st.sampled_from(leaf_keys(config.schema())),
    value=json_values | huge_ints | st.sampled_from([0, 1e-9, 1e308, 1.0, 2.0, -1, True, "x"]),
)
def test_one_odd_config_value_is_never_surely_valid_when_jsonschema_objects(
    key: tuple[str, ...], value: Any
) -> None:
    assert_sound(json.loads(json.dumps(nested(key, value))), config.schema(), CONFIG)


@pytest.mark.parametrize("name", ["config.json", "config.simulated.json"])
def test_the_config_readers_own_dicts_are_checked_alike(tmp_path: Path, name: str) -> None:
    data, errors = config._read(REPO / "configs" / name, name)
    assert errors == [] and surely_valid(data, config.schema())


HEADER_KEYS = ["version", "saved_at", "saved_at_utc", "next_seq", "paused", "daemon",
               "observed", "jobs", "extra"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    key=st.sampled_from(HEADER_KEYS),
    value=json_values | st.sampled_from([1, 1.0, [1, 2], [1.0], {}, [], None, "1"]),
    drop=st.booleans(),
)
def test_an_odd_state_header_is_never_surely_valid_when_jsonschema_objects(
    key: str, value: Any, drop: bool
) -> None:
    doc: dict[str, Any] = {"version": 1, "saved_at": 1.0, "next_seq": 3, "paused": [1],
                           "daemon": {}, "observed": {}, "jobs": [{}]}  # fmt: skip
    if drop:
        doc.pop(key, None)
    else:
        doc[key] = value
    assert_sound(json.loads(json.dumps(doc)), store._header_schema(), HEADER)


def leaf_schema(path: tuple[str, ...]) -> dict[str, Any]:
    node = config.schema()
    for name in path:
        props = node.get("properties", {})
        node = props[name] if name in props else node["additionalProperties"]
    return node


@pytest.mark.parametrize("key", leaf_keys(config.schema()), ids=".".join)
def test_each_config_key_at_its_default_and_its_bounds(key: tuple[str, ...]) -> None:
    node = leaf_schema(key)
    assert surely_valid(nested(key, node.get("default")), config.schema())
    edges: list[Any] = [None, True, "", "x" * 3, [], {}, *node.get("enum", [])]
    for bound in ("minimum", "maximum", "exclusiveMinimum"):
        if bound in node:
            b = node[bound]
            edges += [b, b - 1, b + 1, b - 0.5, b + 0.5, float(b), b * 1.0 + 1e-9]
    for value in edges:
        assert_sound(nested(key, value), config.schema(), CONFIG)
