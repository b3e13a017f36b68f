"""GPU probe over NVML (the ``pynvml`` module from the ``nvidia-ml-py`` package).

Every library call goes through ``NvmlProbe._query``: it is the one place where NVML's errors
become a local ``NvmlCallError`` carrying the text, so the rest of the probe only has to decide
what a failure means for the GPU (unhealthy, or just "utilisation unknown").

NVML device indices follow the PCI bus order, which is ``nvidia-smi``'s order; the runner makes
CUDA agree by setting ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from gpu_scheduler.adapters.gpu_base import (
    ProbeUnavailable,
    WarnOnce,
    finite_or_none,
    mib_ceil,
    mib_floor,
    unhealthy,
)
from gpu_scheduler.core.model import GpuProcess, GpuSnapshot

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "Check that the NVIDIA driver is installed and `nvidia-smi` works, and that the "
    "nvidia-ml-py package is installed (`pip install nvidia-ml-py`); "
    "or set the GPU provider to 'auto' or 'simulated'"
)


class NvmlCallError(Exception):
    """One NVML call failed; the message names the call and carries the library's text."""


@dataclass
class _Device:
    """What the probe keeps per GPU between ticks, so a tick costs only the changing reads."""

    handle: Any = None
    name: str = ""
    uuid: str = ""
    memory_total_mib: int = 0


def _text(value: object) -> str:
    """NVML strings arrive as bytes from older bindings and as str from newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _call_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", repr(fn))


class NvmlProbe:
    """Reads the GPUs through NVML. Initialises once, holds device handles, re-reads per tick.

    ``nvml`` is the ``pynvml`` module or a fake with the same functions (tests); None imports
    ``pynvml``. Raises ``ProbeUnavailable`` with the reason when NVML cannot start. The GPU count
    is fixed at construction: a GPU that later vanishes comes back unhealthy, not missing.
    """

    name = "nvml"

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                raise ProbeUnavailable(
                    "nvml", f"pynvml cannot be imported ({exc})", INSTALL_HINT
                ) from exc
        self._nvml = nvml
        self._nvml_error: type[BaseException] | tuple[()] = getattr(nvml, "NVMLError", ())
        self._warn = WarnOnce(log)
        self._closed = False
        try:
            self._query(nvml.nvmlInit)
        except (NvmlCallError, AttributeError) as exc:
            raise ProbeUnavailable("nvml", str(exc), INSTALL_HINT) from exc
        try:
            self._count = int(self._query(nvml.nvmlDeviceGetCount))
        except NvmlCallError as exc:
            self.close()
            raise ProbeUnavailable("nvml", f"cannot count GPUs: {exc}", INSTALL_HINT) from exc
        self._devices = [_Device() for _ in range(self._count)]
        for index in range(self._count):
            try:
                self._device(index)
            except NvmlCallError:
                pass  # reported as unhealthy by the first snapshot, retried each tick

    # ------------------------------------------------------------------ the choke point

    def _query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML function; any failure becomes ``NvmlCallError`` with the library text.

        NVMLError is the expected failure. Anything else (a binding bug, a ctypes problem) is
        converted too, and logged once with its traceback, because the monitor loop must not
        die on a vendor library's surprise; the GPU just shows the error.
        """
        try:
            return fn(*args)
        except self._nvml_error as exc:
            raise NvmlCallError(f"{_call_name(fn)}: {exc}") from exc
        except Exception as exc:
            self._warn(f"unexpected error from {_call_name(fn)}: {exc!r}", exc_info=True)
            raise NvmlCallError(f"{_call_name(fn)}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ GpuProbe

    def count(self) -> int:
        return self._count

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        """One read of every GPU. A GPU whose handle or memory cannot be read is unhealthy."""
        return tuple(self._read(index) for index in range(self._count))

    def close(self) -> None:
        """Shut NVML down once; later snapshots report every GPU unhealthy instead of raising."""
        if self._closed:
            return
        self._closed = True
        try:
            self._query(self._nvml.nvmlShutdown)
        except (NvmlCallError, AttributeError) as exc:
            self._warn(f"NVML shutdown failed: {exc}")

    # ------------------------------------------------------------------ per GPU

    def _device(self, index: int) -> _Device:
        """The held handle (fetched on first use or after a failure) and its fixed facts."""
        device = self._devices[index]
        if device.handle is None:
            device.handle = self._query(self._nvml.nvmlDeviceGetHandleByIndex, index)
        if not device.name:
            try:
                device.name = _text(self._query(self._nvml.nvmlDeviceGetName, device.handle))
            except NvmlCallError as exc:
                self._warn(f"GPU {index}: cannot read name: {exc}")
        if not device.uuid:
            get_uuid = getattr(self._nvml, "nvmlDeviceGetUUID", None)
            if get_uuid is not None:
                try:
                    device.uuid = _text(self._query(get_uuid, device.handle))
                except NvmlCallError as exc:
                    self._warn(f"GPU {index}: cannot read UUID: {exc}")
        return device

    def _read(self, index: int) -> GpuSnapshot:
        if self._closed:
            return unhealthy(index, "NVML probe is closed")
        device = self._devices[index]
        known = {
            "name": device.name or "GPU",
            "memory_total_mib": device.memory_total_mib,
            "uuid": device.uuid,
        }
        try:
            device = self._device(index)
        except NvmlCallError as exc:
            return unhealthy(index, str(exc), **known)
        try:
            memory = self._query(self._nvml.nvmlDeviceGetMemoryInfo, device.handle)
            total_mib, used_mib = mib_floor(memory.total), mib_ceil(memory.used)
        except (NvmlCallError, AttributeError, TypeError, ValueError) as exc:
            device.handle = None  # a lost GPU may come back with a new handle; ask again next tick
            return unhealthy(index, str(exc), **known)
        device.memory_total_mib = total_mib
        return GpuSnapshot(
            index=index,
            name=device.name or "GPU",
            memory_total_mib=total_mib,
            memory_used_mib=used_mib,
            utilization_pct=self._utilization(index, device.handle),
            processes=self._processes(index, device.handle),
            healthy=True,
            error="",
            uuid=device.uuid,
        )

    def _utilization(self, index: int, handle: Any) -> float | None:
        """GPU busy percentage; None when NVML cannot tell (the GPU stays healthy)."""
        try:
            rates = self._query(self._nvml.nvmlDeviceGetUtilizationRates, handle)
        except NvmlCallError as exc:
            self._warn(f"GPU {index}: utilisation unavailable: {exc}")
            return None
        return finite_or_none(getattr(rates, "gpu", None))

    def _processes(self, index: int, handle: Any) -> tuple[GpuProcess, ...] | None:
        """Compute and graphics processes, one entry per pid (the larger figure if listed twice).

        None when the compute list cannot be read: "unknown" must not look like "no processes".
        NVML reports ``usedGpuMemory`` None when it is not available (e.g. under some
        virtualisation); that counts as 0 MiB.
        """
        try:
            listed = list(self._query(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle))
        except NvmlCallError as exc:
            self._warn(f"GPU {index}: process list unavailable: {exc}")
            return None
        get_graphics = getattr(self._nvml, "nvmlDeviceGetGraphicsRunningProcesses", None)
        if get_graphics is not None:
            try:
                listed += list(self._query(get_graphics, handle))
            except NvmlCallError as exc:
                self._warn(f"GPU {index}: graphics process list unavailable: {exc}")
        used_by_pid: dict[int, int] = {}
        for proc in listed:
            try:
                pid = int(proc.pid)
                used_bytes = getattr(proc, "usedGpuMemory", None)
                used_mib = mib_ceil(used_bytes) if used_bytes is not None else 0
            except (AttributeError, TypeError, ValueError) as exc:
                self._warn(f"GPU {index}: unreadable process entry {proc!r}: {exc}")
                continue
            used_by_pid[pid] = max(used_by_pid.get(pid, 0), used_mib)
        return tuple(GpuProcess(pid, used) for pid, used in sorted(used_by_pid.items()))
