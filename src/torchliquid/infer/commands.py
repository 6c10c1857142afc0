"""CLI subcommands of torchliquid.infer: ``predict``, ``export`` and ``stream``.

Each entry of :data:`COMMANDS` is ``(name, help, add_arguments, run)`` in the shape of the CLI's
``@command`` registry; ``run(args)`` returns the exit code. For a plain argparse CLI,
``add_predict_parser(subparsers)`` (and the export/stream twins) add one subcommand each with
``func=run`` set as its default. This module imports only argparse at
import time (the heavy imports happen inside ``run``), so registering it keeps ``--help`` fast.

    torchliquid predict --run DIR --input FILE [--output FILE] [--stride N] [--any-length]
    torchliquid export  --run DIR --format onnx|torchscript [--form sequence|step] [--out FILE]
    torchliquid stream  --run DIR [--input FILE|-] [--dt-column]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from torchliquid._atomic import check_writable

DEFAULT_EXPORT_NAMES = {"onnx": "model.{form}.onnx", "torchscript": "model.{form}.torchscript.pt"}
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}  # what --out FILE must end in


# -- predict ---------------------------------------------------------------------------------------


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by torchliquid train")
    p.add_argument("--input", required=True,
                   help="a .npy of raw feature windows (N, T, I), or a file in the run's dataset's raw format: "
                        "sine: a CSV with a column t (radians); traffic: the UCI CSV; power: the UCI ';' text "
                        "file; har: an X_*.txt file (README, Inference, lists the columns)")
    p.add_argument("--output", default=None,
                   help=".csv or .npy (default: INPUT.predictions.csv|.npy beside the input)")
    p.add_argument("--stride", type=int, default=None,
                   help="rows between window starts in a raw file (default: the window length)")
    p.add_argument("--batch-size", type=int, default=1024, help="windows per forward pass")
    p.add_argument("--any-length", action="store_true",
                   help="accept windows of another length than the run's (trained) window length")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")


def run_predict(args: argparse.Namespace) -> int:
    from torchliquid.infer.files import predict_file

    path = predict_file(args.run, args.input, args.output, stride=args.stride, batch_size=args.batch_size,
                        any_length=args.any_length, device=args.device)
    print(f"predictions written to {path}", flush=True)
    return 0


# -- export ----------------------------------------------------------------------------------------


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by torchliquid train")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--form", choices=["sequence", "step"], default="sequence",
                   help="whole sequences with dynamic batch and time (default), or one step (x, h, dt)")
    p.add_argument("--out", default=None,
                   help="output file, or a folder to put the default name in (default: RUN/model.FORM.onnx or "
                        "RUN/model.FORM.torchscript.pt)")
    # default None, not "dynamo": a --exporter given with --format torchscript must be seen to refuse it
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default=None,
                   help="ONNX only: torch.export (Scan op, default dynamo) or the legacy TorchScript exporter "
                        "(Loop op)")
    p.add_argument("--no-verify", action="store_true",
                   help="ONNX only: skip running the file in onnxruntime against eager PyTorch (by default "
                        "it is run at two batch sizes and lengths and compared; the check is printed)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def export_run(run_dir: str, fmt: str, out: str | None = None, form: str = "sequence",
               exporter: str = "dynamo", verify: bool = True,
               report: Callable[[str], None] | None = None) -> Path:
    """Export the model of a run; the file's metadata carries the run's preprocessing.

    The exported graph takes NORMALISED inputs (as the model does); the metadata key
    "torchliquid.preprocessing" holds the normalisation statistics, feature and target names,
    task and window length needed to prepare raw data. ``report`` receives the line saying what
    the ONNX verification checked, once it passed.
    """
    from torchliquid.infer.export import export_onnx, export_torchscript
    from torchliquid.infer.predict import Predictor

    if fmt not in DEFAULT_EXPORT_NAMES:
        raise ValueError(f"format must be one of {list(DEFAULT_EXPORT_NAMES)}, got {fmt!r}")
    predictor = Predictor.from_run(run_dir)
    default_name = DEFAULT_EXPORT_NAMES[fmt].format(form=form)
    path = Path(out) if out else Path(run_dir) / default_name
    if path.is_dir():  # --out FOLDER: the default file name inside it
        path = path / default_name
    elif path.suffix.lower() != EXPORT_SUFFIXES[fmt]:  # e.g. --out data.csv would replace a CSV
        raise ValueError(f"--out {out}: {'an' if fmt[0] in 'aeiou' else 'a'} {fmt} file must end in {EXPORT_SUFFIXES[fmt]} (or name an existing "
                         f"folder to write {default_name} in)")
    check_writable(path)  # before the export and its (seconds-long) verification
    preprocessing = {"task": predictor.task, "dataset": predictor.dataset, "seq_len": predictor.seq_len,
                     "feature_names": list(predictor.feature_names), "target_names": list(predictor.target_names),
                     "normalization": predictor.normalization}
    metadata = {"torchliquid.preprocessing": json.dumps(preprocessing)}
    if fmt == "onnx":
        return export_onnx(predictor.model, path, form=form, exporter=exporter, verify=verify, metadata=metadata,
                           report=report)
    return export_torchscript(predictor.model, path, form=form, metadata=metadata)


def run_export(args: argparse.Namespace) -> int:
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    if args.format != "onnx":  # refused rather than ignored: the user expects them to do something
        given = [flag for flag, value in (("--exporter", args.exporter), ("--no-verify", args.no_verify)) if value]
        if given:
            raise ValueError(f"{' and '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --format onnx, "
                             f"not --format {args.format}; leave {'it' if len(given) == 1 else 'them'} out")
    try:
        path = export_run(args.run, args.format, args.out, args.form, args.exporter or "dynamo", not args.no_verify,
                          report=say)
    except ImportError as error:  # onnx/onnxruntime/onnxscript not installed: one line, not a traceback
        message = str(error).replace("verify=False", "--no-verify")
        raise ValueError(message if "pip install" in message else
                         f"{message}; install the export extras: pip install 'torchliquid[export]'") from None
    if args.format == "onnx" and args.no_verify:
        say("not verified (--no-verify): the file was not run in onnxruntime")
    say(f"{args.format} ({args.form}) written to {path}")
    return 0


# -- stream ----------------------------------------------------------------------------------------


STREAM_NUMBERING = ("Lines and steps are counted from 1: 'line N' is the N-th line of the input (blank, '#' and "
                    "'reset' lines included) and 'step K' the K-th value line since the start or the last 'reset'; "
                    "the output has one line per step, in input order.")


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{(p.description or '').rstrip('.')}. {STREAM_NUMBERING}".lstrip(". ")
    p.add_argument("--run", required=True, help="run directory written by torchliquid train")
    p.add_argument("--input", default="-",
                   help="text with one step per line: I comma-separated raw feature values (default: stdin); "
                        "blank and '#' lines are skipped, a line 'reset' starts a new sequence")
    p.add_argument("--dt-column", action="store_true",
                   help="each line ends with one more value: the time elapsed since the previous line (>= 0)")


def stream_lines(run_dir: str, lines: TextIO, out: TextIO, dt_column: bool = False) -> int:
    """Feed ``lines`` one step at a time through the run's model; write one prediction per line.

    Blank lines and lines starting with '#' are skipped; a line "reset" starts a new sequence.
    Returns the number of steps predicted. Raises ValueError naming the line (counted from 1,
    every input line included) and the step (counted from 1 since the start or the last reset)
    of a bad value; see :data:`STREAM_NUMBERING`.
    """
    import numpy as np

    from torchliquid.data.domains import first_violation
    from torchliquid.infer.predict import Predictor
    from torchliquid.infer.stream import Stream

    predictor = Predictor.from_run(run_dir)
    stream = Stream(predictor.model)
    names = list(predictor.feature_names) + (["dt"] if dt_column else [])
    steps, step = 0, 0  # steps written in all; the step number within the current sequence
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.lower() == "reset":
            stream.reset()
            step = 0
            continue
        step += 1
        where = f"line {number} (step {step})"
        fields = [field.strip() for field in text.split(",")]
        if len(fields) != len(names):
            raise ValueError(f"{where}: expected {len(names)} comma-separated values ({', '.join(names)}), "
                             f"got {len(fields)}")
        try:
            values = np.array([float(field) for field in fields])
        except ValueError:
            bad = next(i for i, field in enumerate(fields) if not _is_float(field))
            domain = predictor.feature_domains.get(names[bad])  # its encoding: holiday is 0/1, not a name
            wanted = domain.describe() if domain else "a number"
            raise ValueError(f"{where}, column {bad + 1} ({names[bad]}): expected {wanted}, got {fields[bad]!r}") from None
        bad_values = ~np.isfinite(values)
        if dt_column:
            bad_values[-1] |= values[-1] < 0
        if bad_values.any():
            bad = int(np.argmax(bad_values))
            is_dt = dt_column and bad == len(names) - 1
            wanted = "a finite elapsed time >= 0" if is_dt else "a finite number; fill or drop missing values first"
            raise ValueError(f"{where}, column {bad + 1} ({names[bad]}): got {fields[bad]!r}, expected {wanted}")
        outside = first_violation(values[None, None, : predictor.input_size], predictor.feature_names,
                                  predictor.feature_domains)
        if outside is not None:
            bad, domain = outside[2], outside[3]
            raise ValueError(f"{where}, column {bad + 1} ({names[bad]}): got {fields[bad]!r}, "
                             f"expected {domain.describe()}")
        raw_TI, _ = predictor.check_windows(values[None, : predictor.input_size], any_length=True)
        dt = float(values[-1]) if dt_column else None
        y = stream.step(predictor.normalize(raw_TI[0, 0]), dt)  # (I,) -> (O,)
        prediction = predictor.postprocess(y[None, None])
        if prediction.task == "classification":
            class_id = int(prediction.classes[0, 0])
            out.write(f"{predictor.target_names[class_id] if predictor.target_names else class_id}\n")
        else:
            out.write(",".join(f"{v:.9g}" for v in prediction.values[0, 0]) + "\n")
        out.flush()
        steps += 1
    return steps


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def run_stream(args: argparse.Namespace) -> int:
    name = "<stdin>" if args.input == "-" else args.input
    path = Path(args.input)
    if args.input != "-" and path.is_dir():
        raise ValueError(f"input {path} is a folder; pass a text file with one step per line, or - for stdin")
    if args.input != "-" and not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    try:
        if args.input == "-":
            stream_lines(args.run, sys.stdin, sys.stdout, args.dt_column)
        else:
            with open(path, encoding="utf-8") as handle:
                stream_lines(args.run, handle, sys.stdout, args.dt_column)
    except UnicodeDecodeError as error:
        raise ValueError(f"{name}: not UTF-8 text ({error.reason}); expected one step per line of "
                         "comma-separated numbers") from None
    except BrokenPipeError:  # the reader went away (e.g. | head): stop quietly, as cat does
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    return 0


COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]], ...] = (
    ("predict", "predict with a trained run for a .npy of windows or a raw data file", add_predict_arguments,
     run_predict),
    ("export", "export a trained run's model to ONNX or TorchScript (dynamic batch and time)",
     add_export_arguments, run_export),
    ("stream", "online prediction: one step per input line, hidden state carried", add_stream_arguments,
     run_stream),
)


def _add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    _, help_text, add_arguments, run = next(entry for entry in COMMANDS if entry[0] == name)
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``predict`` to an argparse subparsers object; ``args.func(args)`` runs it."""
    return _add_parser(subparsers, "predict")


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to an argparse subparsers object; ``args.func(args)`` runs it."""
    return _add_parser(subparsers, "export")


def add_stream_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``stream`` to an argparse subparsers object; ``args.func(args)`` runs it."""
    return _add_parser(subparsers, "stream")
