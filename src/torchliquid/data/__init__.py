"""The four datasets of the LTC/CfC study (sine, UCI HAR, Metro traffic, household power).

>>> from torchliquid.data import load_dataset
>>> splits = load_dataset("sine")
>>> splits.describe()
'sine (regression): train 1 / val 1 / test 1 windows; x (N, 48, 2) float32 -> y (N, 48, 1) float32'
"""

from .base import (
    Dataset,
    DatasetError,
    DatasetSplits,
    Split,
    apply_normalization,
    invert_normalization,
)
from .registry import DATASETS, get_dataset, load_dataset

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "DatasetSplits",
    "Split",
    "apply_normalization",
    "get_dataset",
    "invert_normalization",
    "load_dataset",
]
