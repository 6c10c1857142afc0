"""Profile a few training steps with cProfile or torch.profiler.

Self-contained on purpose (standard library + torch, no torchliquid imports): it lives in
``monitor`` so that ``torchliquid train --profile`` can use it without the training side importing
``torchliquid.experiments`` (see tests/test_layering.py).

Usage from a trainer::

    info = profile_steps(lambda: trainer.train_step(next(batches)), kind="torch",
                         warmup=5, steps=20, out_dir=run_dir / "profile")

Files written to ``out_dir``:

    cprofile: profile_cprofile.txt    top functions by cumulative time (pstats)
              profile_cprofile.prof   raw stats (``python -m pstats`` / snakeviz)
    torch:    profile_torch.txt       top operators by self CPU time, then by self CUDA time
                                      when CUDA is present
              trace_torch.json        Chrome trace (chrome://tracing, ui.perfetto.dev)
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from pathlib import Path
from typing import Any, Callable

from torchliquid._atomic import atomic_write

KINDS = ("cprofile", "torch")
TOP = 40  # rows of each table: enough to see past the framework's own frames


def profile_steps(step_fn: Callable[[], Any], kind: str = "cprofile", warmup: int = 3, steps: int = 10,
                  out_dir: str | os.PathLike[str] = "profile") -> dict[str, Any]:
    """Run ``step_fn`` ``warmup`` times unprofiled, then ``steps`` times under a profiler.

    Args:
        step_fn: one training step (forward, backward, optimiser step); its return value is ignored.
        kind: ``"cprofile"`` (Python functions) or ``"torch"`` (operators, CPU and CUDA kernels).
        warmup: unprofiled steps first, so one-off costs (allocator growth, cuDNN autotuning,
            lazy init) do not dominate the tables.
        steps: profiled steps (>= 1).
        out_dir: folder for the files listed in the module docstring (created).

    Returns:
        ``{"kind", "warmup", "steps", "seconds", "seconds_per_step", "files": {name: path}}``,
        where ``seconds`` is the wall time of the profiled steps (profiler overhead included).

    Raises:
        ValueError: unknown ``kind`` or negative/zero counts.
    """
    if kind not in KINDS:
        raise ValueError(f"profile kind must be one of {list(KINDS)}, got {kind!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(warmup):
        step_fn()
    _sync()
    runner = _cprofile if kind == "cprofile" else _torch_profile
    seconds, files = runner(step_fn, steps, out)
    return {"kind": kind, "warmup": warmup, "steps": steps, "seconds": seconds,
            "seconds_per_step": seconds / steps, "files": {k: str(v) for k, v in files.items()}}


def _sync() -> None:
    """Wait for queued CUDA work so it is charged to the right phase (a host sync)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _cprofile(step_fn: Callable[[], Any], steps: int, out: Path) -> tuple[float, dict[str, Path]]:
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        step_fn()
    _sync()
    prof.disable()
    seconds = time.perf_counter() - start
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("cumulative")
    buf.write(f"cProfile of {steps} step(s), {seconds:.4f} s wall; top {TOP} functions by cumulative time\n")
    stats.print_stats(TOP)
    text_path, raw_path = out / "profile_cprofile.txt", out / "profile_cprofile.prof"
    _write(text_path, buf.getvalue())
    prof.dump_stats(str(raw_path))
    return seconds, {"text": text_path, "stats": raw_path}


def _torch_profile(step_fn: Callable[[], Any], steps: int, out: Path) -> tuple[float, dict[str, Path]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(steps):
            step_fn()
        _sync()
    seconds = time.perf_counter() - start
    averages = prof.key_averages()
    parts = [f"torch.profiler of {steps} step(s), {seconds:.4f} s wall\n",
             f"Top {TOP} operators by self CPU time\n", averages.table(sort_by="self_cpu_time_total", row_limit=TOP)]
    if cuda:
        # The sort key was renamed to "device" in torch 2.4; try the new name first.
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                table = averages.table(sort_by=key, row_limit=TOP)
            except (AttributeError, KeyError, ValueError):
                continue
            parts += [f"\nTop {TOP} operators by self CUDA time\n", table]
            break
    text_path, trace_path = out / "profile_torch.txt", out / "trace_torch.json"
    _write(text_path, "\n".join(parts))
    prof.export_chrome_trace(str(trace_path))
    return seconds, {"text": text_path, "trace": trace_path}


def _write(path: Path, text: str) -> None:
    with atomic_write(path) as handle:  # never a half-written table under the final name
        handle.write(text)
