"""The command line: argument errors are one line with exit code 2; train -> evaluate round trip
on the real models and the generated sine data; resume; the demo's table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from torchliquid import workflow
from torchliquid.config import RunConfig, study_run
from _cli import run_cli  # noqa: E402


def sine(out, *extra: str, model: str = "cfc") -> list[str]:
    return ["train", "--model", model, "--dataset", "sine", "--epochs", "2", "--device", "cpu",
            "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("argv,names", [
    (["train", "--model", "gru", "--dataset", "sine"], ["--model", "gru", "cfc", "ltc"]),
    (["train", "--dataset", "sine"], ["--model", "required"]),
    (["train", "--model", "cfc", "--dataset", "sine", "--epochs", "-1"], ["epochs", "-1"]),
    (["train", "--model", "cfc", "--dataset", "sine", "--batch-size", "0"], ["batch_size"]),
    (["train", "--model", "cfc", "--dataset", "sine", "--lr", "abc"], ["--lr", "abc"]),
    (["train", "--model", "cfc", "--dataset", "sine", "--device", "tpu"], ["--device", "tpu"]),
    (["train", "--model", "cfc", "--dataset", "sine", "--max-windows", "0"], ["max_windows"]),
    (["train", "--model", "cfc", "--dataset", "sine", "--resume"], ["--resume", "--out"]),
    (["fly"], ["fly", "invalid choice"]),
    (["evaluate"], ["--run", "required"]),
])
def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, monkeypatch, argv, names):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for name in names:
        assert name in err
    assert not (tmp_path / "runs").exists()  # nothing half-made


def test_evaluate_of_a_missing_run_names_the_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--run", str(tmp_path / "none"))
    assert code == 2 and f"run folder {tmp_path / 'none'} does not exist" in err


def test_evaluate_of_a_file_says_it_is_not_a_run_folder(capsys, tmp_path):
    not_a_run = tmp_path / "w.npy"
    not_a_run.write_bytes(b"x")
    code, _, err = run_cli(capsys, "evaluate", "--run", str(not_a_run))
    assert code == 2 and f"{not_a_run} is not a run folder" in err


def test_evaluate_of_a_truncated_checkpoint_points_to_the_previous_one(capsys, tmp_path):
    run = tmp_path / "run"
    assert run_cli(capsys, *sine(run, model="cfc"))[0] == 0
    with open(run / "checkpoint.pt", "r+b") as handle:
        handle.truncate(100)
    code, _, err = run_cli(capsys, "evaluate", "--run", str(run))
    assert code == 2 and "checkpoint.pt cannot be read" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 600  # one line, not torch's paragraph


@pytest.mark.parametrize("model", ["cfc", "ltc"])
def test_train_then_evaluate_reproduces_the_metrics(capsys, tmp_path, model):
    run = tmp_path / model
    code, out, err = run_cli(capsys, *sine(run, model=model))
    assert (code, out, err) == (0, "", "")  # --quiet
    result = json.loads((run / "result.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == model and config["dataset"]["name"] == "sine"
    assert config["model"]["wiring"] == {"cfc": None, "ltc": "autoncp"}[model]  # the study's
    assert config["command"][:2] == ["torchliquid", "train"]
    assert RunConfig.from_dict(config["run"]).train.epochs == 2
    assert result["model"] == model and result["epochs"] == 2
    # A18: the study's AutoNCP LTC reports the synapses its wiring keeps; dense CfC has no mask
    assert (result["effective_params"] < result["params"]) == (model == "ltc")
    assert all(torch.isfinite(torch.tensor(list(result["post_training"].values()))))
    with open(run / "metrics.csv", newline="") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 2

    code, out, err = run_cli(capsys, "evaluate", "--run", str(run))
    assert code == 0 and "reproduces result.json exactly" in out, out + err
    assert f"{result['post_training']['mae']:.10g}" in out


def test_evaluate_reports_a_mismatch(capsys, tmp_path):
    run_cli(capsys, *sine(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    result["post_training"]["mae"] += 1e-12
    (tmp_path / "result.json").write_text(json.dumps(result))
    code, out, _ = run_cli(capsys, "evaluate", "--run", str(tmp_path), "--quiet")
    assert code == 1 and "DIFFERS" in out and "max relative difference" in out


def test_an_existing_run_is_not_overwritten_by_accident(capsys, tmp_path):
    run_cli(capsys, *sine(tmp_path))
    before = (tmp_path / "result.json").read_text()
    code, _, err = run_cli(capsys, *sine(tmp_path, "--seed", "1"))
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert (tmp_path / "result.json").read_text() == before
    code, _, err = run_cli(capsys, *sine(tmp_path, "--seed", "1", "--overwrite"))
    assert code == 0, err
    assert json.loads((tmp_path / "result.json").read_text())["seed"] == 1


def test_evaluate_names_a_corrupt_checkpoint(capsys, tmp_path):
    run_cli(capsys, *sine(tmp_path))
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = run_cli(capsys, "evaluate", "--run", str(tmp_path))
    assert code == 2 and str(ckpt) in err and "truncated" in err


def test_resume_extends_a_run_and_refuses_changed_arguments(capsys, tmp_path):
    run_cli(capsys, *sine(tmp_path))
    code, _, err = run_cli(capsys, *sine(tmp_path, "--resume", "--lr", "0.01"))
    assert code == 2 and "train.lr" in err
    code, _, err = run_cli(capsys, *[a if a != "2" else "3" for a in sine(tmp_path, "--resume")])
    assert code == 0, err
    with open(tmp_path / "metrics.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3]
    assert json.loads((tmp_path / "result.json").read_text())["epochs"] == 3


def test_demo_prints_a_side_by_side_table(capsys, tmp_path, monkeypatch):
    # The real demo also trains on power (minutes of CPU); the table logic is the same for sine.
    def sine_only(root, epochs=None, quiet=False, device="auto", threads=None):
        return [study_run(m, "sine", f"{root}/{m}-sine", epochs=epochs, batch_size=1, quiet=quiet,
                          device="cpu") for m in ("cfc", "ltc")]

    monkeypatch.setattr(workflow, "demo_runs", sine_only)
    code, out, err = run_cli(capsys, "demo", "--epochs", "2", "--quiet", "--out", str(tmp_path))
    assert code == 0, err
    lines = out.strip().splitlines()
    lines = lines[[line.startswith("model") for line in lines].index(True):]
    assert lines[0].split()[:5] == ["model", "dataset", "metric", "before", "after"]
    assert [line.split()[:2] for line in lines[2:]] == [["cfc", "sine"], ["ltc", "sine"]]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for row, line in zip(summary, lines[2:]):
        assert line.split()[3:5] == [f"{row['before']:.4f}", f"{row['after']:.4f}"]
        # the last two columns: all parameters, then those the wiring keeps (A18; LTC is AutoNCP)
        params, effective = (int(v.replace(",", "")) for v in line.split()[-2:])
        assert (params, effective) == (row["params"], row["effective_params"])
        assert (effective < params) == (row["model"] == "ltc")
        assert row["before"] == json.loads(
            (tmp_path / f"{row['model']}-sine" / "result.json").read_text())["pre_training"]["mae"]


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torchliquid", "train", "--model", "cfc",
                           "--dataset", "sine", "--batch-size", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "batch_size" in proc.stderr


@pytest.mark.parametrize("argv, command", [(["train", "--model", "cfc", "--dataset", "sine", "--bogus", "1"], "train"),
                                           (["evaluate", "--run", "x", "--epochs", "3"], "evaluate")])
def test_an_unknown_argument_points_to_the_subcommands_help(capsys, argv, command):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"torchliquid {command}: error: unrecognized arguments" in err
    assert f"(see torchliquid {command} --help)" in err
