"""CUDA graphs for the training step: capture forward, loss, backward and Adam once, replay per batch.

A CfC/LTC training step on a GPU is hundreds of small kernels (a few per time step, forward and
backward), each launched from Python: the GPU waits on the launches. ``TrainConfig(cuda_graphs=True)``
(``torchliquid train --cuda-graphs``) records the whole step once as a ``torch.cuda.CUDAGraph`` and
then launches it as one unit per batch, following PyTorch's whole-network capture recipe
(docs: "CUDA semantics" > "CUDA Graphs" > "Whole-network capture"):

    static_x, static_y           the batch is copied into fixed tensors (graphs replay fixed addresses)
    warm-up                      3 eager steps on a side stream, so lazy state (Adam's moments, the
                                 LTC synapse index, cuBLAS handles) exists before capture; the model,
                                 the optimizer and the RNG are then restored: warm-up trains nothing
    zero_grad(set_to_none=True)  before capture, so backward() allocates .grad from the graph's pool
    capture                      loss = forward_loss(static_x, static_y); zero_grad(set_to_none=False);
                                 loss.backward(); optimizer.step()   (Adam fused, capturable)
    replay                       static_x.copy_(x); static_y.copy_(y); graph.replay()

Only full batches of the first captured shape are replayed; the epoch's last, partial batch runs
eagerly (``StepGraph.covers``), and so does evaluation. bf16 autocast works inside the graph
with its weight-cast cache off (``cache_enabled=False``, which capture requires).

The NaN/Inf guard needs no host sync inside the graph: the step computes
``found_inf = !isfinite(loss)`` on the GPU and hands it to the fused Adam (``optimizer.found_inf``,
the hook torch's GradScaler uses), which then skips that update and its step count on the device.
``bad_steps()`` counts such steps; the trainer adds it to its NaN/Inf check (one host sync
every ``finite_check_every`` steps, and at the epoch's last batch, replayed or eager) and stops
with ``NonFiniteLossError``, as in eager mode.

Capture safety of the kernels (checked on CPU by tests/test_train_graphs.py, which runs the
step body under a dispatch mode that fails on any host read): CUDA runs CfC through
``cfc_sequence(implementation="function-torch")`` and LTC through the torch-sparse/-dense
Functions, which read no tensor values on the host; ``fast_paths._kernel_dt`` keeps dt a
tensor off the CPU (no ``bool(tensor)``); ``sequence.check_elapsed_times`` (only reached with
timespans, which the trainer never passes) queues ``torch._assert_async``, a kernel. The one
host read, the LTC synapse index's ``nonzero``, runs once per mask in the warm-up and is cached.

Not supported, and refused with the reason (:func:`check_supported`): a device other than CUDA,
more than one process (DDP's gradient all-reduce would need NCCL capture and 11 warm-up steps),
and an optimizer without a fused step. The learning rate is captured as a constant (the trainer
has no schedule).

The graph machinery is a small backend (:class:`CudaGraphBackend`) so the step logic runs on
CPU in tests with a stand-in that records captures and replays by calling the body again.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Protocol

import torch

WARMUP_STEPS = 3  # the docs' recipe (DDP would need 11)


def check_supported(device: torch.device, world_size: int,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Raise ValueError saying why ``--cuda-graphs`` cannot run here (it is never ignored)."""
    if device.type != "cuda":
        raise ValueError(f"--cuda-graphs (TrainConfig.cuda_graphs) needs --device cuda: it "
                         f"captures CUDA kernels, and this run is on {device}; drop --cuda-graphs")
    if world_size > 1:
        raise ValueError(f"--cuda-graphs runs in one process, but this job has {world_size}: "
                         "capturing DDP's gradient all-reduce is not supported by the trainer; "
                         "drop --cuda-graphs or launch one process")
    if optimizer is not None and not getattr(optimizer, "_step_supports_amp_scaling", False):
        raise ValueError(f"--cuda-graphs needs an optimizer with a fused step (the trainer's "
                         f"torch.optim.Adam(fused=True)), got {type(optimizer).__name__}: the "
                         "captured step skips a non-finite loss's update through it on the GPU")


class GraphBackend(Protocol):
    """What :class:`StepGraph` needs from the graph machinery."""

    def side_stream(self) -> contextlib.AbstractContextManager: ...
    def capture(self, body: Callable[[], None]) -> Callable[[], None]: ...
    def rng_state(self) -> Any: ...
    def set_rng_state(self, state: Any) -> None: ...


class CudaGraphBackend:
    """torch.cuda: warm-up on a side stream, capture with ``torch.cuda.graph``, replay."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        current = torch.cuda.current_stream(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            yield
        current.wait_stream(stream)

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        try:  # thread_local: the hardware monitor's sampling thread may call NVML meanwhile
            with torch.cuda.device(self.device), torch.cuda.graph(
                    graph, capture_error_mode="thread_local"):
                body()
        except RuntimeError as e:
            raise RuntimeError(f"capturing the training step as a CUDA graph failed ({e}); "
                               "something in the step synchronised with the host or allocated "
                               "pinned memory; train without --cuda-graphs") from e
        return graph.replay

    def rng_state(self) -> Any:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device)

    def set_rng_state(self, state: Any) -> None:
        torch.set_rng_state(state[0])
        torch.cuda.set_rng_state(state[1], self.device)


class StepGraph:
    """One captured training step for full batches of ``batch_size``.

    Args:
        forward_loss: ``(x, y, cache_enabled) -> scalar loss`` (forward under the run's autocast
            with that cache setting, the task's checks and loss), as the eager step computes it.
        optimizer: a fused optimizer over the model's parameters (see :func:`check_supported`).
        batch_size: the batch size the graph serves; other batches run eagerly.
        backend: the graph machinery (:class:`CudaGraphBackend`; a stand-in in tests).
        warmup_steps: eager steps before capture (their effect is undone).
    """

    def __init__(self, forward_loss: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
                 batch_size: int, backend: GraphBackend, warmup_steps: int = WARMUP_STEPS) -> None:
        self.forward_loss, self.optimizer = forward_loss, optimizer
        self.batch_size, self.backend, self.warmup_steps = batch_size, backend, warmup_steps
        self.replay: Callable[[], None] | None = None
        self.captures = self.replays = 0
        self._static: dict[str, Any] = {}
        self._zero = torch.zeros(())

    def covers(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """True when this batch replays the graph (a full batch of the captured shapes)."""
        if self.replay is None:
            return x.shape[0] == self.batch_size
        sx, sy = self._static["x"], self._static["y"]
        return (x.shape == sx.shape and y.shape == sy.shape and x.dtype == sx.dtype
                and y.dtype == sy.dtype)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step on (x, y); returns the loss on the device (no host sync). The first
        call warms up and captures, then replays."""
        if self.replay is not None and self.optimizer.state is not self._static["state"]:
            self.reset()  # optimizer.load_state_dict replaced the state tensors it captured
        if self.replay is None:
            self._capture(x, y)
        s = self._static
        s["x"].copy_(x)
        s["y"].copy_(y)
        self.replay()  # type: ignore[misc]
        self.replays += 1
        return s["loss"].clone()

    def bad_steps(self) -> torch.Tensor:
        """How many replayed steps had a non-finite loss (their updates were skipped), on the
        device: a () tensor, zero before the first capture."""
        return self._static.get("bad_steps", self._zero)

    def reset(self) -> None:
        """Drop the graph; the next full batch captures a new one (automatic after
        ``optimizer.load_state_dict``, which replaces the state tensors the graph updates)."""
        self.replay, self._static = None, {}

    # -- capture -------------------------------------------------------------------------------

    def _body(self) -> None:
        """The captured step; every tensor it writes outlives it in ``self._static``."""
        s = self._static
        loss = self.forward_loss(s["x"], s["y"], False)
        found_inf = (~torch.isfinite(loss.detach())).to(torch.float32)  # () on the device
        s["found_inf"] = found_inf  # the fused Adam reads this memory at every replay
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        try:
            self.optimizer.step()
        finally:  # eager steps (the partial batch) must not see the graph's flag
            del self.optimizer.found_inf  # type: ignore[attr-defined]
        s["loss"].copy_(loss.detach())
        s["bad_steps"].add_(found_inf)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._static = {"x": x.clone(), "y": y.clone(),
                        "loss": torch.zeros((), dtype=torch.float32, device=x.device),
                        "bad_steps": torch.zeros((), dtype=torch.float32, device=x.device)}
        saved = self._snapshot()
        with self.backend.side_stream():
            for _ in range(self.warmup_steps):
                self._body()
        self._restore(saved)
        self._static["bad_steps"].zero_()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates .grad in the graph's pool
        flags = [group.get("capturable", False) for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:  # the capture check; the fused step ignores it
            group["capturable"] = True
        try:
            self.replay = self.backend.capture(self._body)
        finally:  # kept False outside capture: checkpoints record the run's own optimizer
            for group, flag in zip(self.optimizer.param_groups, flags):
                group["capturable"] = flag
        self._static["grads"] = [p.grad for group in self.optimizer.param_groups
                                 for p in group["params"]]  # the graph's grads stay allocated
        self._static["state"] = self.optimizer.state
        self.captures += 1

    def _snapshot(self) -> dict[str, Any]:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        state = {p: {k: v.clone() for k, v in self.optimizer.state[p].items()
                     if isinstance(v, torch.Tensor)}
                 for p in params if p in self.optimizer.state}
        return {"params": [(p, p.detach().clone()) for p in params], "state": state,
                "rng": self.backend.rng_state()}

    @torch.no_grad()
    def _restore(self, saved: dict[str, Any]) -> None:
        """Undo the warm-up in place (the graph captures these very tensors): parameters and
        RNG as before; optimizer state as before, or zeros where it did not exist yet (Adam's
        fresh state: step 0, zero moments)."""
        for p, value in saved["params"]:
            p.copy_(value)
        for p, state in self.optimizer.state.items():
            before = saved["state"].get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k in before:
                    v.copy_(before[k])
                elif isinstance(v, torch.Tensor):
                    v.zero_()
        self.backend.set_rng_state(saved["rng"])


def for_trainer(enabled: bool, device: torch.device, world_size: int,
                optimizer: torch.optim.Optimizer, forward_loss: Callable[..., torch.Tensor],
                batch_size: int) -> StepGraph | None:
    """The trainer's StepGraph on CUDA when ``enabled`` (checked), else None (eager steps)."""
    if not enabled:
        return None
    check_supported(device, world_size, optimizer)
    return StepGraph(forward_loss, optimizer, batch_size, CudaGraphBackend(device))
