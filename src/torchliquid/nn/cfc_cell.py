"""CfC cells: one step of a Closed-form Continuous-time network (Hasani et al. 2022).

The cell reads z = backbone([x, h]) and computes, per mode (functional.py has the math):

    default   h' = tanh(ff1(z)) ⊙ (1 - σ) + σ ⊙ tanh(ff2(z)),   σ = sigmoid(time_a(z) dt + time_b(z))
    no_gate   h' = tanh(ff1(z)) + σ ⊙ tanh(ff2(z))
    pure      h' = -A ⊙ exp(-dt (|w_tau| + |ff1(z)|)) ⊙ ff1(z) + A

This is the torch formulation of ncps 1.0.1 (time gate +time_a, tanh heads, backbone dropout
only after the second and later backbone layers), parameter for parameter, so ncps weights load
unchanged and give the same outputs (field case A09 lists how ncps's TF/Keras versions differ).

A wired cell (WiredCfCCell) runs one CfCCell per wiring layer, each fed by the previous layer's
new state, with the wiring's synapses as a mask on ff1 and ff2.

Shape legend (suffixes on names):
    B batch    I input features    U units of the cell    Z = I + U (or backbone width H)
    M motor (output) neurons       1 broadcast axis
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from ._checks import check_choice, check_float, check_int
from .sequence import Timespans, canonical_step
from .wirings import Wiring


class Activation(nn.Module):
    """A backbone activation chosen by name from functional.ACTIVATIONS (parameter-free)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.fn = check_choice("activation", name, functional.ACTIVATIONS)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def _gated_update(cell: "CfCCell", z_BZ: torch.Tensor, ff1_BU: torch.Tensor, dt_B1: torch.Tensor) -> torch.Tensor:
    ff2_BU = cell._masked_linear(cell.ff2, z_BZ)
    return functional.cfc_gated_update(ff1_BU, ff2_BU, cell.time_a(z_BZ), cell.time_b(z_BZ), dt_B1, gated=True)


def _no_gate_update(cell: "CfCCell", z_BZ: torch.Tensor, ff1_BU: torch.Tensor, dt_B1: torch.Tensor) -> torch.Tensor:
    ff2_BU = cell._masked_linear(cell.ff2, z_BZ)
    return functional.cfc_gated_update(ff1_BU, ff2_BU, cell.time_a(z_BZ), cell.time_b(z_BZ), dt_B1, gated=False)


def _pure_update(cell: "CfCCell", z_BZ: torch.Tensor, ff1_BU: torch.Tensor, dt_B1: torch.Tensor) -> torch.Tensor:
    return functional.cfc_pure_update(ff1_BU, cell.w_tau, cell.A, dt_B1)


CFC_MODES: dict[str, Callable[..., torch.Tensor]] = {
    "default": _gated_update,
    "pure": _pure_update,
    "no_gate": _no_gate_update,
}


class CfCCell(nn.Module):
    """A CfC cell: one time step, ``forward(input, hx, ts=1.0) -> (h', h')``.

    =========  ==========================  ==========================================
    argument   shape                       meaning
    =========  ==========================  ==========================================
    input      (B, I)                      one time step of a batch
    hx         (B, U)                      state before the step
    ts         float, 0-d, (B,) or (B, 1)  elapsed time of the step (one per sequence)
    returns    ((B, U), (B, U))            new state twice (output and state), as ncps
    =========  ==========================  ==========================================

    Args (defaults as ncps.torch.CfCCell):
        input_size, hidden_size: I and U.
        mode: "default", "pure" or "no_gate" (equations in the module docstring).
        backbone_activation: "lecun_tanh" (1.7159 tanh(0.666 x)), "relu", "tanh", "gelu", "silu".
        backbone_units, backbone_layers: width H and depth of the MLP on [x, h]; 0 layers = none.
        backbone_dropout: in [0, 1); applied after backbone layers 2.. only (as ncps).
        sparsity_mask: optional (I + U, U) array; |mask|ᵀ multiplies the ff1 and ff2 weights.
            Kept as a buffer (moves with .to(), never trained).

    Init as ncps: every trainable 2-D parameter Xavier-uniform (w_tau and A of "pure" mode
    included), biases as torch.nn.Linear; with the same torch seed, an ncps cell of the same
    arguments gets the same values.

    Example:
        >>> cell = CfCCell(3, 8)
        >>> h = torch.zeros(2, 8)
        >>> out, h = cell(torch.randn(2, 3), h, ts=0.5)
        >>> tuple(out.shape)
        (2, 8)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        mode: str = "default",
        backbone_activation: str = "lecun_tanh",
        backbone_units: int = 128,
        backbone_layers: int = 1,
        backbone_dropout: float = 0.0,
        sparsity_mask: Optional[Any] = None,
    ) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self._update = check_choice("mode", mode, CFC_MODES)
        self.mode = mode
        Activation(backbone_activation)  # validates the name even when there is no backbone
        self.backbone_activation = backbone_activation
        self.backbone_layers = check_int("backbone_layers", backbone_layers, 0)
        self.backbone_units = check_int("backbone_units", backbone_units, 1 if backbone_layers > 0 else 0)
        self.backbone_dropout = check_float("backbone_dropout", backbone_dropout, 0.0, 1.0)

        self._sparsity_mask_config = None
        if sparsity_mask is None:
            self.register_buffer("sparsity_mask", None)
        else:
            mask_ZU = np.abs(np.asarray(sparsity_mask, dtype=np.float64))
            expected = (input_size + hidden_size, hidden_size)
            if mask_ZU.shape != expected:
                raise ValueError(
                    f"sparsity_mask must have shape (input_size + hidden_size, hidden_size) = {expected}, "
                    f"got {mask_ZU.shape}"
                )
            self._sparsity_mask_config = np.asarray(sparsity_mask).astype(int).tolist()
            mask_UZ = torch.tensor(mask_ZU.T, dtype=torch.get_default_dtype())
            self.register_buffer("sparsity_mask", mask_UZ)

        self.backbone = None
        if backbone_layers > 0:
            layers = [nn.Linear(input_size + hidden_size, backbone_units), Activation(backbone_activation)]
            for _ in range(1, backbone_layers):
                layers += [nn.Linear(backbone_units, backbone_units), Activation(backbone_activation)]
                if backbone_dropout > 0.0:
                    layers.append(nn.Dropout(backbone_dropout))
            self.backbone = nn.Sequential(*layers)
        z_size = input_size + hidden_size if backbone_layers == 0 else backbone_units

        self.ff1 = nn.Linear(z_size, hidden_size)
        if mode == "pure":
            self.w_tau = nn.Parameter(torch.zeros(1, hidden_size))
            self.A = nn.Parameter(torch.ones(1, hidden_size))
        else:
            self.ff2 = nn.Linear(z_size, hidden_size)
            self.time_a = nn.Linear(z_size, hidden_size)
            self.time_b = nn.Linear(z_size, hidden_size)
        self.init_weights()

    def init_weights(self) -> None:
        for w in self.parameters():
            if w.dim() == 2 and w.requires_grad:
                nn.init.xavier_uniform_(w)

    @property
    def state_size(self) -> int:
        return self.hidden_size

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def masked_parameters(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(weight, mask) pairs: entries where the mask is 0 never reach the output (ff1, ff2)."""
        if self.sparsity_mask is None:
            return []
        return [(self.ff1.weight, self.sparsity_mask), (self.ff2.weight, self.sparsity_mask)]

    def _masked_linear(self, linear: nn.Linear, z_BZ: torch.Tensor) -> torch.Tensor:
        weight_UZ = linear.weight if self.sparsity_mask is None else linear.weight * self.sparsity_mask
        return F.linear(z_BZ, weight_UZ, linear.bias)

    def _step(self, x_BI: torch.Tensor, h_BU: torch.Tensor, dt_B1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_BZ = torch.cat([x_BI, h_BU], dim=1)
        if self.backbone is not None:
            z_BZ = self.backbone(z_BZ)
        ff1_BU = self._masked_linear(self.ff1, z_BZ)
        h_BU = self._update(self, z_BZ, ff1_BU, dt_B1)
        return h_BU, h_BU

    def forward(self, input: torch.Tensor, hx: torch.Tensor, ts: Timespans = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        x_BI, h_BU, dt_B1 = canonical_step(input, hx, ts, self.input_size, self.hidden_size)
        return self._step(x_BI, h_BU, dt_B1)

    def config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict with "class"."""
        return {
            "class": "CfCCell",
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "mode": self.mode,
            "backbone_activation": self.backbone_activation,
            "backbone_units": self.backbone_units,
            "backbone_layers": self.backbone_layers,
            "backbone_dropout": self.backbone_dropout,
            "sparsity_mask": self._sparsity_mask_config,
        }


def layer_masks(wiring: Wiring) -> list[np.ndarray]:
    """The (inputs + U_l, U_l) sparsity mask of each wiring layer, as ncps WiredCfCCell builds it.

    Layer 0 reads the sensory synapses into its neurons, layer l > 0 the synapses from layer l-1's
    neurons; the recurrent block (the layer's own state) is dense.
    """
    masks = []
    for layer in range(wiring.num_layers):
        neurons = wiring.neurons_of_layer(layer)
        if layer == 0:
            feed = wiring.sensory_adjacency_matrix[:, neurons]
        else:
            feed = wiring.adjacency_matrix[wiring.neurons_of_layer(layer - 1)][:, neurons]
        masks.append(np.concatenate([feed, np.ones((len(neurons), len(neurons)), dtype=feed.dtype)], axis=0))
    return masks


class WiredCfCCell(nn.Module):
    """A CfC cell on a wiring: one CfCCell per wiring layer (ncps.torch.WiredCfCCell).

    The state (B, U) is the concatenation of the layers' states IN LAYER ORDER (for an NCP:
    inter, command, motor), as ncps lays it out. Each step, layer l reads the previous layer's
    new state (layer 0 reads the input) through its sparsity mask. The output is the motor
    neurons 0..M-1, which open the last layer: (B, M) with M = wiring.output_dim for every wiring
    type (ncps returns the whole last layer, all U units for single-layer wirings: field case A08).

    Args:
        input_size: I (the wiring is built for it; a built wiring must match), or None to use a
            built wiring's input_dim.
        wiring: a torchliquid.nn.wirings spec; never modified (build returns a copy, case A11).
        mode: as CfCCell. Sub-cells have no backbone.

    Example:
        >>> from torchliquid.nn.wirings import AutoNCP
        >>> cell = WiredCfCCell(3, AutoNCP(10, 2))
        >>> out, h = cell(torch.randn(4, 3), torch.zeros(4, 10))
        >>> tuple(out.shape), tuple(h.shape)
        ((4, 2), (4, 10))
    """

    def __init__(self, input_size: Optional[int], wiring: Wiring, mode: str = "default") -> None:
        super().__init__()
        if not isinstance(wiring, Wiring):
            raise TypeError(
                f"wiring must be a torchliquid.nn.wirings.Wiring, got {type(wiring).__module__}."
                f"{type(wiring).__name__}; convert ncps wirings with torchliquid.compat.from_ncps"
            )
        if input_size is not None:
            wiring = wiring.build(check_int("input_size", input_size, 1))
        if not wiring.is_built():
            raise ValueError(f"input_size is None and {wiring!r} is not built: pass input_size")
        check_choice("mode", mode, CFC_MODES)
        self._wiring = wiring
        self.mode = mode
        self.input_size = wiring.input_dim
        self.state_size = wiring.units
        self.motor_size = wiring.output_dim
        self.layer_sizes = [len(wiring.neurons_of_layer(layer)) for layer in range(wiring.num_layers)]

        in_features = wiring.input_dim
        for layer, mask in enumerate(layer_masks(wiring)):
            cell = CfCCell(
                in_features,
                self.layer_sizes[layer],
                mode,
                backbone_activation="lecun_tanh",
                backbone_units=0,
                backbone_layers=0,
                backbone_dropout=0.0,
                sparsity_mask=mask,
            )
            self.add_module(f"layer_{layer}", cell)
            in_features = self.layer_sizes[layer]

    @property
    def wiring(self) -> Wiring:
        return self._wiring

    @property
    def _layers(self) -> list[CfCCell]:
        # Looked up on each use, never cached in a list: module replicas (DataParallel, copies)
        # must run their own sub-cells.
        return [self._modules[f"layer_{layer}"] for layer in range(len(self.layer_sizes))]

    @property
    def num_layers(self) -> int:
        return len(self.layer_sizes)

    @property
    def sensory_size(self) -> int:
        return self.input_size

    @property
    def output_size(self) -> int:
        return self.motor_size

    @property
    def synapse_count(self) -> int:
        return self._wiring.synapse_count

    @property
    def sensory_synapse_count(self) -> int:
        return self._wiring.sensory_synapse_count

    def _step(self, x_BI: torch.Tensor, h_BU: torch.Tensor, dt_B1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer_states = torch.split(h_BU, self.layer_sizes, dim=1)
        new_states = []
        feed_BI = x_BI
        for cell, h_layer in zip(self._layers, layer_states):
            feed_BI, _ = cell._step(feed_BI, h_layer, dt_B1)
            new_states.append(feed_BI)
        return feed_BI[:, : self.motor_size], torch.cat(new_states, dim=1)

    def forward(self, input: torch.Tensor, hx: torch.Tensor, ts: Timespans = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: input (B, I), hx (B, U), ts scalar/(B,)/(B, 1) -> (output (B, M), state (B, U))."""
        x_BI, h_BU, dt_B1 = canonical_step(input, hx, ts, self.input_size, self.state_size)
        return self._step(x_BI, h_BU, dt_B1)

    def config(self) -> dict[str, Any]:
        return {"class": "WiredCfCCell", "input_size": self.input_size, "wiring": self._wiring.get_config(), "mode": self.mode}
