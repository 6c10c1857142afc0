"""Fault injection for the crash-recovery tests: a process that SIGKILLs itself at a given step.

Hidden on purpose (environment variables, no CLI flag): it exists so tests can crash a real run
at a known point, the way a node failure or an OOM kill would, with no chance to clean up::

    TORCHLIQUID_FAULT_KILL_AT_STEP=8 torchliquid train ...        # dies after global step 8
    TORCHLIQUID_FAULT_RANK=1                                       # only rank 1 dies (default: all)

The kill happens after everything the step does, including a checkpoint due at that step, and
only on the first attempt of a job (``TORCHELASTIC_RESTART_COUNT`` 0 or unset), so the run that
torchrun restarts, or that ``--resume`` continues, gets past the step.
"""

from __future__ import annotations

import os
import signal

from torchliquid import runtime

KILL_AT_STEP_ENV = "TORCHLIQUID_FAULT_KILL_AT_STEP"
RANK_ENV = "TORCHLIQUID_FAULT_RANK"


class FaultInjector:
    """``after_step(step)`` kills this process at the configured step; a no-op when unset."""

    def __init__(self) -> None:
        raw, rank = os.environ.get(KILL_AT_STEP_ENV), os.environ.get(RANK_ENV)
        self.step: int | None = None
        if raw and runtime.restart_count() == 0:
            try:
                self.step = int(raw)
                target = None if rank in (None, "") else int(rank)
            except ValueError:
                raise ValueError(f"{KILL_AT_STEP_ENV} and {RANK_ENV} must be integers, got "
                                 f"{raw!r} and {rank!r}; unset them") from None
            if target is not None and target != runtime.rank():
                self.step = None

    def after_step(self, step: int) -> None:
        if self.step is not None and step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
