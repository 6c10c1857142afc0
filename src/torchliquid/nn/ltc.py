"""LTC: a Liquid Time-Constant RNN layer over sequences (drop-in for ncps.torch.LTC)."""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import nn

from . import fast_paths
from ._checks import check_bool, check_int
from .ltc_cell import LTCCell
from .mixed_memory import LSTMCell
from .sequence import SequenceLayer
from .wirings import FullyConnected, Wiring


class LTC(SequenceLayer):
    """Applies an LTC RNN (Hasani et al. 2021) to a sequence: ``forward(input, hx, timespans)``.

    Per step t, with dt_t the elapsed time (1 if timespans is None):

        (v, c) = lstm(x_t, (v, c))                  only with mixed_memory
        y_t, v = cell(x_t, v, dt_t)                 LTCCell: ode_unfolds solver steps of dt_t/unfolds

    =========  =================================================  ============================
    symbol     shape                                              meaning
    =========  =================================================  ============================
    input      (B, T, I) batch_first / (T, B, I) / (T, I)         I = input_size
    timespans  None, float, 0-d, (T,), (B, T), (B, T, 1)          elapsed time per step;
               [(T, B), (T, B, 1) when batch_first=False;         see SequenceLayer.forward
               (T,) or (T, 1) unbatched]
    hx         (B, U) or (v, c) with mixed_memory; (U,) unbatched U = wiring.units
    output     (B, T, M) / (T, B, M) / (T, M); (B, M) without     M = wiring.output_dim
               return_sequences
    =========  =================================================  ============================

    Args (defaults as ncps.torch.LTC):
        input_size: I.
        units: a wiring spec, or an int U for FullyConnected(U) (every unit is an output).
        return_sequences, batch_first, mixed_memory: as CfC.
        input_mapping, output_mapping: "affine", "linear" or None.
        ode_unfolds: solver steps per input step (>= 1, default 6).
        epsilon: solver denominator guard (>= 0, default 1e-8).
        implicit_param_constraints: True (default, cell and layer alike): softplus keeps cm,
            gleak, w, sensory_w positive. False: raw parameters as ncps; use
            torchliquid.nn.constrain_after_step(optimizer, model) when training.
        implementation: the time loop's path (also a settable attribute; not saved, a runtime
            choice): "auto" (default), "reference" (the plain per-step loop, the control) or a
            backend of ltc_fused: "native" (C kernels, CPU; fp16/bf16 computed in fp32),
            "torch-sparse" (torch ops over the wiring's synapse list), "torch-dense" (torch ops
            on masked grids). All equal "reference" (fp32: 1e-5 outputs, 1e-4 relative
            gradients) and save only O(B·T·U) for the backward. See ``LTC.IMPLEMENTATIONS``.

    What "auto" runs (``resolve_implementation(x)`` tells):

    ===================================================  ===========  ==========================
    configuration                                        CPU          CUDA / other
    ===================================================  ===========  ==========================
    any wiring, mappings, constraints, ode_unfolds,      "native"     "torch-sparse" if the
    timespans (fp32/fp64; fp16/bf16 run in fp32)                      wiring keeps < 50 % of the
                                                                      pairs, else "torch-dense"
    mixed_memory=True (nn/mixed_fused.py: LSTM and cell  "native"     as above
    in one Function, one recurrence step per call)
    under torch.jit.trace / torch.compile / export       "reference"  "reference"
    ===================================================  ===========  ==========================

    One step (T = 1) without autograd (``torch.no_grad``, ``inference_mode``, or nothing requiring
    grad) runs none of these: the streaming path of nn/step_path.py (also ``infer.Stream.step``)
    replays the cell from tensors derived once per parameter state (unfolds in the native kernel:
    ~1e-7 from "reference"); mixed memory, tracing, autocast, active dropout and forward hooks on
    submodules keep the table's path.

    On CPU without a C compiler (or TORCHLIQUID_NATIVE=0) "auto" takes the torch backends as on
    CUDA. A backend named explicitly where "auto" would fall back raises ValueError. The fused
    backwards are first-order: backward with create_graph=True raises; use "reference" then.

    Example:
        >>> from torchliquid.nn.wirings import AutoNCP
        >>> rnn = LTC(20, AutoNCP(16, 3))
        >>> y, h = rnn(torch.randn(2, 7, 20), timespans=0.5)
        >>> tuple(y.shape), tuple(h.shape)
        ((2, 7, 3), (2, 16))
        >>> rnn.implementation = "reference"          # the plain loop, e.g. to compare
    """

    # The registry of paths and its choice (fast_paths.py); functions become methods here.
    IMPLEMENTATIONS = fast_paths.LTC_IMPLEMENTATIONS
    _coverage_gap = fast_paths.ltc_coverage_gap
    _auto_implementation = fast_paths.auto_ltc

    def __init__(
        self,
        input_size: int,
        units: Union[int, Wiring],
        return_sequences: bool = True,
        batch_first: bool = True,
        mixed_memory: bool = False,
        input_mapping: Optional[str] = "affine",
        output_mapping: Optional[str] = "affine",
        ode_unfolds: int = 6,
        epsilon: float = 1e-8,
        implicit_param_constraints: bool = True,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.return_sequences = check_bool("return_sequences", return_sequences)
        self.batch_first = check_bool("batch_first", batch_first)
        self.use_mixed = check_bool("mixed_memory", mixed_memory)
        if isinstance(units, int) and not isinstance(units, bool):
            units = FullyConnected(check_int("units", units, 1))
        if not isinstance(units, Wiring):
            raise TypeError(
                f"units must be an int or a torchliquid.nn.wirings.Wiring, got {type(units).__module__}."
                f"{type(units).__name__}; convert ncps wirings with torchliquid.compat.from_ncps"
            )
        self.rnn_cell = LTCCell(
            units,
            in_features=input_size,
            input_mapping=input_mapping,
            output_mapping=output_mapping,
            ode_unfolds=ode_unfolds,
            epsilon=epsilon,
            implicit_param_constraints=implicit_param_constraints,
        )
        self.wiring = self.rnn_cell.wiring  # the built copy; the caller's spec is untouched
        self.state_size = self.wiring.units
        self.output_size = self.wiring.output_dim
        self.lstm = LSTMCell(input_size, self.state_size) if self.use_mixed else None
        self.fc = nn.Identity()
        self.implementation = implementation  # last: its check reads use_mixed

    @property
    def motor_size(self) -> int:
        return self.output_size

    @property
    def sensory_size(self) -> int:
        return self.input_size

    @property
    def synapse_count(self) -> int:
        return self.wiring.synapse_count

    @property
    def sensory_synapse_count(self) -> int:
        return self.wiring.sensory_synapse_count

    def config(self) -> dict[str, Any]:
        """Every constructor argument as a JSON-serialisable dict with "class" (for save_model)."""
        cell = self.rnn_cell
        return {
            "class": "LTC",
            "input_size": self.input_size,
            "units": self.wiring.get_config(),
            "return_sequences": self.return_sequences,
            "batch_first": self.batch_first,
            "mixed_memory": self.use_mixed,
            "input_mapping": cell.input_mapping,
            "output_mapping": cell.output_mapping,
            "ode_unfolds": cell.ode_unfolds,
            "epsilon": cell.epsilon,
            "implicit_param_constraints": cell.implicit_param_constraints,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LTC":
        args = {k: v for k, v in config.items() if k != "class"}
        if isinstance(args.get("units"), dict):
            args["units"] = Wiring.from_config(args["units"])
        return cls(**args)
