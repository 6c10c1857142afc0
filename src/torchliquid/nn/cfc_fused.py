"""Fused whole-sequence CfC: the reference step of cfc_cell / functional.py over all T at once.

One CfC step (ncps 1.0.1 formulation, functional.cfc_gated_update / cfc_pure_update):

    z_0 = act(W_0 [x_t, h] + b_0),  z_l = act(W_l z_{l-1} + b_l)      backbone (L >= 0 layers)
    [ff1 | ff2 | t_a | t_b] = W_head z_L + b_head                       four heads, ONE matmul
    h' = tanh(ff1)(1 - σ) + σ tanh(ff2),  σ = sigmoid(t_a dt + t_b)    (default; no_gate, pure)

What is fused, and why it is exact (same products, only summed in other places):
  * W_0 = [W_x | W_h]: the input half W_x x_t of ALL steps is one (B·T, I) x (I, H) matmul
    before the loop; each step adds W_h h with one addmm;
  * the four heads are one (B, H) x (H, 4U) matmul on concatenated weights (the caller passes
    torch.cat of ff1/ff2/time_a/time_b weights; wired cells pass weights already masked), and
    without timespans (dt = 1) time_a + time_b is merged into one head: (H, 3U), exact;
  * the backward is hand-written: only the data-gradient matmuls stay inside the reversed time
    loop; every weight gradient is ONE matmul over all B·T rows after it (as cuDNN does);
  * the element-wise parts (activation, tail) are C kernels on CPU (_fused_native; torch's
    CPU tanh costs ~2 ns/element) and torch ops elsewhere.

`implementation=`: "function" (the hand-written Function above; default), "function-torch" (same,
element-wise parts as torch ops), "jit" and "compile" (cfc_fused_variants: TorchScript loop and a
torch.compile'd step, both with autograd), "auto" (= "function"). The slow control is
`cfc_fused_variants.cfc_sequence_reference`. No variant re-traces or recompiles per sequence
length: T is only ever a Python loop bound (field case A07).

Shape legend: B batch, T time, I inputs, U units, H backbone width, X head width (4U or U for
pure), O width of the first layer (H, or X without backbone), 1 broadcast.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from . import _fused_native as native
from . import functional

MODES = ("default", "no_gate", "pure")
IMPLEMENTATIONS = ("auto", "function", "function-torch", "jit", "compile")


# --------------------------------------------------------------- element-wise parts (torch)


def _act_forward(name: str, pre: torch.Tensor) -> torch.Tensor:
    return functional.ACTIVATIONS[name](pre)


def _act_backward(name: str, pre: torch.Tensor, y: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
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


def _tail_forward_torch(mode, heads_BX, dt_B1, w_tau_U, a_U, h_BU, acts_B3U) -> None:
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


def _tail_backward_torch(mode, acts_B3U, dt_B1, w_tau_U, a_U, g_carry, g_out, g_heads_BX, g_a, g_w) -> None:
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


# ------------------------------------------------------------------ the hand-written Function


class _Plan:
    """Static description of one call: mode, activation, layer count and element-wise backend."""

    def __init__(
        self, mode: str, activation: str, n_backbone: int, use_native: bool, I: int, dtype: torch.dtype
    ) -> None:
        self.mode, self.activation, self.n_backbone, self.I = mode, activation, n_backbone, I
        self.native_tail = use_native
        self.native_act = use_native and activation in native.CFC_ACTIVATIONS
        self.mode_id = native.CFC_MODES[mode]
        self.act_id = native.CFC_ACTIVATIONS.get(activation, -1)
        self.keep_pre = activation in ("gelu", "silu")  # their derivative needs the input
        # The whole time loop in C around torch's own BLAS gemm, when torch exports one.
        self.c_loop = use_native and native.gemm_pointer(dtype) is not None


def _forward_native(
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


def _backward_native(
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
               gc_p, g_p + t * B * U * es, gh_p + t * B * X * es, X, ga_p, gw_p)  # fmt: skip
        first = gh[t]
        if nb > 0:
            torch.mm(gh[t], weights[-1], out=gy_BH)
            for l in reversed(range(nb)):
                act_b(n_y, plan.act_id, y_p[l] + t * n_y * es, gy_p, gp_p[l] + t * n_y * es)
                if l > 0:
                    torch.mm(gp[l][t], weights[l], out=gy_BH)
            first = gp[0][t]
        torch.mm(first, w_h, out=g_carry)


class _CfCFunction(torch.autograd.Function):
    """h_BTU of a CfC sequence. Saved: x, h, backbone outputs and tail activations, O(B·T·(H+U))."""

    @staticmethod
    def forward(ctx: Any, plan: _Plan, x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, *layers):  # type: ignore[override]
        B, T, I = x_BTI.shape
        U = h0_BU.shape[1]
        weights, biases = layers[0::2], layers[1::2]
        w_x, w_h = weights[0][:, :I], weights[0][:, I:]
        # Input half of the first layer for all steps, then time-major so each step is a block.
        O = weights[0].shape[0]
        if I <= O:  # transpose the narrower of x and p0 into time-major (one copy either way)
            x_TBI = x_BTI.transpose(0, 1).reshape(T * B, I)
            p0_TBO = torch.addmm(biases[0], x_TBI, w_x.t()).view(T, B, O)
        else:
            p0_BTO = torch.addmm(biases[0], x_BTI.reshape(B * T, I), w_x.t()).view(B, T, O)
            p0_TBO = p0_BTO.transpose(0, 1).contiguous()
        nb = plan.n_backbone
        ys = [p0_TBO.new_empty(T, B, weights[l].shape[0]) for l in range(nb)]
        pres = [torch.empty_like(y) for y in ys] if plan.keep_pre else []
        h_TBU = h0_BU.new_empty(T, B, U)
        acts_TB3U = h0_BU.new_empty(T, B, 3 * U)
        heads_BX = h0_BU.new_empty(B, weights[-1].shape[0])
        h_BU = h0_BU
        w_h_t = w_h.t()
        fast = plan.native_tail and (nb == 0 or plan.native_act)
        if fast and plan.c_loop:
            native.cfc_seq_forward(
                plan.mode_id, plan.act_id, I, weights, biases, p0_TBO, h0_BU, dt_TB1, w_tau_U, a_U,
                ys, h_TBU, acts_TB3U,
            )  # fmt: skip
        elif fast:
            _forward_native(
                plan, p0_TBO, h0_BU, dt_TB1, w_tau_U, a_U, weights, biases, ys, h_TBU, acts_TB3U
            )
        for t in range(T if not fast else 0):
            z_BO = torch.addmm(p0_TBO[t], h_BU, w_h_t, out=heads_BX if nb == 0 else None)
            for l in range(nb):
                if l > 0:
                    z_BO = torch.addmm(biases[l], ys[l - 1][t], weights[l].t())
                if plan.keep_pre:
                    pres[l][t] = z_BO
                if plan.native_act:
                    native.cfc_act_forward(plan.act_id, z_BO, ys[l][t])
                else:
                    ys[l][t] = _act_forward(plan.activation, z_BO)
            if nb > 0:
                torch.addmm(biases[-1], ys[-1][t], weights[-1].t(), out=heads_BX)
            dt_B1 = None if dt_TB1 is None else dt_TB1[t]
            if plan.native_tail:
                native.cfc_tail_forward(plan.mode_id, heads_BX, dt_B1, w_tau_U, a_U, h_TBU[t], acts_TB3U[t])
            else:
                dt = 1.0 if dt_B1 is None else dt_B1
                _tail_forward_torch(plan.mode, heads_BX, dt, w_tau_U, a_U, h_TBU[t], acts_TB3U[t])
            h_BU = h_TBU[t]
        ctx.plan = plan
        ctx.save_for_backward(x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, h_TBU, acts_TB3U, *layers, *ys, *pres)
        # A fresh (B, T, U) tensor, not a view of the saved buffer: autograd forbids in-place
        # edits of a custom Function's view outputs, and callers (masks, ncps habits) do them.
        return h_TBU.transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx: Any, g_BTU):  # type: ignore[override]
        plan: _Plan = ctx.plan
        nb = plan.n_backbone
        x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, h_TBU, acts_TB3U, *rest = ctx.saved_tensors
        n_layers = nb + 1
        layers, ys = rest[: 2 * n_layers], rest[2 * n_layers : 2 * n_layers + nb]
        pres = rest[2 * n_layers + nb :]
        weights, biases = layers[0::2], layers[1::2]
        B, T, I = x_BTI.shape
        U = h0_BU.shape[1]
        w_h = weights[0][:, I:]
        g_TBU = g_BTU.transpose(0, 1).contiguous()
        g_heads_TBX = h0_BU.new_empty(T, B, weights[-1].shape[0])
        g_pres = [torch.empty_like(y) for y in ys]
        pure = plan.mode == "pure"
        g_a_BU = h0_BU.new_zeros(B, U) if pure else None
        g_w_BU = h0_BU.new_zeros(B, U) if pure else None
        g_carry = h0_BU.new_zeros(B, U)
        fast = plan.native_tail and (nb == 0 or plan.native_act)
        if fast and plan.c_loop:
            native.cfc_seq_backward(
                plan.mode_id, plan.act_id, I, weights, ys, acts_TB3U, dt_TB1, w_tau_U, a_U, g_TBU,
                g_heads_TBX, g_pres, g_carry, g_a_BU, g_w_BU,
            )  # fmt: skip
        elif fast:
            _backward_native(
                plan, g_TBU, dt_TB1, w_tau_U, a_U, weights, ys, acts_TB3U, g_heads_TBX, g_pres, g_carry,
                g_a_BU, g_w_BU,
            )  # fmt: skip
        for t in reversed(range(T if not fast else 0)):
            dt_B1 = None if dt_TB1 is None else dt_TB1[t]
            if plan.native_tail:
                native.cfc_tail_backward(
                    plan.mode_id, acts_TB3U[t], dt_B1, w_tau_U, a_U, g_carry, g_TBU[t], g_heads_TBX[t],
                    g_a_BU, g_w_BU,
                )  # fmt: skip
            else:
                _tail_backward_torch(
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
                        g_pres[l][t] = _act_backward(plan.activation, pre, ys[l][t], g_y)
                    if l > 0:
                        g_y = torch.mm(g_pres[l][t], weights[l])
                g_first = g_pres[0][t]
            g_carry = torch.mm(g_first, w_h)

        # Weight gradients: one matmul each over all B·T rows.
        rows = lambda t_TBZ: t_TBZ.reshape(T * B, t_TBZ.shape[-1])  # noqa: E731
        grads: list[Optional[torch.Tensor]] = [None] * (2 * n_layers)
        grads[-2] = rows(g_heads_TBX).t() @ rows(ys[-1]) if nb > 0 else None
        grads[-1] = g_heads_TBX.sum((0, 1))
        for l in range(1, nb):
            grads[2 * l] = rows(g_pres[l]).t() @ rows(ys[l - 1])
            grads[2 * l + 1] = g_pres[l].sum((0, 1))
        g_first_TBO = g_pres[0] if nb > 0 else g_heads_TBX
        # dW_h = Σ_t g_t^T h_{t-1}: the steps 1.. as one GEMM on contiguous time-major slices,
        # step 0 against h0 (no shifted copy of h). dW_x from whichever of x or g is narrower
        # transposed to the other's layout.
        O = g_first_TBO.shape[2]
        g_wh = g_first_TBO[0].t() @ h0_BU
        if T > 1:
            g_wh = g_wh + g_first_TBO[1:].reshape((T - 1) * B, O).t() @ h_TBU[:-1].reshape((T - 1) * B, U)
        if I <= O:
            g_wx = rows(g_first_TBO).t() @ x_BTI.transpose(0, 1).reshape(T * B, I)
        else:
            g_first_BTO = g_first_TBO.transpose(0, 1).reshape(B * T, O)
            g_wx = g_first_BTO.t() @ x_BTI.reshape(B * T, I)
        grads[0] = torch.cat([g_wx, g_wh], 1)
        if nb > 0:
            grads[1] = g_first_TBO.sum((0, 1))
        g_x = None
        if ctx.needs_input_grad[1]:
            g_x = (rows(g_first_TBO) @ weights[0][:, :I]).view(T, B, I).transpose(0, 1)
        g_w_tau = (g_w_BU.sum(0) if pure else None)
        g_a = (g_a_BU.sum(0) if pure else None)
        return (None, g_x, g_carry, None, g_w_tau, g_a, *grads)


# ------------------------------------------------------------------------------- public API


def cfc_sequence(
    x_BTI: torch.Tensor,
    h0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor],
    backbone_weights: Sequence[torch.Tensor],
    backbone_biases: Sequence[torch.Tensor],
    head_weight_XZ: torch.Tensor,
    head_bias_X: torch.Tensor,
    mode: str = "default",
    activation: str = "lecun_tanh",
    w_tau_1U: Optional[torch.Tensor] = None,
    a_1U: Optional[torch.Tensor] = None,
    implementation: str = "auto",
) -> torch.Tensor:
    """All CfC states h_BTU of a sequence (see module doc for the math).

    x_BTI             inputs; h0_BU initial state; dt_BT1 elapsed times (None: 1 everywhere)
    backbone_weights  [(H, I+U), (H, H), ...]; empty for backbone_layers = 0
    backbone_biases   [(H,), ...] matching
    head_weight_XZ    cat([ff1.W, ff2.W, time_a.W, time_b.W]) (4U, Z), or ff1.W (U, Z) for
                      pure; Z = H, or I+U without backbone; wired cells pass W * mask
    head_bias_X       the matching concatenated biases
    w_tau_1U, a_1U    pure mode's parameters (1, U)
    Returns (B, T, U); [:, -1] is the final state. Under torch.autocast the whole sequence runs
    in the autocast dtype (matmuls and element-wise parts alike).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if (mode == "pure") != (w_tau_1U is not None and a_1U is not None):
        raise ValueError("w_tau_1U and a_1U are required for mode='pure' and only for it")
    if dt_BT1 is not None and dt_BT1.requires_grad:  # d/d(dt) is not in the fused backward
        implementation = "reference"
    if implementation in ("jit", "compile", "reference"):
        from . import cfc_fused_variants

        fn = {
            "jit": cfc_fused_variants.cfc_sequence_jit,
            "compile": cfc_fused_variants.cfc_sequence_compiled,
            "reference": cfc_fused_variants.cfc_sequence_reference,
        }[implementation]
        return fn(
            x_BTI, h0_BU, dt_BT1, backbone_weights, backbone_biases, head_weight_XZ, head_bias_X,
            mode, activation, w_tau_1U, a_1U,
        )  # fmt: skip

    device_type = x_BTI.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x_BTI.dtype
    cast = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
    layers: list[torch.Tensor] = []
    for w, b in zip(list(backbone_weights) + [head_weight_XZ], list(backbone_biases) + [head_bias_X]):
        layers += [cast(w), cast(b)]
    x = cast(x_BTI)
    dt_TB1 = None if dt_BT1 is None else cast(dt_BT1.transpose(0, 1))
    w_tau = None if w_tau_1U is None else cast(w_tau_1U.reshape(-1))
    a = None if a_1U is None else cast(a_1U.reshape(-1))
    use_native = implementation != "function-torch" and native.supports(x)
    plan = _Plan(mode, activation, len(backbone_weights), use_native, x.shape[2], x.dtype)
    if dt_TB1 is None and mode != "pure":
        # With dt = 1 the gate reads time_a(z) + time_b(z) = (W_a + W_b) z + (b_a + b_b): one head
        # fewer (3U instead of 4U columns, -25 % head FLOPs); autograd gives W_a and W_b the same
        # gradient through the sum, exactly as the two-head form does.
        U = h0_BU.shape[1]
        w_XZ, b_X = layers[-2], layers[-1]
        layers[-2] = torch.cat([w_XZ[: 2 * U], w_XZ[2 * U : 3 * U] + w_XZ[3 * U :]])
        layers[-1] = torch.cat([b_X[: 2 * U], b_X[2 * U : 3 * U] + b_X[3 * U :]])
        plan.mode_id |= native.CFC_MERGED_GATE
    with torch.autocast(device_type, enabled=False):
        h_BTU = _CfCFunction.apply(plan, x, cast(h0_BU), dt_TB1, w_tau, a, *layers)
    return h_BTU
