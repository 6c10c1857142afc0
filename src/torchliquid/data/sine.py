"""Sine-cosine toy task: inputs sin(t), cos(t); target sin(2t); 48 points over [0, 3π].

One sequence ``(1, 48, 2) -> (1, 48, 1)``, used as train, val and test alike (the task checks
that a model can fit a curve, not that it generalises). No files, no normalisation.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from .base import Dataset, DatasetSplits, check_options, identity_stats, make_normalization, make_split
from .domains import FeatureDomain
from .frames import numeric, read_table, require_columns

N_POINTS = 48


class SineDataset(Dataset):
    name = "sine"
    task = "regression"
    seq_len = N_POINTS
    input_size = 2
    output_size = 1
    feature_names = ("sin_t", "cos_t")
    target_names = ("sin_2t",)
    feature_domains = MappingProxyType({name: FeatureDomain(-1, 1, meaning=f"{name[:3]}(t)")
                                        for name in ("sin_t", "cos_t")})
    raw_columns = ("t",)
    raw_input = ("a CSV with a header line and a column t (the time in radians, e.g. 48 points over [0, 3π] as in "
                 "training); each row becomes sin_t = sin(t), cos_t = cos(t); other columns are ignored")

    def times(self) -> np.ndarray:
        return np.linspace(0, 3 * np.pi, N_POINTS)

    def load(self, data_dir: str | Path | None = None, seed: int = 0, download: bool = True,
             max_windows: int | None = None, progress: bool = True) -> DatasetSplits:
        """The single generated sequence as train = val = test. Other arguments are accepted and ignored."""
        check_options(seed, max_windows)
        frame = pd.DataFrame({"t": self.times()})
        split = make_split(self.features_from_frame(frame), self.targets_from_frame(frame), np.array([0]), N_POINTS)
        normalization = make_normalization(self.name, identity_stats(self.feature_names),
                                           identity_stats(self.target_names), fitted_on="nothing (generated data)")
        return DatasetSplits(
            name=self.name, task=self.task, input_size=self.input_size, output_size=self.output_size,
            seq_len=self.seq_len, train=split, val=split, test=split, normalization=normalization,
            source="generated: t = numpy.linspace(0, 3*pi, 48); x = [sin t, cos t]; y = sin 2t",
            feature_names=self.feature_names, target_names=self.target_names,
        )

    def read_frame(self, path: str | Path) -> pd.DataFrame:
        """Read a CSV with a header line and a column ``t`` for :meth:`features_from_frame`."""
        frame = read_table(Path(path), what="a CSV with a header line and a column t (time in radians)",
                           header_lines=1)
        require_columns(frame, self.raw_columns, _HINT)
        return frame

    def features_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Column ``t`` -> ``[sin t, cos t]`` ``(R, 2)`` float32."""
        t = _times(frame)
        return np.stack([np.sin(t), np.cos(t)], axis=-1).astype(np.float32)

    def targets_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Column ``t`` -> ``sin 2t`` ``(R, 1)`` float32."""
        return np.sin(2 * _times(frame))[:, None].astype(np.float32)


_HINT = "Add a column t holding the time of each row in radians (the inputs are sin t and cos t)."


def _times(frame: pd.DataFrame) -> np.ndarray:
    require_columns(frame, ("t",), _HINT)
    return numeric(frame, ["t"], allow_nan=False)[:, 0]
