"""Read a jobs file: bytes from disk → JobSpecs and located LineErrors, cheaply and repeatedly.

The daemon re-reads the file on every change hint and on a safety timer, so re-reading must be
cheap for a huge file: each line's parse is cached by its text, and when the file only grew (the
new bytes start with the old ones) only the appended lines are looked at. The old bytes are all
compared (one memcmp, about 1 ms for 4 MB), never guessed from size, inode or a sampled region:
nano, VS Code and ``open("w")`` rewrite in place, keeping the inode, and an edit may grow the file.
Ids come from the grammar (``core.jobfile``) and do not depend on where the file is or whether
the script exists; the script path in a spec is absolute (relative paths resolve against the jobs
file's folder). A last line without a newline is held back, since an editor may still be writing
it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpu_scheduler.core import jobfile
from gpu_scheduler.core.model import JobSpec, LineError

# a line's parse result; for a good line also its fingerprint and its script as an absolute path
_Parsed = tuple[jobfile.LineFields | tuple[str, str] | None, str | None, str | None]
_Problem = tuple[str, str] | None  # (message, expected), or None when the script is fine


@dataclass(frozen=True)
class ReadResult:
    """One read's jobs and errors, in line order. ``partial_line``: a last line was held back.

    ``unchanged_specs``: the first that many ``specs`` are the very same objects, in the same
    order, as the previous read's (lines were only appended, and no script check changed), so
    a caller may keep whatever it worked out for them and look at the rest only.
    """

    specs: tuple[JobSpec, ...]
    errors: tuple[LineError, ...]
    partial_line: bool = False
    unchanged_specs: int = field(default=0, compare=False)  # how, not what: not compared


class JobsFileReader:
    """Reads one jobs file again and again, re-parsing only lines it has not seen before.

    Not thread-safe: one reader per file, used by one thread (the daemon's tick).
    """

    def __init__(
        self,
        path: Path,
        *,
        tenant: str = "default",
        gpu_count: int | None = None,
        allowed_script_paths: Sequence[Path] = (),
    ) -> None:
        self.path = Path(path)
        self.source = str(path)
        self.tenant = tenant
        self.gpu_count = gpu_count
        self.allowed_script_paths = tuple(Path(p) for p in allowed_script_paths)
        self._folder = os.path.abspath(self.path.parent)
        self._cache: dict[str, _Parsed] = {}
        self._absolutes: dict[str, str] = {}  # script as written -> absolute (few distinct ones)
        self._reset()

    def _reset(self) -> None:
        """Forget the previous content (not the line cache): the next read starts at line 1."""
        self._prefix = b""  # the complete lines already turned into items
        self._line_total = 0  # how many lines _prefix holds
        self._items: list[JobSpec | LineError] = []  # one per job or bad line, in line order
        self._seen: dict[str, int] = {}  # fingerprint → occurrences so far
        self._scripts: set[str] = set()  # absolute script paths of the items
        self._out_specs: list[JobSpec] = []  # the items after script checks ...
        self._out_errors: list[LineError] = []
        self._out_count = 0  # ... up to this many items
        self._out_checks: dict[str, _Problem] = {}  # ... made with these checks

    # ------------------------------------------------------------------------- reading

    def read(self, *, include_partial: bool = False) -> ReadResult:
        """The file's jobs and errors now. Never raises for a missing, unreadable or bad file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._reset()
            message = (
                f"jobs file not found: {self.source}; create it with one job per line, "
                f"e.g. echo '0,/path/to/script.py' >> {self.source}"
            )
            return ReadResult((), (LineError(self.source, 0, "", message, jobfile.EXPECTED_LINE),))
        except OSError as exc:
            self._reset()
            message = f"cannot read the jobs file: {exc.strerror or exc}"
            return ReadResult((), (LineError(self.source, 0, "", message),))

        end = data.rfind(b"\n") + 1
        complete, tail = data[:end], data[end:]
        if self._prefix and complete.startswith(self._prefix):
            self._add_lines(complete[len(self._prefix) :])
        else:
            self._reset()
            old_cache, self._cache = self._cache, {}  # keep only the current lines' parses
            self._add_lines(complete, old_cache)
        self._prefix = complete

        tail_item = None
        if include_partial and tail.strip():
            tail_item = self._item(self._decode(tail + b"\n")[0], self._line_total + 1, count=False)
        checks = self._check_scripts(tail_item)
        unchanged = self._update_outputs(checks)
        specs, errors = tuple(self._out_specs), tuple(self._out_errors)
        if tail_item is not None:
            more_specs: list[JobSpec] = []
            more_errors: list[LineError] = []
            self._emit(tail_item, checks, more_specs, more_errors)
            specs, errors = specs + tuple(more_specs), errors + tuple(more_errors)
        return ReadResult(specs, errors, bool(tail.strip()) and not include_partial, unchanged)

    def _add_lines(self, chunk: bytes, old_cache: dict[str, _Parsed] | None = None) -> None:
        for decoded in self._decode(chunk):
            self._line_total += 1
            item = self._item(decoded, self._line_total, old_cache=old_cache)
            if item is not None:
                self._items.append(item)

    @staticmethod
    def _decode(chunk: bytes) -> list[tuple[str, bool]]:
        """Each line of ``chunk`` (which ends in a newline): its text, and whether it had bytes
        that are not UTF-8 (shown as U+FFFD). Splitting bytes on b"\\n" is safe in UTF-8.
        """
        try:
            return [(line, False) for line in chunk.decode("utf-8").split("\n")[:-1]]
        except UnicodeDecodeError:
            out = []
            for line in chunk.split(b"\n")[:-1]:
                try:
                    out.append((line.decode("utf-8"), False))
                except UnicodeDecodeError:
                    out.append((line.decode("utf-8", errors="replace"), True))
            return out

    def _parse(self, text: str, old_cache: dict[str, _Parsed] | None) -> _Parsed:
        hit = self._cache.get(text)
        if hit is None and old_cache is not None:
            hit = old_cache.get(text)
        if hit is None:
            parsed = jobfile.parse_fields(text, self.gpu_count)
            if isinstance(parsed, jobfile.LineFields):
                hit = (
                    parsed,
                    jobfile.fingerprint(parsed, self.tenant),
                    self._absolute(parsed.script),
                )
            else:
                hit = (parsed, None, None)
        self._cache[text] = hit
        return hit

    def _item(
        self,
        decoded: tuple[str, bool],
        line_no: int,
        *,
        count: bool = True,
        old_cache: dict[str, _Parsed] | None = None,
    ) -> JobSpec | LineError | None:
        """The job or error for one line; ``count=False`` leaves the occurrence counters alone."""
        text, bad_bytes = decoded
        if line_no == 1:
            text = text.removeprefix("\ufeff")
        if bad_bytes:
            message = "line is not valid UTF-8 (bad bytes are shown as \ufffd)"
            return LineError(self.source, line_no, text.strip(), message, "UTF-8 text")
        parsed, fp, script = self._parse(text, old_cache)
        if parsed is None:
            return None
        if isinstance(parsed, tuple) or fp is None or script is None:
            message, expected = parsed if isinstance(parsed, tuple) else ("unparsable line", "")
            return LineError(self.source, line_no, text.strip(), message, expected)
        occurrence = self._seen.get(fp, 0) + 1
        if count:
            self._seen[fp] = occurrence
            self._scripts.add(script)
        return jobfile.make_spec(
            parsed,
            source=self.source,
            line_no=line_no,
            text=text,
            tenant=self.tenant,
            occurrence=occurrence,
            fingerprint_hex=fp,  # of the script as written, so moving the file keeps the ids
            script=script,
        )

    def _absolute(self, script: str) -> str:
        found = self._absolutes.get(script)
        if found is None:
            if len(self._absolutes) >= 4096:  # a file of all-different scripts: stay bounded
                self._absolutes.clear()
            found = os.path.normpath(os.path.join(self._folder, os.path.expanduser(script)))
            self._absolutes[script] = found
        return found

    # ------------------------------------------------------------------------- script checks

    def _check_scripts(self, tail: JobSpec | LineError | None) -> dict[str, _Problem]:
        """Each script's problem, looked up once per read (a script may appear or vanish later)."""
        roots = [os.path.realpath(p) for p in self.allowed_script_paths]
        scripts = set(self._scripts)
        if isinstance(tail, JobSpec):
            scripts.add(tail.script)
        return {script: self._check(script, roots) for script in scripts}

    def _check(self, script: str, roots: list[str]) -> _Problem:
        if "\x00" in script:  # realpath and stat raise on it: a located error, not a crash
            return "script path contains a NUL byte", "a plain file path"
        if roots:
            real = os.path.realpath(script)
            if not any(
                real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots
            ):
                allowed = ", ".join(roots)
                return f"not under an allowed path: {real}", f"a script under {allowed}"
        if not os.path.isfile(script):
            what = "script is not a file" if os.path.exists(script) else "script not found"
            return (
                f"{what}: {script}",
                f"an existing script (relative paths start at {self._folder})",
            )
        return None

    def _update_outputs(self, checks: dict[str, _Problem]) -> int:
        """Items after script checks; keeps the last read's lists when no old script's check
        changed. Returns how many specs were kept (the previous read's, before any tail)."""
        if any(checks.get(s) != c for s, c in self._out_checks.items()):
            self._out_specs, self._out_errors, self._out_count = [], [], 0
        kept = len(self._out_specs)
        for item in self._items[self._out_count :]:
            self._emit(item, checks, self._out_specs, self._out_errors)
        self._out_count = len(self._items)
        self._out_checks = {s: checks[s] for s in self._scripts}
        return kept

    def _emit(
        self,
        item: JobSpec | LineError,
        checks: dict[str, _Problem],
        specs: list[JobSpec],
        errors: list[LineError],
    ) -> None:
        if isinstance(item, LineError):
            errors.append(item)
            return
        problem = checks.get(item.script)
        if problem is None:
            specs.append(item)
        else:
            errors.append(LineError(self.source, item.line_no, item.text, problem[0], problem[1]))
