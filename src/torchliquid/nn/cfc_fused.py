"""Fused whole-sequence CfC: the reference step of cfc_cell / functional.py over all T at once.

One CfC step (ncps 1.0.1 formulation, functional.cfc_gated_update / cfc_pure_update):

    z_0 = act(W_0 [x_t, h] + b_0),  z_l = act(W_l z_{l-1} + b_l)      backbone (L >= 0 layers)
    [ff1 | ff2 | t_a | t_b] = W_head z_L + b_head                       four heads, ONE matmul
    h' = tanh(ff1)(1 - σ) + σ tanh(ff2),  σ = sigmoid(t_a dt + t_b)    (default; no_gate, pure)

What is fused, and why it is exact (same products, only summed in other places):
  * W_0 = [W_x | W_h] is never concatenated with [x_t, h]: W_x x_t and W_h h are two GEMMs
    into one output (for wide inputs W_x x is one matmul over all steps instead, see WIDE_INPUT);
  * the four heads are one (B, H) x (H, 4U) matmul on concatenated weights, and without
    timespans (dt = 1) time_a + time_b is merged into one head: (H, 3U), exact. The caller may
    pass the heads' weights as separate tensors (wired cells: already masked); the Function then
    joins them itself, outside autograd, and hands each its slice of the gradient (autograd's
    cat, slices and sum cost ~0.15 ms per step at batch 64, 3 % of a HAR-like step);
  * the backward is hand-written: only the data-gradient matmuls stay inside the reversed time
    loop; every weight gradient is ONE matmul over all B·T rows after it (as cuDNN does);
  * the element-wise parts (activation, tail) are C kernels on CPU (_fused_native; torch's
    CPU tanh costs ~2 ns/element) and torch ops elsewhere;
  * on CPU the whole time loop, forward and backward, is one C call (_fused_csrc_cfc_seq): each
    thread runs the sequence for its block of batch rows with a packed small-GEMM kernel;
    cfc_fused_loops has the torch-op loop used elsewhere (CUDA, bf16, gelu/silu/relu backbones);
  * return_sequences=False returns only h_T, and the backward then feeds a gradient into the
    last step only (no (B, T, U) zeros, no transposes).

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

from . import _fused_native as native
from . import cfc_fused_loops as loops

MODES = ("default", "no_gate", "pure")
IMPLEMENTATIONS = ("auto", "function", "function-torch", "jit", "compile")
# From this many inputs on, the C loop reads the input half of the first layer from one GEMM over
# all B·T rows (BLAS's threads at full size: 176 vs 121 GFLOP/s at HAR's 561 inputs, B = 64)
# instead of one per step; narrow inputs make that one GEMM slow (I = 7: ~4 GFLOP/s).
WIDE_INPUT = 32


# ------------------------------------------------------------------ the hand-written Function


class _Plan:
    """Static description of one call: mode, activation, depth, and which kernels run."""

    def __init__(
        self, mode: str, activation: str, n_backbone: int, use_native: bool, I: int, dtype: torch.dtype,
        last_only: bool,
    ) -> None:  # fmt: skip
        self.mode, self.activation, self.n_backbone, self.I = mode, activation, n_backbone, I
        self.last_only = last_only
        self.head_parts = 1  # tensors the head weight (and bias) arrive in: see _join_heads
        self.merged = False  # dt = 1: time_a + time_b joined into one head
        self.native_tail = use_native
        self.native_act = use_native and activation in native.CFC_ACTIVATIONS
        self.mode_id = native.CFC_MODES[mode]
        self.act_id = native.CFC_ACTIVATIONS.get(activation, -1)
        self.keep_pre = activation in ("gelu", "silu")  # their derivative needs the input
        # The whole time loop in C (needs the C activation for the backbone, if any).
        self.c_loop = self.native_tail and (n_backbone == 0 or self.native_act) and n_backbone <= 63


def _input_half(x_BTI, w_x, b0) -> torch.Tensor:
    """p0_TBO = x W_x^T + b_0 for all steps, time-major (the narrower of x and p0 is transposed)."""
    B, T, I = x_BTI.shape
    O = w_x.shape[0]
    if I <= O:
        return torch.addmm(b0, x_BTI.transpose(0, 1).reshape(T * B, I), w_x.t()).view(T, B, O)
    return torch.addmm(b0, x_BTI.reshape(B * T, I), w_x.t()).view(B, T, O).transpose(0, 1).contiguous()


class _CfCFunction(torch.autograd.Function):
    """h_BTU (or h_T) of a CfC sequence. Saved: x, states, backbone outputs, tail activations:
    O(B·T·(H + U))."""

    @staticmethod
    def forward(ctx: Any, plan: _Plan, x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, *tensors):  # type: ignore[override]
        B, T, I = x_BTI.shape
        U = h0_BU.shape[1]
        layers = _join_heads(plan, U, tensors)
        weights, biases = layers[0::2], layers[1::2]
        nb = plan.n_backbone
        ys = [h0_BU.new_empty(T, B, weights[l].shape[0]) for l in range(nb)]
        pres = [torch.empty_like(y) for y in ys] if plan.keep_pre else []
        h_TBU = h0_BU.new_empty(T, B, U)
        acts_TB3U = h0_BU.new_empty(T, B, 3 * U)
        if plan.c_loop:
            p0_BTO = None
            if I >= WIDE_INPUT:  # batch-major like x: the C loop reads it in place
                p0_BTO = torch.addmm(biases[0], x_BTI.reshape(B * T, I), weights[0][:, :I].t())
            native.cfc_seq_forward(plan.mode_id, plan.act_id, weights, biases, x_BTI, h0_BU, dt_TB1,
                                   w_tau_U, a_U, ys, h_TBU, acts_TB3U, p0_BTO)  # fmt: skip
        else:
            p0_TBO = _input_half(x_BTI, weights[0][:, :I], biases[0])
            loops.forward_torch(plan, p0_TBO, h0_BU, dt_TB1, w_tau_U, a_U, weights, biases, ys, pres,
                                h_TBU, acts_TB3U)  # fmt: skip
        ctx.plan = plan
        ctx.save_for_backward(x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, h_TBU, acts_TB3U, *layers, *ys, *pres)
        # Fresh tensors, not views of the saved buffer: autograd forbids in-place edits of a
        # custom Function's view outputs, and callers (masks, ncps habits) do them.
        return h_TBU[-1].clone() if plan.last_only else h_TBU.transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx: Any, g_out):  # type: ignore[override]
        plan: _Plan = ctx.plan
        nb = plan.n_backbone
        x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, h_TBU, acts_TB3U, *rest = ctx.saved_tensors
        layers, ys, pres = rest[: 2 * nb + 2], rest[2 * nb + 2 : 3 * nb + 2], rest[3 * nb + 2 :]
        B, U = h0_BU.shape
        pure = plan.mode == "pure"
        g_a_BU = h0_BU.new_zeros(B, U) if pure else None
        g_w_BU = h0_BU.new_zeros(B, U) if pure else None
        saved = (x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, h_TBU, acts_TB3U, layers, ys)
        backward = _backward_c if plan.c_loop else _backward_torch
        grads, g_x, g_h0 = backward(plan, g_out, saved, pres, g_a_BU, g_w_BU, ctx.needs_input_grad[1])
        g_w_tau = g_w_BU.sum(0) if pure else None
        g_a = g_a_BU.sum(0) if pure else None
        return (None, g_x, g_h0, None, g_w_tau, g_a, *grads[:-2], *_split_heads(plan, U, grads[-2:]))


def _backward_c(plan, g_out, saved, pres, g_a_BU, g_w_BU, need_x):
    """The C loop adds every weight gradient from each step's cache-hot operands; only a wide
    input's dW_x (and dL/dx) are GEMMs here, on the first layer's gradients it hands back."""
    x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, h_TBU, acts_TB3U, layers, ys = saved
    B, T, I = x_BTI.shape
    weights = layers[0::2]
    wide = I >= WIDE_INPUT
    grads = [torch.zeros_like(t) for t in layers]
    g_pre0_BTO = h0_BU.new_empty(B, T, weights[0].shape[0]) if wide or need_x else None
    g_carry = h0_BU.new_zeros(h0_BU.shape)
    g = g_out if g_out.stride(-1) == 1 else g_out.contiguous()  # read in place: any row strides
    native.cfc_seq_backward(
        plan.mode_id, plan.act_id, weights, ys, acts_TB3U, dt_TB1, w_tau_U, a_U, g,
        None if wide else x_BTI, h0_BU, h_TBU, grads, g_pre0_BTO, g_carry, g_a_BU, g_w_BU,
    )  # fmt: skip
    g_x = None
    if g_pre0_BTO is not None:
        g_rows, x_rows = g_pre0_BTO.view(B * T, -1), x_BTI.reshape(B * T, I)
        if wide:  # (I, B·T) x (B·T, O): MKL's fast orientation (see _weight_grads)
            grads[0][:, :I] = (x_rows.t() @ g_rows).t()
        if need_x:
            g_x = (g_rows @ weights[0][:, :I]).view(B, T, I)
    return grads, g_x, g_carry


def _backward_torch(plan, g_out, saved, pres, g_a_BU, g_w_BU, need_x):
    """The reversed time loop from Python (torch ops), then one GEMM per weight gradient."""
    x_BTI, h0_BU, dt_TB1, w_tau_U, a_U, h_TBU, acts_TB3U, layers, ys = saved
    T, B, U = h_TBU.shape
    weights = layers[0::2]
    if plan.last_only:
        g_TBU = h0_BU.new_zeros(T, B, U)
        g_TBU[-1] = g_out
    else:
        g_TBU = g_out.transpose(0, 1).contiguous()
    g_heads_TBX = h0_BU.new_empty(T, B, weights[-1].shape[0])
    g_pres = [torch.empty_like(y) for y in ys]
    g_carry = loops.backward_torch(
        plan, g_TBU, dt_TB1, w_tau_U, a_U, weights, ys, pres, acts_TB3U, g_heads_TBX, g_pres,
        h0_BU.new_zeros(B, U), g_a_BU, g_w_BU,
    )  # fmt: skip
    grads, g_x = _weight_grads(x_BTI, h0_BU, h_TBU, weights, ys, g_heads_TBX, g_pres, need_x)
    return grads, g_x, g_carry


def _weight_grads(x_BTI, h0_BU, h_TBU, weights, ys, g_heads_TBX, g_pres, need_x):
    """Every weight and bias gradient as one GEMM (or sum) over all B·T rows, and dL/dx.

    Orientation matters on CPU: a (O, B·T) x (B·T, I) product with tiny I runs ~10x slower in
    MKL than its transpose (I, B·T) x (B·T, O) (47 vs 5 ms at B·T = 65536, I = 7, O = 128).
    """
    B, T, I = x_BTI.shape
    U, nb = h0_BU.shape[1], len(ys)
    rows = lambda t_TBZ: t_TBZ.reshape(T * B, t_TBZ.shape[-1])  # noqa: E731
    wgrad = lambda g_R_out, a_R_in: (a_R_in.t() @ g_R_out).t()  # noqa: E731  dW = g^T a
    grads: list[Optional[torch.Tensor]] = [None] * (2 * nb + 2)
    if nb > 0:
        grads[-2] = wgrad(rows(g_heads_TBX), rows(ys[-1]))
    grads[-1] = g_heads_TBX.sum((0, 1))
    for l in range(1, nb):
        grads[2 * l] = wgrad(rows(g_pres[l]), rows(ys[l - 1]))
        grads[2 * l + 1] = g_pres[l].sum((0, 1))
    g_first_TBO = g_pres[0] if nb > 0 else g_heads_TBX
    O = g_first_TBO.shape[2]
    # dW_h = Σ_t g_t^T h_{t-1}: steps 1.. as one GEMM on contiguous time-major slices, step 0
    # against h0 (no shifted copy of h). dW_x needs x and g in one layout: transpose the narrower.
    g_wh = wgrad(g_first_TBO[0], h0_BU)
    if T > 1:
        g_wh = g_wh + wgrad(g_first_TBO[1:].reshape((T - 1) * B, O), h_TBU[:-1].reshape((T - 1) * B, U))
    if I <= O:
        g_wx = wgrad(rows(g_first_TBO), x_BTI.transpose(0, 1).reshape(T * B, I))
    else:
        g_wx = wgrad(g_first_TBO.transpose(0, 1).reshape(B * T, O), x_BTI.reshape(B * T, I))
    grads[0] = torch.cat([g_wx, g_wh], 1)
    if nb > 0:
        grads[1] = g_first_TBO.sum((0, 1))
    g_x = None
    if need_x:
        g_x = (rows(g_first_TBO) @ weights[0][:, :I]).view(T, B, I).transpose(0, 1)
    return grads, g_x


def _join_heads(plan: _Plan, U: int, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[W_0, b_0, ..., W_head, b_head] from the Function's inputs, whose head weight and bias
    arrive in plan.head_parts pieces each ([ff1 | ff2 | time_a | time_b] or one concatenated
    tensor), with time_a + time_b joined into one head when plan.merged. Runs inside forward:
    no autograd graph for the cat and the sum."""
    n = plan.head_parts
    layers = list(tensors[: -2 * n])
    for parts in (tensors[-2 * n : -n], tensors[-n:]):
        if n == 4:
            head = torch.cat([parts[0], parts[1], parts[2] + parts[3]] if plan.merged else parts)
        elif plan.merged:
            head = torch.cat([parts[0][: 2 * U], parts[0][2 * U : 3 * U] + parts[0][3 * U :]])
        else:
            head = parts[0]
        layers.append(head)
    return layers


def _split_heads(plan: _Plan, U: int, head_grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The inverse of _join_heads for the head's (weight, bias) gradients: each input's slice.
    time_a and time_b both get the merged head's gradient (one a copy: two parameters' .grad must
    not share memory, or accumulating into one would change the other)."""
    out: list[torch.Tensor] = []
    for g in head_grads:
        if plan.merged and plan.head_parts == 4:
            out += [g[:U], g[U : 2 * U], g[2 * U :], g[2 * U :].clone()]
        elif plan.merged:
            out.append(torch.cat([g, g[2 * U :]]))
        else:
            out += list(g.split(g.shape[0] // plan.head_parts))
    return out


# ------------------------------------------------------------------------------- public API


def cfc_sequence(
    x_BTI: torch.Tensor,
    h0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor],
    backbone_weights: Sequence[torch.Tensor],
    backbone_biases: Sequence[torch.Tensor],
    head_weight_XZ: torch.Tensor | Sequence[torch.Tensor],
    head_bias_X: torch.Tensor | Sequence[torch.Tensor],
    mode: str = "default",
    activation: str = "lecun_tanh",
    w_tau_1U: Optional[torch.Tensor] = None,
    a_1U: Optional[torch.Tensor] = None,
    implementation: str = "auto",
    return_sequences: bool = True,
) -> torch.Tensor:
    """All CfC states h_BTU of a sequence, or only the last, h_BU (see module doc for the math).

    x_BTI             inputs; h0_BU initial state; dt_BT1 elapsed times (None: 1 everywhere)
    backbone_weights  [(H, I+U), (H, H), ...]; empty for backbone_layers = 0
    backbone_biases   [(H,), ...] matching
    head_weight_XZ    cat([ff1.W, ff2.W, time_a.W, time_b.W]) (4U, Z), or ff1.W (U, Z) for
                      pure; Z = H, or I+U without backbone; wired cells pass W * mask. Or the
                      list [ff1.W, ff2.W, time_a.W, time_b.W] itself (cheaper: no autograd cat)
    head_bias_X       the matching biases, concatenated or as a list
    w_tau_1U, a_1U    pure mode's parameters (1, U)
    return_sequences  False: return h_T (B, U) only; the backward is then cheaper
    Returns (B, T, U) (or (B, U)); [:, -1] is the final state. Under torch.autocast the whole
    sequence runs in the autocast dtype (matmuls and element-wise parts alike).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if (mode == "pure") != (w_tau_1U is not None and a_1U is not None):
        raise ValueError("w_tau_1U and a_1U are required for mode='pure' and only for it")
    head_w_parts = [head_weight_XZ] if isinstance(head_weight_XZ, torch.Tensor) else list(head_weight_XZ)
    head_b_parts = [head_bias_X] if isinstance(head_bias_X, torch.Tensor) else list(head_bias_X)
    if len(head_w_parts) != len(head_b_parts) or len(head_w_parts) not in (1, 1 if mode == "pure" else 4):
        raise ValueError(f"head_weight_XZ and head_bias_X: one tensor each, or {'[ff1]' if mode == 'pure' else '[ff1, ff2, time_a, time_b]'} "
                         f"lists of matching length; got {len(head_w_parts)} and {len(head_b_parts)}")  # fmt: skip
    if dt_BT1 is not None and dt_BT1.requires_grad:  # d/d(dt) is not in the fused backward
        implementation = "reference"
    if implementation in ("jit", "compile", "reference"):
        from . import cfc_fused_variants

        fn = {
            "jit": cfc_fused_variants.cfc_sequence_jit,
            "compile": cfc_fused_variants.cfc_sequence_compiled,
            "reference": cfc_fused_variants.cfc_sequence_reference,
        }[implementation]
        joined = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts)  # noqa: E731
        h_BTU = fn(
            x_BTI, h0_BU, dt_BT1, backbone_weights, backbone_biases, joined(head_w_parts),
            joined(head_b_parts), mode, activation, w_tau_1U, a_1U,
        )  # fmt: skip
        return h_BTU if return_sequences else h_BTU[:, -1]

    device_type = x_BTI.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x_BTI.dtype
    cast = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
    tensors: list[torch.Tensor] = []
    for w, b in zip(backbone_weights, backbone_biases):
        tensors += [cast(w), cast(b)]
    tensors += [cast(w) for w in head_w_parts] + [cast(b) for b in head_b_parts]
    x = cast(x_BTI)
    dt_TB1 = None if dt_BT1 is None else cast(dt_BT1.transpose(0, 1))
    w_tau = None if w_tau_1U is None else cast(w_tau_1U.reshape(-1))
    a = None if a_1U is None else cast(a_1U.reshape(-1))
    use_native = implementation != "function-torch" and native.supports(x)
    nb, I = len(backbone_weights), x.shape[2]
    plan = _Plan(mode, activation, nb, use_native, I, x.dtype, last_only=not return_sequences)
    plan.head_parts = len(head_w_parts)
    if dt_TB1 is None and mode != "pure":
        # With dt = 1 the gate reads time_a(z) + time_b(z) = (W_a + W_b) z + (b_a + b_b): one head
        # fewer (3U instead of 4U columns, -25 % head FLOPs).
        plan.merged = True
        plan.mode_id |= native.CFC_MERGED_GATE
    if not torch.is_autocast_enabled(device_type):  # entering the context costs ~15 µs
        return _CfCFunction.apply(plan, x, cast(h0_BU), dt_TB1, w_tau, a, *tensors)
    with torch.autocast(device_type, enabled=False):
        return _CfCFunction.apply(plan, x, cast(h0_BU), dt_TB1, w_tau, a, *tensors)
