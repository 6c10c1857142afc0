"""Prediction from a trained run: torchliquid.infer.load / Predictor / predict_file / CLI commands.

Start here: a real run is trained once per module (CfC, 1 epoch, on the committed 160-row traffic
fixture) with the same workflow the CLI uses; the tests then check that the predictor reproduces
what training saw and recorded:

* raw windows -> predictor == model on the dataset's normalised windows, de-normalised (the
  float64 round trip of the inputs is exact to float32, so TOL_REL = 1e-6 only covers the
  last bit of the de-normalised float32 output);
* the test MSE recomputed from predictions == result.json's post-training mse (MSE_RTOL = 1e-5:
  float64 sums over a different batching);
* the raw traffic CSV -> features -> windows path gives the same windows as load_dataset.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from torchliquid.data import apply_normalization, invert_normalization, load_dataset
from torchliquid.infer import Predictor, load, predict_file
from torchliquid.infer.commands import COMMANDS, stream_lines
from torchliquid.nn import CfC
from torchliquid.train import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
TRAFFIC_CSV = FIXTURES / "traffic" / "Metro_Interstate_Traffic_Volume.csv"
TOL_REL = 1e-6
MSE_RTOL = 1e-5
SEQ_LEN, FEATURES = 32, 7


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchliquid.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from torchliquid.workflow import train_run

    out = tmp_path_factory.mktemp("runs") / "cfc-traffic"
    train_run(RunConfig(model=ModelConfig("cfc", units=8),
                        data=DataConfig("traffic", data_dir=str(FIXTURES), download=False),
                        train=TrainConfig(epochs=1, batch_size=32, quiet=True, device="cpu"),
                        out_dir=str(out)))
    return out


@pytest.fixture(scope="module")
def splits():
    return load_dataset("traffic", data_dir=FIXTURES, download=False, progress=False)


def _raw(x_norm: torch.Tensor, stats) -> np.ndarray:
    """Un-normalise in float64 so that normalising again gives back x_norm exactly (in float32)."""
    mean = np.asarray(stats["inputs"]["mean"])
    std = np.asarray(stats["inputs"]["std"])
    return x_norm.numpy().astype(np.float64) * std + mean


def _expected_values(predictor: Predictor, x_norm: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = predictor.model(x_norm)[0]
    return invert_normalization(out.numpy(), predictor.normalization, "target")


# ------------------------------------------------------------------------------------- Predictor


def test_load_gives_the_eval_model_and_the_saved_preprocessing(run_dir: Path) -> None:
    predictor = load(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert not predictor.model.training
    assert (predictor.task, predictor.dataset, predictor.seq_len) == ("regression", "traffic", SEQ_LEN)
    assert predictor.normalization == config["normalization"]
    assert predictor.feature_names[1] == "temp" and predictor.target_names == ("traffic_volume",)


def test_predictions_reproduce_the_model_and_the_recorded_test_mse(run_dir: Path, splits) -> None:
    predictor = load(run_dir)
    result = predictor.predict(_raw(splits.test.x, predictor.normalization), batch_size=3)
    expected = _expected_values(predictor, splits.test.x)
    np.testing.assert_allclose(result.values, expected, rtol=TOL_REL, atol=0)
    assert result.classes is None and result.probabilities is None
    normalised = apply_normalization(result.values, predictor.normalization, "target")
    mse = float(np.mean((normalised.astype(np.float64) - splits.test.y.numpy()) ** 2))
    recorded = json.loads((run_dir / "result.json").read_text())["post_training"]["mse"]
    assert mse == pytest.approx(recorded, rel=MSE_RTOL)


def test_one_window_and_other_lengths(run_dir: Path, splits) -> None:
    predictor = load(run_dir)
    raw = _raw(splits.test.x, predictor.normalization)
    single = predictor.predict(raw[0])
    assert single.values.shape == (SEQ_LEN, 1)
    np.testing.assert_allclose(single.values, _expected_values(predictor, splits.test.x[:1])[0], rtol=TOL_REL)
    assert predictor.predict(raw[:, :20], any_length=True).values.shape == (len(raw), 20, 1)


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda w: w[:, :, :5], r"7 features per step \(holiday, temp, .*\), got 5"),
    (lambda w: w[:, :30], r"32 steps \(the run's window length\), got 30"),
    (lambda w: _set(w, (1, 4, 2), np.nan), r"window 1, step 4, feature 'rain_1h' \(column 2\) is nan"),
    (lambda w: _set(w, (0, 0, 6), np.inf), r"window 0, step 0, feature 'hour_sin' \(column 6\) is inf"),
    (lambda w: w[None], r"\(N, T, I\) or one window \(T, I\) with I = 7, got shape \(1, 2, 32, 7\)"),
    (lambda w: w.astype(str), r"windows must hold numbers, got dtype <U"),
    (lambda w: _set(w.astype(object), (1, 2, 3), "x"), r"value at index \(1, 2, 3\) is 'x'"),
    (lambda w: w[:0], r"at least one window"),
    (lambda w: _set(w, (1, 3, 5), 7), r"window 1, step 3, feature 'weekday' \(column 5\) is 7; expected an integer "
                                      r"from 0 to 6 \(0 = Monday\)"),
    (lambda w: _set(w, (0, 2, 0), 0.5), r"feature 'holiday' \(column 0\) is 0.5; expected an integer from 0 to 1"),
    (lambda w: _set(w, (0, 1, 4), 130), r"feature 'clouds_all' \(column 4\) is 130; expected a number from 0 to 100"),
    (lambda w: _set(w, (1, 0, 1), -5), r"feature 'temp' \(column 1\) is -5; expected a number >= 0 \(Kelvin\)"),
], ids=["features", "length", "nan", "inf", "4-d", "strings", "object", "empty", "weekday", "holiday", "clouds", "temp"])
def test_bad_windows_are_named(run_dir: Path, mutate, match: str) -> None:
    windows = np.zeros((2, SEQ_LEN, FEATURES))
    with pytest.raises(ValueError, match=match):
        load(run_dir).predict(mutate(windows))


def _set(array: np.ndarray, index, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def test_classification_gives_class_ids_and_probabilities(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CfC(5, 8, proj_size=3)
    stats = {"inputs": {"names": list("abcde"), "mean": [1.0] * 5, "std": [2.0] * 5}, "target": None,
             "classes": ["walk", "sit", "lie"]}
    predictor = Predictor(model, task="classification", normalization=stats, seq_len=6)
    raw = np.random.default_rng(0).normal(size=(4, 6, 5))
    result = predictor.predict(raw)
    with torch.no_grad():
        logits = model(torch.from_numpy(((raw - 1.0) / 2.0).astype(np.float32)))[0]
    torch.testing.assert_close(torch.from_numpy(result.probabilities), torch.softmax(logits, -1), atol=1e-6, rtol=0)
    assert result.classes.dtype == np.int64 and (result.classes == logits.argmax(-1).numpy()).all()
    assert result.values is None and result.names == ("walk", "sit", "lie")

    np.save(tmp_path / "w.npy", raw)
    table = pd.read_csv(predict_file(predictor, tmp_path / "w.npy", tmp_path / "p.csv"))
    assert list(table.columns) == ["window", "step", "class_id", "class", "p_walk", "p_sit", "p_lie"]
    assert (table["class"] == np.array(["walk", "sit", "lie"])[table["class_id"]]).all()
    predict_file(predictor, tmp_path / "w.npy", tmp_path / "p.npy")
    assert (np.load(tmp_path / "p.npy") == result.classes).all()
    np.testing.assert_array_equal(np.load(tmp_path / "p.probabilities.npy"), result.probabilities)


# ----------------------------------------------------------------------------------------- files


def test_raw_csv_windows_are_the_dataset_windows(run_dir: Path, splits, tmp_path: Path) -> None:
    predictor = load(run_dir)
    path = predict_file(run_dir, TRAFFIC_CSV, tmp_path / "pred.csv", stride=1)
    table = pd.read_csv(path)
    n_rows = len(pd.read_csv(TRAFFIC_CSV))
    assert len(table) == (n_rows - SEQ_LEN + 1) * SEQ_LEN
    assert (table["row"] == table["window"] + table["step"]).all()  # stride 1: window w starts at row w
    values_NT = table["traffic_volume"].to_numpy().reshape(-1, SEQ_LEN)
    test_starts = splits.test.starts.numpy()
    np.testing.assert_allclose(values_NT[test_starts], _expected_values(predictor, splits.test.x)[..., 0],
                               rtol=TOL_REL)


def test_default_stride_predicts_every_row_and_the_remainder(run_dir: Path, tmp_path: Path) -> None:
    table = pd.read_csv(predict_file(run_dir, TRAFFIC_CSV, tmp_path / "pred.csv"))
    n_rows = len(pd.read_csv(TRAFFIC_CSV))  # 160 = 5 windows of 32, no remainder
    assert sorted(set(table["row"])) == list(range(n_rows))
    short = _traffic_frame().iloc[:70]  # 2 windows of 32 + a last one ending at row 69
    short.to_csv(tmp_path / "short.csv", index=False)
    table = pd.read_csv(predict_file(run_dir, tmp_path / "short.csv"))
    starts = table.loc[table["step"] == 0, "row"].tolist()
    assert starts == [0, 32, 38] and (tmp_path / "short.predictions.csv").is_file()


def test_npy_in_npy_out(run_dir: Path, splits, tmp_path: Path) -> None:
    predictor = load(run_dir)
    raw = _raw(splits.test.x, predictor.normalization).astype(np.float32)
    np.save(tmp_path / "windows.npy", raw)
    path = predict_file(run_dir, tmp_path / "windows.npy")
    assert path == tmp_path / "windows.predictions.npy"
    np.testing.assert_array_equal(np.load(path), predictor.predict(raw).values)
    table = pd.read_csv(predict_file(run_dir, tmp_path / "windows.npy", tmp_path / "p.csv"))
    assert list(table.columns) == ["window", "step", "traffic_volume"] and len(table) == raw.shape[0] * SEQ_LEN


def _traffic_frame() -> pd.DataFrame:
    return pd.read_csv(TRAFFIC_CSV, keep_default_na=False, dtype=str)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda f: f.drop(columns=["temp"]), r"missing column\(s\) \['temp'\]"),
    (lambda f: _cell(f, 3, "temp", ""), r"column 'temp', row 3 \(file line 5\): expected a finite number"),
    (lambda f: _cell(f, 5, "rain_1h", "abc"), r"column 'rain_1h', row 5 \(file line 7\).*'abc'"),
    (lambda f: _cell(f, 7, "date_time", "yesterday"), r"column 'date_time', row 7 \(file line 9\)"),
    (lambda f: _cell(f, 2, "holiday", ""), r"column 'holiday', row 2 \(file line 4\)"),
    (lambda f: f.iloc[:10], r"10 data rows, but the model's windows have 32 steps"),
], ids=["missing-column", "empty-cell", "non-numeric", "bad-date", "empty-holiday", "too-short"])
def test_bad_raw_rows_are_named(run_dir: Path, tmp_path: Path, edit, match: str) -> None:
    path = tmp_path / "rows.csv"
    edit(_traffic_frame()).to_csv(path, index=False)
    with pytest.raises(ValueError, match=match) as raised:
        predict_file(run_dir, path, tmp_path / "out.csv")
    assert str(path) in str(raised.value) or "data rows" in str(raised.value)
    assert not (tmp_path / "out.csv").exists()


def _cell(frame: pd.DataFrame, row: int, column: str, value: str) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[row, column] = value
    return frame


def test_file_errors(run_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj.npy holds Python objects \(dtype object\).*never unpickles"):
        predict_file(run_dir, tmp_path / "obj.npy")
    np.save(tmp_path / "w.npy", np.zeros((1, SEQ_LEN, FEATURES)))
    with pytest.raises(ValueError, match=r"output file must end in one of \['.csv', '.npy'\], got 'p.txt'"):
        predict_file(run_dir, tmp_path / "w.npy", tmp_path / "p.txt")
    with pytest.raises(FileNotFoundError, match="input file"):
        predict_file(run_dir, tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="run directory"):
        load(tmp_path / "no-run")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "empty-run")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(("content", "match"), [
    (b"\x00\x01garbage\xff" * 20, r"is not a valid \.npy array file: it does not start with the \.npy signature"),
    (b"t\n0.0\n0.1\n", r"is not a valid \.npy array file: it starts with the text 't'; a CSV or text file"),
    (b"", r": the file is empty, not a valid \.npy array file"),
    (b"PK\x03\x04" + b"\x00" * 40, r"is not a valid \.npy array file: it is a zip archive \(numpy\.savez"),
    (_npy_bytes(np.zeros((2, SEQ_LEN, FEATURES)))[:200], r"is not a valid \.npy array file: Failed to read all data"),
    (_npy_bytes(np.zeros((2, SEQ_LEN, FEATURES)))[:40], r"is not a valid \.npy array file: its header cannot be read"),
], ids=["garbage", "csv-renamed", "empty", "npz", "truncated-data", "truncated-header"])
def test_a_file_that_is_not_npy_is_named_without_numpy_pickle_talk(run_dir: Path, tmp_path: Path, content: bytes,
                                                                   match: str, monkeypatch) -> None:
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a .npy input must never be unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    path = tmp_path / "windows.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as raised:
        predict_file(run_dir, path, tmp_path / "out.csv")
    assert str(path) in str(raised.value) and "pickle" not in str(raised.value)
    assert "numpy.save(path, array.astype('float32'))" in str(raised.value)
    assert not (tmp_path / "out.csv").exists()


def test_bad_npy_windows_name_the_file(run_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((2, SEQ_LEN, 3)))
    with pytest.raises(ValueError, match=r"w\.npy: windows must have 7 features per step"):
        predict_file(run_dir, tmp_path / "w.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"s\.npy: windows must hold numbers, got dtype <U1 \(first value 'a'\)"):
        predict_file(run_dir, tmp_path / "s.npy")


def test_paths_and_options_of_the_wrong_kind_are_named(run_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((1, SEQ_LEN, FEATURES)))
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(ValueError, match=r"input .*folder\.csv is a folder; pass a file"):
        predict_file(run_dir, tmp_path / "folder.csv")
    with pytest.raises(ValueError, match=r"output .*folder\.csv is a folder; name a file ending in \.csv or \.npy"):
        predict_file(run_dir, tmp_path / "w.npy", tmp_path / "folder.csv")
    with pytest.raises(FileNotFoundError, match=r"run directory .*w\.npy is a file, not a folder"):
        load(tmp_path / "w.npy")
    with pytest.raises(ValueError, match=r"stride must be an int >= 1, got 0"):  # 0 was taken as "default"
        predict_file(run_dir, TRAFFIC_CSV, tmp_path / "p.csv", stride=0)
    with pytest.raises(ValueError, match=r"device 'tpu-ish' is not a torch device; use cpu, cuda or cuda:N"):
        load(run_dir, device="tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' was requested but torch sees no CUDA GPU"):
            load(run_dir, device="cuda")


def test_a_failed_write_keeps_the_previous_output(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    np.save(tmp_path / "w.npy", np.zeros((1, SEQ_LEN, FEATURES)))
    out = tmp_path / "p.npy"
    out.write_bytes(b"previous")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("torchliquid.infer.files.np.save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        predict_file(run_dir, tmp_path / "w.npy", out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy", "w.npy"]  # no temporary file left


# ------------------------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchliquid")
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {}
    for name, help_text, add_arguments, run in COMMANDS:
        add_arguments(sub.add_parser(name, help=help_text))
        runners[name] = run
    args = parser.parse_args(argv)
    args.run_command = runners[args.command]
    return args


def test_plain_argparse_helpers(run_dir: Path, tmp_path: Path) -> None:
    from torchliquid.infer.commands import add_export_parser, add_predict_parser, add_stream_parser

    parser = argparse.ArgumentParser(prog="torchliquid")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_predict_parser, add_export_parser, add_stream_parser):
        add(sub)
    args = parser.parse_args(["predict", "--run", str(run_dir), "--input", str(TRAFFIC_CSV),
                              "--output", str(tmp_path / "p.npy")])
    assert args.func(args) == 0 and np.load(tmp_path / "p.npy").shape == (5, SEQ_LEN, 1)


def test_predict_command(run_dir: Path, tmp_path: Path, capsys) -> None:
    args = _parse(["predict", "--run", str(run_dir), "--input", str(TRAFFIC_CSV), "--output", str(tmp_path / "p.csv")])
    assert args.run_command(args) == 0
    assert "predictions written to" in capsys.readouterr().out and (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_command_carries_the_preprocessing(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    import onnx

    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")  # export refuses a suffix not of the format
    onnx_only = ["--exporter", "torchscript"] if fmt == "onnx" else []
    args = _parse(["export", "--run", str(run_dir), "--format", fmt, "--out", str(out), *onnx_only])
    assert args.run_command(args) == 0
    if fmt == "onnx":
        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        preprocessing = json.loads(props["torchliquid.preprocessing"])
    else:
        extra = {"torchliquid.preprocessing.json": ""}
        with warnings.catch_warnings():  # torch deprecates jit.load (Future- or DeprecationWarning by version)
            warnings.simplefilter("ignore")
            torch.jit.load(str(out), _extra_files=extra)
        preprocessing = json.loads(extra["torchliquid.preprocessing.json"])
    assert preprocessing["seq_len"] == SEQ_LEN and preprocessing["normalization"] == load(run_dir).normalization


def test_export_command_prints_the_verification_and_quiet_silences_it(run_dir: Path, tmp_path: Path,
                                                                      capsys) -> None:
    argv = ["export", "--run", str(run_dir), "--format", "onnx", "--exporter", "torchscript"]
    args = _parse(argv + ["--out", str(tmp_path / "a.onnx")])
    assert args.run_command(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("verified in onnxruntime against eager PyTorch: whole sequences at batch 2 x 3 steps "
                               "and batch 3 x 9 steps (longer than the 3 traced); every output matches, max abs "
                               "difference ")
    assert lines[1] == f"onnx (sequence) written to {tmp_path / 'a.onnx'}" and len(lines) == 2
    args = _parse(argv + ["--out", str(tmp_path / "b.onnx"), "--quiet"])
    assert args.run_command(args) == 0 and (tmp_path / "b.onnx").is_file()
    assert capsys.readouterr() == ("", "")
    args = _parse(argv + ["--out", str(tmp_path / "c.onnx"), "--no-verify"])
    assert args.run_command(args) == 0
    assert capsys.readouterr().out.splitlines()[0] == "not verified (--no-verify): the file was not run in onnxruntime"


def test_export_command_into_a_folder_and_without_onnxruntime(run_dir: Path, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    from torchliquid.cli import main

    argv = ["export", "--run", str(run_dir), "--format", "onnx", "--exporter", "torchscript", "--quiet"]
    assert main(argv + ["--out", str(tmp_path)]) == 0  # an existing folder: the default name inside it
    assert (tmp_path / "model.sequence.onnx").is_file()

    def no_onnxruntime(data):
        raise ImportError("verifying an ONNX export needs onnxruntime: pip install 'torchliquid[export]' "
                          "(or onnxruntime), or pass verify=False")

    monkeypatch.setattr("torchliquid.infer.export._session", no_onnxruntime)
    assert main(argv + ["--out", str(tmp_path / "b.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchliquid export: error: verifying an ONNX export needs onnxruntime") and "--no-verify" in err
    assert err.count("\n") == 1 and not (tmp_path / "b.onnx").exists()


def test_stream_command_equals_whole_window_prediction(run_dir: Path, splits) -> None:
    predictor = load(run_dir)
    raw = _raw(splits.test.x[:1], predictor.normalization)[0]
    text = "# one window, then a reset and its first step again\n"
    lines = [",".join(repr(float(v)) for v in row) for row in raw]
    text += "\n".join(lines) + "\nreset\n" + lines[0]
    out = io.StringIO()
    assert stream_lines(str(run_dir), io.StringIO(text), out) == SEQ_LEN + 1
    streamed = np.array([float(line) for line in out.getvalue().split()])
    expected = predictor.predict(raw).values[:, 0]
    np.testing.assert_allclose(streamed[:SEQ_LEN], expected, rtol=1e-6)  # %.9g printing keeps 9 digits
    assert streamed[SEQ_LEN] == streamed[0]
    with pytest.raises(ValueError, match=r"line 2 \(step 2\), column 3 \(rain_1h\): expected a number >= 0 \(mm of rain in the hour\), got 'x'"):
        stream_lines(str(run_dir), io.StringIO("0,1,2,3,4,5,0.5\n0,1,x,3,4,5,0.5\n"), io.StringIO())
    with pytest.raises(ValueError, match=r"line 1 \(step 1\), column 1 \(holiday\): expected an integer from 0 to 1 "
                                         r"\(1 on a holiday, 0 otherwise\), got 'None'"):
        stream_lines(str(run_dir), io.StringIO("None,1,2,3,4,5,0.5\n"), io.StringIO())
    with pytest.raises(ValueError, match=r"line 1 \(step 1\): expected 7 comma-separated values .*got 3"):
        stream_lines(str(run_dir), io.StringIO("1,2,3\n"), io.StringIO())


@pytest.mark.parametrize(("text", "dt_column", "match", "written"), [
    # lines count every input line from 1; steps count value lines from 1, again after a reset
    ("# header\n\n0,1,2,3,4,5,0.5\n0,1,2,3,nan,5,0.5\n", False,
     r"^line 4 \(step 2\), column 5 \(clouds_all\): got 'nan', expected a finite number; fill or drop", 1),
    ("0,1,2,3,4,5,0.5\nreset\n0,1,2,3,4,5,inf\n", False, r"^line 3 \(step 1\), column 7 \(hour_sin\): got 'inf'", 1),
    ("0,1,2,3,4,5,0.5,1\n0,1,2,3,4,5,0.5,-0.5\n", True,
     r"^line 2 \(step 2\), column 8 \(dt\): got '-0.5', expected a finite elapsed time >= 0$", 1),
    ("0,1,2,3,4,5,0.5\n", True, r"^line 1 \(step 1\): expected 8 comma-separated values \(holiday, .*, hour_sin, dt\)",
     0),
    # feature rows built by hand: values the dataset's features cannot take (weekday 9, the hour unencoded)
    ("0,1,2,3,4,5,0.5\n0,1,2,3,4,9,0.5\n", False,
     r"^line 2 \(step 2\), column 6 \(weekday\): got '9', expected an integer from 0 to 6 \(0 = Monday\)$", 1),
    ("0,1,2,3,4,5,13\n", False,
     r"^line 1 \(step 1\), column 7 \(hour_sin\): got '13', expected a number from 0 to 1 \(sin\(hour", 0),
], ids=["nan-after-comment", "inf-after-reset", "negative-dt", "missing-dt", "weekday-9", "hour-not-encoded"])
def test_stream_messages_count_lines_and_steps_from_one(run_dir: Path, text: str, dt_column: bool, match: str,
                                                        written: int) -> None:
    out = io.StringIO()
    with pytest.raises(ValueError, match=match):
        stream_lines(str(run_dir), io.StringIO(text), out, dt_column=dt_column)
    # one output line per step fed before the bad line, in input order
    assert len(out.getvalue().splitlines()) == written


def test_stream_command_files_and_help(run_dir: Path, tmp_path: Path, capsys) -> None:
    from torchliquid.cli import main

    assert main(["stream", "--run", str(run_dir), "--input", str(tmp_path / "none.txt")]) == 2
    assert capsys.readouterr().err == f"torchliquid stream: error: input file {tmp_path / 'none.txt'} does not exist\n"
    assert main(["stream", "--run", str(run_dir), "--input", str(tmp_path)]) == 2
    assert f"input {tmp_path} is a folder" in capsys.readouterr().err
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage\n")
    assert main(["stream", "--run", str(run_dir), "--input", str(tmp_path / "binary.txt")]) == 2
    assert f"{tmp_path / 'binary.txt'}: not UTF-8 text" in capsys.readouterr().err
    assert main(["stream", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Lines and steps are counted from 1: 'line N' is the N-th line of the input" in help_text


@pytest.mark.parametrize("dataset", ["har", "sine"])
def test_raw_formats_of_other_datasets(tmp_path: Path, dataset: str) -> None:
    """HAR X_*.txt (whitespace, no header, 561 values per line) and the sine CSV (column t)."""
    torch.manual_seed(0)
    if dataset == "har":
        inputs, seq_len, task, names = 561, 16, "classification", [f"feature_{i}" for i in range(1, 562)]
        rows = np.random.default_rng(0).uniform(-1, 1, size=(20, inputs))
        (tmp_path / "X_test.txt").write_text("\n".join(" ".join(f"{v:16.7e}" for v in row) for row in rows) + "\n")
        source = tmp_path / "X_test.txt"
        features = np.loadtxt(source)  # the values as written (7 significant digits)
        stats = {"inputs": {"names": names, "mean": [0.0] * inputs, "std": [1.0] * inputs}, "target": None,
                 "classes": ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]}
        model = CfC(inputs, 8, proj_size=6)
    else:
        inputs, seq_len, task = 2, 48, "regression"
        t = np.linspace(0, 3 * np.pi, 50)
        pd.DataFrame({"t": t}).to_csv(tmp_path / "t.csv", index=False)
        source, features = tmp_path / "t.csv", np.stack([np.sin(t), np.cos(t)], axis=-1)
        stats = {"inputs": {"names": ["sin_t", "cos_t"], "mean": [0.0, 0.0], "std": [1.0, 1.0]},
                 "target": {"names": ["sin_2t"], "mean": [0.0], "std": [1.0]}}
        model = CfC(inputs, 8, proj_size=1)
    predictor = Predictor(model, task=task, normalization=stats, seq_len=seq_len, dataset=dataset)
    table = pd.read_csv(predict_file(predictor, source, tmp_path / "p.csv"))
    starts = [0, len(features) - seq_len]  # one window, then one ending at the last row
    expected = predictor.predict(np.stack([features[s:s + seq_len] for s in starts]).astype(np.float32))
    assert table.loc[table["step"] == 0, "row"].tolist() == starts
    column = "class_id" if task == "classification" else "sin_2t"
    got = table[column].to_numpy().reshape(len(starts), seq_len)
    want = expected.classes if task == "classification" else expected.values[..., 0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _sine_predictor() -> Predictor:
    torch.manual_seed(0)
    stats = {"inputs": {"names": ["sin_t", "cos_t"], "mean": [0.0, 0.0], "std": [1.0, 1.0]},
             "target": {"names": ["sin_2t"], "mean": [0.0], "std": [1.0]}}
    return Predictor(CfC(2, 8, proj_size=1), task="regression", normalization=stats, seq_len=48, dataset="sine")


@pytest.mark.parametrize("columns", [["x", "y"], ["sin_t", "cos_t"], ["time"]])
def test_a_missing_raw_column_names_it_and_what_the_model_takes(tmp_path: Path, columns: list[str]) -> None:
    path = tmp_path / "rows.csv"
    pd.DataFrame({c: np.linspace(0, 1, 50) for c in columns}).to_csv(path, index=False)
    with pytest.raises(ValueError) as raised:
        predict_file(_sine_predictor(), path, tmp_path / "p.csv")
    message = str(raised.value)
    assert message.startswith(f"{path}: missing column(s) ['t'] (found {columns}). ")
    assert "A sine run's model takes 2 features per step (sin_t, cos_t), computed from the raw column(s) ['t']" in message
    assert "a column t (the time in radians" in message and "a .npy of shape (N, 48, 2)" in message


def test_a_missing_traffic_column_says_what_the_model_takes(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    _traffic_frame().drop(columns=["date_time", "clouds_all"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['clouds_all', 'date_time'\] \(found \['holiday'") as raised:
        predict_file(run_dir, path, tmp_path / "p.csv")
    assert "A traffic run's model takes 7 features per step (holiday, temp, rain_1h, snow_1h, clouds_all, weekday, " \
           "hour_sin)" in str(raised.value)


def test_a_file_with_the_wrong_separator_is_told_so(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    _traffic_frame().to_csv(path, index=False, sep=";")
    with pytest.raises(ValueError, match=r"The header was read as one column: the file's separator is not the one"):
        predict_file(run_dir, path, tmp_path / "p.csv")


def test_a_sine_time_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("t\n0.0\n0.1\nnoon\n")
    with pytest.raises(ValueError, match=r"column 't', row 2 \(file line 4\): expected a finite number, found 'noon'"):
        predict_file(_sine_predictor(), path, tmp_path / "p.csv", any_length=True)


def test_raw_files_need_only_the_input_columns(run_dir: Path, tmp_path: Path) -> None:
    """A file to predict for has no target: traffic without traffic_volume (and the unused weather
    text), power without Date, Time and Global_active_power predict exactly as the full files."""
    full = pd.read_csv(predict_file(run_dir, TRAFFIC_CSV, tmp_path / "full.csv"))
    inputs_only = tmp_path / "traffic_inputs.csv"
    _traffic_frame().drop(columns=["traffic_volume", "weather_main", "weather_description"]).to_csv(
        inputs_only, index=False)
    pd.testing.assert_frame_equal(pd.read_csv(predict_file(run_dir, inputs_only, tmp_path / "p.csv")), full)

    from torchliquid.data import DATASETS

    power = DATASETS["power"]
    source = FIXTURES / "power" / "household_power_consumption.txt"
    frame = power.read_frame(source)
    stripped = tmp_path / "power_inputs.txt"
    text = source.read_text().splitlines()
    header = text[0].split(";")
    keep = [i for i, name in enumerate(header) if name not in ("Date", "Time", "Global_active_power")]
    stripped.write_text("\n".join(";".join(line.split(";")[i] for i in keep) for line in text) + "\n")
    np.testing.assert_array_equal(power.features_from_frame(power.read_frame(stripped)),
                                  power.features_from_frame(frame))


def test_registering_the_commands_stays_light() -> None:
    """The CLI imports infer.commands at start-up: it must not pull in pandas, onnx or the data."""
    import subprocess
    import sys

    code = ("import sys, torchliquid.infer.commands as c; "
            "print(sorted(m for m in ('pandas', 'onnx', 'onnxruntime', 'torchliquid.data', 'torchliquid.nn') "
            "if m in sys.modules)); print([n for n, *_ in c.COMMANDS])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "['predict', 'export', 'stream']"


def test_a_value_outside_its_domain_in_a_raw_file_names_the_file_line(run_dir: Path, tmp_path: Path) -> None:
    """A fresh user's report: range errors from a raw file said 'window 1, step 3' but not where
    in the file; the row and line are named as the parse errors name them."""
    path = tmp_path / "rows.csv"
    _cell(_traffic_frame(), 40, "clouds_all", "130").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"feature 'clouds_all' \(column 4\) is 130; expected a number from 0 "
                                         r"to 100 \(cloud cover in %\) \(row 40, file line 42\)$"):
        predict_file(run_dir, path, tmp_path / "out.csv")
