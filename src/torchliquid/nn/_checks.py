"""Constructor argument checks shared by the cells and layers (field case A12).

Every check raises TypeError for a wrong type and ValueError for a wrong value, naming the
argument, what was expected and what arrived.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

V = TypeVar("V")


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= minimum (bools are rejected: True is not a size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_optional_int(name: str, value: Any, minimum: int) -> int | None:
    return None if value is None else check_int(name, value, minimum)


def check_float(name: str, value: Any, low: float, high: float | None = None, *, high_open: bool = True) -> float:
    """``value`` as a float in [low, high) (or [low, high] with high_open=False; no upper bound if None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    above = high is not None and (value >= high if high_open else value > high)
    if not value >= low or above:  # `not >=` also catches NaN
        bound = f">= {low}" if high is None else f"in [{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: Any, registry: Mapping[Any, V]) -> V:
    """The registry entry for ``value``; unknown keys get a "must be one of {...}" ValueError."""
    try:
        return registry[value]
    except (KeyError, TypeError):  # TypeError: an unhashable value
        allowed = ", ".join(repr(key) for key in registry)
        raise ValueError(f"{name} must be one of {{{allowed}}}, got {value!r}") from None
