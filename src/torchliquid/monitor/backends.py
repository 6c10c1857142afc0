"""Hardware backends: small objects whose ``read(t)`` returns flat records.

Every backend has the same four members, so the sampler never branches on what is
installed (STYLE.md item 11)::

    kind: str                       # "gpu" | "host" | "null"
    device_ids() -> list[str]       # e.g. ["gpu0", "gpu1"] or ["host"]; [] for a null backend
    info() -> dict[str, dict]       # static per-device metadata (name, energy source, ...)
    read(t) -> list[dict]           # one record per device: {"t", "device", <metric>: float, ...}
    close() -> None

A missing GPU stack is a :class:`NullBackend` that carries the *reason* and reads
nothing. :func:`open_gpu_backend` is the only place that decides which one you get.

Record keys (units are in the name; absent key = not supported by that device):

===================  =====================================================================
``util_pct``         GPU: SM busy % over the driver's last sample period
``mem_util_pct``     GPU: memory-*controller* busy % (bandwidth), **not** capacity
``mem_used_mib``     GPU: framebuffer used (MiB)        ``mem_total_mib``: its capacity
``mem_used_pct``     GPU: ``100 * used / total``; host: system memory used %
``power_w``          GPU: board power draw (W)
``energy_j``         GPU: cumulative energy since the backend's first read (J)
``cpu_util_pct``     host: system-wide CPU busy % since the previous read
``rss_mib``          host: resident set size of this process (and optionally children)
===================  =====================================================================
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Record = dict[str, Any]

_MIB = 1024.0 * 1024.0


class Backend(Protocol):
    """What the sampler needs from a backend (see the module docstring)."""

    kind: str

    def device_ids(self) -> list[str]: ...

    def info(self) -> dict[str, dict[str, Any]]: ...

    def read(self, t: float) -> list[Record]: ...

    def close(self) -> None: ...


class NullBackend:
    """Reads nothing; stands in for a backend that is not available, and says why.

    Args:
        kind: which role it stands in for (``"gpu"`` for a missing GPU stack).
        reason: human-readable cause, surfaced as ``gpu_unavailable_reason``.
    """

    def __init__(self, kind: str = "null", reason: str = "") -> None:
        self.kind = kind
        self.reason = reason

    def device_ids(self) -> list[str]:
        return []

    def info(self) -> dict[str, dict[str, Any]]:
        return {}

    def read(self, t: float) -> list[Record]:
        return []

    def close(self) -> None:
        pass


class HostBackend:
    """System CPU %, this process's RSS and system memory % via psutil.

    CPU % is computed from ``psutil.cpu_times()`` deltas rather than
    ``psutil.cpu_percent()`` because the latter keeps its "previous" snapshot per
    *calling thread*: priming it here and reading it from the sampler thread would
    make the first reading a meaningless 0.0. The busy/total arithmetic matches psutil's
    (iowait counts as idle; guest time is already inside user/nice on Linux).

    Args:
        include_children: add the RSS of all descendant processes (DataLoader workers).
        children_refresh_s: how often (in sample time ``t``) to re-list descendants.
            Listing them scans every process in /proc (milliseconds on a busy host, more
            than the rest of a tick), while workers live for a whole epoch; between
            refreshes only the cached children's RSS is read.
        psutil_module: injection point for tests; defaults to the real ``psutil``.
    """

    kind = "host"

    def __init__(
        self,
        include_children: bool = False,
        children_refresh_s: float = 5.0,
        psutil_module: Any = None,
    ) -> None:
        self._ps = psutil_module if psutil_module is not None else importlib.import_module("psutil")
        self.include_children = include_children
        self.children_refresh_s = children_refresh_s
        self._proc = self._ps.Process(os.getpid())
        self._children: list[Any] = []
        self._children_t: float | None = None  # sample time of the last listing
        # Prime the CPU counters so the first read covers "since construction".
        self._last_cpu = self._ps.cpu_times()

    def device_ids(self) -> list[str]:
        return ["host"]

    def info(self) -> dict[str, dict[str, Any]]:
        return {"host": {"include_children": self.include_children}}

    def read(self, t: float) -> list[Record]:
        cpu = self._ps.cpu_times()
        rec: Record = {"t": t, "device": "host"}
        pct = _cpu_busy_pct(self._last_cpu, cpu)
        self._last_cpu = cpu
        if pct is not None:
            rec["cpu_util_pct"] = pct
        rec["rss_mib"] = self._rss_bytes(t) / _MIB
        rec["mem_used_pct"] = float(self._ps.virtual_memory().percent)
        return [rec]

    def close(self) -> None:
        pass

    def _rss_bytes(self, t: float) -> int:
        rss = int(self._proc.memory_info().rss)
        if not self.include_children:
            return rss
        if self._children_t is None or not 0 <= t - self._children_t < self.children_refresh_s:
            self._children = list(self._proc.children(recursive=True))
            self._children_t = t
        alive = []
        for child in self._children:
            try:
                rss += int(child.memory_info().rss)
                alive.append(child)
            except (self._ps.NoSuchProcess, self._ps.AccessDenied):
                continue  # a worker exited since the listing: not an error, just gone
        self._children = alive
        return rss


def _cpu_busy_pct(before: Any, after: Any) -> float | None:
    """Busy % between two ``cpu_times()`` snapshots; None if no time elapsed."""
    d = {f: getattr(after, f) - getattr(before, f) for f in after._fields}
    total = sum(d.values()) - d.get("guest", 0.0) - d.get("guest_nice", 0.0)
    if total <= 0:
        return None
    busy = total - d.get("idle", 0.0) - d.get("iowait", 0.0)
    return max(0.0, min(100.0, 100.0 * busy / total))


@dataclass
class _Gpu:
    """One NVML device and which optional queries it answered when probed."""

    id: str
    handle: Any
    has_util: bool
    has_mem: bool
    has_power: bool
    has_energy: bool
    energy0_mj: float | None = None  # counter value at the first read
    last_power_t: float | None = None  # for the power-integral fallback
    last_power_w: float = 0.0
    energy_j: float = 0.0


class NvmlBackend:
    """Per-GPU utilisation, memory, power and energy via NVML (nvidia-ml-py).

    Build it with :func:`open_gpu_backend`, which handles init failures. Each optional
    query is probed once per device here, so a device that does not support, e.g., the
    energy counter (pre-Volta, some vGPUs) costs nothing per tick. Energy comes from
    ``nvmlDeviceGetTotalEnergyConsumption`` (mJ) when supported, else from a
    trapezoid integral of power over the sample times.

    Args:
        nvml: the initialised ``pynvml`` module (or a fake with the same functions).
        indices: NVML device indices to read; record ids are ``f"gpu{index}"``.
    """

    kind = "gpu"

    def __init__(self, nvml: Any, indices: Sequence[int]) -> None:
        self._nvml = nvml
        self._gpus: list[_Gpu] = []
        self._info: dict[str, dict[str, Any]] = {}
        for index in indices:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu = _Gpu(
                id=f"gpu{index}",
                handle=handle,
                has_util=self._supported(nvml.nvmlDeviceGetUtilizationRates, handle),
                has_mem=self._supported(nvml.nvmlDeviceGetMemoryInfo, handle),
                has_power=self._supported(nvml.nvmlDeviceGetPowerUsage, handle),
                has_energy=self._supported(nvml.nvmlDeviceGetTotalEnergyConsumption, handle),
            )
            self._gpus.append(gpu)
            name = nvml.nvmlDeviceGetName(handle)
            self._info[gpu.id] = {
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "nvml_index": index,
                "energy_source": (
                    "nvml_energy_counter" if gpu.has_energy
                    else "power_trapezoid" if gpu.has_power
                    else "unsupported"
                ),
            }

    def _supported(self, query: Any, handle: Any) -> bool:
        try:
            query(handle)
        except self._nvml.NVMLError:
            return False  # NOT_SUPPORTED, NO_PERMISSION, ...: skip this metric for good
        return True

    def device_ids(self) -> list[str]:
        return [g.id for g in self._gpus]

    def info(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._info.items()}

    def read(self, t: float) -> list[Record]:
        nvml = self._nvml
        out: list[Record] = []
        for g in self._gpus:
            rec: Record = {"t": t, "device": g.id}
            if g.has_util:
                u = nvml.nvmlDeviceGetUtilizationRates(g.handle)
                rec["util_pct"] = float(u.gpu)
                rec["mem_util_pct"] = float(u.memory)
            if g.has_mem:
                m = nvml.nvmlDeviceGetMemoryInfo(g.handle)
                rec["mem_used_mib"] = m.used / _MIB
                rec["mem_total_mib"] = m.total / _MIB
                rec["mem_used_pct"] = 100.0 * m.used / m.total if m.total else 0.0
            if g.has_power:
                power_w = nvml.nvmlDeviceGetPowerUsage(g.handle) / 1000.0  # mW -> W
                rec["power_w"] = power_w
                if not g.has_energy:
                    # Fallback: integrate power between consecutive reads (trapezoid).
                    if g.last_power_t is not None:
                        g.energy_j += 0.5 * (g.last_power_w + power_w) * (t - g.last_power_t)
                    g.last_power_t, g.last_power_w = t, power_w
                    rec["energy_j"] = g.energy_j
            if g.has_energy:
                mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle))
                if g.energy0_mj is None:
                    g.energy0_mj = mj  # counter is since driver load; report since our start
                rec["energy_j"] = (mj - g.energy0_mj) / 1000.0
            out.append(rec)
        return out

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass  # already shut down or driver gone: nothing left to release


def visible_nvml_indices(
    nvml: Any, count: int, env: Mapping[str, str] | None = None
) -> list[int]:
    """NVML indices of the GPUs this process can see, in CUDA's logical order.

    NVML ignores ``CUDA_VISIBLE_DEVICES`` and numbers every physical GPU, while the
    trainer knows CUDA-logical indices (``local_rank``). This follows CUDA's parsing:
    a comma list of integers or ``GPU-<uuid>`` prefixes, stopping at the first entry
    that is invalid. Unset means all ``count`` devices. Assumes
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or identical GPUs, where CUDA's order is NVML's.
    """
    env = os.environ if env is None else env
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    uuids: list[str] | None = None
    out: list[int] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if entry.lstrip("-").isdigit():
            idx = int(entry)
            if not 0 <= idx < count:
                break
        elif entry.startswith("GPU-"):
            if uuids is None:
                uuids = [_as_str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)))
                         for i in range(count)]
            matches = [i for i, u in enumerate(uuids) if u.startswith(entry)]
            if len(matches) != 1:
                break
            idx = matches[0]
        else:
            break  # MIG-..., empty, or garbage: CUDA stops here too
        if idx in out:
            break
        out.append(idx)
    return out


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_gpu_backend(
    devices: Sequence[int] | None = None,
    nvml: Any = None,
    env: Mapping[str, str] | None = None,
) -> NvmlBackend | NullBackend:
    """The NVML backend if it works here, else a ``NullBackend`` carrying the reason.

    Args:
        devices: CUDA-logical indices to monitor (e.g. ``[local_rank]`` under DDP);
            None means every GPU visible to this process.
        nvml: a ``pynvml``-like module to use instead of importing ``pynvml`` (tests).
        env: environment to read ``CUDA_VISIBLE_DEVICES`` from; defaults to ``os.environ``.

    Returns:
        ``NvmlBackend`` over ≥ 1 device, or ``NullBackend(kind="gpu", reason=...)`` with
        reason ``"pynvml not installed"``, ``"NVML: <error>"`` or ``"no GPU ..."``.

    Raises:
        ValueError: ``devices`` holds a non-integer, a negative index, or an index past
            the visible GPUs (a misconfiguration, not a missing GPU).
    """
    if devices is not None:
        devices = list(devices)
        for d in devices:
            if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                raise ValueError(
                    f"devices must be non-negative CUDA device indices, got {devices!r}"
                )
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return NullBackend("gpu", "pynvml not installed")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        return NullBackend("gpu", f"NVML: {e}")
    try:
        count = int(nvml.nvmlDeviceGetCount())
        visible = visible_nvml_indices(nvml, count, env)
        if not visible:
            nvml.nvmlShutdown()
            why = "no GPU" if count == 0 else "no GPU visible (CUDA_VISIBLE_DEVICES)"
            return NullBackend("gpu", why)
        if devices is None:
            indices = visible
        else:
            bad = [d for d in devices if d >= len(visible)]
            if bad:
                nvml.nvmlShutdown()
                raise ValueError(
                    f"devices {bad} out of range: this process sees {len(visible)} GPU(s) "
                    f"(CUDA indices 0..{len(visible) - 1}); pass indices below that"
                )
            indices = [visible[d] for d in devices]
        return NvmlBackend(nvml, indices)
    except nvml.NVMLError as e:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass
        return NullBackend("gpu", f"NVML: {e}")
