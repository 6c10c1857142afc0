"""CfC: a Closed-form Continuous-time RNN layer over sequences (drop-in for ncps.torch.CfC)."""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import nn

from ._checks import check_bool, check_choice, check_float, check_int, check_optional_int
from .cfc_cell import CFC_MODES, CfCCell, WiredCfCCell
from . import fast_paths, functional
from .mixed_memory import LSTMCell
from .sequence import SequenceLayer
from .wirings import Wiring


class CfC(SequenceLayer):
    """Applies a CfC RNN (Hasani et al. 2022) to a sequence: ``forward(input, hx, timespans)``.

    Per step t, with dt_t the elapsed time (1 if timespans is None):

        (h, c) = lstm(x_t, (h, c))                    only with mixed_memory
        h      = cell(x_t, h, dt_t)                   CfCCell / WiredCfCCell, see cfc_cell.py
        y_t    = fc(h)   or fc(h[:, :M]) when wired   fc = Linear(·, proj_size) or identity

    =========  =================================================  ============================
    symbol     shape                                              meaning
    =========  =================================================  ============================
    input      (B, T, I) batch_first / (T, B, I) / (T, I)         I = input_size
    timespans  None, float, 0-d, (T,), (B, T), (B, T, 1)          elapsed time per step;
               [(T, B), (T, B, 1) when batch_first=False;         see SequenceLayer.forward
               (T,) or (T, 1) unbatched]
    hx         (B, U) or (h, c) with mixed_memory; (U,) unbatched U = units or wiring.units
    output     (B, T, O) / (T, B, O) / (T, O); (B, O) without     O = proj_size, else M
               return_sequences
    =========  =================================================  ============================

    M = units (unwired) or wiring.output_dim (wired: the motor neurons, for every wiring type).

    Args (defaults as ncps.torch.CfC):
        input_size: I.
        units: U as an int (dense cell with a backbone MLP), or a wiring spec (one sub-cell per
            wiring layer, sparsity masks on ff1/ff2; backbone arguments must then be None).
        proj_size: if set, a Linear(M, proj_size) readout.
        return_sequences: all steps (True) or the last one.
        batch_first: (B, T, I) if True, (T, B, I) if False.
        mixed_memory: an LSTM cell beside the CfC cell (hx becomes a tuple (h, c)).
        mode: "default", "pure" or "no_gate".
        activation: backbone activation, "lecun_tanh", "relu", "tanh", "gelu" or "silu".
        backbone_units, backbone_layers, backbone_dropout: None means 128, 1, 0.0 (unwired only).
        implementation: the time loop's path (also a settable attribute; not saved, a runtime
            choice): "auto" (default), "reference" (the plain per-step loop, the control) or a
            kernel of cfc_fused: "function" (hand-written whole-sequence forward/backward; on CPU
            fp32/fp64 the whole time loop in C, batch rows split over threads),
            "function-torch" (the same, element-wise parts as torch ops), "jit" (TorchScript
            loop), "compile" (torch.compile'd step). All equal "reference" (fp32: 1e-5 outputs,
            1e-4 relative gradients). See ``CfC.IMPLEMENTATIONS``.

    What "auto" runs (``resolve_implementation(x)`` tells):

    ==========================================================  ==============  ================
    configuration                                               CPU             CUDA / other
    ==========================================================  ==============  ================
    dense (every mode, activation, backbone depth, proj_size)   "function"      "function-torch"
    wired (any wiring; one kernel call per wiring layer)        "function"      "function-torch"
    mixed_memory=True (nn/mixed_fused.py: LSTM and cell in one  "function"      "function-torch"
    Function, the cell's C element-wise kernels on CPU)
    backbone_dropout > 0 with >= 2 layers, in training mode     "reference"     "reference"
    under torch.jit.trace / torch.compile / torch.export        "reference"     "reference"
    ==========================================================  ==============  ================

    One step (T = 1) without autograd (``torch.no_grad``, ``inference_mode``, or nothing requiring
    grad) runs none of these: the streaming path of nn/step_path.py (also ``infer.Stream.step``)
    replays the cell from tensors derived once per parameter state, op for op (equal to
    "reference": 0 difference here, the four heads' one GEMM may round ~1e-7 apart on another
    BLAS); mixed memory, tracing, autocast, active dropout and forward hooks keep the table's path.

    "function" on CPU uses its C kernels for fp32/fp64 (torch ops for fp16/bf16 or without a C
    compiler, TORCHLIQUID_NATIVE=0); under autocast the sequence runs in the autocast dtype;
    timespans that require grad make the kernel run its reference loop (no d/d(dt) in its
    backward). A kernel named explicitly where "auto" would fall back raises ValueError. The
    fused backwards are first-order: backward with create_graph=True raises; use "reference" then.

    Example:
        >>> rnn = CfC(20, 50, proj_size=3)
        >>> x = torch.randn(2, 7, 20)                 # (batch, time, features)
        >>> y, h = rnn(x, timespans=torch.rand(2, 7))
        >>> tuple(y.shape), tuple(h.shape)
        ((2, 7, 3), (2, 50))
        >>> rnn.resolve_implementation(x)
        'function'
    """

    # The registry of paths and its choice (fast_paths.py); functions become methods here.
    IMPLEMENTATIONS = fast_paths.CFC_IMPLEMENTATIONS
    _coverage_gap = fast_paths.cfc_coverage_gap
    _auto_implementation = fast_paths.auto_cfc

    def __init__(
        self,
        input_size: int,
        units: Union[int, Wiring],
        proj_size: Optional[int] = None,
        return_sequences: bool = True,
        batch_first: bool = True,
        mixed_memory: bool = False,
        mode: str = "default",
        activation: str = "lecun_tanh",
        backbone_units: Optional[int] = None,
        backbone_layers: Optional[int] = None,
        backbone_dropout: Optional[float] = None,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.proj_size = check_optional_int("proj_size", proj_size, 1)
        self.return_sequences = check_bool("return_sequences", return_sequences)
        self.batch_first = check_bool("batch_first", batch_first)
        self.use_mixed = check_bool("mixed_memory", mixed_memory)
        check_choice("mode", mode, CFC_MODES)
        check_choice("activation", activation, functional.ACTIVATIONS)
        self.mode = mode
        self.activation = activation

        if isinstance(units, Wiring):
            for name, value in (
                ("backbone_units", backbone_units),
                ("backbone_layers", backbone_layers),
                ("backbone_dropout", backbone_dropout),
            ):
                if value is not None:
                    raise ValueError(
                        f"{name} must be None when units is a wiring (wired sub-cells have no "
                        f"backbone), got {value!r}; pass an int for units to use a backbone"
                    )
            self.wired_mode = True
            self.rnn_cell = WiredCfCCell(input_size, units, mode)
            self.wiring = self.rnn_cell.wiring  # the built copy; the caller's spec is untouched
            self.state_size = self.wiring.units
            cell_output_size = self.wiring.output_dim
        elif isinstance(units, int) and not isinstance(units, bool):
            self.wired_mode = False
            self.wiring = None
            self.state_size = check_int("units", units, 1)
            self.backbone_units = 128 if backbone_units is None else check_int("backbone_units", backbone_units, 1)
            self.backbone_layers = 1 if backbone_layers is None else check_int("backbone_layers", backbone_layers, 0)
            self.backbone_dropout = (
                0.0 if backbone_dropout is None else check_float("backbone_dropout", backbone_dropout, 0.0, 1.0)
            )
            self.rnn_cell = CfCCell(
                input_size,
                units,
                mode,
                activation,
                self.backbone_units,
                self.backbone_layers,
                self.backbone_dropout,
            )
            cell_output_size = units
        else:
            raise TypeError(
                f"units must be an int or a torchliquid.nn.wirings.Wiring, got {type(units).__module__}."
                f"{type(units).__name__}; convert ncps wirings with torchliquid.compat.from_ncps"
            )

        self.lstm = LSTMCell(input_size, self.state_size) if self.use_mixed else None
        self.fc = nn.Identity() if proj_size is None else nn.Linear(cell_output_size, proj_size)
        self.output_size = cell_output_size if proj_size is None else proj_size
        self.implementation = implementation  # last: its check reads use_mixed and the cell

    def config(self) -> dict[str, Any]:
        """Every constructor argument as a JSON-serialisable dict with "class" (for save_model)."""
        config: dict[str, Any] = {
            "class": "CfC",
            "input_size": self.input_size,
            "units": self.wiring.get_config() if self.wired_mode else self.state_size,
            "proj_size": self.proj_size,
            "return_sequences": self.return_sequences,
            "batch_first": self.batch_first,
            "mixed_memory": self.use_mixed,
            "mode": self.mode,
            "activation": self.activation,
        }
        if not self.wired_mode:
            config.update(
                backbone_units=self.backbone_units,
                backbone_layers=self.backbone_layers,
                backbone_dropout=self.backbone_dropout,
            )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CfC":
        args = {k: v for k, v in config.items() if k != "class"}
        if isinstance(args.get("units"), dict):
            args["units"] = Wiring.from_config(args["units"])
        return cls(**args)
