"""``torchliquid matrix run|report|compare``: argparse wiring for the CLI (a thin shell).

Hook into the main CLI either way::

    # torchliquid.cli's COMMANDS registry (add_arguments(parser), run(args) -> exit code)
    command("matrix", MATRIX_HELP, add_matrix_arguments)(run_matrix_command)

    # plain argparse
    add_matrix_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args()
    return args.func(args)

Exit codes: 0 ok, 1 some cells failed, 2 bad input (message on stderr), 130 stopped by SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .report import compare_matrices, write_report
from .runner import run_matrix
from .spec import load_matrix


MATRIX_HELP = "run, report and compare experiment matrices (configs/*.toml)"


def add_matrix_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``matrix`` with its ``run``, ``report`` and ``compare`` sub-commands; the parsed
    namespace's ``func(args)`` runs the chosen one and returns the exit code."""
    matrix = subparsers.add_parser("matrix", help=MATRIX_HELP, description=MATRIX_HELP)
    add_matrix_arguments(matrix)
    matrix.set_defaults(func=run_matrix_command)
    return matrix


def run_matrix_command(args: argparse.Namespace) -> int:
    """Run the ``matrix`` sub-command chosen on the command line; returns the exit code."""
    return args.matrix_func(args)


def add_matrix_arguments(matrix: argparse.ArgumentParser) -> None:
    """Add the ``run``, ``report`` and ``compare`` sub-commands to a ``matrix`` parser."""
    sub = matrix.add_subparsers(dest="matrix_command", metavar="{run,report,compare}")
    sub.required = True

    run = sub.add_parser("run", help="run every cell this machine can run (resumes)",
                         description="Run a matrix file; rerunning resumes: finished cells are skipped, "
                                     "failed and interrupted ones rerun.")
    run.add_argument("file", type=Path, help="matrix TOML, e.g. configs/quick.toml")
    run.add_argument("--out", type=Path, default=None, help="results folder (default: results/<matrix name>)")
    run.add_argument("--dry-run", action="store_true", help="list cells, skips and estimated time; run nothing")
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                     help="stop a cell after this long and record it as failed")
    run.add_argument("--no-report", action="store_true", help="do not write report.md after the run")
    run.set_defaults(matrix_func=_run)

    report = sub.add_parser("report", help="write report.md (+ CSV, PNG) for a results folder")
    report.add_argument("dir", type=Path, help="results folder written by `matrix run`")
    report.add_argument("--html", action="store_true", help="also write one self-contained report.html")
    report.add_argument("--reference", type=Path, default=None,
                        help="published numbers CSV (default: configs/thesis_reference.csv)")
    report.set_defaults(matrix_func=_report)

    compare = sub.add_parser("compare", help="two results folders side by side")
    compare.add_argument("a", type=Path, help="results folder A (e.g. before)")
    compare.add_argument("b", type=Path, help="results folder B (e.g. after)")
    compare.add_argument("--markdown", action="store_true", help="print a Markdown table instead of text")
    compare.set_defaults(matrix_func=_compare)


def _error(message: str) -> int:
    print(f"torchliquid matrix: error: {message}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    try:
        matrix = load_matrix(args.file)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    out = args.out if args.out is not None else Path("results") / matrix.name
    try:
        result = run_matrix(matrix, out, dry_run=args.dry_run, cell_timeout_s=args.timeout)
    except RuntimeError as exc:  # another runner holds the folder
        return _error(str(exc))
    print(result.summary())
    if args.dry_run:
        return 0
    if not args.no_report and (out / "results.jsonl").exists():
        print(f"report: {write_report(out)}")
    if result.interrupted:
        return 130
    return 1 if any(s != "done" for s in result.statuses.values()) else 0


def _report(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.dir, html=args.html, reference=args.reference)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    print(path)
    if args.html:
        print(path.with_suffix(".html"))
    return 0


def _compare(args: argparse.Namespace) -> int:
    try:
        table = compare_matrices(args.a, args.b)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    print(table.title)
    print(table.markdown() if args.markdown else table.text())
    print(table.note)
    return 0
