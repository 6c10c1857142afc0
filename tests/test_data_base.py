"""The shared data contract: windows, seeded splits, train-only statistics, the registry, sine.

Start here for ``torchliquid.data``: every windowed dataset is built from these pieces, so a
wrong count or a leaking statistic shows up here before it shows up in a dataset test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchliquid.data import (
    DATASETS,
    DatasetError,
    DatasetSplits,
    Split,
    apply_normalization,
    invert_normalization,
    load_dataset,
)
from torchliquid.data.base import (
    fit_stats,
    limit_windows,
    make_windows,
    rows_covered,
    split_indices,
    window_starts,
)


# (rows, seq_len, stride, expected count) -- counts from the study (shared README thesis checks)
@pytest.mark.parametrize(
    "rows, seq_len, stride, expected",
    [
        (48_204, 32, 1, 48_172),  # traffic
        (2_075_259, 32, 32, 64_851),  # power
        # power, first 100k rows: 99,968 is a multiple of 32, so the would-be 3,125th window is the
        # excluded last one (the brief said 3,125; range(0, 100000 - 32, 32) has 3,124 elements)
        (100_000, 32, 32, 3_124),
        (7_352, 16, 1, 7_336),  # HAR train
        (2_947, 16, 8, 367),  # HAR test
        (32, 32, 1, 0),  # the last full window is never used (study convention)
        (10, 32, 1, 0),
    ],
)
def test_window_starts_counts(rows: int, seq_len: int, stride: int, expected: int) -> None:
    starts = window_starts(rows, seq_len, stride)
    assert len(starts) == expected
    if expected:
        assert starts[0] == 0 and starts[-1] + seq_len < rows and np.all(np.diff(starts) == stride)


@pytest.mark.parametrize(
    "n, val_fraction, test_fraction, sizes",
    [
        (48_172, 0.2, 0.1, (33_721, 9_634, 4_817)),  # traffic
        (64_851, 0.1, 0.15, (48_639, 6_485, 9_727)),  # power
        (7_336, 0.1, 0.0, (6_603, 733, 0)),  # HAR train/val
    ],
)
def test_split_sizes_partition_and_order(n: int, val_fraction: float, test_fraction: float,
                                         sizes: tuple[int, int, int]) -> None:
    train, val, test = split_indices(n, val_fraction, test_fraction, seed=0)
    assert (len(train), len(val), len(test)) == sizes
    everything = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(everything), np.arange(n)), "splits must partition the windows"
    for part in (train, val, test):
        assert np.all(np.diff(part) > 0), "each split is returned in time order"


def test_split_follows_documented_permutation() -> None:
    # Independent re-statement of the documented rule: first val, then test, the rest train.
    perm = np.random.default_rng(7).permutation(100)
    train, val, test = split_indices(100, 0.2, 0.1, seed=7)
    assert set(val) == set(perm[:20]) and set(test) == set(perm[20:30]) and set(train) == set(perm[30:])


def test_split_determinism() -> None:
    a = split_indices(1000, 0.2, 0.1, seed=3)
    b = split_indices(1000, 0.2, 0.1, seed=3)
    c = split_indices(1000, 0.2, 0.1, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_limit_windows_is_seeded_subset() -> None:
    idx = np.arange(10, 110)
    a = limit_windows(idx, 7, seed=0, stream=1)
    assert len(a) == 7 and set(a) <= set(idx) and np.all(np.diff(a) > 0)
    assert np.array_equal(a, limit_windows(idx, 7, seed=0, stream=1))
    assert not np.array_equal(a, limit_windows(idx, 7, seed=1, stream=1))
    assert np.array_equal(limit_windows(idx, 500, seed=0, stream=1), idx)
    assert np.array_equal(limit_windows(idx, None, seed=0, stream=1), idx)


def test_make_windows_matches_python_slicing() -> None:
    rows = np.arange(50 * 3).reshape(50, 3).astype(np.float32)
    starts = np.array([0, 5, 17])
    windows = make_windows(rows, starts, 4)
    assert windows.shape == (3, 4, 3)
    for w, s in zip(windows, starts):
        assert np.array_equal(w, rows[s : s + 4])
    labels = np.arange(50)
    assert np.array_equal(make_windows(labels, starts, 4)[2], labels[17:21])


def test_rows_covered() -> None:
    mask = rows_covered(np.array([0, 10]), 3, 15)
    assert np.flatnonzero(mask).tolist() == [0, 1, 2, 10, 11, 12]


def test_fit_stats_and_roundtrip() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal([1.0, -3.0, 5.0], [2.0, 0.5, 1.0], size=(500, 3))
    rows[:, 2] = 4.0  # constant column: std must fall back to 1, not divide by zero
    section = fit_stats(rows, ("a", "b", "c"), center=[True, True, False], scale=[True, False, True])
    assert section["mean"][0] == pytest.approx(rows[:, 0].mean()) and section["mean"][2] == 0.0
    assert section["std"][0] == pytest.approx(rows[:, 0].std()) and section["std"][1] == 1.0
    assert section["std"][2] == 1.0
    stats = {"inputs": section, "target": section}
    json.dumps(stats)
    z = apply_normalization(rows, stats)
    assert z.dtype == np.float32
    assert np.allclose(z[:, 0], (rows[:, 0] - rows[:, 0].mean()) / rows[:, 0].std(), atol=1e-5)
    back = invert_normalization(z, stats, part="inputs")
    # float32 round trip of values of magnitude ~5: ~1e-6 relative error
    assert np.allclose(back, rows, atol=1e-5)
    zt = apply_normalization(torch.from_numpy(rows), stats)
    assert zt.dtype == torch.float32 and torch.allclose(zt, torch.from_numpy(z), atol=1e-6)


def test_apply_normalization_rejects_wrong_width_and_missing_part() -> None:
    stats = {"inputs": {"names": ["a"], "mean": [0.0], "std": [1.0]}, "target": None}
    with pytest.raises(DatasetError, match="1 inputs features; got shape \\(4, 2\\)"):
        apply_normalization(np.zeros((4, 2)), stats)
    with pytest.raises(DatasetError, match="normalization\\['target'\\]"):
        invert_normalization(np.zeros((4, 1)), stats)
    with pytest.raises(ValueError, match="part must be one of"):
        apply_normalization(np.zeros((4, 1)), stats, part="labels")


def test_registry_and_unknown_name() -> None:
    assert {"sine", "traffic", "power", "har"} <= set(DATASETS)
    with pytest.raises(ValueError, match="must be one of .*'sine'"):
        load_dataset("sines")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_bad_max_windows(bad: object) -> None:
    with pytest.raises(ValueError, match="max_windows"):
        load_dataset("sine", max_windows=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, None, True])
def test_bad_seed(bad: object) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        load_dataset("sine", seed=bad)  # type: ignore[arg-type]


def test_sine_dataset() -> None:
    splits = load_dataset("sine", progress=False)
    t = np.linspace(0, 3 * np.pi, 48)
    assert splits.task == "regression" and splits.seq_len == 48
    assert (splits.input_size, splits.output_size) == (2, 1)
    for split in splits.splits().values():
        assert split.x.shape == (1, 48, 2) and split.y.shape == (1, 48, 1)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.float32
        assert np.allclose(split.x[0, :, 0].numpy(), np.sin(t), atol=1e-6)
        assert np.allclose(split.x[0, :, 1].numpy(), np.cos(t), atol=1e-6)
        assert np.allclose(split.y[0, :, 0].numpy(), np.sin(2 * t), atol=1e-6)
    assert torch.equal(splits.train.x, splits.test.x) and torch.equal(splits.train.y, splits.val.y)
    json.dumps(splits.normalization)
    assert splits.describe() == (
        "sine (regression): train 1 / val 1 / test 1 windows; x (N, 48, 2) float32 -> y (N, 48, 1) float32"
    )


def test_split_and_splits_validate_their_contract() -> None:
    x = torch.zeros(2, 5, 3)
    with pytest.raises(TypeError, match="float32"):
        Split(x=x.double(), y=torch.zeros(2, 5, 1))
    with pytest.raises(TypeError, match="first two dims"):
        Split(x=x, y=torch.zeros(2, 4, 1))
    good = Split(x=x, y=torch.zeros(2, 5, dtype=torch.int64))
    kwargs = dict(name="toy", input_size=3, seq_len=5, train=good, val=good, test=good,
                  normalization={}, source="test")
    DatasetSplits(task="classification", output_size=2, **kwargs)
    with pytest.raises(ValueError, match="class ids in \\[0, 1\\)"):
        DatasetSplits(task="classification", output_size=1,
                      **{**kwargs, "train": Split(x=x, y=torch.ones(2, 5, dtype=torch.int64))})
    with pytest.raises(ValueError, match="float32 \\(N, 5, 2\\)"):
        DatasetSplits(task="regression", output_size=2, **kwargs)
    with pytest.raises(ValueError, match="task must be one of"):
        DatasetSplits(task="ranking", output_size=2, **kwargs)
