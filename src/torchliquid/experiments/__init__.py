"""The study's experiment matrix as data: specs -> isolated runs -> a resumable store -> reports.

>>> from torchliquid.experiments import run_matrix, write_report
>>> run = run_matrix("configs/quick.toml", "results/quick", dry_run=True)   # doctest: +SKIP
>>> print(run.summary())                                                    # doctest: +SKIP
>>> write_report("results/quick", html=True)                                # doctest: +SKIP
"""

from .report import compare_matrices, write_report
from .runner import MatrixRun, PlannedCell, run_matrix, train_command
from .spec import CellSpec, DeviceSpec, MatrixSpec, load_matrix, parse_matrix
from .store import ResultStore
from .tables import SpeedupTable, speedup_table

__all__ = [
    "CellSpec",
    "DeviceSpec",
    "MatrixRun",
    "MatrixSpec",
    "PlannedCell",
    "ResultStore",
    "SpeedupTable",
    "compare_matrices",
    "load_matrix",
    "parse_matrix",
    "run_matrix",
    "speedup_table",
    "train_command",
    "write_report",
]
