"""The last field of a jobs line: GPU indices and ranges, ``key=value`` options and durations.

Apart from ``jobfile`` because it is a small grammar of its own, with its own error wording and a
cache: most lines of a big file share their last field, so it is read once per distinct text.
``jobfile`` re-exports the public names; import them from there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from gpu_scheduler.core.units import share_from_gpus

EXPECTED_LAST = "GPU indices and ranges such as 3, 0-3 or 0-3,5, then options such as timeout=2h"
EXPECTED_DURATION = "a duration such as 90, 90s, 30m, 2h, 1d, 1h30m or 1.5h"
EXPECTED_NAME = "1-64 letters, digits, '_', '.' or '-'"

OPTION_KEYS = ("gpus", "timeout", "name", "retries", "after")
_OPTION_EXPECTED = {
    "gpus": "a positive GPU share such as gpus=0.25 or gpus=2",
    "timeout": "a positive " + EXPECTED_DURATION,
    "name": "a name of " + EXPECTED_NAME,
    "retries": "a whole number >= 0 such as retries=2",
    "after": "job names or ids separated by ';' such as after=prep;train",
}

_NUMBER = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_GPU = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_LAST_SPLIT = re.compile(r"[,\s]+")
_DURATION = re.compile("".join(f"(?:({_NUMBER.pattern}){unit})?" for unit in "dhms"))
_MAX_GPU_INDEX = 4095  # guards against `0-999999` expanding into a huge tuple


class _LineProblem(Exception):
    """Internal: carries (message, expected) out of the field parsers."""

    def __init__(self, message: str, expected: str) -> None:
        super().__init__(message)
        self.message, self.expected = message, expected


@dataclass
class _Options:
    """The options of one line while it is being read (``given`` catches a repeated key)."""

    share: int | None = None
    timeout_s: float | None = None
    name: str | None = None
    retries: int = 0
    after: tuple[str, ...] = ()
    given: set[str] = field(default_factory=set)


_NO_LAST: tuple[None, _Options] = (None, _Options())  # a line without a last field (shared)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``, ``1.5h``.

    Each unit at most once, largest first. Raises ValueError saying what was expected.
    """
    s = text.strip().lower()
    if _NUMBER.fullmatch(s):
        return float(s)
    m = _DURATION.fullmatch(s)
    if not s or m is None:
        raise ValueError(f"{text!r} is not a duration; use {EXPECTED_DURATION}")
    return sum(
        float(v) * unit for v, unit in zip(m.groups(), (86400, 3600, 60, 1), strict=True) if v
    )


def _positive_number(value: str) -> float:
    if not _NUMBER.fullmatch(value) or float(value) <= 0:
        raise ValueError(value)
    return float(value)


def _gpu_indices(tokens: list[str], gpu_count: int | None) -> tuple[int, ...]:
    found: set[int] = set()
    for tok in tokens:
        m = _GPU.fullmatch(tok)
        if m is None:
            raise _LineProblem(
                f"{tok!r} is neither a GPU index or range nor a key=value option", EXPECTED_LAST
            )
        if max(len(g) for g in m.groups("")) > 6:  # before int(): huge digit strings
            raise _LineProblem(f"GPU index in {tok} is out of range", EXPECTED_LAST)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise _LineProblem(f"GPU range {tok} is reversed; write {hi}-{lo}", EXPECTED_LAST)
        if hi > _MAX_GPU_INDEX:
            raise _LineProblem(f"GPU index {hi} is out of range", EXPECTED_LAST)
        found.update(range(lo, hi + 1))
    missing = sorted(i for i in found if gpu_count is not None and i >= gpu_count)
    if missing:
        what = f"GPU {missing[0]}" if len(missing) == 1 else "GPUs " + ", ".join(map(str, missing))
        raise _LineProblem(
            f"{what} not found; this machine has {_machine_gpus(gpu_count or 0)}", EXPECTED_LAST
        )
    return tuple(sorted(found))


def _machine_gpus(count: int) -> str:
    if count <= 0:
        return "no GPUs"
    return "GPU 0" if count == 1 else f"GPUs 0-{count - 1}"


def _option(key: str, value: str, out: _Options) -> None:
    if key not in OPTION_KEYS:
        raise _LineProblem(
            f"unknown option {key!r}; known options: {', '.join(OPTION_KEYS)}",
            "key=value with key one of " + ", ".join(OPTION_KEYS),
        )
    if key in out.given:
        raise _LineProblem(f"option {key} is given twice", _OPTION_EXPECTED[key])
    out.given.add(key)
    try:
        if key == "gpus":
            out.share = share_from_gpus(_positive_number(value), 1)
        elif key == "timeout":
            out.timeout_s = parse_duration(value)
            if not math.isfinite(out.timeout_s) or out.timeout_s <= 0:
                raise ValueError(value)
        elif key == "retries":
            if not re.fullmatch(r"[0-9]{1,6}", value):
                raise ValueError(value)
            out.retries = int(value)
        elif key == "name":
            if not _NAME.fullmatch(value):
                raise ValueError(value)
            out.name = value
        else:
            names = value.split(";")
            if not all(_NAME.fullmatch(n) for n in names):
                raise ValueError(value)
            out.after = tuple(dict.fromkeys(names))
    except ValueError:
        raise _LineProblem(f"bad value for {key}: {value!r}", _OPTION_EXPECTED[key]) from None


# _last_field's answers by (text, gpu_count): most lines of a big file share their last field
# ("gpus=0.25", "0-3 timeout=2h"), and it is a pure function. Bounded; a miss costs a lookup.
_LAST_FIELDS: dict[tuple[str, int | None], tuple[tuple[int, ...] | None, _Options]] = {}
_LAST_FIELDS_MAX = 4096


def _last_field(text: str, gpu_count: int | None) -> tuple[tuple[int, ...] | None, _Options]:
    """GPU tokens and ``key=value`` options, in any order, separated by commas or spaces.
    The ``_Options`` returned may be shared with other callers: read it, never change it."""
    found = _LAST_FIELDS.get((text, gpu_count))
    if found is None:
        found = _read_last_field(text, gpu_count)  # a bad field raises: never remembered
        if len(_LAST_FIELDS) >= _LAST_FIELDS_MAX:
            _LAST_FIELDS.clear()
        _LAST_FIELDS[(text, gpu_count)] = found
    return found


def _read_last_field(text: str, gpu_count: int | None) -> tuple[tuple[int, ...] | None, _Options]:
    gpu_tokens: list[str] = []
    options = _Options()
    for tok in _LAST_SPLIT.split(text.strip()):
        if "=" in tok:
            key, _, value = tok.partition("=")
            _option(key, value, options)
        elif tok:
            gpu_tokens.append(tok)
    gpus = _gpu_indices(gpu_tokens, gpu_count) if gpu_tokens else None
    return gpus, options
