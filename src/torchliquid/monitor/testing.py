"""Test doubles for the monitor: a fake NVML module, a fake psutil, a manual clock.

They live in the package (like ``torch.testing``) so the trainer's tests and
``benchmarks/bench_monitor.py`` can drive a ``HardwareMonitor`` without a GPU::

    nvml = FakeNvml(n_devices=2, energy_supported=False)
    mon = HardwareMonitor(backends=[open_gpu_backend(nvml=nvml)], clock=ManualClock())
"""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace
from typing import Any

_MIB = 1024 * 1024


class FakeNVMLError(Exception):
    """Stands in for ``pynvml.NVMLError`` (same ``str()`` style: the error name)."""


class FakeNvml:
    """An object with the ``nvml*`` functions the backend calls, returning scripted data.

    Args:
        n_devices: devices reported by ``nvmlDeviceGetCount``.
        init_error: if set, ``nvmlInit`` raises ``NVMLError(init_error)``.
        energy_supported: if False, ``nvmlDeviceGetTotalEnergyConsumption`` raises
            NVMLError("Not Supported"), like pre-Volta GPUs.
        power_supported / util_supported: same, for power and utilisation queries.
        util / mem_used_mib / mem_total_mib / power_w: per-device readings (lists),
            mutable between reads to script a series.
        energy_mj: per-device counter values (mJ since "driver load"); tests advance it.

    Attributes ``calls`` (name -> count) and ``initialised`` record what the code did.
    """

    NVMLError = FakeNVMLError

    def __init__(
        self,
        n_devices: int = 1,
        init_error: str | None = None,
        energy_supported: bool = True,
        power_supported: bool = True,
        util_supported: bool = True,
        uuids: list[str] | None = None,
    ) -> None:
        self.n_devices = n_devices
        self.init_error = init_error
        self.energy_supported = energy_supported
        self.power_supported = power_supported
        self.util_supported = util_supported
        self.uuids = uuids or [f"GPU-{i:08d}-fake" for i in range(n_devices)]
        self.util = [50.0] * n_devices
        self.mem_util = [10.0] * n_devices
        self.mem_used_mib = [1024.0] * n_devices
        self.mem_total_mib = [4096.0] * n_devices
        self.power_w = [100.0] * n_devices
        self.energy_mj = [1_000_000.0] * n_devices
        self.calls: dict[str, int] = {}
        self.initialised = 0  # nvmlInit minus nvmlShutdown, like NVML's refcount

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _check(self) -> None:
        if self.initialised <= 0:
            raise FakeNVMLError("Uninitialized")

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self._check()
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return self.n_devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check()
        if not 0 <= index < self.n_devices:
            raise FakeNVMLError("Invalid Argument")
        return index  # the handle is the index: enough for a fake

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Fake GPU"  # bytes, as older nvidia-ml-py returned

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.uuids[handle]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        self._count("nvmlDeviceGetUtilizationRates")
        if not self.util_supported:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(gpu=self.util[handle], memory=self.mem_util[handle])

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        self._count("nvmlDeviceGetMemoryInfo")
        total = int(self.mem_total_mib[handle] * _MIB)
        used = int(self.mem_used_mib[handle] * _MIB)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._count("nvmlDeviceGetPowerUsage")
        if not self.power_supported:
            raise FakeNVMLError("Not Supported")
        return int(round(self.power_w[handle] * 1000))  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self._count("nvmlDeviceGetTotalEnergyConsumption")
        if not self.energy_supported:
            raise FakeNVMLError("Not Supported")
        return int(self.energy_mj[handle])


_CpuTimes = namedtuple("_CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")


class FakePsutil:
    """Just the psutil surface ``HostBackend`` uses, with scripted values.

    Set ``cpu_busy`` / ``cpu_idle`` (cumulative seconds), ``rss_mib``,
    ``child_rss_mib`` (one entry per live child; shrink it to make children exit) and
    ``mem_percent`` between reads. ``children_calls`` counts process listings.
    """

    class NoSuchProcess(Exception):
        pass

    class AccessDenied(Exception):
        pass

    def __init__(self) -> None:
        self.cpu_busy = 0.0
        self.cpu_idle = 0.0
        self.rss_mib = 100.0
        self.child_rss_mib: list[float] = []
        self.mem_percent = 42.0
        self.children_calls = 0

    def cpu_times(self) -> _CpuTimes:
        return _CpuTimes(self.cpu_busy, 0.0, 0.0, self.cpu_idle, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def virtual_memory(self) -> Any:
        return SimpleNamespace(percent=self.mem_percent)

    def Process(self, pid: int | None = None) -> Any:  # noqa: N802 - mirrors psutil
        return _FakeProcess(self, None)


class _FakeProcess:
    """``index`` None is the main process; else child ``index`` of ``child_rss_mib``."""

    def __init__(self, ps: FakePsutil, index: int | None) -> None:
        self._ps, self._index = ps, index

    def memory_info(self) -> Any:
        if self._index is None:
            mib = self._ps.rss_mib
        elif self._index < len(self._ps.child_rss_mib):
            mib = self._ps.child_rss_mib[self._index]
        else:
            raise FakePsutil.NoSuchProcess(self._index)  # the child has exited
        return SimpleNamespace(rss=int(mib * _MIB))

    def children(self, recursive: bool = False) -> list[_FakeProcess]:
        self._ps.children_calls += 1
        return [_FakeProcess(self._ps, i) for i in range(len(self._ps.child_rss_mib))]


class ManualClock:
    """A clock that only moves when told: ``clock.advance(0.2)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt
