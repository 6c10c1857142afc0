"""The slow control and the two compiler-based CfC variants (same arguments as cfc_sequence).

    cfc_sequence_reference   functional.py looped over T, plain autograd: the control every fast
                             path is tested against (cat([x, h]) then backbone then four heads).
    cfc_sequence_jit         one TorchScript function with the loop inside (scripted once; the
                             loop bound is data, so no re-scripting per T), autograd by TorchScript.
    cfc_sequence_compiled    torch.compile of ONE step (dynamic shapes) driven by a Python loop:
                             compiling the whole loop would unroll it and recompile for every new T
                             (field case A07); a step graph is independent of T.

Shape legend: B batch, T time, I inputs, U units, Z first-layer input (I+U) or H, X head width.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import functional

_MODE_IDS = {"default": 0, "no_gate": 1, "pure": 2}
_ACT_IDS = {"lecun_tanh": 0, "tanh": 1, "relu": 2, "gelu": 3, "silu": 4}


def _dt(dt_BT1: Optional[torch.Tensor], t: int, like: torch.Tensor) -> torch.Tensor:
    return like.new_ones(like.shape[0], 1) if dt_BT1 is None else dt_BT1[:, t]


def cfc_sequence_reference(
    x_BTI, h0_BU, dt_BT1, backbone_weights, backbone_biases, head_weight_XZ, head_bias_X,
    mode="default", activation="lecun_tanh", w_tau_1U=None, a_1U=None,
) -> torch.Tensor:  # fmt: skip
    """The cell's step (cfc_cell.CfCCell._step) looped over T: the slow, obviously right path."""
    act = functional.ACTIVATIONS[activation]
    U = h0_BU.shape[1]
    heads_w = head_weight_XZ.split(U, 0)
    heads_b = head_bias_X.split(U, 0)
    h_BU, states = h0_BU, []
    for t in range(x_BTI.shape[1]):
        z_BZ = torch.cat([x_BTI[:, t], h_BU], 1)
        for w, b in zip(backbone_weights, backbone_biases):
            z_BZ = act(F.linear(z_BZ, w, b))
        dt_B1 = _dt(dt_BT1, t, x_BTI)
        ff1_BU = F.linear(z_BZ, heads_w[0], heads_b[0])
        if mode == "pure":
            h_BU = functional.cfc_pure_update(ff1_BU, w_tau_1U, a_1U, dt_B1)
        else:
            ff2_BU = F.linear(z_BZ, heads_w[1], heads_b[1])
            ta_BU = F.linear(z_BZ, heads_w[2], heads_b[2])
            tb_BU = F.linear(z_BZ, heads_w[3], heads_b[3])
            h_BU = functional.cfc_gated_update(ff1_BU, ff2_BU, ta_BU, tb_BU, dt_B1, gated=mode == "default")
        states.append(h_BU)
    return torch.stack(states, 1)


# ----------------------------------------------------------------------------- TorchScript


def _scripted_act(z: torch.Tensor, act: int) -> torch.Tensor:
    if act == 0:
        return 1.7159 * torch.tanh(0.666 * z)
    if act == 1:
        return torch.tanh(z)
    if act == 2:
        return torch.relu(z)
    if act == 3:
        return F.gelu(z)
    return F.silu(z)


def _scripted_loop(
    x_BTI: torch.Tensor,
    h0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor],
    weights: List[torch.Tensor],
    biases: List[torch.Tensor],
    mode: int,
    act: int,
    w_tau_1U: Optional[torch.Tensor],
    a_1U: Optional[torch.Tensor],
) -> torch.Tensor:
    B, T, I = x_BTI.shape[0], x_BTI.shape[1], x_BTI.shape[2]
    U = h0_BU.shape[1]
    n = len(weights)
    w0 = weights[0]
    p0_BTO = (torch.mm(x_BTI.reshape(B * T, I), w0[:, :I].t()) + biases[0]).view(B, T, -1)
    w_h_t = w0[:, I:].t()
    h_BU = h0_BU
    states: List[torch.Tensor] = []
    for t in range(T):
        z = torch.addmm(p0_BTO[:, t], h_BU, w_h_t)
        if n > 1:
            z = _scripted_act(z, act)
            for l in range(1, n - 1):
                z = _scripted_act(torch.addmm(biases[l], z, weights[l].t()), act)
            z = torch.addmm(biases[n - 1], z, weights[n - 1].t())
        dt_B1 = torch.ones_like(h_BU[:, :1]) if dt_BT1 is None else dt_BT1[:, t]
        if mode == 2:
            assert w_tau_1U is not None and a_1U is not None
            ff1 = z[:, :U]
            h_BU = -a_1U * torch.exp(-dt_B1 * (torch.abs(w_tau_1U) + torch.abs(ff1))) * ff1 + a_1U
        else:
            t1 = torch.tanh(z[:, :U])
            t2 = torch.tanh(z[:, U : 2 * U])
            s = torch.sigmoid(z[:, 2 * U : 3 * U] * dt_B1 + z[:, 3 * U :])
            h_BU = t1 * (1.0 - s) + s * t2 if mode == 0 else t1 + s * t2
        states.append(h_BU)
    return torch.stack(states, 1)


_scripted: Optional[Callable] = None


def cfc_sequence_jit(
    x_BTI, h0_BU, dt_BT1, backbone_weights, backbone_biases, head_weight_XZ, head_bias_X,
    mode="default", activation="lecun_tanh", w_tau_1U=None, a_1U=None,
) -> torch.Tensor:  # fmt: skip
    """TorchScript loop (scripted on first use, then reused for every T, mode and shape)."""
    global _scripted
    if _scripted is None:
        _scripted = torch.jit.script(_scripted_loop)
    weights = list(backbone_weights) + [head_weight_XZ]
    biases = list(backbone_biases) + [head_bias_X]
    return _scripted(x_BTI, h0_BU, dt_BT1, weights, biases, _MODE_IDS[mode], _ACT_IDS[activation], w_tau_1U, a_1U)


# --------------------------------------------------------------------------- torch.compile


def _step(
    p0_TBO: torch.Tensor,
    t: int,
    h_BU: torch.Tensor,
    w_h_t: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    dt_TB1: torch.Tensor,
    mode: str,
    activation: str,
    w_tau_1U: Optional[torch.Tensor],
    a_1U: Optional[torch.Tensor],
) -> torch.Tensor:
    # Whole (T, ...) tensors and the step index go in, so T and t are symbolic in one graph;
    # per-step slices as inputs would carry storage offsets that guards specialise on.
    p0_BO, dt_B1 = p0_TBO[t], dt_TB1[t]
    U = h_BU.shape[1]
    act = functional.ACTIVATIONS[activation]
    z = torch.addmm(p0_BO, h_BU, w_h_t)
    if len(weights) > 1:
        z = act(z)
        for l in range(1, len(weights) - 1):
            z = act(torch.addmm(biases[l], z, weights[l].t()))
        z = torch.addmm(biases[-1], z, weights[-1].t())
    if mode == "pure":
        return functional.cfc_pure_update(z[:, :U], w_tau_1U, a_1U, dt_B1)
    ff1, ff2, ta, tb = z.split(U, 1)
    return functional.cfc_gated_update(ff1, ff2, ta, tb, dt_B1, gated=mode == "default")


_compiled_step: Optional[Callable] = None
# torch.compile backend of the step; "inductor" generates fused C++/Triton. Tests swap in a
# counting backend to prove the step compiles once for every sequence length.
COMPILE_BACKEND: Any = "inductor"


def reset_compiled() -> None:
    """Forget the compiled step (after changing COMPILE_BACKEND)."""
    global _compiled_step
    _compiled_step = None


def cfc_sequence_compiled(
    x_BTI, h0_BU, dt_BT1, backbone_weights, backbone_biases, head_weight_XZ, head_bias_X,
    mode="default", activation="lecun_tanh", w_tau_1U=None, a_1U=None,
) -> torch.Tensor:  # fmt: skip
    """A torch.compile'd step (dynamic batch) in a Python loop: one compile per (mode,
    activation, depth), none per sequence length."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_step, dynamic=True, backend=COMPILE_BACKEND)
    B, T, I = x_BTI.shape
    weights = list(backbone_weights) + [head_weight_XZ]
    biases = list(backbone_biases) + [head_bias_X]
    # Time-major, contiguous per-step slices: a (B, O) block has the same strides for every T,
    # so the compiled step's guards never see the sequence length.
    p0_TBO = torch.addmm(biases[0], x_BTI.reshape(B * T, I), weights[0][:, :I].t()).view(B, T, -1)
    p0_TBO = p0_TBO.transpose(0, 1).contiguous()
    dt_TB1 = x_BTI.new_ones(T, B, 1) if dt_BT1 is None else dt_BT1.transpose(0, 1).contiguous()
    w_h_t = weights[0][:, I:].t()
    h_BU, states = h0_BU, []
    for t in range(T):
        h_BU = _compiled_step(p0_TBO, t, h_BU, w_h_t, weights, biases, dt_TB1, mode, activation, w_tau_1U, a_1U)
        states.append(h_BU)
    return torch.stack(states, 1)
