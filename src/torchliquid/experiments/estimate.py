"""How long will a cell take? Used by ``run_matrix(dry_run=True)``.

In order of trust:

1. ``previous run``: this exact cell finished before (same id) -> its wall time.
2. ``scaled from <cell>``: a finished cell with the same dataset, model and device -> its time
   per epoch (from the closest batch size) times this cell's epochs.
3. ``rough guess``: epochs x training windows x steps per window / a per-model step rate.
   The rates are anchored on the only published timings we have (HAR on the study's CPU node,
   batch 64, 50 epochs: CfC 115 s, LTC 1,460 s; 7,352 windows of 128 steps), so they say
   "minutes or hours", not more. GPUs are guessed as fast as the CPU, which is roughly what the
   study saw at these small models; N processes are guessed N times faster.
"""

from __future__ import annotations

from typing import Any, Mapping

from .spec import CellSpec

#: sequence steps (windows x steps per window) trained per second on one CPU process.
ROUGH_STEPS_PER_SECOND = {"cfc": 7352 * 128 * 50 / 115, "ltc": 7352 * 128 * 50 / 1460}
#: (training windows, steps per window) of the full datasets; see torchliquid.data. Power's size
#: depends on its preprocessing, which is not settled; it is guessed like traffic.
ROUGH_DATASET_SIZE = {"sine": (1, 48), "har": (7352, 128), "traffic": (33720, 32), "power": (33720, 32)}
#: process start-up, data loading and pre/post evaluation, per cell.
ROUGH_OVERHEAD_S = 10.0


def rough_guess(cell: CellSpec) -> float:
    """Seconds for ``cell`` from the fixed rates above (see the module docstring)."""
    windows, steps = ROUGH_DATASET_SIZE[cell.dataset]
    if cell.max_windows is not None:
        windows = min(windows, cell.max_windows)
    seconds = cell.epochs * windows * steps / ROUGH_STEPS_PER_SECOND[cell.model] / cell.nproc
    return ROUGH_OVERHEAD_S + seconds


def estimate_seconds(cell: CellSpec, done: Mapping[str, Mapping[str, Any]]) -> tuple[float, str]:
    """(seconds, source) for ``cell`` given the finished records of the store (cell_id -> record)."""
    rec = done.get(cell.cell_id)
    if rec is not None and rec.get("wall_seconds") is not None:
        return float(rec["wall_seconds"]), "previous run"
    best: tuple[int, Mapping[str, Any]] | None = None
    for other in done.values():
        c = other.get("cell") or {}
        if (c.get("dataset"), c.get("model"), c.get("device"), c.get("max_windows")) != \
                (cell.dataset, cell.model, cell.device, cell.max_windows):
            continue
        epochs = (other.get("result") or {}).get("epochs") or c.get("epochs")
        if not epochs or other.get("wall_seconds") is None:
            continue
        distance = abs(int(c.get("batch_size", 0)) - cell.batch_size)
        if best is None or distance < best[0]:
            best = (distance, other)
    if best is not None:
        other = best[1]
        epochs = (other.get("result") or {}).get("epochs") or other["cell"]["epochs"]
        per_epoch = float(other["wall_seconds"]) / float(epochs)
        return per_epoch * max(cell.epochs, 1), f"scaled from {other['cell_id']}"
    return rough_guess(cell), "rough guess"
