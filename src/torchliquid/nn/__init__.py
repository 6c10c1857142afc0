"""Liquid neural network models: CfC and LTC cells and layers, wirings, save/load, registry.

    from torchliquid.nn import CfC, LTC          # drop-in for ncps.torch
    from torchliquid.nn.wirings import AutoNCP   # drop-in for ncps.wirings
"""

from . import functional, wirings
from .cfc import CfC
from .cfc_cell import CfCCell, WiredCfCCell
from .ltc import LTC
from .ltc_cell import LTCCell, constrain_after_step
from .mixed_memory import LSTMCell

__all__ = [
    "CfC",
    "CfCCell",
    "WiredCfCCell",
    "LTC",
    "LTCCell",
    "LSTMCell",
    "constrain_after_step",
    "functional",
    "wirings",
]
