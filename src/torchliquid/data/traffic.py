"""Metro Interstate Traffic Volume (Hogue 2019, UCI id 492, CC BY 4.0): hourly volume regression.

Per row, 7 inputs as in the study: holiday indicator, temperature (centred on the train mean),
rain_1h, snow_1h, clouds_all, weekday (0 = Monday), sin(hour·π/24); the target is
traffic_volume z-scored with train statistics. Windows of 32 rows with stride 1
(48,204 rows -> 48,172 windows), split by a seeded permutation into val 20 % / test 10 % /
train the rest -> 33,721 / 9,634 / 4,817.

Two deliberate choices:

* holiday is 1.0 where the column holds a holiday *name* and 0.0 where it holds the string
  ``"None"`` (61 holiday rows). The reference script compared to Python ``None`` and so got all
  zeros; the file must also be read with ``keep_default_na=False`` or pandas turns ``"None"``
  into NaN.
* with stride 1, windows in different splits share rows (a val window overlaps the train
  windows next to it). This is the study's protocol and is kept so numbers are comparable.
"""

from __future__ import annotations

import contextlib
import gzip
import zipfile
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from .base import Dataset, DatasetError, DatasetSplits, check_options, windowed_regression
from .domains import FeatureDomain
from .frames import numeric, read_table, require_columns, row_label, show, where
from .sources import Search, cache_root, describe_source, downloaded, install, note, sha256_of, zip_member

FILE_NAME = "Metro_Interstate_Traffic_Volume.csv"
SHA256 = "749c90d720360a4215bb15345526073c079ba4cc95e3fa558796d083f85fce9e"  # uncompressed CSV
URL = "https://archive.ics.uci.edu/static/public/492/metro+interstate+traffic+volume.zip"
PAGE = "https://archive.ics.uci.edu/dataset/492/metro+interstate+traffic+volume"
#: the raw columns the 7 inputs are computed from; training also needs the target traffic_volume
FEATURE_COLUMNS = ("holiday", "temp", "rain_1h", "snow_1h", "clouds_all", "date_time")
REQUIRED_COLUMNS = FEATURE_COLUMNS + ("traffic_volume",)
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_FIX = f"Use the original {FILE_NAME} from {PAGE}."


class TrafficDataset(Dataset):
    name = "traffic"
    task = "regression"
    seq_len = 32
    input_size = 7
    output_size = 1
    feature_names = ("holiday", "temp", "rain_1h", "snow_1h", "clouds_all", "weekday", "hour_sin")
    target_names = ("traffic_volume",)
    feature_domains = MappingProxyType({
        "holiday": FeatureDomain(0, 1, integral=True, meaning="1 on a holiday, 0 otherwise"),
        "temp": FeatureDomain(0, meaning="Kelvin"),
        "rain_1h": FeatureDomain(0, meaning="mm of rain in the hour"),
        "snow_1h": FeatureDomain(0, meaning="mm of snow in the hour"),
        "clouds_all": FeatureDomain(0, 100, meaning="cloud cover in %"),
        "weekday": FeatureDomain(0, 6, integral=True, meaning="0 = Monday"),
        "hour_sin": FeatureDomain(0, 1, meaning="sin(hour·π/24), hour 0-23"),
    })
    raw_columns = FEATURE_COLUMNS
    raw_input = ("the UCI CSV (comma-separated, header line) with the columns holiday (a holiday name or the "
                 "string None), temp (Kelvin), rain_1h, snow_1h (mm), clouds_all (%) and date_time "
                 "(YYYY-MM-DD HH:MM:SS), one row per hour; traffic_volume and the weather_* columns may be "
                 "absent or present (they are not inputs)")
    stride = 1
    val_fraction = 0.2
    test_fraction = 0.1

    def load(self, data_dir: str | Path | None = None, seed: int = 0, download: bool = True,
             max_windows: int | None = None, progress: bool = True) -> DatasetSplits:
        """Windows of the traffic CSV found in ``data_dir``, the cache, or downloaded from UCI."""
        check_options(seed, max_windows)
        path = self.locate(data_dir, download, progress)
        note(progress, f"reading {path}")
        source = describe_source(path, sha256_of(path), SHA256, FILE_NAME)
        frame = self.read_frame(path)
        return windowed_regression(
            self, self.features_from_frame(frame), self.targets_from_frame(frame), stride=self.stride,
            val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=seed, max_windows=max_windows,
            source=source, where=str(path),
            input_center=[name == "temp" for name in self.feature_names], input_scale=False,
        )

    def locate(self, data_dir: str | Path | None, download: bool, progress: bool) -> Path:
        """Path of the CSV: ``data_dir``, then the cache, then a verified UCI download."""
        search = Search(self.name, "traffic")
        found = search.find([FILE_NAME], data_dir)
        if found:
            return found[FILE_NAME]
        fetched = search.try_download(download, URL, lambda: self.download(progress), data_dir)
        if fetched is not None:
            return fetched
        raise search.error(
            f"put {FILE_NAME} (or {FILE_NAME}.gz) from {PAGE} into DATA_DIR/traffic/ and pass "
            f"data_dir=DATA_DIR (--data-dir), or into {cache_root() / 'traffic'}, or retry with download "
            "enabled and network access."
        )

    def download(self, progress: bool) -> Path:
        """Fetch UCI zip 492 into the cache; the CSV must match the published sha256."""
        dest = cache_root() / "traffic" / FILE_NAME
        with downloaded(URL, dest.parent, progress) as zip_path, zipfile.ZipFile(zip_path) as archive:
            member = zip_member(archive.namelist(), f"{FILE_NAME}.gz") or zip_member(archive.namelist(), FILE_NAME)
            if member is None:
                raise DatasetError(f"{URL}: the zip holds {archive.namelist()}, not {FILE_NAME}[.gz]. {_FIX}")
            with archive.open(member) as raw, (
                gzip.open(raw) if member.endswith(".gz") else contextlib.nullcontext(raw)
            ) as stream:
                install(stream, dest, sha256=SHA256, origin=f"{URL} member {member}")
        return dest

    def read_frame(self, path: str | Path) -> pd.DataFrame:
        """Read the CSV as strings-preserving frame (``keep_default_na=False``) and check its header.

        Only the input columns are required here (a file to predict for has no traffic_volume);
        :meth:`targets_from_frame` requires the target.
        """
        frame = read_table(Path(path), what=f"the UCI traffic CSV with columns {list(REQUIRED_COLUMNS)}",
                           header_lines=1, keep_default_na=False)
        require_columns(frame, FEATURE_COLUMNS, _FIX)
        return frame

    def features_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> ``(R, 7)`` float32 inputs, before centring the temperature."""
        require_columns(frame, FEATURE_COLUMNS, _FIX)
        holiday = _holiday_indicator(frame)
        temp, rain, snow, clouds = numeric(frame, ["temp", "rain_1h", "snow_1h", "clouds_all"], allow_nan=False).T
        stamps = _timestamps(frame)
        weekday = stamps.dt.day_of_week.to_numpy(dtype=np.float64)
        hour_sin = np.sin(stamps.dt.hour.to_numpy(dtype=np.float64) * np.pi / 24)
        return np.stack([holiday, temp, rain, snow, clouds, weekday, hour_sin], axis=-1).astype(np.float32)

    def targets_from_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> ``(R, 1)`` float32 traffic volume, before z-scoring."""
        require_columns(frame, ["traffic_volume"], _FIX)
        return numeric(frame, ["traffic_volume"], allow_nan=False).astype(np.float32)


def _holiday_indicator(frame: pd.DataFrame) -> np.ndarray:
    holiday = frame["holiday"]
    missing = holiday.isna().to_numpy() | (holiday.astype(str) == "").to_numpy()
    if missing.any():
        i = int(np.argmax(missing))
        raise DatasetError(
            f"{where(frame)}: column 'holiday', {row_label(frame, i)}: expected a holiday name or the string "
            f"'None', found {show(holiday.iloc[i])}. If you read the CSV yourself, pass keep_default_na=False "
            "(pandas otherwise turns 'None' into NaN), or use DATASETS['traffic'].read_frame(path)."
        )
    return (holiday != "None").to_numpy(dtype=np.float64)


def _timestamps(frame: pd.DataFrame) -> pd.Series:
    stamps = pd.to_datetime(frame["date_time"], format=DATE_FORMAT, errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(
            f"{where(frame)}: column 'date_time', {row_label(frame, i)}: expected a timestamp like "
            f"'2012-10-02 09:00:00', found {show(frame['date_time'].iloc[i])}. {_FIX}"
        )
    return stamps
