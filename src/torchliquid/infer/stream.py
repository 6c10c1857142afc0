"""Online (streaming) inference and per-step hidden states (field case A19).

A CfC/LTC layer is a recurrence: the state after a window is exactly what the next window needs,
so one long sequence can be fed in pieces of any size, down to one step at a time, and give the
same numbers as one call, PROVIDED the state is carried between the pieces and reset between
unrelated sequences. :class:`Stream` does that bookkeeping:

    stream = Stream(model, batch_size=1)       # state = zeros (h, or (h, c) with mixed memory)
    for x_t, dt in sensor:                     # x_t (B, I), or (I,) when batch_size=1
        y_t = stream.step(x_t, dt)             # (B, O) / (O,); dt = elapsed time (default 1)
    saved = stream.state                       # carry it elsewhere, or
    stream.reset()                             # start an unrelated sequence from zeros

The state is NOT part of the model's weights: a trained model starts every sequence from zeros
(as in training), so do not save the state with the model unless you mean to resume a stream.

:func:`hidden_states` runs a whole sequence and also returns the state after EVERY step
(B, T, U), which ``model.forward`` does not (it returns only the last one).

Without autograd (``grad=False``, the default) and without mixed memory, ``step`` runs the layer's
streaming path (nn.step_path: tensors derived from the parameters once, rebuilt when they change,
the cell's math op for op); otherwise it calls the layer's own parts in the order of its sequence
driver (nn.sequence): mixed-memory LSTM, then the cell's ``_step(x, h, dt)``, then the readout
``fc``. Arguments are validated once per call of ``step``, not again inside the cell.

Shape legend: B batch, T time, I inputs, U units (state), O outputs.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from torchliquid.nn.sequence import canonical_input, canonical_state, canonical_timespans, check_elapsed_times
from torchliquid.nn.step_path import step_plan

State = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _check_layer(model: Any) -> nn.Module:
    needed = ("rnn_cell", "fc", "use_mixed", "state_size", "input_size", "batch_first")
    if not isinstance(model, nn.Module) or any(not hasattr(model, name) for name in needed):
        raise TypeError(f"model must be a torchliquid.nn CfC or LTC layer, got {type(model).__name__}")
    return model


def _reference_parameter(model: nn.Module) -> torch.Tensor:
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is None:
        raise TypeError(f"model {type(model).__name__} has no floating-point parameters to take a dtype from")
    return parameter


def _layer_step(model: nn.Module, x_BI: torch.Tensor, h_BU: torch.Tensor, c_BU: Optional[torch.Tensor],
                dt_B1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One step of the layer's recurrence, as nn.sequence.SequenceLayer._forward_sequence does it.

    Arguments are already canonical (x (B, I), h and c (B, U), dt (B, 1), the layer's dtype), so
    the cell's ``_step`` (the driver's per-step contract) is called directly: going through the
    cell's ``forward`` would re-validate every argument on every step of a stream.
    """
    if c_BU is not None:
        h_BU, c_BU = model.lstm(x_BI, (h_BU, c_BU))
    cell = model.rnn_cell
    step = getattr(cell, "_step", None)
    y_BM, h_BU = step(x_BI, h_BU, dt_B1) if step is not None else cell(x_BI, h_BU, dt_B1)
    return model.fc(y_BM), h_BU, c_BU


class Stream:
    """Step a CfC/LTC layer one time step at a time, keeping its hidden state between calls.

    Args:
        model: a torchliquid CfC or LTC layer (any wiring, mode, mixed memory). Put it in eval
            mode first if it has dropout; the stream does not change the model's mode.
        batch_size: B, the number of independent streams advanced together.
        grad: record autograd graphs (default False: steps run under ``torch.no_grad``).

    ``step(x_t, dt=None)``: x_t (B, I), or (I,) when batch_size == 1 (the output is then (O,));
    dt None (1.0), a float, a 0-d tensor, (B,) or (B, 1): the time elapsed since the previous
    step, for irregularly sampled data. Returns y_t (B, O). ``state`` is h (B, U), or (h, c) with
    mixed memory, as ``model.forward`` takes it as ``hx``. ``reset(state=None)`` starts over.

    Stepping a sequence through ``step`` equals ``model(sequence)`` step for step (tested within
    1e-6 for CfC and LTC, dense, wired and mixed memory, with and without timespans).

    Example:
        >>> from torchliquid.nn import CfC
        >>> model = CfC(3, 8).eval()
        >>> stream = Stream(model)
        >>> y = stream.step(torch.randn(3), dt=0.5)
        >>> tuple(y.shape), tuple(stream.state.shape)
        ((8,), (1, 8))
    """

    def __init__(self, model: nn.Module, batch_size: int = 1, *, grad: bool = False) -> None:
        self.model = _check_layer(model)
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.grad = bool(grad)
        self.steps = 0
        self.reset()

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """h (B, U), or (h, c) with mixed memory: pass it as ``hx`` to ``model.forward`` or ``reset``."""
        return (self._h, self._c) if self._c is not None else self._h

    def reset(self, state: Optional[State] = None) -> None:
        """Start a new sequence: zeros (the training convention), or ``state`` (as ``state`` returns it)."""
        reference = _reference_parameter(self.model)
        self._dtype, self._device = reference.dtype, reference.device
        self._ones_B1 = torch.ones(self.batch_size, 1, dtype=self._dtype, device=self._device)
        like_BTI = torch.empty(self.batch_size, 1, self.model.input_size, dtype=self._dtype, device=self._device)
        h_BU, c_BU = canonical_state(state, self.model.state_size, bool(self.model.use_mixed), False, like_BTI)
        self._h, self._c = h_BU, c_BU
        self.steps = 0

    # -- stepping ------------------------------------------------------------------------------

    def _x(self, x_t: Any) -> Tuple[torch.Tensor, bool]:
        inputs = self.model.input_size
        if (isinstance(x_t, torch.Tensor) and x_t.dim() == 2 and x_t.shape[0] == self.batch_size
                and x_t.shape[1] == inputs and x_t.dtype == self._dtype and x_t.device == self._device):
            return x_t, False  # the common case, checked without building anything
        if isinstance(x_t, np.ndarray):
            if not np.issubdtype(x_t.dtype, np.number):
                raise ValueError(f"x_t must hold numbers, got numpy dtype {x_t.dtype}")
            x_t = torch.from_numpy(x_t)
        if not isinstance(x_t, torch.Tensor):
            raise TypeError(f"x_t must be a torch.Tensor or numpy array, got {type(x_t).__name__}")
        single = x_t.dim() == 1 and self.batch_size == 1
        if not single and tuple(x_t.shape) != (self.batch_size, inputs):
            also = f" or ({inputs},)" if self.batch_size == 1 else ""
            raise ValueError(
                f"x_t must have shape (batch_size={self.batch_size}, input_size={inputs}){also}, got "
                f"{tuple(x_t.shape)}; make a Stream with batch_size={x_t.shape[0] if x_t.dim() == 2 else 1} "
                "for a different batch"
            )
        if single and x_t.shape[0] != inputs:
            raise ValueError(f"x_t must have input_size={inputs} features, got shape {tuple(x_t.shape)}")
        return x_t.reshape(self.batch_size, inputs).to(dtype=self._dtype, device=self._device), single

    def _dt(self, dt: Any) -> torch.Tensor:
        """dt as (B, 1) in the layer's dtype (1 where None)."""
        if dt is None:
            return self._ones_B1
        if isinstance(dt, bool) or not isinstance(dt, (numbers.Real, torch.Tensor, np.ndarray)):
            raise TypeError(f"dt must be None, a float or a tensor, got {type(dt).__name__}")
        dt = torch.as_tensor(dt)
        check_elapsed_times(dt)
        if dt.dim() == 0 and dt.device.type == "cpu":
            return torch.full((self.batch_size, 1), float(dt), dtype=self._dtype, device=self._device)
        dt = dt.to(dtype=self._dtype, device=self._device)
        if dt.dim() == 0:
            return dt.reshape(1, 1).expand(self.batch_size, 1)
        if tuple(dt.shape) in ((self.batch_size,), (self.batch_size, 1)):
            return dt.reshape(self.batch_size, 1)
        raise ValueError(
            f"dt must be a scalar, ({self.batch_size},) or ({self.batch_size}, 1) for batch_size={self.batch_size}, "
            f"got shape {tuple(dt.shape)}"
        )

    def step(self, x_t: Any, dt: Any = None) -> torch.Tensor:
        """Consume one time step; returns the output y_t (B, O), or (O,) for a (I,) input."""
        x_BI, single = self._x(x_t)
        plan = None if self.grad or self._c is not None else step_plan(self.model, x_BI)
        if plan is not None:  # the layer's streaming path (nn.step_path); dt None: exactly dt = 1
            dt_B1 = None if dt is None else self._dt(dt)
            if not (x_BI.requires_grad or self._h.requires_grad or (dt_B1 is not None and dt_B1.requires_grad)):
                y_BO, self._h = plan.run(x_BI, self._h, dt_B1)  # detached: records no graph
                self.steps += 1
                return y_BO[0] if single else y_BO
        dt_B1 = self._dt(dt)
        with contextlib.nullcontext() if self.grad else torch.no_grad():
            y_BO, self._h, self._c = _layer_step(self.model, x_BI, self._h, self._c, dt_B1)
        self.steps += 1
        return y_BO[0] if single else y_BO

    def run(self, chunk: Any, timespans: Any = None) -> torch.Tensor:
        """Step through a chunk (B, T, I) — or (T, I) when batch_size == 1 — batch first; returns (B, T, O).

        ``timespans``: None, a float, (T,) or (B, T). Equivalent to calling ``step`` T times.
        """
        x = torch.as_tensor(chunk) if isinstance(chunk, np.ndarray) else chunk
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
            raise ValueError(f"chunk must be a (B, T, I) or (T, I) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        unbatched = x.dim() == 2
        x_BTI = x.unsqueeze(0) if unbatched else x
        dt_BT1 = canonical_timespans(timespans, True, unbatched, x_BTI.to(self._dtype))
        outputs = [self.step(x_BTI[:, t], dt_BT1[:, t]) for t in range(x_BTI.shape[1])]
        y_BTO = torch.stack(outputs, dim=1)
        return y_BTO[0] if unbatched else y_BTO


class SequenceStates(NamedTuple):
    """What :func:`hidden_states` returns (layouts follow the model's batch_first / unbatched input).

    output: exactly what ``model(input, hx, timespans)[0]`` returns.
    states: h after every step, (B, T, U) batch first, (T, B, U) time-major, (T, U) unbatched.
    cell_states: the mixed-memory c after every step, same shape, or None without mixed memory.
    final: h_n (or (h_n, c_n)) as ``model.forward`` returns it.
    """

    output: torch.Tensor
    states: torch.Tensor
    cell_states: Optional[torch.Tensor]
    final: State


def hidden_states(model: nn.Module, input: torch.Tensor, hx: Optional[State] = None,
                  timespans: Any = None) -> SequenceStates:
    """Run ``model`` over ``input`` like ``model.forward`` and keep the state after every step.

    Arguments and their accepted shapes are those of ``model.forward`` (see nn.sequence). The
    recurrence is stepped here, one call of the layer's cell per step, because the nn layers
    return only the final state.
    """
    model = _check_layer(model)
    x_BTI, unbatched = canonical_input(input, model.input_size, model.batch_first)
    dt_BT1 = canonical_timespans(timespans, model.batch_first, unbatched, x_BTI)
    h_BU, c_BU = canonical_state(hx, model.state_size, bool(model.use_mixed), unbatched, x_BTI)
    ys, hs, cs = [], [], []
    for t in range(x_BTI.shape[1]):
        y_BO, h_BU, c_BU = _layer_step(model, x_BTI[:, t], h_BU, c_BU, dt_BT1[:, t])
        ys.append(y_BO)
        hs.append(h_BU)
        if c_BU is not None:
            cs.append(c_BU)

    def layout(steps: list[torch.Tensor]) -> torch.Tensor:
        stacked_BTX = torch.stack(steps, dim=1)
        if unbatched:
            return stacked_BTX[0]
        return stacked_BTX if model.batch_first else stacked_BTX.transpose(0, 1)

    if model.return_sequences:
        output = layout(ys)
    else:
        output = ys[-1][0] if unbatched else ys[-1]
    h_n = h_BU[0] if unbatched else h_BU
    if c_BU is None:
        return SequenceStates(output, layout(hs), None, h_n)
    c_n = c_BU[0] if unbatched else c_BU
    return SequenceStates(output, layout(hs), layout(cs), (h_n, c_n))
