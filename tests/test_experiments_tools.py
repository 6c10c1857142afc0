"""The profiling helper and the ``matrix`` CLI commands."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from test_experiments_fakes import result_dict, store_record
from torchliquid.experiments.commands import add_matrix_arguments, add_matrix_parser, run_matrix_command
from torchliquid.monitor.profiling import profile_steps
from torchliquid.experiments.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]


def distinctive_step_function() -> float:
    return sum(i * i for i in range(200))


def test_cprofile_counts_only_profiled_steps_and_names_the_function(tmp_path: Path) -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        distinctive_step_function()

    info = profile_steps(step, kind="cprofile", warmup=2, steps=3, out_dir=tmp_path)
    assert len(calls) == 5 and info["steps"] == 3 and info["seconds_per_step"] == pytest.approx(info["seconds"] / 3)
    text = Path(info["files"]["text"]).read_text()
    assert "distinctive_step_function" in text and "cumulative" in text
    # distinctive_step_function ran 3 times under the profiler (the 2 warm-up calls are not counted).
    assert re.search(r"^\s*3\s.*distinctive_step_function", text, re.MULTILINE)
    assert Path(info["files"]["stats"]).stat().st_size > 0


def test_torch_profiler_writes_operator_table_and_chrome_trace(tmp_path: Path) -> None:
    a = torch.randn(32, 32)
    info = profile_steps(lambda: (a @ a).relu_(), kind="torch", warmup=1, steps=2, out_dir=tmp_path)
    text = Path(info["files"]["text"]).read_text()
    assert "aten::mm" in text and "Self CPU" in text
    trace = json.loads(Path(info["files"]["trace"]).read_text())
    assert any("aten::mm" in str(e.get("name")) for e in trace["traceEvents"])


@pytest.mark.parametrize("kwargs, match", [({"kind": "perf"}, "cprofile"), ({"steps": 0}, "steps"),
                                           ({"warmup": -1}, "warmup")])
def test_profile_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        profile_steps(lambda: None, out_dir=tmp_path, **kwargs)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchliquid")
    add_matrix_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_matrix_run_dry_run_prints_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "thesis"
    args = _parse(["matrix", "run", str(ROOT / "configs" / "thesis.toml"), "--out", str(out), "--dry-run"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "80 cells" in printed and "skip" in printed and not out.exists()


def test_matrix_run_bad_file_is_exit_2_with_the_file_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nepoch = 1\n")
    args = _parse(["matrix", "run", str(bad), "--dry-run"])
    assert args.func(args) == 2
    assert "bad.toml" in capsys.readouterr().err


def test_matrix_report_and_compare_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name, seconds in (("a", 100.0), ("b", 25.0)):
        ResultStore(tmp_path / name / "results.jsonl").append(
            store_record(result_dict("cfc", "har", "cpu", 64, seconds), "cpu"))
    args = _parse(["matrix", "report", str(tmp_path / "a"), "--html"])
    assert args.func(args) == 0
    assert (tmp_path / "a" / "report.md").exists() and (tmp_path / "a" / "report.html").exists()
    args = _parse(["matrix", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert args.func(args) == 0
    assert f"{100.0 / 25.0:.3g}" in capsys.readouterr().out


def test_registry_style_hook_dispatches_the_same_commands(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="matrix")
    add_matrix_arguments(parser)
    args = parser.parse_args(["report", str(tmp_path / "missing")])
    assert run_matrix_command(args) == 2  # no results.jsonl there: a clear error, not a traceback
