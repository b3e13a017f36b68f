"""Is this JSON value clearly valid against this JSON Schema? A check that needs no jsonschema.

Importing jsonschema takes some 80 ms, a third of the start-up of every CLI command, yet nearly
every config file and state file it is asked about is valid. ``surely_valid`` answers True only
when jsonschema would find nothing wrong: it knows the handful of keywords our schemas use, in
their plainest reading, and answers False at anything else (a keyword it does not know, ``2.0``
for an integer, ``1`` where ``1.0`` is listed). False means "ask jsonschema", which then finds
the problems and words them exactly as before; so callers behave the same, only sooner.

Pure: stdlib only, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# Keywords that constrain nothing by themselves ($defs only matters through a $ref, which is
# not understood here, so a schema that uses one is never surely valid).
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
)
_NUMBER_TYPES = (int, float)


def surely_valid(instance: Any, schema: Any) -> bool:
    """True only if ``instance`` satisfies ``schema`` (JSON Schema draft 2020-12); False when
    it does not, or when this check is not sure. ``instance`` is parsed JSON."""
    if schema is True:
        return True
    if not isinstance(schema, Mapping):
        return False
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS or keyword in _OBJECT_KEYWORDS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None or not check(instance, value):
            return False
    if isinstance(instance, dict) and not _OBJECT_KEYWORDS.isdisjoint(schema):
        return _properties(instance, schema)
    return True


def _is_type(instance: Any, name: Any) -> bool:
    # Exact types: jsonschema also takes 2.0 as an integer; here that is "not sure".
    if name == "object":
        return isinstance(instance, dict)  # the config reader's dicts are a dict subclass
    if name == "array":
        return type(instance) is list
    if name == "string":
        return type(instance) is str
    if name == "integer":
        return type(instance) is int
    if name == "number":
        return type(instance) in _NUMBER_TYPES
    if name == "boolean":
        return type(instance) is bool
    if name == "null":
        return instance is None
    return False


def _type(instance: Any, value: Any) -> bool:
    if isinstance(value, str):
        return _is_type(instance, value)
    return isinstance(value, list) and any(_is_type(instance, name) for name in value)


def _same(instance: Any, wanted: Any) -> bool:
    """Equal and of the same type: stricter than JSON Schema's equality (1 == 1.0 there)."""
    if type(instance) is not type(wanted) or isinstance(instance, (dict, list)):
        return False  # deep equality is left to jsonschema
    return bool(instance == wanted)


def _enum(instance: Any, value: Any) -> bool:
    return isinstance(value, list) and any(_same(instance, item) for item in value)


def _const(instance: Any, value: Any) -> bool:
    return _same(instance, value)


def _bound(holds: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """A numeric keyword: it applies to numbers only (not booleans), as in JSON Schema."""

    def check(instance: Any, value: Any) -> bool:
        if type(instance) not in _NUMBER_TYPES:
            return True
        return type(value) in _NUMBER_TYPES and holds(instance, value)

    return check


def _min_length(instance: Any, value: Any) -> bool:
    if type(instance) is not str:
        return True
    return type(value) is int and len(instance) >= value


def _pattern(instance: Any, value: Any) -> bool:
    if type(instance) is not str:
        return True
    return isinstance(value, str) and re.search(value, instance) is not None


def _required(instance: Any, value: Any) -> bool:
    if not isinstance(instance, dict):
        return True
    return isinstance(value, list) and all(name in instance for name in value)


def _items(instance: Any, value: Any) -> bool:
    if type(instance) is not list:
        return True
    return all(surely_valid(item, value) for item in instance)


# Which keys additionalProperties covers depends on the other two: the three are one check.
_OBJECT_KEYWORDS = frozenset({"properties", "patternProperties", "additionalProperties"})


def _properties(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> bool:
    named = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    others = schema.get("additionalProperties", True)
    if not isinstance(named, Mapping) or not isinstance(patterns, Mapping):
        return False
    for key, item in instance.items():
        covered = False
        if key in named:
            covered = True
            if not surely_valid(item, named[key]):
                return False
        for pattern, sub in patterns.items():
            if re.search(pattern, key) is not None:
                covered = True
                if not surely_valid(item, sub):
                    return False
        if not covered and not surely_valid(item, others):
            return False
    return True


_KEYWORDS: dict[str, Callable[[Any, Any], bool]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "minimum": _bound(lambda a, b: bool(a >= b)),
    "maximum": _bound(lambda a, b: bool(a <= b)),
    "exclusiveMinimum": _bound(lambda a, b: bool(a > b)),
    "exclusiveMaximum": _bound(lambda a, b: bool(a < b)),
    "minLength": _min_length,
    "pattern": _pattern,
    "required": _required,
    "items": _items,
}
