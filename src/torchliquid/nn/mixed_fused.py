"""Mixed memory over whole sequences: the LSTM and the liquid cell (CfC or LTC) as one Function.

Each step, as SequenceLayer._reference_sequence (functional.lstm_memory_step, ncps's LSTMCell):

    z_t = W_in x_t + b_in + W_rec h_{t-1}      4U columns: i, ig, f, o
    c_t = c_{t-1} σ(f + 1) + tanh(i) σ(ig)
    m_t = tanh(c_t) σ(o)                       the LSTM hands m_t to the cell as its state
    h_t = cell(x_t, m_t, dt_t)                 one CfC or LTC step

The two alternate every step, so neither whole-sequence kernel (cfc_fused, ltc_fused) runs as
it is. What is fused instead, and why it is exact (the same products, summed in other places):
  * the time loop is one autograd Function (_MixedFunction) with a hand-written backward: what
    reads only x (the LSTM's and the first CfC layer's input halves) is one GEMM over all B·T
    rows straight into the step buffers; per step one GEMM adds the LSTM's recurrent half, its
    gates are finished in place, then the cell steps; the backward reverses the loop with only
    data-gradient GEMMs inside, and every weight gradient is one GEMM over all rows afterwards;
  * the LSTM runs in tanh space (lstm_tanh_space): ONE tanh over its (B, 4U) gates per step;
  * the cell step is the existing machinery, one step at a time: for CfC the C element-wise
    kernels of cfc_fused (activation, tail) between torch GEMMs, for LTC one step of
    ltc_fused's recurrence Function (native or torch backend) through its static methods, its
    sensory synapses computed for all steps before (ltc_fused._SensoryFn).
At B = 64 each torch call costs 2-13 µs here, as much as a small GEMM: per-step views are made
once per call, C kernels get raw pointers, and the step buffers are reused across calls
(_Workspace), since taking fresh memory back from the OS cost 40 % of a step.

Shape legend: B batch, T time, I inputs, U units (Σ over stages), O first-layer width, X head
width, N = T·B rows (step-major), 1 broadcast.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from . import _fused_native as native
from . import cfc_fused_loops as loops
from . import ltc_fused


def _rows(t_TBZ: torch.Tensor) -> torch.Tensor:
    return t_TBZ.reshape(-1, t_TBZ.shape[-1])


def _wgrad(g_RO: torch.Tensor, a_RK: torch.Tensor) -> torch.Tensor:
    # dW = gᵀ a as (aᵀ g)ᵀ: MKL is ~7x slower on (O, R) x (R, K) than on its transpose for small
    # K (1.5 vs 0.2 ms at R = 2048, K = 7, O = 256, 1 thread; cfc_fused._weight_grads saw it too).
    return (a_RK.t() @ g_RO).t()


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _steps(t_TBK: torch.Tensor, width: int) -> list[tuple[torch.Tensor, ...]]:
    """Per-step views of each `width`-column block: one unbind per block, made once."""
    return [t_TBK[..., k : k + width].unbind(0) for k in range(0, t_TBK.shape[-1], width)]


class _Workspace:
    """The buffers of one call, handed to a small pool when autograd frees the graph that saved
    them (at once under no_grad) and taken from it by the next call of the same shapes.

    Why: glibc returns freed large blocks to the OS, and taking them back costs a page fault per
    4 KiB: ~500 per training step at B = 64, T = 32 when other work runs in between (another
    model, an evaluation), which made the step 40 % slower. CPU only (CUDA caches on its own);
    only buffers never handed to autograd (outputs are copies); at most POOL_BYTES kept.
    """

    POOL_BYTES = 64 << 20
    _pool: dict[tuple, list[torch.Tensor]] = {}
    _pooled = [0]

    def __init__(self, like: torch.Tensor) -> None:
        self.like, self.taken = like, []
        self.pooling = like.device.type == "cpu"

    def new(self, *shape: int) -> torch.Tensor:
        free = self._pool.get((shape, self.like.dtype)) if self.pooling else None
        if free:
            self._pooled[0] -= free[-1].nbytes
            buffer = free.pop()
        else:
            buffer = self.like.new_empty(shape)
        self.taken.append(buffer)
        return buffer

    def __del__(self) -> None:
        for buffer in self.taken if self.pooling else ():
            if self._pooled[0] + buffer.nbytes <= self.POOL_BYTES:
                self._pool.setdefault((tuple(buffer.shape), buffer.dtype), []).append(buffer)
                self._pooled[0] += buffer.nbytes


class _Ops:
    """The element-wise kernels of one call: _fused_native's C kernels (CPU fp32/fp64) called with
    raw pointers (their ctypes wrappers cost ~5 µs a call, as much as the kernel at B = 64), or
    torch ops (cfc_fused_loops's)."""

    def __init__(self, use_native: bool, dtype: torch.dtype) -> None:
        self.native = use_native
        if use_native:
            names = ("cfc_act_fwd", "cfc_act_bwd", "cfc_tail_fwd", "cfc_tail_bwd")
            self.act_fwd, self.act_bwd, self.tail_fwd, self.tail_bwd = (native.kernel(n, dtype) for n in names)

    def has_act(self, name: str) -> bool:
        return self.native and name in native.CFC_ACTIVATIONS

    def act(self, name: str, x_RC: torch.Tensor, add: Optional[torch.Tensor], out_RC: torch.Tensor) -> None:
        """out = act(x + add); x, out contiguous (R, C), may be one tensor; add (R, C), (C,) or None."""
        if self.has_act(name):
            R, C = x_RC.shape
            stride = 0 if add is None or add.dim() == 1 else C
            self.act_fwd(R, C, native.CFC_ACTIVATIONS[name], x_RC.data_ptr(), _ptr(add), stride, out_RC.data_ptr())
        else:
            out_RC.copy_(loops.act_forward(name, x_RC if add is None else x_RC + add))

    def act_backward(self, name: str, pre: Optional[torch.Tensor], y_RC, g_RC, out_RC) -> None:
        """out = g act'(pre), from y = act(pre) where the activation allows; out may be g."""
        if self.has_act(name):
            kind = native.CFC_ACTIVATIONS[name]
            self.act_bwd(y_RC.numel(), kind, y_RC.data_ptr(), g_RC.data_ptr(), out_RC.data_ptr())
        else:
            out_RC.copy_(loops.act_backward(name, pre, y_RC, g_RC))

    def tail(self, st: "_Stage", heads_BX, bias_X, dt_B1, h_BU, acts_B3U) -> None:
        if self.native:
            B, U = h_BU.shape
            self.tail_fwd(B, U, st.mode_id, heads_BX.data_ptr(), heads_BX.stride(0), _ptr(bias_X), _ptr(dt_B1),
                          _ptr(st.w_tau), _ptr(st.a), h_BU.data_ptr(), acts_B3U.data_ptr())  # fmt: skip
        else:
            loops.tail_forward_torch(st.mode, heads_BX, 1.0 if dt_B1 is None else dt_B1, st.w_tau, st.a, h_BU, acts_B3U)

    def tail_backward(self, st: "_Stage", acts_B3U, dt_B1, g_h_BU, g_heads_BX) -> None:
        if self.native:
            B, U = g_h_BU.shape
            self.tail_bwd(B, U, st.mode_id, acts_B3U.data_ptr(), _ptr(dt_B1), _ptr(st.w_tau), _ptr(st.a),
                          g_h_BU.data_ptr(), 0, U, g_heads_BX.data_ptr(), g_heads_BX.stride(0), _ptr(st.g_a_BU),
                          _ptr(st.g_w_BU))  # fmt: skip
        else:
            dt = 1.0 if dt_B1 is None else dt_B1
            loops.tail_backward_torch(st.mode, acts_B3U, dt, st.w_tau, st.a, g_h_BU, 0.0, g_heads_BX, st.g_a_BU, st.g_w_BU)


# --------------------------------------------------------------------------------- the LSTM


def lstm_tanh_space(
    w_in_4UI: torch.Tensor, b_in_4U: torch.Tensor, w_rec_4UU: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S W_in, S (b_in + [0, 0, 1, 0]), S W_rec) with S = (1, ½, ½, ½) over the gates i, ig, f, o.

    σ(z) = (1 + tanh(z/2)) / 2: with the sigmoid gates' rows halved (exact, a power of 2) one tanh
    over all four gates replaces a tanh and a sigmoid over strided column blocks (one C call per
    step instead of ~35 µs of torch ops at B = U = 64). ncps's forget-gate +1 goes in the bias.
    """
    U = w_rec_4UU.shape[1]
    scale_4U = torch.full_like(b_in_4U, 0.5)
    scale_4U[:U] = 1.0
    forget_one = torch.zeros_like(b_in_4U)
    forget_one[2 * U : 3 * U] = 1.0
    s_41 = scale_4U.unsqueeze(1)
    return w_in_4UI * s_41, (b_in_4U + forget_one) * scale_4U, w_rec_4UU * s_41


class _MixedFunction(torch.autograd.Function):
    """(h of every step or h_T, c_T) of the mixed recurrence.

    Inputs: x, the LSTM in tanh space (W'_in, b'_in, W'_rec), h0, c0, then the cell's tensors.
    `cell` steps the liquid cell: bind(tensors), start(T, m_TBU, workspace, x_NI), forward(t,
    m_BU, h_out_BU), start_backward(), backward(t, g_h_BU) -> dL/dm_t, grads(m_TBU, x_NI,
    need_x) -> (its tensors' gradients, its part of dL/dx or None).
    Kept for the backward: x (step-major), the gates' tanh and σ, c, tanh c, m, h: O(B·T·(I + U)).
    """

    @staticmethod
    def forward(ctx: Any, cell: Any, ops: _Ops, last_only: bool, x_BTI, w_in_4UI, b_in_4U, w_rec_4UU, h0_BU,  # type: ignore[override]
                c0_BU, *cell_tensors):  # fmt: skip
        B, T, I = x_BTI.shape
        U = h0_BU.shape[1]
        workspace = _Workspace(h0_BU)
        new = lambda width: workspace.new(T, B, width)  # noqa: E731
        buffers = th_TB4U, sig_TB3U, c_TBU, tc_TBU, m_TBU, h_TBU = (new(4 * U), new(3 * U), *(new(U) for _ in range(4)))
        x_NI = new(I).copy_(x_BTI.transpose(0, 1)).view(T * B, I)  # step-major rows
        # The LSTM's input half of all steps, one GEMM straight into the gate buffer.
        torch.addmm(b_in_4U, x_NI, w_in_4UI.t(), out=th_TB4U.view(T * B, 4 * U))
        cell.bind(cell_tensors)
        cell.start(T, m_TBU, workspace, x_NI)
        th, sig, c, tc, m, h = (x.unbind(0) for x in buffers)
        (th_i,), (s_ig, s_f, s_o) = _steps(th_TB4U[..., :U], U), _steps(sig_TB3U, U)
        th_sig = th_TB4U[..., U:].unbind(0)
        half, w_rec_t = h0_BU.new_full((1,), 0.5), w_rec_4UU.t()
        h_BU, c_BU = h0_BU, c0_BU
        for t in range(T):
            th[t].addmm_(h_BU, w_rec_t)
            ops.act("tanh", th[t], None, th[t])  # tanh(i), tanh(ig/2), tanh((f + 1)/2), tanh(o/2)
            torch.add(half, th_sig[t], alpha=0.5, out=sig[t])
            torch.mul(c_BU, s_f[t], out=c[t]).addcmul_(th_i[t], s_ig[t])
            ops.act("tanh", c[t], None, tc[t])
            torch.mul(tc[t], s_o[t], out=m[t])
            cell.forward(t, m[t], h[t])
            h_BU, c_BU = h[t], c[t]
        ctx.save_for_backward(w_in_4UI, w_rec_4UU, h0_BU, c0_BU, *cell_tensors)
        cell.bind(None)  # its inputs travel through save_for_backward (version-checked)
        ctx.cell, ctx.ops, ctx.last_only, ctx.workspace, ctx.buffers = cell, ops, last_only, workspace, (*buffers, x_NI)
        # Fresh tensors, never views of the pooled buffers (callers may keep or edit outputs);
        # not .contiguous(), which hands back the buffer itself when B or T is 1.
        h_out = h_TBU[-1] if last_only else h_TBU.transpose(0, 1)
        return h_out.clone(memory_format=torch.contiguous_format), c_TBU[-1].clone()

    @staticmethod
    def backward(ctx: Any, g_out, g_c_T):  # type: ignore[override]
        w_in_4UI, w_rec_4UU, h0_BU, c0_BU, *cell_tensors = ctx.saved_tensors
        cell, ops = ctx.cell, ctx.ops
        th_TB4U, sig_TB3U, c_TBU, tc_TBU, m_TBU, h_TBU, x_NI = ctx.buffers
        T, B, U = h_TBU.shape
        cell.bind(cell_tensors)
        cell.start_backward()
        g_z_TB4U = ctx.workspace.new(T, B, 4 * U)  # dL/dz' of the tanh-space pre-activations
        th, c, tc, g_z = (x.unbind(0) for x in (th_TB4U, c_TBU, tc_TBU, g_z_TB4U))
        (th_i,), (s_ig, s_f, s_o), (z_i, z_ig, z_f, z_o) = _steps(th_TB4U[..., :U], U), _steps(sig_TB3U, U), _steps(g_z_TB4U, U)
        g_steps = None if ctx.last_only else g_out.unbind(1)
        zero = h0_BU.new_zeros(1)
        g_h_BU, g_c_BU = torch.zeros_like(h0_BU), g_c_T  # dL/dh_t through later steps' LSTM; dL/dc_t
        for t in reversed(range(T)):
            if g_steps is not None or t == T - 1:
                g_h_BU = g_h_BU + (g_out if g_steps is None else g_steps[t])
            g_m = cell.backward(t, g_h_BU)  # dL/dm_t
            g_tc = g_m * s_o[t]
            ops.act_backward("tanh", None, tc[t], g_tc, g_tc)
            g_c_BU = g_c_BU + g_tc
            # dL/d(gate) is the other factor of its product; the σ gates' ½ (dσ/dz' = (1 - tanh²)/2) folded in
            torch.mul(g_c_BU, s_ig[t], out=z_i[t])
            torch.addcmul(zero, g_c_BU, th_i[t], value=0.5, out=z_ig[t])
            torch.addcmul(zero, g_c_BU, c0_BU if t == 0 else c[t - 1], value=0.5, out=z_f[t])
            torch.addcmul(zero, g_m, tc[t], value=0.5, out=z_o[t])
            ops.act_backward("tanh", None, th[t], g_z[t], g_z[t])
            g_c_BU = g_c_BU * s_f[t]
            g_h_BU = torch.mm(g_z[t], w_rec_4UU)
        # Weight gradients, one GEMM each over all rows: dW'_rec = Σ_t g_z_tᵀ h_{t-1} (step 0
        # against h0, the rest without a shifted copy), dW'_in = g_zᵀ x.
        g_z_N4U = _rows(g_z_TB4U)
        g_w_rec = _wgrad(g_z_TB4U[0], h0_BU)
        if T > 1:
            g_w_rec = g_w_rec + _wgrad(_rows(g_z_TB4U[1:]), _rows(h_TBU[:-1]))
        need_x = ctx.needs_input_grad[3]
        grads, g_x_NI = cell.grads(m_TBU, x_NI, need_x)
        g_x = None
        if need_x:
            g_x_NI = g_z_N4U @ w_in_4UI if g_x_NI is None else torch.addmm(g_x_NI, g_z_N4U, w_in_4UI)
            g_x = g_x_NI.view(T, B, -1).transpose(0, 1)
        cell.bind(None)
        return (None, None, None, g_x, _wgrad(g_z_N4U, x_NI), g_z_N4U.sum(0), g_w_rec, g_h_BU, g_c_BU, *grads)


# ---------------------------------------------------------------------------------- the CfC


class _Stage:
    """One CfC (sub-)cell: a chain of layers on [feed, m_s] (first layer, backbone, heads) and its
    tail. Stage 0 reads x, its first layer's input half computed for all steps in one GEMM; stage
    s > 0 (a wiring's next layer) reads stage s-1's new state of the same step."""

    def __init__(self, args: Mapping[str, Any], index: int, feed: int, merged: bool, ops: _Ops) -> None:
        self.index, self.feed, self.mode, self.activation, self.ops = index, feed, args["mode"], args["activation"], ops
        self.pure = self.mode == "pure"
        self.n_rest = len(args["backbone_weights"])  # layers after the first: backbone[1:] + heads
        self.keep_pre = not ops.has_act(self.activation) and self.activation in ("gelu", "silu")
        self.mode_id = native.CFC_MODES[self.mode] | (native.CFC_MERGED_GATE if merged else 0)
        # A C kernel next adds a layer's bias (addmm would first copy it into the output, one
        # more pass): the activation or tail kernel. Stage 0's first bias is in its input half.
        self.kernel_adds = [ops.has_act(self.activation)] * self.n_rest + [ops.native]
        self.kernel_adds[0] = self.kernel_adds[0] and index > 0

    def tensors(self, args: Mapping[str, Any], merged: bool, cast: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """This stage's Function inputs: w_x, b_0, w_h, (w_l, b_l)..., [w_tau, a]."""
        joined = lambda t: t if isinstance(t, torch.Tensor) else torch.cat(list(t))  # noqa: E731  heads as one
        ws = [*args["backbone_weights"], joined(args["head_weight_XZ"])]
        bs = [*args["backbone_biases"], joined(args["head_bias_X"])]
        if merged:  # dt = 1: time_a + time_b is one head (exact; cfc_fused does the same)
            w, b, V = ws[-1], bs[-1], ws[-1].shape[0] // 4
            ws[-1] = torch.cat([w[: 2 * V], w[2 * V : 3 * V] + w[3 * V :]])
            bs[-1] = torch.cat([b[: 2 * V], b[2 * V : 3 * V] + b[3 * V :]])
        ws, bs = [cast(w) for w in ws], [cast(b) for b in bs]
        self.units = ws[0].shape[1] - self.feed
        rest = [t for pair in zip(ws[1:], bs[1:]) for t in pair]
        extra = [cast(args["w_tau_1U"]).reshape(-1), cast(args["a_1U"]).reshape(-1)] if self.pure else []
        self.count = 3 + len(rest) + len(extra)
        return [ws[0][:, : self.feed], bs[0], ws[0][:, self.feed :], *rest, *extra]

    def bind(self, tensors: Optional[Sequence[torch.Tensor]]) -> None:
        if tensors is None:  # drop the references between forward and backward
            self.w_x = self.w_x_t = self.b_0 = self.w_h = self.w_h_t = self.ws = self.ws_t = self.bs = None
            self.w_tau = self.a = None
            return
        # Column blocks of W_0 made contiguous once: a strided GEMM operand is copied by every mm.
        self.w_x, self.b_0, w_h = tensors[0].contiguous(), tensors[1], tensors[2]
        self.w_x_t, self.w_h, self.w_h_t = self.w_x.t().contiguous(), w_h.contiguous(), w_h.t().contiguous()
        rest = tensors[3 : 3 + 2 * self.n_rest]
        self.ws, self.bs = list(rest[0::2]), list(rest[1::2])
        self.ws_t = [w.t() for w in self.ws]
        self.w_tau, self.a = (tensors[-2], tensors[-1]) if self.pure else (None, None)

    def start(self, T: int, B: int, workspace: _Workspace, x_NI: torch.Tensor) -> None:
        new = workspace.new
        self.ys = [new(T, B, w.shape[1]) for w in self.ws]  # the activations ws read
        self.pres = [new(T, B, w.shape[1]) for w in self.ws] if self.keep_pre else []
        self.acts_TB3U = new(T, B, 3 * self.units)
        self.heads_BX = new(B, (self.ws[-1] if self.n_rest else self.w_h).shape[0])
        self.y_steps, self.pre_steps = [y.unbind(0) for y in self.ys], [p.unbind(0) for p in self.pres]
        self.acts = self.acts_TB3U.unbind(0)
        if self.index == 0:  # the first layer's input half of all steps, bias included
            p0_TBO = self.ys[0] if self.n_rest else new(T, B, self.heads_BX.shape[1])
            torch.addmm(self.b_0, x_NI, self.w_x_t, out=p0_TBO.view(T * B, -1))
            self.p0 = p0_TBO.unbind(0)

    def forward(self, t: int, dt_B1: Optional[torch.Tensor], feed_BF, m_BU, h_out_BU) -> None:
        for j, adds in enumerate(self.kernel_adds):
            out = self.y_steps[j][t] if j < self.n_rest else self.heads_BX
            bias = self.b_0 if j == 0 else self.bs[j - 1]
            if j == 0 and self.index == 0:  # onto the precomputed input half
                if self.n_rest:
                    out.addmm_(m_BU, self.w_h_t)
                else:
                    torch.addmm(self.p0[t], m_BU, self.w_h_t, out=out)
            else:
                a, w_t = (feed_BF, self.w_x_t) if j == 0 else (self.y_steps[j - 1][t], self.ws_t[j - 1])
                if adds:
                    torch.mm(a, w_t, out=out)
                else:
                    torch.addmm(bias, a, w_t, out=out)
                if j == 0:
                    out.addmm_(m_BU, self.w_h_t)
            if j == self.n_rest:
                self.ops.tail(self, out, bias if adds else None, dt_B1, h_out_BU, self.acts[t])
            else:
                if self.keep_pre:
                    self.pre_steps[j][t].copy_(out)
                self.ops.act(self.activation, out, bias if adds else None, out)

    def start_backward(self, workspace: _Workspace) -> None:
        T, B = self.acts_TB3U.shape[:2]
        self.g_ys = [workspace.new(*y.shape) for y in self.ys]  # dL/d(pre-activation) of each y
        self.g_heads_TBX = workspace.new(T, B, self.heads_BX.shape[1])
        self.g_y_steps, self.g_heads = [g.unbind(0) for g in self.g_ys], self.g_heads_TBX.unbind(0)
        self.g_a_BU, self.g_w_BU = (torch.zeros_like(self.heads_BX), torch.zeros_like(self.heads_BX)) if self.pure else (None, None)

    def backward(self, t: int, dt_B1: Optional[torch.Tensor], g_h_BU: torch.Tensor) -> torch.Tensor:
        """dL/d(first layer's output) of step t, from dL/dh (contiguous)."""
        g = self.g_heads[t]
        self.ops.tail_backward(self, self.acts[t], dt_B1, g_h_BU, g)
        for l in reversed(range(self.n_rest)):
            g_y = torch.mm(g, self.ws[l])
            pre = self.pre_steps[l][t] if self.keep_pre else None
            g = self.g_y_steps[l][t]
            self.ops.act_backward(self.activation, pre, self.y_steps[l][t], g_y, g)
        return g

    def grads(self, feed_NF: torch.Tensor, m_TBU: torch.Tensor, need_feed: bool) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """(gradients of this stage's tensors, dL/dfeed of the first layer's input half or None)."""
        g_first = _rows(self.g_ys[0] if self.n_rest else self.g_heads_TBX)
        rest = []
        for g_TBZ, y_TBZ in zip([*self.g_ys[1:], self.g_heads_TBX], self.ys):
            rest += [_wgrad(_rows(g_TBZ), _rows(y_TBZ)), g_TBZ.sum((0, 1))]
        extra = [self.g_w_BU.sum(0), self.g_a_BU.sum(0)] if self.pure else []
        first = [_wgrad(g_first, feed_NF), g_first.sum(0), _wgrad(g_first, _rows(m_TBU))]
        return [*first, *rest, *extra], (g_first @ self.w_x if need_feed else None)


class _CfCSteps:
    """The CfC cell for _MixedFunction: its stages run in order within each step; a dense cell is
    one stage (its tail writes straight into the caller's state buffer)."""

    def __init__(self, dt_TB1: Optional[torch.Tensor], stages: list[_Stage]) -> None:
        self.dt_TB1, self.stages, self.sizes = dt_TB1, stages, [s.units for s in stages]

    def bind(self, tensors: Optional[Sequence[torch.Tensor]]) -> None:
        at = 0
        for stage in self.stages:
            stage.bind(None if tensors is None else tensors[at : at + stage.count])
            at += stage.count

    def start(self, T: int, m_TBU: torch.Tensor, workspace: _Workspace, x_NI: torch.Tensor) -> None:
        self.dts, self.workspace = ([None] * T if self.dt_TB1 is None else self.dt_TB1.unbind(0)), workspace
        for stage in self.stages:
            stage.start(T, m_TBU.shape[1], workspace, x_NI)
        if len(self.stages) > 1:
            self.hs = [workspace.new(T, m_TBU.shape[1], n) for n in self.sizes]
            self.h_steps = [h.unbind(0) for h in self.hs]
            self.m_steps = [m.unbind(0) for m in m_TBU.split_with_sizes(self.sizes, 2)]

    def forward(self, t: int, m_BU: torch.Tensor, h_out_BU: torch.Tensor) -> None:
        if len(self.stages) == 1:
            self.stages[0].forward(t, self.dts[t], None, m_BU, h_out_BU)
            return
        feed = None
        for stage, m_steps, h_steps in zip(self.stages, self.m_steps, self.h_steps):
            stage.forward(t, self.dts[t], feed, m_steps[t], h_steps[t])
            feed = h_steps[t]
        torch.cat([h[t] for h in self.h_steps], 1, out=h_out_BU)

    def start_backward(self) -> None:
        for stage in self.stages:
            stage.start_backward(self.workspace)

    def backward(self, t: int, g_h_BU: torch.Tensor) -> torch.Tensor:
        if len(self.stages) == 1:
            return torch.mm(self.stages[0].backward(t, self.dts[t], g_h_BU), self.stages[0].w_h)
        parts, g_m, g_feed = g_h_BU.split_with_sizes(self.sizes, 1), [], None
        for s in reversed(range(len(self.stages))):
            stage = self.stages[s]
            g_first = stage.backward(t, self.dts[t], parts[s].contiguous() if g_feed is None else parts[s] + g_feed)
            g_m.insert(0, torch.mm(g_first, stage.w_h))
            g_feed = torch.mm(g_first, stage.w_x) if s > 0 else None
        return torch.cat(g_m, 1)

    def grads(self, m_TBU: torch.Tensor, x_NI: torch.Tensor, need_x: bool) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        feeds = [x_NI, *(_rows(h) for h in self.hs[:-1])] if len(self.stages) > 1 else [x_NI]
        grads, g_x = [], None
        for s, (stage, feed, m) in enumerate(zip(self.stages, feeds, m_TBU.split_with_sizes(self.sizes, 2))):
            g, g_feed = stage.grads(feed, m, need_x and s == 0)
            grads, g_x = grads + g, g_x if s else g_feed
        return grads, g_x


def mixed_cfc_sequence(
    x_BTI: torch.Tensor, h0_BU: torch.Tensor, c0_BU: torch.Tensor, dt_BT1: Optional[torch.Tensor],
    lstm_w_in_4UI: torch.Tensor, lstm_b_in_4U: torch.Tensor, lstm_w_rec_4UU: torch.Tensor,
    cells: Sequence[Mapping[str, Any]], use_native: bool = True, return_sequences: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(h_BTU, or h_T (B, U) when not return_sequences; c_T (B, U)) of a mixed-memory CfC.

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
        ops = _Ops(use_native and native.supports(x), dtype)
        stages, tensors, feed = [], [], x.shape[2]
        for s, args in enumerate(cells):
            merged = dt_BT1 is None and args["mode"] != "pure"
            stages.append(_Stage(args, s, feed, merged, ops))
            tensors += stages[-1].tensors(args, merged, cast)
            feed = stages[-1].units
        dt_TB1 = None if dt_BT1 is None else cast(dt_BT1).transpose(0, 1).contiguous()
        lstm = lstm_tanh_space(cast(lstm_w_in_4UI), cast(lstm_b_in_4U), cast(lstm_w_rec_4UU))
        return _MixedFunction.apply(
            _CfCSteps(dt_TB1, stages), ops, not return_sequences, x, *lstm, cast(h0_BU).contiguous(),
            cast(c0_BU).contiguous(), *tensors,
        )  # fmt: skip


# ---------------------------------------------------------------------------------- the LTC


class _StepContext:
    """Stands in for autograd's ctx: ltc_fused's recurrence Function, run one step per call."""

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


class _LTCSteps:
    """The LTC cell for _MixedFunction: each step is ltc_fused._RecurrenceFn over T = 1 from m_t
    (its K unfolds in C, or torch ops over the synapse list or grid), its backward alike."""

    def __init__(self, spec: Any, unfolds: int, epsilon: float) -> None:
        self.spec, self.unfolds, self.epsilon = spec, unfolds, epsilon

    def bind(self, tensors: Optional[Sequence[torch.Tensor]]) -> None:
        self.steps_TBU, self.rest = ([], []) if tensors is None else (tensors[:3], tensors[3:])  # sn, sd, cm_t

    def start(self, T: int, m_TBU: torch.Tensor, workspace: _Workspace, x_NI: torch.Tensor) -> None:
        self.ctxs = [_StepContext() for _ in range(T)]
        self.step_views = [[s.unsqueeze(1) for s in x.unbind(0)] for x in self.steps_TBU]  # (B, 1, U) each

    def forward(self, t: int, m_BU: torch.Tensor, h_out_BU: torch.Tensor) -> None:
        args = (*(v[t] for v in self.step_views), *self.rest, self.spec, self.unfolds, self.epsilon)
        h_out_BU.copy_(ltc_fused._RecurrenceFn.forward(self.ctxs[t], m_BU, *args)[:, 0])

    def start_backward(self) -> None:
        self.g_steps = [torch.empty_like(x) for x in self.steps_TBU]
        self.g_rest: Optional[list[torch.Tensor]] = None

    def backward(self, t: int, g_h_BU: torch.Tensor) -> torch.Tensor:
        g_v0, *g = ltc_fused._RecurrenceFn.backward(self.ctxs[t], g_h_BU.unsqueeze(1))[:10]
        for buffer, g_B1U in zip(self.g_steps, g[:3]):
            buffer[t] = g_B1U[:, 0]
        self.g_rest = g[3:] if self.g_rest is None else [a + b for a, b in zip(self.g_rest, g[3:])]
        return g_v0

    def grads(self, m_TBU: torch.Tensor, x_NI: torch.Tensor, need_x: bool) -> tuple[list[torch.Tensor], None]:
        return [*self.g_steps, *self.g_rest], None


def mixed_ltc_sequence(
    x_BTI: torch.Tensor, inputs_BTI: torch.Tensor, h0_BU: torch.Tensor, c0_BU: torch.Tensor,
    dt_BT1: Optional[torch.Tensor], lstm_w_in_4UI: torch.Tensor, lstm_b_in_4U: torch.Tensor,
    lstm_w_rec_4UU: torch.Tensor, sensory_w_IU: torch.Tensor, sensory_mu_IU: torch.Tensor,
    sensory_sigma_IU: torch.Tensor, sensory_erev_IU: torch.Tensor, sensory_mask_IU: torch.Tensor,
    cm_U: torch.Tensor, gleak_U: torch.Tensor, vleak_U: torch.Tensor, w_UU: torch.Tensor,
    mu_UU: torch.Tensor, sigma_UU: torch.Tensor, erev_UU: torch.Tensor, mask_UU: torch.Tensor,
    unfolds: int = 6, epsilon: float = 1e-8, backend: str = "auto", return_sequences: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(v_BTU, or v_T (B, U) when not return_sequences; c_T (B, U)) of a mixed-memory LTC.

    Arguments as ltc_fused.ltc_sequence, plus x_BTI, what the LSTM reads (the raw input), beside
    inputs_BTI, what the sensory synapses read (input-mapped). Parameters arrive positive as
    ltc_sequence takes them; fp16/bf16 are computed in float32 and returned in their own dtype.
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
        s_spec, r_spec = ltc_fused._Spec(kind if kind == "native" else s_kind, s_index), ltc_fused._Spec(kind, r_index)
        # Sensory terms of all steps at once (they do not depend on the state), then time-major.
        sensory = (sensory_w_IU, sensory_mu_IU, sensory_sigma_IU, sensory_erev_IU, sensory_mask_IU)
        s_params = ltc_fused._layout_params(s_spec, *map(cast, sensory))
        sn_NU, sd_NU = ltc_fused._SensoryFn.apply(inputs.reshape(B * T, I).contiguous(), *s_params, s_spec)
        time_major = lambda t_NU: t_NU.view(B, T, U).transpose(0, 1).contiguous()  # noqa: E731
        # cm_t = cm / (dt / K), written as functional.py writes it so that rounding matches.
        dt_TB1 = x.new_ones(T, B, 1) if dt_BT1 is None else cast(dt_BT1).transpose(0, 1)
        cmt_TBU = (cast(cm_U) / (dt_TB1 / unfolds)).expand(T, B, U).contiguous()
        r_params = ltc_fused._layout_params(r_spec, *map(cast, (w_UU, mu_UU, sigma_UU, erev_UU, mask_UU)))
        lstm = lstm_tanh_space(cast(lstm_w_in_4UI), cast(lstm_b_in_4U), cast(lstm_w_rec_4UU))
        v, c_BU = _MixedFunction.apply(
            _LTCSteps(r_spec, unfolds, epsilon), _Ops(native.supports(x), dtype), not return_sequences, x, *lstm,
            h0_BU, cast(c0_BU).contiguous(), time_major(sn_NU), time_major(sd_NU),
            cmt_TBU, cast(gleak_U).contiguous(), cast(vleak_U).contiguous(), *(p.contiguous() for p in r_params),
        )  # fmt: skip
    return v.to(out_dtype), c_BU.to(out_dtype)
