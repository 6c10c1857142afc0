"""The training loop: the study's workflow on one device, ready for data parallelism.

Workflow (Hasani et al.'s study): evaluate the test split before training; then each epoch train
on shuffled batches, evaluate validation and test; report the final test metrics. ``fit`` below
is that sentence; ``train_step`` is one optimiser step; the :class:`Trainer` is Stateful
(``state_dict``/``load_state_dict``) so a checkpoint restores it exactly.

Host syncs are marked ``# host sync``: one per step for the NaN/Inf guard (every
``finite_check_every`` steps), one per evaluation (metric sums to Python floats), one per
epoch for the timing barrier on CUDA and the epoch's mean training loss, and one per checkpoint.
With ``cuda_graphs`` each full batch replays one captured step (:mod:`torchliquid.train.graphs`).

Data parallel under torchrun (see :mod:`torchliquid.runtime`): the Trainer trains
``runtime.data_parallel(model)`` (DDP; identical to ``model`` in one process) on this rank's
shard of each epoch's permutation (:class:`EpochBatches`), evaluates the unwrapped model on
unpadded shards and all-reduces the metric sums, so every number equals what one process
computes on the whole split. Only rank 0 prints and writes run files; every rank runs the
collectives (checkpoints gather each rank's RNG state and epoch position, so a run continues
bit for bit, mid-epoch included; see ``state_dict``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from torchliquid import runtime
from torchliquid.config import TrainConfig
from torchliquid.monitor import HardwareMonitor
from torchliquid.train import graphs
from torchliquid.train.batches import EpochBatches, Split, TrainData, gather_batch
from torchliquid.train.evaluate import evaluate_split
from torchliquid.train.faults import FaultInjector
from torchliquid.train.forward import autocast, model_output
from torchliquid.train.monitoring import finish_monitor, open_monitor
from torchliquid.train.optim import adam
from torchliquid.train.records import (Console, EpochProgress, NullConsole, NullRunFiles, RunFiles,
                                       format_seconds, metric_columns, versions)
from torchliquid.train.tasks import Task, get_task


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message says where and what was skipped."""


def _trainable_entries(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Trainer:
    """Trains ``model`` on in-memory ``data`` for ``config.epochs`` epochs.

    Args:
        model: any module mapping (B, T, I) to (B, T, O|C), or to a tuple whose first item is.
        data: :class:`TrainData`, or an object with ``.train/.val/.test`` having ``.x/.y``.
        task: "classification" | "regression" or a :class:`Task`.
        config: the :class:`TrainConfig`.
        optimizer: defaults to :func:`torchliquid.train.optim.adam` at ``config.scaled_lr(world_size)``. If given, the model must
            already be on the device.
        out_dir: run directory for config/metrics/result/checkpoint files; None writes nothing.
        run_info: JSON-ready description of the run (model spec under "model" with a "name",
            dataset under "dataset", normalisation under "normalization", ...) recorded in
            config.json, result.json and the checkpoint so the run can be rebuilt.
        console, files, clock: collaborators, injectable for tests.
        monitor: a :class:`HardwareMonitor` to run during ``fit`` (not started); None builds
            one from ``config.monitor_interval`` (0: no monitoring).
    """

    def __init__(self, model: torch.nn.Module, data: Any, task: str | Task, config: TrainConfig,
                 *, optimizer: torch.optim.Optimizer | None = None, out_dir: str | None = None,
                 run_info: Mapping[str, Any] | None = None, console: Console | None = None,
                 files: RunFiles | None = None, clock: Callable[[], float] = time.perf_counter,
                 monitor: HardwareMonitor | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config, self.task, self.clock = config, get_task(task), clock
        self.device = runtime.pick_device(config.device)
        main = runtime.is_main_process()
        self.console = console or (Console() if main and not config.quiet else NullConsole())
        self.files = files or (RunFiles(out_dir) if main and out_dir is not None else NullRunFiles())
        self.out_dir = Path(out_dir) if out_dir is not None else None  # every rank's samples
        self.model = model.to(self.device)
        self.train_model = runtime.data_parallel(self.model, self.device)  # DDP or model itself
        if optimizer is None:
            optimizer = adam(self.model.parameters(), lr=config.scaled_lr(runtime.world_size()))
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
        self.checkpoint_step: int | None = None
        # Where training stands inside the epoch after self.epoch: None at an epoch boundary,
        # else {"epoch", "batch", "loss_sum", "n_seen", "seconds"} (this rank's partial sums).
        self.position: dict[str, Any] | None = None
        self.monitor = monitor if monitor is not None else open_monitor(config.monitor_interval,
                                                                        self.device)
        self.monitor_summary: dict[str, Any] | None = None
        self.faults = FaultInjector()
        self.graph = graphs.for_trainer(config.cuda_graphs, self.device, runtime.world_size(),
                                        self.optimizer, self.forward_loss, config.batch_size)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run the study's workflow from ``self.epoch`` (0, or where a checkpoint left off) to
        ``config.epochs``; write the run files; return what ``result.json`` holds."""
        started, resumed_at = self.clock(), self.epoch
        self.files.write_config(self.describe())
        if self.pre_training is None:
            self.pre_training = self.evaluate(self.data.test)
            self._print_metrics("before training: test", self.pre_training)
        if self.monitor is not None:
            self.monitor.start()
        try:
            self._train_epochs(started, resumed_at)
            if self.epoch == 0:  # --epochs 0: the untrained model, so evaluate/predict/export work
                self.save_checkpoint()
        finally:  # a failed run must not leave a sampling thread behind
            if self.monitor is not None:
                self.monitor.stop()
        self.monitor_summary = finish_monitor(self.monitor, self.out_dir)
        result = self.result()
        self.files.write_result(result)
        self._print_metrics("after training: test", result["post_training"])
        return result

    def _train_epochs(self, started: float, resumed_at: int) -> None:
        cfg = self.config
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

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over this rank's shard (the rest of it when resumed mid-epoch); returns the
        mean training loss over all ranks' batches (padding included) and the seconds taken."""
        self.train_model.train()
        self.batches.set_epoch(epoch)
        x_all, y_all = self.data.train.x, self.data.train.y
        resume = self.position or {"epoch": epoch, "batch": 0, "loss_sum": 0.0, "n_seen": 0,
                                   "seconds": 0.0}
        if resume["epoch"] != epoch:
            raise ValueError(f"the checkpoint stopped inside epoch {resume['epoch']} but training "
                             f"continues with epoch {epoch}; the checkpoint is inconsistent")
        self.position = None
        loss_sum = torch.tensor(resume["loss_sum"], dtype=torch.float64, device=self.device)
        n_seen, before, start = int(resume["n_seen"]), float(resume["seconds"]), self.clock()
        every, n_batches = self.config.checkpoint_steps, len(self.batches)
        progress = EpochProgress(self.console, epoch, self.config.epochs, n_batches, int(resume["batch"]),
                                 n_seen, runtime.world_size())
        for i, idx in enumerate(self.batches.iter_from(int(resume["batch"])), int(resume["batch"])):
            check = (i + 1) % self.config.finite_check_every == 0 or i + 1 == n_batches
            loss = self.train_step(*gather_batch(x_all, y_all, idx), check_finite=check, epoch=epoch, i=i)
            loss_sum += loss.double() * len(idx)
            n_seen += len(idx)
            if every and self.step % every == 0 and i + 1 < n_batches:  # the epoch's end has its own
                self.position = {"epoch": epoch, "batch": i + 1, "loss_sum": loss_sum.item(),
                                 "n_seen": n_seen, "seconds": before + self.clock() - start}
                self.save_checkpoint()  # host sync
                self.position = None
            self.faults.after_step(self.step)
            progress.update(i + 1, loss_sum, n_seen)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # host sync: honest epoch timing
        seconds = before + self.clock() - start
        self.epoch, self.train_seconds = epoch, self.train_seconds + seconds
        self.sequences += n_seen * runtime.world_size()
        totals = torch.stack([loss_sum, loss_sum.new_tensor(float(n_seen))])
        loss_total, seen_total = runtime.all_reduce_sum(totals).tolist()  # host sync
        return loss_total / seen_total, seconds

    def train_step(self, x: torch.Tensor, y: torch.Tensor, *, check_finite: bool = True,
                   epoch: int = 0, i: int = 0) -> torch.Tensor:
        """Forward, loss, backward, optimiser step; returns the detached mean loss.

        With ``check_finite`` a NaN/Inf loss raises :class:`NonFiniteLossError` before the
        backward pass, so the bad update is never applied. With ``config.cuda_graphs`` full
        batches replay the captured step, which skips such an update on the GPU (graphs.py).
        """
        if self.graph is not None and self.graph.covers(x, y):
            loss = self.graph.step(x, y)
            if check_finite and self.graph.bad_steps().item():  # host sync
                self._stop_non_finite(loss, epoch, i)
            self.step += 1
            return loss
        loss = self.forward_loss(x, y)
        if check_finite:
            # Under DDP every rank must take the same branch, or the healthy ones would wait
            # forever in backward's all-reduce: count the ranks with a bad loss.
            bad = runtime.all_reduce_sum((~torch.isfinite(loss)).to(torch.float32).reshape(1))
            if self.graph is not None:  # and the replayed steps since the last check
                bad = bad + self.graph.bad_steps()
            if bad.item():  # host sync
                self._stop_non_finite(loss, epoch, i, int(bad.item()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor,
                     cache_enabled: bool = True) -> torch.Tensor:
        """The task's loss of the training model on (x, y), under the run's autocast."""
        with autocast(self.device, self.config.precision, cache_enabled):
            out = model_output(self.train_model, x)
        self.task.check(out, y)
        return self.task.loss(out, y)

    def step_function(self) -> Callable[[], torch.Tensor]:
        """A function that runs one training step per call on the next batch of this rank
        (epochs after ``self.epoch``, cycling): what ``torchliquid train --profile`` times."""
        x_all, y_all = self.data.train.x, self.data.train.y

        def stream() -> Any:
            epoch = self.epoch
            while True:
                epoch += 1
                self.batches.set_epoch(epoch)
                yield from self.batches

        batches = stream()

        def step() -> torch.Tensor:
            self.train_model.train()
            idx = next(batches)
            return self.train_step(*gather_batch(x_all, y_all, idx), check_finite=False)

        return step

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
        """Everything needed to continue exactly: weights, optimiser, counters, history, and per
        rank (``ranks[r]``) the RNG state and the position inside the current epoch.

        Collective under DDP (it gathers every rank's part): call it on every rank.
        """
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        ranks = runtime.all_gather_object({"rng": rng, "position": self.position})
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "world_size": runtime.world_size(),
                "ranks": ranks, "sampler": self.batches.state_dict(),
                "history": list(self.history), "pre_training": self.pre_training,
                "train_seconds": self.train_seconds, "sequences": self.sequences}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (this rank's part of it) on a Trainer built the same way."""
        if "ranks" in state:
            if len(state["ranks"]) != runtime.world_size():
                raise ValueError(
                    f"the checkpoint was written by {len(state['ranks'])} process(es) but this "
                    f"job has {runtime.world_size()}; resume with the same number of processes "
                    "(each one's shard of the data and RNG state is in the checkpoint)")
            mine = state["ranks"][runtime.rank()]
            rng, self.position = mine["rng"], mine["position"]
        else:  # checkpoints from before data parallelism: one process, at an epoch boundary
            rng, self.position = state["rng"], None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.batches.load_state_dict(state["sampler"])
        self.history = [dict(row) for row in state["history"]]
        self.pre_training = state["pre_training"]
        self.train_seconds, self.sequences = float(state["train_seconds"]), int(state["sequences"])
        self.checkpoint_epoch, self.checkpoint_step = self.epoch, self.step

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt (atomically, by rank 0, the previous one kept as
        checkpoint.prev.pt): ``{"trainer": state_dict(), "run_info": JSON}``. Collective."""
        self.files.save_checkpoint({"trainer": self.state_dict(),
                                    "run_info": json.dumps(self.describe())})
        # host sync: no rank runs ahead of a checkpoint that is not yet on disk, so a crash
        # after this line (of any rank) resumes from it.
        runtime.barrier()
        self.checkpoint_epoch, self.checkpoint_step = self.epoch, self.step

    # -- reports -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """config.json: the caller's run_info plus the task, TrainConfig and versions."""
        return {**self.run_info, "task": self.task.name, "train": vars(self.config).copy(),
                "device": str(self.device), "world_size": runtime.world_size(),
                "backend": runtime.backend(), "versions": versions()}

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
            "params": _trainable_entries(self.model),
            "effective_params": self.run_info.get("parameters", {}).get("effective"),
            "model": self.run_info.get("model", {}).get("name", type(self.model).__name__),
            "dataset": self.run_info.get("dataset", {}).get("name"),
            "task": self.task.name, "metric": self.task.metric,
            "epochs": self.epoch, "batch_size": self.config.batch_size,
            "global_batch_size": self.config.batch_size * runtime.world_size(),
            "lr": self.optimizer.param_groups[0]["lr"], "base_lr": self.config.lr,
            "lr_scaling": self.config.lr_scaling, "seed": self.config.seed,
            "world_size": runtime.world_size(), "backend": runtime.backend(),
            "restarts": runtime.restart_count(),
            "environment": runtime.describe_environment(self.device),
            "monitor": self.monitor_summary,
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

    def _stop_non_finite(self, loss: torch.Tensor, epoch: int, i: int, bad_ranks: int = 1) -> None:
        every = self.config.finite_check_every
        last = (f"the last checkpoint ({self.files.checkpoint_path}) holds epoch "
                f"{self.checkpoint_epoch} (global step {self.checkpoint_step})"
                if self.checkpoint_epoch is not None else "no checkpoint was written by this run")
        where = (f" on {bad_ranks} of {runtime.world_size()} processes"
                 if runtime.world_size() > 1 else "")
        value = loss.item() if not torch.isfinite(loss) else "not finite"  # another rank's
        raise NonFiniteLossError(
            f"training stopped: the {self.task.loss_name} loss is {value}{where} at epoch "
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
