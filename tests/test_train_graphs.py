"""CUDA graphs for the training step (train/graphs.py), tested on CPU with an injected backend.

Start here: ``FakeGraphs`` stands in for ``torch.cuda.CUDAGraph``/``torch.cuda.graph``: it
records the side-stream warm-up, the capture and every replay, and a replay runs the captured
step body again eagerly, which is what a replay computes. ``graphed_trainer`` attaches a
StepGraph with it to a CPU Trainer, so the loop's graph branch (full batches replay, the partial
batch runs eagerly, warm-up undone, the NaN/Inf guard) is checked bit for bit against the eager
trainer. ``NoHostSync`` is the capture-safety check a CPU can make: the step body of the CfC and
LTC kernels CUDA runs, under a dispatch mode that fails on any op that reads a tensor's value on
the host (``.item()``, ``bool(tensor)``, ``nonzero``), which a capture forbids. What needs a GPU
(the real capture and replay) is the last test, skipped without CUDA.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from test_train import StandIn, make_data
from torchliquid import cli, workflow
from torchliquid.config import TrainConfig
from torchliquid.train import NonFiniteLossError, Trainer, graphs
from torchliquid.train.graphs import StepGraph, check_supported

N_TRAIN, BATCH = 48, 20  # make_data's train split: 2 full batches and a partial one of 8


class FakeGraphs:
    """The graph backend on CPU: capture records the body, replay runs it again."""

    def __init__(self, mode_factory=contextlib.nullcontext) -> None:
        self.calls: list[str] = []
        self.mode_factory = mode_factory  # context each replay runs in (NoHostSync below)

    @contextlib.contextmanager
    def side_stream(self):
        self.calls.append("side_stream")
        yield

    def capture(self, body):
        self.calls.append("capture")

        def replay():
            self.calls.append("replay")
            with self.mode_factory():
                body()

        return replay

    def rng_state(self):
        return torch.get_rng_state()

    def set_rng_state(self, state):
        torch.set_rng_state(state)


class DropoutStandIn(StandIn):
    """StandIn with dropout: the warm-up's RNG draws must be undone too."""

    def forward(self, x):
        y, h = super().forward(x)
        return torch.nn.functional.dropout(y, 0.2, self.training), h


def graphed_trainer(graphed: bool, model=StandIn, data=None, backend=None, **cfg) -> Trainer:
    """A CPU Trainer of ``model(1)`` (built after seeding), with a StepGraph when ``graphed``."""
    torch.manual_seed(0)
    config = TrainConfig(**{"epochs": 3, "batch_size": BATCH, "lr": 1e-2, "device": "cpu",
                            "quiet": True, "checkpoint_every": 0, **cfg})
    trainer = Trainer(model(1), data or make_data("regression"), "regression", config)
    if graphed:
        trainer.graph = StepGraph(trainer.forward_loss, trainer.optimizer, config.batch_size,
                                  backend or FakeGraphs())
    return trainer


def parameters(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


# -- the option and its refusals ---------------------------------------------------------------


def test_config_refuses_cuda_graphs_on_cpu_and_non_bools():
    with pytest.raises(ValueError, match=r"cuda_graphs \(--cuda-graphs\) needs device 'cuda'"):
        TrainConfig(cuda_graphs=True, device="cpu")
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        TrainConfig(cuda_graphs="yes")
    assert TrainConfig().cuda_graphs is False and TrainConfig(cuda_graphs=True).cuda_graphs


@pytest.mark.parametrize("device,world,optimizer,match", [
    ("cpu", 1, None, "--cuda-graphs .* needs --device cuda: .* this run is on cpu"),
    ("cuda", 2, None, "--cuda-graphs runs in one process, but this job has 2"),
    ("cuda", 1, "sgd", "needs an optimizer with a fused step .* got SGD"),
])
def test_check_supported_names_the_option_and_why(device, world, optimizer, match):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1) if optimizer else None
    with pytest.raises(ValueError, match=match):
        check_supported(torch.device(device), world, opt)


def test_check_supported_accepts_the_trainers_fused_adam():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1, fused=True)
    check_supported(torch.device("cuda", 0), 1, opt)  # no GPU needed to decide


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' resolves to CUDA here")
def test_trainer_refuses_when_auto_resolves_to_cpu():
    with pytest.raises(ValueError, match="needs --device cuda: .* this run is on cpu"):
        Trainer(StandIn(1), make_data("regression"), "regression",
                TrainConfig(epochs=1, device="auto", cuda_graphs=True, quiet=True))


def test_cli_passes_the_flag_and_refuses_cpu_in_one_line(capsys, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(workflow, "train_run", lambda run, **kw: seen.setdefault("run", run))
    base = ["train", "--model", "cfc", "--dataset", "sine", "--out", str(tmp_path / "r")]
    assert cli.main([*base, "--cuda-graphs", "--device", "cuda"]) == 0
    assert seen["run"].train.cuda_graphs is True
    seen.clear()
    assert cli.main(base) == 0 and seen["run"].train.cuda_graphs is False
    code = cli.main([*base, "--cuda-graphs", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--cuda-graphs" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' resolves to CUDA here")
def test_cli_refuses_before_loading_data_when_auto_is_cpu(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(workflow, "load_splits", lambda *a, **k: pytest.fail("data was loaded"))
    code = cli.main(["train", "--model", "cfc", "--dataset", "sine", "--threads", "1",
                     "--cuda-graphs", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--cuda-graphs (TrainConfig.cuda_graphs) needs --device cuda" in err


def test_option_off_builds_no_graph_and_steps_eagerly(monkeypatch):
    monkeypatch.setattr(graphs, "StepGraph", lambda *a, **k: pytest.fail("graph built"))
    trainer = graphed_trainer(False, epochs=1)
    assert trainer.graph is None
    trainer.fit()
    assert trainer.step == 3  # 2 full batches + the partial one, all eager


# -- the step logic with the stand-in backend ----------------------------------------------------


@pytest.mark.parametrize("model", [StandIn, DropoutStandIn])
def test_graphed_training_equals_eager_bit_for_bit(model):
    eager = graphed_trainer(False, model=model)
    eager.fit()
    graphed = graphed_trainer(True, model=model)
    graphed.fit()
    assert [r["train_loss"] for r in graphed.history] == [r["train_loss"] for r in eager.history]
    assert [r["test_loss"] for r in graphed.history] == [r["test_loss"] for r in eager.history]
    assert all(torch.equal(a, b) for a, b in zip(parameters(graphed), parameters(eager)))
    assert graphed.step == eager.step == 9
    # one warm-up on the side stream, one capture, then only the 2 full batches per epoch replay
    # (the partial batch of 8 and every evaluation ran eagerly)
    calls = graphed.graph.backend.calls
    assert calls == ["side_stream", "capture"] + ["replay"] * 6
    assert (graphed.graph.captures, graphed.graph.replays) == (1, 6)
    assert not hasattr(graphed.optimizer, "found_inf")  # eager steps never see the graph's flag
    assert all(not g.get("capturable") for g in graphed.optimizer.param_groups)


def test_warm_up_is_undone_before_the_first_replay():
    trainer = graphed_trainer(True, model=DropoutStandIn)
    before, rng = parameters(trainer), torch.get_rng_state()
    x, y = trainer.data.train.x[:BATCH], trainer.data.train.y[:BATCH]
    trainer.graph._capture(x, y)
    assert all(torch.equal(a, b) for a, b in zip(parameters(trainer), before))
    assert torch.equal(torch.get_rng_state(), rng)
    state = [v for s in trainer.optimizer.state.values() for v in s.values()]
    assert state and all(not v.any() for v in state)  # Adam's fresh state: step 0, zero moments
    assert trainer.graph.replays == 0 and trainer.graph.bad_steps().item() == 0


def test_other_shapes_run_eagerly():
    trainer = graphed_trainer(True)
    x, y = trainer.data.train.x, trainer.data.train.y
    graph = trainer.graph
    assert graph.covers(x[:BATCH], y[:BATCH]) and not graph.covers(x[:8], y[:8])
    trainer.train_step(x[:BATCH], y[:BATCH])
    assert graph.covers(x[BATCH:2 * BATCH], y[BATCH:2 * BATCH])
    assert not graph.covers(x[:BATCH, :4], y[:BATCH, :4])  # same batch, other length
    trainer.train_step(x[:8], y[:8])
    assert (graph.captures, graph.replays, trainer.step) == (1, 1, 2)


def test_loading_optimizer_state_recaptures():
    trainer = graphed_trainer(True, epochs=1)
    trainer.fit()
    state = trainer.state_dict()
    trainer.load_state_dict(state)  # new optimizer state tensors: the old graph would be stale
    x, y = trainer.data.train.x[:BATCH], trainer.data.train.y[:BATCH]
    trainer.train_step(x, y)
    assert trainer.graph.captures == 2
    assert all(not g.get("capturable") for g in state["optimizer"]["param_groups"])


def poison(trainer: Trainer, rows) -> None:
    """NaN into one input of each training sequence in ``rows``: their batches' loss is NaN."""
    trainer.data.train.x = trainer.data.train.x.clone()
    trainer.data.train.x[rows, 3, 0] = float("nan")


def test_non_finite_loss_stops_and_its_update_is_skipped_on_the_device():
    trainer = graphed_trainer(True)
    poison(trainer, slice(None))  # the first step (a full batch, graphed) goes bad
    before = parameters(trainer)
    with pytest.raises(NonFiniteLossError, match=r"the mse loss is nan at epoch 1/3, step 1/3 "
                                                 r".* this step's update was skipped"):
        trainer.fit()
    assert (trainer.graph.replays, trainer.step) == (1, 0)
    assert all(torch.equal(a, b) for a, b in zip(parameters(trainer), before))
    assert all(int(s["step"]) == 0 for s in trainer.optimizer.state.values())  # Adam's too


def test_unchecked_non_finite_steps_are_counted_and_stop_at_the_next_check():
    trainer = graphed_trainer(True, finite_check_every=50)
    trainer.batches.set_epoch(1)
    poison(trainer, next(iter(trainer.batches))[:1])  # one sequence of epoch 1's first batch
    with pytest.raises(NonFiniteLossError, match="step 3/3 .* checked every 50 steps"):
        trainer.fit()  # the epoch's last (partial, eager) batch is checked: it counts the graph's
    assert trainer.graph.bad_steps().item() == 1 and trainer.graph.replays == 2
    assert all(torch.isfinite(p).all() for p in parameters(trainer))
    assert all(int(s["step"]) == 1 for s in trainer.optimizer.state.values())  # 1 of 2 applied


# -- capture safety of the kernels CUDA runs ----------------------------------------------------


HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal"}


class NoHostSync(TorchDispatchMode):
    """Fails on any op that reads tensor values on the host: forbidden inside a CUDA capture
    (on a GPU each would be a device sync, and a capture error)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in HOST_READS:
            raise AssertionError(f"host read inside the captured step: {func._schema.name}")
        self.ops += 1
        return func(*args, **(kwargs or {}))


# What CUDA runs (fast_paths.auto_cfc / auto_ltc off the CPU): CfC "function-torch", LTC the torch
# Functions (sparse for AutoNCP, dense for the fully connected wiring); with mixed memory too.
MIXED = {"mixed_memory": True}
CUDA_PATHS = [("cfc", None, "function-torch", {}), ("cfc", "autoncp", "function-torch", {}),
              ("ltc", "autoncp", "torch-sparse", {}), ("ltc", "fc", "torch-dense", {}),
              ("cfc", None, "function-torch", MIXED), ("ltc", "autoncp", "torch-sparse", MIXED)]


def liquid_trainer(name, wiring, implementation, backend, kwargs=None, **cfg):
    def build(out):
        spec = {"name": name, "input_size": 3, "output_size": out, "units": 8, "wiring": wiring,
                **(kwargs or {})}
        model = workflow.build_from_spec(spec)
        for layer in model.modules():
            if hasattr(type(layer), "IMPLEMENTATIONS"):
                layer.implementation = implementation
        return model

    trainer = graphed_trainer(True, model=build, data=make_data("regression", n=32),
                              backend=backend, epochs=2, batch_size=8, **cfg)  # 2 full batches
    return trainer, trainer.model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name,wiring,implementation,kwargs", CUDA_PATHS)
def test_the_cuda_kernels_step_reads_nothing_on_the_host(name, wiring, implementation, kwargs,
                                                         precision):
    modes = []
    backend = FakeGraphs(mode_factory=lambda: modes.append(NoHostSync()) or modes[-1])
    trainer, _ = liquid_trainer(name, wiring, implementation, backend, kwargs,
                                precision=precision)
    trainer.fit()
    assert trainer.graph.replays == 4 and all(m.ops > 100 for m in modes)
    assert all(math.isfinite(r["train_loss"]) for r in trainer.history)


def test_the_ltc_index_is_the_one_host_read_and_the_warm_up_caches_it():
    """The first LTC forward builds its synapse index (``nonzero``, a host read): the warm-up
    runs it before capture, so the detector above does catch what a capture would reject."""
    trainer, model = liquid_trainer("ltc", "autoncp", "torch-sparse", FakeGraphs())
    x = trainer.data.train.x[:4]
    with pytest.raises(AssertionError, match="aten::nonzero"), NoHostSync():
        model(x)
    model(x)  # a warm-up step
    with NoHostSync():  # the indices are cached now
        model(x)


# -- benchmarks/gpu_check.py: the prepared GPU check, its pieces on CPU --------------------------


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass resolves annotations through it
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_prints_commands_the_cli_and_bench_accept(capsys, tmp_path):
    check = gpu_check()
    assert check.main(["--dry-run", "--data-dir", "data", "--out", str(tmp_path)]) == 0
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()
             if not line.startswith(("#", "ncps"))]
    bench, trains = lines[0], lines[1:]
    assert bench[1].endswith("bench_train.py") and bench[bench.index("--device") + 1] == "cuda"
    bench_help = subprocess.run([sys.executable, bench[1], "--help"], capture_output=True,
                                text=True, timeout=120).stdout
    assert all(flag in bench_help for flag in bench if flag.startswith("--"))
    assert len(trains) == 4 and sum("--cuda-graphs" in t for t in trains) == 2
    for argv in trains:  # each parses as torchliquid train, on CUDA, sampling the GPU
        args = cli.build_parser().parse_args(argv[argv.index("train"):])
        assert args.device == "cuda" and args.monitor_interval == 0.1 and args.model in ("cfc", "ltc")
    assert not (tmp_path / "work").exists()  # nothing ran


def test_gpu_check_runs_a_train_step_and_tabulates_gpu_utilisation(tmp_path):
    check = gpu_check()
    args = SimpleNamespace(work=str(tmp_path), smoke=True, device="cpu", cfc_epochs=1,
                           ltc_epochs=1, bench_timeout_s=60, train_timeout_s=120)
    bench, cfc_eager, cfc_graphs, *_ = check.plan(args)
    assert cfc_graphs.note.startswith("skipped: --cuda-graphs needs --device cuda")
    logged = []
    check.run_step(cfc_eager, "cpu", logged.append, deadline=time.monotonic() + 300)
    check.run_step(cfc_graphs, "cpu", logged.append, deadline=time.monotonic() + 300)
    assert cfc_eager.outcome["status"] == "ok", "\n".join(logged)
    # A bench result and GPU samples as they come back from a CUDA machine.
    gpu = {"devices": {"gpu0": {"util_pct_mean": 87.4, "util_pct_peak": 100.0}, "host": {}}}
    bench.result.write_text(json.dumps({"records": [
        {"workload": "Traffic-like", "batch": 512, "case": "tl-module-cfc",
         "seq_per_s": {"median": 12345.6}, "device_peak_mb": 20.0},
        {"workload": "Traffic-like", "batch": 512, "case": "ncps-ltc", "seq_per_s": None,
         "skipped": "TimeoutError: predicted 3 s/step"}]}))
    bench.outcome = {"status": "ok", "monitor": gpu}
    rows = check.summary_rows([bench, cfc_eager, cfc_graphs])
    table = check.format_rows(rows)
    assert "bench Traffic-like B=512 tl-module-cfc | 12,346" in table and "| 87 " in table
    assert "| 100 " in table and "TimeoutError" in table
    assert rows[2]["what"] == "train-cfc-eager" and rows[2]["seq_per_s"] > 0
    assert rows[2]["test_metric"].startswith("mae ") and rows[2]["note"] == "no GPU sampled"
    assert rows[3] == {"what": "train-cfc-graphs",
                       "note": "skipped: --cuda-graphs needs --device cuda"}


# -- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name,wiring", [("cfc", None), ("ltc", "autoncp")])
def test_cuda_graph_training_matches_eager_on_the_gpu(name, wiring, precision):
    def run(cuda_graphs, data=None):
        torch.manual_seed(0)
        spec = {"name": name, "input_size": 3, "output_size": 1, "units": 16, "wiring": wiring}
        config = TrainConfig(epochs=3, batch_size=BATCH, lr=1e-2, device="cuda", quiet=True,
                             checkpoint_every=0, cuda_graphs=cuda_graphs, precision=precision)
        trainer = Trainer(workflow.build_from_spec(spec), data or make_data("regression"),
                          "regression", config)
        trainer.fit()
        return trainer

    eager, graphed = run(False), run(True)
    assert graphed.graph.captures == 1 and graphed.graph.replays == 6
    # Same kernels on the same data, but cuBLAS may pick other algorithms under capture and
    # LTC's index_add sums with atomics: rounding differs, amplified a little over 9 Adam steps.
    # A broken graph (stale inputs, accumulated gradients, an undone warm-up) is off by >> 1e-3.
    tol = 1e-3 if precision == "fp32" else 2e-2
    for a, b in zip(graphed.history, eager.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=tol)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=tol)
    # The NaN/Inf guard on the GPU: the bad step's update is skipped, then the run stops.
    data = make_data("regression")
    data.train.x = data.train.x.clone()
    data.train.x[:, 3, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="step 1/3"):
        run(True, data)
