"""The library calls behind the CLI: one run, re-evaluating a run, and the demo.

This is the one place that connects the three layers: ``data`` gives splits, ``nn`` builds the
model from a JSON spec, ``train`` trains it. The CLI parses arguments, builds a
:class:`~torchliquid.config.RunConfig` and calls one function here.

    from torchliquid.config import study_run
    from torchliquid.workflow import train_run
    result = train_run(study_run("cfc", "traffic", "runs/cfc-traffic", epochs=2))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from torchliquid import runtime
from torchliquid.config import DataConfig, ModelConfig, RunConfig, demo_runs
from torchliquid.data import load_dataset
from torchliquid.nn import build_model, constrain_after_step
from torchliquid.train import (CHECKPOINT, Trainer, TrainData, count_parameters, evaluate_checkpoint,
                               load_run, recorded_result, write_json)

# TrainConfig fields a resumed run may change; every other field must match the checkpoint.
RESUMABLE_CHANGES = {"epochs", "quiet", "log_every", "device", "threads", "checkpoint_every",
                     "finite_check_every"}


def say(message: str, quiet: bool = False) -> None:
    if not quiet and runtime.is_main_process():
        print(message, flush=True)


def model_spec(model: ModelConfig, splits: Any) -> dict[str, Any]:
    """The JSON spec ``build_from_spec`` turns into a module (recorded in config.json)."""
    return {"name": model.name, "input_size": splits.input_size, "output_size": splits.output_size,
            "units": model.units, "wiring": model.resolved_wiring, **model.kwargs}


def build_from_spec(spec: Mapping[str, Any]) -> torch.nn.Module:
    """A fresh model from a spec written by :func:`model_spec`."""
    kwargs = dict(spec)
    return build_model(kwargs.pop("name"), **kwargs)


def load_splits(data: DataConfig, quiet: bool = False) -> Any:
    return load_dataset(data.name, data_dir=data.data_dir, seed=data.seed, download=data.download,
                        max_windows=data.max_windows, progress=not quiet)


def dataset_info(data: DataConfig, splits: Any) -> dict[str, Any]:
    return {"name": data.name, "task": splits.task, "source": splits.source,
            "data_dir": data.data_dir, "max_windows": data.max_windows, "seed": data.seed,
            "input_size": splits.input_size, "output_size": splits.output_size,
            "seq_len": splits.seq_len,
            "sizes": {k: len(getattr(splits, k).x) for k in ("train", "val", "test")}}


def train_run(run: RunConfig, *, resume: bool = False, overwrite: bool = False,
              splits: Any = None, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Load the data, build the model as the study did, train it into ``run.out_dir``.

    Args:
        run: the resolved configuration.
        resume: continue from ``run.out_dir/checkpoint.pt`` (only ``epochs`` and the logging,
            device and checkpoint settings may differ from the recorded run).
        overwrite: replace a run already in ``run.out_dir``; without it (or ``resume``) an
            existing run is an error, so a finished run is never lost by accident.
        splits: already loaded splits for ``run.data`` (the demo loads each dataset once).
        command: the command line, recorded in config.json.

    Returns the dict written to ``result.json``.
    """
    cfg, quiet = run.train, run.train.quiet
    existing = Path(run.out_dir) / CHECKPOINT
    if existing.exists() and not (resume or overwrite):
        raise ValueError(f"{run.out_dir} already holds a run ({existing}); pass --resume to "
                         "continue it, --overwrite to replace it, or choose another --out")
    threads = runtime.set_threads(cfg.threads)
    device = runtime.pick_device(cfg.device)
    runtime.init_distributed(device)
    say(f"device {device}, {threads} intra-op thread{'s' * (threads != 1)} "
        f"(of {runtime.available_cores()} cores; --threads to change)", quiet)
    splits = splits if splits is not None else load_splits(run.data, quiet)
    say(f"data: {splits.describe()}", quiet)
    runtime.seed_all(cfg.seed)
    spec = model_spec(run.model, splits)
    model = build_from_spec(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    constrain_after_step(optimizer, model)
    say(f"model: {run.model.name} {json.dumps({k: v for k, v in spec.items() if k != 'name'})}, "
        f"{count_parameters(model):,} trainable parameters", quiet)
    run_info = {"model": spec, "dataset": dataset_info(run.data, splits),
                "normalization": splits.normalization, "run": run.to_dict(),
                "command": list(command) if command is not None else None}
    trainer = Trainer(model, TrainData.from_splits(splits, device), splits.task, cfg,
                      optimizer=optimizer, out_dir=run.out_dir, run_info=run_info)
    if resume:
        payload, recorded = load_run(run.out_dir)
        _check_resumable(run, run_info, recorded)
        trainer.load_state_dict(payload["trainer"])
        say(f"resuming {run.out_dir} after epoch {trainer.epoch}", quiet)
    result = trainer.fit()
    say(f"run files in {run.out_dir}/", quiet)
    return result


def _check_resumable(run: RunConfig, new: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    old_run = RunConfig.from_dict(old["run"])
    differ = [f"model.{k}" for k in ("name", "units", "wiring", "kwargs")
              if getattr(old_run.model, k) != getattr(run.model, k)]
    differ += [f"data.{k}" for k in ("name", "seed", "max_windows")
               if getattr(old_run.data, k) != getattr(run.data, k)]
    differ += [f"train.{k}" for k, v in vars(run.train).items()
               if k not in RESUMABLE_CHANGES and getattr(old_run.train, k) != v]
    if json.loads(json.dumps(new["normalization"])) != old.get("normalization"):
        differ.append("normalization statistics (the data files changed)")
    if differ:
        raise ValueError(f"cannot resume {run.out_dir}: {', '.join(differ)} differ from the "
                         "checkpoint; repeat the original arguments (only --epochs and logging/"
                         "device options may change) or choose a new --out")


def evaluate_run(run_dir: str | Path, device: str | None = None,
                 quiet: bool = False) -> dict[str, Any]:
    """Rebuild the model and the data of ``run_dir``, evaluate the checkpoint on the test split.

    Returns ``{"metrics": ..., "recorded": result.json's post_training, "equal": bool,
    "max_relative_difference", "device", "threads", "trained_device", "trained_threads"}``.
    ``equal`` is exact equality, which holds on the device type and thread count the run used
    (a different thread count may change the order of float sums in matrix products).
    """
    _, info = load_run(run_dir)
    result = recorded_result(run_dir)
    recorded = result["post_training"]
    run = RunConfig.from_dict(info["run"])
    runtime.set_threads(run.train.threads)
    splits = load_splits(run.data, quiet)
    if json.loads(json.dumps(splits.normalization)) != info.get("normalization"):
        raise ValueError(f"the {run.data.name} data found now gives different normalisation "
                         f"statistics than {run_dir} recorded: the data files changed; point "
                         "--data-dir at the files the run was trained on")
    metrics = evaluate_checkpoint(run_dir, build_from_spec, splits.test, device=device)
    trained_on = result.get("environment", {})
    return {"metrics": metrics, "recorded": recorded, "equal": metrics == recorded,
            "max_relative_difference": max(abs(v - recorded.get(k, float("nan")))
                                           / max(abs(v), 1e-300) for k, v in metrics.items()),
            "device": str(runtime.pick_device(device or torch.device(info.get("device", "cpu")).type)),
            "threads": torch.get_num_threads(), "trained_device": trained_on.get("device"),
            "trained_threads": trained_on.get("threads"), "task": info["task"]}


def demo(root: str = "runs/demo", epochs: int | None = None, quiet: bool = False,
         device: str = "auto") -> list[dict[str, Any]]:
    """Train CfC and LTC on sine and a power subset (see ``config.demo_runs``), print a table.

    The table is printed even when ``quiet`` (it is the demo's output); ``quiet`` silences the
    per-epoch progress. Rows are also written to ``root/summary.json``. Unlike ``train``, which
    uses every core, the demo uses the cores that are idle when it starts
    (:func:`runtime.idle_cores`), so that it stays quick on a machine busy with other work.
    """
    rows, loaded = [], {}
    threads = runtime.idle_cores()
    for run in demo_runs(root, epochs=epochs, quiet=quiet, device=device, threads=threads):
        key = (run.data.name, run.data.max_windows)
        if key not in loaded:
            say(f"loading {run.data.name}" + (f" (first {run.data.max_windows} windows per split)"
                                              if run.data.max_windows else ""), quiet)
            loaded[key] = load_splits(run.data, quiet)
        say(f"\n== {run.model.name} on {run.data.name}: {run.train.epochs} epochs, batch "
            f"{run.train.batch_size}, lr {run.train.lr:g} -> {run.out_dir}", quiet)
        result = train_run(run, overwrite=True, splits=loaded[key],
                           command=["torchliquid", "demo"])
        rows.append(summary_row(result))
    if runtime.is_main_process():
        write_json(Path(root) / "summary.json", rows)
        print(f"\ntest-split metrics before and after training (run files in {root}/):\n"
              + format_table(rows), flush=True)
    return rows


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    metric = result["metric"]
    return {"model": result["model"], "dataset": result["dataset"], "metric": metric,
            "before": result["pre_training"][metric], "after": result["post_training"][metric],
            "test_loss_before": result["pre_training"]["loss"],
            "test_loss_after": result["post_training"]["loss"], "epochs": result["epochs"],
            "train_seconds": result["train_seconds"],
            "sequences_per_second": result["sequences_per_second"], "params": result["params"]}


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Side-by-side table: model, dataset, metric before/after, loss, time, throughput."""
    header = ["model", "dataset", "metric", "before", "after", "loss before", "loss after",
              "epochs", "train s", "seq/s", "params"]
    body = [[r["model"], r["dataset"], r["metric"], f"{r['before']:.4f}", f"{r['after']:.4f}",
             f"{r['test_loss_before']:.4f}", f"{r['test_loss_after']:.4f}", str(r["epochs"]),
             f"{r['train_seconds']:.1f}", f"{r['sequences_per_second']:,.0f}", f"{r['params']:,}"]
            for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(line, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])
