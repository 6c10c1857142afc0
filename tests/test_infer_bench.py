"""benchmarks/bench_infer.py --smoke runs end to end and writes its JSON (no timing is asserted).

Speed lives in the benchmark's report (benchmarks/RESULTS_infer.md); this only proves that every
model x runtime cell is either measured or skipped with its reason, so the script cannot rot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_smoke_run_measures_or_explains_every_cell(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_infer
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "bench.json"
    bench_infer.main(["--smoke", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["latency"]) == {"smoke"}
    tables = {"latency": result["latency"]["smoke"], "throughput": result["throughput"]}
    for table, rows in tables.items():
        assert set(rows) == set(bench_infer.SUBJECTS), table
        for model, row in rows.items():
            assert set(row) == set(bench_infer.RUNTIMES), (table, model)
            for runtime, entry in row.items():
                expected_skip = (
                    runtime == "stream" and (table == "throughput" or not model in ("cfc", "ltc"))
                    or model.startswith("ncps") and (runtime == "torchscript" or table == "throughput"
                                                     and runtime == "onnxruntime")
                )
                assert ("skipped" in entry) == expected_skip, (table, model, runtime, entry)
                if not expected_skip:
                    assert entry["median_s"] > 0 and entry["p99_s"] >= entry["median_s"]
    assert "smoke step cfc: torchliquid stream vs ncps layer" in result["ratios"]
    assert "smoke step ltc: torchliquid layer vs ncps layer" in result["ratios"]
    assert result["machine"]["ncps"] == "1.0.1"
    assert "single-step latency" in capsys.readouterr().out
