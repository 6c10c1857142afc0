"""The library calls behind the CLI: one run, re-evaluating a run, and the demo.

This is the one place that connects the three layers: ``data`` gives splits, ``nn`` builds the
model from a JSON spec, ``train`` trains it. The CLI parses arguments, builds a
:class:`~torchliquid.config.RunConfig` and calls one function here.

    from torchliquid.config import study_run
    from torchliquid.workflow import train_run
    result = train_run(study_run("cfc", "traffic", "runs/cfc-traffic", epochs=2))

Under torchrun every process runs :func:`train_run`; the run directory is rank 0's (it alone
reads an existing checkpoint and sends it to the others, so nodes need no shared disk).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from torchliquid import runtime
from torchliquid._atomic import atomic_write
from torchliquid.config import DataConfig, ModelConfig, RunConfig, demo_runs
from torchliquid.data import get_dataset, load_dataset
from torchliquid.nn import build_model, constrain_after_step, count_parameters
from torchliquid.rundir import PREDICTIONS_SINE, check_out_dir, check_resumable, existing_run, replacing
from torchliquid.train import (Trainer, TrainData, evaluate_checkpoint, load_run,
                               recorded_result, write_json)
from torchliquid.train.graphs import WARMUP_STEPS
from torchliquid.train.graphs import check_supported as check_cuda_graphs
from torchliquid.train.forward import model_output
from torchliquid.train.optim import adam



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
              splits: Any = None, command: Sequence[str] | None = None,
              profile: str | None = None, profile_steps: int = 20,
              profile_warmup: int = 5) -> dict[str, Any]:
    """Load the data, build the model as the study did, train it into ``run.out_dir``.

    Args:
        run: the resolved configuration.
        resume: continue from the run's last good checkpoint (only ``epochs`` and the logging,
            device, monitor and checkpoint settings may differ from the recorded run).
            Resuming is also automatic when torchrun restarted the job
            (``TORCHELASTIC_RESTART_COUNT`` > 0) or when ``run.out_dir`` holds a checkpoint of
            the same configuration; a different run there is an error unless ``overwrite``, and
            so is ``run.train.epochs`` below the epochs the checkpoint has done.
        overwrite: replace a run already in ``run.out_dir``, so a finished run is never lost by
            accident (excludes ``resume``); the old run is deleted only once the new one has a
            checkpoint or has finished, and put back if the new one fails before
            (:func:`torchliquid.rundir.replacing`); after a torchrun restart it resumes what the
            first attempt checkpointed.
        splits: already loaded splits for ``run.data`` (the demo loads each dataset once).
        command: the command line, recorded in config.json.
        profile: ``"cprofile"`` or ``"torch"``: instead of training, run ``profile_warmup`` then
            ``profile_steps`` training steps under that profiler and write its tables to
            ``run.out_dir/profile/`` (see :mod:`torchliquid.monitor.profiling`).

    Returns the dict written to ``result.json`` (with ``profile``: the profiler's summary).
    """
    cfg, quiet = run.train, run.train.quiet
    check_out_dir(run.out_dir)  # before anything is printed, loaded or written
    if resume and overwrite:  # one keeps the run, the other deletes it
        raise ValueError("--resume and --overwrite exclude each other: --resume continues the run "
                         "in --out, --overwrite deletes it and starts afresh; pass one")
    if cfg.deterministic:
        runtime.set_deterministic(True)
    threads = runtime.set_threads(cfg.threads)
    device = runtime.pick_device(cfg.device)
    runtime.init_distributed(device, cfg.backend)
    world, local = runtime.world_size(), runtime.local_world_size()
    say(f"device {device}, {threads} intra-op thread{'s' * (threads != 1)} per process "
        f"({runtime.available_cores()} cores" + (f" / {local} processes on this node"
                                                 if local > 1 else "")
        + "; --threads to change)", quiet)
    if runtime.is_distributed():
        say(f"data parallel: {world} process{'es' * (world != 1)}, backend "
            f"{runtime.backend()}, restart {runtime.restart_count()}", quiet)
    if cfg.precision == "bf16" and device.type == "cpu":
        say("bf16 autocast on CPU: measured slower than fp32 (CfC ~10x at the study's sizes: "
            "its C kernels are fp32/fp64, so bf16 steps through torch ops; the study's LTC has "
            "no op autocast casts and runs fp32 as before); bf16 is meant for GPUs", quiet)
    if cfg.cuda_graphs:  # refused before any data is loaded, never ignored
        check_cuda_graphs(device, world)
        say(f"CUDA graphs: every full batch of {cfg.batch_size} replays one captured step "
            f"(captured on the first, after {WARMUP_STEPS} warm-up steps that are undone); the "
            "epoch's last partial batch and evaluation run eagerly", quiet)
    say(f"batch {cfg.batch_size} per process x {world} = global batch {cfg.batch_size * world}; "
        f"lr {cfg.lr:g}" + (f" x {world} = {cfg.scaled_lr(world):g} (--lr-scaling linear)"
                            if cfg.lr_scaling == "linear" and world > 1 else ""), quiet)
    found = None if profile else existing_run(run, resume, overwrite)
    with replacing(run.out_dir, overwrite and not profile):
        # Every rank loads the data (it is small and each needs it on its device); rank 0 reports.
        splits = splits if splits is not None else load_splits(
            run.data, quiet or not runtime.is_main_process())
        say(f"data: {splits.describe()}", quiet)
        runtime.seed_all(cfg.seed)
        spec = model_spec(run.model, splits)
        model = build_from_spec(spec).to(device)
        optimizer = adam(model.parameters(), lr=cfg.scaled_lr(world))
        constrain_after_step(optimizer, model)
        count = count_parameters(model)
        say(f"model: {run.model.name} {json.dumps({k: v for k, v in spec.items() if k != 'name'})}, "
            f"{count}", quiet)
        run_info = {"model": spec, "dataset": dataset_info(run.data, splits),
                    "parameters": {"total": count.total, "effective": count.effective},
                    "normalization": splits.normalization, "run": run.to_dict(),
                    "command": list(command) if command is not None else None}
        before = _sine_predictions(model, splits, device) if run.data.name == "sine" else None
        trainer = Trainer(model, TrainData.from_splits(splits, device), splits.task, cfg,
                          optimizer=optimizer, out_dir=run.out_dir, run_info=run_info)
        if found is not None:
            payload, recorded, path = found
            check_resumable(run, run_info, recorded)
            trainer.load_state_dict(payload["trainer"])
            at = trainer.position
            say(f"resuming {run.out_dir} from {path.name}: epoch {trainer.epoch} done"
                + (f", {at['batch']} batches into epoch {at['epoch']}" if at else "")
                + f" (global step {trainer.step})", quiet)
        if profile:
            return _profile(trainer, run, profile, profile_steps, profile_warmup, quiet)
        result = trainer.fit()
        if before is not None and runtime.is_main_process():
            after = _sine_predictions(model, splits, device)
            _write_npz(Path(run.out_dir) / PREDICTIONS_SINE, target=splits.test.y.numpy(),
                       before=before, after=after, t=get_dataset("sine").times().astype(np.float32))
        say(f"run files in {run.out_dir}/", quiet)
        return result


@torch.no_grad()
def _sine_predictions(model: torch.nn.Module, splits: Any, device: torch.device) -> np.ndarray:
    """The model's (N, T, C) float32 output on the test split (for predictions_sine.npz)."""
    model.eval()
    out = model_output(model, torch.as_tensor(splits.test.x).to(device))
    return out.float().cpu().numpy()


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_write(path, "wb") as handle:  # readers (the matrix report) never see half a file
        np.savez(handle, **arrays)


def _profile(trainer: Trainer, run: RunConfig, kind: str, steps: int, warmup: int,
             quiet: bool) -> dict[str, Any]:
    """Time ``warmup`` + ``steps`` training steps under a profiler (rank 0; the other ranks run
    the same steps unprofiled, as DDP needs every rank in each step's all-reduce)."""
    from torchliquid.monitor.profiling import profile_steps

    step = trainer.step_function()
    info = None
    if runtime.is_main_process():
        info = profile_steps(step, kind=kind, warmup=warmup, steps=steps,
                             out_dir=Path(run.out_dir) / "profile")
        say(f"profile ({kind}): {steps} steps after {warmup} warm-up, "
            f"{info['seconds_per_step'] * 1e3:.2f} ms/step; tables in "
            f"{', '.join(info['files'].values())}", quiet)
    else:
        for _ in range(warmup + steps):
            step()
    runtime.barrier()
    return {"profile": info}


def evaluate_run(run_dir: str | Path, device: str | None = None, quiet: bool = False,
                 data_dir: str | None = None) -> dict[str, Any]:
    """Rebuild the model and the data of ``run_dir``, evaluate the checkpoint on the test split.

    ``data_dir`` replaces the data folder the run recorded (the run may have moved machines);
    the normalisation statistics must still match, so it must hold the same files.

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
    data = run.data if data_dir is None else dataclasses.replace(run.data, data_dir=data_dir)
    splits = load_splits(data, quiet)
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
            "sequences_per_second": result["sequences_per_second"], "params": result["params"],
            "effective_params": result.get("effective_params") or result["params"]}


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Side-by-side table: model, dataset, metric before/after, loss, time, throughput, and
    parameters (all trainable entries; effective: those the wiring does not mask out)."""
    header = ["model", "dataset", "metric", "before", "after", "loss before", "loss after",
              "epochs", "train s", "seq/s", "params", "effective"]
    body = [[r["model"], r["dataset"], r["metric"], f"{r['before']:.4g}", f"{r['after']:.4g}",
             f"{r['test_loss_before']:.4g}", f"{r['test_loss_after']:.4g}", str(r["epochs"]),
             f"{r['train_seconds']:.1f}", f"{r['sequences_per_second']:,.0f}", f"{r['params']:,}",
             f"{r['effective_params']:,}"]
            for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(line, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def compare_runs(runs: Sequence[str | Path]) -> str:
    """``torchliquid compare``: the speed-up table of ``runs`` (run directories or their
    result.json) from :func:`torchliquid.experiments.speedup_table`, then one line per run with
    its test metric and the monitor's mean host CPU and GPU utilisation and GPU energy."""
    from torchliquid.experiments import speedup_table
    from torchliquid.experiments.tables import device_label, fmt

    loaded = []
    for run in runs:
        path = Path(run)
        loaded.append((str(run), recorded_result(path.parent if path.is_file() else path)))
    lines = [speedup_table([result for _, result in loaded]).text, ""]
    header = ["run", "device", "n", "train s", "seq/s", "test metric", "host CPU %",
              "GPU util %", "GPU energy J"]
    body = []
    for name, r in loaded:
        devices = (r.get("monitor") or {}).get("devices") or {}
        host = [d.get("cpu_util_pct_mean") for k, d in devices.items() if k.endswith("host")]
        gpus = [d for k, d in devices.items() if "gpu" in k]
        util = [d.get("util_pct_mean") for d in gpus if d.get("util_pct_mean") is not None]
        energy = [d["energy_j"] for d in gpus if d.get("energy_j") is not None]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        metric = r.get("metric", "loss")
        body.append([name, device_label(r), str(r.get("world_size", 1)),
                     fmt(r.get("train_seconds")), fmt(r.get("sequences_per_second")),
                     f"{metric} {fmt((r.get('post_training') or {}).get(metric))}",
                     fmt(mean([h for h in host if h is not None]), 3),
                     fmt(mean(util), 3) if gpus else "no GPU",
                     fmt(sum(energy)) if energy else "n/a"])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt_row = lambda row: "  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(row, widths)))
    lines += [fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, body)]
    return "\n".join(lines)
