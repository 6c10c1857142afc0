"""The one sequence driver shared by CfC and LTC: validate once, run the time loop, restore layout.

``SequenceLayer.forward`` checks every argument at the boundary and converts it to a single
canonical form, so the recurrence never sees anything else:

    x_BTI    input, batch first                      (B, T, I)   input dtype and device
    dt_BT1   elapsed time of each step               (B, T, 1)   input dtype (1.0 if not given)
    h_BU     liquid state                            (B, U)      input dtype
    c_BU     mixed-memory cell state, or None        (B, U)

``_forward_sequence(x_BTI, dt_BT1, (h_BU, c_BU)) -> (y_BTM, (h_BU, c_BU))`` is the whole-sequence
recurrence of one layer, and the single seam where the path is chosen: it runs the runner the
layer's ``implementation`` names in the class's ``IMPLEMENTATIONS`` registry ("auto" resolved by
``resolve_implementation``). ``_reference_sequence`` is the plain loop, one cell step per time
step; every fused runner (fast_paths.py) must equal it (tests/test_nn_fast_paths.py). dt_BT1 is
None when no timespans were given (dt = 1 everywhere, which lets CfC kernels merge its time gate).
A layer with return_sequences=False reads only y_BTM[:, -1], so a runner may then return just
the last step, y_B1M (B, 1, M).

Shape legend (suffixes on names):
    B  batch        T  time steps       I  input features     U  units (state)
    M  cell outputs (motor neurons)     O  layer outputs (M, or proj_size)    1  broadcast axis

Keeping dt as (B, T, 1) makes one step's (B, 1) slice broadcast along units, never along the
batch: ncps 1.0.1 squeezes it to (B,), which crashes when B != U and silently mixes sequences
when B == U (field cases A01, A02).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, ClassVar, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from . import step_path
from ._checks import check_choice
from .step_path import autocast_enabled as _autocast_enabled, tracing as _tracing

State = Tuple[torch.Tensor, Optional[torch.Tensor]]  # (h_BU, c_BU or None)
Timespans = Union[None, float, torch.Tensor]
# runner(layer, x_BTI, dt_BT1 or None, (h_BU, c_BU)) -> (y_BTM, (h_BU, c_BU)), see fast_paths.py
Runner = Callable[[Any, torch.Tensor, Optional[torch.Tensor], State], Tuple[torch.Tensor, State]]


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def canonical_input(input: torch.Tensor, input_size: int, batch_first: bool) -> tuple[torch.Tensor, bool]:
    """(x_BTI, unbatched): the input as (B, T, I); unbatched (T, I) input becomes B = 1."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"input must be a floating-point tensor, got dtype {input.dtype}; convert it with input.float()"
        )
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if input.dim() not in (2, 3):
        raise ValueError(
            f"input must be 3-D {layout} (batch_first={batch_first}) or 2-D (T, I) for one unbatched "
            f"sequence, got {input.dim()}-D shape {_shape(input)}"
        )
    if input.shape[-1] != input_size:
        raise ValueError(
            f"input must have {input_size} features in its last dimension (the layer's input_size), "
            f"got shape {_shape(input)}; build the layer with input_size={input.shape[-1]} or fix the data"
        )
    unbatched = input.dim() == 2
    if unbatched:
        x_BTI = input.unsqueeze(0)
    else:
        x_BTI = input if batch_first else input.transpose(0, 1)
    if x_BTI.shape[1] == 0:
        raise ValueError(f"input must have at least one time step, got shape {_shape(input)}")
    return x_BTI, unbatched


def check_elapsed_times(timespans: torch.Tensor) -> None:
    """Elapsed times must be finite and >= 0: one negative or NaN dt silently poisons every
    later state. On CPU this costs nothing noticeable; on an accelerator the check is queued
    asynchronously (no host sync), and it is skipped while tracing or compiling."""
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
    if torch.jit.is_tracing() or torch.jit.is_scripting() or compiling:
        return
    values = timespans.detach()
    valid = torch.isfinite(values).all() & (values >= 0).all()
    if values.device.type != "cpu":
        torch._assert_async(valid, "timespans must be finite elapsed times >= 0")
    elif not bool(valid):
        bad = values[~(torch.isfinite(values) & (values >= 0))].flatten()[:3].tolist()
        raise ValueError(f"timespans must be finite elapsed times >= 0, got values such as {bad}")


def canonical_timespans(
    timespans: Timespans, batch_first: bool, unbatched: bool, like_BTI: torch.Tensor
) -> torch.Tensor:
    """dt_BT1: the elapsed time of every step as (B, T, 1) in the input's dtype and device.

    Accepted (batched input; time-major layouts when batch_first=False):
        None                      dt = 1 for every step
        float, int, 0-d tensor    one constant dt
        (T,)                      one dt per step, shared by every sequence of the batch
        (B, T)  or (B, T, 1)      batch_first=True
        (T, B)  or (T, B, 1)      batch_first=False
    Unbatched (T, I) input: None, a scalar, (T,) or (T, 1).
    """
    batch, steps = like_BTI.shape[0], like_BTI.shape[1]
    dtype, device = like_BTI.dtype, like_BTI.device
    if timespans is None:
        return torch.ones((1, 1, 1), dtype=dtype, device=device).expand(batch, steps, 1)
    if isinstance(timespans, bool) or not isinstance(timespans, (numbers.Real, torch.Tensor)):
        raise TypeError(
            f"timespans must be None, a float or a torch.Tensor, got {type(timespans).__name__}"
        )
    if not isinstance(timespans, torch.Tensor):
        if not math.isfinite(timespans) or timespans < 0:
            raise ValueError(f"timespans must be a finite elapsed time >= 0, got {timespans!r}")
        return torch.full((1, 1, 1), float(timespans), dtype=dtype, device=device).expand(batch, steps, 1)
    if timespans.is_complex() or timespans.dtype == torch.bool:
        raise TypeError(f"timespans must hold real numbers, got dtype {timespans.dtype}")
    check_elapsed_times(timespans)
    dt = timespans.to(device=device, dtype=dtype)
    if dt.dim() == 0:
        return dt.reshape(1, 1, 1).expand(batch, steps, 1)
    if _shape(dt) in ((steps,), (steps, 1)) and (unbatched or dt.dim() == 1):
        return dt.reshape(1, steps, 1).expand(batch, steps, 1)
    lead = (batch, steps) if batch_first else (steps, batch)
    if not unbatched and _shape(dt) in (lead, lead + (1,)):
        dt = dt.reshape(lead + (1,))
        return dt if batch_first else dt.transpose(0, 1)
    if unbatched:
        accepted, given = f"a scalar, ({steps},) or ({steps}, 1)", f"one unbatched sequence of {steps} steps"
    else:
        layout = "(B, T)" if batch_first else "(T, B)"
        accepted = f"a scalar, ({steps},) shared by the batch, {lead} or {lead + (1,)}"
        given = f"input of B={batch} sequences of T={steps} steps ({layout} layout because batch_first={batch_first})"
    raise ValueError(f"timespans must be {accepted} for {given}, got shape {_shape(timespans)}")


def _checked_state(name: str, value: object, expected: tuple[int, ...], like_BTI: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(value).__name__}")
    if _shape(value) != expected:
        hint = ""
        if len(expected) == 2 and value.dim() == 2 and value.shape[0] == 1 and expected[0] != 1:
            hint = f"; a batch-1 state is not broadcast: expand it with {name}.expand({expected[0]}, -1)"
        raise ValueError(f"{name} must have shape {expected}, got {_shape(value)}{hint}")
    if value.dtype != like_BTI.dtype:
        raise TypeError(
            f"{name} must have the input's dtype {like_BTI.dtype}, got {value.dtype}; "
            f"convert it with {name}.to(input.dtype)"
        )
    if value.device != like_BTI.device:
        raise ValueError(f"{name} must be on the input's device {like_BTI.device}, got {value.device}")
    return value


def canonical_state(
    hx: object, state_size: int, mixed_memory: bool, unbatched: bool, like_BTI: torch.Tensor
) -> State:
    """(h_BU, c_BU or None) from ``hx``; zeros in the input's dtype and device when hx is None.

    hx is (B, U) for batched input and (U,) for unbatched input, or a tuple (h, c) of two such
    tensors when mixed_memory=True. A batch-1 hx is NOT broadcast to batch B (it is rejected).
    """
    batch = like_BTI.shape[0]
    if hx is None:
        zeros_BU = torch.zeros((batch, state_size), dtype=like_BTI.dtype, device=like_BTI.device)
        return zeros_BU, (torch.zeros_like(zeros_BU) if mixed_memory else None)
    expected = (state_size,) if unbatched else (batch, state_size)
    if mixed_memory:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            got = type(hx).__name__ if not isinstance(hx, (tuple, list)) else f"a {type(hx).__name__} of {len(hx)}"
            raise TypeError(
                f"hx must be a tuple (h, c) of two tensors of shape {expected} because "
                f"mixed_memory=True, got {got}"
            )
        h = _checked_state("hx[0]", hx[0], expected, like_BTI)
        c = _checked_state("hx[1]", hx[1], expected, like_BTI)
        return (h.unsqueeze(0), c.unsqueeze(0)) if unbatched else (h, c)
    if isinstance(hx, (tuple, list)):
        raise TypeError(
            f"hx must be a single tensor of shape {expected} because mixed_memory=False, got a "
            f"{type(hx).__name__}; pass the (h, c) tuple only to layers built with mixed_memory=True"
        )
    h = _checked_state("hx", hx, expected, like_BTI)
    return (h.unsqueeze(0) if unbatched else h), None


class SequenceLayer(nn.Module):
    """Base of CfC and LTC: a cell run over a sequence, with optional mixed memory and projection.

    Subclasses set: ``input_size``, ``state_size``, ``output_size``, ``batch_first``,
    ``return_sequences``, ``use_mixed``, ``rnn_cell`` (a cell with ``_step(x_BI, h_BU, dt_B1) ->
    (y_BM, h_BU)``), ``lstm`` (an LSTMCell or None) and ``fc`` (the readout, Identity or Linear);
    and, for the choice of path: the ``IMPLEMENTATIONS`` registry (name -> Runner, with
    "reference"), ``_coverage_gap(dynamic)`` (why the fused runners cannot run this layer, or
    None) and ``_auto_implementation(x_BTI)`` (the fastest covered runner for this input).
    """

    input_size: int
    state_size: int
    output_size: int
    batch_first: bool
    return_sequences: bool
    use_mixed: bool
    IMPLEMENTATIONS: ClassVar[Mapping[str, Runner]] = {}

    def _coverage_gap(self, dynamic: bool = True) -> Optional[str]:
        return None

    def _auto_implementation(self, x_BTI: torch.Tensor) -> str:
        return "reference"

    @property
    def implementation(self) -> str:
        """The path of the time loop: "auto", "reference" or a kernel name of IMPLEMENTATIONS.

        A runtime choice, not part of the architecture: settable at any time, not saved by
        save_model (a loaded model runs "auto"). Setting an unknown name, or a kernel that cannot
        run this layer (e.g. with mixed memory), raises ValueError.
        """
        return self.__dict__.get("_implementation", "auto")  # modules pickled before it existed

    @implementation.setter
    def implementation(self, name: str) -> None:
        check_choice("implementation", name, {"auto": None, **self.IMPLEMENTATIONS})
        self._check_covered(name, dynamic=False)  # training mode may change before forward
        self.__dict__["_implementation"] = name

    def _check_covered(self, name: str, dynamic: bool) -> None:
        if name in ("auto", "reference"):
            return
        gap = self._coverage_gap(dynamic)
        if gap is not None:
            raise ValueError(
                f"implementation={name!r} cannot run this {type(self).__name__}: {gap}; use "
                f"implementation='auto' (which runs 'reference' here) or 'reference'"
            )

    def resolve_implementation(self, x_BTI: torch.Tensor) -> str:
        """The registry name forward() runs for canonical input x_BTI (B, T, I), never "auto".

        "auto" takes ``_auto_implementation(x_BTI)`` unless the layer has a coverage gap or is
        being traced/compiled/exported (the plain loop is the traceable one): then "reference".
        """
        name = self.implementation
        if name != "auto":
            self._check_covered(name, dynamic=True)
            return name
        if self._coverage_gap(dynamic=True) is not None or _tracing():
            return "reference"
        return self._auto_implementation(x_BTI)

    def forward(
        self,
        input: torch.Tensor,
        hx: Union[None, torch.Tensor, Tuple[torch.Tensor, torch.Tensor]] = None,
        timespans: Timespans = None,
    ) -> tuple[torch.Tensor, Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]:
        """Run the layer over ``input``; returns ``(output, h_n)``.

        ==================  ============================================  =========================
        argument            shape                                         meaning
        ==================  ============================================  =========================
        input               (B, T, I) if batch_first else (T, B, I);      the sequences
                            (T, I) for one unbatched sequence
        hx                  (B, U), or (U,) unbatched; with               initial state; zeros of
                            mixed_memory a tuple (h, c) of two such       the input's dtype and
                            tensors; a batch-1 hx is rejected for B > 1   device when None
        timespans           None (dt = 1); float or 0-d tensor            elapsed time of each step
                            (constant); (T,) shared by the batch;
                            (B, T) or (B, T, 1) if batch_first;
                            (T, B) or (T, B, 1) if not;
                            unbatched: (T,) or (T, 1)
        output              (B, T, O) / (T, B, O) / (T, O); without       O = output_size
                            return_sequences the last step: (B, O) or
                            (O,)
        h_n                 like hx (a tuple (h, c) with mixed_memory)    state after the last step
        ==================  ============================================  =========================

        Output and state have the input's dtype (fp32, fp16, bf16, fp64 alike).

        One step (T = 1) under implementation="auto" without autograd (``torch.no_grad``,
        ``inference_mode``, or nothing requiring grad) runs the streaming path of step_path.py.
        """
        x_BTI, unbatched = canonical_input(input, self.input_size, self.batch_first)
        plan = step_path.step_plan(self, x_BTI) if x_BTI.shape[1] == 1 and self.implementation == "auto" else None
        if plan is None:
            self._check_parameter_dtype(x_BTI)  # a plan exists only for the parameters' dtype
        dt_BT1 = None if timespans is None else canonical_timespans(timespans, self.batch_first, unbatched, x_BTI)
        state = canonical_state(hx, self.state_size, self.use_mixed, unbatched, x_BTI)
        if plan is not None and not step_path.needs_graph(plan, x_BTI, state[0], dt_BT1):
            y_BO, h_BU = plan.run(x_BTI.squeeze(1), state[0], None if dt_BT1 is None else dt_BT1.squeeze(1))
            if unbatched:  # output (T=1, O), or (O,) for the last step only; state (U,)
                return (y_BO if self.return_sequences else y_BO.squeeze(0)), h_BU.squeeze(0)
            if self.return_sequences:
                y_BO = y_BO.unsqueeze(1 if self.batch_first else 0)
            return y_BO, h_BU

        y_BTM, (h_BU, c_BU) = self._forward_sequence(x_BTI, dt_BT1, state)

        if self.return_sequences:
            y = self.fc(y_BTM)  # (B, T, O)
            if unbatched:
                y = y.squeeze(0)
            elif not self.batch_first:
                y = y.transpose(0, 1)
        else:
            y = self.fc(y_BTM[:, -1])  # (B, O)
            if unbatched:
                y = y.squeeze(0)
        if unbatched:
            h_BU = h_BU.squeeze(0)
            c_BU = None if c_BU is None else c_BU.squeeze(0)
        return y, ((h_BU, c_BU) if self.use_mixed else h_BU)

    def _forward_sequence(
        self, x_BTI: torch.Tensor, dt_BT1: Optional[torch.Tensor], state: State
    ) -> tuple[torch.Tensor, State]:
        """(x_BTI, dt_BT1 or None, (h_BU, c_BU)) -> (y_BTM, (h_BU, c_BU)) by the chosen runner."""
        runner = self.IMPLEMENTATIONS[self.resolve_implementation(x_BTI)]
        return runner(self, x_BTI, dt_BT1, state)

    def _reference_sequence(
        self, x_BTI: torch.Tensor, dt_BT1: Optional[torch.Tensor], state: State
    ) -> tuple[torch.Tensor, State]:
        """The reference recurrence, the control of every fused runner:

        for t in 0..T-1:
            if mixed memory:  h, c = lstm(x_t, (h, c))
            y_t, h = cell(x_t, h, dt_t)                      dt_t = 1 when dt_BT1 is None
        """
        h_BU, c_BU = state
        ones_B1 = x_BTI.new_ones(x_BTI.shape[0], 1) if dt_BT1 is None else None
        y_steps_BM = []
        for t in range(x_BTI.shape[1]):
            x_BI = x_BTI[:, t]
            if c_BU is not None:
                h_BU, c_BU = self.lstm(x_BI, (h_BU, c_BU))
            y_BM, h_BU = self.rnn_cell._step(x_BI, h_BU, ones_B1 if dt_BT1 is None else dt_BT1[:, t])
            y_steps_BM.append(y_BM)
        return torch.stack(y_steps_BM, dim=1), (h_BU, c_BU)

    def _check_parameter_dtype(self, x_BTI: torch.Tensor) -> None:
        if _autocast_enabled(x_BTI.device.type):
            return  # autocast reconciles dtypes per op
        parameter = next((p for p in self.parameters() if p.is_floating_point()), None)
        if parameter is not None and parameter.dtype != x_BTI.dtype:
            raise TypeError(
                f"input has dtype {x_BTI.dtype} but the layer's parameters are {parameter.dtype}; "
                f"convert the layer with .to({x_BTI.dtype}) or the input with input.to({parameter.dtype})"
            )


def canonical_step(
    input: torch.Tensor, hx: object, ts: Timespans, input_size: int, state_size: int, hx_name: str = "hx"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_BI, h_BU, dt_B1) for one cell step: input (B, I), hx (B, U), ts a scalar, (B,) or (B, 1)."""
    if not isinstance(input, torch.Tensor) or not input.is_floating_point():
        got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(f"input must be a floating-point torch.Tensor of shape (B, {input_size}), got {got}")
    if input.dim() != 2 or input.shape[1] != input_size:
        raise ValueError(
            f"input must have shape (B, {input_size}) (a cell takes one time step of a batch), got "
            f"{_shape(input)}; use the CfC/LTC layer for sequences"
        )
    batch = input.shape[0]
    h_BU = _checked_state(hx_name, hx, (batch, state_size), input.unsqueeze(1))
    if ts is None:
        ts = 1.0
    if isinstance(ts, bool) or not isinstance(ts, (numbers.Real, torch.Tensor)):
        raise TypeError(f"ts must be a float or a torch.Tensor, got {type(ts).__name__}")
    if not isinstance(ts, torch.Tensor):
        return input, h_BU, torch.full((1, 1), float(ts), dtype=input.dtype, device=input.device)
    dt = ts.to(device=input.device, dtype=input.dtype)
    if dt.dim() == 0:
        return input, h_BU, dt.reshape(1, 1)
    if _shape(dt) in ((batch,), (batch, 1)):
        return input, h_BU, dt.reshape(batch, 1)
    raise ValueError(f"ts must be a scalar, ({batch},) or ({batch}, 1) for a batch of {batch}, got shape {_shape(ts)}")
