"""The ``DATASETS`` registry and ``load_dataset``, the one entry point the CLI calls."""

from __future__ import annotations

from pathlib import Path

from .base import Dataset, DatasetSplits
from .har import HarDataset
from .power import PowerDataset
from .sine import SineDataset
from .traffic import TrafficDataset

DATASETS: dict[str, Dataset] = {d.name: d for d in (SineDataset(), HarDataset(), TrafficDataset(), PowerDataset())}


def get_dataset(name: str) -> Dataset:
    """The registered dataset called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}: must be one of {set(sorted(DATASETS))}") from None


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0, download: bool = True,
                 max_windows: int | None = None, progress: bool = True) -> DatasetSplits:
    """Load one of the study's datasets as train/val/test windows.

    Args:
        name: a key of :data:`DATASETS` (``sine``, ``har``, ``traffic``, ``power``).
        data_dir: folder with one sub-folder per dataset (``traffic/``, ``power/``, ``har/``)
            holding the original UCI file names, optionally ``.gz``; searched before the cache
            (``$TORCHLIQUID_DATA`` or ``~/.cache/torchliquid``).
        seed: seeds the train/val/test permutation and the ``max_windows`` subset.
        download: fetch from UCI into the cache when no local copy is found.
        max_windows: keep at most this many windows per split (a seeded subset, in time order),
            for quick demos and tests. Normalisation statistics are still fitted on the full
            train split, so they match a full run.
        progress: print what is read/downloaded to stderr.

    Raises:
        ValueError: unknown ``name`` or bad ``max_windows``.
        DatasetError: data missing, malformed, or failing its checksum (the message lists
            every place looked at and how to provide the file).
    """
    return get_dataset(name).load(data_dir=data_dir, seed=seed, download=download, max_windows=max_windows,
                                  progress=progress)
