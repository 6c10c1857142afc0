"""The study's experiment matrix as data: specs -> isolated runs -> a resumable store -> reports.

>>> from torchliquid.experiments import run_matrix, write_report
>>> run = run_matrix("configs/quick.toml", "results/quick", dry_run=True)   # doctest: +SKIP
>>> print(run.summary())                                                    # doctest: +SKIP
>>> write_report("results/quick", html=True)                                # doctest: +SKIP
"""

from .runner import MatrixRun, PlannedCell, run_matrix, train_command
from .spec import CellSpec, DeviceSpec, MatrixSpec, load_matrix, parse_matrix
from .store import ResultStore

__all__ = [
    "CellSpec",
    "DeviceSpec",
    "MatrixRun",
    "MatrixSpec",
    "PlannedCell",
    "ResultStore",
    "load_matrix",
    "parse_matrix",
    "run_matrix",
    "train_command",
]
