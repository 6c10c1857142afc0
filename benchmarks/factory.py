"""Model creators for the benchmarks: every contender behind one small protocol.

A creator is `create(workload, device) -> nn.Module` whose forward maps x (B, T, I) to the
prediction of the LAST step (B, O): the study's many-to-one setting (class logits for HAR-like,
the next value for Traffic/Power-like). All contenders share the workload's sizes, 64 units and
the study configurations:

    CfC   CfC(I, 64, proj_size=O): backbone 128 x 1, lecun_tanh, mode "default"
    LTC   LTC(I, AutoNCP(64, O)): 6 ODE unfolds, softplus constraints, affine in/out mappings
    LSTM / GRU  torch.nn, hidden 64, with a Linear(64, O) head

Contenders:
    tl-cfc-<implementation>   torchliquid.nn.cfc_fused.cfc_sequence (function, function-torch,
                              jit, compile) and "reference" (the functional.py loop)
    tl-ltc-<backend>          torchliquid.nn.ltc_fused.ltc_sequence (native, torch-sparse,
                              torch-dense) and "reference"
    tl-module-cfc / -ltc      torchliquid.nn.CfC / LTC as the module engineer ships them
    ncps-cfc / ncps-ltc       ncps 1.0.1
    lstm / gru                torch.nn baselines
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchliquid.nn import cfc_fused, cfc_fused_variants, ltc_fused

UNITS = 64
BACKBONE = 128


@dataclass(frozen=True)
class Workload:
    name: str
    seq_len: int
    inputs: int
    outputs: int
    classify: bool  # cross-entropy on class logits, else mean squared error


def _autoncp_masks(inputs: int, outputs: int) -> tuple[np.ndarray, np.ndarray, object]:
    from ncps.wirings import AutoNCP  # benchmarks compare against ncps; the library never imports it

    wiring = AutoNCP(UNITS, outputs)
    wiring.build(inputs)
    return np.abs(wiring.sensory_adjacency_matrix), np.abs(wiring.adjacency_matrix), wiring


class FusedCfC(nn.Module):
    """The study CfC with its sequence computed by cfc_sequence(implementation=...)."""

    def __init__(self, w: Workload, implementation: str) -> None:
        super().__init__()
        self.implementation = implementation
        self.backbone = nn.Linear(w.inputs + UNITS, BACKBONE)
        self.heads = nn.ModuleList(nn.Linear(BACKBONE, UNITS) for _ in range(4))  # ff1 ff2 ta tb
        self.fc = nn.Linear(UNITS, w.outputs)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)

    def forward(self, x_BTI: torch.Tensor) -> torch.Tensor:
        h0_BU = x_BTI.new_zeros(x_BTI.shape[0], UNITS)
        args = (
            x_BTI, h0_BU, None, [self.backbone.weight], [self.backbone.bias],
            [h.weight for h in self.heads], [h.bias for h in self.heads],
        )  # fmt: skip
        if self.implementation == "reference":
            h_BU = cfc_fused_variants.cfc_sequence_reference(*args[:5], torch.cat(args[5]), torch.cat(args[6]))[:, -1]
        else:  # only the last state is used: say so, the backward then skips a (B, T, U) zero grad
            h_BU = cfc_fused.cfc_sequence(*args, implementation=self.implementation, return_sequences=False)
        return self.fc(h_BU)


class FusedLTC(nn.Module):
    """The study LTC (AutoNCP 64) with its sequence computed by ltc_sequence(backend=...)."""

    def __init__(self, w: Workload, backend: str) -> None:
        super().__init__()
        self.backend, self.motor = backend, w.outputs
        sensory_mask, mask, wiring = _autoncp_masks(w.inputs, w.outputs)
        I, U = w.inputs, UNITS
        uniform = lambda lo, hi, *shape: nn.Parameter(torch.rand(*shape) * (hi - lo) + lo)  # noqa: E731
        self.gleak, self.vleak, self.cm = uniform(0.001, 1, U), uniform(-0.2, 0.2, U), uniform(0.4, 0.6, U)
        self.w, self.mu, self.sigma = uniform(0.001, 1, U, U), uniform(0.3, 0.8, U, U), uniform(3, 8, U, U)
        self.erev = nn.Parameter(torch.tensor(wiring.erev_initializer(), dtype=torch.float32))
        self.sensory_w, self.sensory_mu = uniform(0.001, 1, I, U), uniform(0.3, 0.8, I, U)
        self.sensory_sigma = uniform(3, 8, I, U)
        self.sensory_erev = nn.Parameter(torch.tensor(wiring.sensory_erev_initializer(), dtype=torch.float32))
        self.register_buffer("mask", torch.tensor(mask, dtype=torch.float32))
        self.register_buffer("sensory_mask", torch.tensor(sensory_mask, dtype=torch.float32))
        self.input_w, self.input_b = nn.Parameter(torch.ones(I)), nn.Parameter(torch.zeros(I))
        self.output_w, self.output_b = nn.Parameter(torch.ones(w.outputs)), nn.Parameter(torch.zeros(w.outputs))

    def forward(self, x_BTI: torch.Tensor) -> torch.Tensor:
        sp = F.softplus
        args = (
            x_BTI * self.input_w + self.input_b, x_BTI.new_zeros(x_BTI.shape[0], UNITS), None,
            sp(self.sensory_w), self.sensory_mu, self.sensory_sigma, self.sensory_erev,
            self.sensory_mask, sp(self.cm), sp(self.gleak), self.vleak, sp(self.w), self.mu,
            self.sigma, self.erev, self.mask,
        )  # fmt: skip
        if self.backend == "reference":
            v_BTU = ltc_fused.ltc_sequence_reference(*args, unfolds=6)
        else:
            v_BTU = ltc_fused.ltc_sequence(*args, unfolds=6, backend=self.backend)
        return v_BTU[:, -1, : self.motor] * self.output_w + self.output_b


class LastStep(nn.Module):
    """Wraps a sequence module returning (y_BTX or y_BX, state) and keeps the last step."""

    def __init__(self, rnn: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.rnn, self.head = rnn, head

    def forward(self, x_BTI: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x_BTI)
        return self.head(y[:, -1] if y.dim() == 3 else y)


def _ncps_cfc(w: Workload) -> nn.Module:
    from ncps.torch import CfC

    return LastStep(CfC(w.inputs, UNITS, proj_size=w.outputs, return_sequences=False), nn.Identity())


def _ncps_ltc(w: Workload) -> nn.Module:
    from ncps.torch import LTC
    from ncps.wirings import AutoNCP

    return LastStep(LTC(w.inputs, AutoNCP(UNITS, w.outputs), return_sequences=False), nn.Identity())


def _tl_module_cfc(w: Workload) -> nn.Module:
    from torchliquid.nn import CfC

    return LastStep(CfC(w.inputs, UNITS, proj_size=w.outputs, return_sequences=False), nn.Identity())


def _tl_module_ltc(w: Workload) -> nn.Module:
    from torchliquid.nn import LTC
    from torchliquid.nn.wirings import AutoNCP

    return LastStep(LTC(w.inputs, AutoNCP(UNITS, w.outputs), return_sequences=False), nn.Identity())


CREATORS: dict[str, tuple[str, Callable[[Workload], nn.Module]]] = {
    # name: (family, creator)
    "tl-cfc-function": ("cfc", lambda w: FusedCfC(w, "function")),
    "tl-cfc-function-torch": ("cfc", lambda w: FusedCfC(w, "function-torch")),
    "tl-cfc-jit": ("cfc", lambda w: FusedCfC(w, "jit")),
    "tl-cfc-compile": ("cfc", lambda w: FusedCfC(w, "compile")),
    "tl-cfc-reference": ("cfc", lambda w: FusedCfC(w, "reference")),
    "tl-module-cfc": ("cfc", _tl_module_cfc),
    "ncps-cfc": ("cfc", _ncps_cfc),
    "tl-ltc-native": ("ltc", lambda w: FusedLTC(w, "native")),
    "tl-ltc-torch-sparse": ("ltc", lambda w: FusedLTC(w, "torch-sparse")),
    "tl-ltc-torch-dense": ("ltc", lambda w: FusedLTC(w, "torch-dense")),
    "tl-ltc-reference": ("ltc", lambda w: FusedLTC(w, "reference")),
    "tl-module-ltc": ("ltc", _tl_module_ltc),
    "ncps-ltc": ("ltc", _ncps_ltc),
    "lstm": ("lstm", lambda w: LastStep(nn.LSTM(w.inputs, UNITS, batch_first=True), nn.Linear(UNITS, w.outputs))),
    "gru": ("gru", lambda w: LastStep(nn.GRU(w.inputs, UNITS, batch_first=True), nn.Linear(UNITS, w.outputs))),
}


def training_flops_per_sequence_cfc(w: Workload) -> float:
    """Matmul FLOPs of one CfC training sequence (forward + backward; element-wise ignored).

    Forward per step: input half 2·I·H, recurrent half 2·U·H, four heads 2·H·4U; backward
    doubles each (data and weight gradients) except the input half, whose data gradient is
    not needed: total = T·(2·I·H·2 + (2·U·H + 8·H·U)·3) + the projection (negligible).
    """
    H, U, I = BACKBONE, UNITS, w.inputs
    return w.seq_len * (4 * I * H + 3 * (2 * U * H + 8 * H * U))
