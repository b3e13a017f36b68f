"""Simulated GPUs: what every test and every GPU-less machine runs on.

Without a state folder the GPUs are simply idle. With one, two kinds of file shape them:

``<state_dir>/gpus.json``
    ``{"0": {"memory_used_mib": 30000, "utilization_pct": 95, "healthy": false,
    "error": "Xid 79", "memory_total_mib": 40960}, ...}`` — per GPU, use by processes the
    scheduler did not start, and health. Every field is optional. Tests edit it at runtime
    (``SimulatedProbe.write_gpu_state``).
``<state_dir>/procs/<pid>.json``
    ``{"gpu": 0, "used_mib": 5000}`` or ``{"gpus": [0, 1], "used_mib": 5000}`` (per GPU) —
    written by a job about itself (``write_simulated_usage``). Counted while the pid lives and
    the file is not older than the process (an older file belongs to an earlier owner of a
    reused pid); otherwise deleted.

Files are re-parsed only when their inode, size or mtime changes, and a file modified within
the last few seconds is re-read every time, because a same-size rewrite inside one
mtime tick would otherwise go unnoticed. A file that cannot be parsed (half-written, malformed)
never crashes the probe: the last good reading of that file stays in force (none if there was
none), so a torn write cannot make a busy GPU look free for a tick; the problem is logged once.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_scheduler.adapters.gpu_base import WarnOnce, finite_or_none
from gpu_scheduler.adapters.gpu_statefiles import (
    FileCache,
    Malformed,
    is_int,
    load_object,
    stale_reason,
    write_json_atomic,
)
from gpu_scheduler.core.model import GpuProcess, GpuSnapshot

log = logging.getLogger(__name__)

GPUS_FILE = "gpus.json"
PROCS_DIR = "procs"
GPU_FIELDS = ("memory_used_mib", "memory_total_mib", "utilization_pct", "healthy", "error")
_PROC_FILE = re.compile(r"(\d+)\.json")


def simulated_usage_path(state_dir: Path, pid: int) -> Path:
    """Where the job with this pid reports its own simulated GPU memory use."""
    return Path(state_dir) / PROCS_DIR / f"{pid}.json"


def write_simulated_usage(state_dir: Path, pid: int, gpus: Sequence[int], used_mib: int) -> Path:
    """Report ``used_mib`` MiB on each of ``gpus`` for ``pid``, atomically. Returns the path."""
    path = simulated_usage_path(state_dir, pid)
    write_json_atomic(path, {"gpus": [int(g) for g in gpus], "used_mib": int(used_mib)})
    return path


# --------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class _Override:
    """One GPU's entry in gpus.json after validation; None = not given."""

    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    utilization_pct: float | None = None
    healthy: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Usage:
    """One proc file after validation: MiB used on each listed GPU."""

    gpus: tuple[int, ...]
    used_mib: int


class SimulatedProbe:
    """``count`` GPUs of ``memory_mib`` MiB each, idle unless the state folder says otherwise.

    ``name`` here is the GPU model shown in snapshots; the probe's provider name (the
    ``GpuProbe.name`` attribute) is always "simulated". Thread-safe: tests may call
    ``write_gpu_state`` while a daemon thread takes snapshots.
    """

    name = "simulated"

    def __init__(
        self,
        count: int,
        memory_mib: int,
        name: str = "Simulated GPU",
        state_dir: Path | None = None,
    ) -> None:
        if count < 1 or memory_mib < 1:
            raise ValueError(
                f"simulated GPUs need count >= 1 and memory_mib >= 1, not {count}, {memory_mib}"
            )
        self._count = count
        self._memory_mib = memory_mib
        self.gpu_name = name
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._lock = threading.Lock()
        self._warn = WarnOnce(log)
        self._gpus_cache: FileCache[dict[int, _Override]] = FileCache(self._parse_gpus, self._warn)
        self._procs_cache: FileCache[_Usage] = FileCache(self._parse_proc, self._warn)
        if self.state_dir is not None:
            (self.state_dir / PROCS_DIR).mkdir(parents=True, exist_ok=True)

    def count(self) -> int:
        return self._count

    def close(self) -> None:
        """Nothing to release; the state folder belongs to whoever made it."""

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        with self._lock:
            overrides = self._read_overrides()
            usage = self._read_procs()
        return tuple(
            self._gpu(i, overrides.get(i, _Override()), usage.get(i, []))
            for i in range(self._count)
        )

    def _gpu(self, index: int, override: _Override, procs: list[GpuProcess]) -> GpuSnapshot:
        healthy = override.healthy if override.healthy is not None else True
        error = override.error or ""
        if not healthy and not error:
            error = f"marked unhealthy in {GPUS_FILE}"
        external = override.memory_used_mib or 0
        utilization = 0.0 if override.utilization_pct is None else override.utilization_pct
        return GpuSnapshot(
            index=index,
            name=self.gpu_name,
            memory_total_mib=override.memory_total_mib or self._memory_mib,
            memory_used_mib=external + sum(p.used_mib for p in procs),
            utilization_pct=utilization,
            processes=tuple(sorted(procs, key=lambda p: p.pid)),
            healthy=healthy,
            error=error if not healthy else "",
            uuid=f"GPU-simulated-{index}",
        )

    # ------------------------------------------------------------------ gpus.json

    def write_gpu_state(self, index: int, **fields: Any) -> None:
        """Merge ``fields`` into GPU ``index``'s entry in gpus.json, atomically (test helper).

        A field set to None is removed. Unknown fields and a missing state folder raise
        ValueError, so a typo in a test fails loudly instead of silently doing nothing.
        """
        if self.state_dir is None:
            raise ValueError("write_gpu_state needs a SimulatedProbe with a state_dir")
        if not 0 <= index < self._count:
            raise ValueError(f"GPU {index} not found; this probe has 0-{self._count - 1}")
        unknown = sorted(set(fields) - set(GPU_FIELDS))
        if unknown:
            raise ValueError(f"unknown GPU state field(s) {unknown}; known: {list(GPU_FIELDS)}")
        path = self.state_dir / GPUS_FILE
        with self._lock:
            try:
                data = load_object(path.read_bytes())
            except (FileNotFoundError, Malformed):
                data = {}
            entry = data.get(str(index))
            entry = dict(entry) if isinstance(entry, dict) else {}
            for key, value in fields.items():
                if value is None:
                    entry.pop(key, None)
                else:
                    entry[key] = value
            data[str(index)] = entry
            write_json_atomic(path, data)

    def _read_overrides(self) -> dict[int, _Override]:
        if self.state_dir is None:
            return {}
        path = self.state_dir / GPUS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            self._gpus_cache.forget(path)
            return {}
        except OSError as exc:
            self._warn(f"{path}: cannot stat ({exc})")
            return {}
        return self._gpus_cache.read(path, st) or {}

    def _parse_gpus(self, path: Path, raw: bytes) -> dict[int, _Override]:
        """Validate gpus.json; a bad key, entry or field is dropped alone, with a warning."""
        out: dict[int, _Override] = {}
        for key, entry in load_object(raw).items():
            index = int(key) if re.fullmatch(r"\d+", key) else -1
            if not 0 <= index < self._count:
                self._warn(f"{path}: key {key!r} is not a GPU index 0-{self._count - 1}; ignored")
                continue
            if not isinstance(entry, dict):
                self._warn(f"{path}: GPU {key} entry is not an object; ignored")
                continue
            out[index] = _Override(**self._valid_fields(path, index, entry))
        return out

    def _valid_fields(self, path: Path, index: int, entry: dict[str, Any]) -> dict[str, Any]:
        checks: dict[str, tuple[Callable[[Any], bool], str]] = {
            "memory_used_mib": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
            "memory_total_mib": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            "utilization_pct": (
                lambda v: (n := finite_or_none(v)) is not None and 0 <= n <= 100,
                "a number 0-100",
            ),
            "healthy": (lambda v: isinstance(v, bool), "true or false"),
            "error": (lambda v: isinstance(v, str), "a string"),
        }
        valid: dict[str, Any] = {}
        for field, value in entry.items():
            check = checks.get(field)
            if check is None:
                self._warn(f"{path}: GPU {index}: unknown field {field!r} ignored")
            elif not check[0](value):
                self._warn(
                    f"{path}: GPU {index}: {field} must be {check[1]}, not {value!r}; ignored"
                )
            else:
                valid[field] = float(value) if field == "utilization_pct" else value
        return valid

    # ------------------------------------------------------------------ procs/<pid>.json

    def _read_procs(self) -> dict[int, list[GpuProcess]]:
        """Per GPU, the processes that reported use and are still the pid's current owner."""
        if self.state_dir is None:
            return {}
        folder = self.state_dir / PROCS_DIR
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn(f"{folder}: cannot list ({exc})")
            return {}
        by_gpu: dict[int, list[GpuProcess]] = {}
        live: set[Path] = set()
        for entry in entries:
            match = _PROC_FILE.fullmatch(entry.name)
            if match is None:
                if not entry.name.startswith("."):
                    self._warn(f"{entry.path}: not named <pid>.json; ignored")
                continue
            path, pid = Path(entry.path), int(match[1])
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._warn(f"{path}: cannot stat ({exc})")
                continue
            stale = stale_reason(pid, st.st_mtime)
            if stale:
                if stale != "zombie":
                    self._remove(path)
                continue
            live.add(path)
            usage = self._procs_cache.read(path, st)
            if usage is not None:
                for gpu in usage.gpus:
                    by_gpu.setdefault(gpu, []).append(GpuProcess(pid, usage.used_mib))
        self._procs_cache.keep_only(live)
        return by_gpu

    def _remove(self, path: Path) -> None:
        self._procs_cache.forget(path)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            self._warn(f"{path}: stale, but cannot delete it ({exc})")

    def _parse_proc(self, path: Path, raw: bytes) -> _Usage:
        data = load_object(raw)
        used = data.get("used_mib")
        if not is_int(used) or used < 0:
            raise Malformed(f"used_mib must be an integer >= 0, not {used!r}")
        gpus = data["gpus"] if "gpus" in data else [data.get("gpu")]
        if not isinstance(gpus, list) or not gpus or not all(is_int(g) for g in gpus):
            raise Malformed('expected "gpu": <index> or "gpus": [<index>, ...]')
        known = sorted({g for g in gpus if 0 <= g < self._count})
        if len(known) != len(set(gpus)):
            self._warn(f"{path}: GPU(s) outside 0-{self._count - 1} ignored")
        return _Usage(tuple(known), used)
