"""Where a run reports: the console and the run directory, each with a null object.

``quiet`` runs, non-zero ranks and in-memory runs (no ``out_dir``) get the null versions, so the
trainer never asks "should I print / write?".

Run directory layout (all written atomically)::

    config.json   everything needed to rerun: run_info from the caller (model spec, dataset,
                  resolved RunConfig, command line), the task, the TrainConfig, versions
    metrics.csv   one row per epoch (see METRIC_COLUMNS)
    result.json   pre/post-training test metrics, timing, params, environment, world size,
                  backend, and the hardware monitor's summary (merged over ranks under DDP)
    checkpoint.pt the trainer's state_dict plus run_info (see train.checkpoint), written by
                  rank 0 every epoch and every ``checkpoint_steps`` steps
    checkpoint.prev.pt  the checkpoint before it, the fallback when the newest is damaged
    samples.csv   the monitor's raw series (``samples.rank{r}.csv``, one per rank, under DDP;
                  written by each rank)
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from torchliquid.train.checkpoint import save_checkpoint, write_csv, write_json

CONFIG, METRICS, RESULT, CHECKPOINT = "config.json", "metrics.csv", "result.json", "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"


def samples_name(rank: int, world_size: int) -> str:
    """The monitor's samples file of ``rank``: one file per rank when there are several."""
    return "samples.csv" if world_size == 1 else f"samples.rank{rank}.csv"


def versions() -> dict[str, str]:
    """Library versions that determine a run's numbers."""
    from torchliquid import __version__

    return {"torchliquid": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def metric_columns(metric_names: Sequence[str]) -> list[str]:
    """metrics.csv header for a task whose metrics are ``metric_names`` ("loss" first)."""
    split_cols = [f"{split}_{m}" for split in ("val", "test") for m in metric_names]
    return ["epoch", "train_loss", *split_cols, "epoch_seconds", "eval_seconds",
            "sequences_per_second"]


class Console:
    """Progress lines on stdout (flushed, so they show up under pipes and torchrun)."""

    def print(self, message: str) -> None:
        print(message, flush=True)


class NullConsole(Console):
    def print(self, message: str) -> None:
        pass


class RunFiles:
    """The files of one run directory."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.dir / CHECKPOINT

    def write_config(self, info: Mapping[str, Any]) -> None:
        write_json(self.dir / CONFIG, info)

    def write_metrics(self, rows: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
        write_csv(self.dir / METRICS, rows, columns)

    def write_result(self, result: Mapping[str, Any]) -> None:
        write_json(self.dir / RESULT, result)

    def save_checkpoint(self, payload: Mapping[str, Any]) -> Path | None:
        return save_checkpoint(self.dir / CHECKPOINT, payload,
                               previous=self.dir / PREVIOUS_CHECKPOINT)


class NullRunFiles(RunFiles):
    """Writes nothing: in-memory runs and every rank but 0."""

    def __init__(self) -> None:
        self.dir = None  # type: ignore[assignment]

    @property
    def checkpoint_path(self) -> Path | None:
        return None

    def write_config(self, info: Mapping[str, Any]) -> None:
        pass

    def write_metrics(self, rows: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
        pass

    def write_result(self, result: Mapping[str, Any]) -> None:
        pass

    def save_checkpoint(self, payload: Mapping[str, Any]) -> Path | None:
        return None


class EpochProgress:
    """A line every ``EVERY_S`` seconds inside a long epoch (batch, running training loss, rate,
    the epoch's ETA), so a slow epoch (an LTC at batch 1, a CPU run of a big matrix cell) shows
    it is alive long before its end-of-epoch line. Costs one clock read per step otherwise."""

    EVERY_S = 30.0

    def __init__(self, console: Console, epoch: int, epochs: int, n_batches: int, first_batch: int,
                 seen_before: int, world_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        # Its own clock: the trainer's (injectable) clock times epochs, and reading it here
        # would shift what it measures.
        self.console, self.clock, self.every = console, clock, EpochProgress.EVERY_S
        self.epoch, self.epochs, self.n_batches, self.first = epoch, epochs, n_batches, first_batch
        self.seen_before, self.world, self.start = seen_before, world_size, clock()
        self.last = self.start

    def update(self, batches_done: int, loss_sum: Any, n_seen: int) -> None:
        if isinstance(self.console, NullConsole):
            return
        now = self.clock()
        if now - self.last < self.every or batches_done >= self.n_batches:
            return
        self.last, elapsed = now, now - self.start
        done_here = batches_done - self.first
        eta = elapsed / max(done_here, 1) * (self.n_batches - batches_done)
        rate = (n_seen - self.seen_before) * self.world / max(elapsed, 1e-9)
        loss = float(loss_sum) / max(n_seen, 1)  # host sync, once per line
        self.console.print(f"epoch {self.epoch}/{self.epochs}  batch {batches_done}/{self.n_batches}  "
                           f"train_loss {loss:.4g}  {rate:,.0f} seq/s  epoch ETA {format_seconds(eta)}")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


