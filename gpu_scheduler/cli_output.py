"""How a view reaches stdout: JSON for scripts and people, the rich console, and no garbage
collection while a one-shot command reads and prints a big state.

Apart from ``cli_views`` because ``compact_json`` makes a promise of its own (the very bytes
``json.dumps`` writes, by the faster orjson when it can) with its own tests
(``test_status_json_fast``). ``cli_views`` re-exports these names.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import sys
from collections.abc import Iterator

from gpu_scheduler.cli import print_json


def _emit_json(data: object) -> None:
    """Indented on a terminal (for people), one compact line when piped (for scripts and jq:
    several times faster for 10,000 jobs, since only compact JSON uses a fast encoder)."""
    if sys.stdout.isatty():
        print_json(data)
    else:
        sys.stdout.write(compact_json(data) + "\n")


def compact_json(data: object) -> str:
    """``json.dumps(data, separators=(",", ":"), default=str)``, the very same text, written by
    orjson (some 5x faster: 20 ms rather than 100 for 10,000 jobs) whenever its text is the same.

    orjson spells two things its own way: text beyond ASCII (as UTF-8, not ``\\u`` escapes) and
    numbers below 1e-4 (``0.00001`` for ``1e-05``, ``1e-6`` for ``1e-06``); such a view goes to
    json, as does whatever orjson refuses (an integer beyond 64 bits, a key that is not a
    string, a lone surrogate). One difference remains: NaN and infinities, which JSON cannot
    hold, come out as null rather than json's invalid NaN/Infinity (a view has them only if
    someone wrote 1e999 into a state file by hand).
    """
    text = _by_orjson(data)
    if text is not None and _spelled_as_json(text):
        return text.decode("ascii")
    return json.dumps(data, separators=(",", ":"), default=str)


def _by_orjson(data: object) -> bytes | None:
    """orjson's compact JSON of ``data``; None if orjson is missing or refuses it."""
    try:
        import orjson
    except ImportError:  # an environment installed before orjson became a dependency
        return None
    # dataclasses and datetimes go to default=str, as json sends them
    option = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
    try:
        return orjson.dumps(data, default=str, option=option)
    except orjson.JSONEncodeError:
        return None


# Where orjson's numbers differ from json's: below 1e-5 (1e-6 for 1e-06) and between 1e-5 and
# 1e-4 (0.00001 for 1e-05). Within a string ("--lr 1e-6") neither pattern is a number.
_OWN_EXPONENT = re.compile(rb"e-[6-9](?:[,\]}]|\Z)")
_OWN_DECIMAL = b"0.0000"


def _spelled_as_json(text: bytes) -> bool:
    """Would json.dumps have written these very bytes? Yes unless they hold text beyond printable
    ASCII (json escapes DEL too) or a number below 1e-4 spelled orjson's way. A false alarm (a
    string that looks like such a number) costs only the slower encoder."""
    if not text.isascii() or b"\x7f" in text or _OWN_EXPONENT.search(text):
        return False
    at = text.find(_OWN_DECIMAL)
    while at != -1:
        if text[at - 1 : at] in (b"", b":", b",", b"[", b"-"):  # a number, not in a string
            return False
        at = text.find(_OWN_DECIMAL, at + len(_OWN_DECIMAL))
    return True


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a one-shot command reads and prints a big state.

    Parsing 10,000 jobs makes some 500,000 objects, none of them garbage, and the collector would
    walk them all again and again (a third of the time of `status --json`); jobs, views and JSON
    hold no reference cycles, so reference counting still frees everything as it goes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console()
