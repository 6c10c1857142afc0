"""The CLI around scaling out: monitoring in result.json, sine predictions, --profile, compare,
automatic resume, and the subcommands registered from infer and experiments.

All runs are in-process ``cli.main`` calls on the generated sine task (one 48-step sequence, so
an epoch is one step) with an 8-unit model and 1 thread.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from torchliquid import cli
from _cli import run_cli  # noqa: E402


def sine(out, *extra: str, epochs: int = 2, quiet: bool = True) -> list[str]:
    return ["train", "--model", "cfc", "--dataset", "sine", "--epochs", str(epochs), "--units",
            "8", "--batch-size", "1", "--device", "cpu", "--threads", "1", "--out", str(out),
            *(["--quiet"] if quiet else []), *extra]


def test_cpu_run_records_host_metrics_and_says_why_no_gpu(capsys, tmp_path):
    code, _, err = run_cli(capsys, *sine(tmp_path, "--monitor-interval", "0.02"))
    assert code == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["world_size"], result["backend"]) == (1, None)
    monitor = result["monitor"]
    host = monitor["devices"]["host"]
    assert host["n_samples"] >= 2  # the first tick at start and the last at stop, at least
    assert 0 <= host["cpu_util_pct_mean"] <= 100 and host["rss_mib_peak"] > 0
    if not torch.cuda.is_available():
        assert monitor["gpu_available"] is False and monitor["gpu_unavailable_reason"]
    with open(tmp_path / "samples.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len([r for r in rows if r["device"] == "host"]) == host["n_samples"]
    assert all(math.isfinite(float(r["rss_mib"])) for r in rows)


def test_monitoring_can_be_disabled(capsys, tmp_path):
    assert run_cli(capsys, *sine(tmp_path, "--monitor-interval", "0"))[0] == 0
    assert json.loads((tmp_path / "result.json").read_text())["monitor"] is None
    assert not (tmp_path / "samples.csv").exists()


def test_sine_runs_write_predictions_before_and_after_training(capsys, tmp_path):
    assert run_cli(capsys, *sine(tmp_path, "--monitor-interval", "0", "--lr", "0.05"))[0] == 0
    with np.load(tmp_path / "predictions_sine.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert set(arrays) == {"target", "before", "after", "t"}
    assert arrays["t"].shape == (48,) and arrays["target"].shape == (1, 48, 1)
    assert arrays["before"].shape == arrays["after"].shape == (1, 48, 1)
    np.testing.assert_allclose(arrays["target"][0, :, 0], np.sin(2 * arrays["t"]), atol=1e-6)
    mae = lambda p: float(np.abs(p - arrays["target"]).mean())  # noqa: E731
    result = json.loads((tmp_path / "result.json").read_text())
    # The saved predictions are the ones the recorded metrics were computed from.
    assert mae(arrays["before"]) == pytest.approx(result["pre_training"]["mae"], rel=1e-5)
    assert mae(arrays["after"]) == pytest.approx(result["post_training"]["mae"], rel=1e-5)


def test_profile_writes_tables_and_does_not_train(capsys, tmp_path):
    code, out, err = run_cli(capsys, *sine(tmp_path, "--profile", "cprofile", "--profile-steps",
                                           "3", "--profile-warmup", "1", "--monitor-interval",
                                           "0", quiet=False))
    assert code == 0, err
    assert "profile (cprofile): 3 steps after 1 warm-up" in out
    text = (tmp_path / "profile" / "profile_cprofile.txt").read_text()
    assert "cProfile of 3 step(s)" in text and "train_step" in text
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "checkpoint.pt").exists()


def test_same_configuration_resumes_automatically_and_more_epochs_continue(capsys, tmp_path):
    assert run_cli(capsys, *sine(tmp_path, "--monitor-interval", "0"))[0] == 0
    code, out, err = run_cli(capsys, *sine(tmp_path, "--monitor-interval", "0", epochs=3,
                                           quiet=False))
    assert code == 0, err
    assert "resuming" in out and "epoch 2 done" in out
    with open(tmp_path / "metrics.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3]


def test_compare_prints_speedup_efficiency_metric_and_utilisation(capsys, tmp_path):
    base = {"model": "cfc", "dataset": "traffic", "batch_size": 64, "epochs": 2, "task":
            "regression", "metric": "mae", "post_training": {"loss": 0.5, "mae": 0.25},
            "environment": {"device": "cpu"}}
    host = lambda pct: {"devices": {"host": {"cpu_util_pct_mean": pct}}}  # noqa: E731
    runs = {"one": {**base, "world_size": 1, "train_seconds": 30.0, "monitor": host(50.0)},
            "two": {**base, "world_size": 2, "train_seconds": 20.0,
                    "monitor": {"devices": {"rank0/host": {"cpu_util_pct_mean": 90.0},
                                            "rank1/host": {"cpu_util_pct_mean": 100.0}}}}}
    for name, result in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(result))
    code, out, err = run_cli(capsys, "compare", str(tmp_path / "one"),
                             str(tmp_path / "two" / "result.json"))
    assert code == 0, err
    speedup = {line.split()[4]: line.split() for line in out.splitlines()
               if line.startswith("traffic")}
    assert speedup["cpu:2"][-2:] == ["1.5", "0.75"]  # S = 30/20, E = S/2
    assert speedup["cpu"][-2:] == ["1", "1"]
    per_run = {line.split()[0]: line for line in out.splitlines() if "mae 0.25" in line}
    assert "95" in per_run[str(tmp_path / "two" / "result.json")]  # mean host CPU of the ranks
    assert "no GPU" in per_run[str(tmp_path / "one")]
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "missing"))
    assert code == 2 and f"run folder {tmp_path / 'missing'} does not exist" in err  # not "did not finish"
    (tmp_path / "unfinished").mkdir()
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "unfinished"))
    assert code == 2 and "result.json does not exist: the run did not finish" in err


def test_infer_and_matrix_commands_are_registered(capsys, monkeypatch):
    assert {"train", "evaluate", "demo", "compare", "predict", "export", "stream",
            "matrix"} <= set(cli.COMMANDS)
    with pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args(["matrix", "run", "--help"])
    assert done.value.code == 0 and "--dry-run" in capsys.readouterr().out
    from torchliquid.infer.export import ExportError

    def fail(args):
        raise ExportError("the exported graph differs from the model by 1e-3")

    monkeypatch.setitem(cli.COMMANDS, "export", cli.Command("export", "", lambda p: None, fail))
    code, _, err = run_cli(capsys, "export")
    assert code == 1 and "differs from the model" in err and "Traceback" not in err
