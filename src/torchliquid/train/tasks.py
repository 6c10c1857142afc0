"""Tasks: the loss to train on and the metrics to report, one registry entry per kind of target.

Shape legend: B batch, T time steps, C classes, O output features.

Both tasks are sequence-to-sequence with a target at every step, as in the study:

=================  ===========================  ===================  ==========================
task               model output                 target               metrics (test/val)
=================  ===========================  ===================  ==========================
classification     logits (B, T, C) float       class ids (B, T)     loss (cross-entropy),
                                                int64                accuracy
regression         prediction (B, T, O) float   (B, T, O) float      loss (= mse), mse, mae
=================  ===========================  ===================  ==========================

Metrics are computed from per-batch *sums* (float64) that add across batches and across
processes, so a dataset-level metric does not depend on the batch size or on how the data was
sharded, and reducing them under DDP is one ``all_reduce_sum``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def _check_classification(out_BTC: torch.Tensor, y_BT: torch.Tensor) -> None:
    if y_BT.dtype != torch.int64:
        raise TypeError(f"classification targets must be int64 class ids, got {y_BT.dtype}; "
                        "convert labels with .long()")
    if out_BTC.dim() != 3 or out_BTC.shape[:2] != y_BT.shape:
        raise ValueError(
            f"model output must be logits (B, T, C) = {tuple(y_BT.shape)} + (C,) for targets "
            f"(B, T) = {tuple(y_BT.shape)}, got {tuple(out_BTC.shape)}; build the model with "
            "output_size = number of classes and return_sequences=True")


def _check_regression(out_BTO: torch.Tensor, y_BTO: torch.Tensor) -> None:
    if not y_BTO.is_floating_point():
        raise TypeError(f"regression targets must be floating point, got {y_BTO.dtype}")
    if out_BTO.shape != y_BTO.shape:
        raise ValueError(
            f"model output must have the targets' shape (B, T, O) = {tuple(y_BTO.shape)}, got "
            f"{tuple(out_BTO.shape)}; build the model with output_size = target features and "
            "return_sequences=True")


def _ce_loss(out_BTC: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out_BTC.float().flatten(0, 1), y_BT.flatten())


def _ce_sums(out_BTC: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
    """(3,) float64: summed cross-entropy, correct predictions, labelled steps."""
    out = out_BTC.float().flatten(0, 1)
    y = y_BT.flatten()
    ce = F.cross_entropy(out, y, reduction="none").double().sum()
    correct = (out.argmax(-1) == y).sum().double()
    return torch.stack([ce, correct, ce.new_tensor(float(y.numel()))])


def _ce_finish(sums: list[float]) -> dict[str, float]:
    ce, correct, n = sums
    return {"loss": ce / n, "accuracy": correct / n}


def _mse_loss(out_BTO: torch.Tensor, y_BTO: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out_BTO.float(), y_BTO.float())


def _mse_sums(out_BTO: torch.Tensor, y_BTO: torch.Tensor) -> torch.Tensor:
    """(3,) float64: summed squared error, summed absolute error, target elements."""
    err = out_BTO.double() - y_BTO.double()
    return torch.stack([err.square().sum(), err.abs().sum(), err.new_tensor(float(err.numel()))])


def _mse_finish(sums: list[float]) -> dict[str, float]:
    se, ae, n = sums
    return {"loss": se / n, "mse": se / n, "mae": ae / n}


@dataclass(frozen=True)
class Task:
    """A loss for training plus additive metric sums for evaluation.

    Attributes:
        name: registry key.
        loss_name: what ``loss`` computes, for messages.
        metric: the headline metric shown in progress lines and the demo table.
        higher_is_better: direction of ``metric``.
        loss: (output, target) -> scalar mean loss to backpropagate.
        sums: (output, target) -> (K,) float64 tensor of sums that add over batches/processes.
        finish: the K reduced sums (Python floats) -> {metric name: value}, always with "loss".
        check: (output, target) -> None, raising a ValueError/TypeError that says what's wrong.
        n_sums: K, the length of what ``sums`` returns.
    """

    name: str
    loss_name: str
    metric: str
    higher_is_better: bool
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    sums: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    finish: Callable[[list[float]], dict[str, float]]
    check: Callable[[torch.Tensor, torch.Tensor], None]
    n_sums: int = 3

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Names ``finish`` returns, "loss" first (e.g. loss, mse, mae)."""
        return tuple(self.finish([1.0] * self.n_sums))


TASKS: dict[str, Task] = {
    "classification": Task("classification", "cross-entropy", "accuracy", True,
                           _ce_loss, _ce_sums, _ce_finish, _check_classification),
    "regression": Task("regression", "mse", "mae", False,
                       _mse_loss, _mse_sums, _mse_finish, _check_regression),
}


def get_task(task: str | Task) -> Task:
    """Look up a task by name (a :class:`Task` passes through)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"task must be one of {set(TASKS)}, got {task!r}")
    return TASKS[task]
