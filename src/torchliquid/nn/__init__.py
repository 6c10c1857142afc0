"""Liquid neural network models: CfC and LTC cells and layers, wirings, save/load, registry.

    from torchliquid.nn import CfC, LTC          # drop-in for ncps.torch
    from torchliquid.nn.wirings import AutoNCP   # drop-in for ncps.wirings
"""

from . import functional, wirings
from .cfc import CfC
from .cfc_cell import CfCCell, WiredCfCCell
from .counting import ParameterCount, count_parameters
from .ltc import LTC
from .ltc_cell import LTCCell, constrain_after_step
from .mixed_memory import LSTMCell
from .registry import MODELS, build_model
from .serialization import load_model, model_from_config, save_model

__all__ = [
    "CfC",
    "CfCCell",
    "WiredCfCCell",
    "LTC",
    "LTCCell",
    "LSTMCell",
    "constrain_after_step",
    "MODELS",
    "build_model",
    "count_parameters",
    "ParameterCount",
    "save_model",
    "load_model",
    "model_from_config",
    "functional",
    "wirings",
]
