"""How many parameters a model has, and how many of them a sparse wiring lets matter.

A wiring removes synapses by masking: ncps, and torchliquid for ncps compatibility, keep the full
(U, U) and (I, U) parameter tensors, so `numel` counts every masked-out entry too (field case
A18: a 70 %-sparse NCP looked as big as a dense one). Cells with masks list them through
`masked_parameters()`; an entry under a zero mask gets no gradient and changes no output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterCount:
    total: int  # trainable entries, as sum(p.numel())
    effective: int  # those a wiring mask does not zero out

    def __str__(self) -> str:
        if self.effective == self.total:
            return f"{self.total:,} trainable parameters"
        return f"{self.total:,} trainable parameters ({self.effective:,} effective: the wiring masks {self.masked:,} out)"

    @property
    def masked(self) -> int:
        return self.total - self.effective


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable parameter entries of `model`, total and effective (not masked out by a wiring).

    A parameter shared by several modules is counted once."""
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    masked = 0
    for module in model.modules():
        pairs = module.masked_parameters() if hasattr(module, "masked_parameters") else []
        for parameter, mask in pairs:
            if id(parameter) in trainable:
                masked += int((torch.broadcast_to(mask, parameter.shape) == 0).sum())
    total = sum(p.numel() for p in trainable.values())
    return ParameterCount(total, total - masked)
