"""The Settings dataclasses, and how a checked, defaults-filled config becomes them.

Apart from ``config.py`` (which reads and checks the file) so the shapes every other module
imports sit next to the one function that reads their field metadata: a field's ``kind`` says
how its string resolves against the config's folder, the schema's type says int or float.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .core import units

# The dataclass defaults mirror the schema's (a unit test keeps them equal) so core code and
# tests can build a section by hand; the loader itself always takes defaults from the schema.
# A field's "kind" tells the loader how to resolve its string against the config's folder.
_PATH = {"kind": "path"}  # an absolute pathlib.Path


@dataclass(frozen=True)
class AgingSettings:
    interval_s: float = 600.0  # a waiting job's priority improves by 1 per interval; 0 = off


@dataclass(frozen=True)
class PreemptionSettings:
    enabled: bool = False
    mode: str = "requeue"  # "requeue" | "suspend"
    min_priority_gap: int = 1
    grace_s: float = 30.0
    max_preemptions_per_job: int = 3


@dataclass(frozen=True)
class SchedulerSettings:
    max_workers: int = 8
    job_timeout_s: float | None = None  # None = no timeout
    graceful_shutdown_timeout_s: float = 30.0
    fair_share_half_life_s: float = 3600.0
    aging: AgingSettings = field(default_factory=AgingSettings)
    preemption: PreemptionSettings = field(default_factory=PreemptionSettings)


@dataclass(frozen=True)
class SimulatedGpuSettings:
    count: int = 4
    memory_mb: int = 81920  # MiB per GPU
    name: str = "Simulated GPU"
    state_dir: Path | None = field(default=None, metadata=_PATH)


@dataclass(frozen=True)
class GpuSettings:
    provider: str = "auto"  # "auto" | "nvml" | "gputil" | "simulated"
    memory_threshold: float = 0.9  # fraction of memory used by foreign processes
    load_threshold: float = 0.9  # utilisation fraction with none of our jobs on the GPU
    allocation_precision: float = 0.005  # fraction of one GPU
    monitor_interval_s: float = 5.0
    utilization_window_s: float = 300.0
    memory_overrun: str = "warn"  # "warn" | "kill"
    simulated: SimulatedGpuSettings = field(default_factory=SimulatedGpuSettings)

    @property
    def precision_unit(self) -> int:
        """The share rounding unit in milli-GPU (see core.units)."""
        return units.precision_milli(self.allocation_precision)


@dataclass(frozen=True)
class JobsSettings:
    max_assignment_attempts: int = 3
    assignment_retry_wait_s: float = 10.0
    queue_size_limit: int | None = None
    max_concurrent_jobs: int | None = None


@dataclass(frozen=True)
class FilesSettings:
    """Absolute paths. ``jobs_file`` stays a string because it may be a glob pattern."""

    jobs_file: str = field(metadata={"kind": "pattern"})  # a file, a folder or a glob
    llm_config_file: Path = field(metadata=_PATH)
    state_file: Path = field(metadata=_PATH)
    log_dir: Path = field(metadata=_PATH)
    log_file: Path = field(metadata=_PATH)
    metrics_file: Path = field(metadata=_PATH)  # null in the file = <state folder>/metrics.prom


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    max_log_size_mb: float = 10.0
    backup_count: int = 5
    console: bool = True


@dataclass(frozen=True)
class SecuritySettings:
    allowed_script_paths: tuple[Path, ...] = field(default=(), metadata=_PATH)  # () = any
    max_memory_per_job_gb: float | None = None
    enable_resource_limits: bool = False


@dataclass(frozen=True)
class RaySettings:
    address: str = "auto"
    python: str = "python"  # the interpreter on the Ray nodes that has gpu_scheduler installed


@dataclass(frozen=True)
class ExecutionSettings:
    mode: str = "screen"  # "screen" | "direct" | "ray"
    append_cuda_arg: bool = False
    session_prefix: str = "gpujob"
    screen_dir: Path | None = field(default=None, metadata=_PATH)  # None = screen's default
    warm_screen_sessions: int = 1  # screen sessions kept ready with the runner up (0: none)
    # a command looked up on PATH, or (if it has a "/" or "~") an absolute path; None = python3
    python: str | None = field(default=None, metadata={"kind": "command"})
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass(frozen=True)
class TenantSettings:
    max_gpus: float | None = None  # in GPUs, may be fractional; None = no cap
    weight: float = 1.0


@dataclass(frozen=True)
class Settings:
    config_path: Path  # absolute
    scheduler: SchedulerSettings
    gpu: GpuSettings
    jobs: JobsSettings
    files: FilesSettings
    logging: LoggingSettings
    security: SecuritySettings
    execution: ExecutionSettings
    tenants: Mapping[str, TenantSettings]  # read-only


# ----------------------------------------------------------------------------- building


def build_settings(
    filled: Mapping[str, Any], schema: Mapping[str, Any], config_path: Path
) -> Settings:
    """Settings from a schema-valid config with every default filled in (``_comment`` keys
    dropped); relative paths resolve against config_path's folder, which must be absolute."""
    base, props = config_path.parent, schema["properties"]
    sections = {
        name: _section(cls, props[name], filled[name], base) for name, cls in _SECTIONS.items()
    }
    files = sections["files"]
    if files.metrics_file is None:
        sections["files"] = replace(files, metrics_file=files.state_file.parent / "metrics.prom")
    tenant_schema = props["tenants"]["additionalProperties"]
    tenants = {
        name: _section(TenantSettings, tenant_schema, value, base)
        for name, value in filled["tenants"].items()
    }
    return Settings(config_path=config_path, tenants=MappingProxyType(tenants), **sections)


_SECTIONS: dict[str, type] = {
    "scheduler": SchedulerSettings,
    "gpu": GpuSettings,
    "jobs": JobsSettings,
    "files": FilesSettings,
    "logging": LoggingSettings,
    "security": SecuritySettings,
    "execution": ExecutionSettings,
}


def _section(cls: type, node: Mapping[str, Any], value: Mapping[str, Any], base: Path) -> Any:
    """A settings dataclass from a defaults-filled object: the schema's type says int or float
    (JSON writes 30 for 30.0), a field's ``kind`` metadata says how a string is a path."""
    kwargs: dict[str, Any] = {}
    for spec in fields(cls):
        sub, item, kind = node["properties"][spec.name], value[spec.name], spec.metadata.get("kind")
        types = sub.get("type", [])
        if item is None:
            kwargs[spec.name] = None
        elif "object" in types:
            kwargs[spec.name] = _section(spec.default_factory, sub, item, base)  # type: ignore[arg-type]
        elif kind == "path" and isinstance(item, list):
            kwargs[spec.name] = tuple(Path(_joined(base, p)) for p in item)
        elif kind == "path":
            kwargs[spec.name] = Path(_joined(base, item))
        elif kind == "pattern" or (kind == "command" and ("/" in item or item[0] == "~")):
            kwargs[spec.name] = _joined(base, item)
        elif "integer" in types:
            kwargs[spec.name] = int(item)
        elif "number" in types:
            kwargs[spec.name] = float(item)
        else:
            kwargs[spec.name] = item
    return cls(**kwargs)


def _joined(base: Path, text: str) -> str:
    """``text`` (a path or glob, ``~`` expanded) made absolute against ``base``, normalised."""
    return os.path.abspath(os.path.join(base, os.path.expanduser(text)))
