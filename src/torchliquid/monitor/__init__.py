"""Hardware monitoring (GPU via NVML, host via psutil) with a null fallback.

Start here: :class:`HardwareMonitor`. Backends degrade to "nothing, and here is why"
(:class:`NullBackend`) instead of raising, so callers never branch on the hardware.
"""

from .backends import HostBackend, NullBackend, NvmlBackend, open_gpu_backend
from .sampler import HardwareMonitor
from .summary import merge_rank_summaries, summarize, write_samples_csv

__all__ = [
    "HardwareMonitor",
    "HostBackend",
    "NullBackend",
    "NvmlBackend",
    "merge_rank_summaries",
    "open_gpu_backend",
    "summarize",
    "write_samples_csv",
]
