"""UCI Human Activity Recognition Using Smartphones (Anguita et al., UCI id 240, CC BY 4.0).

561 precomputed features per 2.56 s frame, 6 activities (labels 1-6 -> class ids 0-5). As in
the study: sequences of 16 consecutive frames with a label per step; train windows start at
``range(0, 7352 - 16, 1)`` -> 7,336, of which ``int(0.1 n)`` = 733 (seeded permutation) are
held out for validation -> 6,603 / 733; test windows ``range(0, 2947 - 16, 8)`` -> 367. The
features are already scaled to [-1, 1] by UCI and are used unchanged, so the stored
normalisation is the identity.

Files (original names, each optionally ``.gz``) in ``DATA_DIR/har/UCI HAR Dataset/`` (or
``UCI_HAR_Dataset``): ``train/X_train.txt``, ``train/y_train.txt``, ``test/X_test.txt``,
``test/y_test.txt``; X is whitespace-separated floats, y one integer per line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from .base import (Dataset, DatasetError, DatasetSplits, Split, check_options, identity_stats, limit_windows,
                   make_normalization, make_split, min_windows, require_windows, split_indices, window_starts)
from .frames import numeric, read_table, row_label, show, where
from .sources import Search, cache_root, downloaded, install, note, open_raw, sha256_of, zip_member

FOLDER = "UCI HAR Dataset"
ALIASES = (FOLDER, "UCI_HAR_Dataset")
X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = "train/X_train.txt", "train/y_train.txt", "test/X_test.txt", "test/y_test.txt"
FILES = (X_TRAIN, Y_TRAIN, X_TEST, Y_TEST)
N_FEATURES = 561
CLASS_NAMES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
URL = "https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip"
PAGE = "https://archive.ics.uci.edu/dataset/240/human+activity+recognition+using+smartphones"
# sha256 of the UCI files (shared data README §3a); X has no established hash, only its shape.
KNOWN_SHA256 = {
    Y_TRAIN: "415b3357e2e2d5e70a45c781947c6bdd80e0410a579d862eedcd6bbce3c694ef",
    Y_TEST: "2a94cb53ca46b956c1b2aebd4a09a72badd8a8e9ea9cdfe9f31b3306a08666bb",
    "train/subject_train.txt": "66e1e2fbe9b396fa5155f531dc3348c803f503be663e2318772d49947db9153a",
    "test/subject_test.txt": "63b8c577f4a85431c06bd87f6384608c90a9f72f05c7956dd21255dc63515c07",
}
X_ROWS = {X_TRAIN: 7352, X_TEST: 2947}
_FIX = f"Use the original files from {PAGE} (folder '{FOLDER}')."


class HarDataset(Dataset):
    name = "har"
    task = "classification"
    seq_len = 16
    input_size = N_FEATURES
    output_size = len(CLASS_NAMES)
    # features.txt repeats 42 names (the bandsEnergy quirk), so features are identified by number.
    feature_names = tuple(f"feature_{i}" for i in range(1, N_FEATURES + 1))
    target_names = CLASS_NAMES
    raw_input = (f"an X file in the UCI layout of train/X_train.txt or test/X_test.txt: no header, one 2.56 s frame "
                 f"per line, {N_FEATURES} whitespace-separated feature values (already scaled to [-1, 1] by UCI)")
    train_stride = 1
    test_stride = 8
    val_fraction = 0.1

    def load(self, data_dir: str | Path | None = None, seed: int = 0, download: bool = True,
             max_windows: int | None = None, progress: bool = True) -> DatasetSplits:
        """Windows of the UCI HAR files found in ``data_dir``, the cache, or downloaded from UCI."""
        check_options(seed, max_windows)
        paths = self.locate(data_dir, download, progress)
        note(progress, f"reading {paths[X_TRAIN].parent.parent}")
        x_train, y_train = self._pair(paths[X_TRAIN], paths[Y_TRAIN])
        x_test, y_test = self._pair(paths[X_TEST], paths[Y_TEST])

        train_starts = window_starts(len(y_train), self.seq_len, self.train_stride)
        require_windows(len(train_starts), min_windows(self.val_fraction), str(paths[Y_TRAIN]), len(y_train),
                        self.seq_len)
        test_starts = window_starts(len(y_test), self.seq_len, self.test_stride)
        require_windows(len(test_starts), 1, str(paths[Y_TEST]), len(y_test), self.seq_len)
        train_idx, val_idx, _ = split_indices(len(train_starts), self.val_fraction, 0.0, seed)

        def split(x: np.ndarray, y: np.ndarray, starts: np.ndarray, stream: int) -> Split:
            return make_split(x, y, starts[limit_windows(np.arange(len(starts)), max_windows, seed, stream)],
                              self.seq_len)

        normalization = make_normalization(
            self.name, identity_stats(self.feature_names), None, classes=list(CLASS_NAMES),
            fitted_on="nothing: UCI already scaled the features to [-1, 1] and the study uses them unchanged",
        )
        return DatasetSplits(
            name=self.name, task=self.task, input_size=self.input_size, output_size=self.output_size,
            seq_len=self.seq_len, normalization=normalization,
            train=split(x_train, y_train, train_starts[train_idx], 0),
            val=split(x_train, y_train, train_starts[val_idx], 1),
            test=split(x_test, y_test, test_starts, 2),
            source="; ".join(f"{paths[rel]} (content sha256 {sha256_of(paths[rel])})" for rel in FILES),
            feature_names=self.feature_names, target_names=self.target_names,
        )

    def _pair(self, x_path: Path, y_path: Path) -> tuple[np.ndarray, np.ndarray]:
        x = self.features_from_frame(read_features(x_path))
        y = self.targets_from_frame(read_labels(y_path))
        if len(x) != len(y):
            raise DatasetError(f"{x_path} has {len(x):,} rows but {y_path} has {len(y):,} labels; they must match "
                               f"line for line. {_FIX}")
        return x, y

    def locate(self, data_dir: str | Path | None, download: bool, progress: bool) -> dict[str, Path]:
        """Paths of the four files: ``data_dir``, then the cache, then a verified UCI download."""
        search = Search(self.name, "har", aliases=ALIASES)
        found = search.find(FILES, data_dir)
        if found:
            return found
        fetched = search.try_download(download, URL, lambda: self.download(progress), data_dir)
        if fetched is not None:
            return fetched
        raise search.error(
            f"unpack the UCI zip from {PAGE} so that DATA_DIR/har/{FOLDER}/train/X_train.txt exists and pass "
            f"data_dir=DATA_DIR (--data-dir), or unpack it into {cache_root() / 'har'}, or retry with download "
            "enabled and network access."
        )

    def download(self, progress: bool) -> dict[str, Path]:
        """Fetch UCI zip 240 (an outer zip that may hold ``UCI HAR Dataset.zip``) into the cache.

        All files are extracted to a staging folder and verified (y/subject sha256, X shapes)
        before any is moved into ``cache/har/UCI HAR Dataset``.
        """
        final = cache_root() / "har" / FOLDER
        wanted = FILES + tuple(k for k in KNOWN_SHA256 if k not in FILES)
        with contextlib.ExitStack() as stack:
            outer = stack.enter_context(zipfile.ZipFile(stack.enter_context(downloaded(URL, final.parent, progress))))
            archive = outer
            inner = zip_member(outer.namelist(), f"{FOLDER}.zip")
            if inner is not None:
                inner_copy = stack.enter_context(tempfile.TemporaryFile(dir=final.parent))
                with outer.open(inner) as stream:
                    shutil.copyfileobj(stream, inner_copy)
                archive = stack.enter_context(zipfile.ZipFile(inner_copy))
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=final.parent, prefix=".staging-")))
            for rel in wanted:
                member = zip_member(archive.namelist(), f"{FOLDER}/{rel}")
                if member is None:
                    raise DatasetError(f"{URL}: the archive has no '{FOLDER}/{rel}'. {_FIX}")
                with archive.open(member) as stream:
                    install(stream, staging / rel, sha256=KNOWN_SHA256.get(rel), origin=f"{URL} member {member}",
                            check=(lambda tmp, rel=rel: _check_x_shape(tmp, rel)) if rel in X_ROWS else None)
            for rel in wanted:
                (final / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, final / rel)
        return {rel: final / rel for rel in FILES}

    def read_frame(self, path: str | Path) -> pd.DataFrame:
        """Read an X file (``X_train.txt``/``X_test.txt`` layout) for :meth:`features_from_frame`."""
        return read_features(Path(path))

    def features_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows of 561 feature values -> ``(R, 561)`` float32 (used unchanged by the study)."""
        if frame.shape[1] != N_FEATURES:
            raise DatasetError(f"{where(frame)}: expected {N_FEATURES} values per line, found {frame.shape[1]}. {_FIX}")
        return numeric(frame, list(frame.columns), allow_nan=False).astype(np.float32)

    def targets_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """A single column of activity ids 1-6 -> ``(R,)`` int64 class ids 0-5."""
        if frame.shape[1] != 1:
            raise DatasetError(f"{where(frame)}: expected one activity id per line, found {frame.shape[1]} "
                               f"values per line. {_FIX}")
        labels = numeric(frame, list(frame.columns), allow_nan=False)[:, 0]
        bad = (labels != np.round(labels)) | (labels < 1) | (labels > len(CLASS_NAMES))
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(f"{where(frame)}: {row_label(frame, i)}: expected an activity id 1-{len(CLASS_NAMES)}, "
                               f"found {show(frame.iloc[i, 0])}. {_FIX}")
        return labels.astype(np.int64) - 1


def read_features(path: Path) -> pd.DataFrame:
    """An X file: one frame per line, 561 whitespace-separated floats."""
    frame = read_table(path, what=f"{N_FEATURES} whitespace-separated numbers per line", header_lines=0,
                       sep=r"\s+", header=None)
    short = frame.isna().any(axis=1).to_numpy()
    if frame.shape[1] == N_FEATURES and short.any():
        i = int(np.argmax(short))
        count = int(frame.iloc[i].notna().sum())
        raise DatasetError(f"{path}: {row_label(frame, i)} has {count} values, expected {N_FEATURES}. {_FIX}")
    return frame


def read_labels(path: Path) -> pd.DataFrame:
    """A y file: one activity id (1-6) per line."""
    return read_table(path, what="one activity id (1-6) per line", header_lines=0, sep=r"\s+", header=None)


def _check_x_shape(path: Path, rel: str) -> None:
    with open_raw(path) as f:
        first = f.readline()
        rows = 1 + sum(1 for _ in f) if first else 0
    fields = len(first.split())
    if (rows, fields) != (X_ROWS[rel], N_FEATURES):
        raise DatasetError(f"{URL}: {rel} has shape {rows}x{fields}, expected {X_ROWS[rel]}x{N_FEATURES}. Nothing "
                           f"was written. {_FIX}")
