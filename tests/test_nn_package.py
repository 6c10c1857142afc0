"""Package-level promises of torchliquid and torchliquid.nn: the torch version guard (A15) and
runnable documentation examples (A20).
"""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Each line: the torch version to pretend, then whether `import torchliquid` must succeed.
_GUARD_SCRIPT = """
import sys, torch
results = []
for version in ("2.1.2", "1.13.1+cu117", "2.2.0", "2.10.0+cpu"):
    torch.__version__ = version
    sys.modules.pop("torchliquid", None)
    try:
        import torchliquid
        results.append(f"{version} ok")
    except ImportError as error:
        results.append(f"{version} ImportError: {error}")
print("\\n".join(results))
"""


def test_old_torch_is_refused_at_import_with_the_minimum_version():
    result = subprocess.run([sys.executable, "-c", _GUARD_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for old in ("2.1.2", "1.13.1+cu117"):
        assert lines[old].startswith("ImportError: torchliquid needs PyTorch >= 2.2, found " + old), lines[old]
    assert lines["2.2.0"] == "ok"
    assert lines["2.10.0+cpu"] == "ok", "versions compare as numbers, not strings"


DOCUMENTED_MODULES = [
    "torchliquid.nn.cfc",
    "torchliquid.nn.cfc_cell",
    "torchliquid.nn.ltc",
    "torchliquid.nn.ltc_cell",
    "torchliquid.nn.mixed_memory",
    "torchliquid.nn.registry",
    "torchliquid.compat",
    "torchliquid._atomic",
    "torchliquid.data",
    "torchliquid.experiments",
    "torchliquid.experiments.tables",
    "torchliquid.monitor.summary",
]
# Run with its own fixtures in tests/test_infer_stream.py.
EXAMPLES_TESTED_ELSEWHERE = {"torchliquid.infer.stream"}


def test_every_module_with_examples_has_them_run():
    """A new '>>>' example anywhere in the package is run by the test above, not left to rot."""
    package = Path(importlib.import_module("torchliquid").__file__).parent
    with_examples = set()
    for path in package.rglob("*.py"):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(package.parent).with_suffix("").parts
            with_examples.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert with_examples == set(DOCUMENTED_MODULES) | EXAMPLES_TESTED_ELSEWHERE


@pytest.mark.parametrize("module_name", DOCUMENTED_MODULES)
def test_docstring_examples_run(module_name):
    if module_name == "torchliquid.compat":
        pytest.importorskip("ncps")
    module = importlib.import_module(module_name)
    torch.manual_seed(0)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module_name} has no examples to run"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module_name} failed"
