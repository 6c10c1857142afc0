"""Trainer tests with injected collaborators: a tiny GRU stand-in, synthetic tensors, a fake clock.

Start here: ``make_data`` builds a learnable task of either kind, ``StandIn`` is the model (any
module returning ``(y, h)`` works, as for torchliquid.nn models), ``train`` runs a Trainer into a
tmp dir. Nothing here imports torchliquid.nn or torchliquid.data.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from torchliquid.train import (METRICS, RESULT, CONFIG, EpochBatches, NonFiniteLossError, Split,
                               TrainConfig, Trainer, eval_slices, evaluate_checkpoint,
                               evaluate_split, get_task, metric_columns)

T, I = 8, 3


class StandIn(torch.nn.Module):
    """GRU + Linear returning (y (B, T, O), h), the shape contract of torchliquid.nn models."""

    def __init__(self, out: int, hidden: int = 12) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(I, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.rnn(x)
        return self.head(y), h


def make_data(task: str, n: int = 96, seed: int = 0) -> SimpleNamespace:
    """Targets depend on the running sum of the inputs, so a recurrent model can learn them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, I, generator=g)
    running = x.sum(-1).cumsum(1) / 3  # (n, T)
    y = (running > 0).long() if task == "classification" else running.unsqueeze(-1)
    cut = [0, n // 2, 3 * n // 4, n]
    parts = [SimpleNamespace(x=x[a:b], y=y[a:b]) for a, b in itertools.pairwise(cut)]
    return SimpleNamespace(train=parts[0], val=parts[1], test=parts[2])


def out_size(task: str) -> int:
    return 2 if task == "classification" else 1


def train(tmp_path, task="regression", model=None, data=None, **cfg):
    torch.manual_seed(0)
    config = TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 1e-2, "device": "cpu",
                            "quiet": True, **cfg})
    trainer = Trainer(model or StandIn(out_size(task)), data or make_data(task), task, config,
                      out_dir=tmp_path, run_info={"model": {"name": "standin", "out": out_size(task)},
                                                  "dataset": {"name": "synthetic"}})
    return trainer, trainer.fit()


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_loss_decreases_on_learnable_task(tmp_path, task):
    trainer, result = train(tmp_path, task, epochs=8)
    losses = [row["train_loss"] for row in trainer.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result["post_training"]["loss"] < result["pre_training"]["loss"]


@pytest.mark.parametrize("task,metrics", [("regression", ["loss", "mse", "mae"]),
                                          ("classification", ["loss", "accuracy"])])
def test_run_files_follow_the_schema(tmp_path, task, metrics):
    trainer, result = train(tmp_path, task, epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["checkpoint.pt", "checkpoint.prev.pt", CONFIG, METRICS, RESULT])  # and no temporary files

    with open(tmp_path / METRICS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == metric_columns(metrics)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())

    saved = json.loads((tmp_path / RESULT).read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("pre_training", "post_training"):
        assert list(saved[key]) == metrics
    assert saved["post_training"] == {m: float(rows[-1][f"test_{m}"]) for m in metrics}
    assert saved["params"] == sum(p.numel() for p in trainer.model.parameters())
    assert saved["sequences_per_second"] > 0 and saved["train_seconds"] > 0
    assert (saved["model"], saved["dataset"], saved["epochs"], saved["batch_size"], saved["lr"]) == (
        "standin", "synthetic", 3, 16, 1e-2)
    assert {"torch", "python", "device", "cpu_model", "gpu_model", "threads", "hostname"} <= set(
        saved["environment"])

    config = json.loads((tmp_path / CONFIG).read_text())
    assert config["model"] == {"name": "standin", "out": out_size(task)}
    assert config["task"] == task and TrainConfig(**config["train"]) == trainer.config
    assert {"torch", "torchliquid", "python", "numpy"} <= set(config["versions"])


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_evaluate_checkpoint_reproduces_recorded_metrics_exactly(tmp_path, task):
    _, result = train(tmp_path, task, epochs=2, eval_batch_size=7)
    data = make_data(task)
    again = evaluate_checkpoint(tmp_path, lambda spec: StandIn(spec["out"]), data.test)
    assert again == json.loads((tmp_path / RESULT).read_text())["post_training"]


class NaNAfter(StandIn):
    """Produces a NaN/Inf output at training call ``bad_call`` (1-based); eval stays finite."""

    def __init__(self, bad_call: int, value: float) -> None:
        super().__init__(1)
        self.bad_call, self.value, self.calls = bad_call, value, 0

    def forward(self, x):
        y, h = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                y = y + self.value
        return y, h


@pytest.mark.parametrize("value,shown", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_non_finite_loss_stops_with_where_and_what(tmp_path, value, shown):
    model = NaNAfter(bad_call=8, value=value)  # 48 train sequences / 16 = 3 steps per epoch
    with pytest.raises(NonFiniteLossError) as err:
        train(tmp_path, model=model, epochs=5)
    message = str(err.value)
    assert f"mse loss is {shown}" in message
    assert "epoch 3/5, step 2/3" in message and "global step 8" in message
    assert "update was skipped" in message and "holds epoch 2" in message
    # The bad step was never applied: the saved epoch-2 weights are still finite and the model too.
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_check_interval_is_stated(tmp_path):
    with pytest.raises(NonFiniteLossError, match="checked every 2 steps"):
        train(tmp_path, model=NaNAfter(bad_call=2, value=float("nan")), finite_check_every=2)


def test_quiet_prints_nothing_and_verbose_prints_progress(tmp_path, capsys):
    train(tmp_path / "quiet", quiet=True)
    assert capsys.readouterr() == ("", "")
    train(tmp_path / "loud", quiet=False, epochs=2)
    out = capsys.readouterr().out
    assert "before training: test" in out and "after training: test" in out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "seq/s" in out and "ETA" in out


def test_timing_bookkeeping_with_an_injected_clock(tmp_path):
    ticks = itertools.count()
    lines: list[str] = []
    console = SimpleNamespace(print=lines.append)
    data = make_data("regression")
    trainer = Trainer(StandIn(1), data, "regression",
                      TrainConfig(epochs=3, batch_size=16, device="cpu"), out_dir=tmp_path,
                      console=console, clock=lambda: float(next(ticks)))
    result = trainer.fit()
    # Every clock reading is one tick later, so each timed span is a whole number of ticks.
    assert [row["epoch_seconds"] for row in trainer.history] == [1.0, 1.0, 1.0]
    assert [row["sequences_per_second"] for row in trainer.history] == [len(data.train.x)] * 3
    assert result["train_seconds"] == 3.0
    assert result["sequences_per_second"] == len(data.train.x)
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert len(epoch_lines) == 3 and epoch_lines[-1].endswith("ETA 0:00:00")
    assert not epoch_lines[0].endswith("ETA 0:00:00")


def test_same_seed_gives_identical_runs(tmp_path):
    a, ra = train(tmp_path / "a", epochs=2)
    b, rb = train(tmp_path / "b", epochs=2)
    assert ra["post_training"] == rb["post_training"]
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight, _ = train(tmp_path / "straight", epochs=4)
    train(tmp_path / "resumed", epochs=2)
    torch.manual_seed(123)  # a fresh process would not share the first run's RNG position
    resumed = Trainer(StandIn(1), make_data("regression"), "regression",
                      TrainConfig(epochs=4, batch_size=16, lr=1e-2, device="cpu", quiet=True),
                      out_dir=tmp_path / "resumed", run_info={"model": {"name": "standin"}})
    from torchliquid.train import load_run

    resumed.load_state_dict(load_run(tmp_path / "resumed")[0]["trainer"])
    resumed.fit()
    assert resumed.epoch == 4 and resumed.step == straight.step
    drop = {"epoch_seconds", "eval_seconds", "sequences_per_second"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    for pa, pb in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(pa, pb)


def test_zero_epochs_only_evaluates(tmp_path):
    trainer, result = train(tmp_path, epochs=0)
    assert result["post_training"] == result["pre_training"] and trainer.step == 0


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_metrics_match_an_independent_computation_at_any_batch_size(task):
    torch.manual_seed(0)
    model, split = StandIn(out_size(task)), make_data(task).test
    with torch.no_grad():
        out = model(split.x)[0]
    if task == "regression":
        want = {"loss": F.mse_loss(out, split.y).item(), "mae": (out - split.y).abs().mean().item()}
    else:
        want = {"loss": F.cross_entropy(out.flatten(0, 1), split.y.flatten()).item(),
                "accuracy": (out.argmax(-1) == split.y).float().mean().item()}
    for batch in (1, 5, len(split.x)):
        got = evaluate_split(model, Split(split.x, split.y), get_task(task), batch_size=batch,
                             device=torch.device("cpu"))
        for k, v in want.items():
            # The reference reduces in float32 (relative error ~1e-7 over a few hundred terms);
            # ours sums float64, so agreement to 1e-5 is loose enough for both and still tight.
            assert got[k] == pytest.approx(v, rel=1e-5), (k, batch)


@pytest.mark.parametrize("task,bad_out,match", [
    ("regression", lambda y: y[..., :0], "targets' shape"),
    ("classification", lambda y: y[:, 0], "logits"),
])
def test_wrong_model_output_shape_is_named(tmp_path, task, bad_out, match):
    class Wrong(StandIn):
        def forward(self, x):
            y, h = super().forward(x)
            return bad_out(y), h

    with pytest.raises(ValueError, match=match):
        train(tmp_path, task, model=Wrong(out_size(task)))


def test_bf16_autocast_trains_with_finite_loss(tmp_path):
    class Mlp(torch.nn.Module):  # Linear layers autocast to bf16 on CPU; the GRU would not
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(I, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

        def forward(self, x):
            return self.net(x)

    trainer, result = train(tmp_path, model=Mlp(), precision="bf16", epochs=2)
    assert all(math.isfinite(v) for v in result["post_training"].values())


# -- batches -----------------------------------------------------------------------------------


def epoch_indices(**kw):
    batches = EpochBatches(**{"n": 23, "batch_size": 5, "seed": 0, **kw})
    return lambda epoch: (batches.set_epoch(epoch), torch.cat(list(batches)))[1]


def test_permutation_is_seeded_per_epoch():
    a, b, other = epoch_indices(), epoch_indices(), epoch_indices(seed=1)
    assert torch.equal(a(0), b(0)) and torch.equal(a(3), b(3))
    assert not torch.equal(a(0), a(1))
    assert not torch.equal(a(0), other(0))
    assert sorted(a(2).tolist()) == list(range(23))  # one process sees every sequence once


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_are_equal_padded_and_cover_everything(world):
    shards = [epoch_indices(world_size=world, rank=r)(1) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-23 // world)
    together = torch.cat(shards).tolist()
    assert set(together) == set(range(23))
    assert len(together) - len(set(together)) == len(shards[0]) * world - 23  # only the padding repeats


@pytest.mark.parametrize("n,batch,world", [(23, 5, 1), (23, 4, 3), (2, 4, 3), (100, 100, 4)])
def test_eval_slices_cover_every_sequence_once(n, batch, world):
    covered = [i for r in range(world) for s in eval_slices(n, batch, world_size=world, rank=r)
               for i in range(n)[s]]
    assert sorted(covered) == list(range(n))
    assert all(s.stop - s.start <= batch for r in range(world)
               for s in eval_slices(n, batch, world_size=world, rank=r))


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": 0}, "lr"),
    ({"lr": "1e-3"}, "lr"), ({"device": "tpu"}, "device must be one of"),
    ({"precision": "fp16"}, "precision must be one of"), ({"seed": -1}, "seed"),
    ({"batch_size": 2.5}, "batch_size"), ({"checkpoint_every": -1}, "checkpoint_every"),
    ({"finite_check_every": 0}, "finite_check_every"), ({"threads": 0}, "threads"),
])
def test_train_config_rejects_bad_values_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_trainer_rejects_unknown_task_and_bad_splits(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        Trainer(StandIn(1), make_data("regression"), "ranking", TrainConfig(device="cpu"))
    with pytest.raises(TypeError, match="splits.val"):
        Trainer(StandIn(1), SimpleNamespace(train=make_data("regression").train), "regression",
                TrainConfig(device="cpu"))


def test_trainer_adam_is_fused_where_torch_has_it_and_updates_like_plain_adam():
    from torchliquid.train.optim import adam

    torch.manual_seed(0)
    fused_model = torch.nn.Linear(5, 3)
    plain_model = torch.nn.Linear(5, 3)
    plain_model.load_state_dict(fused_model.state_dict())
    fused, plain = adam(fused_model.parameters(), 1e-2), torch.optim.Adam(plain_model.parameters(), lr=1e-2)
    assert fused.defaults["fused"] is True  # CPU fused Adam exists from torch 2.4, the minimum
    x = torch.randn(16, 5)
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    plain.load_state_dict(fused.state_dict())  # checkpoints move between the two forms


def test_gather_batch_equals_advanced_indexing_with_repeats():
    from torchliquid.train.batches import gather_batch

    x, y = torch.randn(9, 4, 3), torch.randint(0, 5, (9, 4))
    idx = torch.tensor([8, 0, 3, 3, 7])  # padding wraps around: an index may repeat
    gx, gy = gather_batch(x, y, idx)
    assert torch.equal(gx, x[idx]) and torch.equal(gy, y[idx]) and gx.is_contiguous()


def test_a_long_epoch_prints_progress_inside_it(tmp_path, monkeypatch, capsys):
    """A line every EpochProgress.EVERY_S seconds inside an epoch (here: every step), with the
    batch, running loss, rate and the epoch's ETA; none for the last batch (the epoch's own line
    follows), none with --quiet."""
    from torchliquid.train.records import EpochProgress

    monkeypatch.setattr(EpochProgress, "EVERY_S", 0.0)
    lines: list[str] = []
    data = make_data("regression")
    Trainer(StandIn(1), data, "regression", TrainConfig(epochs=1, batch_size=16, device="cpu"),
            out_dir=tmp_path, console=SimpleNamespace(print=lines.append)).fit()
    n_batches = -(-len(data.train.x) // 16)
    inside = [line for line in lines if " batch " in line]
    assert [line.split()[3] for line in inside] == [f"{k}/{n_batches}" for k in range(1, n_batches)]
    assert all("train_loss" in line and "seq/s" in line and "epoch ETA" in line for line in inside)
    capsys.readouterr()
    Trainer(StandIn(1), data, "regression", TrainConfig(epochs=1, batch_size=16, device="cpu", quiet=True),
            out_dir=tmp_path / "q").fit()
    assert capsys.readouterr().out == ""
