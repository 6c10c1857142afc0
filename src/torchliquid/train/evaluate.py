"""Evaluate a model: its metrics on a split, or a finished run's, reproduced from its checkpoint.

:func:`evaluate_split` gives the dataset-level metrics the trainer reports before training and
after each epoch.

:func:`evaluate_checkpoint` reloads a finished run and reproduces its recorded test metrics.
``train`` never imports the model zoo, so the caller passes ``build_model``: a function from the
model spec recorded in the run (``run_info["model"]``, a JSON dict) to a fresh module. The
checkpoint supplies the weights, the task, the evaluation batch size and the precision, so on
the same device type the metrics equal ``result.json``'s ``post_training`` bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from torchliquid import runtime
from torchliquid.config import TrainConfig
from torchliquid.train.batches import Split, eval_slices
from torchliquid.train.checkpoint import CheckpointError, load_checkpoint
from torchliquid.train.forward import autocast, model_output
from torchliquid.train.records import CHECKPOINT, CONFIG, PREVIOUS_CHECKPOINT, RESULT
from torchliquid.train.tasks import Task, get_task


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


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(checkpoint payload, run_info) of ``run_dir``; raises CheckpointError naming the file."""
    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"run folder {run} does not exist; train first (torchliquid train --out {run})")
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a run folder (expected the folder that "
                              "torchliquid train --out wrote, holding checkpoint.pt)")
    path = run / CHECKPOINT
    try:
        payload = load_checkpoint(path)
    except CheckpointError as e:
        # The previous checkpoint holds older weights, so it cannot stand in for evaluation;
        # `train --resume` rebuilds the final one from it.
        hint = _previous_hint(path.with_name(PREVIOUS_CHECKPOINT), run)
        raise CheckpointError(f"{e}{hint}") from None
    try:
        info = json.loads(payload["run_info"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path} lacks a readable run_info; it was not written "
                              "by torchliquid's Trainer") from None
    _check_same_run(run, path, info)
    return payload, info


def _check_same_run(run: Path, path: Path, info: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose model or dataset is not the one config.json records: a
    checkpoint copied in from another run would otherwise be evaluated, predicted with and
    exported silently (a fresh user's report). An unreadable config.json is not checked: the
    checkpoint is the run's record, config.json its description."""
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, ValueError):
        return

    def summary(record: Mapping[str, Any]) -> str:
        model = record.get("model") if isinstance(record.get("model"), Mapping) else {}
        dataset = record.get("dataset") if isinstance(record.get("dataset"), Mapping) else {}
        return f"{dict(model)} on {dataset.get('name')}"

    if not isinstance(config, Mapping):
        return
    held, described = summary(info), summary(config)
    if held != described:
        raise CheckpointError(f"{path} is not the run {run / CONFIG} describes: the checkpoint holds "
                              f"{held}, config.json {described}; put that run's own checkpoint.pt "
                              "back (or retrain)")


def _previous_hint(previous: Path, run: Path) -> str:
    """What to do about a damaged checkpoint.pt: resume from the previous one only if it loads
    and its checksum matches (it may be damaged too, e.g. by the same full disk)."""
    if not previous.exists():
        return "; retrain, or restore it from a copy"
    try:
        load_checkpoint(previous)
    except CheckpointError as e:
        return f"; {previous.name} is damaged too ({e}); retrain, or restore them from a copy"
    return (f"; {previous.name} is intact (checksum verified): `torchliquid train ... --out {run} "
            "--resume` retrains from it")


def recorded_result(run_dir: str | Path) -> dict[str, Any]:
    """The run's result.json."""
    path = Path(run_dir) / RESULT
    if not Path(run_dir).is_dir():
        raise ValueError(f"run folder {run_dir} does not exist" if not Path(run_dir).exists()
                         else f"{run_dir} is a file, not a run folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: the run did not finish; finish it with "
                         "torchliquid train --resume, or retrain") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); retrain to rewrite it") from None


def recorded_device(run_info: Mapping[str, Any]) -> str:
    """The device type the run trained on ("cpu" or "cuda"), to evaluate where it was recorded."""
    return torch.device(run_info.get("device", "cpu")).type


def evaluate_checkpoint(run_dir: str | Path, build_model: Callable[[dict], torch.nn.Module],
                        test: Any, *, device: str | None = None) -> dict[str, float]:
    """Test metrics of the checkpointed model of ``run_dir`` on ``test`` (``.x``/``.y``).

    Args:
        build_model: recorded model spec -> a fresh (untrained) module of the same architecture.
        test: the test split, rebuilt by the caller exactly as during training.
        device: "cpu" | "cuda" | "auto"; None evaluates on the device type the run trained on.
    """
    payload, info = load_run(run_dir)
    if "model" not in info:
        raise ValueError(f"run {run_dir} records no model spec (run_info['model']); it cannot be "
                         "rebuilt — pass run_info={'model': {...}} when training")
    train = TrainConfig(**info["train"])
    dev = runtime.pick_device(device or recorded_device(info))
    model = build_model(info["model"]).to(dev)
    model.load_state_dict(payload["trainer"]["model"])
    split = Split(test.x, test.y).to(dev)
    return evaluate_split(model, split, get_task(info["task"]), batch_size=train.eval_batch,
                          device=dev, precision=train.precision)
