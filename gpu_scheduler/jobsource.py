"""The jobs files plus llm_config, seen as one source of (job spec, share) pairs and located errors.

``files.jobs_file`` names one file, a folder (every ``*.txt`` in it) or a glob. With one named
file every job belongs to tenant ``default``; otherwise each file is a tenant named by its stem
(``jobs/alice.txt`` -> ``alice``), so each person edits their own file.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpu_scheduler.adapters.jobsfile import JobsFileReader
from gpu_scheduler.core.allocator import never_fits
from gpu_scheduler.core.dependencies import resolve_dependencies
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
    ) -> None:
        self.jobs_file = jobs_file
        self.tenant_caps = dict(tenant_caps or {})
        self.llm_config_file = llm_config_file
        self.gpu_indices = tuple(gpu_indices)
        self.unit = precision_unit
        self.allowed = tuple(allowed_script_paths)
        self.table = LlmTable()
        self.llm_errors: tuple[LineError, ...] = ()
        self._readers: dict[Path, JobsFileReader] = {}

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
        jobs: list[tuple[JobSpec, int]] = []
        errors: list[LineError] = list(self.llm_errors)
        partial = False
        paths = jobs_files(self.jobs_file)
        for path in paths:
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
            errors.extend(result.errors)
            for spec in result.specs:
                share = resolve_share(spec, self.table, self.unit)
                why = never_fits(share, self.gpu_indices, spec.allowed_gpus)
                cap = self.tenant_caps.get(spec.tenant)
                if not why and cap is not None and share > round(cap * 1000):
                    why = f"share {share / 1000:g} is over tenant {spec.tenant}'s max_gpus ({cap:g})"
                if why:
                    errors.append(
                        LineError(
                            spec.source,
                            spec.line_no,
                            spec.text,
                            f"job can never run here: {why}",
                            "a smaller gpus= share or more allowed GPUs",
                        )
                    )
                    continue
                jobs.append((spec, share))
        for gone in set(self._readers) - set(paths):
            del self._readers[gone]
        return SourceResult(tuple(jobs), tuple(errors), partial)
