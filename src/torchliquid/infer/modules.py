"""Deployable forms of a layer, built on :class:`~torchliquid.infer.portable.PortableCore`.

=====================  ==========================================================  ===============
module                 call                                                        used for
=====================  ==========================================================  ===============
SequenceModule         (input, hx=None, timespans=None) -> (output, h_n)           TorchScript
MixedSequenceModule    (input, hx=None, timespans=None) -> (output, (h_n, c_n))    (drop-in call)
StepModule             (x, h, dt=None) -> (y, h')                                  TorchScript,
MixedStepModule        (x, h, c, dt=None) -> (y, h', c')                           ONNX step form
LoopSequence           (x, h0, dt) -> (y, h_n)               scriptable loop       ONNX Loop
MixedLoopSequence      (x, h0, c0, dt) -> (y, h_n, c_n)                            (TorchScript
                                                                                   exporter)
ScanSequence           (x, h0, dt) -> (y, h_n)               torch scan            torch.export,
MixedScanSequence      (x, h0, c0, dt) -> (y, h_n, c_n)                            ONNX Scan
=====================  ==========================================================  ===============

SequenceModule/MixedSequenceModule take the layer's own layouts: input (B, T, I) if batch_first
else (T, B, I), or unbatched (T, I); hx (B, U) or (U,); timespans None, a 0-d tensor, (T,),
(B, T) or (B, T, 1) (time-major: (T, B), (T, B, 1)). Output (B, T, O) / (T, B, O) / (T, O), or the
last step when the layer has return_sequences=False.

The Loop/Scan forms are the graph interface of an exported file: batch first, every input
required (x (B, T, I), h0 and c0 (B, U), dt (B, T)), y (B, T, O) or (B, O) without
return_sequences.

Step modules: x (B, I), h and c (B, U), dt None (= 1), 0-d, (B,) or (B, 1).

In every sequence form the time loop is a loop in the graph (TorchScript ``prim::Loop``, ONNX
``Loop`` or ``Scan``), so any sequence length gives T output steps (field case A06) and nothing
is specialised per T (A07).

Shape legend: B batch, T time, I inputs, U units, O outputs, 1 broadcast.
"""

# No `from __future__ import annotations`: TorchScript reads the Final annotations as objects.
from typing import List, Optional, Tuple

import torch
from torch import nn

from .portable import PortableCore


class _SequenceBase(nn.Module):
    """Layout handling shared by SequenceModule and MixedSequenceModule."""

    input_size: torch.jit.Final[int]
    state_size: torch.jit.Final[int]
    batch_first: torch.jit.Final[bool]
    return_sequences: torch.jit.Final[bool]

    def __init__(self, core: PortableCore) -> None:
        super().__init__()
        self.core = core
        self.input_size = core.input_size
        self.state_size = core.state_size
        self.batch_first = core.batch_first
        self.return_sequences = core.return_sequences

    def _input(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() == 2:
            x_BTI = input.unsqueeze(0)
        elif input.dim() == 3:
            x_BTI = input if self.batch_first else input.transpose(0, 1)
        else:
            raise ValueError(f"input must be 3-D (batch and time) or 2-D (T, I), got {input.dim()}-D")
        if x_BTI.size(2) != self.input_size or x_BTI.size(1) == 0:
            raise ValueError(
                f"input must have {self.input_size} features in its last dimension and at least one time step, "
                f"got shape {list(input.shape)}"
            )
        return x_BTI

    def _timespans(self, timespans: Optional[torch.Tensor], x_BTI: torch.Tensor, unbatched: bool) -> torch.Tensor:
        batch, steps = x_BTI.size(0), x_BTI.size(1)
        if timespans is None:
            return torch.ones(batch, steps, 1, dtype=x_BTI.dtype, device=x_BTI.device)
        dt = timespans.to(dtype=x_BTI.dtype, device=x_BTI.device)
        if dt.dim() == 0:
            return dt.reshape(1, 1, 1).expand(batch, steps, 1)
        if dt.dim() == 1 or unbatched:
            if dt.numel() != steps:
                raise ValueError(f"timespans of shape {list(timespans.shape)} must have one value per time step ({steps})")
            return dt.reshape(1, steps, 1).expand(batch, steps, 1)
        if dt.dim() == 2:
            dt = dt.unsqueeze(2)
        if dt.dim() != 3 or dt.size(2) != 1:
            raise ValueError(f"timespans must be 0-d, (T,), (B, T) or (B, T, 1), got shape {list(timespans.shape)}")
        if not self.batch_first:
            dt = dt.transpose(0, 1)
        if dt.size(0) != batch or dt.size(1) != steps:
            raise ValueError(
                f"timespans of shape {list(timespans.shape)} do not match the input's batch {batch} and time {steps}"
            )
        return dt

    def _state(self, hx: Optional[torch.Tensor], x_BTI: torch.Tensor, unbatched: bool, name: str) -> torch.Tensor:
        if hx is None:
            return torch.zeros(x_BTI.size(0), self.state_size, dtype=x_BTI.dtype, device=x_BTI.device)
        h_BU = hx.unsqueeze(0) if unbatched else hx
        if h_BU.dim() != 2 or h_BU.size(0) != x_BTI.size(0) or h_BU.size(1) != self.state_size:
            raise ValueError(
                f"{name} must have shape (B, {self.state_size}), or ({self.state_size},) unbatched, for a batch "
                f"of {x_BTI.size(0)}, got {list(hx.shape)}"
            )
        return h_BU

    def _output(self, y_BTO: torch.Tensor, unbatched: bool) -> torch.Tensor:
        if not self.return_sequences:
            y = y_BTO[:, -1]
            return y.squeeze(0) if unbatched else y
        if unbatched:
            return y_BTO.squeeze(0)
        return y_BTO if self.batch_first else y_BTO.transpose(0, 1)


class SequenceModule(_SequenceBase):
    """A whole layer without mixed memory: ``forward(input, hx=None, timespans=None) -> (output, h_n)``."""

    def forward(
        self, input: torch.Tensor, hx: Optional[torch.Tensor] = None, timespans: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        unbatched = input.dim() == 2
        x_BTI = self._input(input)
        dt_BT1 = self._timespans(timespans, x_BTI, unbatched)
        h_BU = self._state(hx, x_BTI, unbatched, "hx")
        y_steps: List[torch.Tensor] = []
        for t in range(x_BTI.size(1)):
            y_BO, h_BU = self.core.step(x_BTI[:, t], h_BU, dt_BT1[:, t])
            y_steps.append(y_BO)
        y = self._output(torch.stack(y_steps, dim=1), unbatched)
        return y, (h_BU.squeeze(0) if unbatched else h_BU)


class MixedSequenceModule(_SequenceBase):
    """A whole layer with mixed memory: ``forward(input, hx=None, timespans=None) -> (output, (h_n, c_n))``."""

    def forward(
        self,
        input: torch.Tensor,
        hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        timespans: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        unbatched = input.dim() == 2
        x_BTI = self._input(input)
        dt_BT1 = self._timespans(timespans, x_BTI, unbatched)
        if hx is None:
            h_BU = self._state(None, x_BTI, unbatched, "hx[0]")
            c_BU = torch.zeros_like(h_BU)
        else:
            h_BU = self._state(hx[0], x_BTI, unbatched, "hx[0]")
            c_BU = self._state(hx[1], x_BTI, unbatched, "hx[1]")
        y_steps: List[torch.Tensor] = []
        for t in range(x_BTI.size(1)):
            y_BO, h_BU, c_BU = self.core.step_mixed(x_BTI[:, t], h_BU, c_BU, dt_BT1[:, t])
            y_steps.append(y_BO)
        y = self._output(torch.stack(y_steps, dim=1), unbatched)
        if unbatched:
            return y, (h_BU.squeeze(0), c_BU.squeeze(0))
        return y, (h_BU, c_BU)


def _step_dt(dt: Optional[torch.Tensor], x_BI: torch.Tensor) -> torch.Tensor:
    if dt is None:
        return torch.ones(x_BI.size(0), 1, dtype=x_BI.dtype, device=x_BI.device)
    dt = dt.to(dtype=x_BI.dtype, device=x_BI.device)
    if dt.dim() == 0:
        return dt.reshape(1, 1).expand(x_BI.size(0), 1)
    if dt.numel() != x_BI.size(0):
        raise ValueError(f"dt must be 0-d, (B,) or (B, 1) for a batch of {x_BI.size(0)}, got shape {list(dt.shape)}")
    return dt.reshape(x_BI.size(0), 1)


class StepModule(nn.Module):
    """One step of a layer without mixed memory: ``forward(x, h, dt=None) -> (y, h')``."""

    def __init__(self, core: PortableCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor, h: torch.Tensor, dt: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.core.step(x, h, _step_dt(dt, x))


class MixedStepModule(nn.Module):
    """One step of a layer with mixed memory: ``forward(x, h, c, dt=None) -> (y, h', c')``."""

    def __init__(self, core: PortableCore) -> None:
        super().__init__()
        self.core = core

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, dt: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.core.step_mixed(x, h, c, _step_dt(dt, x))


class LoopSequence(nn.Module):
    """Graph interface ``forward(x, h0, dt) -> (y, h_n)`` as a scriptable loop (ONNX ``Loop``).

    Every input is required: the TorchScript-based ONNX exporter mishandles optional inputs.
    """

    return_sequences: torch.jit.Final[bool]

    def __init__(self, core: PortableCore) -> None:
        super().__init__()
        self.core = core
        self.return_sequences = core.return_sequences

    def _last(self, y_BTO: torch.Tensor) -> torch.Tensor:
        return y_BTO if self.return_sequences else y_BTO[:, -1]

    def forward(self, x: torch.Tensor, h0: torch.Tensor, dt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        dt_BT1 = dt.unsqueeze(-1)
        h_BU = h0
        y_steps: List[torch.Tensor] = []
        for t in range(x.size(1)):
            y_BO, h_BU = self.core.step(x[:, t], h_BU, dt_BT1[:, t])
            y_steps.append(y_BO)
        return self._last(torch.stack(y_steps, dim=1)), h_BU


class MixedLoopSequence(LoopSequence):
    """LoopSequence with mixed memory: ``forward(x, h0, c0, dt) -> (y, h_n, c_n)``."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, dt: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dt_BT1 = dt.unsqueeze(-1)
        h_BU, c_BU = h0, c0
        y_steps: List[torch.Tensor] = []
        for t in range(x.size(1)):
            y_BO, h_BU, c_BU = self.core.step_mixed(x[:, t], h_BU, c_BU, dt_BT1[:, t])
            y_steps.append(y_BO)
        return self._last(torch.stack(y_steps, dim=1)), h_BU, c_BU


def _scan(body, init: List[torch.Tensor], xs: List[torch.Tensor]):
    """torch's scan higher-order op (private in torch 2.x, hence imported only when used)."""
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError as error:  # depends on the torch build
        raise RuntimeError(
            f"this torch ({torch.__version__}) has no scan operator, so the sequence cannot be exported with a "
            "dynamic time axis by torch.export; use exporter='torchscript' or the single-step form"
        ) from error
    return scan(body, init, xs)


class ScanSequence(nn.Module):
    """Graph interface ``forward(x, h0, dt) -> (y, h_n)`` with the time loop as torch ``scan``.

    torch.export keeps scan as one higher-order op (ONNX ``Scan``), so B and T stay dynamic.
    Not scriptable (scan is a Python higher-order op): TorchScript uses LoopSequence.
    """

    def __init__(self, core: PortableCore) -> None:
        super().__init__()
        self.core = core

    def _finish(self, y_TBO: torch.Tensor) -> torch.Tensor:
        return y_TBO.transpose(0, 1) if self.core.return_sequences else y_TBO[-1]

    def forward(self, x: torch.Tensor, h0: torch.Tensor, dt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        def body(carry: List[torch.Tensor], xs: List[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor]:
            y_BO, h_BU = self.core.step(xs[0], carry[0], xs[1])
            return [h_BU], y_BO.clone()  # a scan output may not alias a carry

        carry, y_TBO = _scan(body, [h0], [x.transpose(0, 1), dt.transpose(0, 1).unsqueeze(-1)])
        return self._finish(y_TBO), carry[0]


class MixedScanSequence(ScanSequence):
    """ScanSequence with mixed memory: ``forward(x, h0, c0, dt) -> (y, h_n, c_n)``."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, dt: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def body(carry: List[torch.Tensor], xs: List[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor]:
            y_BO, h_BU, c_BU = self.core.step_mixed(xs[0], carry[0], carry[1], xs[1])
            return [h_BU, c_BU], y_BO.clone()

        carry, y_TBO = _scan(body, [h0, c0], [x.transpose(0, 1), dt.transpose(0, 1).unsqueeze(-1)])
        return self._finish(y_TBO), carry[0], carry[1]
