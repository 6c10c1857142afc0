"""Every Python example in the README runs as written (field case A20: docs out of sync with the API).

A block preceded by an HTML comment containing "not executed" is skipped; the comment says why.
A block whose comment contains "trains runs/cfc-sine" runs in a folder where a 1-epoch CfC sine run
was trained into runs/cfc-sine first (the inference example needs a trained run).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.S)


NEEDS_RUN = "trains runs/cfc-sine"


def _examples() -> list[tuple[int, str]]:
    text = README.read_text()
    examples = []
    for match in BLOCK.finditer(text):
        if "not executed" in match.group("before"):
            continue
        line = text[: match.start("code")].count("\n") + 1
        examples.append((line, match.group("code"), NEEDS_RUN in match.group("before")))
    return examples


def test_readme_has_examples() -> None:
    assert _examples(), "README lost its runnable Python example"
    assert any(needs_run for *_, needs_run in _examples()), "README lost its runnable inference example"


@pytest.mark.parametrize("line, code, needs_run", _examples(),
                         ids=lambda v: f"line{v}" if isinstance(v, int) and not isinstance(v, bool) else "")
def test_readme_example_runs(line: int, code: str, needs_run: bool, tmp_path, monkeypatch) -> None:
    if needs_run:
        from torchliquid import cli

        monkeypatch.chdir(tmp_path)
        argv = ["train", "--model", "cfc", "--dataset", "sine", "--epochs", "1", "--units", "8",
                "--device", "cpu", "--out", "runs/cfc-sine", "--quiet"]
        assert cli.main(argv) == 0
    namespace: dict = {}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    # The ten-line example promises these shapes in its comments (its last call is the LTC's).
    if "ltc" in namespace:
        assert tuple(namespace["y"].shape) == (8, 32, 1)
        assert tuple(namespace["h"].shape) == (8, 64)
    if needs_run:  # what the inference example's comments promise
        assert namespace["values"].shape == (48, 1) and namespace["last"].shape == (1, 1, 1)
        assert abs(float(namespace["last"][0, 0, 0]) - float(namespace["values"][-1, 0])) < 1e-5
