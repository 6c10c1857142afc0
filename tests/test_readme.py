"""Every Python example in the README runs as written (field case A20: docs out of sync with the API).

A block preceded by an HTML comment containing "not executed" is skipped; the comment says why.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.S)


def _examples() -> list[tuple[int, str]]:
    text = README.read_text()
    examples = []
    for match in BLOCK.finditer(text):
        if "not executed" in match.group("before"):
            continue
        line = text[: match.start("code")].count("\n") + 1
        examples.append((line, match.group("code")))
    return examples


def test_readme_has_examples() -> None:
    assert _examples(), "README lost its runnable Python example"


@pytest.mark.parametrize("line, code", _examples(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_example_runs(line: int, code: str) -> None:
    namespace: dict = {}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    # The ten-line example promises these shapes in its comments (its last call is the LTC's).
    if "ltc" in namespace:
        assert tuple(namespace["y"].shape) == (8, 32, 1)
        assert tuple(namespace["h"].shape) == (8, 64)
