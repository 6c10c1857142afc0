"""LTC cell: one step of a Liquid Time-Constant network (Hasani et al. 2021) on a wiring.

Each neuron is a leaky membrane with conductance-based synapses:

    cm dv_i/dt = -gleak_i (v_i - vleak_i) - Σ_j w_ji σ(sigma_ji (v_j - mu_ji)) (v_i - erev_ji)
                                          - Σ_k sw_ki σ(ssigma_ki (x_k - smu_ki)) (v_i - serev_ki)

solved over a step of length dt by ``ode_unfolds`` fused semi-implicit Euler steps of dt/unfolds
(functional.ltc_ode_solve), with synapses only where the wiring has them (masks) and the reversal
potentials erev initialised to the wiring's polarities. Inputs pass an elementwise affine map
first, outputs are the motor neurons 0..M-1 through another.

Positivity of cm, gleak, w and sensory_w (the denominator must stay > 0):
    implicit_param_constraints=True   softplus of the raw parameters in the forward (default of
                                      cell AND layer here; ncps's cell defaults to False: A03)
    implicit_param_constraints=False  raw parameters as ncps; call apply_weight_constraints()
                                      after every optimizer step, or constrain_after_step() once

Shape legend (suffixes on names): B batch, I input features, U units, M motor neurons, 1 broadcast.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from ._checks import check_bool, check_choice, check_float, check_int
from .sequence import Timespans, canonical_step
from .wirings import FullyConnected, Wiring

# Parameters of each elementwise mapping: y = x * w (+ b).
MAPPINGS: dict[Optional[str], tuple[str, ...]] = {"affine": ("w", "b"), "linear": ("w",), None: ()}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# implicit_param_constraints -> the map that makes cm, gleak, w, sensory_w positive in the forward
POSITIVE: dict[bool, Callable[[torch.Tensor], torch.Tensor]] = {True: F.softplus, False: _identity}

# ncps 1.0.1 init ranges: uniform in [low, high] per parameter
INIT_RANGES: dict[str, tuple[float, float]] = {
    "gleak": (0.001, 1.0),
    "vleak": (-0.2, 0.2),
    "cm": (0.4, 0.6),
    "w": (0.001, 1.0),
    "sigma": (3, 8),
    "mu": (0.3, 0.8),
    "sensory_w": (0.001, 1.0),
    "sensory_sigma": (3, 8),
    "sensory_mu": (0.3, 0.8),
}

CONSTRAINED = ("w", "sensory_w", "cm", "gleak")


def _uniform(name: str, *shape: int) -> torch.Tensor:
    low, high = INIT_RANGES[name]
    return torch.rand(*shape) * (high - low) + low


class LTCCell(nn.Module):
    """An LTC cell: ``forward(inputs, states, elapsed_time=1.0) -> (outputs (B, M), states (B, U))``.

    =============  ==========================  ============================================
    argument       shape                       meaning
    =============  ==========================  ============================================
    inputs         (B, I)                      one time step of a batch
    states         (B, U)                      membrane potentials v, neuron-index order
    elapsed_time   float, 0-d, (B,) or (B, 1)  dt of the step, one per sequence
    outputs        (B, M)                      (v[:, :M]) * output_w + output_b
    =============  ==========================  ============================================

    Args:
        wiring: a torchliquid wiring spec (an int U means FullyConnected(U)); never modified.
        in_features: I; the wiring is built for it (None: the wiring must be built).
        input_mapping, output_mapping: "affine" (x w + b), "linear" (x w) or None.
        ode_unfolds: solver steps per input step, >= 1 (default 6).
        epsilon: added to the solver's denominator, >= 0 (default 1e-8).
        implicit_param_constraints: softplus-positive parameters (default True, see module doc).

    Parameters (ncps names and init ranges): gleak, vleak, cm (U,); sigma, mu, w, erev (U, U);
    sensory_sigma, sensory_mu, sensory_w, sensory_erev (I, U); input_w, input_b (I,);
    output_w, output_b (M,). Buffers: sparsity_mask (U, U), sensory_sparsity_mask (I, U).

    Example:
        >>> from torchliquid.nn.wirings import AutoNCP
        >>> cell = LTCCell(AutoNCP(10, 2), in_features=3)
        >>> out, v = cell(torch.randn(4, 3), torch.zeros(4, 10), elapsed_time=0.5)
        >>> tuple(out.shape), tuple(v.shape)
        ((4, 2), (4, 10))
    """

    def __init__(
        self,
        wiring: Union[Wiring, int],
        in_features: Optional[int] = None,
        input_mapping: Optional[str] = "affine",
        output_mapping: Optional[str] = "affine",
        ode_unfolds: int = 6,
        epsilon: float = 1e-8,
        implicit_param_constraints: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(wiring, int) and not isinstance(wiring, bool):
            wiring = FullyConnected(check_int("wiring (units)", wiring, 1))
        if not isinstance(wiring, Wiring):
            raise TypeError(
                f"wiring must be a torchliquid.nn.wirings.Wiring or an int, got {type(wiring).__module__}."
                f"{type(wiring).__name__}; convert ncps wirings with torchliquid.compat.from_ncps"
            )
        if in_features is not None:
            wiring = wiring.build(check_int("in_features", in_features, 1))
        if not wiring.is_built():
            raise ValueError(f"in_features is None and {wiring!r} is not built: pass in_features")
        input_params = check_choice("input_mapping", input_mapping, MAPPINGS)
        output_params = check_choice("output_mapping", output_mapping, MAPPINGS)
        self._positive = check_choice(
            "implicit_param_constraints", check_bool("implicit_param_constraints", implicit_param_constraints), POSITIVE
        )
        self._wiring = wiring
        self.input_mapping = input_mapping
        self.output_mapping = output_mapping
        self.ode_unfolds = check_int("ode_unfolds", ode_unfolds, 1)
        self.epsilon = check_float("epsilon", epsilon, 0.0)
        self.implicit_param_constraints = implicit_param_constraints
        self.state_size = wiring.units
        self.sensory_size = wiring.input_dim
        self.motor_size = wiring.output_dim

        units, inputs, motors = self.state_size, self.sensory_size, self.motor_size
        default = torch.get_default_dtype()
        # Creation order is ncps's, so the same torch seed gives the same initial values.
        self.gleak = nn.Parameter(_uniform("gleak", units))
        self.vleak = nn.Parameter(_uniform("vleak", units))
        self.cm = nn.Parameter(_uniform("cm", units))
        self.sigma = nn.Parameter(_uniform("sigma", units, units))
        self.mu = nn.Parameter(_uniform("mu", units, units))
        self.w = nn.Parameter(_uniform("w", units, units))
        self.erev = nn.Parameter(torch.tensor(wiring.erev_initializer(), dtype=default))
        self.sensory_sigma = nn.Parameter(_uniform("sensory_sigma", inputs, units))
        self.sensory_mu = nn.Parameter(_uniform("sensory_mu", inputs, units))
        self.sensory_w = nn.Parameter(_uniform("sensory_w", inputs, units))
        self.sensory_erev = nn.Parameter(torch.tensor(wiring.sensory_erev_initializer(), dtype=default))
        self.register_buffer("sparsity_mask", torch.tensor(abs(wiring.adjacency_matrix), dtype=default))
        self.register_buffer(
            "sensory_sparsity_mask", torch.tensor(abs(wiring.sensory_adjacency_matrix), dtype=default)
        )
        self.input_w = nn.Parameter(torch.ones(inputs)) if "w" in input_params else None
        self.input_b = nn.Parameter(torch.zeros(inputs)) if "b" in input_params else None
        self.output_w = nn.Parameter(torch.ones(motors)) if "w" in output_params else None
        self.output_b = nn.Parameter(torch.zeros(motors)) if "b" in output_params else None

    @property
    def wiring(self) -> Wiring:
        return self._wiring

    @property
    def output_size(self) -> int:
        return self.motor_size

    @property
    def synapse_count(self) -> int:
        return self._wiring.synapse_count

    @property
    def sensory_synapse_count(self) -> int:
        return self._wiring.sensory_synapse_count

    def masked_parameters(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, mask) pairs: a synapse the wiring lacks contributes w·σ(...)·0 whatever its
        w, mu, sigma and erev are, so those entries are not effective parameters."""
        recurrent = [(p, self.sparsity_mask) for p in (self.sigma, self.mu, self.w, self.erev)]
        sensory = [(p, self.sensory_sparsity_mask) for p in (self.sensory_sigma, self.sensory_mu, self.sensory_w,
                                                            self.sensory_erev)]  # fmt: skip
        return recurrent + sensory

    # Both maps act on the last axis only, so a whole-sequence path can apply them to (B, T, ·).

    def _map_inputs(self, x_BI: torch.Tensor) -> torch.Tensor:
        if self.input_w is not None:
            x_BI = x_BI * self.input_w
        if self.input_b is not None:
            x_BI = x_BI + self.input_b
        return x_BI

    def _map_outputs(self, v_BU: torch.Tensor) -> torch.Tensor:
        y_BM = v_BU[..., : self.motor_size]
        if self.output_w is not None:
            y_BM = y_BM * self.output_w
        if self.output_b is not None:
            y_BM = y_BM + self.output_b
        return y_BM

    def _step(self, x_BI: torch.Tensor, v_BU: torch.Tensor, dt_B1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positive = self._positive
        x_BI = self._map_inputs(x_BI)
        sensory_numerator_BU, sensory_denominator_BU = functional.ltc_sensory_currents(
            x_BI,
            positive(self.sensory_w),
            self.sensory_mu,
            self.sensory_sigma,
            self.sensory_erev,
            self.sensory_sparsity_mask,
        )
        cm_t_BU = positive(self.cm) / (dt_B1 / self.ode_unfolds)  # loop-invariant over the unfolds
        v_BU = functional.ltc_ode_solve(
            v_BU,
            sensory_numerator_BU,
            sensory_denominator_BU,
            cm_t_BU,
            positive(self.gleak),
            self.vleak,
            positive(self.w),
            self.mu,
            self.sigma,
            self.erev,
            self.sparsity_mask,
            self.ode_unfolds,
            self.epsilon,
        )
        return self._map_outputs(v_BU), v_BU

    def forward(
        self, inputs: torch.Tensor, states: torch.Tensor, elapsed_time: Timespans = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_BI, v_BU, dt_B1 = canonical_step(inputs, states, elapsed_time, self.sensory_size, self.state_size, "states")
        return self._step(x_BI, v_BU, dt_B1)

    @torch.no_grad()
    def apply_weight_constraints(self) -> None:
        """Clip w, sensory_w, cm and gleak to >= 0 in place (explicit mode only; a no-op if implicit)."""
        if not self.implicit_param_constraints:
            for name in CONSTRAINED:
                getattr(self, name).clamp_(min=0.0)

    def config(self) -> dict[str, Any]:
        return {
            "class": "LTCCell",
            "wiring": self._wiring.get_config(),
            "in_features": self.sensory_size,
            "input_mapping": self.input_mapping,
            "output_mapping": self.output_mapping,
            "ode_unfolds": self.ode_unfolds,
            "epsilon": self.epsilon,
            "implicit_param_constraints": self.implicit_param_constraints,
        }


def constrain_after_step(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Call ``apply_weight_constraints()`` of every submodule of ``model`` after each optimizer step.

    Returns the hook handle (``handle.remove()`` undoes it). Needed only for LTC cells built with
    implicit_param_constraints=False; harmless otherwise (the call is a no-op).

    Example:
        >>> from torchliquid.nn import LTC
        >>> model = LTC(3, 8, implicit_param_constraints=False)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        >>> handle = constrain_after_step(optimizer, model)
        >>> model(torch.randn(2, 4, 3))[0].sum().backward(); optimizer.step()
        >>> bool((model.rnn_cell.cm >= 0).all())
        True
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    constrained = [m for m in model.modules() if callable(getattr(m, "apply_weight_constraints", None))]

    def _constrain(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        for module in constrained:
            module.apply_weight_constraints()

    return optimizer.register_step_post_hook(_constrain)
