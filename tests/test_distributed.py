"""Data parallelism on CPU with Gloo: shards, the launcher environment, and DDP equivalence.

Start here: ``test_two_processes_equal_one_process_with_twice_the_batch`` is the contract of
data parallelism. Two processes with per-process batch ``b`` see, at each step, the two halves of
the batch that one process with batch ``2b`` sees (the DistributedSampler striding); each
averages its loss over ``b`` and DDP averages the gradients over the 2 ranks, which is the
gradient of the mean loss over ``2b``. So with the SAME learning rate (``lr_scaling="none"``;
the study's linear scaling is a choice of hyper-parameter, not part of the equivalence) both
runs take the same optimiser steps and end with the same parameters, up to float rounding.

The GPU path (NCCL, ``cuda:LOCAL_RANK``) cannot run on the CPU-only CI; its smoke test is
skipped there with the reason, and the CPU tests drive the same code with Gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from torchliquid import runtime
from torchliquid.config import TrainConfig
from torchliquid.nn import build_model, constrain_after_step
from torchliquid.train import EpochBatches, NonFiniteLossError, Trainer

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RESTART_COUNT")
ROOT = Path(__file__).resolve().parents[1]
N, T, I, B, EPOCHS = 32, 6, 3, 4, 2  # 32 sequences, per-process batch 4: 4 steps per epoch
# Parameters of the two runs differ only by the order of float32 sums (the all-reduce adds two
# half-batch gradients; one process sums the whole batch at once), ~1e-7 relative per step.
# Adam's update is ~lr per step whatever the gradient's size, so after 8 steps at lr 1e-2 the
# gap stays near 1e-7; 1e-5 is loose enough for that and far below a real difference (a missing
# all-reduce or a wrong shard moves parameters by ~1e-2).
PARAM_TOL = 1e-5


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- shards (the DistributedSampler contract) ---------------------------------------------------


@pytest.mark.parametrize("n,world", [(24, 2), (23, 2), (23, 3), (5, 4), (2, 3)])
def test_shards_equal_distributed_sampler_over_our_permutation(n, world):
    """Padding by wrapping and rank striding are DistributedSampler's own (independent
    reference), applied to our seeded permutation; set_epoch reshuffles."""
    perm = {e: EpochBatches(n, n, seed=3) for e in (1, 2)}
    for e, batches in perm.items():
        batches.set_epoch(e)
    for rank in range(world):
        ours = EpochBatches(n, 2, seed=3, world_size=world, rank=rank)
        for epoch in (1, 2):
            ours.set_epoch(epoch)
            reference = list(DistributedSampler(range(n), num_replicas=world, rank=rank,
                                                shuffle=False))
            assert ours.indices().tolist() == perm[epoch].indices()[reference].tolist()
            assert torch.cat(list(ours)).tolist() == ours.indices().tolist()
    assert not torch.equal(perm[1].indices(), perm[2].indices())


@pytest.mark.parametrize("n,world", [(24, 2), (24, 3), (23, 2), (10, 4)])
def test_ranks_see_disjoint_shards_that_cover_the_epoch(n, world):
    shards = []
    for rank in range(world):
        batches = EpochBatches(n, 5, seed=0, world_size=world, rank=rank)
        batches.set_epoch(7)
        shards.append(torch.cat(list(batches)).tolist())
    seen = [i for shard in shards for i in shard]
    assert set(seen) == set(range(n))  # together: every sample
    padding = -(-n // world) * world - n
    assert len(seen) == n + padding  # apart: never the same sample, except the wrapped padding
    if padding == 0:
        assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1:])


def test_iter_from_resumes_the_epoch_where_it_stopped():
    batches = EpochBatches(23, 4, seed=1, world_size=2, rank=1)
    batches.set_epoch(2)
    whole = list(batches)
    assert [t.tolist() for t in batches.iter_from(3)] == [t.tolist() for t in whole[3:]]
    with pytest.raises(ValueError, match="start must be in"):
        next(batches.iter_from(len(whole) + 1))


# -- the launcher environment and the single-process no-ops ------------------------------------


def test_helpers_are_no_ops_in_one_process(clean_env):
    model = torch.nn.Linear(2, 2)
    assert runtime.data_parallel(model, torch.device("cpu")) is model
    assert runtime.all_gather_object({"a": 1}) == [{"a": 1}]
    assert runtime.broadcast_object("x") == "x"
    assert runtime.backend() is None and runtime.restart_count() == 0
    assert not runtime.launched()


def test_learning_rate_scaling_follows_the_study():
    linear = TrainConfig(lr=1e-3, lr_scaling="linear")
    assert [linear.scaled_lr(n) for n in (1, 2, 4)] == [1e-3, 2e-3, 4e-3]
    assert TrainConfig(lr=1e-3, lr_scaling="none").scaled_lr(4) == 1e-3
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig(lr_scaling="sqrt")
    with pytest.raises(ValueError, match="backend"):
        TrainConfig(backend="mpi")
    with pytest.raises(ValueError, match="monitor_interval"):
        TrainConfig(monitor_interval=-1)


def test_backend_choice_is_checked_against_the_device():
    assert runtime.resolve_backend("auto", "cpu") == "gloo"
    assert runtime.resolve_backend("auto", "cuda") == "nccl"
    assert runtime.resolve_backend("gloo", "cuda") == "gloo"
    with pytest.raises(ValueError, match="backend 'nccl' needs CUDA"):
        runtime.resolve_backend("nccl", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        runtime.resolve_backend("mpi", "cpu")


def test_a_launcher_with_one_process_still_joins_a_group(clean_env):
    """What ``torchrun --nproc-per-node 1`` does: the env is complete, so the group is joined
    (on a GPU that is NCCL on cuda:0; here Gloo) and the model is wrapped in DDP."""
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        clean_env.setenv(name, value)
    assert runtime.launched()
    try:
        assert runtime.init_distributed("cpu", "auto") is True
        assert runtime.is_distributed() and runtime.backend() == "gloo"
        assert runtime.all_gather_object(5) == [5] and runtime.broadcast_object("x") == "x"
        wrapped = runtime.data_parallel(torch.nn.Linear(2, 2), torch.device("cpu"))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    finally:
        runtime.destroy_distributed()
    assert not runtime.is_distributed()


@pytest.mark.parametrize("env,match", [
    (dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="2", LOCAL_WORLD_SIZE="2",
          MASTER_ADDR="127.0.0.1", MASTER_PORT="1"), r"LOCAL_RANK must be in \[0, "),
    (dict(WORLD_SIZE="0"), "WORLD_SIZE must be >= 1"),
    (dict(TORCHELASTIC_RESTART_COUNT="x"), "TORCHELASTIC_RESTART_COUNT must be an integer"),
])
def test_bad_launcher_variables_are_named(clean_env, env, match):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        runtime.restart_count()
        runtime.init_distributed("cpu")


# -- DDP equals one process with the global batch -----------------------------------------------


def make_data() -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, T, I, generator=g)
    y = (x.sum(-1).cumsum(1) / 3).unsqueeze(-1)
    part = SimpleNamespace(x=x, y=y)
    val = SimpleNamespace(x=x[:11], y=y[:11])  # 11: the two evaluation shards are uneven
    return SimpleNamespace(train=part, val=val, test=val)


def train_model(name: str, batch_size: int) -> Trainer:
    torch.manual_seed(0)
    model = build_model(name, input_size=I, output_size=1, units=8)
    config = TrainConfig(epochs=EPOCHS, batch_size=batch_size, lr=1e-2, lr_scaling="none",
                         device="cpu", quiet=True, checkpoint_every=0, monitor_interval=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    constrain_after_step(optimizer, model)
    trainer = Trainer(model, make_data(), "regression", config, optimizer=optimizer)
    trainer.fit()
    return trainer


class NaNOnRank1(torch.nn.Module):
    """Finite on rank 0, NaN on rank 1 from the third training call: only one rank sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.calls = torch.nn.Linear(I, 1), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.calls += self.training
        return y + float("nan") if self.training and self.calls >= 3 and runtime.rank() == 1 else y


def _ddp_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # Joined here with a short timeout (runtime.init_distributed then finds it joined): if the
    # ranks ever disagreed about a NaN, the healthy one would fail in 60 s instead of hanging CI.
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    assert runtime.init_distributed("cpu")
    try:
        saved = {}
        for name in ("cfc", "ltc"):
            trainer = train_model(name, B)
            assert isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
            saved[name] = {"params": trainer.model.state_dict(), "history": trainer.history,
                           "pre": trainer.pre_training, "steps": trainer.step}
        config = TrainConfig(epochs=2, batch_size=B, device="cpu", quiet=True,
                             checkpoint_every=0)
        try:
            Trainer(NaNOnRank1(), make_data(), "regression", config).fit()
        except NonFiniteLossError as e:
            saved["nan"] = str(e)
        torch.save(saved, f"{out}.{rank}")
    except BaseException:
        runtime.destroy_distributed()
        raise
    runtime.destroy_distributed(synchronize=True)  # no rank closes gloo under a peer still saving


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_equal_one_process_with_twice_the_batch(clean_env, tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_ddp_worker, args=(free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for name in ("cfc", "ltc"):
        alone = train_model(name, 2 * B)
        assert ranks[0][name]["steps"] == ranks[1][name]["steps"] == alone.step == EPOCHS * N // (2 * B)
        for key, want in alone.model.state_dict().items():
            for r in range(2):
                got = ranks[r][name]["params"][key]
                torch.testing.assert_close(got, want, rtol=0, atol=PARAM_TOL,
                                           msg=f"{name} {key} rank {r}")
            assert torch.equal(ranks[0][name]["params"][key], ranks[1][name]["params"][key])
        # Same starting weights, so the reduced metrics equal one process's up to the float32
        # outputs, which depend on the batch size (GEMM blocking: ~1e-7 relative per element);
        # a shard counted twice or missed would be off by ~1e-1.
        assert ranks[0][name]["pre"] == pytest.approx(alone.pre_training, rel=1e-6)
        for row, want in zip(ranks[0][name]["history"], alone.history):
            for key in want:
                if key.startswith(("val_", "test_", "train_loss")):
                    assert row[key] == pytest.approx(want[key], rel=1e-4), (name, key)
    # A NaN on one rank stops both at the same step (no rank left waiting in an all-reduce).
    assert "loss is not finite on 1 of 2 processes at epoch 1/2, step 3/4" in ranks[0]["nan"]
    assert "loss is nan on 1 of 2 processes at epoch 1/2, step 3/4" in ranks[1]["nan"]


# -- GPU: NCCL on cuda:LOCAL_RANK -----------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU here: the NCCL path (torchrun --nproc-per-node 1 "
                           "--device cuda) needs one; the CPU tests cover the same code with Gloo")
def test_torchrun_one_process_on_cuda_uses_nccl(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port",
         str(free_port()), "-m", "torchliquid", "train", "--model", "cfc", "--dataset", "sine",
         "--epochs", "2", "--units", "8", "--batch-size", "1", "--device", "cuda",
         "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["backend"] == "nccl" and result["world_size"] == 1
    assert result["environment"]["device"] == "cuda:0"
