"""The one benchmark harness: timing, memory and machine facts, shared by every bench_*.py.

Habits (STYLE item 10): warm up before timing; synchronise the device around every timed
region; time forward and backward (+ optimiser) separately; interleave the contenders in
rounds so that a noisy neighbour slows all of them alike; report the median and the spread
(quartiles, min/max) and emit machine-readable records.

Memory is measured two ways, both per training step:
    saved bytes   distinct storages autograd keeps for backward (saved_tensors_hooks); exact
                  and deterministic, the quantity the LTC memory claims are about (field A16);
    RSS growth    peak resident set during one step minus the RSS before it (a psutil poller
                  thread at ~1 ms); what the OS sees, allocator noise included.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

try:
    import psutil
except ImportError:  # the harness still times without it
    psutil = None


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (CUDA kernels are asynchronous); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc) so RSS baselines are comparable."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name and platform.system() == "Linux":
        try:
            ctypes.CDLL(libc_name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss if psutil else 0


class PeakRSS:
    """Context manager: `growth` = peak RSS inside minus RSS at entry (bytes; 0 without psutil)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.growth = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        _trim_heap()
        self._base = self._peak = rss_bytes()
        if psutil:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if psutil:
            self._peak = max(self._peak, rss_bytes())
            self._stop.set()
            self._thread.join()
        self.growth = self._peak - self._base


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn()` runs."""
    storages: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@dataclass
class Timing:
    """Per-step wall times (seconds) of one contender: forward, backward + optimiser, total."""

    forward: list[float] = field(default_factory=list)
    backward: list[float] = field(default_factory=list)

    @property
    def total(self) -> list[float]:
        return [f + b for f, b in zip(self.forward, self.backward)]


def timed_step(forward: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None],
               device: torch.device, timing: Timing) -> None:  # fmt: skip
    """One training step, forward and backward timed separately (device synchronised)."""
    synchronize(device)
    t0 = time.perf_counter()
    loss = forward()
    synchronize(device)
    t1 = time.perf_counter()
    backward(loss)
    synchronize(device)
    t2 = time.perf_counter()
    timing.forward.append(t1 - t0)
    timing.backward.append(t2 - t1)


def summarize(samples_s: list[float], items: int) -> dict[str, float]:
    """Throughput statistics (items per second) from per-step times: median, quartiles, min/max."""
    rates = sorted(items / s for s in samples_s)
    if len(rates) >= 4:
        q1, _, q3 = statistics.quantiles(rates, n=4)
    else:
        q1, q3 = rates[0], rates[-1]
    return {
        "median": statistics.median(rates),
        "q1": q1,
        "q3": q3,
        "min": rates[0],
        "max": rates[-1],
        "n": len(rates),
    }


def gemm_ceiling_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GEMM rate (GFLOP/s, best of `repeats`): the machine's compute ceiling."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def machine_info(device: torch.device) -> dict[str, object]:
    """Provenance: CPU, cores, threads, memory, load, library versions."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    if psutil:
        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["ram_available_gb"] = round(psutil.virtual_memory().available / 2**30, 1)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from importlib.metadata import PackageNotFoundError, version

        info["ncps"] = version("ncps")  # ncps.__version__ says 0.0.2 in release 1.0.1
    except (ImportError, PackageNotFoundError):
        info["ncps"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@dataclass
class Record:
    """One row of results; `skipped` carries the reason when a contender did not run."""

    workload: str
    batch: int
    case: str
    family: str
    seq_per_s: Optional[dict[str, float]] = None
    forward_ms: Optional[float] = None
    backward_ms: Optional[float] = None
    saved_mb: Optional[float] = None
    rss_growth_mb: Optional[float] = None
    device_peak_mb: Optional[float] = None  # CUDA: peak allocated growth during one step
    infer_ms: Optional[float] = None
    skipped: Optional[str] = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def add_run_arguments(parser: argparse.ArgumentParser, cases: list[str]) -> None:
    """The options every interleaved CPU benchmark shares: contenders, threads, warm-up, rounds, JSON."""
    parser.add_argument("--cases", default=",".join(cases), help="comma list of contenders")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: a shared machine)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per contender")
    parser.add_argument("--json", type=Path, help="also write the results here")


def start_cpu_run(threads: int) -> dict[str, object]:
    """Set the intra-op threads, print one provenance line, return the machine description."""
    torch.set_num_threads(threads)
    machine = machine_info(torch.device("cpu"))
    print(f"{machine['cpu']}, torch {machine['torch']}, {torch.get_num_threads()} thread(s), "
          f"load average {machine.get('loadavg')}, {machine['time']}")  # fmt: skip
    return machine


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain fixed-width table (Markdown-compatible pipes)."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])
