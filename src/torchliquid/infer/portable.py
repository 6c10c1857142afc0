"""Export-ready twins of the nn layers: the same step math, in modules TorchScript and export accept.

The nn modules cannot be scripted as written (field case A05): a CfC cell keeps its update rule
as a Python function chosen by mode and has mode-specific attributes, an LTC cell keeps a Python
wiring object, and ``functional.lecun_tanh`` reads module-level float globals. Instead of
bending the training modules, :func:`portable_core` copies a trained layer's tensors into small
modules that call the very functions of :mod:`torchliquid.nn.functional`:

    PortableCore.step(x_BI, h_BU, dt_B1) -> (y_BO, h_BU)                       no mixed memory
    PortableCore.step_mixed(x_BI, h_BU, c_BU, dt_B1) -> (y_BO, h_BU, c_BU)     mixed memory
        (h, c) = lstm(x, (h, c))            only with mixed memory
        y, h   = cell(x, h, dt)             CfC (dense or wired) or LTC cell
        y      = fc(y)                      readout (identity or Linear)

Everything is frozen at copy time, with the eval-mode meaning of the layer (dropout off):

* sparsity masks are folded into the CfC ff1/ff2 weights (mask values are 0/1, so w * m is
  exactly w or 0 and the product matches the eager ``F.linear(z, w * m, b)`` bit for bit);
* LTC's positive parameters (softplus or identity of cm, gleak, w, sensory_w) are evaluated once;
  softplus is deterministic, so the values equal those the eager forward computes every step.

The copies are detached buffers: training the source model afterwards does not change them.

Shape legend: B batch, I inputs, U units (state), M cell outputs (motor), O layer outputs, 1 broadcast.
"""

# No `from __future__ import annotations`: TorchScript must read the class-attribute annotations
# (Final, List) as objects, not strings.
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torchliquid.nn import functional
from torchliquid.nn.cfc_cell import Activation, CfCCell, WiredCfCCell
from torchliquid.nn.ltc_cell import LTCCell
from torchliquid.nn.mixed_memory import LSTMCell


def _frozen(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def _empty_like(reference: torch.Tensor) -> torch.Tensor:
    # TorchScript compiles every branch, so absent parameters are empty tensors, never missing.
    return torch.empty(0, dtype=reference.dtype, device=reference.device)


class LeCunTanh(nn.Module):
    """1.7159 tanh(0.666 x) as functional.lecun_tanh, with the constants as attributes.

    functional.lecun_tanh reads module globals, which TorchScript rejects; the expression and
    constants are the same, so the values are identical.
    """

    outer: torch.jit.Final[float]
    inner: torch.jit.Final[float]

    def __init__(self) -> None:
        super().__init__()
        self.outer = functional.LECUN_OUTER
        self.inner = functional.LECUN_INNER

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer * torch.tanh(self.inner * x)


# backbone activation name (functional.ACTIVATIONS) -> a scriptable module computing the same
ACTIVATION_MODULES: Dict[str, Callable[[], nn.Module]] = {
    "lecun_tanh": LeCunTanh,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,  # approximate="none", as F.gelu's default
    "silu": nn.SiLU,
}


def _copy_linear(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    copy = copy.to(dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        copy.weight.copy_(linear.weight)
        if linear.bias is not None:
            copy.bias.copy_(linear.bias)
    copy.requires_grad_(False)
    return copy


def _portable_backbone(backbone: Optional[nn.Sequential]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for module in backbone if backbone is not None else []:
        if isinstance(module, nn.Linear):
            layers.append(_copy_linear(module))
        elif isinstance(module, Activation):
            layers.append(ACTIVATION_MODULES[module.name]())
        elif isinstance(module, nn.Dropout):
            continue  # eval-mode semantics: dropout is the identity
        else:
            raise TypeError(f"cannot export backbone module {type(module).__name__}; expected Linear, Activation or Dropout")
    return nn.Sequential(*layers)  # empty Sequential = identity


class PortableCfCLayer(nn.Module):
    """One CfCCell (a dense cell, or one layer of a wired cell): ``(x_BI, h_BU, dt_B1) -> h_BU``."""

    pure: torch.jit.Final[bool]
    gated: torch.jit.Final[bool]

    def __init__(self, cell: CfCCell) -> None:
        super().__init__()
        self.pure = cell.mode == "pure"
        self.gated = cell.mode == "default"
        self.backbone = _portable_backbone(cell.backbone)
        mask_UZ = cell.sparsity_mask
        anchor = cell.ff1.weight

        def masked(linear: nn.Linear) -> torch.Tensor:
            return _frozen(linear.weight if mask_UZ is None else linear.weight * mask_UZ)

        self.register_buffer("ff1_weight", masked(cell.ff1))
        self.register_buffer("ff1_bias", _frozen(cell.ff1.bias))
        if self.pure:
            empty = _empty_like(anchor)
            for name in ("ff2_weight", "ff2_bias", "time_a_weight", "time_a_bias", "time_b_weight", "time_b_bias"):
                self.register_buffer(name, empty.clone())
            self.register_buffer("w_tau", _frozen(cell.w_tau))
            self.register_buffer("A", _frozen(cell.A))
        else:
            self.register_buffer("ff2_weight", masked(cell.ff2))
            self.register_buffer("ff2_bias", _frozen(cell.ff2.bias))
            self.register_buffer("time_a_weight", _frozen(cell.time_a.weight))
            self.register_buffer("time_a_bias", _frozen(cell.time_a.bias))
            self.register_buffer("time_b_weight", _frozen(cell.time_b.weight))
            self.register_buffer("time_b_bias", _frozen(cell.time_b.bias))
            self.register_buffer("w_tau", _empty_like(anchor))
            self.register_buffer("A", _empty_like(anchor))

    def forward(self, x_BI: torch.Tensor, h_BU: torch.Tensor, dt_B1: torch.Tensor) -> torch.Tensor:
        z_BZ = self.backbone(torch.cat([x_BI, h_BU], dim=1))
        ff1_BU = F.linear(z_BZ, self.ff1_weight, self.ff1_bias)
        if self.pure:
            return functional.cfc_pure_update(ff1_BU, self.w_tau, self.A, dt_B1)
        ff2_BU = F.linear(z_BZ, self.ff2_weight, self.ff2_bias)
        time_a_BU = F.linear(z_BZ, self.time_a_weight, self.time_a_bias)
        time_b_BU = F.linear(z_BZ, self.time_b_weight, self.time_b_bias)
        return functional.cfc_gated_update(ff1_BU, ff2_BU, time_a_BU, time_b_BU, dt_B1, self.gated)


class PortableCfCCell(nn.Module):
    """A dense CfCCell (one layer) or a WiredCfCCell (one layer per wiring layer).

    ``(x_BI, h_BU, dt_B1) -> (y_BM, h_BU)``: layer l reads layer l-1's new state; the state is the
    layers' states in layer order and the output is the first M units of the last layer.
    """

    layer_sizes: List[int]
    motor_size: torch.jit.Final[int]

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        if isinstance(cell, WiredCfCCell):
            sub_cells = [getattr(cell, f"layer_{layer}") for layer in range(cell.num_layers)]
            self.layer_sizes = list(cell.layer_sizes)
            self.motor_size = cell.motor_size
        else:
            sub_cells = [cell]
            self.layer_sizes = [cell.hidden_size]
            self.motor_size = cell.hidden_size
        self.layers = nn.ModuleList([PortableCfCLayer(sub) for sub in sub_cells])

    def forward(self, x_BI: torch.Tensor, h_BU: torch.Tensor, dt_B1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        layer_states = torch.split(h_BU, self.layer_sizes, dim=1)
        new_states: List[torch.Tensor] = []
        feed_BI = x_BI
        for index, layer in enumerate(self.layers):
            feed_BI = layer(feed_BI, layer_states[index], dt_B1)
            new_states.append(feed_BI)
        return feed_BI[:, : self.motor_size], torch.cat(new_states, dim=1)


class PortableLTCCell(nn.Module):
    """An LTCCell with its positive parameters evaluated once: ``(x_BI, v_BU, dt_B1) -> (y_BM, v_BU)``."""

    ode_unfolds: torch.jit.Final[int]
    epsilon: torch.jit.Final[float]
    motor_size: torch.jit.Final[int]
    has_input_w: torch.jit.Final[bool]
    has_input_b: torch.jit.Final[bool]
    has_output_w: torch.jit.Final[bool]
    has_output_b: torch.jit.Final[bool]

    def __init__(self, cell: LTCCell) -> None:
        super().__init__()
        positive = F.softplus if cell.implicit_param_constraints else (lambda t: t)
        self.ode_unfolds = cell.ode_unfolds
        self.epsilon = cell.epsilon
        self.motor_size = cell.motor_size
        with torch.no_grad():
            for name in ("sensory_w", "cm", "gleak", "w"):
                self.register_buffer(f"{name}_pos", _frozen(positive(getattr(cell, name))))
        for name in ("sensory_mu", "sensory_sigma", "sensory_erev", "vleak", "mu", "sigma", "erev"):
            self.register_buffer(name, _frozen(getattr(cell, name)))
        self.register_buffer("sensory_mask", _frozen(cell.sensory_sparsity_mask))
        self.register_buffer("mask", _frozen(cell.sparsity_mask))
        for name in ("input_w", "input_b", "output_w", "output_b"):
            value = getattr(cell, name)
            setattr(self, f"has_{name}", value is not None)
            self.register_buffer(name, _empty_like(cell.cm) if value is None else _frozen(value))

    def forward(self, x_BI: torch.Tensor, v_BU: torch.Tensor, dt_B1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.has_input_w:
            x_BI = x_BI * self.input_w
        if self.has_input_b:
            x_BI = x_BI + self.input_b
        sensory_numerator_BU, sensory_denominator_BU = functional.ltc_sensory_currents(
            x_BI, self.sensory_w_pos, self.sensory_mu, self.sensory_sigma, self.sensory_erev, self.sensory_mask
        )
        cm_t_BU = self.cm_pos / (dt_B1 / self.ode_unfolds)  # as LTCCell._step, same operation order
        v_BU = functional.ltc_ode_solve(
            v_BU, sensory_numerator_BU, sensory_denominator_BU, cm_t_BU, self.gleak_pos, self.vleak,
            self.w_pos, self.mu, self.sigma, self.erev, self.mask, self.ode_unfolds, self.epsilon,
        )
        y_BM = v_BU[:, : self.motor_size]
        if self.has_output_w:
            y_BM = y_BM * self.output_w
        if self.has_output_b:
            y_BM = y_BM + self.output_b
        return y_BM, v_BU


class PortableLSTM(nn.Module):
    """The mixed-memory LSTMCell: ``(x_BI, h_BU, c_BU) -> (h_BU, c_BU)`` via functional.lstm_memory_step."""

    def __init__(self, lstm: LSTMCell) -> None:
        super().__init__()
        self.register_buffer("input_weight", _frozen(lstm.input_map.weight))
        self.register_buffer("input_bias", _frozen(lstm.input_map.bias))
        self.register_buffer("recurrent_weight", _frozen(lstm.recurrent_map.weight))

    def forward(self, x_BI: torch.Tensor, h_BU: torch.Tensor, c_BU: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return functional.lstm_memory_step(x_BI, h_BU, c_BU, self.input_weight, self.input_bias, self.recurrent_weight)


# type of a model's rnn_cell -> its portable twin
PORTABLE_CELLS: Dict[type, Callable[[nn.Module], nn.Module]] = {
    CfCCell: PortableCfCCell,
    WiredCfCCell: PortableCfCCell,
    LTCCell: PortableLTCCell,
}


class PortableCore(nn.Module):
    """One time step of a whole CfC/LTC layer (mixed memory, cell, readout) on frozen tensors.

    Attributes mirror the layer: input_size (I), state_size (U), output_size (O), mixed,
    batch_first, return_sequences.
    """

    input_size: torch.jit.Final[int]
    state_size: torch.jit.Final[int]
    output_size: torch.jit.Final[int]
    mixed: torch.jit.Final[bool]
    batch_first: torch.jit.Final[bool]
    return_sequences: torch.jit.Final[bool]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        cell = model.rnn_cell
        self.input_size = model.input_size
        self.state_size = model.state_size
        self.output_size = model.output_size
        self.mixed = bool(model.use_mixed)
        self.batch_first = bool(model.batch_first)
        self.return_sequences = bool(model.return_sequences)
        self.cell = PORTABLE_CELLS[type(cell)](cell)
        self.lstm = PortableLSTM(model.lstm) if self.mixed else None
        self.fc = _copy_linear(model.fc) if isinstance(model.fc, nn.Linear) else nn.Identity()

    def step(self, x_BI: torch.Tensor, h_BU: torch.Tensor, dt_B1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of a layer without mixed memory: (y_BO, h_BU)."""
        y_BM, h_BU = self.cell(x_BI, h_BU, dt_B1)
        return self.fc(y_BM), h_BU

    def step_mixed(
        self, x_BI: torch.Tensor, h_BU: torch.Tensor, c_BU: torch.Tensor, dt_B1: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of a layer with mixed memory: (y_BO, h_BU, c_BU)."""
        lstm = self.lstm
        if lstm is None:
            raise RuntimeError("step_mixed needs a layer built with mixed_memory=True; call step")
        h_BU, c_BU = lstm(x_BI, h_BU, c_BU)
        y_BM, h_BU = self.cell(x_BI, h_BU, dt_B1)
        return self.fc(y_BM), h_BU, c_BU


def check_exportable(model: nn.Module) -> None:
    """TypeError unless ``model`` is a torchliquid CfC or LTC layer whose cell has a portable twin."""
    cell = getattr(model, "rnn_cell", None)
    if cell is None or not hasattr(model, "use_mixed") or type(cell) not in PORTABLE_CELLS:
        raise TypeError(
            f"model must be a torchliquid.nn CfC or LTC layer, got {type(model).__module__}.{type(model).__name__}; "
            "convert an ncps model with torchliquid.compat.from_ncps first"
        )


def portable_core(model: nn.Module) -> PortableCore:
    """A frozen, scriptable copy of one step of ``model`` (CfC or LTC), in eval-mode semantics."""
    check_exportable(model)
    with torch.no_grad():
        return PortableCore(model).eval()
