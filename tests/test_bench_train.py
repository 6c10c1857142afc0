"""benchmarks/bench_train.py --smoke runs end to end and writes its JSON (no timing is asserted).

Speed lives in benchmarks/RESULTS.md; this only proves the training benchmark still measures every
contender (torchliquid fast paths and reference loop, ncps, LSTM, GRU) so the script cannot rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def test_smoke_run_measures_every_contender(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    cases = {r["case"]: r for r in result["records"]}
    for needed in ("tl-ltc-reference", "ncps-cfc", "ncps-ltc", "lstm", "gru"):
        assert needed in cases, f"{needed} missing from {sorted(cases)}"
    assert any(c.startswith("tl-cfc") for c in cases) and any(c.startswith("tl-ltc-native") or
                                                               c.startswith("tl-ltc-torch") for c in cases)
    for case, record in cases.items():
        if record.get("skipped") is None:
            assert record["seq_per_s"]["median"] > 0, case
    ratio = result["ratios"][0]
    assert {"cfc_vs_ncps", "ltc_vs_ncps", "cfc_vs_lstm", "ltc_vs_lstm"} <= set(ratio)
    assert "ratios of training throughput" in done.stdout


def test_ab_native_smoke_run_compares_two_builds() -> None:
    """benchmarks/ab_native.py builds HEAD's C kernels beside the working tree's in one process."""
    import pytest

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: ab_native reads the base revision from git")
    from torchliquid.nn import _fused_native as native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.failure()}")
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "ab_native.py"), "--smoke", "--base", "HEAD"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "base (HEAD)" in done.stdout and "tree/base" in done.stdout, done.stdout
