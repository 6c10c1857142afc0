"""Tables, plots, the report, the HTML page and matrix comparison on recorded result dicts.

Every expected number is computed in the test from the input numbers it chose (e.g. speed-up
120 / 40), never read back from the code under test.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from test_experiments_fakes import result_dict, store_record
from torchliquid.experiments.report import compare_matrices, load_reference, write_report
from torchliquid.experiments.store import ResultStore
from torchliquid.monitor import summarize
from torchliquid.experiments.tables import (flatten, pivot, reference_table, speedup_pivot, speedup_table,
                                            utilisation_table)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def _gpu_monitor(n: int, util: float, nested: bool = False) -> dict:
    """A monitor section as torchliquid.monitor writes it: GPU i's utilisation is util+i on
    average (samples util+i-1 and util+i+1) with a 90 % peak sample; memory 5 % mean, 7 % peak."""
    if nested:  # the nested layout other tools write: {metric: {agg: value}}
        stats = {f"gpu{i}": {"util_pct": {"mean": util + i, "peak": 90.0},
                              "mem_used_pct": {"mean": 5.0, "peak": 7.0}} for i in range(n)}
        return {"gpu_available": True, "devices": stats}
    samples = []
    for i in range(n):
        for t, (u, m) in enumerate([(util + i - 1, 3.0), (util + i + 1, 7.0), (90.0, 5.0)]):
            samples.append({"t": 0.2 * t, "device": f"gpu{i}", "util_pct": u, "mem_used_pct": m})
    # the third sample shifts the utilisation mean: rebalance so the mean stays util+i
    for i in range(n):
        rows = [s for s in samples if s["device"] == f"gpu{i}"]
        rows[0]["util_pct"] = 3 * (util + i) - rows[1]["util_pct"] - 90.0
    return {"gpu_available": True, **summarize(samples)}


def test_speedup_table_arithmetic_from_result_dicts() -> None:
    results = [result_dict("cfc", "har", "cpu", 64, 100.0, seed=0), result_dict("cfc", "har", "cpu", 64, 140.0, seed=1),
               result_dict("cfc", "har", "cuda:0", 64, 60.0), result_dict("cfc", "har", "cuda:0", 64, 40.0, world_size=2),
               result_dict("cfc", "har", "cuda:0", 64, 50.0, world_size=4),
               result_dict("cfc", "har", "cuda:0", 1024, 30.0, world_size=2)]  # no CPU run at 1024
    table = speedup_table(results)
    by = {(r["device"], r["batch_size"]): r for r in table.rows}
    t_cpu = (100.0 + 140.0) / 2  # seeds are averaged first
    assert by[("cpu", 64)]["seconds"] == pytest.approx(t_cpu) and by[("cpu", 64)]["speedup"] == pytest.approx(1.0)
    assert by[("gpu", 64)]["speedup"] == pytest.approx(t_cpu / 60.0) and by[("gpu", 64)]["efficiency"] == pytest.approx(t_cpu / 60.0)
    assert by[("gpu:2", 64)]["speedup"] == pytest.approx(t_cpu / 40.0)
    assert by[("gpu:2", 64)]["efficiency"] == pytest.approx(t_cpu / 40.0 / 2)
    assert by[("gpu:4", 64)]["efficiency"] == pytest.approx(t_cpu / 50.0 / 4)
    assert by[("gpu:2", 1024)]["speedup"] is None and by[("gpu:2", 1024)]["efficiency"] is None
    assert "n/a" in table.text and "gpu:4" in table.text
    assert f"{t_cpu / 40.0:.3g}" in table.text


def test_threads_are_shown_beside_every_device_and_in_the_speedup_rows() -> None:
    records = [store_record(result_dict("cfc", "power", "cpu", 32, 80.0, threads=2), "cpu"),
               store_record(result_dict("cfc", "power", "cpu", 32, 50.0, world_size=2, threads=1), "cpu:2")]
    rows = [flatten(r) for r in records]
    assert [r["threads"] for r in rows] == [2, 1]
    t = pivot(rows, "power", "train_seconds", "time")
    assert t.headers == ["Model", "Batch", "Epochs", "cpu (2 thr)", "cpu:2 (2x1 thr)"]
    sp = speedup_pivot(rows, "power")
    assert sp.headers[3:] == ["cpu (2 thr)", "cpu:2 (2x1 thr)"]
    assert "every CPU device used 2 thread(s) in total, so CPU speed-ups compare equal core counts" in sp.note
    two = next(r for r in sp.records if r["device"] == "cpu:2")
    assert (two["threads"], two["cpu_threads"], two["speedup"]) == (1, 2, pytest.approx(80.0 / 50.0))
    table = speedup_table(records)
    assert table.text.splitlines()[0].split()[6:8] == ["Threads/proc", "Time"]
    assert [line.split()[6] for line in table.text.splitlines()[2:]] == ["2", "1"]


def test_unequal_thread_totals_are_called_out_and_the_runner_count_is_the_fallback() -> None:
    baseline = store_record(result_dict("cfc", "power", "cpu", 32, 80.0), "cpu")  # no environment.threads
    baseline["threads_per_process"] = 1  # ... but the runner pinned 1 (train_args --threads 1)
    rows = [flatten(baseline), flatten(store_record(result_dict("cfc", "power", "cpu", 32, 50.0, world_size=2,
                                                                threads=1), "cpu:2"))]
    sp = speedup_pivot(rows, "power")
    assert sp.headers[3:] == ["cpu (1 thr)", "cpu:2 (2x1 thr)"]
    assert "different thread totals" in sp.note
    old = [flatten(store_record(result_dict("cfc", "power", "cpu", 32, 80.0), "cpu"))]
    assert old[0]["threads"] is None and pivot(old, "power", "train_seconds", "t").headers[3:] == ["cpu"]


def test_cells_started_on_a_busy_machine_are_flagged(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    store = ResultStore(out / "results.jsonl")
    idle = store_record(result_dict("cfc", "power", "cpu:2", 32, 50.0, world_size=2, threads=1), "cpu:2")
    busy = store_record(result_dict("cfc", "power", "cpu", 32, 800.0, threads=2), "cpu")
    idle["busy_cores_at_start"], busy["busy_cores_at_start"] = 0.1, 1.3
    store.append(idle)
    store.append(busy)
    md = write_report(out).read_text()
    assert (f"Warning: 1 of 2 cells started while other work kept cores busy (up to 1.3; {busy['cell_id']}). "
            "Their times are inflated") in md
    store.append({**busy, "busy_cores_at_start": 0.0})  # rerun on an idle machine
    assert "Warning" not in write_report(out).read_text()


def test_speedup_needs_matching_epochs() -> None:
    rows = speedup_table([result_dict("ltc", "har", "cpu", 64, 100.0, epochs=50),
                          result_dict("ltc", "har", "cuda:0", 64, 10.0, epochs=1)]).rows
    assert [r["speedup"] for r in rows if r["device"] == "gpu"] == [None]


def test_cpu_ddp_runs_are_labelled_cpu_n() -> None:
    rows = speedup_table([result_dict("cfc", "sine", "cpu", 1, 9.0), result_dict("cfc", "sine", "cpu", 1, 6.0, world_size=2)]).rows
    two = next(r for r in rows if r["device"] == "cpu:2")
    assert two["n"] == 2 and two["speedup"] == pytest.approx(9.0 / 6.0) and two["efficiency"] == pytest.approx(9.0 / 6.0 / 2)


def test_quality_pivot_has_devices_as_columns_and_blanks_for_missing_cells() -> None:
    rows = [flatten(r) for r in (
        result_dict("cfc", "har", "cpu", 64, 1.0, post={"loss": 0.5, "accuracy": 0.80}),
        result_dict("cfc", "har", "cuda:0", 64, 1.0, post={"loss": 0.4, "accuracy": 0.90}),
        result_dict("cfc", "har", "cpu", 128, 1.0, post={"loss": 0.3, "accuracy": 0.70}))]
    t = pivot(rows, "har", "test_accuracy", "acc")
    assert t.headers == ["Model", "Batch", "Epochs", "cpu", "gpu"]
    assert t.rows == [["CfC", "64", "50", "0.8", "0.9"], ["CfC", "128", "50", "0.7", ""]]


@pytest.mark.parametrize("nested", [False, True])
def test_utilisation_reads_both_monitor_layouts_and_says_na_when_absent(nested: bool) -> None:
    rows = [flatten(r) for r in (
        result_dict("cfc", "har", "cuda:0", 64, 1.0, world_size=2, monitor=_gpu_monitor(2, 20.0, nested)),
        result_dict("ltc", "har", "cuda:0", 64, 1.0),
        result_dict("ltc", "har", "cpu", 64, 1.0))]
    t = utilisation_table(rows)
    assert len(t.rows) == 2  # the CPU run is left out (and counted in the note)
    cfc = next(r for r in t.rows if r[1] == "CfC")
    assert cfc[4] == "gpu0 20/90; gpu1 21/90" and cfc[5] == "gpu0 5/7; gpu1 5/7"
    ltc = next(r for r in t.rows if r[1] == "LTC")
    assert ltc[4] == "n/a" and "no monitor" in ltc[-1]
    assert "1 CPU run" in t.note
    assert [rec["util_mean"] for rec in t.records if rec.get("gpu")] == [20.0, 21.0]


def test_reference_comparison_point_and_range() -> None:
    ref = [{"dataset": "har", "model": "cfc", "device": "cpu", "batch_size": "64", "epochs": "50",
            "metric": "train_seconds", "value": "115", "source": "study"},
           {"dataset": "har", "model": "ltc", "device": "cpu", "batch_size": "", "epochs": "50",
            "metric": "train_seconds", "value": "", "low": "1400", "high": "2000", "source": "study"},
           {"dataset": "traffic", "model": "cfc", "device": "gpu", "metric": "train_seconds", "value": "10"}]
    rows = [flatten(r) for r in (result_dict("cfc", "har", "cpu", 64, 230.0), result_dict("ltc", "har", "cpu", 64, 900.0),
                                 result_dict("ltc", "har", "cpu", 128, 500.0))]
    t = reference_table(ref, rows)
    assert t.rows[0][2:5] == ["115", "230", "2"]  # ratio 230 / 115
    assert t.rows[1][2] == "1,400-2,000" and t.rows[1][3] == "500-900"
    assert t.rows[2][3] == "not run here"


def test_shipped_reference_has_only_known_numbers_with_sources() -> None:
    ref = load_reference(ROOT / "configs" / "thesis_reference.csv")
    assert ref and all(r["source"] for r in ref)
    values = sorted(float(r["value"]) for r in ref if r["value"])
    assert values == [115.0, 1460.0]  # the two published HAR CPU times quoted in the issues


def _results_dir(tmp_path: Path, with_predictions: bool = True) -> Path:
    out = tmp_path / "a"
    store = ResultStore(out / "results.jsonl")
    for model, scale in (("cfc", 1.0), ("ltc", 10.0)):
        for batch in (64, 128):
            store.append(store_record(result_dict(model, "har", "cpu", batch, 100.0 * scale / batch * 64), "cpu"))
            store.append(store_record(result_dict(model, "har", "cuda:0", batch, 50.0 * scale, world_size=2,
                                                  monitor=_gpu_monitor(2, 30.0)), "gpu:2"))
            store.append(store_record(result_dict(model, "traffic", "cpu", batch, 80.0 * scale), "cpu"))
        rec = store_record(result_dict(model, "sine", "cpu", 1, 5.0 * scale, post={"loss": 0.1, "mse": 0.1, "mae": 0.2}), "cpu")
        store.append(rec)
        if with_predictions:
            run_dir = out / rec["run_dir"]
            run_dir.mkdir(parents=True)
            t = np.linspace(0, 6.28, 48)
            np.savez(run_dir / "predictions_sine.npz", target=np.sin(t)[None, :, None],
                     before=np.zeros((1, 48, 1)), after=(0.9 * np.sin(t))[None, :, None])
    store.append({"cell_id": "har-cfc-gpux8-b64-s0-00000000", "status": "failed",
                  "error": {"exit_code": 1, "message": "exit code 1", "stderr_tail": "RuntimeError: NCCL timeout"}})
    return out


def test_report_writes_tables_csvs_and_valid_pngs(tmp_path: Path) -> None:
    out = _results_dir(tmp_path)
    md = write_report(out).read_text()
    for heading in ("UCI HAR: test accuracy", "UCI HAR: test loss", "Metro traffic: test mse", "Metro traffic: test mae",
                    "training time (s)", "speed-up", "GPU and memory utilisation", "This machine vs published",
                    "Failed or interrupted"):
        assert heading in md
    assert "RuntimeError: NCCL timeout" in md
    pngs = sorted(p.name for p in (out / "report").glob("*.png"))
    assert pngs == ["sine_predictions.png", "speedup_har.png", "time_vs_batch_har.png",
                    "time_vs_batch_sine.png", "time_vs_batch_traffic.png"]
    for name in pngs:
        data = (out / "report" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert f"(report/{name})" in md
    with open(out / "report" / "speedup.csv") as fh:
        sp = {(r["model"], r["device"], r["batch_size"]): r for r in csv.DictReader(fh)}
    # cfc har batch 128: CPU 100 * 64 / 128 = 50 s, gpu:2 50 s -> speed-up 1, efficiency 0.5
    assert float(sp[("cfc", "gpu:2", "128")]["speedup"]) == pytest.approx((100.0 * 64 / 128) / 50.0)
    assert float(sp[("cfc", "gpu:2", "128")]["efficiency"]) == pytest.approx((100.0 * 64 / 128) / 50.0 / 2)
    assert {p.name for p in (out / "report").glob("*.csv")} >= {"cells.csv", "speedup.csv", "utilisation.csv"}


def test_report_says_when_sine_predictions_are_missing(tmp_path: Path) -> None:
    out = _results_dir(tmp_path, with_predictions=False)
    md = write_report(out).read_text()
    assert "predictions_sine.npz" in md and not (out / "report" / "sine_predictions.png").exists()


@pytest.mark.parametrize("with_t", [True, False])
def test_sine_figure_labels_t_in_radians_and_keeps_the_legend_off_the_curves(tmp_path: Path, with_t: bool) -> None:
    from torchliquid.experiments import plots

    t = np.linspace(0, 3 * np.pi, 48).astype(np.float32)  # as the trainer writes it
    arrays = {"target": np.sin(2 * t)[None, :, None], "before": np.zeros((1, 48, 1)),
              "after": (0.9 * np.sin(2 * t))[None, :, None]}
    np.savez(tmp_path / "p.npz", **arrays, **({"t": t} if with_t else {}))
    predictions = plots.load_predictions(tmp_path / "p.npz")
    fig = plots.sine_predictions_figure({"cfc": predictions, "ltc": predictions})
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_legend() is None  # no legend inside a panel, on top of the curves
        if with_t:
            assert ax.get_xlabel() == "t (radians)"
            assert [tick.get_text() for tick in ax.get_xticklabels()] == ["0", "π/2", "π", "3π/2", "2π", "5π/2", "3π"]
        else:
            assert ax.get_xlabel() == "Step"
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == ["target sin(2t)", "before training", "after training"]
    box = legend.get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_html_is_one_self_contained_page(tmp_path: Path) -> None:
    out = _results_dir(tmp_path)
    write_report(out, html=True)
    page = (out / "report.html").read_text()
    sources = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert page.count("<img") == 5 and "<table>" in page


def test_report_leaves_out_cells_not_in_the_current_matrix(tmp_path: Path) -> None:
    out = _results_dir(tmp_path)
    (out / "matrix.toml").write_text('[[grid]]\ndatasets = ["sine"]\ndevices = ["cpu"]\nbatch_sizes = [1]\n'
                                     'models = ["cfc"]\n')
    md = write_report(out).read_text()
    assert "UCI HAR" not in md and "left out" in md


def test_report_without_store_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        write_report(tmp_path)


def test_compare_matrices_side_by_side(tmp_path: Path) -> None:
    a, b = tmp_path / "before", tmp_path / "after"
    ResultStore(a / "results.jsonl").append(store_record(result_dict("cfc", "har", "cpu", 64, 120.0), "cpu"))
    ResultStore(a / "results.jsonl").append(store_record(result_dict("ltc", "har", "cpu", 64, 900.0), "cpu"))
    ResultStore(b / "results.jsonl").append(store_record(
        result_dict("cfc", "har", "cpu", 64, 40.0, post={"loss": 0.3, "accuracy": 0.93}), "cpu"))
    t = compare_matrices(a, b)
    cfc = next(r for r in t.records if r["model"] == "cfc")
    assert cfc["speedup_b_over_a"] == pytest.approx(120.0 / 40.0) and cfc["b"] == 0.93
    ltc = next(r for r in t.rows if r[1] == "LTC")
    assert ltc[7] == "-" and ltc[8] == "n/a"  # only in A
    assert "fakehost" in t.note and str(a) in t.note


def test_running_cell_is_live_while_a_runner_holds_the_folder_else_a_problem(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl", reason="the folder lock uses POSIX flock")
    out = tmp_path / "m"
    ResultStore(out / "results.jsonl").append({"cell_id": "har-cfc-cpu-b64-s0-00000000", "status": "running"})
    assert "0 done, 1 failed or interrupted" in write_report(out).read_text()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "1 running now, 0 failed or interrupted" in write_report(out).read_text()


def test_host_cpu_read_from_every_rank_of_a_merged_monitor() -> None:
    # Rank summaries as torchliquid.monitor.merge_rank_summaries writes them under DDP.
    from torchliquid.monitor import merge_rank_summaries

    ranks = [summarize([{"t": 0.0, "device": "host", "cpu_util_pct": cpu},
                        {"t": 0.2, "device": "host", "cpu_util_pct": cpu}]) for cpu in (40.0, 60.0)]
    merged = merge_rank_summaries(ranks)
    row = flatten(result_dict("cfc", "traffic", "cpu", 64, 10.0, world_size=2, monitor=merged))
    assert row["host_cpu_mean"] == pytest.approx((40.0 + 60.0) / 2)
