"""predict and export refuse to destroy files (a new user's report): an --output that is the
--input, an export --out of another kind than the format (a CSV replaced by an ONNX file), and
ONNX-only flags given with --format torchscript. One line, exit code 2, nothing written.

The run is tiny (CfC, 8 units, one epoch on the generated sine data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchliquid import cli
from _cli import run_cli, one_line_error  # noqa: E402


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cfc-sine"
    assert cli.main(["train", "--model", "cfc", "--dataset", "sine", "--units", "8", "--epochs", "1",
                     "--device", "cpu", "--out", str(out), "--quiet", "--monitor-interval", "0",
                     "--threads", "1"]) == 0
    return out


def _sine_csv(path: Path) -> Path:
    t = np.linspace(0, 3 * np.pi, 48)
    path.write_text("t\n" + "\n".join(repr(float(v)) for v in t) + "\n")
    return path


@pytest.mark.parametrize("kind", ["csv", "npy", "npy-other-spelling", "default-output"])
def test_predict_refuses_to_overwrite_its_input(capsys, sine_run, tmp_path, kind):
    if kind == "csv":
        source = _sine_csv(tmp_path / "t.csv")
        output = ["--output", str(source)]
    elif kind == "default-output":  # the default output of NAME.predictions.csv is that file
        source = _sine_csv(tmp_path / "t.predictions.csv")
        output = []
    else:
        source = tmp_path / "w.npy"
        t = np.linspace(0, 3 * np.pi, 48)
        np.save(source, np.stack([np.sin(t), np.cos(t)], -1)[None].astype("float32"))
        (tmp_path / "sub").mkdir()
        spelled = tmp_path / "sub" / ".." / "w.npy" if kind == "npy-other-spelling" else source
        output = ["--output", str(spelled)]
    before = source.read_bytes()
    code, _, err = run_cli(capsys, "predict", "--run", str(sine_run), "--input", str(source), *output)
    one_line_error(code, err, "is the input file", "overwrite", "--output")
    assert source.read_bytes() == before


def test_predict_to_another_file_still_works(capsys, sine_run, tmp_path):
    source = _sine_csv(tmp_path / "t.csv")
    code, out, err = run_cli(capsys, "predict", "--run", str(sine_run), "--input", str(source),
                             "--output", str(tmp_path / "p.csv"))
    assert code == 0, err
    assert (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize("fmt, name, wanted", [("onnx", "some.csv", ".onnx"),
                                               ("onnx", "model.pt", ".onnx"),
                                               ("torchscript", "model.onnx", ".pt"),
                                               ("torchscript", "noext", ".pt")])
def test_export_refuses_an_out_of_another_kind(capsys, sine_run, tmp_path, fmt, name, wanted):
    target = tmp_path / name
    if name == "some.csv":
        target.write_text("a,b\n1,2\n")
    code, _, err = run_cli(capsys, "export", "--run", str(sine_run), "--format", fmt,
                           "--out", str(target), "--quiet")
    one_line_error(code, err, f"--out {target}", wanted)
    assert (target.read_text() == "a,b\n1,2\n") if name == "some.csv" else not target.exists()


@pytest.mark.parametrize("flags, named", [(["--exporter", "dynamo"], "--exporter"),
                                          (["--exporter", "torchscript"], "--exporter"),
                                          (["--no-verify"], "--no-verify")])
def test_export_refuses_onnx_only_flags_with_torchscript(capsys, sine_run, tmp_path, flags, named):
    code, _, err = run_cli(capsys, "export", "--run", str(sine_run), "--format", "torchscript",
                           "--out", str(tmp_path / "m.pt"), *flags)
    one_line_error(code, err, named, "--format onnx")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("command", ["predict", "export"])
def test_an_output_below_a_file_is_one_line(capsys, sine_run, tmp_path, command):
    """A second user's report: an output path inside an existing file was a FileExistsError
    traceback."""
    blocker = tmp_path / "good.npy"
    blocker.write_bytes(b"keep me")
    if command == "predict":
        argv = ["predict", "--run", str(sine_run), "--input", str(_sine_csv(tmp_path / "in.csv")),
                "--output", str(blocker / "out.npy")]
    else:
        argv = ["export", "--run", str(sine_run), "--format", "torchscript", "--out", str(blocker / "m.pt")]
    code, _, err = run_cli(capsys, *argv)
    one_line_error(code, err, str(blocker))
    assert blocker.read_bytes() == b"keep me"


def test_predict_output_that_is_a_folder_says_so(capsys, sine_run, tmp_path):
    code, _, err = run_cli(capsys, "predict", "--run", str(sine_run), "--input", str(_sine_csv(tmp_path / "in.csv")),
                           "--output", str(tmp_path))
    one_line_error(code, err, f"output {tmp_path} is a folder")


def test_postprocess_takes_numpy_as_well_as_tensors(sine_run):
    from torchliquid import infer

    predictor = infer.load(sine_run)
    raw = np.linspace(-1, 1, 5, dtype=np.float32).reshape(1, 5, 1)
    from_numpy, from_tensor = predictor.postprocess(raw), predictor.postprocess(torch.from_numpy(raw))
    np.testing.assert_array_equal(from_numpy.values, from_tensor.values)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
@pytest.mark.parametrize("command", ["predict", "export"])
def test_an_unwritable_output_is_named_before_any_work(capsys, sine_run, tmp_path, command):
    """export ran its seconds-long ONNX check before failing on a temporary file's random name."""
    target = Path("/proc/torchliquid-test-out") / ("p.csv" if command == "predict" else "m.onnx")
    argv = (["predict", "--run", str(sine_run), "--input", str(_sine_csv(tmp_path / "in.csv")), "--output", str(target)]
            if command == "predict" else ["export", "--run", str(sine_run), "--format", "onnx", "--out", str(target)])
    code, out, err = run_cli(capsys, *argv)
    one_line_error(code, err, f"cannot write {target}")
    assert ".tmp" not in err and ".probe" not in err and "verified" not in out
