"""Hardware monitoring around ``Trainer.fit``: one sampler per process, one summary per run.

Each rank samples its own GPU (``cuda:LOCAL_RANK``) and its host, writes its raw series to the
run directory (``samples.csv``, or ``samples.rank{r}.csv`` under DDP), and sends its summary to
every rank, where :func:`torchliquid.monitor.merge_rank_summaries` keys the devices by rank
(``rank1/gpu1``, ``rank0/host``). A disabled monitor (interval 0) records ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchliquid import runtime
from torchliquid.monitor import HardwareMonitor, merge_rank_summaries
from torchliquid.train.records import samples_name


def open_monitor(interval: float, device: torch.device) -> HardwareMonitor | None:
    """A monitor of this process's GPU (if on CUDA) and host every ``interval`` s; None if 0."""
    if interval <= 0:
        return None
    return HardwareMonitor(interval=interval,
                           devices=[device.index or 0] if device.type == "cuda" else None)


def finish_monitor(monitor: HardwareMonitor | None, out_dir: Path | None) -> dict[str, Any] | None:
    """Stop ``monitor``, write this rank's samples, return the run's summary (collective under
    DDP: every rank must call it, monitor or not, as it gathers the summaries)."""
    summary = None
    if monitor is not None:
        monitor.stop()
        if out_dir is not None:
            monitor.write_samples_csv(out_dir / samples_name(runtime.rank(),
                                                             runtime.world_size()))
        summary = monitor.summary()
    summaries = runtime.all_gather_object(summary)  # collective: host sync
    if any(s is None for s in summaries):
        return None
    return summaries[0] if len(summaries) == 1 else merge_rank_summaries(summaries)
