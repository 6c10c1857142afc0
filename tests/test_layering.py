"""Keeps the package's import arrows pointing downward (see README, "Architecture").

Each rule names a package and the torchliquid packages it must never import; the check parses
import statements, so it fails on a new forbidden import before any behaviour breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "torchliquid"

# package -> torchliquid sub-packages/modules it may not import
FORBIDDEN = {
    "nn": {"data", "train", "runtime", "monitor", "experiments", "infer", "cli", "compat"},
    "data": {"nn", "train", "runtime", "monitor", "experiments", "infer", "cli", "compat"},
    "monitor": {"nn", "data", "train", "experiments", "infer", "cli", "compat"},
    "runtime": {"nn", "data", "train", "monitor", "experiments", "infer", "cli", "compat"},
    "train": {"nn", "data", "experiments", "infer", "cli", "compat"},
    "experiments": {"cli"},
    "infer": {"experiments", "cli"},
}

# Third-party packages that only tests and compat may import (field case A15: importing
# torchliquid must never pull in ncps, TensorFlow or Keras).
FORBIDDEN_THIRD_PARTY = {"ncps", "tensorflow", "keras"}


def _modules(package: str) -> list[Path]:
    single = PACKAGE / f"{package}.py"
    if single.exists():
        return [single]
    return sorted((PACKAGE / package).rglob("*.py"))


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the file's package
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                module = ".".join(base + ((node.module,) if node.module else ()))
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downward(package: str) -> None:
    violations = []
    for path in _modules(package):
        for name in _imported_names(path):
            parts = name.split(".")
            if parts[0] == "torchliquid" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, "layering broken:\n" + "\n".join(violations)


def test_library_never_imports_reference_frameworks() -> None:
    violations = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py":
            continue  # converts ncps models; imports ncps lazily inside functions
        for name in _imported_names(path):
            if name.split(".")[0] in FORBIDDEN_THIRD_PARTY:
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, "\n".join(violations)
