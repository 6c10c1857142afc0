"""Reading tables with errors that name the file, the column, the row and the fix.

Frames read here carry ``frame.attrs["source"]`` (the file) and ``frame.attrs["header_lines"]``
(lines before the first data row), so later checks can report ``file line`` numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .base import DatasetError, MissingColumnsError


def show(value: Any) -> str:
    """A cell for an error message: strings quoted, numbers plain (no ``np.float64(...)``)."""
    return repr(value) if isinstance(value, str) else str(getattr(value, "item", lambda: value)())


def where(frame: pd.DataFrame) -> str:
    return str(frame.attrs.get("source", "the given DataFrame"))


def row_label(frame: pd.DataFrame, position: int) -> str:
    """``row 17 (file line 19)`` for frames read from a file, ``row 17`` otherwise."""
    header = frame.attrs.get("header_lines")
    return f"row {position}" if header is None else f"row {position} (file line {position + header + 1})"


def read_table(path: Path, *, what: str, header_lines: int, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with parse failures turned into :class:`DatasetError` naming ``path``."""
    try:
        frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path}: the file is empty; expected {what}. Replace it with the original file.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DatasetError(
            f"{path}: cannot parse the file as {what}: {str(exc).strip()}. Replace it with the original file."
        ) from exc
    frame.attrs["source"] = str(path)
    frame.attrs["header_lines"] = header_lines
    if len(frame) == 0:
        raise DatasetError(f"{path}: the file has no data rows; expected {what}. Replace it with the original file.")
    return frame


def require_columns(frame: pd.DataFrame, columns: Sequence[str], hint: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = [str(c) for c in frame.columns]
        raise MissingColumnsError(
            f"{where(frame)}: missing column(s) {missing}; expected columns {list(columns)}, found {found}. {hint}".rstrip(),
            missing, found,
        )


def numeric(frame: pd.DataFrame, columns: Sequence[Any], *, allow_nan: bool, hint: str = "") -> np.ndarray:
    """The given columns as float64 ``(R, len(columns))``, or a DatasetError at the first bad cell.

    A cell is bad if it is not a number, or (unless ``allow_nan``) is missing/NaN, or is infinite.
    The first bad cell in reading order (row, then column) is reported.
    """
    columns = list(columns)
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    not_number = np.zeros(out.shape, dtype=bool)
    numeric_dtype = [pd.api.types.is_numeric_dtype(frame[c].dtype) for c in columns]
    if all(numeric_dtype):  # the usual case: pandas parsed every cell as a number
        out[:] = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        for j, column in enumerate(columns):
            raw = frame[column]
            out[:, j] = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if not numeric_dtype[j]:
                not_number[:, j] = np.isnan(out[:, j]) & ~raw.isna().to_numpy()
    bad = not_number | np.isinf(out)
    if not allow_nan:
        bad |= np.isnan(out)
    if bad.any():
        i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise DatasetError(
            f"{where(frame)}: column {columns[j]!r}, {row_label(frame, int(i))}: expected a finite number, found "
            f"{show(frame[columns[j]].iloc[i])}. Fix or restore that cell (re-download the original file if "
            f"unsure). {hint}".rstrip()
        )
    return out
