"""The JSON config file, checked against ``schemas/config.schema.json``, as frozen Settings.

The schema is the single source of the config's keys, ranges, defaults and descriptions: the
loader fills defaults from it, ``config_sample()`` renders it, and its errors are rewritten to
name the dotted key path. Unknown keys are errors (a typo must not silently fall back to a
default); keys starting with ``_comment`` are free text so a JSON file can carry comments.
Relative paths are resolved against the config file's folder, never the working directory, so
the daemon behaves the same wherever it is started from. The Settings dataclasses, and the
step from checked JSON to them, live in ``config_settings``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config_settings import (
    AgingSettings,
    ExecutionSettings,
    FilesSettings,
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
    build_settings,
)
from .core import units
from .errors import ConfigError
from .schema_precheck import surely_valid

if TYPE_CHECKING:  # jsonschema is imported only for a config that may be wrong (80 ms)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

__all__ = [
    "AgingSettings", "ConfigError", "ExecutionSettings", "FilesSettings", "GpuSettings",
    "JobsSettings", "LoggingSettings", "PreemptionSettings", "RaySettings", "SchedulerSettings",
    "SecuritySettings", "Settings", "SimulatedGpuSettings", "TenantSettings", "check_config",
    "config_sample", "default_settings", "load_settings", "schema", "settings_from_dict",
]  # fmt: skip


# ----------------------------------------------------------------------------- public API


def load_settings(path: str | Path) -> Settings:
    """Read, check and resolve a config file; one ConfigError lists every problem, one a line."""
    settings, errors = check_config(path)
    if settings is None:
        raise _combined(errors, str(path))
    return settings


def check_config(path: str | Path) -> tuple[Settings | None, list[ConfigError]]:
    """Every problem in a config file, for `validate`; never raises for a bad file."""
    where = str(path)
    config_path = _absolute(Path(path))
    data, errors = _read(config_path, where)
    if errors:
        return None, errors
    errors = _problems(data, where)
    if errors:
        return None, errors
    return _build(data, config_path), []


def settings_from_dict(data: Mapping[str, Any], config_path: Path) -> Settings:
    """Settings from already-parsed JSON; relative paths resolve against config_path's folder."""
    config_path = _absolute(Path(config_path))
    data = dict(data) if isinstance(data, Mapping) else data  # jsonschema wants a real dict
    errors = _problems(data, str(config_path))
    if errors:
        raise _combined(errors, str(config_path))
    return _build(data, config_path)


def default_settings(config_path: Path) -> Settings:
    """All defaults, as if config_path held ``{}``."""
    return settings_from_dict({}, config_path)


def config_sample() -> str:
    """A complete config with every default, each key preceded by its schema description."""
    return json.dumps(_sample(_schema()), indent=2) + "\n"


def schema() -> dict[str, Any]:
    """The config schema; a copy, so a caller's edits cannot change validation for everyone."""
    return copy.deepcopy(_schema())


@functools.cache
def _schema() -> dict[str, Any]:
    text = (resources.files("gpu_scheduler") / "schemas" / "config.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_schema())


def _combined(errors: list[ConfigError], where: str) -> ConfigError:
    """One error to raise: the only one, or all of them listed one a line."""
    if len(errors) == 1:
        return errors[0]
    lines = "\n".join(f"  {e.key}: {e.message}" if e.key else f"  {e.message}" for e in errors)
    return ConfigError(where, "", f"{len(errors)} problems:\n{lines}")


# ----------------------------------------------------------------------------- reading JSON

_MAX_DEPTH = 32  # the config itself is 4 deep; deeper input only serves to exhaust recursion
_COMMENT = "_comment"


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object that remembers keys given twice: json keeps the last one without a word."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) < len(pairs):
        names = [k for k, _ in pairs if not k.startswith(_COMMENT)]
        obj.duplicates = tuple(sorted({k for k in names if names.count(k) > 1}))
    return obj


# NaN and Infinity are not JSON, and a number no float can hold would pass range checks as inf.
def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number; write a number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:30]} is too large")
    return value


def _finite_int(text: str) -> int:
    if len(text.lstrip("-")) > 300:  # beyond what a float (and so any comparison) can hold
        raise ValueError(f"the number {text[:30]}... is too large")
    return int(text)


def _read(path: Path, where: str) -> tuple[Any, list[ConfigError]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [ConfigError(where, "", "config file not found")]
    except IsADirectoryError:
        return None, [ConfigError(where, "", "is a folder, not a config file")]
    except OSError as exc:
        return None, [ConfigError(where, "", f"cannot read the config file: {exc.strerror}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [ConfigError(where, "", f"not UTF-8 text (bad byte at offset {exc.start})")]
    if not text.strip():
        return None, [ConfigError(where, "", "the file is empty; write {} for all defaults")]
    try:
        data = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_finite_int,
        )
    except json.JSONDecodeError as exc:
        where_in = f"line {exc.lineno}, column {exc.colno}"
        return None, [ConfigError(where, "", f"not valid JSON at {where_in}: {exc.msg}")]
    except RecursionError:
        return None, [ConfigError(where, "", "not valid JSON: nested too deeply")]
    except ValueError as exc:  # from the number hooks above
        return None, [ConfigError(where, "", f"not valid JSON: {exc}")]
    return data, []


# ----------------------------------------------------------------------------- checking


def _problems(data: Any, where: str) -> list[ConfigError]:
    """Structural problems first (depth, duplicate keys), then the schema's, then cross-checks."""
    errors = list(_structure_errors(data, where))
    if any(e.message.startswith("nested more than") for e in errors):
        return errors  # validating it would only recurse as deep
    if not surely_valid(data, _schema()):  # only then can jsonschema find anything to say
        for error in _validator().iter_errors(data):
            errors.extend(_readable(error, where))
    errors.extend(_precision_errors(data, where))
    unique = {(e.key, e.message): e for e in errors}
    return sorted(unique.values(), key=lambda e: (e.key, e.message))


def _structure_errors(data: Any, where: str) -> Iterator[ConfigError]:
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if len(path) > _MAX_DEPTH:
            yield ConfigError(
                where, _dotted(path[:1]), f"nested more than {_MAX_DEPTH} levels deep"
            )
            return
        if isinstance(node, dict):
            for name in getattr(node, "duplicates", ()):
                yield ConfigError(
                    where, _dotted((*path, name)), "duplicate key (only the last would count)"
                )
            stack.extend(((*path, k), v) for k, v in node.items() if not k.startswith(_COMMENT))
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node))


def _readable(error: ValidationError, where: str) -> Iterator[ConfigError]:
    """jsonschema's complaint in the user's terms, at a dotted key path."""
    path = tuple(error.absolute_path)
    kind, value = error.validator, error.instance
    if kind == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        for name in value:
            if name not in known and not any(re.search(p, name) for p in patterns):
                yield ConfigError(where, _dotted((*path, name)), _unknown_key(path, name, known))
        return
    if kind == "type" and not path:
        message = f"the top level must be a JSON object {{...}}, not {_show(value)}"
    elif kind == "type":
        wanted = error.validator_value
        wanted = [wanted] if isinstance(wanted, str) else wanted
        message = f"{_show(value)} is not {' or '.join(_TYPE_NAMES.get(t, t) for t in wanted)}"
    elif kind == "enum":
        message = (
            f"{_show(value)} is not one of {', '.join(_show(v) for v in error.validator_value)}"
        )
    else:  # minimum, maximum, pattern, minLength: jsonschema's words are already readable
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    yield ConfigError(where, _dotted(path), message)


_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "null": "null",
    "object": "an object {...}",
    "array": "a list [...]",
}


def _unknown_key(path: tuple[str | int, ...], name: str, known: list[str]) -> str:
    """Suggest the same key in another section first (a misplaced key), else a close spelling."""
    elsewhere = [p for p in _key_index().get(name, []) if p != _dotted((*path, name))]
    if elsewhere:
        return f"unknown key (did you mean {elsewhere[0]}?)"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(known)})" if known else "unknown key"


@functools.cache
def _key_index() -> dict[str, list[str]]:
    """Every key name in the schema to the dotted paths where it belongs."""
    index: dict[str, list[str]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            index.setdefault(name, []).append(prefix + name)
            walk(sub, f"{prefix}{name}.")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{prefix}<name>.")

    walk(_schema(), "")
    return index


def _precision_errors(data: Any, where: str) -> Iterator[ConfigError]:
    """A precision must split one GPU into whole milli-GPU steps, or a whole GPU would round
    to less than 1000 (0.3 -> 900) and exact integer shares would no longer add up."""
    gpu = data.get("gpu") if isinstance(data, dict) else None
    value = gpu.get("allocation_precision") if isinstance(gpu, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.001 <= value <= 1:
        return  # absent, or the schema already reports it
    unit = round(value * units.ONE_GPU)
    if abs(value * units.ONE_GPU - unit) > 1e-6 or units.ONE_GPU % unit:
        yield ConfigError(
            where,
            "gpu.allocation_precision",
            f"{value} does not divide one GPU evenly in steps of 0.001; "
            "use e.g. 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5 or 1",
        )


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    """A value as the user wrote it: 'text' quoted like jsonschema, the rest as JSON."""
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- building


def _with_defaults(node: Mapping[str, Any], value: Mapping[str, Any]) -> dict[str, Any]:
    """A validated object with every schema property present and _comment keys dropped."""
    out: dict[str, Any] = {}
    properties = node.get("properties", {})
    for name, sub in properties.items():
        item = value[name] if name in value else copy.deepcopy(sub.get("default"))
        out[name] = _with_defaults(sub, item) if sub.get("type") == "object" else item
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for name, item in value.items():
            if name not in properties and not name.startswith(_COMMENT):
                out[name] = _with_defaults(extra, item)
    return out


def _build(data: Mapping[str, Any], config_path: Path) -> Settings:
    return build_settings(_with_defaults(_schema(), data), _schema(), config_path)


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _sample(node: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {_COMMENT: node["description"]}
    for name, sub in node.get("properties", {}).items():
        if "properties" in sub or isinstance(sub.get("additionalProperties"), dict):
            out[name] = _sample(sub)
        else:
            out[f"{_COMMENT}_{name}"] = sub["description"]
            out[name] = copy.deepcopy(sub["default"])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):  # a map such as tenants: describe what each entry holds
        for name, sub in extra.get("properties", {}).items():
            default = json.dumps(sub["default"])
            out[f"{_COMMENT}_{name}"] = f"Per entry: {sub['description']} Default {default}."
    return out
