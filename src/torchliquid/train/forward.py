"""Running a model the way training and evaluation both do: its output, under the run's precision.

The trainer accepts any module mapping (B, T, I) to (B, T, O|C), or to a tuple whose first item
is (the recurrent layers return ``(output, state)``); :func:`model_output` hides the difference.
:func:`autocast` turns ``TrainConfig.precision`` into the context the forward pass runs under.
"""

from __future__ import annotations

import contextlib

import torch


def model_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` (B, T, I); models that return ``(output, state)`` give ``output``."""
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def autocast(device: torch.device, precision: str,
             cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision="bf16"``; fp32 needs no context."""
    if precision == "bf16":  # a CUDA graph capture needs the weight-cast cache off
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              cache_enabled=cache_enabled)
    return contextlib.nullcontext()
