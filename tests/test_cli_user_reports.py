"""train and evaluate, from a new user's report: commands that lost data, silently did something
else, or answered with a traceback. Each now refuses with one line and exit code 2 (a --threads
beyond the cores: one warning line), or says what it did and how to continue.

Runs are tiny (CfC, 8 units, the generated sine data; traffic from the committed 160-row fixture).
predict/export refusals: test_infer_cli_refusals.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchliquid.train import load_checkpoint
from _cli import run_cli, one_line_error  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def sine(out, *extra: str, epochs: int = 1) -> list[str]:
    return ["train", "--model", "cfc", "--dataset", "sine", "--units", "8", "--epochs", str(epochs),
            "--device", "cpu", "--out", str(out), "--quiet", "--monitor-interval", "0",
            "--threads", "1", *extra]  # one thread, as conftest sets for the rest of the session


# -- 3., 5., 7. train's --out, --epochs and --resume/--overwrite ----------------------------------


@pytest.mark.parametrize("inside", [False, True], ids=["file", "below-a-file"])
def test_train_out_that_is_a_file_is_one_line(capsys, tmp_path, inside):
    existing = tmp_path / "x.csv"
    existing.write_text("keep me\n")
    out = existing / "run" if inside else existing
    code, _, err = run_cli(capsys, *sine(out))
    one_line_error(code, err, f"--out {out}", "is a file")
    assert existing.read_text() == "keep me\n"


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "automatic"])
def test_fewer_epochs_than_done_is_refused_and_changes_nothing(capsys, tmp_path, resume):
    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out, epochs=3))[0] == 0
    files = {name: (out / name).read_bytes() for name in ("config.json", "result.json", "metrics.csv")}
    code, _, err = run_cli(capsys, *sine(out, *(["--resume"] if resume else []), epochs=2))
    one_line_error(code, err, "already has 3 epochs done", "--epochs 2", "--epochs 3")
    assert {name: (out / name).read_bytes() for name in files} == files
    assert json.loads(files["config.json"])["run"]["train"]["epochs"] == 3


def test_resume_and_overwrite_exclude_each_other(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out))[0] == 0
    before = (out / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, *sine(out, "--resume", "--overwrite"))
    one_line_error(code, err, "--resume", "--overwrite")
    assert (out / "checkpoint.pt").read_bytes() == before


def test_overwrite_after_a_torchrun_restart_resumes_instead_of_deleting(capsys, tmp_path, monkeypatch):
    from torchliquid import runtime
    from torchliquid.train import Trainer

    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out, "--overwrite", epochs=1))[0] == 0  # the first attempt
    trained, train_epoch = [], Trainer.train_epoch

    def recording(self, epoch):
        trained.append(epoch)
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", recording)
    monkeypatch.setattr(runtime, "restart_count", lambda: 1)
    code, _, err = run_cli(capsys, *sine(out, "--overwrite", epochs=2))
    assert code == 0, err
    assert trained == [2]  # epoch 1 came from the first attempt's checkpoint, not retrained
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header, epochs 1 and 2


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("failure", ["bad-data", "interrupt"])
def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(capsys, tmp_path, monkeypatch, failure):
    """A second user's report: --overwrite deleted the finished run first, so a new run that
    failed on bad data (or a Ctrl-C during start-up) left nothing of either."""
    from torchliquid import workflow

    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out))[0] == 0
    (out / "model.sequence.onnx").write_bytes(b"an exported model of the old run")
    before = _snapshot(out)

    def fail(*args, **kwargs):
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise ValueError("sine: bad data (injected)")

    monkeypatch.setattr(workflow, "load_splits", fail)
    code, _, err = run_cli(capsys, *sine(out, "--seed", "1", "--overwrite"))
    if failure == "interrupt":
        assert code == 130, err
    else:
        one_line_error(code, err, "bad data")
    assert _snapshot(out) == before  # every file back, byte for byte; no .replaced left
    assert not (out / ".replaced").exists()


def test_overwrite_replaces_every_file_of_the_old_run(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out))[0] == 0
    (out / "model.sequence.onnx").write_bytes(b"an exported model of the old run")
    code, _, err = run_cli(capsys, *sine(out, "--seed", "1", "--overwrite"))
    assert code == 0, err
    assert not (out / "model.sequence.onnx").exists()  # it belonged to the old model
    assert not (out / ".replaced").exists()
    assert json.loads((out / "result.json").read_text())["seed"] == 1


def test_a_killed_overwrite_is_finished_by_the_next_one(capsys, tmp_path, monkeypatch):
    """kill -9 before the new run's first checkpoint leaves the old run in .replaced; the next
    --overwrite keeps replacing that run, and a failing one puts that run back."""
    from torchliquid import workflow

    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out))[0] == 0
    before = _snapshot(out)
    (out / ".replaced").mkdir()
    for path in list(out.iterdir()):
        if path.name != ".replaced":
            path.rename(out / ".replaced" / path.name)
    (out / "config.json").write_text("{}")  # what the killed new run had written
    monkeypatch.setattr(workflow, "load_splits", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad data")))
    code, _, err = run_cli(capsys, *sine(out, "--seed", "1", "--overwrite"))
    one_line_error(code, err, "bad data")
    assert _snapshot(out) == before and not (out / ".replaced").exists()
    monkeypatch.undo()
    (out / ".replaced").mkdir()  # killed again; this time the next --overwrite succeeds
    for path in list(out.iterdir()):
        if path.name != ".replaced":
            path.rename(out / ".replaced" / path.name)
    assert run_cli(capsys, *sine(out, "--seed", "1", "--overwrite"))[0] == 0
    assert not (out / ".replaced").exists() and json.loads((out / "result.json").read_text())["seed"] == 1


# -- 4., 8. --data-dir ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["power", "traffic"])
def test_train_with_a_missing_data_dir_fails_for_every_dataset(capsys, tmp_path, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nonexist"
    code, _, err = run_cli(capsys, "train", "--model", "cfc", "--dataset", dataset, "--no-download",
                           "--data-dir", str(missing), "--epochs", "1")
    one_line_error(code, err, f"--data-dir {missing} does not exist")
    assert not (tmp_path / "runs").exists()


def test_evaluate_takes_data_dir_and_uses_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHLIQUID_DATA", str(tmp_path / "empty-cache"))
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(FIXTURES / "traffic", first / "traffic")
    shutil.copytree(FIXTURES / "traffic", second / "traffic")
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "cfc", "--dataset", "traffic", "--units", "8",
                           "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--no-download",
                           "--data-dir", str(first), "--out", str(run), "--quiet", "--monitor-interval", "0",
                           "--threads", "1")
    assert code == 0, err
    shutil.rmtree(first)  # the folder the run recorded is gone (another machine, a move)
    code, _, err = run_cli(capsys, "evaluate", "--run", str(run), "--quiet")
    assert code == 2 and "raw data not found" in err and "--data-dir" in err
    code, _, err = run_cli(capsys, "evaluate", "--run", str(run), "--data-dir", str(second), "--quiet")
    assert (code, err) == (0, "")
    code, _, err = run_cli(capsys, "evaluate", "--run", str(run), "--data-dir", str(first))
    one_line_error(code, err, f"--data-dir {first} does not exist")


# -- 6. evaluate claims a previous checkpoint is intact only after verifying it ------------------


@pytest.mark.parametrize("previous", ["truncated", "intact"])
def test_evaluate_verifies_the_previous_checkpoint_before_calling_it_intact(capsys, tmp_path, previous):
    run = tmp_path / "run"
    assert run_cli(capsys, *sine(run, epochs=2))[0] == 0
    assert (run / "checkpoint.prev.pt").is_file()
    (run / "checkpoint.pt").write_bytes(b"")
    if previous == "truncated":
        with open(run / "checkpoint.prev.pt", "r+b") as handle:
            handle.truncate(100)
    code, _, err = run_cli(capsys, "evaluate", "--run", str(run))
    one_line_error(code, err, "checkpoint.pt")
    if previous == "truncated":
        assert "is intact" not in err and "checkpoint.prev.pt is damaged too" in err
    else:
        assert "checkpoint.prev.pt is intact (checksum verified)" in err and "--resume" in err


# -- 9. --threads beyond the cores ----------------------------------------------------------------


def test_threads_beyond_the_cores_warn_in_one_line(capsys, tmp_path, monkeypatch):
    from torchliquid import runtime, workflow

    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(workflow, "train_run", lambda *args, **kwargs: {})  # only the argument check
    code, _, err = run_cli(capsys, *sine(tmp_path / "run", "--threads", "1000"))
    assert code == 0 and err == ("torchliquid train: warning: --threads 1000 exceeds the 2 CPU cores "
                                 "available; extra threads only wait on each other\n")
    code, _, err = run_cli(capsys, *sine(tmp_path / "run", "--threads", "2"))
    assert (code, err) == (0, "")


# -- 10. interrupting train says how to continue ---------------------------------------------------


@pytest.mark.parametrize("checkpointed", [True, False])
def test_interrupted_train_says_how_to_resume(capsys, tmp_path, monkeypatch, checkpointed):
    from torchliquid import workflow

    out = tmp_path / "run"
    if checkpointed:
        assert run_cli(capsys, *sine(out))[0] == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "train_run", interrupted)
    code, _, err = run_cli(capsys, *sine(out, epochs=3))
    hint = ("resume with the same command plus --resume" if checkpointed else
            "nothing was checkpointed yet; rerun the same command to start again")
    assert (code, err) == (130, f"torchliquid train: interrupted; {hint}\n")


def test_sigterm_stops_train_like_ctrl_c_and_leaves_a_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = sine(out, "--threads", "1", epochs=10**6)
    proc = subprocess.Popen([sys.executable, "-m", "torchliquid", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("torchliquid train: interrupted; resume with the same "
                                            "command plus --resume")
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["epoch"] >= 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_overwrite_failing_while_torchrun_may_restart_leaves_the_old_run_set_aside(tmp_path, monkeypatch):
    """The restarted attempt continues the NEW run (it resumes whatever that checkpointed), so a
    failed attempt must not put the old run back where the restart would resume it."""
    from torchliquid.rundir import replacing

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"old run")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    with pytest.raises(RuntimeError):
        with replacing(out, active=True):
            raise RuntimeError("rank 1 died")
    assert not (out / "checkpoint.pt").exists()
    assert (out / ".replaced" / "checkpoint.pt").read_bytes() == b"old run"


def test_running_out_of_memory_is_one_line_and_other_runtime_errors_keep_their_traceback(capsys, tmp_path, monkeypatch):
    """A user's --units 100000000 ended in torch's allocator traceback; now one line with the size.
    A RuntimeError that is not about memory is a bug and must still show where it came from."""
    from torchliquid import workflow

    def oom(spec):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 51200001024 bytes. Error code 12")

    monkeypatch.setattr(workflow, "build_from_spec", oom)
    code, _, err = run_cli(capsys, *sine(tmp_path / "a"))
    one_line_error(code, err, "not enough memory for 51.2 GB", "--units")
    monkeypatch.setattr(workflow, "build_from_spec", lambda spec: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(capsys, *sine(tmp_path / "b"))


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_checkpoint_from_another_run_is_refused(capsys, tmp_path, command):
    """A fresh user copied an LTC run's checkpoint.pt into a CfC run: evaluate, predict and
    export used the LTC silently (evaluate then blamed threads for the differing metrics)."""
    cfc, ltc = tmp_path / "cfc", tmp_path / "ltc"
    assert run_cli(capsys, *sine(cfc))[0] == 0
    ltc_argv = sine(ltc)
    ltc_argv[ltc_argv.index("cfc")] = "ltc"
    assert run_cli(capsys, *ltc_argv)[0] == 0
    shutil.copy(ltc / "checkpoint.pt", cfc / "checkpoint.pt")
    argv = {"evaluate": ["evaluate", "--run", str(cfc), "--quiet"],
            "predict": ["predict", "--run", str(cfc), "--input", str(FIXTURES / "missing"), "--output", str(tmp_path / "p.csv")],
            "export": ["export", "--run", str(cfc), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]}[command]
    code, _, err = run_cli(capsys, *argv)
    one_line_error(code, err, "checkpoint.pt is not the run", "'name': 'ltc'", "'name': 'cfc'")
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "p.csv").exists()


def test_another_configuration_in_out_names_both_values(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out))[0] == 0
    code, _, err = run_cli(capsys, *sine(out, "--seed", "3"))
    one_line_error(code, err, "train.seed (checkpoint: 0, now: 3)")


def test_a_zero_epoch_run_can_be_evaluated_predicted_with_and_exported(capsys, tmp_path):
    """--epochs 0 'only evaluates'; its folder had no checkpoint, so evaluate/predict/export on it
    said 'train first' (a fresh user's report). It now holds the untrained model."""
    out = tmp_path / "run"
    assert run_cli(capsys, *sine(out, epochs=0))[0] == 0
    code, stdout, err = run_cli(capsys, "evaluate", "--run", str(out))
    assert code == 0 and "reproduces result.json exactly" in stdout, err
    code, _, err = run_cli(capsys, "export", "--run", str(out), "--format", "torchscript", "--out", str(tmp_path / "m.pt"))
    assert code == 0 and (tmp_path / "m.pt").is_file(), err


def test_demo_table_keeps_small_losses_visible():
    """The demo table printed CfC's sine loss after training as 0.0000 (a fresh user's report)."""
    from torchliquid.workflow import format_table

    row = {"model": "cfc", "dataset": "sine", "metric": "mae", "before": 0.6077, "after": 0.0013,
           "test_loss_before": 0.4658, "test_loss_after": 1.234e-5, "epochs": 500, "train_seconds": 1.1,
           "sequences_per_second": 447.0, "params": 41665, "effective_params": 41665}
    line = format_table([row]).splitlines()[-1]
    assert "1.234e-05" in line and "0.0000" not in line
