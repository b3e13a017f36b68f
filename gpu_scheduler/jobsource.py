"""The jobs files plus llm_config, seen as one source of (job spec, share) pairs and located errors.

``files.jobs_file`` names one file, a folder (every ``*.txt`` in it) or a glob. With one named
file every job belongs to tenant ``default``; otherwise each file is a tenant named by its stem
(``jobs/alice.txt`` -> ``alice``), so each person edits their own file.

Re-reading is incremental end to end: each reader re-parses only appended lines, shares are worked
out only for specs a reader did not keep, and ``read_with_dependencies`` resolves ``after=`` for
the appended lines only (``AppendResolver``), counting in ``unchanged_jobs`` the leading pairs
``Scheduler.sync`` may skip. ``with_dependencies(read())`` is the plain path and the reference.
"""

from __future__ import annotations

import glob
import itertools
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpu_scheduler.adapters.jobsfile import JobsFileReader, ReadResult
from gpu_scheduler.core.allocator import never_fits
from gpu_scheduler.core.dependencies import AppendResolver, resolve_dependencies
from gpu_scheduler.core.llm import LlmTable, resolve_share
from gpu_scheduler.core.model import JobSpec, LineError
from gpu_scheduler.errors import JobFileError
from gpu_scheduler.llmconfig import load_llm_config

log = logging.getLogger("gpu_scheduler.jobsource")


def is_pattern(jobs_file: str) -> bool:
    return any(ch in jobs_file for ch in "*?[")


def jobs_files(jobs_file: str) -> list[Path]:
    """The jobs files that exist now for a file/folder/glob setting (a single file even if absent)."""
    if is_pattern(jobs_file):
        return sorted(Path(p) for p in glob.glob(jobs_file) if Path(p).is_file())
    path = Path(jobs_file)
    if path.is_dir():
        return sorted(p for p in path.glob("*.txt") if p.is_file())
    return [path]


def tenant_of(path: Path, jobs_file: str) -> str:
    single = not is_pattern(jobs_file) and not Path(jobs_file).is_dir()
    return "default" if single else path.stem


@dataclass(frozen=True)
class SourceResult:
    jobs: tuple[tuple[JobSpec, int], ...]
    errors: tuple[LineError, ...]
    partial: bool  # a last line without newline was held back somewhere
    deps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # id -> ids (after=)
    # the first that many jobs are the previous result's very pairs (see JobSource.read): how,
    # not what, so not compared
    unchanged_jobs: int = field(default=0, compare=False)


def with_dependencies(
    result: SourceResult, known_names: Mapping[str, str], known_ids: Iterable[str]
) -> SourceResult:
    """Resolve ``after=`` across every jobs file; unknown names and cycles become line errors.

    ``known_names``/``known_ids`` are jobs the scheduler remembers whose lines may be gone.
    The daemon and ``validate`` both go through here, so they agree on what is an error.
    """
    shares = {spec.job_id: share for spec, share in result.jobs}
    resolved = resolve_dependencies([spec for spec, _ in result.jobs], known_names, known_ids)
    good = tuple((spec, shares[spec.job_id]) for spec in resolved.specs)
    return SourceResult(good, result.errors + resolved.errors, result.partial, resolved.deps)


class JobSource:
    def __init__(
        self,
        jobs_file: str,
        llm_config_file: Path,
        *,
        gpu_indices: Sequence[int],
        precision_unit: int,
        allowed_script_paths: Sequence[Path] = (),
        tenant_caps: Mapping[str, float | None] | None = None,
        gpu_nodes: Mapping[int, str] | None = None,  # a cluster: GPU -> node (gangs stay on one)
    ) -> None:
        self.jobs_file = jobs_file
        self.gpu_nodes = dict(gpu_nodes or {})
        self.tenant_caps = dict(tenant_caps or {})
        self.llm_config_file = llm_config_file
        self.gpu_indices = tuple(gpu_indices)
        self.unit = precision_unit
        self.allowed = tuple(allowed_script_paths)
        self.table = LlmTable()
        self.llm_errors: tuple[LineError, ...] = ()
        self._readers: dict[Path, JobsFileReader] = {}
        self._shares: dict[Path, _FileShares] = {}
        self._layout: list[tuple[Path, int]] = []  # each file of the last read, its job count
        # leading pairs of the last read_with_dependencies answer still in place (the least
        # unchanged_jobs of the reads since: read() may be called in between)
        self._kept_for_resolver = 0
        self._resolver = AppendResolver()

    def set_gpus(self, gpu_indices: Sequence[int], gpu_nodes: Mapping[int, str]) -> None:
        """The GPUs lines are checked against changed (a cluster node joined): forget what was
        kept, so the next read checks every line again."""
        self.gpu_indices, self.gpu_nodes = tuple(gpu_indices), dict(gpu_nodes)
        self._readers.clear()
        self._shares.clear()
        self._layout = []
        self._kept_for_resolver = 0
        self._resolver = AppendResolver()

    def watched_paths(self) -> list[Path]:
        """What the file watcher should follow: the jobs file/folder/glob and llm_config."""
        if is_pattern(self.jobs_file):
            jobs = [Path(self.jobs_file)]
        elif Path(self.jobs_file).is_dir():
            jobs = [Path(self.jobs_file) / "*.txt"]
        else:
            jobs = [Path(self.jobs_file)]
        return [*jobs, self.llm_config_file]

    def reload_llm(self) -> bool:
        """Re-read llm_config; on error keep the last good table and report the error."""
        try:
            table = load_llm_config(self.llm_config_file)
        except JobFileError as exc:
            self.llm_errors = (LineError(exc.path, exc.line, exc.text, exc.message, exc.hint),)
            log.warning("llm_config not used: %s", exc, extra={"event": "llm_config_error"})
            return False
        changed = table != self.table
        self.table, self.llm_errors = table, ()
        return changed

    def read(self, *, include_partial: bool = False) -> SourceResult:
        """Every jobs file's jobs with their shares, and the located errors, in file then line
        order. Only the specs a reader did not keep from its last read get a share worked out
        (all of them again after llm_config changed); ``unchanged_jobs`` counts the leading
        pairs that are the last read's very objects."""
        parts: list[list[tuple[JobSpec, int]]] = []  # each file's pairs
        errors: list[LineError] = list(self.llm_errors)
        partial = False
        paths = jobs_files(self.jobs_file)
        unchanged, same_so_far = 0, True
        layout: list[tuple[Path, int]] = []
        for position, path in enumerate(paths):
            reader = self._readers.get(path)
            if reader is None:
                reader = self._readers[path] = JobsFileReader(
                    path,
                    tenant=tenant_of(path, self.jobs_file),
                    gpu_count=len(self.gpu_indices),
                    allowed_script_paths=self.allowed,
                )
            result = reader.read(include_partial=include_partial)
            partial = partial or result.partial_line
            shares = self._shares.get(path)
            if shares is None or shares.table is not self.table:
                shares = self._shares[path] = _FileShares(self.table)
            kept = shares.update(result, self._check)
            errors.extend(result.errors)
            errors.extend(shares.errors)
            if same_so_far:  # every earlier file's pairs are the last read's, in place
                before = self._layout[position] if position < len(self._layout) else None
                if before is not None and before[0] == path:
                    unchanged += kept
                same_so_far = before == (path, kept) and kept == len(shares.jobs)
            parts.append(shares.jobs)
            layout.append((path, len(shares.jobs)))
        for gone in set(self._readers) - set(paths):
            del self._readers[gone]
            self._shares.pop(gone, None)
        self._layout = layout
        self._kept_for_resolver = min(self._kept_for_resolver, unchanged)
        jobs = tuple(parts[0]) if len(parts) == 1 else tuple(itertools.chain(*parts))
        return SourceResult(jobs, tuple(errors), partial, unchanged_jobs=unchanged)

    def read_with_dependencies(
        self,
        *,
        include_partial: bool = False,
        known_names: Callable[[], Mapping[str, str]],
        known_ids: Collection[str],
    ) -> SourceResult:
        """``with_dependencies(self.read(...), known_names(), known_ids)``, the same answer,
        with the work for lines kept from the last call skipped (``AppendResolver``).

        ``known_names`` is called only if a reference needs it; ``known_ids`` is only asked
        ``in`` (a view of the scheduler's jobs will do: nothing is copied).
        ``unchanged_jobs`` then counts the leading pairs that are the last call's very objects
        with the same dependencies.
        """
        result = self.read(include_partial=include_partial)
        unchanged = self._kept_for_resolver
        self._kept_for_resolver = len(result.jobs)
        resolved = self._resolver.resolve(result.jobs, unchanged, known_names, known_ids)
        return SourceResult(
            resolved.good,
            result.errors + resolved.errors,
            result.partial,
            resolved.deps,
            unchanged_jobs=resolved.unchanged,
        )

    def _check(self, spec: JobSpec, table: LlmTable) -> tuple[JobSpec, int] | LineError:
        """The line's job with its share, or why it can never run on this machine."""
        share = resolve_share(spec, table, self.unit)
        why = never_fits(share, self.gpu_indices, spec.allowed_gpus, self.gpu_nodes)
        cap = self.tenant_caps.get(spec.tenant)
        if not why and cap is not None and share > round(cap * 1000):
            why = f"share {share / 1000:g} is over tenant {spec.tenant}'s max_gpus ({cap:g})"
        if why:
            return LineError(
                spec.source,
                spec.line_no,
                spec.text,
                f"job can never run here: {why}",
                "a smaller gpus= share or more allowed GPUs",
            )
        return (spec, share)


class _FileShares:
    """One file's specs turned into (spec, share) pairs or errors, kept between reads.

    ``kinds`` says, per spec of the reader's last result, whether it became a pair (True) or an
    error (False), so the entries of specs the reader did not keep can be taken off the end.
    """

    def __init__(self, table: LlmTable) -> None:
        self.table = table  # the llm_config the shares were worked out with
        self.jobs: list[tuple[JobSpec, int]] = []
        self.errors: list[LineError] = []
        self.kinds: list[bool] = []

    def update(
        self,
        result: ReadResult,
        check: Callable[[JobSpec, LlmTable], tuple[JobSpec, int] | LineError],
    ) -> int:
        """Catch up with ``result``; returns how many pairs were kept from the last read."""
        keep = min(result.unchanged_specs, len(self.kinds))
        while len(self.kinds) > keep:
            (self.jobs if self.kinds.pop() else self.errors).pop()
        kept = len(self.jobs)
        for spec in result.specs[keep:]:
            out = check(spec, self.table)
            if isinstance(out, LineError):
                self.errors.append(out)
                self.kinds.append(False)
            else:
                self.jobs.append(out)
                self.kinds.append(True)
        return kept
