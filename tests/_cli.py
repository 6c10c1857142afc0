"""Calling the CLI in-process from tests, and what every argument error must look like."""

from __future__ import annotations

from torchliquid import cli


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `torchliquid ARGV`, run in this process."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *names: str) -> None:
    """Exit 2 with one line on stderr, no traceback, naming each of `names`."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)
