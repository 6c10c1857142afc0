"""Process runtime: devices, threads, seeds and the only door to ``torch.distributed``.

Everything that depends on how the process was launched lives here, detected from the
environment, so the rest of the package never branches on "am I distributed?". Every helper is a
no-op (or returns the trivial answer) in a single process, which is how the tests and the CLI
run by default.

Launch:
    one process, CPU or one GPU:   torchliquid train --model cfc --dataset sine
    one node, 4 GPUs:              torchrun --standalone --nproc-per-node 4 -m torchliquid train ...
    CPU, 2 processes (Gloo):       torchrun --standalone --nproc-per-node 2 -m torchliquid train \
                                       --device cpu ...
    two nodes (run on each):       torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \
                                       --rdzv-endpoint HOST:29500 --max-restarts 3 \
                                       -m torchliquid train ...
    the console script:            torchrun --nproc-per-node 2 --no-python torchliquid train ...

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT`` (and ``TORCHELASTIC_RESTART_COUNT``); :func:`init_distributed` validates them
and joins the process group (``env://``; NCCL on CUDA, Gloo on CPU, or the ``backend`` asked
for). Under a launcher the group is joined even with one process, so
``torchrun --nproc-per-node 1 ... --device cuda`` exercises NCCL and ``cuda:LOCAL_RANK``.

Data parallelism is applied from outside the model: :func:`data_parallel` wraps it in
``DistributedDataParallel`` (parameters broadcast from rank 0 at construction, gradients
averaged in backward) and returns it unchanged in one process.
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
BACKENDS = ("auto", "nccl", "gloo")
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


def launched() -> bool:
    """True when a launcher (torchrun) set every process-group variable, even for one process."""
    return all(os.environ.get(name) for name in _DIST_ENV)


def restart_count() -> int:
    """How many times torchrun's elastic agent restarted this job (0 on the first attempt)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), or None in a single process."""
    return str(dist.get_backend()) if is_distributed() else None


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``"auto"`` -> NCCL on CUDA, Gloo on CPU; an explicit choice is checked against the device."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {set(BACKENDS)}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"backend 'nccl' needs CUDA tensors but the device is {device}; use "
                         "--backend gloo (or auto) on CPU, or --device cuda")
    return backend


def is_main_process() -> bool:
    """True on rank 0, the only process that prints and writes files."""
    return rank() == 0


def init_distributed(device: torch.device | str = "cpu", backend: str = "auto") -> bool:
    """Join the process group described by the environment, if there is one.

    Returns False and does nothing in a plain single process (``WORLD_SIZE`` unset or 1 and no
    launcher). Otherwise checks that ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
    ``MASTER_PORT`` are present and consistent, selects this rank's GPU on CUDA, and initialises
    ``env://`` with ``backend`` (see :func:`resolve_backend`). Calling it again after success is
    a no-op that returns True.
    """
    if is_distributed():
        return True
    size = _env_int("WORLD_SIZE", 1)
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {size}; check the launcher")
    if size == 1 and not launched():
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
    if not 0 <= local < local_world_size() and "LOCAL_WORLD_SIZE" in os.environ:
        raise ValueError(f"LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE={local_world_size()}), "
                         f"got {local}; check the launcher")
    device = torch.device(device)
    name = resolve_backend(backend, device)
    options: dict[str, Any] = {}
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower --nproc-per-node to the number of GPUs"
            )
        torch.cuda.set_device(local)
        if name == "nccl":
            # Binds the group to this rank's GPU: NCCL connects eagerly and collectives never
            # have to guess the device (a wrong guess hangs, two ranks on one GPU).
            options["device_id"] = torch.device("cuda", local)
    # The env:// store outlives a torchrun restart (the agent hosts it), and a restarted
    # worker would read the dead workers' addresses left in it and fail to connect (seen with
    # Gloo on torch 2.13) or wait forever. Keys of each attempt get their own prefix, as
    # torchelastic itself used to do.
    store, _, _ = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"torchliquid/attempt_{restart_count()}/", store)
    dist.init_process_group(backend=name, store=store, world_size=size, rank=global_rank,
                            **options)
    return True


def destroy_distributed(synchronize: bool = False) -> None:
    """Leave the process group (no-op when not distributed).

    ``synchronize=True`` (after a successful run) first waits until every rank is done: gloo
    aborts a process whose peer closes its connections under it ("terminate called without an
    active exception"). A failing rank leaves without waiting, so its peers fail fast instead of
    hanging in the barrier.
    """
    if is_distributed():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it (returned unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if is_distributed():
        if backend() == "nccl":  # NCCL's barrier is a collective on this rank's GPU
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the others pass anything, e.g. None); ``obj`` in one
    process. Used to share what only rank 0 can see: the run directory's files."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel under a process group, else ``model`` itself.

    DDP broadcasts rank 0's parameters and buffers once, here, and averages gradients during
    ``backward``. Buffers are not re-sent before every forward: the models' buffers are
    constant wiring masks, equal on every rank (built from the same seed).
    """
    if not is_distributed():
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch 2.13 renamed the per-forward switch (the old name now warns); older torch has only it.
    no_resync = ({"forward_sync_buffers": False}
                 if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                 else {"broadcast_buffers": False})
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_resync)


def pick_device(device: str = "auto") -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda"`` to a concrete device for this process.

    ``auto`` means CUDA when available, else CPU. Under a launcher (torchrun) each process gets
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
        under_launcher = world_size() > 1 or launched()
        return torch.device("cuda", local_rank() if under_launcher else torch.cuda.current_device())
    return torch.device("cpu")


def available_cores() -> int:
    """CPU cores this process may run on (honours affinity masks set by schedulers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Available cores minus those kept busy by other work (1-minute load average), at least 1.

    Intra-op threads that outnumber free cores wait on each other at every parallel region; for
    the small matrices of a recurrent step on a busy 2-core machine that is 5-20x slower than
    one thread (measured with a second process at 100% of one core).
    """
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return available_cores()
    return max(1, available_cores() - int(busy + 0.5))


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


def set_deterministic(enabled: bool = True) -> None:
    """``torch.use_deterministic_algorithms(enabled)``; on CUDA cuBLAS also needs a fixed
    workspace, which must be set before the first cuBLAS call (so call this early)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


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
        "backend": backend(),
        "hostname": socket.gethostname(),
    }
