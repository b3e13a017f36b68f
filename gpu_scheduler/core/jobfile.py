"""The jobs.txt grammar: one job per line, ``priority,script[,conda_env[,arguments[,gpus and options]]]``.

Pure: the daemon, ``validate`` and the simulator all parse through here, so a line means the same
thing everywhere. The first four fields may be double-quoted CSV-style (``""`` is a literal quote);
everything after the fourth comma is the last field (GPU indices/ranges and ``key=value`` options,
separated by commas or spaces). Arguments are split with ``shlex`` and never reach a shell.
Bad lines become located ``LineError``s; they never stop the good lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string

from gpu_scheduler.core.jobfile_options import (
    _NO_LAST,
    EXPECTED_DURATION,
    EXPECTED_LAST,
    EXPECTED_NAME,
    OPTION_KEYS,
    _last_field,
    _LineProblem,
    parse_duration,
)
from gpu_scheduler.core.model import JobSpec, LineError
from gpu_scheduler.core.units import format_share, share_from_gpus

EXPECTED_LINE = "priority,script[,conda_env[,arguments[,gpus and options]]]"
EXPECTED_PRIORITY = "an integer priority such as 0"
EXPECTED_ENV = "a conda env name of letters, digits, '_', '.' or '-'"
EXPECTED_QUOTED = 'a double-quoted field such as "a, b", with "" for a literal quote'
EXPECTED_ARGS = "shell-style arguments with balanced quotes, such as --msg 'hello world'"

# The grammar's public names, wherever they live (the last field's are in ``jobfile_options``).
__all__ = [
    "EXPECTED_ARGS", "EXPECTED_DURATION", "EXPECTED_ENV", "EXPECTED_LAST", "EXPECTED_LINE",
    "EXPECTED_NAME", "EXPECTED_PRIORITY", "EXPECTED_QUOTED", "OPTION_KEYS", "LineFields",
    "ParseResult", "fingerprint", "format_line", "job_id", "make_spec", "parse_duration",
    "parse_fields", "parse_jobs",
]  # fmt: skip

_FIELD_NAMES = ("priority", "script", "conda_env", "arguments")

_INT = re.compile(r"[+-]?[0-9]+")
_ENV = re.compile(r"[A-Za-z0-9_.-]+")
_LLM_FLAGS = ("--llm", "--model")
# printable ASCII without quotes or backslash: shlex.split would just split it on spaces/tabs
_PLAIN_ARGS = re.compile(r"[ \t!#-&(-\[\]-~]*")


@dataclass(frozen=True)
class LineFields:
    """Everything a line says, normalised; no position, occurrence or id (see ``make_spec``)."""

    priority: int
    script: str  # as written (relative paths are resolved by the reader)
    conda_env: str | None = None
    args: tuple[str, ...] = ()
    allowed_gpus: tuple[int, ...] | None = None  # sorted, unique
    share: int | None = None  # gpus=, in milli-GPU
    timeout_s: float | None = None
    name: str | None = None
    retries: int = 0
    llm: str | None = None
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParseResult:
    specs: tuple[JobSpec, ...]
    errors: tuple[LineError, ...]


# --------------------------------------------------------------------------- the line


def _find_llm(args: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        if arg in _LLM_FLAGS and i + 1 < len(args) and args[i + 1]:
            return args[i + 1]
        flag, eq, value = arg.partition("=")
        if eq and flag in _LLM_FLAGS and value:
            return value
    return None


def _quoted(line: str, pos: int, field_no: int) -> tuple[str, int]:
    """Read a CSV-quoted field starting at the opening quote; return (value, position after it)."""
    out: list[str] = []
    i = pos + 1
    while True:
        j = line.find('"', i)
        if j < 0:
            raise _LineProblem(f"unclosed double quote in field {field_no + 1}", EXPECTED_QUOTED)
        out.append(line[i:j])
        if line.startswith('""', j):
            out.append('"')
            i = j + 2
            continue
        return "".join(out), j + 1


def _split_fields(line: str) -> tuple[list[str], str | None, bool]:
    """The first four fields, the raw last field (None if absent), and whether field 4 was quoted."""
    if '"' not in line:  # the common case: plain comma splitting gives the same answer, faster
        parts = line.split(",", 4)
        return [p.strip() for p in parts[:4]], (parts[4] if len(parts) == 5 else None), False
    fields: list[str] = []
    pos, n, args_quoted = 0, len(line), False
    while len(fields) < 4:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos < n and line[pos] == '"':
            value, pos = _quoted(line, pos, len(fields))
            args_quoted = len(fields) == 3
            while pos < n and line[pos].isspace():
                pos += 1
            if pos < n and line[pos] != ",":
                raise _LineProblem(
                    f"unexpected text after the closing quote of field {len(fields) + 1} "
                    f"({_FIELD_NAMES[len(fields)]}): {line[pos:]!r}",
                    EXPECTED_QUOTED,
                )
        else:
            end = line.find(",", pos)
            end = n if end < 0 else end
            value, pos = line[pos:end].strip(), end
        fields.append(value)
        if pos >= n:
            return fields, None, args_quoted
        pos += 1  # the comma
    return fields, line[pos:], args_quoted


def _unquote_last(raw: str) -> str:
    """A classic line may quote its GPU list (``"0,1"``); the quotes add nothing, so drop them."""
    text = raw.strip()
    if not text.startswith('"'):
        return text
    value, end = _quoted(text, 0, 4)
    if text[end:].strip():
        raise _LineProblem(
            f"unexpected text after the closing quote of field 5: {text[end:]!r}", EXPECTED_QUOTED
        )
    return value


def parse_fields(line: str, gpu_count: int | None = None) -> LineFields | tuple[str, str] | None:
    """One line → its fields; ``None`` for a blank or comment line; ``(message, expected)`` if bad.

    A pure function of its arguments, so callers may cache it by ``(line, gpu_count)``.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    try:
        return _parse(text, gpu_count)
    except _LineProblem as problem:
        return problem.message, problem.expected


def _parse(text: str, gpu_count: int | None) -> LineFields:
    fields, last, args_quoted = _split_fields(text)
    fields += [""] * (4 - len(fields))
    prio_text, script, env, args_text = fields
    if not prio_text:
        raise _LineProblem("missing priority", EXPECTED_LINE)
    if not _INT.fullmatch(prio_text):
        raise _LineProblem(f"priority {prio_text!r} is not an integer", EXPECTED_PRIORITY)
    if len(prio_text) > 18:  # also keeps int() away from its digit limit
        raise _LineProblem(f"priority {prio_text} is too large", EXPECTED_PRIORITY)
    if not script:
        raise _LineProblem("missing script", EXPECTED_LINE)
    if env and not _ENV.fullmatch(env):
        raise _LineProblem(f"conda env {env!r} is not a valid env name", EXPECTED_ENV)
    try:
        if _PLAIN_ARGS.fullmatch(args_text):  # the common case, without shlex's slow tokenizer
            args = tuple(args_text.split())
        else:
            args = tuple(shlex.split(args_text, posix=True))
    except ValueError as exc:
        expected = EXPECTED_ARGS
        if not args_quoted and last is not None:
            expected += "; a comma ends the arguments field unless the whole field is double-quoted"
        raise _LineProblem(f"unbalanced quote in the arguments ({exc})", expected) from None
    gpus, opts = _last_field(_unquote_last(last), gpu_count) if last is not None else _NO_LAST
    return LineFields(
        priority=int(prio_text),
        script=script,
        conda_env=env or None,
        args=args,
        allowed_gpus=gpus,
        share=opts.share,
        timeout_s=opts.timeout_s,
        name=opts.name,
        retries=opts.retries,
        llm=_find_llm(args),
        after=opts.after,
    )


# --------------------------------------------------------------------------- ids and specs


def fingerprint(fields: LineFields, tenant: str) -> str:
    """sha256 of the normalised fields and tenant (no occurrence): spacing and option spelling
    (``timeout=90`` vs ``90s``) do not change it; an edit to any value does. Args keep their order.

    The hashed text is ``_canonical_json``: job ids are stored in users' state files, so it must
    never change. ``_canonical_fast`` writes the same text ~4x faster for the values the parser
    produces (the cold read of a 100,000-line file spent a third of its time in json.dumps).
    """
    blob = _canonical_fast(fields, tenant)
    if blob is None:
        blob = _canonical_json(fields, tenant)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def _canonical_json(fields: LineFields, tenant: str) -> str:
    """The definition of the hashed text: compact, sorted-key, ASCII-only JSON of the fields."""
    options = {"after": sorted(fields.after), "gpus": fields.share, "name": fields.name}
    options |= {"retries": fields.retries, "timeout": fields.timeout_s}
    canonical = [fields.priority, fields.script, fields.conda_env, fields.args]
    canonical += [fields.allowed_gpus, options, tenant]
    return json.dumps(canonical, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def _canonical_fast(f: LineFields, tenant: str) -> str | None:
    """``_canonical_json`` written out by hand (the option keys are already in sorted order),
    with json's own C string encoder; None for any value whose JSON it does not spell the
    same way (a bool or int subclass, a float that is not finite, a non-str string)."""
    if not (
        type(f.priority) is int
        and type(f.script) is str
        and (f.conda_env is None or type(f.conda_env) is str)
        and type(tenant) is str
        and type(f.retries) is int
        and (f.share is None or type(f.share) is int)
        and (f.name is None or type(f.name) is str)
        and (f.allowed_gpus is None or all(type(g) is int for g in f.allowed_gpus))
        and all(type(a) is str for a in f.args)
        and all(type(a) is str for a in f.after)
    ):
        return None
    timeout = f.timeout_s
    if timeout is None:
        timeout_text = "null"
    elif type(timeout) is float and math.isfinite(timeout):
        timeout_text = float.__repr__(timeout)
    elif type(timeout) is int:
        timeout_text = int.__repr__(timeout)
    else:
        return None
    s = _json_string
    env = "null" if f.conda_env is None else s(f.conda_env)
    gpus = "null" if f.allowed_gpus is None else f"[{','.join(map(str, f.allowed_gpus))}]"
    share = "null" if f.share is None else str(f.share)
    name = "null" if f.name is None else s(f.name)
    return (
        f"[{f.priority},{s(f.script)},{env},[{','.join(map(s, f.args))}],{gpus},"
        f'{{"after":[{",".join(map(s, sorted(f.after)))}],"gpus":{share},"name":{name},'
        f'"retries":{f.retries},"timeout":{timeout_text}}},{s(tenant)}]'
    )


def job_id(fingerprint_hex: str, occurrence: int) -> str:
    """10 hex chars; ``occurrence`` (1-based) tells apart identical lines in one file."""
    return hashlib.sha256(f"{fingerprint_hex}#{occurrence}".encode("ascii")).hexdigest()[:10]


def make_spec(
    fields: LineFields,
    *,
    source: str,
    line_no: int,
    text: str,
    tenant: str,
    occurrence: int,
    fingerprint_hex: str | None = None,
    script: str | None = None,
) -> JobSpec:
    """The JobSpec for a parsed line; pass ``fingerprint_hex`` if already computed (a cache).

    ``script`` replaces ``fields.script`` in the spec only (the reader's absolute path); the id
    still comes from the fields as written, so moving the jobs file keeps the ids.
    """
    fp = fingerprint_hex if fingerprint_hex is not None else fingerprint(fields, tenant)
    f = fields
    return JobSpec(
        job_id=job_id(fp, occurrence), source=source, line_no=line_no, text=text.strip(),
        priority=f.priority, script=f.script if script is None else script,
        conda_env=f.conda_env, args=f.args,
        allowed_gpus=f.allowed_gpus, share=f.share, timeout_s=f.timeout_s, name=f.name,
        retries=f.retries, llm=f.llm, after=f.after, tenant=tenant,
    )  # fmt: skip


def parse_jobs(
    text: str, source: str, *, tenant: str = "default", gpu_count: int | None = None
) -> ParseResult:
    """Every job and every located error in a jobs file's text (lines split on ``\\n`` only)."""
    specs: list[JobSpec] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line_no == 1:
            line = line.removeprefix("\ufeff")
        parsed = parse_fields(line, gpu_count)
        if parsed is None:
            continue
        if isinstance(parsed, tuple):
            errors.append(LineError(source, line_no, line.strip(), parsed[0], parsed[1]))
            continue
        fp = fingerprint(parsed, tenant)
        seen[fp] = seen.get(fp, 0) + 1
        specs.append(
            make_spec(parsed, source=source, line_no=line_no, text=line, tenant=tenant,
                      occurrence=seen[fp], fingerprint_hex=fp)
        )  # fmt: skip
    return ParseResult(tuple(specs), tuple(errors))


# --------------------------------------------------------------------------- the inverse


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def _gpu_ranges(gpus: Sequence[int]) -> str:
    idx = sorted(set(gpus))
    parts: list[str] = []
    start = 0
    for i in range(1, len(idx) + 1):
        if i == len(idx) or idx[i] != idx[i - 1] + 1:
            lo, hi = idx[start], idx[i - 1]
            parts.append(str(lo) if lo == hi else f"{lo}-{hi}")
            start = i
    return ",".join(parts)


def _option_text(key: str, value: object) -> str:
    if key == "gpus" and isinstance(value, (int, float)):
        return format_share(share_from_gpus(float(value), 1))
    if key == "after" and not isinstance(value, str) and isinstance(value, Sequence):
        return ";".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_line(
    priority: int,
    script: str,
    conda_env: str | None = None,
    args: Sequence[str] = (),
    gpus: Sequence[int] | None = None,
    options: Mapping[str, object] | None = None,
) -> str:
    """A correctly quoted jobs line (for ``gpu-scheduler add``); raises ValueError if the result
    would not parse back to the same thing (e.g. a newline in an argument, an unknown option).
    """
    args = list(args)
    for text in [script, conda_env or "", *args]:
        if "\n" in text or "\r" in text:
            raise ValueError("a jobs line cannot contain a newline")
    last_parts = [_gpu_ranges(gpus)] if gpus else []
    last_parts += [f"{k}={_option_text(k, v)}" for k, v in (options or {}).items()]
    fields = [
        str(int(priority)),
        _csv_field(script),
        _csv_field(conda_env or ""),
        _csv_field(shlex.join(args) if args else ""),
    ]
    fields.append(" ".join(last_parts))
    while fields[-1] == "":
        fields.pop()
    line = ",".join(fields)
    parsed = parse_fields(line)
    if not isinstance(parsed, LineFields):
        problem = "it is empty" if parsed is None else f"{parsed[0]} (expected {parsed[1]})"
        raise ValueError(f"cannot write this job as a line: {problem}")
    if (
        parsed.script != script
        or parsed.args != tuple(args)
        or parsed.conda_env != (conda_env or None)
    ):
        raise ValueError("cannot write this job as a line: it would not read back the same")
    return line
