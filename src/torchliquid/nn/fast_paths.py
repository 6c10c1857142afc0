"""The layers' whole-sequence paths: the fused kernels wired to CfC and LTC parameters.

``SequenceLayer._forward_sequence`` runs one *runner* from the layer class's registry
(``CfC.IMPLEMENTATIONS``, ``LTC.IMPLEMENTATIONS``), chosen by the layer's ``implementation``:

    runner(layer, x_BTI, dt_BT1 or None, (h_BU, c_BU)) -> (y_BTM, (h_BU, c_BU))

"reference" is ``SequenceLayer._reference_sequence`` (one cell ``_step`` per time step), the slow
control every other runner is tested against (tests/test_nn_fast_paths.py). The other names are
the kernels' own (their registries, so a new kernel variant appears here by itself):

    CfC   cfc_fused.cfc_sequence(..., implementation=k)   function, function-torch, jit, compile
    LTC   ltc_fused.ltc_sequence(..., backend=k)          native, torch-sparse, torch-dense

"auto" is resolved per call by ``auto_cfc`` / ``auto_ltc`` after the coverage checks below.
A wired CfC runs the kernel once per wiring layer over the whole sequence: layer l at step t
reads layer l-1's new state at step t, which is exactly layer l-1's output sequence, so running
the layers one after another is the same computation (masked ff1/ff2 heads, no backbone).

Shape legend: B batch, T time, I inputs, U units (Σ over wiring layers), M cell outputs, 1 broadcast.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from . import _fused_native as native
from . import cfc_fused, ltc_fused, mixed_fused
from .cfc_cell import CfCCell
from .sequence import Runner, SequenceLayer, State


def _refuse_double_backward(grad: torch.Tensor) -> None:
    # Autograd runs hooks with grad mode on only for create_graph=True.
    if torch.is_grad_enabled():
        raise RuntimeError(
            "create_graph=True through a fused CfC/LTC kernel: its hand-written backward is "
            "first-order (second derivatives would come out silently wrong); set the layer's "
            "implementation='reference' for double backward"
        )


def _first_order_only(y_BTM: torch.Tensor, h_BU: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every gradient from the kernels' outputs to a loss passes y or h_n: a hook there turns a
    silently wrong double backward into an error (no copy, no extra autograd node)."""
    for tensor in (y_BTM, h_BU):
        if tensor.requires_grad:
            tensor.register_hook(_refuse_double_backward)
    return y_BTM, h_BU


# ----------------------------------------------------------------------------------------- CfC


def _cfc_cell_arguments(cell: CfCCell) -> dict[str, Any]:
    """cfc_sequence's parameter arguments of one CfCCell: heads as lists, masks applied."""
    linears = [m for m in cell.backbone if isinstance(m, nn.Linear)] if cell.backbone is not None else []
    mask_UZ = cell.sparsity_mask

    def masked(linear: nn.Linear) -> torch.Tensor:  # as CfCCell._masked_linear: ff1 and ff2 only
        return linear.weight if mask_UZ is None else linear.weight * mask_UZ

    # The heads as separate tensors: cfc_sequence joins them outside autograd (cheaper than cat).
    if cell.mode == "pure":
        head_w, head_b = [masked(cell.ff1)], [cell.ff1.bias]
        extra = {"w_tau_1U": cell.w_tau, "a_1U": cell.A}
    else:
        head_w = [masked(cell.ff1), masked(cell.ff2), cell.time_a.weight, cell.time_b.weight]
        head_b = [cell.ff1.bias, cell.ff2.bias, cell.time_a.bias, cell.time_b.bias]
        extra = {}
    return {
        "backbone_weights": [linear.weight for linear in linears],
        "backbone_biases": [linear.bias for linear in linears],
        "head_weight_XZ": head_w,
        "head_bias_X": head_b,
        "mode": cell.mode,
        "activation": cell.backbone_activation,
        **extra,
    }


def _kernel_dt(x_BTI: torch.Tensor, dt_BT1: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """dt for cfc_sequence, where None selects its merged time gate (time_a + time_b as one head).

    The merge is exact in math but not to the bit, and "no timespans" must equal every other form
    of dt = 1 within 1e-7 (field case A14): so on CPU unit steps in any form become None (the
    check is one cheap pass), and elsewhere dt stays a tensor (the check would cost a device sync).
    A dt that requires grad stays a tensor: its gradient is wanted.
    """
    if x_BTI.device.type != "cpu":
        return x_BTI.new_ones(1, 1, 1).expand(x_BTI.shape[0], x_BTI.shape[1], 1) if dt_BT1 is None else dt_BT1
    if dt_BT1 is None or (not dt_BT1.requires_grad and bool((dt_BT1 == 1).all())):
        return None
    return dt_BT1


def _cfc_runner(kernel: str) -> Runner:
    def run(
        layer: Any, x_BTI: torch.Tensor, dt_BT1: Optional[torch.Tensor], state: State
    ) -> tuple[torch.Tensor, State]:
        if layer.use_mixed:
            return _mixed_cfc(layer, x_BTI, dt_BT1, state, kernel)
        h_BU, _ = state
        dt_BT1 = _kernel_dt(x_BTI, dt_BT1)
        cell = layer.rnn_cell
        cells = list(cell._layers) if layer.wired_mode else [cell]
        feed_BTZ, finals_BU = x_BTI, []
        for l, (sub, h0_BU) in enumerate(zip(cells, h_BU.split([sub.hidden_size for sub in cells], dim=1))):
            # Without return_sequences only the last layer's last step is read: the kernel then
            # skips the per-step outputs' backward. Earlier layers feed the next at every step.
            whole = layer.return_sequences or l < len(cells) - 1
            out = cfc_fused.cfc_sequence(
                feed_BTZ, h0_BU, dt_BT1, **_cfc_cell_arguments(sub), implementation=kernel,
                return_sequences=whole,
            )  # fmt: skip
            feed_BTZ = out if whole else out.unsqueeze(1)  # (B, T or 1, U_l)
            finals_BU.append(feed_BTZ[:, -1])
        y_BTM = feed_BTZ[..., : cell.motor_size] if layer.wired_mode else feed_BTZ
        # cat copies even one layer's state: h_n must not alias the output (in-place edits of
        # one would silently change the other, which the reference loop never does).
        y_BTM, h_BU = _first_order_only(y_BTM, torch.cat(finals_BU, dim=1))
        return y_BTM, (h_BU, None)

    run.__name__ = run.__qualname__ = f"cfc_{kernel.replace('-', '_')}"
    return run


CFC_IMPLEMENTATIONS: dict[str, Runner] = {
    "reference": SequenceLayer._reference_sequence,
    **{name: _cfc_runner(name) for name in cfc_fused.IMPLEMENTATIONS if name != "auto"},
}


def cfc_coverage_gap(layer: Any, dynamic: bool = True) -> Optional[str]:
    """Why the CfC kernels cannot run this layer, or None. ``dynamic``: include state that
    changes between calls (training mode)."""
    if dynamic and any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in layer.rnn_cell.modules()):
        return "backbone_dropout > 0 in training mode (the kernels have no dropout; eval mode is covered)"
    return None


def auto_cfc(layer: Any, x_BTI: torch.Tensor) -> str:
    """"function" on CPU (C element-wise kernels, and the whole time loop in C for
    fp32/fp64; torch ops where those cannot run); "function-torch" elsewhere, never ctypes."""
    return "function" if x_BTI.device.type == "cpu" else "function-torch"


# ----------------------------------------------------------------------------------------- LTC


def _ltc_runner(backend: str) -> Runner:
    def run(
        layer: Any, x_BTI: torch.Tensor, dt_BT1: Optional[torch.Tensor], state: State
    ) -> tuple[torch.Tensor, State]:
        if layer.use_mixed:
            return _mixed_ltc(layer, x_BTI, dt_BT1, state, backend)
        v0_BU, _ = state
        cell = layer.rnn_cell
        positive = cell._positive  # softplus or identity, exactly as LTCCell._step
        v_BTU = ltc_fused.ltc_sequence(
            cell._map_inputs(x_BTI), v0_BU, dt_BT1,
            positive(cell.sensory_w), cell.sensory_mu, cell.sensory_sigma, cell.sensory_erev,
            cell.sensory_sparsity_mask, positive(cell.cm), positive(cell.gleak), cell.vleak,
            positive(cell.w), cell.mu, cell.sigma, cell.erev, cell.sparsity_mask,
            unfolds=cell.ode_unfolds, epsilon=cell.epsilon, backend=backend,
        )  # fmt: skip
        # A copy: the kernel saves v_BTU for its backward, so an in-place edit of a view of it
        # would break that backward; the reference loop's h_n is a tensor of its own.
        y_BTM, v_BU = _first_order_only(cell._map_outputs(v_BTU), v_BTU[:, -1].clone())
        return y_BTM, (v_BU, None)

    run.__name__ = run.__qualname__ = f"ltc_{backend.replace('-', '_')}"
    return run


LTC_IMPLEMENTATIONS: dict[str, Runner] = {
    "reference": SequenceLayer._reference_sequence,
    **{name: _ltc_runner(name) for name in ltc_fused.BACKENDS if name != "auto"},
}


def ltc_coverage_gap(layer: Any, dynamic: bool = True) -> Optional[str]:
    """Why the LTC kernels cannot run this layer, or None (``dynamic`` as cfc_coverage_gap)."""
    return None


def auto_ltc(layer: Any, x_BTI: torch.Tensor) -> str:
    """"native" on CPU when the C kernels built (fp16/bf16 are computed in fp32); elsewhere the
    torch Functions, over the synapse list when the wiring keeps < 50 % of the pairs."""
    if x_BTI.device.type == "cpu" and native.available():
        return "native"
    density = ltc_fused.synapse_index(layer.rnn_cell.sparsity_mask).density
    return "torch-sparse" if density < ltc_fused.SPARSE_BELOW else "torch-dense"


# -------------------------------------------------------------------------------- mixed memory
# With mixed_memory=True the LSTM and the cell alternate every step, so the runners above hand
# the layer to mixed_fused (the LSTM and the cell step in one Function): CfC "function" with its
# C element-wise kernels, "function-torch" with torch ops; every LTC backend steps its own
# recurrence. "jit" and "compile" have no mixed-memory form and refuse at forward time (the
# coverage check cannot tell kernel names apart).

MIXED_CFC_KERNELS = ("function", "function-torch")


def _lstm_arguments(layer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lstm = layer.lstm
    return lstm.input_map.weight, lstm.input_map.bias, lstm.recurrent_map.weight


def _first_order_mixed(y_BTM: torch.Tensor, h_BU: torch.Tensor, c_BU: torch.Tensor) -> tuple[torch.Tensor, State]:
    y_BTM, h_BU = _first_order_only(y_BTM, h_BU)
    if c_BU.requires_grad:  # a loss may read c_n alone
        c_BU.register_hook(_refuse_double_backward)
    return y_BTM, (h_BU, c_BU)


def _mixed_cfc(
    layer: Any, x_BTI: torch.Tensor, dt_BT1: Optional[torch.Tensor], state: State, kernel: str
) -> tuple[torch.Tensor, State]:
    if kernel not in MIXED_CFC_KERNELS:
        raise ValueError(
            f"implementation={kernel!r} has no mixed-memory form (mixed_memory=True runs "
            f"{MIXED_CFC_KERNELS}); use implementation='auto' or 'reference'"
        )
    if dt_BT1 is not None and dt_BT1.requires_grad:  # d/d(dt) is not in the fused backward
        return SequenceLayer._reference_sequence(layer, x_BTI, dt_BT1, state)
    cell = layer.rnn_cell
    cells = list(cell._layers) if layer.wired_mode else [cell]
    h0_BU, c0_BU = state
    h, c_BU = mixed_fused.mixed_cfc_sequence(
        x_BTI, h0_BU, c0_BU, _kernel_dt(x_BTI, dt_BT1), *_lstm_arguments(layer),
        [_cfc_cell_arguments(sub) for sub in cells], use_native=kernel == "function",
        return_sequences=layer.return_sequences,
    )  # fmt: skip
    h_BTU = h if layer.return_sequences else h.unsqueeze(1)
    # The output is the last stage's motor neurons: they open the last wiring layer's block.
    first = cell.state_size - cells[-1].hidden_size if layer.wired_mode else 0
    y_BTM = h_BTU[..., first : first + cell.motor_size] if layer.wired_mode else h_BTU
    return _first_order_mixed(y_BTM, h_BTU[:, -1].clone(), c_BU)  # h_n never aliases y


def _mixed_ltc(
    layer: Any, x_BTI: torch.Tensor, dt_BT1: Optional[torch.Tensor], state: State, backend: str
) -> tuple[torch.Tensor, State]:
    cell = layer.rnn_cell
    positive = cell._positive
    h0_BU, c0_BU = state
    v, c_BU = mixed_fused.mixed_ltc_sequence(
        x_BTI, cell._map_inputs(x_BTI), h0_BU, c0_BU, dt_BT1, *_lstm_arguments(layer),
        positive(cell.sensory_w), cell.sensory_mu, cell.sensory_sigma, cell.sensory_erev,
        cell.sensory_sparsity_mask, positive(cell.cm), positive(cell.gleak), cell.vleak,
        positive(cell.w), cell.mu, cell.sigma, cell.erev, cell.sparsity_mask,
        unfolds=cell.ode_unfolds, epsilon=cell.epsilon, backend=backend,
        return_sequences=layer.return_sequences,
    )  # fmt: skip
    v_BTU = v if layer.return_sequences else v.unsqueeze(1)
    return _first_order_mixed(cell._map_outputs(v_BTU), v_BTU[:, -1].clone(), c_BU)
