"""Fused whole-sequence LTC: the reference math of functional.py, fast and with O(B·T·U) memory.

For every step t of a sequence (functional.ltc_sensory_currents + functional.ltc_ode_solve):

    sn, sd = Σ_i w^s σ(sigma^s (x_ti - mu^s)) · (E^s, 1)          sensory terms, (B, U)
    cm_t   = cm / (dt_t / K)
    K times:  a = w σ(sigma (v_j - mu)) mask                      (B, U, U) in the reference
              v <- (cm_t v + gleak vleak + Σ_j a E + sn) / (cm_t + gleak + Σ_j a + sd + ε)

What is fused, and why it is exact:
  * the sensory terms of ALL steps are one call over B·T rows before the recurrence (they do
    not depend on the state); their backward recomputes σ instead of keeping (B, T, I, U);
  * the whole recurrence is one autograd Function whose backward recomputes each step's unfold
    chain from the saved state before the step: saved memory is v, sn, sd, cm_t, i.e. O(B·T·U),
    instead of O(B·T·K·U²) (field case A16);
  * only the synapses present in the wiring are computed (sparse_synapses); masked pairs add 0
    and get zero gradients in the reference, so this changes nothing but the cost (A18).

Backends (`backend=`): "native" (C kernels, CPU fp32/fp64), "torch-sparse" and "torch-dense"
(the same Functions written with torch ops: any device, the fallback and the CUDA path), and
"auto" (native where it runs, else sparse when the wiring keeps < 50 % of the pairs).
`ltc_sequence_reference` is the plain loop over functional.py that every backend is tested against.

Parameters arrive already constrained (softplus / clipping is the caller's business), exactly as
functional.py takes them. Half / bfloat16 inputs are computed in float32 and returned in their own
dtype (the unfold's division and sums lose ~3 digits in bf16).

Shape legend: B batch, T time, I inputs (sensory), U units, P synapses, N = B·T rows, 1 broadcast.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch

from . import _fused_native as native
from . import functional
from .sparse_synapses import (
    DenseLayout,
    SparseLayout,
    SynapseIndex,
    synapse_backward,
    synapse_forward,
)

BACKENDS = ("auto", "native", "torch-sparse", "torch-dense")
SPARSE_BELOW = 0.5  # density under which the torch path gathers pairs instead of masking a grid
_ROW_CHUNK_ELEMENTS = 1 << 22  # torch sensory path: rows per chunk x pairs stays under 4M

_index_cache: dict[int, tuple[weakref.ref, int, SynapseIndex]] = {}


def synapse_index(mask_SU: torch.Tensor) -> SynapseIndex:
    """The SynapseIndex of a mask, cached per mask object and version (masks are buffers).

    Keyed on the tensor object itself (checked through a weak reference), never on its address:
    a freed mask's memory can be reused by a different mask of the same shape.
    """
    entry = _index_cache.get(id(mask_SU))
    if entry is not None and entry[0]() is mask_SU and entry[1] == mask_SU._version:
        return entry[2]
    if len(_index_cache) > 256:
        for key in [k for k, e in _index_cache.items() if e[0]() is None]:
            del _index_cache[key]
    index = SynapseIndex.from_mask(mask_SU)
    _index_cache[id(mask_SU)] = (weakref.ref(mask_SU), mask_SU._version, index)
    return index


class _Spec:
    """How a Function computes: `kind` in {"native", "sparse", "dense"} plus the pair index."""

    def __init__(self, kind: str, index: SynapseIndex) -> None:
        self.kind, self.index = kind, index
        self.layout = DenseLayout(index.n_pre, index.n_post) if kind == "dense" else SparseLayout(index)


def _layout_params(spec: _Spec, w, mu, sigma, erev, mask) -> tuple[torch.Tensor, ...]:
    """Parameters in the layout's form: (S, U) grids with the mask in w, or (P,) pair vectors."""
    if spec.kind == "dense":
        return w * mask, mu, sigma, erev
    return tuple(spec.index.pack(w, mu, sigma, erev).unbind(0))


# ------------------------------------------------------------------------------ sensory layer


class _SensoryFn(torch.autograd.Function):
    """(num_NU, den_NU) of the sensory synapses for N rows; backward recomputes σ per chunk."""

    @staticmethod
    def forward(ctx: Any, x_NS, w, mu, sigma, erev, spec: _Spec):  # type: ignore[override]
        params = (w, mu, sigma, erev)
        ctx.spec = spec
        ctx.save_for_backward(x_NS, *params)
        if spec.kind == "native":
            index = spec.index
            return native.syn_forward(x_NS, index.ptr_U1, index.pre_P, torch.stack(params), index.n_post)
        chunk = max(1, _ROW_CHUNK_ELEMENTS // max(1, w.numel()))
        parts = [synapse_forward(spec.layout, x, params) for x in x_NS.split(chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @staticmethod
    def backward(ctx: Any, gnum_NU, gden_NU):  # type: ignore[override]
        x_NS, *params = ctx.saved_tensors
        spec = ctx.spec
        gnum_NU = gnum_NU.contiguous()
        gden_NU = gden_NU.contiguous()
        if spec.kind == "native":
            index = spec.index
            gx, g4 = native.syn_backward(
                x_NS, index.ptr_U1, index.pre_P, torch.stack(params), gnum_NU, gden_NU
            )
            return (gx, *g4.unbind(0), None)
        chunk = max(1, _ROW_CHUNK_ELEMENTS // max(1, params[0].numel()))
        gx_parts, grads = [], [torch.zeros_like(p) for p in params]
        for x, gn, gd in zip(x_NS.split(chunk), gnum_NU.split(chunk), gden_NU.split(chunk)):
            gx, g = synapse_backward(spec.layout, x, tuple(params), gn, gd)
            gx_parts.append(gx)
            for acc, gi in zip(grads, g):
                acc += gi
        return (torch.cat(gx_parts), *grads, None)


# --------------------------------------------------------------------------------- recurrence


def _unfold_chain(layout, v_BU, sn, sd, cmt, gl, glvl, params, unfolds, eps):
    """States v_0..v_K and divisors D_1..D_K of one step's unfolds (torch backends)."""
    states, divisors = [v_BU], []
    for _ in range(unfolds):
        num_BU, den_BU = synapse_forward(layout, states[-1], params)
        divisor_BU = cmt + gl + (den_BU + sd) + eps
        states.append((cmt * states[-1] + glvl + (num_BU + sn)) / divisor_BU)
        divisors.append(divisor_BU)
    return states, divisors


class _RecurrenceFn(torch.autograd.Function):
    """v_BTU of the LTC recurrence; saves only its inputs and outputs (O(B·T·U))."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, v0_BU, sn_BTU, sd_BTU, cmt_BTU, gleak_U, vleak_U, w, mu, sigma, erev, spec, unfolds, eps
    ):
        params = (w, mu, sigma, erev)
        ctx.spec, ctx.unfolds, ctx.eps = spec, unfolds, eps
        if spec.kind == "native":
            index = spec.index
            v_BTU = native.ltc_forward(
                v0_BU, sn_BTU, sd_BTU, cmt_BTU, gleak_U, vleak_U, index.ptr_U1, index.pre_P,
                torch.stack(params), unfolds, eps,
            )  # fmt: skip
        else:
            glvl_U = gleak_U * vleak_U
            v_BU, states = v0_BU, []
            for t in range(sn_BTU.shape[1]):
                chain, _ = _unfold_chain(
                    spec.layout, v_BU, sn_BTU[:, t], sd_BTU[:, t], cmt_BTU[:, t], gleak_U, glvl_U,
                    params, unfolds, eps,
                )  # fmt: skip
                v_BU = chain[-1]
                states.append(v_BU)
            v_BTU = torch.stack(states, 1)
        ctx.save_for_backward(v0_BU, sn_BTU, sd_BTU, cmt_BTU, gleak_U, vleak_U, *params, v_BTU)
        return v_BTU

    @staticmethod
    def backward(ctx: Any, g_BTU):  # type: ignore[override]
        v0_BU, sn_BTU, sd_BTU, cmt_BTU, gleak_U, vleak_U, w, mu, sigma, erev, v_BTU = ctx.saved_tensors
        params = (w, mu, sigma, erev)
        spec, unfolds, eps = ctx.spec, ctx.unfolds, ctx.eps
        g_BTU = g_BTU.contiguous()
        if spec.kind == "native":
            index = spec.index
            g_v0, g_sn, g_sd, g_cmt, g4, g_gl, g_vl = native.ltc_backward(
                v0_BU, sn_BTU, sd_BTU, cmt_BTU, gleak_U, vleak_U, index.ptr_U1, index.pre_P,
                torch.stack(params), unfolds, eps, v_BTU, g_BTU,
            )  # fmt: skip
            return (g_v0, g_sn, g_sd, g_cmt, g_gl, g_vl, *g4.unbind(0), None, None, None)
        layout = spec.layout
        glvl_U = gleak_U * vleak_U
        g_sn, g_sd, g_cmt = (torch.empty_like(sn_BTU) for _ in range(3))
        g_gl, g_vl = torch.zeros_like(gleak_U), torch.zeros_like(vleak_U)
        g_params = [torch.zeros_like(p) for p in params]
        gv_BU = torch.zeros_like(v0_BU)
        for t in reversed(range(sn_BTU.shape[1])):
            gv_BU = gv_BU + g_BTU[:, t]
            cmt = cmt_BTU[:, t]
            v_in = v0_BU if t == 0 else v_BTU[:, t - 1]
            states, divisors = _unfold_chain(
                layout, v_in, sn_BTU[:, t], sd_BTU[:, t], cmt, gleak_U, glvl_U, params, unfolds, eps
            )
            gsn = gsd = gct = 0.0
            for k in reversed(range(unfolds)):
                v, v_next = states[k], states[k + 1]
                q_BU = gv_BU / divisors[k]  # dL/d numerator; dL/d divisor = -q v_next
                gsn = gsn + q_BU
                gsd = gsd - q_BU * v_next
                gct = gct + q_BU * (v - v_next)
                g_gl += (q_BU * (vleak_U - v_next)).sum(0)
                g_vl += gleak_U * q_BU.sum(0)
                gx_BU, grads = synapse_backward(layout, v, params, q_BU, -q_BU * v_next)
                for acc, gi in zip(g_params, grads):
                    acc += gi
                gv_BU = q_BU * cmt + gx_BU
            g_sn[:, t], g_sd[:, t], g_cmt[:, t] = gsn, gsd, gct
        return (gv_BU, g_sn, g_sd, g_cmt, g_gl, g_vl, *g_params, None, None, None)


# ------------------------------------------------------------------------------- public API


def _choose(backend: str, index: SynapseIndex, *tensors: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "native":
        if not native.supports(*tensors):
            reason = native.failure() or "needs CPU float32/float64 tensors"
            raise RuntimeError(f"backend='native' cannot run here: {reason}; use backend='auto'")
        return "native"
    if backend == "auto":
        if native.supports(*tensors):
            return "native"
        return "sparse" if index.density < SPARSE_BELOW else "dense"
    return backend.removeprefix("torch-")


def ltc_sequence(
    inputs_BTI: torch.Tensor,
    v0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor],
    sensory_w_IU: torch.Tensor,
    sensory_mu_IU: torch.Tensor,
    sensory_sigma_IU: torch.Tensor,
    sensory_erev_IU: torch.Tensor,
    sensory_mask_IU: torch.Tensor,
    cm_U: torch.Tensor,
    gleak_U: torch.Tensor,
    vleak_U: torch.Tensor,
    w_UU: torch.Tensor,
    mu_UU: torch.Tensor,
    sigma_UU: torch.Tensor,
    erev_UU: torch.Tensor,
    mask_UU: torch.Tensor,
    unfolds: int = 6,
    epsilon: float = 1e-8,
    backend: str = "auto",
) -> torch.Tensor:
    """All LTC states v_BTU of a sequence; equal to `ltc_sequence_reference` (see module doc).

    inputs_BTI   already input-mapped (x · input_w + input_b)
    v0_BU        initial state
    dt_BT1       elapsed time per sample and step, (B, T, 1); None means 1 everywhere
    sensory_w_IU, w_UU, cm_U, gleak_U   already positive (softplus or clipped by the caller)
    masks        wiring adjacency magnitudes, sensory (I, U) and recurrent (U, U)
    Returns (B, T, U) in the input's dtype; v_BTU[:, -1] is the final state.
    """
    B, T, I = inputs_BTI.shape
    out_dtype = inputs_BTI.dtype
    dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    cast = lambda t: t.to(dtype)  # noqa: E731
    x_BTI, v0_BU = cast(inputs_BTI), cast(v0_BU)
    s_index = synapse_index(sensory_mask_IU)
    r_index = synapse_index(mask_UU)
    kind = _choose(backend, r_index, x_BTI, v0_BU)
    s_kind = "sparse" if s_index.density < SPARSE_BELOW else "dense"
    s_spec = _Spec(kind if kind == "native" else s_kind, s_index)
    r_spec = _Spec(kind, r_index)

    s_params = _layout_params(
        s_spec, *map(cast, (sensory_w_IU, sensory_mu_IU, sensory_sigma_IU, sensory_erev_IU, sensory_mask_IU))
    )
    x_NI = x_BTI.reshape(B * T, I).contiguous()
    sn_NU, sd_NU = _SensoryFn.apply(x_NI, *s_params, s_spec)
    U = cm_U.shape[0]
    sn_BTU, sd_BTU = sn_NU.view(B, T, U), sd_NU.view(B, T, U)

    # cm_t = cm / (dt / K), written as in functional.py so that rounding matches.
    dt = torch.ones(B, T, 1, dtype=dtype, device=x_BTI.device) if dt_BT1 is None else cast(dt_BT1)
    cmt_BTU = (cast(cm_U) / (dt / unfolds)).expand(B, T, U).contiguous()
    r_params = _layout_params(r_spec, *map(cast, (w_UU, mu_UU, sigma_UU, erev_UU, mask_UU)))
    v_BTU = _RecurrenceFn.apply(
        v0_BU.contiguous(), sn_BTU, sd_BTU, cmt_BTU, cast(gleak_U).contiguous(),
        cast(vleak_U).contiguous(), *(p.contiguous() for p in r_params), r_spec, unfolds, epsilon,
    )  # fmt: skip
    return v_BTU.to(out_dtype)


def ltc_sequence_reference(
    inputs_BTI: torch.Tensor,
    v0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor],
    sensory_w_IU: torch.Tensor,
    sensory_mu_IU: torch.Tensor,
    sensory_sigma_IU: torch.Tensor,
    sensory_erev_IU: torch.Tensor,
    sensory_mask_IU: torch.Tensor,
    cm_U: torch.Tensor,
    gleak_U: torch.Tensor,
    vleak_U: torch.Tensor,
    w_UU: torch.Tensor,
    mu_UU: torch.Tensor,
    sigma_UU: torch.Tensor,
    erev_UU: torch.Tensor,
    mask_UU: torch.Tensor,
    unfolds: int = 6,
    epsilon: float = 1e-8,
) -> torch.Tensor:
    """The slow control: functional.py looped over T with plain autograd (same arguments)."""
    B, T, _ = inputs_BTI.shape
    v_BU, states = v0_BU, []
    for t in range(T):
        dt_B1 = inputs_BTI.new_ones(B, 1) if dt_BT1 is None else dt_BT1[:, t]
        sn_BU, sd_BU = functional.ltc_sensory_currents(
            inputs_BTI[:, t], sensory_w_IU, sensory_mu_IU, sensory_sigma_IU, sensory_erev_IU,
            sensory_mask_IU,
        )  # fmt: skip
        cmt_BU = cm_U / (dt_B1 / unfolds)
        v_BU = functional.ltc_ode_solve(
            v_BU, sn_BU, sd_BU, cmt_BU, gleak_U, vleak_U, w_UU, mu_UU, sigma_UU, erev_UU, mask_UU,
            unfolds, epsilon,
        )  # fmt: skip
        states.append(v_BU)
    return torch.stack(states, 1)
