"""The Python-driven time loops of the fused CfC: the fallback when the C loop cannot run.

cfc_fused runs the whole sequence in one C call where it can (CPU, float32/64, lecun_tanh or
tanh backbone, torch exports its BLAS gemm). Otherwise it drives the same steps from Python:

    forward_native / backward_native   C element-wise kernels + torch GEMMs (no BLAS export)
    forward_torch / backward_torch     torch ops only: any device and dtype (CUDA, bf16), any
                                       activation; also implementation="function-torch"

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


# ------------------------------------------------------------- loops with C element-wise kernels


def forward_native(
    plan, p0_TBO, h0_BU, dt_TB1, w_tau_U, a_U, weights, biases, ys, h_TBU, acts_TB3U
) -> None:
    """The forward time loop with C element-wise kernels: 2 GEMMs + 2 C calls per step, no
    allocation; C calls get raw pointers (base + t * step) instead of per-step tensor views."""
    T, B, _ = p0_TBO.shape
    U, I, nb = h0_BU.shape[1], plan.I, plan.n_backbone
    es = h0_BU.element_size()
    act = native.kernel("cfc_act_fwd", h0_BU.dtype)
    tail = native.kernel("cfc_tail_fwd", h0_BU.dtype)
    heads_BX = h0_BU.new_empty(B, weights[-1].shape[0])
    X, heads_p = heads_BX.shape[1], heads_BX.data_ptr()
    # Contiguous once per call: a column slice of W_0 as a GEMM operand is copied by every mm.
    w_h_t = weights[0][:, I:].t().contiguous()
    w_t = [w.t() for w in weights]
    p0, hs = p0_TBO.unbind(0), h_TBU.unbind(0)
    yl = [y.unbind(0) for y in ys]
    y_p = [y.data_ptr() for y in ys]
    y_step = [y.shape[1] * y.shape[2] * es for y in ys]
    h_p, a_p, dt_p = h_TBU.data_ptr(), acts_TB3U.data_ptr(), 0 if dt_TB1 is None else dt_TB1.data_ptr()
    wt_p = 0 if w_tau_U is None else w_tau_U.data_ptr()
    aa_p = 0 if a_U is None else a_U.data_ptr()
    # Biases and the precomputed input half are added inside the C kernels, not by addmm: addmm
    # first copies its bias into the output, a full extra pass per GEMM (~12 % of a CfC step).
    p0_p, p0_step = p0_TBO.data_ptr(), B * p0_TBO.shape[2] * es
    bias_p = [b.data_ptr() for b in biases]
    head_bias_p = 0 if nb == 0 else bias_p[-1]
    h_BU = h0_BU
    for t in range(T):
        if nb == 0:
            torch.addmm(p0[t], h_BU, w_h_t, out=heads_BX)
        else:
            H = ys[0].shape[2]
            torch.mm(h_BU, w_h_t, out=yl[0][t])
            y_t = y_p[0] + t * y_step[0]
            act(B, H, plan.act_id, y_t, p0_p + t * p0_step, H, y_t)
            for l in range(1, nb):
                torch.mm(yl[l - 1][t], w_t[l], out=yl[l][t])
                y_t = y_p[l] + t * y_step[l]
                act(B, ys[l].shape[2], plan.act_id, y_t, bias_p[l], 0, y_t)
            torch.mm(yl[-1][t], w_t[-1], out=heads_BX)
        tail(B, U, plan.mode_id, heads_p, X, head_bias_p, dt_p and dt_p + t * B * es, wt_p, aa_p,
             h_p + t * B * U * es, a_p + t * B * 3 * U * es)  # fmt: skip
        h_BU = hs[t]


def backward_native(
    plan, g_TBU, dt_TB1, w_tau_U, a_U, weights, ys, acts_TB3U, g_heads_TBX, g_pres, g_carry, g_a_BU, g_w_BU
) -> None:
    """The reversed time loop with C element-wise kernels: 2 C calls + 2 GEMMs per step."""
    T, B, U = g_TBU.shape
    I, nb = plan.I, plan.n_backbone
    es = g_TBU.element_size()
    act_b = native.kernel("cfc_act_bwd", g_TBU.dtype)
    tail_b = native.kernel("cfc_tail_bwd", g_TBU.dtype)
    w_h = weights[0][:, I:].contiguous()  # see _forward_native
    X = g_heads_TBX.shape[2]
    gh = g_heads_TBX.unbind(0)
    gp = [g.unbind(0) for g in g_pres]
    gp_p = [g.data_ptr() for g in g_pres]
    y_p = [y.data_ptr() for y in ys]
    gy_BH = g_TBU.new_empty(B, ys[0].shape[2]) if nb > 0 else None
    gy_p = 0 if gy_BH is None else gy_BH.data_ptr()
    n_y = 0 if gy_BH is None else gy_BH.numel()
    a_p, g_p, gh_p = acts_TB3U.data_ptr(), g_TBU.data_ptr(), g_heads_TBX.data_ptr()
    dt_p = 0 if dt_TB1 is None else dt_TB1.data_ptr()
    wt_p = 0 if w_tau_U is None else w_tau_U.data_ptr()
    aa_p = 0 if a_U is None else a_U.data_ptr()
    ga_p = 0 if g_a_BU is None else g_a_BU.data_ptr()
    gw_p = 0 if g_w_BU is None else g_w_BU.data_ptr()
    gc_p = g_carry.data_ptr()
    for t in reversed(range(T)):
        tail_b(B, U, plan.mode_id, a_p + t * B * 3 * U * es, dt_p and dt_p + t * B * es, wt_p, aa_p,
               gc_p, g_p + t * B * U * es, U, gh_p + t * B * X * es, X, ga_p, gw_p)  # fmt: skip
        first = gh[t]
        if nb > 0:
            torch.mm(gh[t], weights[-1], out=gy_BH)
            for l in reversed(range(nb)):
                act_b(n_y, plan.act_id, y_p[l] + t * n_y * es, gy_p, gp_p[l] + t * n_y * es)
                if l > 0:
                    torch.mm(gp[l][t], weights[l], out=gy_BH)
            first = gp[0][t]
        torch.mm(first, w_h, out=g_carry)


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
