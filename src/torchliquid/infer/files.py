"""File in, file out: ``predict_file(run_dir, input_path, output_path)``.

Inputs, by extension:

    .npy                 numeric windows (N, T, I) or one window (T, I) of raw (un-normalised)
                         features, saved with numpy.save (no pickles).
    anything else        a file in the dataset's RAW format (``Dataset.raw_input`` says what it
    (.csv, .txt, .gz)    must hold; traffic: the UCI CSV; power: the UCI ';' text; har: an
                         X_*.txt file; sine: a CSV with column t). Its rows go through the
                         dataset's own ``features_from_frame`` (e.g. traffic rows -> the 7 study
                         features) and are cut into windows of the run's seq_len every ``stride``
                         rows (default seq_len: each row is predicted once; a last window ending
                         at the final row covers a remainder).

Outputs, by extension of ``output_path`` (default: next to the input, ``NAME.predictions.csv``
for raw files and ``NAME.predictions.npy`` for .npy input), written atomically:

    .csv   one line per (window, step): window, step, [row], then the target columns
           (regression, in the target's units) or class_id, class, p_<class>... (classification).
           ``row`` is the 0-based data row of a raw input file.
    .npy   regression values (N, T, O); classification class ids (N, T) plus the probabilities
           (N, T, C) in NAME.probabilities.npy beside it.

Bad input raises ValueError naming the file and the row/column (malformed raw rows are reported
by the dataset's reader; missing columns also say which features the model takes and from what),
the window/step/feature of a .npy value, or that a .npy file is not a numpy array file at all
(it is never unpickled).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import pandas as pd

from torchliquid._atomic import atomic_write, check_writable
from torchliquid.data import Dataset, get_dataset
from torchliquid.data.base import MissingColumnsError
from torchliquid.data.frames import read_table

from .predict import Prediction, Predictor, WindowValueError

PathLike = Union[str, os.PathLike]
OUTPUT_SUFFIXES = (".csv", ".npy")
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every file numpy.save writes
ZIP_MAGIC = b"PK\x03\x04"  # numpy.savez (.npz)
SAVE_HINT = "save windows with numpy.save(path, array.astype('float32'))"


def _read_har(path: Path) -> pd.DataFrame:
    from torchliquid.data.har import read_features

    return read_features(path)


def _read_generic(path: Path) -> pd.DataFrame:
    return read_table(path, what="a CSV with a header line", header_lines=1)


# dataset name -> reader of its raw file format, for datasets without a read_frame method
RAW_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {"har": _read_har}


def _names(names: tuple[str, ...], limit: int = 8) -> str:
    return ", ".join(names) if len(names) <= limit else f"{', '.join(names[:3])}, ..., {names[-1]}"


def expected_input(predictor: Predictor, dataset: Dataset) -> str:
    """What a raw file for ``predictor`` must hold, in words (for error messages)."""
    source = (f"the raw column(s) {list(dataset.raw_columns)} of each row" if dataset.raw_columns
              else "each line")
    return (f"A {dataset.name} run's model takes {predictor.input_size} features per step "
            f"({_names(predictor.feature_names)}), computed from {source}; the raw input is "
            f"{dataset.raw_input or 'the dataset file format'}. Or pass the features themselves as a .npy of "
            f"shape (N, {predictor.seq_len or 'T'}, {predictor.input_size})")


def read_raw_rows(predictor: Predictor, path: PathLike) -> tuple[np.ndarray, Optional[int]]:
    """Raw-format file -> (un-normalised feature rows (R, I) via the run's dataset, the file's
    lines before its first data row when each row is one line, else None)."""
    path = Path(path)
    if predictor.dataset is None:
        raise ValueError(f"{path}: the run records no dataset, so its raw format is unknown; pass a .npy of "
                         "feature windows instead")
    dataset = get_dataset(predictor.dataset)
    reader = RAW_READERS.get(dataset.name) or getattr(dataset, "read_frame", None) or _read_generic
    try:
        frame = reader(path)
        rows = np.asarray(dataset.features_from_frame(frame))
    except MissingColumnsError as error:
        merged = len(error.found) == 1 and any(sep in error.found[0] for sep in ",;\t")
        hint = " The header was read as one column: the file's separator is not the one this format uses." \
            if merged else ""
        raise ValueError(f"{path}: missing column(s) {error.missing} (found {error.found}).{hint} "
                         f"{expected_input(predictor, dataset)}.") from None
    if rows.ndim != 2 or rows.shape[1] != predictor.input_size:
        raise ValueError(f"{path}: the {dataset.name} rows give features of shape {rows.shape}, the model takes "
                         f"{predictor.input_size} per row")
    header = getattr(frame, "attrs", {}).get("header_lines")
    return rows, header if header is not None and len(rows) == len(frame) else None


def window_starts(n_rows: int, length: int, stride: int) -> np.ndarray:
    """Starts every ``stride`` rows, plus one ending at the last row if a remainder is left over."""
    starts = np.arange(0, n_rows - length + 1, stride, dtype=np.int64)
    if starts[-1] + length < n_rows:
        starts = np.append(starts, n_rows - length)
    return starts


def windows_from_rows(rows: np.ndarray, length: int, stride: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(windows (N, T, I), source row of every step (N, T)) cut from rows (R, I)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if len(rows) < length:
        raise ValueError(f"{where}: {len(rows)} data rows, but the model's windows have {length} steps; provide "
                         f"at least {length} rows (or pass any_length=True, --any-length on the command line, to "
                         "predict one shorter window)")
    starts = window_starts(len(rows), length, stride)
    row_NT = starts[:, None] + np.arange(length)
    return rows[row_NT], row_NT


def read_windows(predictor: Predictor, input_path: PathLike, *, stride: Optional[int] = None,
                 any_length: bool = False) -> tuple[np.ndarray, Optional[np.ndarray], Optional[int]]:
    """(raw windows, source rows (N, T) or None, the file's lines before its first data row or
    None) from a .npy of windows or a raw-format file."""
    path = Path(input_path)
    if path.is_dir():
        raise ValueError(f"input {path} is a folder; pass a file (a .npy of windows or a raw data file)")
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.suffix.lower() == ".npy":
        return load_npy(path), None, None
    rows, header = read_raw_rows(predictor, path)
    length = predictor.seq_len or len(rows)
    if any_length and len(rows) < length:
        length = len(rows)
    return (*windows_from_rows(rows, length, length if stride is None else stride, str(path)), header)


def load_npy(path: PathLike) -> np.ndarray:
    """The array of a .npy file, never unpickled; ValueError naming the file if it is not one."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        raise ValueError(f"{path}: the file is empty, not a valid .npy array file; {SAVE_HINT}")
    if head.startswith(ZIP_MAGIC):
        raise ValueError(f"{path} is not a valid .npy array file: it is a zip archive (numpy.savez writes those, "
                         f"as .npz); {SAVE_HINT}")
    if not head.startswith(NPY_MAGIC):
        text = _looks_like_text(head)
        what = (f"it starts with the text {text!r}; a CSV or text file in the dataset's raw format must not be "
                "named .npy" if text else f"it does not start with the .npy signature {NPY_MAGIC!r}")
        raise ValueError(f"{path} is not a valid .npy array file: {what}; {SAVE_HINT}")
    header_readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as handle:
            reader = header_readers.get(np.lib.format.read_magic(handle))
            dtype = reader(handle)[2] if reader is not None else None  # (shape, fortran order, dtype)
    except (ValueError, EOFError, OSError, SyntaxError) as error:
        raise ValueError(f"{path} is not a valid .npy array file: its header cannot be read ({error}); "
                         f"{SAVE_HINT}") from None
    if dtype is not None and dtype.hasobject:
        raise ValueError(f"{path} holds Python objects (dtype object), which only unpickling could read, and "
                         f"torchliquid never unpickles files; {SAVE_HINT}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a valid .npy array file: {error}; {SAVE_HINT}") from None


def _looks_like_text(head: bytes) -> str:
    """The first line of ``head`` if it reads as text, else ''."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    first = text.splitlines()[0] if text.splitlines() else ""
    return first[:40] if first and first.isprintable() else ""


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    with atomic_write(path, mode) as handle:
        write(handle)
    return path


def prediction_frame(prediction: Prediction, rows: Optional[np.ndarray] = None) -> pd.DataFrame:
    """The long table of a prediction: one line per (window, step)."""
    main = prediction.values if prediction.task == "regression" else prediction.classes
    main = main[None] if main.ndim == (2 if prediction.task == "regression" else 1) else main
    n, steps = main.shape[:2]
    columns: dict[str, Any] = {"window": np.repeat(np.arange(n), steps), "step": np.tile(np.arange(steps), n)}
    if rows is not None:
        columns["row"] = rows.reshape(-1)
    if prediction.task == "regression":
        flat = main.reshape(n * steps, -1)
        names = prediction.names if len(prediction.names) == flat.shape[1] else [f"y{k}" for k in range(flat.shape[1])]
        columns.update({name: flat[:, k] for k, name in enumerate(names)})
    else:
        probabilities = prediction.probabilities.reshape(n * steps, -1)
        names = prediction.names if len(prediction.names) == probabilities.shape[1] else [
            str(k) for k in range(probabilities.shape[1])]
        ids = main.reshape(-1)
        columns["class_id"] = ids
        columns["class"] = np.asarray(names, dtype=object)[ids]
        columns.update({f"p_{name}": probabilities[:, k] for k, name in enumerate(names)})
    return pd.DataFrame(columns)


def write_prediction(prediction: Prediction, output_path: PathLike, rows: Optional[np.ndarray] = None) -> Path:
    """Write ``prediction`` as .csv or .npy (see the module docstring), atomically; returns the path."""
    path = Path(output_path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"output file must end in one of {list(OUTPUT_SUFFIXES)}, got {path.name!r}")
    if suffix == ".csv":
        frame = prediction_frame(prediction, rows)
        return _atomic(path, lambda handle: frame.to_csv(handle, index=False, float_format="%.9g"), "w")
    if prediction.task == "classification":
        _atomic(probabilities_path(path), lambda handle: np.save(handle, prediction.probabilities), "wb")
        return _atomic(path, lambda handle: np.save(handle, prediction.classes), "wb")
    return _atomic(path, lambda handle: np.save(handle, prediction.values), "wb")


def probabilities_path(output: Path) -> Path:
    """Where a classification .npy output puts its probabilities: NAME.probabilities.npy."""
    return output.with_name(f"{output.stem}.probabilities.npy")


def check_not_input(input_path: PathLike, outputs: list[Path]) -> None:
    """ValueError if writing ``outputs`` would replace the input file (an explicit --output
    equal to --input, a link to it, or the default output of an input already named
    NAME.predictions.csv)."""
    source = Path(input_path)
    for output in outputs:
        same = (os.path.samefile(source, output) if source.exists() and output.exists()
                else source.resolve() == output.resolve())
        if same:
            raise ValueError(f"output {output} is the input file {input_path}: predicting would "
                             "overwrite it; pass another --output")


def default_output(input_path: PathLike) -> Path:
    path = Path(input_path)
    stem = path.name.split(".")[0] or path.stem
    suffix = ".npy" if path.suffix.lower() == ".npy" else ".csv"
    return path.with_name(f"{stem}.predictions{suffix}")


def predict_file(run: Union[PathLike, Predictor], input_path: PathLike, output_path: Optional[PathLike] = None, *,
                 stride: Optional[int] = None, batch_size: int = 1024, any_length: bool = False,
                 device: str = "cpu") -> Path:
    """Predict for every window of ``input_path`` with the run ``run`` and write ``output_path``.

    Args:
        run: a run directory (or an already loaded Predictor).
        input_path: .npy windows or a file in the dataset's raw format (module docstring).
        output_path: .csv or .npy; default ``NAME.predictions.csv|.npy`` beside the input.
        stride: rows between window starts for raw files (default: the window length).
        any_length: accept windows (or a raw file shorter than one window) of another length.

    Returns the path written.
    """
    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run, device=device)
    output = Path(output_path) if output_path is not None else default_output(input_path)
    if output.is_dir():
        raise ValueError(f"output {output} is a folder; name a file ending in .csv or .npy")
    if output.suffix.lower() not in OUTPUT_SUFFIXES:  # fail before the (possibly long) prediction
        raise ValueError(f"output file must end in one of {list(OUTPUT_SUFFIXES)}, got {output.name!r}")
    check_writable(output)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    written = [output] + ([probabilities_path(output)] if predictor.task == "classification"
                          and output.suffix.lower() == ".npy" else [])
    check_not_input(input_path, written)
    windows, rows, header = read_windows(predictor, input_path, stride=stride, any_length=any_length)
    try:
        prediction = predictor.predict(windows, batch_size=batch_size, any_length=any_length)
    except ValueError as error:  # the windows' shape or values: say which file they came from
        where = ""
        if isinstance(error, WindowValueError) and rows is not None:  # and which row of it
            row = int(rows[error.window, error.step])
            where = f" (row {row}" + (f", file line {row + header + 1})" if header is not None else ")")
        raise ValueError(f"{input_path}: {error}{where}") from None
    return write_prediction(prediction, output, rows)
