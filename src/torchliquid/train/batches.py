"""In-memory splits and the batches sliced from them.

The study's datasets fit in memory many times over, so each split is ONE tensor pair on the
training device and a batch is an index into it: no per-sample DataLoader, no worker processes,
no host-to-device copy per step.

:class:`EpochBatches` follows the ``torch.utils.data.DistributedSampler`` contract so that the
multi-process version is this class with ``world_size``/``rank`` set: a permutation seeded by
``(seed, epoch)`` (call :meth:`EpochBatches.set_epoch` each epoch), padded by wrapping around to
a multiple of ``world_size``, and strided by rank so that ranks see disjoint shards of equal
length. Evaluation uses :func:`eval_slices`: contiguous, unpadded shards, because padding would
count some sequences twice in a metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


@dataclass
class Split:
    """One split: inputs ``x`` (N, T, I) float and targets ``y`` (N, T, O) float or (N, T) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        self.x, self.y = _as_tensor(self.x, "x"), _as_tensor(self.y, "y")
        if self.x.dim() != 3 or not self.x.is_floating_point():
            raise ValueError(f"x must be a float tensor (N, T, I), got {self.x.dtype} "
                             f"{tuple(self.x.shape)}")
        if self.y.dim() not in (2, 3) or self.y.shape[:2] != self.x.shape[:2]:
            raise ValueError(f"y must be (N, T) class ids or (N, T, O) targets matching x "
                             f"{tuple(self.x.shape[:2])}, got {tuple(self.y.shape)}")
        if len(self.x) == 0:
            raise ValueError("a split must hold at least one sequence, got 0; check max_windows")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class TrainData:
    """The three splits a run needs, already on one device."""

    train: Split
    val: Split
    test: Split

    @classmethod
    def from_splits(cls, splits: Any, device: torch.device | str = "cpu") -> "TrainData":
        """Build from any object with ``.train/.val/.test`` each having ``.x`` and ``.y``
        (the dataset loaders' splits, numpy or torch), moved to ``device`` once."""
        parts = {}
        for name in ("train", "val", "test"):
            part = getattr(splits, name, None)
            if part is None or not hasattr(part, "x") or not hasattr(part, "y"):
                raise TypeError(f"splits.{name} must have .x and .y, got {type(part).__name__}; "
                                "pass the object returned by torchliquid.data.load_dataset")
            parts[name] = Split(part.x, part.y).to(torch.device(device))
        return cls(**parts)

    def to(self, device: torch.device | str) -> "TrainData":
        device = torch.device(device)
        return TrainData(self.train.to(device), self.val.to(device), self.test.to(device))


class EpochBatches:
    """Training batches of indices: a seeded permutation per epoch, sharded by rank.

    Args:
        n: sequences in the split.
        batch_size: sequences per batch on this rank (the last batch may be smaller unless
            ``drop_last``).
        seed: base seed; the permutation of epoch ``e`` depends only on ``(seed, e)``, so a run
            resumed at epoch ``e`` sees the same batches as one that never stopped.
        world_size, rank: shard the permutation as DistributedSampler does.
        shuffle: False keeps the order 0..n-1 (still padded and sharded).
        drop_last: drop this rank's final incomplete batch.
        device: where the yielded index tensors live (the data's device); the permutation is
            drawn on the CPU so it is the same on every device type.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, world_size: int = 1,
                 rank: int = 0, shuffle: bool = True, drop_last: bool = False,
                 device: torch.device | str = "cpu") -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.world_size, self.rank = world_size, rank
        self.shuffle, self.drop_last = shuffle, drop_last
        self.device = torch.device(device)
        self.epoch = 0
        self.shard_size = -(-n // world_size)  # ceil: every rank gets the same number

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating, every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's (shard_size,) int64 indices for the current epoch, on the CPU."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        total = self.shard_size * self.world_size
        if total > self.n:  # wrap around, as DistributedSampler pads
            order = torch.cat([order, order.repeat(-(-total // self.n))[: total - self.n]])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[torch.Tensor]:
        """This epoch's batches from batch ``start`` on (a run resumed mid-epoch skips the
        batches its checkpoint already trained on)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}] batches, got {start}")
        idx = self.indices().to(self.device, non_blocking=True)  # one copy per epoch
        for i in range(start, len(self)):
            yield idx[i * self.batch_size : (i + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


def gather_batch(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``(x[idx], y[idx])`` by ``index_select``: the same rows, but ~4x faster on CPU
    than advanced indexing, which walks the (T, I) block of each row element by element (440 vs
    113 µs for a HAR batch of 64 x 16 x 561 gathered from fresh rows, ~7 % of its training step)."""
    return x.index_select(0, idx), y.index_select(0, idx)


def eval_slices(n: int, batch_size: int, *, world_size: int = 1, rank: int = 0) -> list[slice]:
    """Contiguous batches of this rank's unpadded shard ``[rank*n//W, (rank+1)*n//W)``.

    Slices are views (no copy) and, summed over ranks, cover every sequence exactly once.
    """
    start, stop = rank * n // world_size, (rank + 1) * n // world_size
    return [slice(i, min(i + batch_size, stop)) for i in range(start, stop, batch_size)]
