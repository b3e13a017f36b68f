"""What every GPU probe shares: the protocol, its one error, and small helpers.

Kept apart from ``gpus.py`` so the provider modules (``gpu_nvml``, ``gpu_gputil``,
``gpu_simulated``) can import these without importing each other.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol, runtime_checkable

from gpu_scheduler.core.model import GpuSnapshot
from gpu_scheduler.errors import GpuSchedulerError

MIB = 1024 * 1024


class ProbeUnavailable(GpuSchedulerError):
    """A GPU provider cannot be used at all on this machine (library missing, driver absent).

    ``reason`` is short enough for a one-line warning; ``hint`` says what to install or check.
    """

    def __init__(self, provider: str, reason: str, hint: str = "") -> None:
        self.provider, self.reason, self.hint = provider, reason, hint
        message = f"GPU provider {provider!r} unavailable: {reason}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


@runtime_checkable
class GpuProbe(Protocol):
    """A source of GPU snapshots, asked once per monitor tick.

    ``snapshot()`` returns one entry per GPU in index order (NVIDIA's PCI bus order, the order
    ``nvidia-smi`` and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` use). It never raises because a GPU
    fails: that GPU comes back ``healthy=False`` with the error text, so the loop keeps going.
    """

    name: str  # the provider: "nvml", "gputil", "simulated", "fake"

    def count(self) -> int: ...

    def snapshot(self) -> tuple[GpuSnapshot, ...]: ...

    def close(self) -> None: ...


def unhealthy(
    index: int, error: str, *, name: str = "GPU", memory_total_mib: int = 0, uuid: str = ""
) -> GpuSnapshot:
    """A GPU the probe could not read. Keeps what is still known (name, size) for display."""
    return GpuSnapshot(
        index=index,
        name=name,
        memory_total_mib=memory_total_mib,
        memory_used_mib=0,
        utilization_pct=None,
        processes=None,
        healthy=False,
        error=error or "unknown error",
        uuid=uuid,
    )


def mib_floor(num_bytes: int) -> int:
    """Bytes to whole MiB, rounded down: used for totals, so capacity is never overstated."""
    return int(num_bytes) // MIB


def mib_ceil(num_bytes: int) -> int:
    """Bytes to whole MiB, rounded up: used for usage, so free memory is never overstated."""
    return -(-int(num_bytes) // MIB)


def finite_or_none(value: object) -> float | None:
    """A float if ``value`` is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class WarnOnce:
    """Log each distinct problem once at warning level.

    A probe runs every tick; a malformed file or a flaky GPU would otherwise flood the log with
    the same line. The memory of seen messages is bounded so a long-running daemon cannot grow
    it without limit (after the bound, messages may repeat, which is harmless).
    """

    def __init__(self, logger: logging.Logger, limit: int = 1000) -> None:
        self._logger = logger
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, message: str, *, exc_info: bool = False) -> None:
        if message in self._seen:
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(message)
        self._logger.warning("%s", message, exc_info=exc_info)
