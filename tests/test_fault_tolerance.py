"""Runs that survive a crash: SIGKILL mid-epoch and resume bit for bit, a torchrun worker killed
and the job restarted, and a damaged checkpoint replaced by the previous one.

Start here: crashes are real. ``TORCHLIQUID_FAULT_KILL_AT_STEP=S`` (see
``torchliquid.train.faults``) makes the trainer SIGKILL itself right after global step ``S``
(after any checkpoint due at that step), the way an OOM kill or a lost node ends a process: no
exception handler, no flush. Every run is the real CLI in a subprocess on the traffic fixture
(91 training windows) with an 8-unit CfC, 1 thread, so the whole file takes well under a minute
on 2 cores. Waiting is on process exit (with a generous timeout that only guards a hang), never
on sleeps.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchliquid import cli
from torchliquid.train import CheckpointError, CheckpointFallbackWarning, load_first_good

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TIMEOUT_S = 300  # a hang guard, not a timing assertion
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHLIQUID_FAULT_KILL_AT_STEP",
               "TORCHLIQUID_FAULT_RANK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**base, "OMP_NUM_THREADS": "1", **extra}


def train_args(out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ["-m", "torchliquid", "train", "--model", "cfc", "--dataset", "traffic",
            "--data-dir", str(FIXTURES), "--no-download", "--units", "8", "--batch-size", "8",
            "--epochs", str(epochs), "--checkpoint-every", "4", "--device", "cpu",
            "--threads", "1", "--monitor-interval", "0", "--out", str(out), *extra]


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["payload"]["trainer"]


def metric_rows(run: Path) -> list[dict[str, str]]:
    timing = {"epoch_seconds", "eval_seconds", "sequences_per_second"}
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(fh)]


def test_sigkill_mid_epoch_then_resume_ends_bitwise_equal(tmp_path):
    # 91 windows / batch 8 = 12 steps per epoch. Checkpoints at steps 4, 8, 16, 20 (mid-epoch)
    # and 12, 24 (epoch ends); the kill after step 18 loses steps 17-18, which the resumed
    # run must redo from the step-16 checkpoint, 4 batches into epoch 2.
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    args = ["--deterministic", "--quiet"]
    procs = [subprocess.Popen([sys.executable, *train_args(straight, 2, *args)], env=env(),
                              cwd=ROOT, stderr=subprocess.PIPE, text=True),
             subprocess.Popen([sys.executable, *train_args(crashed, 2, *args)],
                              env=env(TORCHLIQUID_FAULT_KILL_AT_STEP="18"), cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)]
    errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
    assert procs[0].returncode == 0, errors[0]
    assert procs[1].returncode == -signal.SIGKILL, errors[1]
    assert not (crashed / "result.json").exists()
    stopped = final_state(crashed)
    assert (stopped["step"], stopped["epoch"]) == (16, 1)
    assert stopped["ranks"][0]["position"]["batch"] == 4  # mid-epoch, as checkpointed

    resumed = subprocess.run([sys.executable, *train_args(crashed, 2, "--resume", *args)],
                             env=env(), cwd=ROOT, capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_state(straight), final_state(crashed)
    assert a["step"] == b["step"] == 24
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key  # bitwise
    assert metric_rows(crashed) == metric_rows(straight)  # losses and metrics too, as text
    post = [json.loads((run / "result.json").read_text())["post_training"]
            for run in (straight, crashed)]
    assert post[0] == post[1]


def test_torchrun_restarts_a_killed_worker_and_loses_no_epoch(tmp_path):
    # 2 ranks x 46 windows (91 padded to 92) / batch 8 = 6 steps per epoch, 3 epochs. Rank 1
    # dies after step 8 (epoch 2, batch 2) and the checkpoint written at step 8; torchrun
    # (--max-restarts 1) restarts both workers, which resume there.
    restarted, straight = tmp_path / "restarted", tmp_path / "straight"

    def torchrun(out: Path, **fault: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
             "--max-restarts", "1", "--master-port", str(free_port()),
             *train_args(out, 3, "--monitor-interval", "0.05")],
            env=env(**fault), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)

    proc = torchrun(restarted, TORCHLIQUID_FAULT_KILL_AT_STEP="8", TORCHLIQUID_FAULT_RANK="1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "exitcode: -9" in proc.stderr and "restart 1" in proc.stdout  # it did crash
    assert "2 batches into epoch 2 (global step 8)" in proc.stdout
    assert [int(r["epoch"]) for r in metric_rows(restarted)] == [1, 2, 3]
    result = json.loads((restarted / "result.json").read_text())
    assert (result["world_size"], result["backend"], result["restarts"]) == (2, "gloo", 1)
    assert result["lr"] == 2e-3 and result["global_batch_size"] == 16  # linear scaling
    assert {"rank0/host", "rank1/host"} <= set(result["monitor"]["devices"])
    assert (restarted / "samples.rank0.csv").exists() and (restarted / "samples.rank1.csv").exists()

    # The restarted job ends where one that never crashed ends (Gloo sums in a fixed order).
    assert torchrun(straight).returncode == 0
    a, b = final_state(straight), final_state(restarted)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert metric_rows(restarted) == metric_rows(straight)


@pytest.mark.parametrize("damage", ["truncated", "numbers"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    run = tmp_path / "run"
    sine = ["train", "--model", "cfc", "--dataset", "sine", "--units", "8", "--device", "cpu",
            "--threads", "1", "--monitor-interval", "0", "--out", str(run), "--quiet"]
    assert cli.main([*sine, "--epochs", "2"]) == 0
    newest = run / "checkpoint.pt"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:  # unpickles fine, but one weight changed: only the checksum can tell
        blob = torch.load(newest, weights_only=True)
        next(iter(blob["payload"]["trainer"]["model"].values())).view(-1)[0] += 1.0
        torch.save(blob, newest)
    why = "truncated" if damage == "truncated" else "sha256 checksum does not match"
    with pytest.warns(CheckpointFallbackWarning, match=f"{re.escape(str(newest))}.*{why}"):
        assert cli.main([*sine, "--epochs", "3", "--resume"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert [int(r["epoch"]) for r in metric_rows(run)] == [1, 2, 3]  # epoch 2 was redone
    assert final_state(run)["step"] == 3


def test_no_usable_checkpoint_names_every_file(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.warns(CheckpointFallbackWarning):
        with pytest.raises(CheckpointError, match="checkpoint.pt.*checkpoint.prev.pt does not exist"):
            load_first_good([bad, tmp_path / "checkpoint.prev.pt"])
