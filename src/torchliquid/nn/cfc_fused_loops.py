"""The Python-driven time loop of the fused CfC: where the C loop cannot run.

cfc_fused runs the whole sequence in one C call where it can (CPU, float32/64, lecun_tanh or
tanh backbone). Otherwise forward_torch / backward_torch drive the same steps with torch ops
(C element-wise kernels where the plan allows): any device and dtype (CUDA, bf16), any
activation; also implementation="function-torch".

All loops are time-major: p0_TBO (input half of the first layer, bias included), ys[l] (T, B, H)
backbone outputs, h_TBU states, acts_TB3U tail activations, g_* their gradients. The weight
gradients are not here: the caller computes each with one GEMM over all B·T rows.

Shape legend: B batch, T time, I inputs, U units, H backbone width, X head width, O first-layer width.
"""

from __future__ import annotations

import torch

from . import _fused_native as native
from . import functional



def act_forward(name: str, pre: torch.Tensor) -> torch.Tensor:
    return functional.ACTIVATIONS[name](pre)


def act_backward(name: str, pre: torch.Tensor, y: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """gy * act'(pre); tanh-like activations use their output y (pre may be None then)."""
    if name == "lecun_tanh":
        t = y / functional.LECUN_OUTER
        return gy * (functional.LECUN_OUTER * functional.LECUN_INNER) * (1.0 - t * t)
    if name == "tanh":
        return gy * (1.0 - y * y)
    if name == "relu":
        return gy * (y > 0).to(gy.dtype)
    if name == "gelu":
        return torch.ops.aten.gelu_backward(gy, pre)
    if name == "silu":
        return torch.ops.aten.silu_backward(gy, pre)
    raise ValueError(f"activation must be one of {tuple(functional.ACTIVATIONS)}, got {name!r}")


def tail_forward_torch(mode, heads_BX, dt_B1, w_tau_U, a_U, h_BU, acts_B3U) -> None:
    U = h_BU.shape[1]
    if mode == "pure":
        ff1 = heads_BX[:, :U]
        decay = torch.exp(-dt_B1 * (torch.abs(w_tau_U) + torch.abs(ff1)))
        h_BU.copy_(-a_U * decay * ff1 + a_U)
        acts_B3U[:, :U], acts_B3U[:, U : 2 * U] = ff1, decay
        return
    ff1, ff2, *gate = heads_BX.split(U, 1)
    t1, t2 = torch.tanh(ff1), torch.tanh(ff2)
    s = torch.sigmoid(gate[0] if len(gate) == 1 else gate[0] * dt_B1 + gate[1])  # 1: merged gate
    h_BU.copy_(t1 * (1.0 - s) + s * t2 if mode == "default" else t1 + s * t2)
    acts_B3U[:, :U], acts_B3U[:, U : 2 * U], acts_B3U[:, 2 * U :] = t1, t2, s


def tail_backward_torch(mode, acts_B3U, dt_B1, w_tau_U, a_U, g_carry, g_out, g_heads_BX, g_a, g_w) -> None:
    U = g_carry.shape[1]
    g = g_carry + g_out
    if mode == "pure":
        ff1, decay = acts_B3U[:, :U], acts_B3U[:, U : 2 * U]
        g_heads_BX.copy_(-a_U * g * decay * (1.0 - dt_B1 * torch.abs(ff1)))
        g_a += g * (1.0 - decay * ff1)
        g_w += g * a_U * ff1 * decay * dt_B1 * torch.sign(w_tau_U)
        return
    t1, t2, s = acts_B3U.split(U, 1)
    g1 = g * (1.0 - s) if mode == "default" else g
    gs = g * (t2 - t1) if mode == "default" else g * t2
    gz = gs * s * (1.0 - s)
    g_heads_BX[:, :U] = g1 * (1.0 - t1 * t1)
    g_heads_BX[:, U : 2 * U] = g * s * (1.0 - t2 * t2)
    if g_heads_BX.shape[1] == 3 * U:  # merged gate: one head time_a + time_b, dt = 1
        g_heads_BX[:, 2 * U :] = gz
        return
    g_heads_BX[:, 2 * U : 3 * U] = gz * dt_B1
    g_heads_BX[:, 3 * U :] = gz


# ---------------------------------------------------------------------------- loops with torch ops


def forward_torch(
    plan, p0_TBO, h0_BU, dt_TB1, w_tau_U, a_U, weights, biases, ys, pres, h_TBU, acts_TB3U
) -> None:
    """The forward time loop with torch ops (C element-wise kernels where plan allows)."""
    T, B, _ = p0_TBO.shape
    nb = plan.n_backbone
    heads_BX = h0_BU.new_empty(B, weights[-1].shape[0])
    w_h_t = weights[0][:, plan.I :].t()
    h_BU = h0_BU
    for t in range(T):
        z_BO = torch.addmm(p0_TBO[t], h_BU, w_h_t, out=heads_BX if nb == 0 else None)
        for l in range(nb):
            if l > 0:
                z_BO = torch.addmm(biases[l], ys[l - 1][t], weights[l].t())
            if plan.keep_pre:
                pres[l][t] = z_BO
            if plan.native_act:
                native.cfc_act_forward(plan.act_id, z_BO, ys[l][t])
            else:
                ys[l][t] = act_forward(plan.activation, z_BO)
        if nb > 0:
            torch.addmm(biases[-1], ys[-1][t], weights[-1].t(), out=heads_BX)
        dt_B1 = None if dt_TB1 is None else dt_TB1[t]
        if plan.native_tail:
            native.cfc_tail_forward(
                plan.mode_id, heads_BX, dt_B1, w_tau_U, a_U, h_TBU[t], acts_TB3U[t]
            )
        else:
            dt = 1.0 if dt_B1 is None else dt_B1
            tail_forward_torch(plan.mode, heads_BX, dt, w_tau_U, a_U, h_TBU[t], acts_TB3U[t])
        h_BU = h_TBU[t]


def backward_torch(
    plan, g_TBU, dt_TB1, w_tau_U, a_U, weights, ys, pres, acts_TB3U, g_heads_TBX, g_pres, g_carry,
    g_a_BU, g_w_BU,
) -> torch.Tensor:  # fmt: skip
    """The reversed time loop with torch ops; returns dL/dh0 (g_carry is the zero start)."""
    T = g_TBU.shape[0]
    nb = plan.n_backbone
    w_h = weights[0][:, plan.I :]
    for t in reversed(range(T)):
        dt_B1 = None if dt_TB1 is None else dt_TB1[t]
        if plan.native_tail:
            native.cfc_tail_backward(
                plan.mode_id, acts_TB3U[t], dt_B1, w_tau_U, a_U, g_carry, g_TBU[t], g_heads_TBX[t],
                g_a_BU, g_w_BU,
            )  # fmt: skip
        else:
            tail_backward_torch(
                plan.mode, acts_TB3U[t], 1.0 if dt_B1 is None else dt_B1, w_tau_U, a_U, g_carry,
                g_TBU[t], g_heads_TBX[t], g_a_BU, g_w_BU,
            )  # fmt: skip
        g_first = g_heads_TBX[t]
        if nb > 0:
            g_y = torch.mm(g_heads_TBX[t], weights[-1])
            for l in reversed(range(nb)):
                if plan.native_act:
                    native.cfc_act_backward(plan.act_id, ys[l][t], g_y, g_pres[l][t])
                else:
                    pre = pres[l][t] if pres else None
                    g_pres[l][t] = act_backward(plan.activation, pre, ys[l][t], g_y)
                if l > 0:
                    g_y = torch.mm(g_pres[l][t], weights[l])
            g_first = g_pres[0][t]
        g_carry = torch.mm(g_first, w_h)
    return g_carry
