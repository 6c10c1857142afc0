"""The model registry the experiments use: ``build_model(name, input_size, output_size, ...)``.

Every built model maps x (B, T, I) -> (y (B, T, output_size), h_n), batch first.

=========  ==============  ====================================================================
name       wiring          model
=========  ==============  ====================================================================
"cfc"      None (default)  CfC(input_size, units, proj_size=output_size): the study's dense CfC
                           with a linear readout
"cfc"      "autoncp"       CfC(input_size, AutoNCP(units, output_size)): outputs are the motor
                           neurons, no projection
"cfc"      "fc"            CfC(input_size, FullyConnected(units, output_size)), no projection
"ltc"      None/"autoncp"  LTC(input_size, AutoNCP(units, output_size)): the study's LTC
"ltc"      "fc"            LTC(input_size, FullyConnected(units, output_size))
=========  ==============  ====================================================================

Extra keyword arguments go to the layer's constructor (e.g. mode="pure", ode_unfolds=1,
mixed_memory=True).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from ._checks import check_choice, check_int
from .cfc import CfC
from .ltc import LTC
from .wirings import AutoNCP, FullyConnected, Wiring

# wiring name -> spec of `units` neurons with `output_size` motor neurons
WIRINGS: dict[str, Callable[[int, int], Wiring]] = {
    "autoncp": lambda units, output_size: AutoNCP(units, output_size),
    "fc": lambda units, output_size: FullyConnected(units, output_size),
}


def _build_cfc(input_size: int, output_size: int, units: int, wiring: Optional[str], **kwargs: Any) -> nn.Module:
    if wiring is None:
        return CfC(input_size, units, proj_size=output_size, **kwargs)
    spec = check_choice("wiring", wiring, WIRINGS)(units, output_size)
    return CfC(input_size, spec, **kwargs)


def _build_ltc(input_size: int, output_size: int, units: int, wiring: Optional[str], **kwargs: Any) -> nn.Module:
    spec = check_choice("wiring", "autoncp" if wiring is None else wiring, WIRINGS)(units, output_size)
    return LTC(input_size, spec, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {"cfc": _build_cfc, "ltc": _build_ltc}


def build_model(
    name: str,
    input_size: int,
    output_size: int,
    units: int = 64,
    wiring: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    """A sequence model ``name`` ("cfc" or "ltc") mapping (B, T, input_size) -> (B, T, output_size).

    ``wiring``: None for the study default of each model (dense CfC + projection; LTC on
    AutoNCP), or "autoncp" / "fc" (see the module table).

    Example:
        >>> model = build_model("ltc", input_size=3, output_size=2, units=10)
        >>> y, h = model(torch.randn(4, 6, 3))
        >>> tuple(y.shape), tuple(h.shape)
        ((4, 6, 2), (4, 10))
    """
    builder = check_choice("name", name, MODELS)
    check_int("input_size", input_size, 1)
    check_int("output_size", output_size, 1)
    check_int("units", units, 1)
    return builder(input_size, output_size, units, wiring, **kwargs)
