"""Process runtime: devices, threads, seeds and the only door to ``torch.distributed``.

Everything that depends on how the process was launched lives here, detected from the
environment, so the rest of the package never branches on "am I distributed?". Every helper is a
no-op (or returns the trivial answer) in a single process, which is how the tests and the CLI
run by default.

Launch:
    one process, CPU or one GPU:   torchliquid train --model cfc --dataset sine
    one node, 4 GPUs:              torchrun --standalone --nproc_per_node=4 -m torchliquid train ...
    two nodes:                     torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \
                                       --rdzv_endpoint=HOST:29500 -m torchliquid train ...

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init_distributed` validates them and joins the process group
(``env://``; NCCL on CUDA, Gloo on CPU).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer, got {raw!r}; "
            "unset it or launch with torchrun, which sets it"
        ) from None


def is_distributed() -> bool:
    """True once :func:`init_distributed` has joined a process group of more than one process."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the job: the process group's size, else ``WORLD_SIZE``, else 1."""
    if is_distributed():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """Global rank of this process (0 in a single process)."""
    if is_distributed():
        return dist.get_rank()
    return _env_int("RANK", 0)


def local_rank() -> int:
    """Rank of this process on its node, which picks its GPU (0 in a single process)."""
    return _env_int("LOCAL_RANK", 0)


def local_world_size() -> int:
    """Processes on this node, which share its CPU cores (1 in a single process)."""
    return _env_int("LOCAL_WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True on rank 0, the only process that prints and writes files."""
    return rank() == 0


def init_distributed(device: torch.device | str = "cpu") -> bool:
    """Join the process group described by the environment, if there is one.

    Returns False and does nothing when ``WORLD_SIZE`` is unset or 1. Otherwise checks that
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` are present and
    consistent, selects this rank's GPU on CUDA, and initialises ``env://`` with NCCL (CUDA) or
    Gloo (CPU). Calling it again after success is a no-op that returns True.
    """
    if is_distributed():
        return True
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return False
    missing = [name for name in _DIST_ENV if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={size} but {', '.join(missing)} not set; launch with torchrun "
            "(it sets all of them) or unset WORLD_SIZE for a single process"
        )
    global_rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= global_rank < size:
        raise ValueError(f"RANK must be in [0, {size}), got {global_rank}; check the launcher")
    device = torch.device(device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower --nproc_per_node to the number of GPUs"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            init_method="env://", world_size=size, rank=global_rank)
    return True


def destroy_distributed() -> None:
    """Leave the process group (no-op when not distributed)."""
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it (returned unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def pick_device(device: str = "auto") -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda"`` to a concrete device for this process.

    ``auto`` means CUDA when available, else CPU. Under a multi-process launch each process gets
    ``cuda:LOCAL_RANK``.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {set(DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu or --device auto"
            )
        return torch.device("cuda", local_rank() if world_size() > 1 else torch.cuda.current_device())
    return torch.device("cpu")


def available_cores() -> int:
    """CPU cores this process may run on (honours affinity masks set by schedulers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the number chosen.

    ``None`` gives every available core to one process, split evenly between the processes that
    share a node under a multi-process launch (never fewer than one).
    """
    if threads is None:
        threads = max(1, available_cores() // max(1, local_world_size()))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    torch.set_num_threads(threads)
    return threads


def seed_all(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (the same seed on every rank, so models start equal)."""
    torch.manual_seed(seed)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_environment(device: torch.device | str) -> dict[str, Any]:
    """JSON-ready record of where a run happened: versions, device, CPU/GPU model, threads, host."""
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "cpu_model": _cpu_model(),
        "cpu_cores": available_cores(),
        "gpu_model": gpu,
        "cuda": torch.version.cuda if gpu else None,
        "threads": torch.get_num_threads(),
        "world_size": world_size(),
        "hostname": socket.gethostname(),
    }
