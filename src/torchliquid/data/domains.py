"""What values a dataset's features can take, so that a hand-made feature row is checked.

`predict` on a raw file computes the features itself, but `stream`, `.npy` windows and the Python
API take feature rows a user built; a weekday of 9, an hour encoded as 0-23 instead of
sin(hour·π/24) or a temperature in a clouds column are accepted by the model and give a number
that means nothing. Datasets declare their features' domains here; infer checks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

TOLERANCE = 1e-6  # values written as text round-trip a few ulps off a bound


@dataclass(frozen=True)
class FeatureDomain:
    low: float = -math.inf
    high: float = math.inf
    integral: bool = False
    meaning: str = ""  # what the feature is, for the error message

    def describe(self) -> str:
        kind = "an integer" if self.integral else "a number"
        if math.isinf(self.low) and math.isinf(self.high):
            bound = ""
        elif math.isinf(self.high):
            bound = f" >= {self.low:g}"
        elif math.isinf(self.low):
            bound = f" <= {self.high:g}"
        else:
            bound = f" from {self.low:g} to {self.high:g}"
        return f"{kind}{bound}" + (f" ({self.meaning})" if self.meaning else "")

    def violated(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of the values outside the domain."""
        bad = (values < self.low - TOLERANCE) | (values > self.high + TOLERANCE)
        if self.integral:
            bad |= np.abs(values - np.round(values)) > TOLERANCE
        return bad


def first_violation(array_NTI: np.ndarray, names: Sequence[str],
                    domains: Mapping[str, FeatureDomain]) -> Optional[tuple[int, int, int, FeatureDomain]]:
    """(window, step, feature index, domain) of the first value outside its feature's domain."""
    for i, name in enumerate(names):
        domain = domains.get(name)
        if domain is None:
            continue
        bad = domain.violated(array_NTI[..., i])
        if bad.any():
            w, t = (int(k) for k in np.argwhere(bad)[0])
            return w, t, i, domain
    return None
