"""Load llm_config.json (model name → GPUs) into an ``LlmTable``, with located errors.

The table decides how much of a GPU a job takes, so a mistake in it must be loud and point at the
line: JSON errors carry the parser's line, schema errors name the key path (``models.qwen``) and the
line where that key is written. ``check_llm_config`` collects every problem for ``validate``;
``load_llm_config`` raises the first. A missing file is an error here too: whether to fall back to
defaults is the daemon's decision, not this loader's.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from gpu_scheduler.core.llm import LlmTable
from gpu_scheduler.errors import JobFileError

_EXAMPLE = '{"default_requirement": 1.0, "models": {"qwen2.5-7b-inst": 1.0}}'
_GPUS_HINT = "a positive number of GPUs such as 0.5, 1 or 2"
_HINTS = {
    (): "a JSON object such as " + _EXAMPLE,
    ("models",): 'an object of model name -> GPUs, such as {"qwen2.5-7b-inst": 1.0}',
}


class _Duplicate(ValueError):
    pass


def _schema() -> dict[str, Any]:
    text = resources.files("gpu_scheduler").joinpath("schemas/llm_config.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def _line_of(text: str, path: tuple[str, ...], last: bool = False) -> int:
    """1-based line where the key ``path`` is written (searching key after key), 0 if not found."""
    pos = 0
    for key in path:
        hits = [
            m
            for quoted in dict.fromkeys((json.dumps(key), json.dumps(key, ensure_ascii=False)))
            for m in re.finditer(re.escape(quoted) + r"\s*:", text[pos:])
        ]
        if not hits:
            return 0
        pick = max(hits, key=lambda m: m.start()) if last else min(hits, key=lambda m: m.start())
        pos += pick.start()
    return text.count("\n", 0, pos) + 1 if path else 0


def _error(path: str, text: str, line: int, message: str, hint: str = "") -> JobFileError:
    lines = text.split("\n")
    shown = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return JobFileError(path, line, shown, message, hint)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Constant(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _Constant(name)


def _schema_errors(where: str, text: str, data: object) -> list[JobFileError]:
    schema = _schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    errors: list[JobFileError] = []
    for err in sorted(validator_cls(schema).iter_errors(data), key=lambda e: list(e.path)):
        path = tuple(str(p) for p in err.path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = sorted(err.schema.get("properties", {}))
            for key in sorted(
                k for k in err.instance if k not in known and not k.startswith("_comment")
            ):
                message = f"unknown key {'.'.join((*path, key))!r}; known keys: {', '.join(known)}"
                errors.append(_error(where, text, _line_of(text, (*path, key)), message))
            continue
        label = ".".join(path) or "llm_config"
        hint = _HINTS.get(path, _GPUS_HINT if path else _HINTS[()])
        errors.append(_error(where, text, _line_of(text, path), f"{label}: {err.message}", hint))
    return errors


def check_llm_config(path: str | Path) -> tuple[LlmTable | None, list[JobFileError]]:
    """The table and every problem found; the table is None when there is any problem."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = "llm_config file not found; create it or point the config's llm_config_file at one"
        return None, [JobFileError(where, 0, "", msg, "a JSON file such as " + _EXAMPLE)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [JobFileError(where, 0, "", f"cannot read the llm_config file: {exc}")]
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        msg = f"not valid JSON: {exc.msg} (column {exc.colno})"
        return None, [_error(where, text, exc.lineno, msg, _HINTS[()])]
    except _Duplicate as dup:
        key = str(dup)
        line = _line_of(text, (key,), last=True)
        return None, [_error(where, text, line, f"key {key!r} is given twice", "each key once")]
    except _Constant as const:  # NaN / Infinity: Python's json accepts them, JSON does not
        line = text.count("\n", 0, max(0, text.find(str(const)))) + 1
        msg = f"not valid JSON: {const} is not a number"
        return None, [_error(where, text, line, msg, _GPUS_HINT)]
    errors = _schema_errors(where, text, data)
    if errors:
        return None, errors
    models = {k: v for k, v in data.get("models", {}).items() if not k.startswith("_comment")}
    default = data.get("default_requirement", 1.0)
    for key, value in [("default_requirement", default), *models.items()]:
        if not math.isfinite(value):
            label = key if key == "default_requirement" else f"models.{key}"
            line = _line_of(text, (key,) if key == "default_requirement" else ("models", key))
            errors.append(_error(where, text, line, f"{label}: {value} is not finite", _GPUS_HINT))
    folded: dict[str, str] = {}
    for key in sorted(models):
        other = folded.setdefault(key.casefold(), key)
        if other != key and models[other] != models[key]:
            message = f"models: {other!r} and {key!r} differ only by case but need different GPUs"
            errors.append(
                _error(where, text, _line_of(text, ("models", key)), message, "one entry per model")
            )
    if errors:
        return None, errors
    return LlmTable(default_requirement=default, models=models), []


def load_llm_config(path: str | Path) -> LlmTable:
    """The table in ``path``; raises ``JobFileError`` (the first problem) if it is missing or bad."""
    table, errors = check_llm_config(path)
    if errors or table is None:
        raise errors[0]
    return table
