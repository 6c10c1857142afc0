"""Metro traffic: the study's sizes on the real file, feature semantics, errors, download, cache order.

The committed fixture ``tests/fixtures/traffic/Metro_Interstate_Traffic_Volume.csv`` is the first
160 data rows of the original file, byte for byte (CRLF), and holds one holiday (Columbus Day,
data row 126, file line 128). The full file lives in the shared data folder (tests that need it
are skipped, with the reason, if it is absent).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from torchliquid.data import DATASETS, DatasetError, invert_normalization, load_dataset
from torchliquid.data import sources, traffic

FIXTURES = Path(__file__).parent / "fixtures"
FILE = "Metro_Interstate_Traffic_Volume.csv"
FIXTURE = FIXTURES / "traffic" / FILE

_spec = importlib.util.spec_from_file_location("make_har_dir", Path(__file__).parent / "helpers" / "make_har_dir.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
REAL = helpers.shared_data_dir() / "traffic" / f"{FILE}.gz"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=helpers.missing_shared(REAL))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private empty cache, and no network: any download attempt fails like an offline machine."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHLIQUID_DATA", str(cache))

    def offline(url: str, timeout: float = 0) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(sources, "urlopen", offline)
    return cache


def data_dir_with(tmp_path: Path, content: bytes, name: str = FILE) -> Path:
    root = tmp_path / "data"
    (root / "traffic").mkdir(parents=True, exist_ok=True)
    (root / "traffic" / name).write_bytes(content)
    return root


@needs_real
def test_real_file_sizes_and_holidays() -> None:
    splits = load_dataset("traffic", data_dir=REAL.parents[1], progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (33_721, 9_634, 4_817)
    assert splits.train.x.shape == (33_721, 32, 7) and splits.test.y.shape == (4_817, 32, 1)
    assert (splits.input_size, splits.output_size, splits.seq_len) == (7, 1, 32)
    assert "identical to UCI's" in splits.source and traffic.SHA256 in splits.source
    frame = DATASETS["traffic"].read_frame(REAL)
    assert len(frame) == 48_204
    holiday = DATASETS["traffic"].features_from_frame(frame)[:, 0]
    assert holiday.sum() == 61 and set(np.unique(holiday)) == {0.0, 1.0}


def test_fixture_features_follow_the_documented_recipe() -> None:
    # Independent reading of the same rows with the csv module's semantics (strings, no NA magic).
    raw = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    x = DATASETS["traffic"].features_from_frame(DATASETS["traffic"].read_frame(FIXTURE))
    assert x.shape == (160, 7) and x.dtype == np.float32
    assert np.flatnonzero(x[:, 0]).tolist() == [126] and raw.loc[126, "holiday"] == "Columbus Day"
    # Row 0: 2012-10-02 09:00 is a Tuesday (weekday 1); temp is raw Kelvin before centring.
    assert x[0].tolist() == pytest.approx([0.0, 288.28, 0.0, 0.0, 40.0, 1.0, np.sin(9 * np.pi / 24)], rel=1e-6)
    assert x[126, 5] == 0.0 and x[126, 6] == 0.0  # 2012-10-08 00:00 is a Monday, hour 0
    y = DATASETS["traffic"].targets_from_frame(DATASETS["traffic"].read_frame(FIXTURE))
    assert y[:, 0].tolist() == raw["traffic_volume"].astype(float).tolist()


def test_fixture_splits_and_train_only_statistics(tmp_path: Path) -> None:
    splits = load_dataset("traffic", data_dir=FIXTURES, seed=0, progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (91, 25, 12)  # 128 windows, 70/20/10
    raw = pd.read_csv(FIXTURE, keep_default_na=False)
    train_rows = np.unique((splits.train.starts.numpy()[:, None] + np.arange(32)).ravel())
    stats = splits.normalization
    assert stats["target"]["mean"][0] == pytest.approx(raw["traffic_volume"].to_numpy()[train_rows].mean())
    assert stats["target"]["std"][0] == pytest.approx(raw["traffic_volume"].to_numpy()[train_rows].std())
    assert stats["inputs"]["mean"][1] == pytest.approx(raw["temp"].to_numpy()[train_rows].mean())
    # The stored stats undo the normalisation of what the model sees.
    first = splits.val.starts[0].item()
    volumes = invert_normalization(splits.val.y[0].numpy(), stats)[:, 0]
    assert volumes == pytest.approx(raw["traffic_volume"].to_numpy()[first : first + 32], rel=1e-5)


def test_changing_rows_outside_train_leaves_stats_unchanged(tmp_path: Path) -> None:
    # Row 0 belongs only to window 0; find a seed where window 0 is not a train window.
    seed = next(s for s in range(50) if 0 not in load_dataset(
        "traffic", data_dir=FIXTURES, seed=s, progress=False).train.starts.tolist())
    base = load_dataset("traffic", data_dir=FIXTURES, seed=seed, progress=False).normalization
    lines = FIXTURE.read_bytes().split(b"\r\n")
    for row, changes_stats in ((0, False), (40, True)):  # row 40 is inside many train windows
        edited = list(lines)
        fields = edited[row + 1].split(b",")
        fields[1], fields[8] = b"350.0", b"99999"  # temp, traffic_volume
        edited[row + 1] = b",".join(fields)
        root = data_dir_with(tmp_path / f"r{row}", b"\r\n".join(edited))
        stats = load_dataset("traffic", data_dir=root, seed=seed, progress=False).normalization
        assert (stats != base) == changes_stats, f"row {row}"


def test_determinism_and_seed_dependence() -> None:
    a = load_dataset("traffic", data_dir=FIXTURES, seed=1, progress=False)
    b = load_dataset("traffic", data_dir=FIXTURES, seed=1, progress=False)
    c = load_dataset("traffic", data_dir=FIXTURES, seed=2, progress=False)
    assert a.val.starts.tolist() == b.val.starts.tolist() and a.train.x.equal(b.train.x)
    assert a.val.starts.tolist() != c.val.starts.tolist()


def test_windows_overlap_across_splits_by_design() -> None:
    # Stride 1 (the study's protocol): a val window shares rows with neighbouring train windows.
    splits = load_dataset("traffic", data_dir=FIXTURES, progress=False)
    val_rows = set((splits.val.starts.numpy()[:, None] + np.arange(32)).ravel().tolist())
    train_rows = set((splits.train.starts.numpy()[:, None] + np.arange(32)).ravel().tolist())
    assert val_rows & train_rows
    assert not set(splits.val.starts.tolist()) & set(splits.train.starts.tolist())  # windows themselves differ


def test_max_windows_keeps_a_seeded_subset() -> None:
    full = load_dataset("traffic", data_dir=FIXTURES, seed=0, progress=False)
    small = load_dataset("traffic", data_dir=FIXTURES, seed=0, max_windows=10, progress=False)
    assert (len(small.train), len(small.val), len(small.test)) == (10, 10, 10)
    assert set(small.train.starts.tolist()) <= set(full.train.starts.tolist())
    assert small.normalization == full.normalization  # stats still come from the whole train split


def test_gzipped_file_reads_the_same(tmp_path: Path) -> None:
    root = data_dir_with(tmp_path, gzip.compress(FIXTURE.read_bytes()), name=f"{FILE}.gz")
    a = load_dataset("traffic", data_dir=root, progress=False)
    b = load_dataset("traffic", data_dir=FIXTURES, progress=False)
    assert a.train.x.equal(b.train.x) and a.normalization == b.normalization
    assert f"{FILE}.gz" in a.source


def _replace_cell(row: int, column: int, value: bytes):
    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\r\n")
        fields = lines[row + 1].split(b",")
        fields[column] = value
        lines[row + 1] = b",".join(fields)
        return b"\r\n".join(lines)

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"", r"the file is empty"),
        (lambda d: d.split(b"\r\n")[0] + b"\r\n", r"no data rows"),
        (lambda d: d.replace(b"traffic_volume", b"volume", 1), r"missing column\(s\) \['traffic_volume'\]"),
        (_replace_cell(5, 1, b"warm"), r"column 'temp', row 5 \(file line 7\): expected a finite number, found 'warm'"),
        (_replace_cell(9, 8, b""), r"column 'traffic_volume', row 9 \(file line 11\).*found ''"),
        (_replace_cell(3, 7, b"02/10/2012 12:00"), r"column 'date_time', row 3 \(file line 5\).*'02/10/2012 12:00'"),
        (_replace_cell(2, 0, b""), r"column 'holiday', row 2 \(file line 4\).*keep_default_na=False"),
    ],
    ids=["empty", "header-only", "wrong-columns", "non-numeric", "blank-number", "bad-date", "blank-holiday"],
)
def test_malformed_files_raise_clear_errors(tmp_path: Path, mutate, message: str) -> None:
    root = data_dir_with(tmp_path, mutate(FIXTURE.read_bytes()))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("traffic", data_dir=root, progress=False)
    assert str(root / "traffic" / FILE) in str(info.value)


def test_holiday_read_with_default_pandas_na_is_rejected() -> None:
    frame = pd.read_csv(FIXTURE)  # default NA handling turns the label "None" into NaN
    with pytest.raises(DatasetError, match="keep_default_na=False"):
        DATASETS["traffic"].features_from_frame(frame)


def test_too_few_rows(tmp_path: Path) -> None:
    short = b"\r\n".join(FIXTURE.read_bytes().split(b"\r\n")[:30]) + b"\r\n"
    with pytest.raises(DatasetError, match=r"29 rows give only 0 windows"):
        load_dataset("traffic", data_dir=data_dir_with(tmp_path, short), progress=False)


@pytest.mark.parametrize("download", [False, True])
def test_missing_file_lists_every_place(tmp_path: Path, isolated: Path, download: bool) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("traffic", data_dir=tmp_path / "nowhere", download=download, progress=False)
    text = str(info.value)
    assert str(tmp_path / "nowhere" / "traffic") in text and str(isolated / "traffic") in text
    assert ("download=False" in text) != download and ("network disabled in tests" in text) == download
    assert "To fix: put Metro_Interstate_Traffic_Volume.csv" in text


def test_a_failed_download_leaves_no_empty_cache_folder(tmp_path: Path, isolated: Path) -> None:
    assert not isolated.exists()
    with pytest.raises(DatasetError, match="download failed .*network disabled in tests"):
        load_dataset("traffic", data_dir=tmp_path / "nowhere", progress=False)
    assert not isolated.exists()  # the attempt created cache/ and cache/traffic/: both removed again
    (isolated / "power").mkdir(parents=True)  # folders that were there before are kept
    with pytest.raises(DatasetError, match="download failed"):
        load_dataset("traffic", progress=False)
    assert sorted(p.name for p in isolated.iterdir()) == ["power"]
    (isolated / "traffic").mkdir()
    with pytest.raises(DatasetError, match="download failed"):
        load_dataset("traffic", progress=False)
    assert (isolated / "traffic").is_dir()


def test_data_dir_beats_cache(tmp_path: Path, isolated: Path) -> None:
    root = data_dir_with(tmp_path, FIXTURE.read_bytes())
    (isolated / "traffic").mkdir(parents=True)
    shortened = b"\r\n".join(FIXTURE.read_bytes().split(b"\r\n")[:101]) + b"\r\n"  # 100 rows: 68 windows
    (isolated / "traffic" / FILE).write_bytes(shortened)
    first = load_dataset("traffic", data_dir=root, progress=False)
    assert str(root) in first.source and len(first.train) + len(first.val) + len(first.test) == 128
    (root / "traffic" / FILE).unlink()
    second = load_dataset("traffic", data_dir=root, progress=False)
    assert str(isolated) in second.source and len(second.train) + len(second.val) + len(second.test) == 68


def _zip_with(member: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(member, content)
    return buf.getvalue()


def _serve(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> list[str]:
    requested: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(sources, "urlopen", fake_urlopen)
    return requested


def test_download_verifies_and_caches(monkeypatch: pytest.MonkeyPatch, isolated: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    content = FIXTURE.read_bytes()
    # The real sha256 needs the real 3 MB file; the mechanism is the same with the fixture's hash.
    monkeypatch.setattr(traffic, "SHA256", sources.hashlib.sha256(content).hexdigest())
    requested = _serve(monkeypatch, _zip_with(f"{FILE}.gz", gzip.compress(content)))
    splits = load_dataset("traffic", progress=True)
    assert requested == [traffic.URL] and f"downloaded 0.0 MB from {traffic.URL}" in capsys.readouterr().err
    assert (isolated / "traffic" / FILE).read_bytes() == content
    assert sorted(p.name for p in (isolated / "traffic").iterdir()) == [FILE]  # no temp files left
    assert "identical to UCI's" in splits.source
    again = load_dataset("traffic", progress=False)  # now served from the cache, no second request
    assert requested == [traffic.URL] and again.train.x.equal(splits.train.x)


def test_download_with_bad_checksum_leaves_nothing(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    tampered = FIXTURE.read_bytes().replace(b"5545", b"5546", 1)
    _serve(monkeypatch, _zip_with(f"{FILE}.gz", gzip.compress(tampered)))
    with pytest.raises(DatasetError) as info:
        load_dataset("traffic", progress=False)
    text = str(info.value)
    assert FILE in text and traffic.SHA256 in text
    assert sources.hashlib.sha256(tampered).hexdigest() in text
    leftovers = list(isolated.rglob("*"))
    assert leftovers == [], f"partial files or empty folders left behind: {leftovers}"


def test_download_of_zip_without_the_member(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    _serve(monkeypatch, _zip_with("readme.txt", b"nothing here"))
    with pytest.raises(DatasetError, match=r"not Metro_Interstate_Traffic_Volume.csv\[.gz\]"):
        load_dataset("traffic", progress=False)
    assert not isolated.exists()  # no file, and no empty folder either


@needs_real
def test_real_file_is_the_published_one() -> None:
    assert sources.sha256_of(REAL) == traffic.SHA256
