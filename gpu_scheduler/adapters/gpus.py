"""GPU probes: where the daemon's per-tick GPU snapshot comes from.

The daemon imports everything from here. The providers live beside this module:
``gpu_nvml`` (NVML, preferred: sees processes), ``gpu_gputil`` (nvidia-smi through GPUtil, no
processes), ``gpu_simulated`` (files in a state folder; what tests and GPU-less machines run on).
``FakeProbe`` below is the in-memory double for unit tests of code that consumes snapshots.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpu_scheduler.adapters.gpu_base import GpuProbe, ProbeUnavailable
from gpu_scheduler.adapters.gpu_gputil import GputilProbe
from gpu_scheduler.adapters.gpu_nvml import NvmlProbe
from gpu_scheduler.adapters.gpu_simulated import (
    SimulatedProbe,
    simulated_usage_path,
    write_simulated_usage,
)
from gpu_scheduler.core.model import GpuSnapshot

__all__ = [
    "PROVIDERS",
    "FakeProbe",
    "GpuProbe",
    "GputilProbe",
    "NvmlProbe",
    "ProbeUnavailable",
    "SimulatedProbe",
    "make_probe",
    "simulated_usage_path",
    "write_simulated_usage",
]

PROVIDERS = ("auto", "nvml", "gputil", "simulated")


class FakeProbe:
    """In-memory GPUs for tests: set exactly what the next snapshot returns.

    Snapshots must be indexed 0..n-1 in order, as a real probe's are. Thread-safe, so a test
    can change GPUs while a daemon thread probes. ``calls`` counts snapshots taken.
    """

    name = "fake"

    def __init__(self, snapshots: Iterable[GpuSnapshot]) -> None:
        self._lock = threading.Lock()
        self._gpus: tuple[GpuSnapshot, ...] = ()
        self.calls = 0
        self.closed = False
        self.set_snapshots(snapshots)

    @classmethod
    def uniform(cls, count: int, memory_mib: int, name: str = "Fake GPU") -> FakeProbe:
        """``count`` idle, healthy GPUs of ``memory_mib`` each, listing no processes."""
        return cls(
            GpuSnapshot(
                i, name=name, memory_total_mib=memory_mib, utilization_pct=0.0, processes=()
            )
            for i in range(count)
        )

    def set_snapshots(self, snapshots: Iterable[GpuSnapshot]) -> None:
        gpus = tuple(snapshots)
        indices = [gpu.index for gpu in gpus]
        if indices != list(range(len(gpus))):
            raise ValueError(f"snapshots must be indexed 0..n-1 in order, got {indices}")
        with self._lock:
            self._gpus = gpus

    def set_gpu(self, index: int, **changes: Any) -> None:
        """Replace fields of one GPU (e.g. ``memory_used_mib=1000``, ``healthy=True, error=""``)."""
        if "index" in changes:
            raise ValueError("a GPU's index cannot change")
        with self._lock:
            gpus = list(self._gpus)
            if not 0 <= index < len(gpus):
                raise ValueError(f"GPU {index} not found; this probe has 0-{len(gpus) - 1}")
            gpus[index] = dataclasses.replace(gpus[index], **changes)
            self._gpus = tuple(gpus)

    def fail(self, index: int, error: str) -> None:
        """Make one GPU unhealthy with this error text, as a real probe reports a failure."""
        self.set_gpu(
            index,
            healthy=False,
            error=error,
            memory_used_mib=0,
            utilization_pct=None,
            processes=None,
        )

    def count(self) -> int:
        with self._lock:
            return len(self._gpus)

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        with self._lock:
            self.calls += 1
            return self._gpus

    def close(self) -> None:
        self.closed = True


def make_probe(
    provider: str,
    *,
    simulated_count: int,
    simulated_memory_mib: int,
    simulated_name: str = "Simulated GPU",
    simulated_state_dir: Path | None = None,
    nvml: Any = None,
    gputil: Any = None,
) -> tuple[GpuProbe, list[str]]:
    """The probe for a configured provider, and warnings the user should see.

    "auto" takes NVML if it starts and sees a GPU, else GPUtil if it lists a GPU, else simulated
    GPUs with a warning naming both reasons. "nvml" and "gputil" are strict: failure raises
    ``ProbeUnavailable`` with the reason and what to install or check. ``nvml``/``gputil`` are
    the library modules or fakes; None imports the real ones.
    """

    def simulated() -> SimulatedProbe:
        return SimulatedProbe(
            simulated_count, simulated_memory_mib, simulated_name, simulated_state_dir
        )

    if provider == "simulated":
        return simulated(), []
    if provider == "nvml":
        return _nvml_with_gpus(nvml), []
    if provider == "gputil":
        return GputilProbe(gputil), []
    if provider != "auto":
        raise ProbeUnavailable(provider, "unknown GPU provider", f"expected one of {PROVIDERS}")
    try:
        return _nvml_with_gpus(nvml), []
    except ProbeUnavailable as exc:
        nvml_reason = exc.reason
    try:
        probe = GputilProbe(gputil)
    except ProbeUnavailable as exc:
        gputil_reason = exc.reason
    else:
        warning = f"NVML unavailable ({nvml_reason}); using GPUtil, which cannot see GPU processes"
        return probe, [warning]
    warning = (
        f"no NVIDIA GPU found (NVML: {nvml_reason}; GPUtil: {gputil_reason}); "
        f"using {simulated_count} simulated GPUs of {simulated_memory_mib} MiB"
    )
    return simulated(), [warning]


def _nvml_with_gpus(nvml: Any) -> NvmlProbe:
    """An NVML probe that sees at least one GPU; NVML with zero GPUs is no use to a scheduler."""
    probe = NvmlProbe(nvml)
    if probe.count() == 0:
        probe.close()
        raise ProbeUnavailable("nvml", "NVML sees no GPU", "Check `nvidia-smi -L`")
    return probe
