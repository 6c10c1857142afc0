"""torchliquid: fast Liquid Time-Constant (LTC) and Closed-form Continuous-time (CfC) networks."""

from __future__ import annotations

import re

__version__ = "0.1.0"

MIN_TORCH = (2, 2)


def _check_torch_version() -> None:
    """ImportError naming the minimum version on a torch too old for torchliquid (field case A15)."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "torchliquid needs PyTorch >= 2.2, which is not installed: see https://pytorch.org/get-started/"
        ) from error
    match = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    if match is None:
        return  # an unparseable local build: let it through rather than guess
    if (int(match.group(1)), int(match.group(2))) < MIN_TORCH:
        raise ImportError(
            f"torchliquid needs PyTorch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}, found {torch.__version__}; "
            "upgrade with: pip install --upgrade 'torch>=2.2'"
        )


_check_torch_version()
