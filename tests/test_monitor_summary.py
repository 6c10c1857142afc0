"""Aggregation over recorded sample series: pure functions, hand-computed answers.

Start here for what a summary means: every expected number below is worked out in a
comment from the series in the test, not produced by the code under test.
"""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from torchliquid.monitor import merge_rank_summaries, summarize, write_samples_csv
from torchliquid.monitor.summary import counter_increase, trapezoid

# A 3-tick recording of one GPU with an energy counter and the host.
SERIES = [
    {"t": 0.0, "device": "gpu0", "util_pct": 10.0, "power_w": 100.0, "energy_j": 0.0},
    {"t": 0.0, "device": "host", "cpu_util_pct": 50.0, "rss_mib": 100.0},
    {"t": 0.2, "device": "gpu0", "util_pct": 70.0, "power_w": 300.0, "energy_j": 25.0},
    {"t": 0.2, "device": "host", "cpu_util_pct": 70.0, "rss_mib": 300.0},
    {"t": 0.4, "device": "gpu0", "util_pct": 40.0, "power_w": 200.0, "energy_j": 60.0},
    {"t": 0.4, "device": "host", "cpu_util_pct": 90.0, "rss_mib": 200.0},
]


def test_means_and_peaks_per_device() -> None:
    s = summarize(SERIES, interval=0.2)
    gpu, host = s["devices"]["gpu0"], s["devices"]["host"]
    assert gpu["util_pct_mean"] == pytest.approx(40.0)  # (10 + 70 + 40) / 3
    assert gpu["util_pct_peak"] == 70.0
    assert host["rss_mib_mean"] == pytest.approx(200.0)  # (100 + 300 + 200) / 3
    assert host["rss_mib_peak"] == 300.0
    assert host["cpu_util_pct_mean"] == pytest.approx(70.0)
    assert gpu["n_samples"] == host["n_samples"] == 3
    assert gpu["duration_s"] == pytest.approx(0.4)
    assert (s["n_samples"], s["n_ticks"], s["interval_s"]) == (6, 3, 0.2)
    assert s["duration_s"] == pytest.approx(0.4)


def test_energy_is_counter_difference_when_reported() -> None:
    # Counter 0 -> 25 -> 60 J gives 60 J; power by trapezoid would give
    # 0.5*(100+300)*0.2 + 0.5*(300+200)*0.2 = 40 + 50 = 90 J, so the counter must win.
    gpu = summarize(SERIES)["devices"]["gpu0"]
    assert gpu["energy_j"] == pytest.approx(60.0)
    assert gpu["energy_source"] == "counter"
    assert "energy_j_mean" not in gpu and "energy_j_peak" not in gpu  # cumulative: no stats


def test_energy_is_power_trapezoid_without_counter() -> None:
    no_counter = [{k: v for k, v in r.items() if k != "energy_j"} for r in SERIES]
    gpu = summarize(no_counter)["devices"]["gpu0"]
    assert gpu["energy_j"] == pytest.approx(90.0)  # worked out in the test above
    assert gpu["energy_source"] == "power_trapezoid"
    assert "energy_j" not in summarize(no_counter)["devices"]["host"]  # no power, no energy


def test_trapezoid_uneven_spacing_and_order_independence() -> None:
    # Final sample at stop() lands off-grid: t = 0, 0.2, 0.25 with P = 100, 100, 300.
    # 100*0.2 + 0.5*(100+300)*0.05 = 20 + 10 = 30 J.
    assert trapezoid([0.0, 0.2, 0.25], [100.0, 100.0, 300.0]) == pytest.approx(30.0)
    rows = [{"t": t, "device": "g", "power_w": p} for t, p in [(0.25, 300.0), (0.0, 100.0), (0.2, 100.0)]]
    assert summarize(rows)["devices"]["g"]["energy_j"] == pytest.approx(30.0)


def test_counter_reset_is_skipped_not_negative() -> None:
    # 5 -> 8 (+3), reset to 1 (skipped), 1 -> 4 (+3): 6 J, never a negative energy.
    assert counter_increase([5.0, 8.0, 1.0, 4.0]) == pytest.approx(6.0)


def test_missing_and_non_finite_values_are_ignored() -> None:
    rows = [
        {"t": 0.0, "device": "gpu0", "util_pct": 20.0},
        {"t": 0.2, "device": "gpu0", "util_pct": float("nan")},
        {"t": 0.4, "device": "gpu0"},  # metric not reported this tick
        {"t": 0.6, "device": "gpu0", "util_pct": 40.0},
    ]
    gpu = summarize(rows)["devices"]["gpu0"]
    assert gpu["util_pct_mean"] == pytest.approx(30.0)
    assert gpu["n_samples"] == 4


def test_empty_series_and_json_ready() -> None:
    s = summarize([], interval=0.2)
    assert s == {"n_samples": 0, "n_ticks": 0, "duration_s": 0.0, "interval_s": 0.2, "devices": {}}
    json.dumps(summarize(SERIES), allow_nan=False)  # result.json must stay strict JSON


def _rank_summary(dev: str, ok: bool, reason: str | None = None) -> dict:
    s = summarize([r | {"device": dev} for r in SERIES if r["device"] == "gpu0"], interval=0.2)
    return s | {"gpu_available": ok, "gpu_unavailable_reason": reason}


def test_merge_rank_summaries_prefixes_and_reasons() -> None:
    merged = merge_rank_summaries([_rank_summary("gpu0", True), _rank_summary("gpu1", True)])
    assert set(merged["devices"]) == {"rank0/gpu0", "rank1/gpu1"}
    assert merged["devices"]["rank1/gpu1"]["energy_j"] == pytest.approx(60.0)
    assert merged["world_size"] == 2 and merged["n_samples"] == 6
    assert merged["gpu_available"] is True and merged["gpu_unavailable_reason"] is None
    assert "devices" not in merged["per_rank"][0]

    mixed = merge_rank_summaries([_rank_summary("gpu0", True), _rank_summary("host", False, "no GPU")])
    assert mixed["gpu_available"] is True
    assert mixed["gpu_unavailable_reason"] == "rank1: no GPU"


def test_merge_rank_summaries_rejects_empty() -> None:
    with pytest.raises(ValueError, match="summaries"):
        merge_rank_summaries([])


def test_write_samples_csv_round_trip(tmp_path) -> None:
    path = write_samples_csv(SERIES, tmp_path / "run" / "samples.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["t", "device"]
    assert len(rows) == len(SERIES)
    assert rows[1]["device"] == "host" and rows[1]["util_pct"] == ""  # not a host metric
    assert [float(r["util_pct"]) for r in rows if r["device"] == "gpu0"] == [10.0, 70.0, 40.0]
    assert math.isclose(float(rows[4]["t"]), 0.4)
    assert os.listdir(path.parent) == ["samples.csv"]  # no temp file left behind


def test_write_samples_csv_failure_keeps_old_file(tmp_path) -> None:
    path = tmp_path / "samples.csv"
    path.write_text("old\n")

    class Unprintable:
        def __str__(self) -> str:  # csv calls str() per cell: fail after row 1 is written
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_samples_csv([{"t": 0.0, "device": "x"}, {"t": Unprintable(), "device": "x"}], path)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["samples.csv"]
