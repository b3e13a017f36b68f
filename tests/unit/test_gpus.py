"""GPU probes, tested against fakes of the vendor libraries and against real files/processes.

This machine has no GPU: the NVML and GPUtil paths run on fake modules injected into the
probes, with the same call names and error shapes as the real ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_scheduler.adapters import gpu_simulated, gpu_statefiles
from gpu_scheduler.adapters.gpus import (
    FakeProbe,
    GpuProbe,
    GputilProbe,
    NvmlProbe,
    ProbeUnavailable,
    SimulatedProbe,
    make_probe,
    simulated_usage_path,
    write_simulated_usage,
)
from gpu_scheduler.core.model import GpuProcess, GpuSnapshot
from gpu_scheduler.errors import GpuSchedulerError

MIB = 1024 * 1024
GIB = 1024 * MIB


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --------------------------------------------------------------------------- fake pynvml


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError: its str() is the library's text."""


class FakeNvml:
    """A pynvml look-alike. ``failures[(call, index)]`` makes that call raise for that GPU
    (index None = every GPU, or a call without a GPU such as nvmlInit)."""

    NVMLError: type[BaseException] = FakeNVMLError

    def __init__(self, gpus: list[dict[str, Any]], *, graphics: bool = True) -> None:
        self.gpus = gpus
        self.failures: dict[tuple[str, int | None], BaseException] = {}
        self.calls: Counter[str] = Counter()
        if graphics:
            self.nvmlDeviceGetGraphicsRunningProcesses = self._graphics

    def _enter(self, call: str, index: int | None = None) -> None:
        self.calls[call] += 1
        error = self.failures.get((call, index)) or self.failures.get((call, None))
        if error is not None:
            raise error

    def nvmlInit(self) -> None:
        self._enter("init")

    def nvmlShutdown(self) -> None:
        self._enter("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._enter("count")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        self._enter("handle", index)
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle: SimpleNamespace) -> bytes | str:
        self._enter("name", handle.index)
        return self.gpus[handle.index].get("name", b"NVIDIA A100-SXM4-80GB")

    def nvmlDeviceGetUUID(self, handle: SimpleNamespace) -> bytes | str:
        self._enter("uuid", handle.index)
        return self.gpus[handle.index].get("uuid", f"GPU-fake-{handle.index}")

    def nvmlDeviceGetMemoryInfo(self, handle: SimpleNamespace) -> SimpleNamespace:
        self._enter("memory", handle.index)
        gpu = self.gpus[handle.index]
        total, used = gpu.get("total", 80 * GIB), gpu.get("used", 0)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: SimpleNamespace) -> SimpleNamespace:
        self._enter("util", handle.index)
        return SimpleNamespace(gpu=self.gpus[handle.index].get("util", 0), memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: SimpleNamespace) -> list[Any]:
        self._enter("compute", handle.index)
        return [
            SimpleNamespace(pid=p, usedGpuMemory=m)
            for p, m in self.gpus[handle.index].get("compute", [])
        ]

    def _graphics(self, handle: SimpleNamespace) -> list[Any]:
        self._enter("graphics", handle.index)
        return [
            SimpleNamespace(pid=p, usedGpuMemory=m)
            for p, m in self.gpus[handle.index].get("graphics", [])
        ]


def gpu_lost() -> BaseException:
    """The real library's error for a GPU that fell off the bus."""
    return pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)


def real_error_nvml(gpus: list[dict[str, Any]]) -> FakeNvml:
    """A fake whose failures are real pynvml.NVMLError instances (their str() is the text)."""
    fake = FakeNvml(gpus)
    fake.NVMLError = pynvml.NVMLError
    return fake


def test_nvml_snapshot_converts_bytes_to_mib_and_reads_names() -> None:
    fake = FakeNvml(
        [
            {
                "name": b"NVIDIA A100",
                "total": 80 * GIB + 5,
                "used": 1,
                "util": 37,
                "uuid": b"GPU-a",
            },
            {"name": "NVIDIA H100", "total": 40 * GIB, "used": 3 * MIB, "util": 0, "uuid": "GPU-b"},
        ]
    )
    gpus = NvmlProbe(fake).snapshot()
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0] == GpuSnapshot(
        index=0,
        name="NVIDIA A100",
        memory_total_mib=81920,  # total rounds down
        memory_used_mib=1,  # usage rounds up: one byte used is not "free"
        utilization_pct=37.0,
        processes=(),
        healthy=True,
        error="",
        uuid="GPU-a",
    )
    assert (gpus[1].name, gpus[1].memory_total_mib, gpus[1].memory_used_mib) == (
        "NVIDIA H100",
        40960,
        3,
    )
    assert isinstance(gpus[1].memory_used_mib, int) and gpus[1].uuid == "GPU-b"


def test_nvml_processes_with_unknown_memory_count_as_zero_and_merge_graphics() -> None:
    fake = FakeNvml(
        [{"compute": [(11, 2 * MIB), (10, None)], "graphics": [(11, 1 * MIB), (12, 3 * MIB)]}]
    )
    (gpu,) = NvmlProbe(fake).snapshot()
    assert gpu.processes == (GpuProcess(10, 0), GpuProcess(11, 2), GpuProcess(12, 3))


def test_nvml_without_graphics_function_lists_compute_processes_only() -> None:
    fake = FakeNvml([{"compute": [(7, 5 * MIB)], "graphics": [(8, MIB)]}], graphics=False)
    (gpu,) = NvmlProbe(fake).snapshot()
    assert gpu.processes == (GpuProcess(7, 5),)


@pytest.mark.parametrize(
    "make_fake", [FakeNvml, real_error_nvml], ids=["fake-error", "pynvml-error"]
)
def test_nvml_memory_failure_makes_only_that_gpu_unhealthy(
    make_fake: Callable[..., FakeNvml],
) -> None:
    fake = make_fake([{"used": 10 * MIB}, {"used": 20 * MIB, "name": b"Flaky"}, {"used": 30 * MIB}])
    probe = NvmlProbe(fake)
    error = gpu_lost() if fake.NVMLError is pynvml.NVMLError else FakeNVMLError("GPU is lost")
    fake.failures[("memory", 1)] = error
    gpus = probe.snapshot()
    assert [g.healthy for g in gpus] == [True, False, True]
    assert "GPU is lost" in gpus[1].error and "nvmlDeviceGetMemoryInfo" in gpus[1].error
    assert gpus[1].name == "Flaky"  # what is still known is kept for display
    assert (gpus[0].memory_used_mib, gpus[2].memory_used_mib) == (10, 30)


def test_nvml_gpu_recovers_after_memory_failure_with_a_fresh_handle() -> None:
    fake = FakeNvml([{"used": MIB}])
    probe = NvmlProbe(fake)
    fake.failures[("memory", 0)] = FakeNVMLError("GPU is lost")
    assert not probe.snapshot()[0].healthy
    del fake.failures[("memory", 0)]
    (gpu,) = probe.snapshot()
    assert gpu.healthy and gpu.error == ""
    assert fake.calls["handle"] == 2  # asked again after the failure


def test_nvml_handle_failure_is_unhealthy_and_retried_each_tick() -> None:
    fake = FakeNvml([{}, {}])
    fake.failures[("handle", 0)] = FakeNVMLError("Unknown Error")
    probe = NvmlProbe(fake)
    assert probe.count() == 2
    first = probe.snapshot()
    assert (first[0].healthy, first[1].healthy) == (False, True)
    assert "Unknown Error" in first[0].error
    del fake.failures[("handle", 0)]
    assert probe.snapshot()[0].healthy


def test_nvml_utilisation_failure_leaves_gpu_healthy_with_unknown_load() -> None:
    fake = FakeNvml([{"util": 50}, {"util": 60}])
    fake.failures[("util", 0)] = FakeNVMLError("Not Supported")
    gpus = NvmlProbe(fake).snapshot()
    assert (gpus[0].healthy, gpus[0].utilization_pct) == (True, None)
    assert gpus[1].utilization_pct == 60.0


def test_nvml_process_list_failure_means_unknown_not_empty() -> None:
    fake = FakeNvml([{"compute": [(5, MIB)]}])
    fake.failures[("compute", 0)] = FakeNVMLError("Not Supported")
    (gpu,) = NvmlProbe(fake).snapshot()
    assert gpu.healthy and gpu.processes is None


def test_nvml_driver_gone_makes_every_gpu_unhealthy_without_raising() -> None:
    fake = FakeNvml([{}, {}, {}])
    probe = NvmlProbe(fake)
    for call in ("handle", "memory", "util", "compute", "graphics", "name", "uuid"):
        fake.failures[(call, None)] = FakeNVMLError("Driver Not Loaded")
    gpus = probe.snapshot()
    assert len(gpus) == 3 and not any(g.healthy for g in gpus)
    assert all("Driver Not Loaded" in g.error for g in gpus)


def test_nvml_unexpected_library_exception_becomes_unhealthy_gpu() -> None:
    fake = FakeNvml([{}, {}])
    probe = NvmlProbe(fake)
    fake.failures[("memory", 0)] = RuntimeError("ctypes exploded")
    gpus = probe.snapshot()
    assert not gpus[0].healthy and "ctypes exploded" in gpus[0].error and gpus[1].healthy


def test_nvml_init_failure_raises_probe_unavailable_with_reason() -> None:
    fake = FakeNvml([{}])
    fake.failures[("init", None)] = FakeNVMLError("NVML Shared Library Not Found")
    with pytest.raises(ProbeUnavailable) as caught:
        NvmlProbe(fake)
    assert isinstance(caught.value, GpuSchedulerError)
    assert "NVML Shared Library Not Found" in caught.value.reason
    assert "nvidia-smi" in str(caught.value)


def test_nvml_count_failure_raises_and_shuts_down() -> None:
    fake = FakeNvml([{}])
    fake.failures[("count", None)] = FakeNVMLError("Uninitialized")
    with pytest.raises(ProbeUnavailable, match="Uninitialized"):
        NvmlProbe(fake)
    assert fake.calls["shutdown"] == 1


def test_nvml_holds_handles_and_does_not_reinit_per_snapshot() -> None:
    fake = FakeNvml([{}, {}])
    probe = NvmlProbe(fake)
    for _ in range(3):
        probe.snapshot()
    assert fake.calls["init"] == 1
    assert fake.calls["handle"] == 2 and fake.calls["name"] == 2
    assert fake.calls["memory"] == 6


def test_nvml_close_shuts_down_once_and_later_snapshots_are_unhealthy() -> None:
    fake = FakeNvml([{}, {}])
    probe = NvmlProbe(fake)
    probe.close()
    probe.close()
    assert fake.calls["shutdown"] == 1
    gpus = probe.snapshot()
    assert len(gpus) == 2 and not any(g.healthy for g in gpus)


def test_real_pynvml_on_this_machine_works_or_says_why() -> None:
    try:
        probe = NvmlProbe()
    except ProbeUnavailable as exc:
        assert exc.reason
    else:
        assert len(probe.snapshot()) == probe.count()
        probe.close()


# --------------------------------------------------------------------------- fake GPUtil


def gputil_gpu(id: int, **fields: Any) -> SimpleNamespace:
    base = {"name": "NVIDIA A100", "memoryTotal": 81920.0, "memoryUsed": 0.0, "load": 0.0}
    return SimpleNamespace(id=id, uuid=f"GPU-u{id}", **{**base, **fields})


class FakeGputil:
    def __init__(self, gpus: list[Any] | Exception) -> None:
        self.result = gpus

    def getGPUs(self) -> list[Any]:
        if isinstance(self.result, Exception):
            raise self.result
        return list(self.result)


def test_gputil_snapshot_maps_load_fraction_to_percent_and_knows_no_processes() -> None:
    fake = FakeGputil([gputil_gpu(0, load=0.5, memoryUsed=1234.5), gputil_gpu(1, name="H100")])
    gpus = GputilProbe(fake).snapshot()
    assert gpus[0] == GpuSnapshot(
        index=0,
        name="NVIDIA A100",
        memory_total_mib=81920,
        memory_used_mib=1235,
        utilization_pct=50.0,
        processes=None,
        healthy=True,
        error="",
        uuid="GPU-u0",
    )
    assert gpus[1].name == "H100" and gpus[1].index == 1


def test_gputil_missing_figures_nan_load_is_unknown_nan_memory_is_unhealthy() -> None:
    fake = FakeGputil([gputil_gpu(0, load=math.nan), gputil_gpu(1, memoryUsed=math.nan)])
    gpus = GputilProbe(fake).snapshot()
    assert gpus[0].healthy and gpus[0].utilization_pct is None
    assert not gpus[1].healthy and "memory" in gpus[1].error


def test_gputil_failure_later_makes_all_unhealthy_and_missing_gpu_unhealthy() -> None:
    fake = FakeGputil([gputil_gpu(0), gputil_gpu(1)])
    probe = GputilProbe(fake)
    fake.result = [gputil_gpu(1)]
    gpus = probe.snapshot()
    assert (gpus[0].healthy, gpus[1].healthy) == (False, True)
    fake.result = ValueError("invalid literal for int(): 'NVIDIA-SMI has failed'")
    gpus = probe.snapshot()
    assert len(gpus) == 2 and not any(g.healthy for g in gpus)
    assert "NVIDIA-SMI has failed" in gpus[0].error


@pytest.mark.parametrize("result", [[], OSError("nvidia-smi: not found")], ids=["empty", "raises"])
def test_gputil_unusable_at_start_raises_probe_unavailable(result: Any) -> None:
    with pytest.raises(ProbeUnavailable) as caught:
        GputilProbe(FakeGputil(result))
    assert caught.value.reason and "nvidia-smi" in str(caught.value)


# --------------------------------------------------------------------------- make_probe


def broken_nvml() -> FakeNvml:
    fake = FakeNvml([{}])
    fake.failures[("init", None)] = FakeNVMLError("Driver Not Loaded")
    return fake


def auto(**kwargs: Any) -> tuple[GpuProbe, list[str]]:
    return make_probe("auto", simulated_count=4, simulated_memory_mib=81920, **kwargs)


def test_auto_picks_nvml_when_it_works() -> None:
    probe, warnings = auto(nvml=FakeNvml([{}, {}]), gputil=FakeGputil([gputil_gpu(0)]))
    assert probe.name == "nvml" and probe.count() == 2 and warnings == []


def test_auto_picks_gputil_when_nvml_fails_and_says_so() -> None:
    probe, warnings = auto(nvml=broken_nvml(), gputil=FakeGputil([gputil_gpu(0)]))
    assert probe.name == "gputil" and probe.count() == 1
    assert len(warnings) == 1 and "Driver Not Loaded" in warnings[0]


def test_auto_falls_back_to_simulated_with_both_reasons() -> None:
    probe, warnings = auto(nvml=broken_nvml(), gputil=FakeGputil([]))
    assert isinstance(probe, SimulatedProbe) and probe.count() == 4
    assert warnings == [
        "no NVIDIA GPU found (NVML: nvmlInit: Driver Not Loaded; GPUtil: GPUtil found no GPU "
        "(nvidia-smi missing or failing)); using 4 simulated GPUs of 81920 MiB"
    ]


def test_auto_skips_nvml_that_sees_no_gpu() -> None:
    fake = FakeNvml([])
    probe, warnings = auto(nvml=fake, gputil=FakeGputil([]))
    assert probe.name == "simulated" and "NVML sees no GPU" in warnings[0]
    assert fake.calls["shutdown"] == 1


def test_explicit_providers_fail_loudly() -> None:
    kwargs: dict[str, Any] = {"simulated_count": 1, "simulated_memory_mib": 1024}
    with pytest.raises(ProbeUnavailable, match="Driver Not Loaded.*nvidia-smi"):
        make_probe("nvml", nvml=broken_nvml(), **kwargs)
    with pytest.raises(ProbeUnavailable, match="pip install GPUtil"):
        make_probe("gputil", gputil=FakeGputil(RuntimeError("boom")), **kwargs)
    with pytest.raises(ProbeUnavailable, match="unknown GPU provider"):
        make_probe("cuda", **kwargs)


def test_explicit_simulated_uses_its_settings(tmp_path: Path) -> None:
    probe, warnings = make_probe(
        "simulated",
        simulated_count=2,
        simulated_memory_mib=1024,
        simulated_name="Sim",
        simulated_state_dir=tmp_path,
    )
    assert warnings == [] and isinstance(probe, SimulatedProbe) and probe.state_dir == tmp_path
    assert [(g.name, g.memory_total_mib) for g in probe.snapshot()] == [("Sim", 1024)] * 2


def test_auto_with_the_real_libraries_never_raises() -> None:
    probe, _ = auto()
    assert probe.count() >= 1 and len(probe.snapshot()) == probe.count()
    probe.close()


def test_every_probe_satisfies_the_protocol(tmp_path: Path) -> None:
    probes = [
        NvmlProbe(FakeNvml([{}])),
        GputilProbe(FakeGputil([gputil_gpu(0)])),
        SimulatedProbe(1, 1024, state_dir=tmp_path),
        FakeProbe.uniform(1, 1024),
    ]
    assert [p.name for p in probes] == ["nvml", "gputil", "simulated", "fake"]
    assert all(isinstance(p, GpuProbe) for p in probes)


# --------------------------------------------------------------------------- FakeProbe


def test_fake_probe_changes_and_failures() -> None:
    probe = FakeProbe.uniform(2, 1000)
    probe.set_gpu(1, memory_used_mib=400)
    probe.fail(0, "Xid 79")
    gpus = probe.snapshot()
    assert (gpus[0].healthy, gpus[0].error) == (False, "Xid 79")
    assert (gpus[1].healthy, gpus[1].memory_used_mib) == (True, 400)
    assert probe.calls == 1
    with pytest.raises(ValueError):
        probe.set_snapshots([GpuSnapshot(1)])
    with pytest.raises(ValueError):
        probe.set_gpu(5, memory_used_mib=1)
    probe.set_snapshots([GpuSnapshot(0)])
    assert probe.count() == 1


# --------------------------------------------------------------------------- simulated


def test_simulated_defaults_are_idle_healthy_gpus() -> None:
    probe = SimulatedProbe(3, 81920)
    gpus = probe.snapshot()
    assert probe.count() == 3 and [g.index for g in gpus] == [0, 1, 2]
    assert all(
        (g.name, g.memory_total_mib, g.memory_used_mib, g.utilization_pct, g.processes, g.healthy)
        == ("Simulated GPU", 81920, 0, 0.0, (), True)
        for g in gpus
    )
    with pytest.raises(ValueError):
        SimulatedProbe(0, 1024)


def test_simulated_gpus_json_overrides(tmp_path: Path) -> None:
    probe = SimulatedProbe(3, 81920, state_dir=tmp_path)
    (tmp_path / "gpus.json").write_text(
        json.dumps(
            {
                "0": {"memory_used_mib": 30000, "utilization_pct": 95},
                "1": {"healthy": False, "error": "Xid 79"},
                "2": {"healthy": False, "memory_total_mib": 40960},
            }
        )
    )
    gpus = probe.snapshot()
    assert (gpus[0].memory_used_mib, gpus[0].utilization_pct, gpus[0].healthy) == (
        30000,
        95.0,
        True,
    )
    assert (gpus[1].healthy, gpus[1].error) == (False, "Xid 79")
    assert (
        not gpus[2].healthy and "gpus.json" in gpus[2].error and gpus[2].memory_total_mib == 40960
    )


def test_simulated_write_gpu_state_merges_removes_and_validates(tmp_path: Path) -> None:
    probe = SimulatedProbe(2, 1000, state_dir=tmp_path)
    probe.write_gpu_state(1, memory_used_mib=300, healthy=False, error="Xid 48")
    probe.write_gpu_state(1, healthy=None, error=None)
    gpus = probe.snapshot()
    assert (gpus[1].memory_used_mib, gpus[1].healthy) == (300, True)
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ValueError, match="unknown"):
        probe.write_gpu_state(0, memory_used=1)
    with pytest.raises(ValueError, match="not found"):
        probe.write_gpu_state(2, memory_used_mib=1)
    with pytest.raises(ValueError, match="state_dir"):
        SimulatedProbe(1, 1000).write_gpu_state(0, memory_used_mib=1)


def test_simulated_proc_files_add_usage_and_processes(tmp_path: Path) -> None:
    probe = SimulatedProbe(3, 81920, state_dir=tmp_path)
    probe.write_gpu_state(0, memory_used_mib=1000)
    me = os.getpid()
    path = simulated_usage_path(tmp_path, me)
    assert path == tmp_path / "procs" / f"{me}.json"
    path.write_text(json.dumps({"gpu": 0, "used_mib": 5000}))
    gpus = probe.snapshot()
    assert gpus[0].memory_used_mib == 6000 and gpus[0].processes == (GpuProcess(me, 5000),)
    write_simulated_usage(tmp_path, me, [1, 2], 700)
    gpus = probe.snapshot()
    assert [g.memory_used_mib for g in gpus] == [1000, 700, 700]
    assert gpus[1].processes == gpus[2].processes == (GpuProcess(me, 700),)


def exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_simulated_proc_file_of_dead_pid_is_ignored_and_deleted(tmp_path: Path) -> None:
    probe = SimulatedProbe(1, 81920, state_dir=tmp_path)
    dead = exited_pid()
    assert not psutil.pid_exists(dead)
    path = write_simulated_usage(tmp_path, dead, [0], 5000)
    (gpu,) = probe.snapshot()
    assert gpu.memory_used_mib == 0 and gpu.processes == ()
    assert not path.exists()


def test_simulated_proc_file_of_zombie_is_not_counted(tmp_path: Path) -> None:
    probe = SimulatedProbe(1, 81920, state_dir=tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    try:
        write_simulated_usage(tmp_path, child.pid, [0], 5000)
        assert probe.snapshot()[0].memory_used_mib == 5000
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
        assert probe.snapshot()[0].memory_used_mib == 0
    finally:
        child.kill()
        child.wait()


def test_simulated_proc_file_older_than_its_process_is_a_reused_pid(tmp_path: Path) -> None:
    probe = SimulatedProbe(1, 81920, state_dir=tmp_path)
    path = write_simulated_usage(tmp_path, os.getpid(), [0], 5000)
    before_start = psutil.Process().create_time() - 3600
    os.utime(path, (before_start, before_start))
    assert probe.snapshot()[0].memory_used_mib == 0
    assert not path.exists()


def test_simulated_malformed_gpus_json_is_ignored_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = SimulatedProbe(2, 1000, state_dir=tmp_path)
    (tmp_path / "gpus.json").write_text('{"0": {"memory_used_mib": 30')
    with caplog.at_level(logging.WARNING):
        first, second = probe.snapshot(), probe.snapshot()
    assert first == second and all(g.healthy and g.memory_used_mib == 0 for g in first)
    assert len([r for r in caplog.records if "gpus.json" in r.getMessage()]) == 1


def test_simulated_half_written_gpus_json_keeps_last_good_reading(tmp_path: Path) -> None:
    probe = SimulatedProbe(1, 1000, state_dir=tmp_path)
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"0": {"memory_used_mib": 600}}))
    assert probe.snapshot()[0].memory_used_mib == 600
    path.write_text('{"0": {"memory_used_mib": 7')  # a writer caught mid-write
    assert probe.snapshot()[0].memory_used_mib == 600
    path.write_text(json.dumps({"0": {"memory_used_mib": 700}}))
    assert probe.snapshot()[0].memory_used_mib == 700


def test_simulated_bad_entries_are_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = SimulatedProbe(2, 1000, state_dir=tmp_path)
    (tmp_path / "gpus.json").write_text(
        json.dumps(
            {
                "0": {"memory_used_mib": "lots", "utilization_pct": 50, "colour": "red"},
                "1": "broken",
                "7": {"memory_used_mib": 1},
                "x": {},
            }
        )
    )
    with caplog.at_level(logging.WARNING):
        gpus = probe.snapshot()
    assert (gpus[0].memory_used_mib, gpus[0].utilization_pct, gpus[0].healthy) == (0, 50.0, True)
    assert gpus[1].healthy and gpus[1].memory_used_mib == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for problem in ("memory_used_mib must be", "'colour'", "GPU 1 entry", "key '7'", "key 'x'"):
        assert problem in logged


def test_simulated_malformed_proc_files_are_ignored(tmp_path: Path) -> None:
    probe = SimulatedProbe(2, 1000, state_dir=tmp_path)
    procs = tmp_path / "procs"
    me = os.getpid()
    (procs / f"{me}.json").write_text('{"gpu": 0, "used_')  # half-written
    (procs / "1.json").write_text(json.dumps({"gpu": 0}))  # pid 1 (init) lives; no used_mib
    (procs / "notapid.json").write_text("{}")
    (procs / ".tmp-partial").write_text("{")
    gpus = probe.snapshot()
    assert all(g.healthy and g.memory_used_mib == 0 for g in gpus)
    write_simulated_usage(tmp_path, me, [1, 9], 100)  # GPU 9 does not exist
    gpus = probe.snapshot()
    assert (gpus[0].memory_used_mib, gpus[1].memory_used_mib) == (0, 100)


def test_simulated_in_place_rewrite_is_not_served_stale_from_cache(tmp_path: Path) -> None:
    probe = SimulatedProbe(1, 100000, state_dir=tmp_path)
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"0": {"memory_used_mib": 5}}))
    assert probe.snapshot()[0].memory_used_mib == 5
    inode = path.stat().st_ino
    path.write_text(json.dumps({"0": {"memory_used_mib": 12345}}))  # same inode, new size
    assert path.stat().st_ino == inode
    assert probe.snapshot()[0].memory_used_mib == 12345
    stamp = path.stat().st_mtime_ns
    path.write_text(json.dumps({"0": {"memory_used_mib": 54321}}))  # same size...
    os.utime(path, ns=(stamp, stamp))  # ...and same mtime: only the recency rule catches it
    assert probe.snapshot()[0].memory_used_mib == 54321


def test_simulated_unchanged_old_file_is_parsed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[bytes] = []
    real = gpu_simulated.load_object

    def counting(raw: bytes) -> dict[str, Any]:
        parses.append(raw)
        return real(raw)

    monkeypatch.setattr(gpu_simulated, "load_object", counting)
    probe = SimulatedProbe(1, 1000, state_dir=tmp_path)
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"0": {"memory_used_mib": 5}}))
    old = time.time() - 10 * gpu_statefiles.RECENT_S
    os.utime(path, (old, old))
    for _ in range(3):
        assert probe.snapshot()[0].memory_used_mib == 5
    assert len(parses) == 1
    probe.write_gpu_state(0, memory_used_mib=6)  # write_gpu_state itself parses once
    assert probe.snapshot()[0].memory_used_mib == 6
    assert len(parses) == 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**12) | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["0", "1", "gpu", "gpus", "used_mib", "healthy", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gpus_json=json_values | st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    proc_json=json_values,
)
def test_simulated_probe_survives_any_file_content(gpus_json: Any, proc_json: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder)
        probe = SimulatedProbe(2, 1000, state_dir=state)
        text = gpus_json if isinstance(gpus_json, str) else json.dumps(gpus_json)
        (state / "gpus.json").write_text(text)
        simulated_usage_path(state, os.getpid()).write_text(json.dumps(proc_json))
        gpus = probe.snapshot()
        assert [g.index for g in gpus] == [0, 1]
        for gpu in gpus:
            assert isinstance(gpu.memory_used_mib, int) and gpu.memory_used_mib >= 0
            assert isinstance(gpu.memory_total_mib, int) and gpu.memory_total_mib >= 1
            assert gpu.utilization_pct is not None and 0 <= gpu.utilization_pct <= 100
            assert gpu.healthy or gpu.error
