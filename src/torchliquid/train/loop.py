"""The training loop: the study's workflow on one device, ready for data parallelism.

Workflow (Hasani et al.'s study): evaluate the test split before training; then each epoch train
on shuffled batches, evaluate validation and test; report the final test metrics. ``fit`` below
is that sentence; ``train_step`` is one optimiser step; the :class:`Trainer` is Stateful
(``state_dict``/``load_state_dict``) so a checkpoint restores it exactly.

Host syncs are marked ``# host sync``: one per step for the NaN/Inf guard (every
``finite_check_every`` steps), one per evaluation (metric sums to Python floats), one per
epoch for the timing barrier on CUDA and the epoch's mean training loss.

Distributed-ready: batches come from :class:`EpochBatches` sharded by ``runtime.rank()``, and
metric sums go through ``runtime.all_reduce_sum``. Wrapping the model (DDP) is the caller's job.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Callable, Mapping

import torch

from torchliquid import runtime
from torchliquid.config import TrainConfig
from torchliquid.train.batches import EpochBatches, Split, TrainData, eval_slices
from torchliquid.train.records import (Console, NullConsole, NullRunFiles, RunFiles,
                                       format_seconds, metric_columns, versions)
from torchliquid.train.tasks import Task, get_task


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message says where and what was skipped."""


def model_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` (B, T, I); models that return ``(output, state)`` give ``output``."""
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, split: Split, task: Task, *, batch_size: int,
                   device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """Dataset-level metrics of ``model`` on ``split`` (all ranks' shards, summed exactly)."""
    model.eval()
    sums = torch.zeros(task.n_sums, dtype=torch.float64, device=device)
    for sl in eval_slices(len(split), batch_size, world_size=runtime.world_size(),
                          rank=runtime.rank()):
        x, y = split.x[sl], split.y[sl]
        with autocast(device, precision):
            out = model_output(model, x)
        task.check(out, y)
        sums += task.sums(out, y)
    return task.finish(runtime.all_reduce_sum(sums).tolist())  # host sync


class Trainer:
    """Trains ``model`` on in-memory ``data`` for ``config.epochs`` epochs.

    Args:
        model: any module mapping (B, T, I) to (B, T, O|C), or to a tuple whose first item is.
        data: :class:`TrainData`, or an object with ``.train/.val/.test`` having ``.x/.y``.
        task: "classification" | "regression" or a :class:`Task`.
        config: the :class:`TrainConfig`.
        optimizer: defaults to Adam(lr). If given, the model must already be on the device.
        out_dir: run directory for config/metrics/result/checkpoint files; None writes nothing.
        run_info: JSON-ready description of the run (model spec under "model" with a "name",
            dataset under "dataset", normalisation under "normalization", ...) recorded in
            config.json, result.json and the checkpoint so the run can be rebuilt.
        console, files, clock: collaborators, injectable for tests.
    """

    def __init__(self, model: torch.nn.Module, data: Any, task: str | Task, config: TrainConfig,
                 *, optimizer: torch.optim.Optimizer | None = None, out_dir: str | None = None,
                 run_info: Mapping[str, Any] | None = None, console: Console | None = None,
                 files: RunFiles | None = None, clock: Callable[[], float] = time.perf_counter):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config, self.task, self.clock = config, get_task(task), clock
        self.device = runtime.pick_device(config.device)
        main = runtime.is_main_process()
        self.console = console or (Console() if main and not config.quiet else NullConsole())
        self.files = files or (RunFiles(out_dir) if main and out_dir is not None else NullRunFiles())
        self.model = model.to(self.device)
        if optimizer is None:
            optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        elif any(p.device != self.device for p in self.model.parameters()):
            raise ValueError(f"optimizer was given but the model's parameters are not on "
                             f"{self.device}; move the model before building the optimizer")
        self.optimizer = optimizer
        data = data if isinstance(data, TrainData) else TrainData.from_splits(data)
        self.data = data.to(self.device)
        self.batches = EpochBatches(len(self.data.train), config.batch_size, seed=config.seed,
                                    world_size=runtime.world_size(), rank=runtime.rank(),
                                    device=self.device)
        self.run_info = dict(run_info or {})
        self.epoch, self.step = 0, 0  # completed epochs, optimiser steps
        self.history: list[dict[str, float]] = []
        self.pre_training: dict[str, float] | None = None
        self.train_seconds, self.sequences = 0.0, 0
        self.checkpoint_epoch: int | None = None

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run the study's workflow from ``self.epoch`` (0, or where a checkpoint left off) to
        ``config.epochs``; write the run files; return what ``result.json`` holds."""
        cfg, started, resumed_at = self.config, self.clock(), self.epoch
        self.files.write_config(self.describe())
        if self.pre_training is None:
            self.pre_training = self.evaluate(self.data.test)
            self._print_metrics("before training: test", self.pre_training)
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            train_loss, seconds = self.train_epoch(epoch)
            eval_start = self.clock()
            val, test = self.evaluate_val_test()
            self._end_epoch(epoch, train_loss, val, test, seconds, self.clock() - eval_start)
            eta = (self.clock() - started) / (epoch - resumed_at) * (cfg.epochs - epoch)
            if epoch % cfg.log_every == 0 or epoch == cfg.epochs:
                self._print_epoch(self.history[-1], eta)
            if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
                self.save_checkpoint()
        result = self.result()
        self.files.write_result(result)
        self._print_metrics("after training: test", result["post_training"])
        return result

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over this rank's shard; returns (mean training loss, seconds)."""
        self.model.train()
        self.batches.set_epoch(epoch)
        x_all, y_all = self.data.train.x, self.data.train.y
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        n_seen, start = 0, self.clock()
        for i, idx in enumerate(self.batches):
            check = (i + 1) % self.config.finite_check_every == 0 or i + 1 == len(self.batches)
            loss = self.train_step(x_all[idx], y_all[idx], check_finite=check, epoch=epoch, i=i)
            loss_sum += loss.double() * len(idx)
            n_seen += len(idx)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # host sync: honest epoch timing
        seconds = self.clock() - start
        self.epoch, self.train_seconds = epoch, self.train_seconds + seconds
        self.sequences += n_seen * runtime.world_size()
        return loss_sum.item() / n_seen, seconds  # host sync

    def train_step(self, x: torch.Tensor, y: torch.Tensor, *, check_finite: bool = True,
                   epoch: int = 0, i: int = 0) -> torch.Tensor:
        """Forward, loss, backward, optimiser step; returns the detached mean loss.

        With ``check_finite`` a NaN/Inf loss raises :class:`NonFiniteLossError` before the
        backward pass, so the bad update is never applied.
        """
        with autocast(self.device, self.config.precision):
            out = model_output(self.model, x)
        self.task.check(out, y)
        loss = self.task.loss(out, y)
        if check_finite and not torch.isfinite(loss):  # host sync
            self._stop_non_finite(loss, epoch, i)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def evaluate(self, split: Split) -> dict[str, float]:
        """Metrics of the current model on ``split`` (see :func:`evaluate_split`)."""
        return evaluate_split(self.model, split, self.task, batch_size=self.config.eval_batch,
                              device=self.device, precision=self.config.precision)

    def evaluate_val_test(self) -> tuple[dict[str, float], dict[str, float]]:
        """Validation and test metrics; evaluated once when both splits are the same tensors
        (the sine task uses its one sequence for all three splits)."""
        val, test = self.data.val, self.data.test
        val_metrics = self.evaluate(val)
        same = val.x is test.x and val.y is test.y
        return val_metrics, dict(val_metrics) if same else self.evaluate(test)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimiser, counters, RNG, history."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "rng": rng,
                "sampler": self.batches.state_dict(), "history": list(self.history),
                "pre_training": self.pre_training, "train_seconds": self.train_seconds,
                "sequences": self.sequences}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.batches.load_state_dict(state["sampler"])
        self.history = [dict(row) for row in state["history"]]
        self.pre_training = state["pre_training"]
        self.train_seconds, self.sequences = float(state["train_seconds"]), int(state["sequences"])
        self.checkpoint_epoch = self.epoch

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt (atomically): ``{"trainer": state_dict(), "run_info": JSON}``."""
        self.files.save_checkpoint({"trainer": self.state_dict(),
                                    "run_info": json.dumps(self.describe())})
        self.checkpoint_epoch = self.epoch

    # -- reports -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """config.json: the caller's run_info plus the task, TrainConfig and versions."""
        return {**self.run_info, "task": self.task.name, "train": vars(self.config).copy(),
                "device": str(self.device), "versions": versions()}

    def result(self) -> dict[str, Any]:
        """result.json. post_training is the test evaluation after the last epoch (the final
        weights; evaluating again would give the same numbers)."""
        post = self.history[-1] if self.history else None
        names = self.task.metric_names
        return {
            "pre_training": self.pre_training,
            "post_training": {m: post[f"test_{m}"] for m in names} if post else self.pre_training,
            "train_seconds": self.train_seconds,
            "sequences_per_second": self.sequences / self.train_seconds if self.train_seconds else 0.0,
            "params": count_parameters(self.model),
            "model": self.run_info.get("model", {}).get("name", type(self.model).__name__),
            "dataset": self.run_info.get("dataset", {}).get("name"),
            "task": self.task.name, "metric": self.task.metric,
            "epochs": self.epoch, "batch_size": self.config.batch_size, "lr": self.config.lr,
            "seed": self.config.seed, "environment": runtime.describe_environment(self.device),
        }

    def _end_epoch(self, epoch: int, train_loss: float, val: dict, test: dict, seconds: float,
                   eval_seconds: float) -> None:
        row = {"epoch": epoch, "train_loss": train_loss,
               **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
               "epoch_seconds": seconds, "eval_seconds": eval_seconds,
               "sequences_per_second": len(self.data.train) / seconds if seconds else 0.0}
        self.history.append(row)
        self.files.write_metrics(self.history, metric_columns(self.task.metric_names))

    def _print_epoch(self, row: Mapping[str, float], eta: float) -> None:
        m = self.task.metric
        self.console.print(
            f"epoch {row['epoch']}/{self.config.epochs}  train_loss {row['train_loss']:.4g}  "
            f"val_loss {row['val_loss']:.4g}  val_{m} {row[f'val_{m}']:.4g}  "
            f"test_loss {row['test_loss']:.4g}  test_{m} {row[f'test_{m}']:.4g}  "
            f"{row['sequences_per_second']:,.0f} seq/s  ETA {format_seconds(eta)}")

    def _print_metrics(self, label: str, metrics: Mapping[str, float]) -> None:
        self.console.print(f"{label}  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _stop_non_finite(self, loss: torch.Tensor, epoch: int, i: int) -> None:
        every = self.config.finite_check_every
        last = (f"the last checkpoint ({self.files.checkpoint_path}) holds epoch "
                f"{self.checkpoint_epoch}" if self.checkpoint_epoch is not None
                else "no checkpoint was written by this run")
        raise NonFiniteLossError(
            f"training stopped: the {self.task.loss_name} loss is {loss.item()} at epoch "
            f"{epoch}/{self.config.epochs}, step {i + 1}/{len(self.batches)} of the epoch "
            f"(global step {self.step + 1})"
            + (f"; losses are checked every {every} steps, so it may have gone bad up to "
               f"{every - 1} steps earlier" if every > 1 else "")
            + f"; this step's update was skipped and training ended; {last}. Try a lower lr, "
            "or check the inputs and targets for NaN/Inf")


def fit(model: torch.nn.Module, data: Any, task: str | Task, config: TrainConfig,
        **kwargs: Any) -> dict[str, Any]:
    """Train ``model`` with :class:`Trainer` (same arguments) and return the result dict."""
    return Trainer(model, data, task, config, **kwargs).fit()
