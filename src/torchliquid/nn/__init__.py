"""Liquid neural network models: CfC and LTC cells and layers, wirings, save/load, registry.

    from torchliquid.nn import CfC, LTC          # drop-in for ncps.torch
    from torchliquid.nn.wirings import AutoNCP   # drop-in for ncps.wirings
"""

from . import functional, wirings
from .cfc import CfC
from .cfc_cell import CfCCell, WiredCfCCell
from .mixed_memory import LSTMCell

__all__ = ["CfC", "CfCCell", "WiredCfCCell", "LSTMCell", "functional", "wirings"]
