"""Typed run configuration: one dataclass per component, checked once in ``__post_init__``.

Each component receives only its own section: the trainer gets :class:`TrainConfig`, the model
factory :class:`ModelConfig`, the dataset loader :class:`DataConfig`. :class:`RunConfig` groups
them with the output directory and is what ``config.json`` records, so a run can be rebuilt with
``RunConfig.from_dict(json.load(...)["run"])``.

Named recipes (the study's defaults, the demo) are small functions at the end of this file that
derive from each other rather than copies of a dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "nccl", "gloo")
LR_SCALINGS = ("linear", "none")
WIRINGS = ("autoncp", "fc")

# How each model is built when --wiring is not given, as in the study: CfC(inputs, units,
# proj_size=outputs) unwired, LTC(inputs, AutoNCP(units, outputs)).
DEFAULT_WIRING = {"cfc": None, "ltc": "autoncp"}


def _check_int(name: str, value: Any, minimum: int, fix: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {fix}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {set(choices)}, got {value!r}")


@dataclass
class TrainConfig:
    """How to train: optimiser, schedule, device, logging and checkpoints.

    Attributes:
        epochs: passes over the training split (0 only evaluates). Study: 50.
        batch_size: training sequences per optimiser step and per process (the global batch
            is ``batch_size * world_size``). Study: 64 to 2048 by task.
        lr: Adam learning rate for one process. Study: 1e-3.
        lr_scaling: ``"linear"`` multiplies ``lr`` by the number of processes (the study: 1e-3
            on one device, 2e-3 on two, 4e-3 on four); ``"none"`` uses ``lr`` as given (the
            experiments runner passes an already scaled lr). See :meth:`scaled_lr`.
        seed: seeds model init (by the caller) and the per-epoch batch permutations.
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, or ``"bf16"`` autocast for forward and loss.
        eval_batch_size: sequences per evaluation batch; None means ``batch_size``.
        threads: intra-op CPU threads; None means every available core, split between the
            processes of a node.
        backend: process-group backend under torchrun: ``"auto"`` (NCCL on CUDA, Gloo on
            CPU), ``"nccl"`` or ``"gloo"``. Unused in a single process.
        checkpoint_every: write ``checkpoint.pt`` every this many epochs (and always after the
            last); 0 disables the end-of-epoch checkpoints.
        checkpoint_steps: also write one every this many optimiser steps (global step count)
            inside an epoch, so a crash loses at most that many steps; 0 disables.
        monitor_interval: seconds between hardware samples (GPU via NVML, host via psutil)
            during training; 0 disables monitoring.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (bitwise repeatable runs
            for a fixed thread count and device, possibly slower on CUDA).
        finite_check_every: check the training loss for NaN/Inf every this many steps. Each
            check is one host sync; 1 stops at the exact step that went bad.
        quiet: print nothing except errors.
        log_every: print a progress line every this many epochs (and always the last).
        cuda_graphs: capture the training step of a full batch (forward, loss, backward, Adam)
            as one CUDA graph and replay it for every full batch (``torch.cuda.CUDAGraph``; see
            :mod:`torchliquid.train.graphs`). Needs device "cuda" (or "auto" on a GPU machine)
            and one process; the epoch's last partial batch and evaluation run eagerly.
    """

    epochs: int = 50
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    eval_batch_size: Optional[int] = None
    threads: Optional[int] = None
    checkpoint_every: int = 1
    finite_check_every: int = 1
    quiet: bool = False
    log_every: int = 1
    lr_scaling: str = "none"
    backend: str = "auto"
    checkpoint_steps: int = 0
    monitor_interval: float = 0.0
    deterministic: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 0, "use --epochs 0 to only evaluate")
        _check_int("batch_size", self.batch_size, 1, "pass e.g. --batch-size 512")
        if self.eval_batch_size is not None:
            _check_int("eval_batch_size", self.eval_batch_size, 1, "or leave it unset")
        if self.threads is not None:
            _check_int("threads", self.threads, 1, "or leave it unset for all cores")
        _check_int("seed", self.seed, 0, "pass a non-negative --seed")
        _check_int("checkpoint_every", self.checkpoint_every, 0, "0 disables checkpoints")
        _check_int("finite_check_every", self.finite_check_every, 1, "1 checks every step")
        _check_int("log_every", self.log_every, 1, "1 prints every epoch")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}; the study uses 1e-3")
        if self.lr == float("inf"):
            raise ValueError("lr must be finite, got inf; the study uses 1e-3")
        self.lr = float(self.lr)
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        _check_choice("backend", self.backend, BACKENDS)
        _check_int("checkpoint_steps", self.checkpoint_steps, 0, "0 checkpoints only per epoch")
        interval = self.monitor_interval
        if (isinstance(interval, bool) or not isinstance(interval, (int, float))
                or not 0 <= interval < float("inf")):
            raise ValueError(f"monitor_interval must be a number of seconds >= 0 (0 disables "
                             f"monitoring), got {interval!r}; the study sampled every 0.2 s")
        self.monitor_interval = float(interval)
        for name in ("quiet", "deterministic", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if self.cuda_graphs and self.device == "cpu":
            raise ValueError("cuda_graphs (--cuda-graphs) needs device 'cuda' (or 'auto' on a "
                             "machine with a GPU): CUDA graphs capture CUDA kernels; the device "
                             "is 'cpu'")

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size

    def scaled_lr(self, world_size: int) -> float:
        """The learning rate used with ``world_size`` processes (see ``lr_scaling``)."""
        _check_int("world_size", world_size, 1, "it counts processes")
        return self.lr * world_size if self.lr_scaling == "linear" else self.lr


@dataclass
class ModelConfig:
    """Which model to build; sizes of input/output come from the dataset at build time.

    Attributes:
        name: registry name in ``torchliquid.nn.MODELS`` (checked by the builder).
        units: hidden units (neurons of the wiring for wired models).
        wiring: ``"autoncp"``, ``"fc"`` or None (the model's study default, see DEFAULT_WIRING).
        kwargs: extra keyword arguments for the model constructor (JSON values only).
    """

    name: str = "cfc"
    units: int = 64
    wiring: Optional[str] = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model name must be a non-empty string, got {self.name!r}")
        _check_int("units", self.units, 1, "pass e.g. --units 64")
        if self.wiring is not None:
            _check_choice("wiring", self.wiring, WIRINGS)
        if not isinstance(self.kwargs, dict):
            raise TypeError(f"model kwargs must be a dict, got {type(self.kwargs).__name__}")

    @property
    def resolved_wiring(self) -> Optional[str]:
        return self.wiring if self.wiring is not None else DEFAULT_WIRING.get(self.name)


@dataclass
class DataConfig:
    """Which dataset to load and how much of it.

    Attributes:
        name: registry name in ``torchliquid.data.DATASETS`` (checked by the loader).
        data_dir: folder with one sub-folder per dataset; None searches the cache/packages.
        seed: seed of the train/val/test split.
        max_windows: keep at most this many windows (fast demos and tests); None keeps all.
        download: allow downloading from UCI when no local copy is found.
    """

    name: str = "sine"
    data_dir: Optional[str] = None
    seed: int = 0
    max_windows: Optional[int] = None
    download: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"dataset name must be a non-empty string, got {self.name!r}")
        _check_int("data seed", self.seed, 0, "pass a non-negative --seed")
        if self.max_windows is not None:
            _check_int("max_windows", self.max_windows, 1, "or leave it unset for all windows")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            self.data_dir = str(self.data_dir)


@dataclass
class RunConfig:
    """One training run: model, data, training and where its files go."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/run"

    def __post_init__(self) -> None:
        for name, kind in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"RunConfig.{name} must be a {kind.__name__}, "
                                f"got {type(getattr(self, name)).__name__}")
        self.out_dir = str(self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise a TypeError naming them."""
        try:
            return cls(model=ModelConfig(**d["model"]), data=DataConfig(**d["data"]),
                       train=TrainConfig(**d["train"]), out_dir=d["out_dir"])
        except KeyError as e:
            raise ValueError(f"run config lacks section {e}; expected model, data, train, "
                             "out_dir (as written by RunConfig.to_dict)") from None


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------


def study_run(model: str, dataset: str, out_dir: str, **train: Any) -> RunConfig:
    """The study's set-up: Adam 1e-3 scaled linearly with the processes, 64 units, 50 epochs,
    study wiring, hardware sampled every 0.2 s; ``train`` overrides."""
    study = {"epochs": 50, "lr": 1e-3, "lr_scaling": "linear", "monitor_interval": 0.2}
    return RunConfig(model=ModelConfig(name=model, units=64), data=DataConfig(name=dataset),
                     train=TrainConfig(**{**study, **train}), out_dir=out_dir)


# The demo keeps the study's optimiser and model sizes and shrinks the work. sine is one
# 48-step sequence, so an "epoch" is a single Adam step: it needs many epochs to move. power is
# cut to a seeded DEMO_POWER_WINDOWS windows (of 32 minutes) per split, which keeps the whole
# demo near a minute on 2 cores with the fused kernels while every loss falls visibly.
DEMO_DATASETS = ("sine", "power")
DEMO_MODELS = ("cfc", "ltc")
DEMO_POWER_WINDOWS = 8192
DEMO_EPOCHS = {"sine": 500, "power": 5}
DEMO_BATCH = {"sine": 1, "power": 64}


def demo_runs(root: str = "runs/demo", epochs: Optional[int] = None, quiet: bool = False,
              device: str = "auto", threads: Optional[int] = None) -> list[RunConfig]:
    """The runs of ``torchliquid demo``: CfC and LTC on sine and a power subset.

    ``epochs`` overrides every run's epochs. Each run prints about five progress lines and
    writes about five checkpoints, whatever its number of epochs.
    """
    runs = []
    for dataset in DEMO_DATASETS:
        n = DEMO_EPOCHS[dataset] if epochs is None else epochs
        for model in DEMO_MODELS:
            run = study_run(model, dataset, f"{root}/{model}-{dataset}", epochs=n,
                            batch_size=DEMO_BATCH[dataset], quiet=quiet, device=device,
                            threads=threads,
                            log_every=max(1, n // 5), checkpoint_every=max(1, n // 5))
            if dataset == "power":
                run.data.max_windows = DEMO_POWER_WINDOWS
            runs.append(run)
    return runs
