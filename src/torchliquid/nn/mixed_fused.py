"""Mixed memory over whole sequences: the LSTM and the liquid cell (CfC or LTC) as one Function.

Each step, as SequenceLayer._reference_sequence (functional.lstm_memory_step, ncps's LSTMCell):

    z_t = W_in x_t + b_in + W_rec h_{t-1}          4U columns: i, ig, f, o
    c_t = c_{t-1} σ(f + 1) + tanh(i) σ(ig)
    m_t = tanh(c_t) σ(o)                           the LSTM hands m_t to the cell as its state
    h_t = cell(x_t, m_t, dt_t)                     one CfC or LTC step

The LSTM and the cell alternate every step, so neither whole-sequence kernel (cfc_fused,
ltc_fused) runs as it is. What is fused instead, and why it is exact (the same products, summed
in other places):
  * what reads only x is computed for ALL steps before the loop, one autograd op each (its
    backward is then one GEMM over B·T rows as well): the LSTM's input half W_in x + b_in (with
    the forget gate's +1 folded into the bias), the input half of the first CfC layer, and the
    LTC's sensory synapses (ltc_fused._SensoryFn);
  * the time loop is ONE autograd Function, _MixedFunction, with a hand-written backward: per
    step one GEMM adds the recurrent half to the LSTM gates, which are finished in place in
    time-major buffers (nothing allocated, no cat); the backward reverses the loop with only
    data-gradient GEMMs inside, and each recurrent weight gets one GEMM over all B·T rows after;
  * the cell step is the existing machinery driven one step at a time: for CfC the C element-wise
    kernels of cfc_fused (activation, tail; cfc_fused_loops's torch ops where C cannot run)
    between torch GEMMs, for LTC one step of ltc_fused's recurrence Function (native or torch
    backend), whose static forward/backward are called directly.

Shape legend: B batch, T time, I inputs, U units (Σ over stages), O first-layer width, X head
width, 1 broadcast. Buffers inside the loop are time-major (T, B, ·) so that a step is contiguous.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from . import _fused_native as native
from . import cfc_fused_loops as loops
from . import ltc_fused


def _rows(t_TBZ: torch.Tensor) -> torch.Tensor:
    return t_TBZ.reshape(-1, t_TBZ.shape[-1])


def _wgrad(g_RO: torch.Tensor, a_RK: torch.Tensor) -> torch.Tensor:
    # dW = gᵀ a, computed as (aᵀ g)ᵀ: MKL is ~10x slower on (O, R) x (R, K) than on its
    # transpose when K is small (cfc_fused._weight_grads measured it).
    return (a_RK.t() @ g_RO).t()


class _InputHalf(torch.autograd.Function):
    """x W^T + b over N rows, with the weight gradient in MKL's fast orientation: autograd takes
    a transposed weight's as (O, N) x (N, I), 7.5x slower for small I (1.5 vs 0.2 ms at N = 2048,
    I = 7, O = 256; 1 thread)."""

    @staticmethod
    def forward(ctx: Any, x_NI, w_OI, b_O):  # type: ignore[override]
        ctx.save_for_backward(x_NI, w_OI)
        return torch.addmm(b_O, x_NI, w_OI.t())

    @staticmethod
    def backward(ctx: Any, g_NO):  # type: ignore[override]
        x_NI, w_OI = ctx.saved_tensors
        g_x = g_NO @ w_OI if ctx.needs_input_grad[0] else None
        return g_x, _wgrad(g_NO, x_NI), g_NO.sum(0)


# --------------------------------------------------------------------------------- the LSTM
# In tanh space: σ(z) = (1 + tanh(z/2)) / 2. With the sigmoid gates' rows of W_in, b_in (+1)
# and W_rec halved (exact: a power of 2), ONE tanh over the whole (B, 4U) block gives all four
# gates: a single C call per step instead of a tanh and a sigmoid over strided column blocks
# (~35 µs at B = 64, U = 64, torch's CPU tanh costs ~3.5 ns/element). The Function works with
# these halved pre-activations z' throughout; autograd carries the halving to the parameters.


def time_major_rows(x_BTI: torch.Tensor) -> torch.Tensor:
    """x as (T·B, I) rows, step-major: every input half computed from it is (T, B, ·), so each
    step's slice is contiguous and its gradient comes back without a transposing copy."""
    return x_BTI.transpose(0, 1).reshape(-1, x_BTI.shape[2])


def lstm_tanh_space(
    x_NI: torch.Tensor, w_in_4UI: torch.Tensor, b_in_4U: torch.Tensor, w_rec_4UU: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(p'_N4U, W'_rec): the input half z' = S (W_in x + b_in + [0, 0, 1, 0]) of all N = T·B rows
    in one GEMM (ncps's forget-gate +1 folded into the bias), and S W_rec; S = (1, ½, ½, ½)."""
    U = w_rec_4UU.shape[1]
    scale_4U = torch.full_like(b_in_4U, 0.5)
    scale_4U[:U] = 1.0
    forget_one = torch.zeros_like(b_in_4U)
    forget_one[2 * U : 3 * U] = 1.0
    s_41 = scale_4U.unsqueeze(1)
    p_N4U = _InputHalf.apply(x_NI, w_in_4UI * s_41, (b_in_4U + forget_one) * scale_4U)
    return p_N4U, w_rec_4UU * s_41


def _tanh(x_RC: torch.Tensor, add: Optional[torch.Tensor], out_RC: torch.Tensor, use_native: bool) -> None:
    """out = tanh(x + add); x and out contiguous (may be one tensor), add (R, C) or None."""
    if use_native:
        native.cfc_act_forward(native.CFC_ACTIVATIONS["tanh"], x_RC, out_RC, add)
    elif add is None:
        torch.tanh(x_RC, out=out_RC)
    else:
        torch.add(x_RC, add, out=out_RC).tanh_()


def _tanh_backward_(y_RC: torch.Tensor, g_RC: torch.Tensor, use_native: bool) -> None:
    """g = g (1 - y²) in place, y = tanh(·) (contiguous, as g)."""
    if use_native:
        native.cfc_act_backward(native.CFC_ACTIVATIONS["tanh"], y_RC, g_RC, g_RC)
    else:
        g_RC.addcmul_(g_RC * y_RC, y_RC, value=-1.0)


class _MixedFunction(torch.autograd.Function):
    """(h of every step, or h_T; c_T) of the mixed recurrence.

    Inputs: p'_TB4U (the LSTM's input half in tanh space), h0, c0, W'_rec, then the cell's own
    tensors. `cell` steps the liquid cell: bind(tensors), start(T, like), forward(t, m_BU,
    h_out_BU), start_backward(), backward(t, g_h_BU) -> g_m_BU, grads(m_TBU) -> its tensors'
    gradients. Saved for the backward: the gates, c, tanh c, m and h of every step, O(B·T·U).
    """

    @staticmethod
    def forward(ctx: Any, cell: Any, last_only: bool, use_native: bool, p_TB4U, h0_BU, c0_BU, w_rec_4UU, *cell_tensors):  # type: ignore[override]
        T, B, _ = p_TB4U.shape
        U = h0_BU.shape[1]
        cell.bind(cell_tensors)
        cell.start(T, h0_BU)
        tanh_TB4U = h0_BU.new_empty(T, B, 4 * U)  # tanh(i), tanh(ig/2), tanh(f'/2), tanh(o/2)
        sig_TB3U = h0_BU.new_empty(T, B, 3 * U)  # σ(ig), σ(f + 1), σ(o)
        c_TBU, tanh_c_TBU, m_TBU, h_TBU = (h0_BU.new_empty(T, B, U) for _ in range(4))
        half = h0_BU.new_full((1,), 0.5)
        w_rec_t = w_rec_4UU.t()
        # Every per-step view made up front, one unbind per buffer and column block: indexing or
        # splitting a tensor costs 1-13 µs per call, a list lookup nothing.
        p, th, sig, c, tc, m, h = (x.unbind(0) for x in (p_TB4U, tanh_TB4U, sig_TB3U, c_TBU, tanh_c_TBU, m_TBU, h_TBU))
        th_i, th_sig = tanh_TB4U[..., :U].unbind(0), tanh_TB4U[..., U:].unbind(0)
        s_ig, s_f, s_o = (sig_TB3U[..., k * U : (k + 1) * U].unbind(0) for k in range(3))
        h_BU, c_BU = h0_BU, c0_BU
        for t in range(T):
            torch.mm(h_BU, w_rec_t, out=th[t])
            _tanh(th[t], p[t], th[t], use_native)
            torch.add(half, th_sig[t], alpha=0.5, out=sig[t])
            torch.mul(c_BU, s_f[t], out=c[t]).addcmul_(th_i[t], s_ig[t])
            _tanh(c[t], None, tc[t], use_native)
            torch.mul(tc[t], s_o[t], out=m[t])
            cell.forward(t, m[t], h[t])
            h_BU, c_BU = h[t], c[t]
        cell.bind(None)  # the inputs travel through save_for_backward (version-checked)
        ctx.cell, ctx.last_only, ctx.use_native = cell, last_only, use_native
        ctx.buffers = (tanh_TB4U, sig_TB3U, c_TBU, tanh_c_TBU, m_TBU, h_TBU)
        ctx.save_for_backward(h0_BU, c0_BU, w_rec_4UU, *cell_tensors)
        # Fresh tensors, never views of the saved buffers (callers may edit outputs in place).
        h_out = h_TBU[-1].clone() if last_only else h_TBU.transpose(0, 1).contiguous()
        return h_out, c_TBU[-1].clone()

    @staticmethod
    def backward(ctx: Any, g_out, g_c_T):  # type: ignore[override]
        h0_BU, c0_BU, w_rec_4UU, *cell_tensors = ctx.saved_tensors
        cell, last_only, use_native = ctx.cell, ctx.last_only, ctx.use_native
        tanh_TB4U, sig_TB3U, c_TBU, tanh_c_TBU, m_TBU, h_TBU = ctx.buffers
        T, _, U = h_TBU.shape
        cell.bind(cell_tensors)
        cell.start_backward()
        g_z_TB4U = torch.empty_like(tanh_TB4U)  # dL/dz', the halved pre-activations
        zero = h0_BU.new_zeros(1)
        th, c, tc, g_z = (x.unbind(0) for x in (tanh_TB4U, c_TBU, tanh_c_TBU, g_z_TB4U))
        th_i = tanh_TB4U[..., :U].unbind(0)
        s_ig, s_f, s_o = (sig_TB3U[..., k * U : (k + 1) * U].unbind(0) for k in range(3))
        z_i, z_ig, z_f, z_o = (g_z_TB4U[..., k * U : (k + 1) * U].unbind(0) for k in range(4))
        g_h_BU = torch.zeros_like(h0_BU)  # dL/dh_t through the later steps' LSTM
        g_c_BU = g_c_T
        for t in reversed(range(T)):
            if not last_only:
                g_h_BU = g_h_BU + g_out[:, t]
            elif t == T - 1:
                g_h_BU = g_h_BU + g_out
            g_m = cell.backward(t, g_h_BU)  # dL/dm_t
            g_tc = g_m * s_o[t]
            _tanh_backward_(tc[t], g_tc, use_native)
            g_c_BU = g_c_BU + g_tc  # dL/dc_t: later steps + through m_t
            # dL/d(gate) times its partner; the sigmoid gates' ½ (dσ/dz' = (1 - tanh²)/2) folded in
            torch.mul(g_c_BU, s_ig[t], out=z_i[t])
            torch.addcmul(zero, g_c_BU, th_i[t], value=0.5, out=z_ig[t])
            torch.addcmul(zero, g_c_BU, c0_BU if t == 0 else c[t - 1], value=0.5, out=z_f[t])
            torch.addcmul(zero, g_m, tc[t], value=0.5, out=z_o[t])
            _tanh_backward_(th[t], g_z[t], use_native)
            g_c_BU = g_c_BU * s_f[t]
            g_h_BU = torch.mm(g_z[t], w_rec_4UU)
        # dW'_rec = Σ_t g_z_tᵀ h_{t-1}: step 0 against h0, the rest as one GEMM (no shifted copy)
        g_w_rec = _wgrad(g_z_TB4U[0], h0_BU)
        if T > 1:
            g_w_rec = g_w_rec + _wgrad(_rows(g_z_TB4U[1:]), _rows(h_TBU[:-1]))
        grads = cell.grads(m_TBU)
        cell.bind(None)
        return (None, None, None, g_z_TB4U, g_h_BU, g_c_BU, g_w_rec, *grads)


# ---------------------------------------------------------------------------------- the CfC


class _Stage:
    """One CfC (sub-)cell: a chain of layers on [feed, m_s] (first layer, backbone, heads) and
    its tail. Stage 0 reads x, whose first-layer half p0 is precomputed; stage s > 0 (a wiring's
    next layer) reads stage s-1's new state of the same step."""

    def __init__(self, args: Mapping[str, Any], index: int, feed: int, merged: bool, use_native: bool) -> None:
        self.index, self.feed, self.mode = index, feed, args["mode"]
        self.pure = self.mode == "pure"
        self.activation = args["activation"]
        self.n_rest = len(args["backbone_weights"])  # layers after the first: backbone[1:] + heads
        self.native_tail = use_native
        self.native_act = use_native and self.activation in native.CFC_ACTIVATIONS
        self.keep_pre = not self.native_act and self.activation in ("gelu", "silu")
        self.mode_id = native.CFC_MODES[self.mode] | (native.CFC_MERGED_GATE if merged else 0)
        self.act_id = native.CFC_ACTIVATIONS.get(self.activation, -1)

    def tensors(self, args: Mapping[str, Any], x_NI: Optional[torch.Tensor], T: int, merged: bool, cast) -> list[torch.Tensor]:
        """This stage's Function inputs: [p0 | w_x, b_0], w_h, (w_l, b_l)..., [w_tau, a]."""
        ws = [*args["backbone_weights"], args["head_weight_XZ"]]
        bs = [*args["backbone_biases"], args["head_bias_X"]]
        if merged:  # dt = 1: time_a + time_b is one head (exact; cfc_fused does the same)
            w, b, V = ws[-1], bs[-1], ws[-1].shape[0] // 4
            ws[-1] = torch.cat([w[: 2 * V], w[2 * V : 3 * V] + w[3 * V :]])
            bs[-1] = torch.cat([b[: 2 * V], b[2 * V : 3 * V] + b[3 * V :]])
        ws, bs = [cast(w) for w in ws], [cast(b) for b in bs]
        self.units = ws[0].shape[1] - self.feed
        w_x, w_h = ws[0][:, : self.feed], ws[0][:, self.feed :]
        if x_NI is not None:
            first = [_InputHalf.apply(x_NI, w_x, bs[0]).view(T, x_NI.shape[0] // T, -1)]
        else:
            first = [w_x, bs[0]]
        rest = [t for pair in zip(ws[1:], bs[1:]) for t in pair]
        extra = [cast(args["w_tau_1U"]).reshape(-1), cast(args["a_1U"]).reshape(-1)] if self.pure else []
        self.count = len(first) + 1 + len(rest) + len(extra)
        return [*first, w_h, *rest, *extra]

    def bind(self, tensors: Sequence[torch.Tensor]) -> None:
        k = 1 if self.index == 0 else 2
        if self.index == 0:
            self.p0_TBO = tensors[0]
        else:
            self.w_x, self.b_0 = tensors[0], tensors[1]
            self.w_x_t = self.w_x.t().contiguous()
        # Column slices of W_0: contiguous once per call, a strided GEMM operand is copied per mm.
        self.w_h, self.w_h_t = tensors[k].contiguous(), tensors[k].t().contiguous()
        rest = tensors[k + 1 : k + 1 + 2 * self.n_rest]
        self.ws, self.bs = list(rest[0::2]), list(rest[1::2])
        self.w_tau, self.a = (tensors[-2], tensors[-1]) if self.pure else (None, None)

    def start(self, T: int, like: torch.Tensor) -> None:
        B = like.shape[0]
        X = (self.ws[-1] if self.n_rest else self.w_h).shape[0]
        self.ys = [like.new_empty(T, B, w.shape[1]) for w in self.ws]  # activations feeding ws
        self.pres = [torch.empty_like(y) for y in self.ys] if self.keep_pre else []
        self.heads_BX = like.new_empty(B, X)
        self.acts_TB3U = like.new_empty(T, B, 3 * self.units)
        self.h_TBU = like.new_empty(T, B, self.units)

    def forward(self, t: int, dt_B1: Optional[torch.Tensor], feed_BF, m_BU, h_out_BU) -> None:
        outs = [*(y[t] for y in self.ys), self.heads_BX]  # layer j writes outs[j]
        for j, out in enumerate(outs):
            to_act = j < self.n_rest  # else these are the heads, read by the tail
            # A C kernel next adds the bias itself (addmm would first copy it into `out`, one
            # extra pass); the tail kernel takes a vector only, not stage 0's (B, X) input half.
            if j == 0:
                bias = self.p0_TBO[t] if self.index == 0 else self.b_0
                a, w_t = (m_BU, self.w_h_t) if self.index == 0 else (feed_BF, self.w_x_t)
            else:
                bias, a, w_t = self.bs[j - 1], outs[j - 1], self.ws[j - 1].t()
            kernel_adds = self.native_act if to_act else self.native_tail and bias.dim() == 1
            if kernel_adds:
                torch.mm(a, w_t, out=out)
            else:
                torch.addmm(bias, a, w_t, out=out)
            if j == 0 and self.index > 0:
                out.addmm_(m_BU, self.w_h_t)
            add = bias if kernel_adds else None
            if to_act and self.native_act:
                native.cfc_act_forward(self.act_id, out, out, add)
            elif to_act:
                if self.keep_pre:
                    self.pres[j][t] = out
                out.copy_(loops.act_forward(self.activation, out))
            elif self.native_tail:
                native.cfc_tail_forward(self.mode_id, out, dt_B1, self.w_tau, self.a, h_out_BU, self.acts_TB3U[t], add)
            else:
                dt = 1.0 if dt_B1 is None else dt_B1
                loops.tail_forward_torch(self.mode, out, dt, self.w_tau, self.a, h_out_BU, self.acts_TB3U[t])

    def start_backward(self) -> None:
        X = self.heads_BX.shape[1]
        self.g_ys = [torch.empty_like(y) for y in self.ys]  # dL/d(pre-activation) of each y
        self.g_heads_TBX = self.acts_TB3U.new_empty(*self.acts_TB3U.shape[:2], X)
        zeros = lambda: torch.zeros_like(self.h_TBU[0]) if self.pure else None  # noqa: E731
        self.g_a_BU, self.g_w_BU = zeros(), zeros()

    def backward(self, t: int, dt_B1: Optional[torch.Tensor], g_h_BU: torch.Tensor) -> torch.Tensor:
        """dL/d(first layer's output) of step t, given dL/dh (contiguous)."""
        g = self.g_heads_TBX[t]
        if self.native_tail:
            native.cfc_tail_backward(self.mode_id, self.acts_TB3U[t], dt_B1, self.w_tau, self.a, g_h_BU, None, g,
                                     self.g_a_BU, self.g_w_BU)  # fmt: skip
        else:
            dt = 1.0 if dt_B1 is None else dt_B1
            loops.tail_backward_torch(self.mode, self.acts_TB3U[t], dt, self.w_tau, self.a, g_h_BU, 0.0, g,
                                      self.g_a_BU, self.g_w_BU)  # fmt: skip
        for l in reversed(range(self.n_rest)):
            g_y = torch.mm(g, self.ws[l])
            if self.native_act:
                native.cfc_act_backward(self.act_id, self.ys[l][t], g_y, self.g_ys[l][t])
            else:
                pre = self.pres[l][t] if self.keep_pre else None
                self.g_ys[l][t] = loops.act_backward(self.activation, pre, self.ys[l][t], g_y)
            g = self.g_ys[l][t]
        return g

    def grads(self, feed_TBF: Optional[torch.Tensor], m_TBU: torch.Tensor) -> list[Optional[torch.Tensor]]:
        g_first = self.g_ys[0] if self.n_rest else self.g_heads_TBX
        outs = [*self.g_ys[1:], self.g_heads_TBX]
        rest: list[Optional[torch.Tensor]] = []
        for g_TBZ, y_TBZ in zip(outs, self.ys):
            rest += [_wgrad(_rows(g_TBZ), _rows(y_TBZ)), g_TBZ.sum((0, 1))]
        if self.index == 0:
            first = [g_first]  # dL/dp0: autograd's addmm makes dW_x, db_0 and dL/dx from it
        else:
            first = [_wgrad(_rows(g_first), _rows(feed_TBF)), g_first.sum((0, 1))]
        extra = [self.g_w_BU.sum(0), self.g_a_BU.sum(0)] if self.pure else []
        return [*first, _wgrad(_rows(g_first), _rows(m_TBU)), *rest, *extra]


class _CfCSteps:
    """The CfC cell for _MixedFunction: its stages run in order within each step."""

    def __init__(self, dt_TB1: Optional[torch.Tensor], stages: list[_Stage]) -> None:
        self.dt_TB1, self.stages = dt_TB1, stages
        self.sizes = [s.units for s in stages]

    def bind(self, tensors: Optional[Sequence[torch.Tensor]]) -> None:
        at = 0
        for stage in self.stages:
            if tensors is not None:
                stage.bind(tensors[at : at + stage.count])
            at += stage.count

    def start(self, T: int, like: torch.Tensor) -> None:
        for stage in self.stages:
            stage.start(T, like)

    def _dt(self, t: int) -> Optional[torch.Tensor]:
        return None if self.dt_TB1 is None else self.dt_TB1[t]

    def forward(self, t: int, m_BU: torch.Tensor, h_out_BU: torch.Tensor) -> None:
        if len(self.stages) == 1:  # the tail writes straight into the caller's state buffer
            self.stages[0].forward(t, self._dt(t), None, m_BU, h_out_BU)
            return
        feed = None
        for stage, m_s in zip(self.stages, m_BU.split(self.sizes, 1)):
            stage.forward(t, self._dt(t), feed, m_s, stage.h_TBU[t])
            feed = stage.h_TBU[t]
        torch.cat([stage.h_TBU[t] for stage in self.stages], 1, out=h_out_BU)

    def start_backward(self) -> None:
        for stage in self.stages:
            stage.start_backward()

    def backward(self, t: int, g_h_BU: torch.Tensor) -> torch.Tensor:
        parts = [g_h_BU] if len(self.stages) == 1 else [g.contiguous() for g in g_h_BU.split(self.sizes, 1)]
        g_m: list[torch.Tensor] = [None] * len(self.stages)  # type: ignore[list-item]
        g_feed = None
        for s in reversed(range(len(self.stages))):
            stage = self.stages[s]
            g_s = parts[s] if g_feed is None else parts[s] + g_feed
            g_first = stage.backward(t, self._dt(t), g_s)
            g_m[s] = torch.mm(g_first, stage.w_h)
            g_feed = torch.mm(g_first, stage.w_x) if s > 0 else None
        return g_m[0] if len(g_m) == 1 else torch.cat(g_m, 1)

    def grads(self, m_TBU: torch.Tensor) -> list[Optional[torch.Tensor]]:
        out: list[Optional[torch.Tensor]] = []
        feed = None
        for stage, m_s in zip(self.stages, m_TBU.split(self.sizes, 2)):
            out += stage.grads(feed, m_s)
            feed = stage.h_TBU
        return out


def mixed_cfc_sequence(
    x_BTI: torch.Tensor,
    h0_BU: torch.Tensor,
    c0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor],
    lstm_w_in_4UI: torch.Tensor,
    lstm_b_in_4U: torch.Tensor,
    lstm_w_rec_4UU: torch.Tensor,
    cells: Sequence[Mapping[str, Any]],
    use_native: bool = True,
    return_sequences: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_BTU or h_T (B, U), c_T (B, U)) of a mixed-memory CfC.

    cells: one cfc_sequence argument dict per stage (fast_paths._cfc_cell_arguments): a dense
    cell is one stage, a wired cell one per wiring layer; h is their states concatenated.
    dt_BT1 None means dt = 1 (the time gate is then merged); dt must not require grad.
    use_native: C element-wise kernels where they run (CPU fp32/fp64), else torch ops.
    Under torch.autocast the whole sequence runs in the autocast dtype, as cfc_sequence.
    """
    device_type = x_BTI.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x_BTI.dtype
    cast = lambda t: t.to(dtype)  # noqa: E731
    with torch.autocast(device_type, enabled=False):
        x = cast(x_BTI)
        use_native = use_native and native.supports(x)
        merged = dt_BT1 is None
        dt_TB1 = None if dt_BT1 is None else cast(dt_BT1).transpose(0, 1).contiguous()
        x_NI, T = time_major_rows(x), x.shape[1]
        stages, tensors, feed = [], [], x.shape[2]
        for s, args in enumerate(cells):
            stage_merged = merged and args["mode"] != "pure"
            stage = _Stage(args, s, feed, stage_merged, use_native)
            tensors += stage.tensors(args, x_NI if s == 0 else None, T, stage_merged, cast)
            stages.append(stage)
            feed = stage.units
        p_N4U, w_rec = lstm_tanh_space(x_NI, cast(lstm_w_in_4UI), cast(lstm_b_in_4U), cast(lstm_w_rec_4UU))
        return _MixedFunction.apply(
            _CfCSteps(dt_TB1, stages), not return_sequences, use_native, p_N4U.view(T, x.shape[0], -1),
            cast(h0_BU).contiguous(), cast(c0_BU).contiguous(), w_rec, *tensors,
        )  # fmt: skip


# ---------------------------------------------------------------------------------- the LTC


class _StepContext:
    """Stands in for autograd's ctx: ltc_fused's recurrence Function, run one step per call."""

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


class _LTCSteps:
    """The LTC cell for _MixedFunction: each step is ltc_fused._RecurrenceFn over T = 1 from m_t
    (its K unfolds in C, or torch ops over the synapse list or grid), backward alike."""

    def __init__(self, spec: Any, unfolds: int, epsilon: float) -> None:
        self.spec, self.unfolds, self.epsilon = spec, unfolds, epsilon

    def bind(self, tensors: Optional[Sequence[torch.Tensor]]) -> None:
        if tensors is not None:
            self.sn_TBU, self.sd_TBU, self.cmt_TBU, *self.rest = tensors  # gleak, vleak, synapses

    def start(self, T: int, like: torch.Tensor) -> None:
        self.ctxs: list[Optional[_StepContext]] = [None] * T

    def forward(self, t: int, m_BU: torch.Tensor, h_out_BU: torch.Tensor) -> None:
        ctx = self.ctxs[t] = _StepContext()
        step = (self.sn_TBU[t], self.sd_TBU[t], self.cmt_TBU[t])
        v_B1U = ltc_fused._RecurrenceFn.forward(
            ctx, m_BU, *(s.unsqueeze(1) for s in step), *self.rest, self.spec, self.unfolds, self.epsilon
        )
        h_out_BU.copy_(v_B1U[:, 0])

    def start_backward(self) -> None:
        self.g_steps = [torch.empty_like(self.sn_TBU) for _ in range(3)]  # dL/d(sn, sd, cmt)
        self.g_rest: Optional[list[torch.Tensor]] = None

    def backward(self, t: int, g_h_BU: torch.Tensor) -> torch.Tensor:
        g_v0, *g = ltc_fused._RecurrenceFn.backward(self.ctxs[t], g_h_BU.unsqueeze(1))[:10]
        for buffer, g_B1U in zip(self.g_steps, g[:3]):
            buffer[t] = g_B1U[:, 0]
        self.g_rest = g[3:] if self.g_rest is None else [a + b for a, b in zip(self.g_rest, g[3:])]
        return g_v0

    def grads(self, m_TBU: torch.Tensor) -> list[torch.Tensor]:
        return [*self.g_steps, *self.g_rest]


def mixed_ltc_sequence(
    x_BTI: torch.Tensor,
    inputs_BTI: torch.Tensor,
    h0_BU: torch.Tensor,
    c0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor],
    lstm_w_in_4UI: torch.Tensor,
    lstm_b_in_4U: torch.Tensor,
    lstm_w_rec_4UU: torch.Tensor,
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
    return_sequences: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_BTU or v_T (B, U), c_T (B, U)) of a mixed-memory LTC; arguments as ltc_fused.ltc_sequence.

    x_BTI is what the LSTM reads (the raw input), inputs_BTI what the sensory synapses read (input-
    mapped). Parameters arrive constrained (positive) as ltc_sequence takes them; fp16/bf16 are
    computed in float32 and returned in their own dtype.
    """
    out_dtype = x_BTI.dtype
    dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    cast = lambda t: t.to(dtype)  # noqa: E731
    with torch.autocast(x_BTI.device.type, enabled=False):
        x, inputs, h0_BU = cast(x_BTI), cast(inputs_BTI), cast(h0_BU).contiguous()
        B, T, I = inputs.shape
        U = cm_U.shape[0]
        s_index, r_index = ltc_fused.synapse_index(sensory_mask_IU), ltc_fused.synapse_index(mask_UU)
        kind = ltc_fused._choose(backend, r_index, inputs, h0_BU)
        s_kind = "sparse" if s_index.density < ltc_fused.SPARSE_BELOW else "dense"
        s_spec = ltc_fused._Spec(kind if kind == "native" else s_kind, s_index)
        r_spec = ltc_fused._Spec(kind, r_index)
        # Sensory terms of all steps at once (they do not depend on the state), then time-major.
        s_params = ltc_fused._layout_params(
            s_spec, *map(cast, (sensory_w_IU, sensory_mu_IU, sensory_sigma_IU, sensory_erev_IU, sensory_mask_IU))
        )
        sn_NU, sd_NU = ltc_fused._SensoryFn.apply(inputs.reshape(B * T, I).contiguous(), *s_params, s_spec)
        time_major = lambda t_NU: t_NU.view(B, T, U).transpose(0, 1).contiguous()  # noqa: E731
        # cm_t = cm / (dt / K), written as functional.py writes it so that rounding matches.
        dt_TB1 = x.new_ones(T, B, 1) if dt_BT1 is None else cast(dt_BT1).transpose(0, 1)
        cmt_TBU = (cast(cm_U) / (dt_TB1 / unfolds)).expand(T, B, U).contiguous()
        r_params = ltc_fused._layout_params(r_spec, *map(cast, (w_UU, mu_UU, sigma_UU, erev_UU, mask_UU)))
        p_N4U, w_rec = lstm_tanh_space(time_major_rows(x), cast(lstm_w_in_4UI), cast(lstm_b_in_4U), cast(lstm_w_rec_4UU))
        v, c_BU = _MixedFunction.apply(
            _LTCSteps(r_spec, unfolds, epsilon), not return_sequences, native.supports(x), p_N4U.view(T, B, -1),
            h0_BU, cast(c0_BU).contiguous(), w_rec, time_major(sn_NU), time_major(sd_NU), cmt_TBU, cast(gleak_U).contiguous(),
            cast(vleak_U).contiguous(), *(p.contiguous() for p in r_params),
        )  # fmt: skip
    return v.to(out_dtype), c_BU.to(out_dtype)
