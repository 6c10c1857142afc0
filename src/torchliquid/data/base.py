"""The contract every dataset honours: windows, seeded splits, train-only normalisation.

Shape legend (used in names and comments throughout ``torchliquid.data``):

    R  raw rows (time steps of the source file)     N  windows in a split
    T  steps per window (``seq_len``)               I  input features
    O  regression targets per step                  C  classes (classification)

Pipeline shared by the windowed datasets (traffic, power, HAR):

1. raw rows ``(R, I)`` / ``(R, O)`` are derived from the source file;
2. window starts are ``range(0, R - T, stride)`` -- the study's convention, which never uses the
   last possible window (``R - T`` itself);
3. windows are split by a seeded permutation (:func:`split_indices`);
4. normalisation statistics are fitted on the distinct raw rows covered by *train* windows only
   (:func:`rows_covered`), applied to every row, and stored as a JSON-serialisable dict;
5. with ``max_windows``, each split keeps a seeded subset (:func:`limit_windows`).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .domains import FeatureDomain

TASKS = ("classification", "regression")
NORMALIZATION_FORMAT = "torchliquid.normalization/1"


class DatasetError(ValueError):
    """Raw data is missing, malformed or does not match its checksum.

    Messages name the file, the column/row, what was expected, what arrived, and a fix.
    """


class MissingColumnsError(DatasetError):
    """A table lacks columns a dataset needs; ``missing`` and ``found`` list the column names."""

    def __init__(self, message: str, missing: list[str], found: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.found = found


@dataclass(frozen=True, eq=False)
class Split:
    """One split of windows.

    ``x``: float32 ``(N, T, I)``. ``y``: float32 ``(N, T, O)`` (regression) or int64 ``(N, T)``
    class ids (classification). ``starts``: int64 ``(N,)`` row of the source file where each
    window begins (for provenance and overlap checks; ``None`` when not applicable).
    """

    x: torch.Tensor
    y: torch.Tensor
    starts: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.float32 or self.x.ndim != 3:
            raise TypeError(f"Split.x must be a float32 tensor (N, T, I); got {_describe(self.x)}")
        if not isinstance(self.y, torch.Tensor) or self.y.shape[:2] != self.x.shape[:2]:
            raise TypeError(
                f"Split.y must be a tensor whose first two dims (N, T) equal x's {tuple(self.x.shape[:2])}; "
                f"got {_describe(self.y)}"
            )
        if self.starts is not None and tuple(self.starts.shape) != (self.x.shape[0],):
            raise TypeError(f"Split.starts must have shape ({self.x.shape[0]},); got {tuple(self.starts.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset ready for training: three splits plus what inference needs to reproduce them.

    ``normalization`` holds statistics fitted on the train split only (see
    :func:`apply_normalization`); ``source`` says which file or generator the data came from,
    including its sha256.
    """

    name: str
    task: str
    input_size: int
    output_size: int
    seq_len: int
    train: Split
    val: Split
    test: Split
    normalization: dict[str, Any]
    source: str
    feature_names: tuple[str, ...] = ()
    target_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {set(TASKS)}; got {self.task!r}")
        for split_name, split in self.splits().items():
            x_want = (self.seq_len, self.input_size)
            if tuple(split.x.shape[1:]) != x_want:
                raise ValueError(
                    f"{self.name}.{split_name}.x must be (N, {x_want[0]}, {x_want[1]}); got {tuple(split.x.shape)}"
                )
            if self.task == "regression":
                ok = split.y.dtype == torch.float32 and tuple(split.y.shape[1:]) == (self.seq_len, self.output_size)
                want = f"float32 (N, {self.seq_len}, {self.output_size})"
            else:
                ok = split.y.dtype == torch.int64 and split.y.ndim == 2
                ok = ok and (len(split) == 0 or (int(split.y.min()) >= 0 and int(split.y.max()) < self.output_size))
                want = f"int64 (N, {self.seq_len}) class ids in [0, {self.output_size})"
            if not ok:
                raise ValueError(f"{self.name}.{split_name}.y must be {want}; got {_describe(split.y)}")
        json.dumps(self.normalization)  # fail here, not when the trainer saves the run

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def describe(self) -> str:
        """One line: name, task, split sizes and tensor shapes."""
        y_shape = f"(N, {self.seq_len}, {self.output_size}) float32" if self.task == "regression" else (
            f"(N, {self.seq_len}) int64, {self.output_size} classes"
        )
        return (
            f"{self.name} ({self.task}): train {len(self.train):,} / val {len(self.val):,} / "
            f"test {len(self.test):,} windows; x (N, {self.seq_len}, {self.input_size}) float32 -> y {y_shape}"
        )


class Dataset(abc.ABC):
    """A registered dataset: static facts, ``load``, and the per-row preprocessing.

    ``features_from_frame`` / ``targets_from_frame`` turn raw rows (as read from the original
    file format) into un-normalised ``(R, I)`` / ``(R, O)`` arrays; :func:`apply_normalization`
    with the saved ``DatasetSplits.normalization`` then gives exactly what the model saw.

    ``raw_columns`` are the raw columns ``features_from_frame`` needs (empty for a headerless
    format) and ``raw_input`` says in words what a raw file for prediction must look like.
    """

    name: str
    task: str
    seq_len: int
    input_size: int
    output_size: int
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    raw_columns: tuple[str, ...] = ()
    raw_input: str = ""
    feature_domains: Mapping[str, FeatureDomain] = MappingProxyType({})  # checked on hand-made rows

    @abc.abstractmethod
    def load(
        self,
        data_dir: str | Path | None = None,
        seed: int = 0,
        download: bool = True,
        max_windows: int | None = None,
        progress: bool = True,
    ) -> DatasetSplits:
        """Find (or download) the raw data and return the study's splits."""

    @abc.abstractmethod
    def features_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> un-normalised inputs ``(R, I)`` float32."""

    @abc.abstractmethod
    def targets_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> un-normalised targets ``(R, O)`` float32, or ``(R,)`` int64 class ids."""

    def __repr__(self) -> str:
        return f"<dataset {self.name!r}: {self.task}, seq_len={self.seq_len}, {self.input_size} -> {self.output_size}>"


# --------------------------------------------------------------------------- windows and splits


def window_starts(n_rows: int, seq_len: int, stride: int) -> np.ndarray:
    """Window start rows ``range(0, n_rows - seq_len, stride)`` as int64.

    This is the study's convention (``cut_in_sequences`` in the LTC/CfC experiment scripts):
    the final full window, starting at ``n_rows - seq_len``, is never used. Kept on purpose so
    window counts match the paper (e.g. traffic 48,204 rows -> 48,172 windows).
    """
    return np.arange(0, max(n_rows - seq_len, 0), stride, dtype=np.int64)


def split_indices(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split of ``n`` windows into ``(train, val, test)`` index arrays.

    ``perm = numpy.random.default_rng(seed).permutation(n)``; the first ``int(val_fraction*n)``
    go to val, the next ``int(test_fraction*n)`` to test, the rest to train. Each returned array
    is sorted so every split stays in time order.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(val_fraction * n), int(test_fraction * n)
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    return np.sort(train), np.sort(val), np.sort(test)


def limit_windows(indices: np.ndarray, max_windows: int | None, seed: int, stream: int) -> np.ndarray:
    """Keep at most ``max_windows`` of ``indices``: a seeded subset, returned sorted.

    The subset is drawn with ``default_rng([seed, stream])`` (``stream`` = 0/1/2 for
    train/val/test) so it depends on nothing but the seed and the split.
    """
    if max_windows is None or len(indices) <= max_windows:
        return indices
    keep = np.random.default_rng([seed, stream]).choice(len(indices), size=max_windows, replace=False)
    return indices[np.sort(keep)]


def check_options(seed: int, max_windows: int | None) -> None:
    """Validate the ``load`` arguments shared by every dataset."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    bad_type = isinstance(max_windows, bool) or not isinstance(max_windows, int)
    if max_windows is not None and (bad_type or max_windows < 1):
        raise ValueError(f"max_windows must be None or a positive int; got {max_windows!r}")


def make_windows(rows: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut ``rows`` ``(R, F)`` (or ``(R,)``) into windows ``(N, T, F)`` (or ``(N, T)``) at ``starts``."""
    view = np.lib.stride_tricks.sliding_window_view(rows, seq_len, axis=0)  # (R-T+1, [F,] T)
    windows = view[starts]
    return np.ascontiguousarray(windows if rows.ndim == 1 else windows.swapaxes(1, 2))


def rows_covered(starts: np.ndarray, seq_len: int, n_rows: int) -> np.ndarray:
    """Boolean mask ``(R,)`` of the rows that lie inside at least one window."""
    mask = np.zeros(n_rows, dtype=bool)
    mask[(starts[:, None] + np.arange(seq_len)).ravel()] = True
    return mask


def make_split(x_rows: np.ndarray, y_rows: np.ndarray, starts: np.ndarray, seq_len: int) -> Split:
    """Windows of already-normalised rows -> a :class:`Split` of tensors."""
    y_windows = make_windows(y_rows, starts, seq_len)
    y = torch.from_numpy(y_windows.astype(np.int64 if y_rows.ndim == 1 else np.float32, copy=False))
    return Split(
        x=torch.from_numpy(make_windows(x_rows, starts, seq_len).astype(np.float32, copy=False)),
        y=y,
        starts=torch.from_numpy(starts.astype(np.int64, copy=False)),
    )


def require_windows(n_windows: int, minimum: int, where: str, n_rows: int, seq_len: int) -> None:
    """Raise when a file is too short to give every split at least one window."""
    if n_windows < minimum:
        raise DatasetError(
            f"{where}: {n_rows:,} rows give only {n_windows} windows of {seq_len} steps, but at least "
            f"{minimum} are needed so that train, val and test are all non-empty. Provide the complete file."
        )


def min_windows(*fractions: float) -> int:
    """Smallest window count for which every non-zero fraction, and train, get a window."""
    n = 1
    while any(f > 0 and int(f * n) < 1 for f in fractions) or n - sum(int(f * n) for f in fractions) < 1:
        n += 1
    return n


# --------------------------------------------------------------------------- normalisation


def fit_stats(rows: np.ndarray, names: tuple[str, ...], *, center: Any = True, scale: Any = True) -> dict[str, Any]:
    """Mean/std per column of ``rows`` ``(R, F)`` as a JSON-ready section ``{names, mean, std}``.

    ``center``/``scale`` are booleans or per-column boolean sequences; a column that is not
    centred gets mean 0, one not scaled gets std 1. A constant column (std 0) gets std 1 so that
    normalising never divides by zero (the column then becomes 0 after centring).
    """
    rows64 = rows.astype(np.float64, copy=False)
    n_cols = rows64.shape[1]
    center_mask = np.broadcast_to(np.asarray(center, dtype=bool), (n_cols,))
    scale_mask = np.broadcast_to(np.asarray(scale, dtype=bool), (n_cols,))
    mean = np.where(center_mask, rows64.mean(axis=0), 0.0)
    std = rows64.std(axis=0)
    std = np.where(scale_mask & (std > 0), std, 1.0)
    return {"names": list(names), "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def identity_stats(names: tuple[str, ...]) -> dict[str, Any]:
    """A section that leaves values unchanged (mean 0, std 1)."""
    return {"names": list(names), "mean": [0.0] * len(names), "std": [1.0] * len(names)}


def make_normalization(dataset: str, inputs: dict[str, Any], target: dict[str, Any] | None, fitted_on: str,
                       classes: list[str] | None = None) -> dict[str, Any]:
    """Assemble the JSON-serialisable ``DatasetSplits.normalization`` dict."""
    out: dict[str, Any] = {"format": NORMALIZATION_FORMAT, "dataset": dataset, "fitted_on": fitted_on,
                           "inputs": inputs, "target": target}
    if classes is not None:
        out["classes"] = list(classes)
    return out


def _section(stats: Mapping[str, Any], part: str) -> tuple[np.ndarray, np.ndarray]:
    if part not in ("inputs", "target"):
        raise ValueError(f"part must be one of {{'inputs', 'target'}}; got {part!r}")
    section = stats.get(part) if isinstance(stats, Mapping) else None
    if not isinstance(section, Mapping) or "mean" not in section or "std" not in section:
        raise DatasetError(
            f"normalization[{part!r}] must be a dict with 'mean' and 'std' lists; got {section!r}. "
            "Pass the DatasetSplits.normalization dict saved with the run (classification targets are not normalised)."
        )
    return np.asarray(section["mean"], dtype=np.float64), np.asarray(section["std"], dtype=np.float64)


def apply_normalization(array: Any, stats: Mapping[str, Any], part: str = "inputs") -> Any:
    """``(array - mean) / std`` over the last axis with the saved ``stats[part]``.

    ``array``: numpy array or torch tensor ``(..., F)``; returns float32 of the same kind (a
    tensor keeps its device). ``stats``: a ``DatasetSplits.normalization`` dict.
    """
    mean, std = _section(stats, part)
    _check_width(array, mean, part)
    if isinstance(array, torch.Tensor):
        out = array.to(torch.float32)
        return (out - torch.as_tensor(mean, dtype=torch.float32, device=out.device)) / torch.as_tensor(
            std, dtype=torch.float32, device=out.device)
    return ((np.asarray(array, dtype=np.float64) - mean) / std).astype(np.float32)


def invert_normalization(array: Any, stats: Mapping[str, Any], part: str = "target") -> Any:
    """Inverse of :func:`apply_normalization`: ``array * std + mean`` (e.g. predictions -> raw units)."""
    mean, std = _section(stats, part)
    _check_width(array, mean, part)
    if isinstance(array, torch.Tensor):
        out = array.to(torch.float32)
        return out * torch.as_tensor(std, dtype=torch.float32, device=out.device) + torch.as_tensor(
            mean, dtype=torch.float32, device=out.device)
    return (np.asarray(array, dtype=np.float64) * std + mean).astype(np.float32)


def _check_width(array: Any, mean: np.ndarray, part: str) -> None:
    width = array.shape[-1] if getattr(array, "ndim", 0) else None
    if width != len(mean):
        raise DatasetError(
            f"apply/invert normalization: the last axis of the array must have {len(mean)} {part} "
            f"features; got shape {tuple(getattr(array, 'shape', ()))}. Check that the stats belong to this dataset."
        )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# --------------------------------------------------------------------------- assembly


def windowed_regression(
    dataset: Dataset,
    x_rows: np.ndarray,
    y_rows: np.ndarray,
    *,
    stride: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_windows: int | None,
    source: str,
    where: str,
    input_center: Any = True,
    input_scale: Any = True,
) -> DatasetSplits:
    """Steps 2-5 of the module pipeline for a single time series (traffic, power).

    ``x_rows`` ``(R, I)`` and ``y_rows`` ``(R, O)`` are un-normalised. Statistics come from the
    distinct rows covered by train windows; targets are always z-scored, inputs as requested.
    """
    n_rows, seq_len = len(x_rows), dataset.seq_len
    starts = window_starts(n_rows, seq_len, stride)
    require_windows(len(starts), min_windows(val_fraction, test_fraction), where, n_rows, seq_len)
    parts = dict(zip(("train", "val", "test"), split_indices(len(starts), val_fraction, test_fraction, seed)))
    covered = rows_covered(starts[parts["train"]], seq_len, n_rows)
    normalization = make_normalization(
        dataset.name,
        fit_stats(x_rows[covered], dataset.feature_names, center=input_center, scale=input_scale),
        fit_stats(y_rows[covered], dataset.target_names),
        fitted_on=f"the {int(covered.sum()):,} distinct rows covered by the {len(parts['train']):,} train windows",
    )
    x_norm = apply_normalization(x_rows, normalization, "inputs")  # (R, I)
    y_norm = apply_normalization(y_rows, normalization, "target")  # (R, O)
    splits = {
        name: make_split(x_norm, y_norm, starts[limit_windows(idx, max_windows, seed, stream)], seq_len)
        for stream, (name, idx) in enumerate(parts.items())
    }
    return DatasetSplits(
        name=dataset.name, task=dataset.task, input_size=dataset.input_size, output_size=dataset.output_size,
        seq_len=seq_len, normalization=normalization, source=source, feature_names=dataset.feature_names,
        target_names=dataset.target_names, **splits,
    )
