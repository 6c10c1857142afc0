"""Whole-model save and load: weights, wiring and hyper-parameters in one file (field case A10).

File layout (a torch.save'd dict that ``torch.load(weights_only=True)`` reads, so loading never
runs pickled code):

    {"format": "torchliquid.model", "format_version": 1, "torchliquid_version": "...",
     "config_json": '{"class": "CfC", ...}',     # model.config() as a JSON string
     "state_dict": {...}}                         # model.state_dict()

The config carries the wiring's own config, so a loaded model has the same wiring without the
user supplying anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import nn

from torchliquid._atomic import atomic_write

from .cfc import CfC
from .cfc_cell import CfCCell, WiredCfCCell
from .ltc import LTC
from .ltc_cell import LTCCell
from .wirings import Wiring

FORMAT = "torchliquid.model"
FORMAT_VERSION = 1


def _cell_from_config(cls: type) -> Callable[[dict[str, Any]], nn.Module]:
    def build(config: dict[str, Any]) -> nn.Module:
        args = {k: v for k, v in config.items() if k != "class"}
        if isinstance(args.get("wiring"), dict):
            args["wiring"] = Wiring.from_config(args["wiring"])
        return cls(**args)

    return build


# "class" in a model config -> the function that rebuilds the (untrained) model from it
MODEL_CLASSES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "CfC": CfC.from_config,
    "LTC": LTC.from_config,
    "CfCCell": _cell_from_config(CfCCell),
    "WiredCfCCell": _cell_from_config(WiredCfCCell),
    "LTCCell": _cell_from_config(LTCCell),
}


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the architecture ``config`` (from ``model.config()``) describes."""
    if not isinstance(config, dict) or "class" not in config:
        raise ValueError(f"config must be a dict from model.config() with a 'class' key, got {config!r:.200}")
    name = config["class"]
    if name not in MODEL_CLASSES:
        raise ValueError(f"config 'class' must be one of {sorted(MODEL_CLASSES)}, got {name!r}")
    return MODEL_CLASSES[name](config)


def save_model(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write ``model`` (architecture + weights) to ``path`` atomically; returns the path.

    The file appears complete or not at all: it is written to a temporary file in the same
    directory and moved over ``path`` with os.replace. ``model`` must be a torchliquid model with
    ``config()`` (CfC, LTC, CfCCell, WiredCfCCell, LTCCell).
    """
    config_fn = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not callable(config_fn):
        raise TypeError(
            f"model must be a torchliquid model with .config() (one of {sorted(MODEL_CLASSES)}), got "
            f"{type(model).__name__}; for other modules save model.state_dict() with torch.save"
        )
    from .. import __version__

    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torchliquid_version": __version__,
        "config_json": json.dumps(config_fn()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def load_model(path: Union[str, os.PathLike], map_location: Union[str, torch.device, None] = "cpu") -> nn.Module:
    """The model saved by ``save_model`` at ``path``, with its weights, dtype and wiring.

    Loaded with ``torch.load(weights_only=True)``. The model is on ``map_location`` (default CPU)
    in training mode, like a freshly built module; call ``.eval()`` for inference.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # corrupt, truncated or not a torch file
        raise ValueError(f"{path} is not a readable torchliquid model file: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a torchliquid model file (expected format {FORMAT!r}); "
            "a bare state_dict loads with model.load_state_dict(torch.load(path, weights_only=True))"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {payload.get('format_version')!r}, this torchliquid reads "
            f"{FORMAT_VERSION}; load it with the torchliquid version that wrote it "
            f"({payload.get('torchliquid_version')!r})"
        )
    model = model_from_config(json.loads(payload["config_json"]))
    state_dict = payload["state_dict"]
    floating = next((t for t in state_dict.values() if t.is_floating_point()), None)
    if floating is not None:
        model.to(dtype=floating.dtype, device=floating.device)
    model.load_state_dict(state_dict)
    return model
