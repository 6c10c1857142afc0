"""tests/helpers finds the shared real data from a clone anywhere: $TORCHLIQUID_SHARED_DATA, then
shared/data in or beside the repository, then /work/shared/data; a skip says how to point at it."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _helpers():
    spec = importlib.util.spec_from_file_location("make_har_dir_for_test",
                                                  Path(__file__).parent / "helpers" / "make_har_dir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shared_data_env_then_machine_folder(tmp_path, monkeypatch):
    helpers = _helpers()
    clone = tmp_path / "elsewhere" / "clone"
    monkeypatch.setattr(helpers, "__file__", str(clone / "tests" / "helpers" / "make_har_dir.py"))
    machine = tmp_path / "work-shared-data"
    machine.mkdir()
    monkeypatch.setattr(helpers, "MACHINE_SHARED_DATA", machine)
    monkeypatch.delenv("TORCHLIQUID_SHARED_DATA", raising=False)
    assert helpers.shared_data_dir() == machine  # a clone with no shared/ near it
    monkeypatch.setenv("TORCHLIQUID_SHARED_DATA", str(tmp_path / "mine"))
    assert helpers.shared_data_dir() == tmp_path / "mine"
    assert "TORCHLIQUID_SHARED_DATA" in helpers.missing_shared(tmp_path / "mine" / "x")
