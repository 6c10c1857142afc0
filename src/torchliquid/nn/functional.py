"""Pure step math of CfC and LTC: the plain reference path every fused kernel must equal.

Nothing here owns parameters or validates arguments: callers pass already-checked tensors in
one canonical form, and every function is a direct transcription of the published equations.

Shape legend (suffixes on names):
    B  batch            T  time steps        I  input features (sensory neurons)
    U  units (state)    M  motor/output      H  backbone width
    1  a broadcast axis of size one

``dt_B1`` is the elapsed time of one step, one value per sequence, kept as (B, 1) so that it
broadcasts along units and never along the batch (the fault of ncps 1.0.1, field case A01/A02).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ncps uses 0.666 rather than LeCun's 2/3 (1998): kept so that ncps checkpoints give the same
# outputs (within 1e-7 rather than the 1e-4 the exact constant would cost).
LECUN_OUTER = 1.7159
LECUN_INNER = 0.666


def lecun_tanh(x: torch.Tensor) -> torch.Tensor:
    """LeCun's scaled tanh, 1.7159 * tanh(0.666 x), with the constants of ncps."""
    return LECUN_OUTER * torch.tanh(LECUN_INNER * x)


ACTIVATIONS = {
    "lecun_tanh": lecun_tanh,
    "tanh": torch.tanh,
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
}


# ---------------------------------------------------------------------------------------------
# CfC (Hasani et al. 2022, eq. 10): h(t) = σ(-f t) ⊙ g + (1 - σ(-f t)) ⊙ h_head, written, as in
# ncps.torch, with a learned time gate σ(t_a · t + t_b).
# ---------------------------------------------------------------------------------------------


def cfc_gated_update(
    ff1_BU: torch.Tensor,
    ff2_BU: torch.Tensor,
    time_a_BU: torch.Tensor,
    time_b_BU: torch.Tensor,
    dt_B1: torch.Tensor,
    gated: bool = True,
) -> torch.Tensor:
    """The CfC state update of modes "default" (gated=True) and "no_gate" (gated=False).

    h = tanh(ff1) * (1 - σ) + σ * tanh(ff2)      (default)
    h = tanh(ff1) + σ * tanh(ff2)                (no_gate)
    with σ = sigmoid(time_a * dt + time_b).
    """
    head1_BU = torch.tanh(ff1_BU)
    head2_BU = torch.tanh(ff2_BU)
    gate_BU = torch.sigmoid(time_a_BU * dt_B1 + time_b_BU)
    if gated:
        return head1_BU * (1.0 - gate_BU) + gate_BU * head2_BU
    return head1_BU + gate_BU * head2_BU


def cfc_pure_update(
    ff1_BU: torch.Tensor, w_tau_1U: torch.Tensor, a_1U: torch.Tensor, dt_B1: torch.Tensor
) -> torch.Tensor:
    """The direct solution of the liquid ODE, mode "pure":

    h = -A * exp(-dt * (|w_tau| + |ff1|)) * ff1 + A
    """
    decay_BU = torch.exp(-dt_B1 * (torch.abs(w_tau_1U) + torch.abs(ff1_BU)))
    return -a_1U * decay_BU * ff1_BU + a_1U


# ---------------------------------------------------------------------------------------------
# LTC (Hasani et al. 2021): C dv/dt = -g_leak (v - v_leak) - Σ_j w_j σ(v_pre_j) (v - E_j),
# solved with the fused semi-implicit Euler step of the paper, unfolded `unfolds` times per
# input step of length dt (ncps.torch.LTCCell._ode_solver).
# ---------------------------------------------------------------------------------------------


def ltc_synapse_activation(
    v_pre_BS: torch.Tensor, mu_SU: torch.Tensor, sigma_SU: torch.Tensor
) -> torch.Tensor:
    """σ(sigma * (v_pre - mu)) for every synapse pre → post, shape (B, S, U)."""
    return torch.sigmoid(sigma_SU * (v_pre_BS.unsqueeze(-1) - mu_SU))


def ltc_sensory_currents(
    inputs_BI: torch.Tensor,
    sensory_w_IU: torch.Tensor,
    sensory_mu_IU: torch.Tensor,
    sensory_sigma_IU: torch.Tensor,
    sensory_erev_IU: torch.Tensor,
    sensory_mask_IU: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sensory synapse terms, constant over the unfolds of one step.

    ``sensory_w_IU`` is already made positive (softplus or clipping is the caller's business).
    Returns (numerator_BU, denominator_BU): Σ_i w σ E and Σ_i w σ over the inputs i.
    """
    activation_BIU = sensory_w_IU * ltc_synapse_activation(
        inputs_BI, sensory_mu_IU, sensory_sigma_IU
    )
    activation_BIU = activation_BIU * sensory_mask_IU
    numerator_BU = torch.sum(activation_BIU * sensory_erev_IU, dim=1)
    denominator_BU = torch.sum(activation_BIU, dim=1)
    return numerator_BU, denominator_BU


def ltc_ode_solve(
    v_BU: torch.Tensor,
    sensory_numerator_BU: torch.Tensor,
    sensory_denominator_BU: torch.Tensor,
    cm_t_BU: torch.Tensor,
    gleak_U: torch.Tensor,
    vleak_U: torch.Tensor,
    w_UU: torch.Tensor,
    mu_UU: torch.Tensor,
    sigma_UU: torch.Tensor,
    erev_UU: torch.Tensor,
    mask_UU: torch.Tensor,
    unfolds: int,
    epsilon: float,
) -> torch.Tensor:
    """Unfold the fused semi-implicit Euler step `unfolds` times; returns the new state (B, U).

    ``cm_t_BU`` is cm / (dt / unfolds) (positive cm), ``gleak_U`` and ``w_UU`` are positive.
    Each unfold:
        a   = w * σ(sigma * (v_j - mu)) * mask                        (B, U, U)
        v  <- (cm_t v + gleak vleak + Σ_j a E + num_s) / (cm_t + gleak + Σ_j a + den_s + ε)
    """
    gleak_vleak_U = gleak_U * vleak_U
    for _ in range(unfolds):
        activation_BUU = w_UU * ltc_synapse_activation(v_BU, mu_UU, sigma_UU)
        activation_BUU = activation_BUU * mask_UU
        numerator_BU = torch.sum(activation_BUU * erev_UU, dim=1) + sensory_numerator_BU
        denominator_BU = torch.sum(activation_BUU, dim=1) + sensory_denominator_BU
        numerator_BU = cm_t_BU * v_BU + gleak_vleak_U + numerator_BU
        denominator_BU = cm_t_BU + gleak_U + denominator_BU
        v_BU = numerator_BU / (denominator_BU + epsilon)
    return v_BU


# ---------------------------------------------------------------------------------------------
# Mixed memory (Lechner & Hasani 2020): an LSTM cell runs beside the liquid cell and hands it
# its output as the liquid state; gates as ncps.torch.LSTMCell (forget bias +1).
# ---------------------------------------------------------------------------------------------


def lstm_memory_step(
    inputs_BI: torch.Tensor,
    h_BU: torch.Tensor,
    c_BU: torch.Tensor,
    input_weight_4UI: torch.Tensor,
    input_bias_4U: torch.Tensor,
    recurrent_weight_4UU: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step; returns (h, c). Gate order along the 4U axis: input, input gate, forget, output."""
    z_B4U = F.linear(inputs_BI, input_weight_4UI, input_bias_4U) + F.linear(
        h_BU, recurrent_weight_4UU
    )
    i_BU, ig_BU, fg_BU, og_BU = z_B4U.chunk(4, dim=1)
    c_BU = c_BU * torch.sigmoid(fg_BU + 1.0) + torch.tanh(i_BU) * torch.sigmoid(ig_BU)
    h_BU = torch.tanh(c_BU) * torch.sigmoid(og_BU)
    return h_BU, c_BU
