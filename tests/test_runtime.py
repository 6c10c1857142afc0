"""runtime: every helper is trivial in one process; the env is validated; two Gloo processes
reduce evaluation metrics to exactly the single-process numbers."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from torchliquid import runtime

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_helpers_are_trivial(clean_env):
    assert (runtime.world_size(), runtime.rank(), runtime.local_rank()) == (1, 0, 0)
    assert runtime.is_main_process() and not runtime.is_distributed()
    assert runtime.init_distributed("cpu") is False
    t = torch.tensor([1.5, 2.0])
    assert runtime.all_reduce_sum(t) is t and t.tolist() == [1.5, 2.0]
    runtime.barrier()
    runtime.destroy_distributed()


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer, got 'two'"),
    ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost",
      "MASTER_PORT": "1"}, r"RANK must be in \[0, 2\), got 5"),
])
def test_init_distributed_validates_the_environment(clean_env, env, match):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        runtime.init_distributed("cpu")


def test_pick_device(clean_env):
    assert runtime.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        runtime.pick_device("gpu")
    if torch.cuda.is_available():
        assert runtime.pick_device("auto").type == "cuda"
    else:
        assert runtime.pick_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="--device cpu"):
            runtime.pick_device("cuda")


def test_threads_use_every_core_split_between_local_processes(clean_env):
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads() == runtime.available_cores() == torch.get_num_threads()
        clean_env.setenv("LOCAL_WORLD_SIZE", str(2 * runtime.available_cores()))
        assert runtime.set_threads() == 1  # never zero threads
        assert runtime.set_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("load,cores,want", [(0.0, 2, 2), (0.6, 2, 1), (3.2, 2, 1), (1.4, 8, 7)])
def test_idle_cores_subtract_the_load_and_keep_one(monkeypatch, load, cores, want):
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    assert runtime.idle_cores() == want


def test_environment_record_is_json(clean_env):
    env = runtime.describe_environment("cpu")
    assert json.loads(json.dumps(env)) == env
    assert env["device"] == "cpu" and env["gpu_model"] is None and env["threads"] >= 1


# -- two real processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_split():
    from torchliquid.train import Split

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(11, 5, 3)  # 11 sequences: the two shards are uneven (5 and 6)
    return model, Split(x, (x.sum(-1) > 0).long())


def _worker(rank: int, port: int, out: str) -> None:
    import os

    from torchliquid.train import EpochBatches, evaluate_split, get_task

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    assert runtime.init_distributed("cpu")
    model, split = _model_and_split()
    metrics = evaluate_split(model, split, get_task("classification"), batch_size=4,
                             device=torch.device("cpu"))
    batches = EpochBatches(11, 4, seed=0, world_size=runtime.world_size(), rank=runtime.rank())
    shard = torch.cat(list(batches)).tolist()
    with open(f"{out}.{rank}", "w") as fh:
        json.dump({"metrics": metrics, "shard": shard, "world": runtime.world_size(),
                   "main": runtime.is_main_process()}, fh)
    runtime.barrier()
    runtime.destroy_distributed()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_gloo_processes_reduce_metrics_to_the_single_process_numbers(clean_env, tmp_path):
    from torchliquid.train import evaluate_split, get_task

    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    ranks = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    model, split = _model_and_split()
    alone = evaluate_split(model, split, get_task("classification"), batch_size=4,
                           device=torch.device("cpu"))
    for r, got in enumerate(ranks):
        assert got["world"] == 2 and got["main"] == (r == 0)
        # float64 sums of the same float32 terms in a different grouping: equal to ~1e-15.
        assert got["metrics"] == pytest.approx(alone, rel=1e-12)
    assert set(ranks[0]["shard"]) | set(ranks[1]["shard"]) == set(range(11))
    assert len(ranks[0]["shard"]) == len(ranks[1]["shard"]) == 6
