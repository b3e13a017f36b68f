"""GPU probe over GPUtil, the fallback when NVML's Python binding cannot start.

GPUtil runs ``nvidia-smi`` once per ``getGPUs()`` call (tens of milliseconds) and cannot list GPU
processes, so snapshots carry ``processes=None``. It swallows a missing ``nvidia-smi`` and
returns an empty list, and it parses the tool's output without error handling, so an odd
output line surfaces as any exception at all.
"""

from __future__ import annotations

import logging
import math
from types import ModuleType
from typing import Any

from gpu_scheduler.adapters.gpu_base import ProbeUnavailable, finite_or_none, unhealthy
from gpu_scheduler.core.model import GpuSnapshot

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "Check that `nvidia-smi` is on PATH and works, and that GPUtil is installed "
    "(`pip install GPUtil`); or set the GPU provider to 'auto' or 'simulated'"
)


class GputilProbe:
    """Reads the GPUs through ``GPUtil.getGPUs()``.

    ``gputil`` is the ``GPUtil`` module or a fake with ``getGPUs`` (tests); None imports it.
    Raises ``ProbeUnavailable`` when GPUtil cannot be imported, fails, or finds no GPU (GPUtil
    reports a missing ``nvidia-smi`` as "no GPUs", so the two cannot be told apart). The count is
    fixed at construction; a GPU missing from a later listing comes back unhealthy.
    """

    name = "gputil"

    def __init__(self, gputil: ModuleType | Any | None = None) -> None:
        if gputil is None:
            try:
                import GPUtil as gputil
            except ImportError as exc:
                raise ProbeUnavailable(
                    "gputil", f"GPUtil cannot be imported ({exc})", INSTALL_HINT
                ) from exc
        self._gputil = gputil
        gpus, error = self._list()
        if error:
            raise ProbeUnavailable("gputil", error, INSTALL_HINT)
        if not gpus:
            reason = "GPUtil found no GPU (nvidia-smi missing or failing)"
            raise ProbeUnavailable("gputil", reason, INSTALL_HINT)
        self._count = len(gpus)
        self._names = ["GPU"] * self._count
        self._totals = [0] * self._count

    def _list(self) -> tuple[list[Any], str]:
        """GPUtil's GPU objects and an error text ("" when the call worked)."""
        try:
            return list(self._gputil.getGPUs()), ""
        except Exception as exc:  # GPUtil's nvidia-smi parsing can raise anything; see module doc
            return [], f"GPUtil.getGPUs failed: {type(exc).__name__}: {exc}"

    def count(self) -> int:
        return self._count

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        """One ``nvidia-smi`` run for all GPUs; a failed run makes every GPU unhealthy."""
        gpus, error = self._list()
        if not error and not gpus:
            error = "GPUtil listed no GPU (nvidia-smi missing or failing)"
        by_index: dict[int, Any] = {}
        for position, gpu in enumerate(gpus):
            gpu_id = getattr(gpu, "id", position)
            index = gpu_id if isinstance(gpu_id, int) and not isinstance(gpu_id, bool) else position
            by_index.setdefault(index, gpu)
        out = []
        for index in range(self._count):
            gpu = by_index.get(index)
            if gpu is None:
                out.append(self._unhealthy(index, error or "GPUtil did not list this GPU"))
            else:
                out.append(self._convert(index, gpu))
        return tuple(out)

    def close(self) -> None:
        """Nothing to release: GPUtil keeps no state between calls."""

    def _unhealthy(self, index: int, error: str) -> GpuSnapshot:
        return unhealthy(
            index, error, name=self._names[index], memory_total_mib=self._totals[index]
        )

    def _convert(self, index: int, gpu: Any) -> GpuSnapshot:
        """GPUtil gives MiB as floats (NaN for "[N/A]") and load as a 0..1 fraction."""
        name = str(getattr(gpu, "name", "") or "GPU")
        self._names[index] = name
        total = finite_or_none(getattr(gpu, "memoryTotal", None))
        used = finite_or_none(getattr(gpu, "memoryUsed", None))
        if total is None or used is None:
            return self._unhealthy(index, "nvidia-smi reported no memory figures for this GPU")
        self._totals[index] = int(total)
        load = finite_or_none(getattr(gpu, "load", None))
        return GpuSnapshot(
            index=index,
            name=name,
            memory_total_mib=int(total),
            memory_used_mib=math.ceil(used),
            utilization_pct=None if load is None else round(load * 100.0, 1),
            processes=None,
            healthy=True,
            error="",
            uuid=str(getattr(gpu, "uuid", "") or ""),
        )
