"""run_matrix with an injected launcher: resume, failures, skips, SIGINT, ports, torn store.

Each cell really runs in its own process (a tiny python script from test_experiments_fakes
stands in for ``torchliquid train``), so the subprocess, log and store paths are the real ones.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import pytest

from test_experiments_fakes import FakeLauncher, small_matrix
from torchliquid.experiments.runner import plan_matrix, run_matrix, train_command
from torchliquid.experiments.spec import CellSpec, load_matrix
from torchliquid.experiments.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(autouse=True)
def short_busy_sample(monkeypatch) -> None:
    """The runner samples /proc/stat for 0.25 s before each cell; 10 ms keeps these tests fast."""
    monkeypatch.setattr("torchliquid.experiments.runner.BUSY_SAMPLE_S", 0.01)


def _store(out: Path) -> ResultStore:
    return ResultStore(out / "results.jsonl")


def test_runs_every_cell_and_records_result_and_metrics(tmp_path: Path) -> None:
    m = small_matrix(batch_sizes=(1, 2))
    launcher = FakeLauncher()
    run = run_matrix(m, tmp_path, launcher=launcher, gpus=0, echo=quiet)
    ids = [c.cell_id for c in m.cells]
    assert launcher.launched == ids
    assert run.statuses == {i: "done" for i in ids}
    done = _store(tmp_path).done()
    assert set(done) == set(ids)
    rec = done[ids[0]]
    assert rec["result"]["train_seconds"] == 10.0  # the fake writes 10 s x 1 epoch
    assert rec["metrics"] == [{"epoch": 1.0, "train_loss": 0.7, "test_loss": 0.5}]
    assert rec["cell"] == m.cells[0].to_dict()
    assert "gpu_count" in rec["environment"] and "torch" in rec["environment"]
    assert (tmp_path / "matrix.toml").exists() and json.loads((tmp_path / "plan.json").read_text())["cells"]
    # the summary printed after the run says the "to run" count was the plan, then what ran
    totals, this_run = run.summary().splitlines()[-2:]
    assert "planned at the start: 2 to run" in totals and this_run == "this run: 2 done"


def test_failed_cell_is_recorded_and_the_matrix_continues(tmp_path: Path) -> None:
    m = small_matrix(batch_sizes=(1, 2, 3))
    bad = m.cells[1].cell_id
    run = run_matrix(m, tmp_path, launcher=FakeLauncher({bad: "fail"}), gpus=0, echo=quiet)
    assert [run.statuses[c.cell_id] for c in m.cells] == ["done", "failed", "done"]
    err = _store(tmp_path).latest()[bad]["error"]
    assert err["exit_code"] == 3
    assert "RuntimeError: boom in sine" in err["stderr_tail"]


def test_exit_zero_without_result_is_a_failure(tmp_path: Path) -> None:
    m = small_matrix(batch_sizes=(1,))
    run_matrix(m, tmp_path, launcher=FakeLauncher({m.cells[0].cell_id: "noresult"}), gpus=0, echo=quiet)
    rec = _store(tmp_path).latest()[m.cells[0].cell_id]
    assert rec["status"] == "failed" and "result.json" in rec["error"]["message"]


def test_missing_program_is_a_recorded_failure(tmp_path: Path) -> None:
    m = small_matrix(batch_sizes=(1, 2))
    launcher = lambda cell, run_dir, port: ["/nonexistent/trainer-binary"]  # noqa: E731
    run = run_matrix(m, tmp_path, launcher=launcher, gpus=0, echo=quiet)
    assert set(run.statuses.values()) == {"failed"}
    assert "could not start" in _store(tmp_path).latest()[m.cells[0].cell_id]["error"]["message"]


def test_resume_reruns_only_unfinished_cells(tmp_path: Path) -> None:
    m = small_matrix(batch_sizes=(1, 2, 3, 4, 5))
    done, failed, interrupted, died, new = (c.cell_id for c in m.cells)
    store = _store(tmp_path)
    for cid, status in ((done, "running"), (done, "done"), (failed, "failed"), (interrupted, "interrupted"),
                        (died, "running")):  # "died": the runner itself was killed during this cell
        store.append({"cell_id": cid, "status": status, "cell": m.cell(cid).to_dict(), "wall_seconds": 1.0,
                      "result": {"epochs": 1}})
    actions = {p.cell.cell_id: p.action for p in plan_matrix(m, store, gpus=0)}
    assert actions == {done: "done", failed: "rerun", interrupted: "rerun", died: "rerun", new: "run"}
    launcher = FakeLauncher()
    run_matrix(m, tmp_path, launcher=launcher, gpus=0, echo=quiet)
    assert launcher.launched == [failed, interrupted, died, new]
    assert set(store.done()) == set(actions)
    # A second rerun has nothing left to do.
    again = FakeLauncher()
    run_matrix(m, tmp_path, launcher=again, gpus=0, echo=quiet)
    assert again.launched == []


def test_gpu_cells_are_skipped_with_a_reason_on_a_machine_without_gpus(tmp_path: Path) -> None:
    m = small_matrix(devices=("cpu", "cpu:2", "gpu", "gpu:2", "gpu:4"), batch_sizes=(1,))
    launcher = FakeLauncher()
    run = run_matrix(m, tmp_path, launcher=launcher, gpus=0, echo=quiet)
    skipped = {p.cell.device: p.reason for p in run.plan if p.action == "skip"}
    assert sorted(skipped) == ["gpu", "gpu:2", "gpu:4"]
    assert "needs 4 GPU" in skipped["gpu:4"] and "no CUDA GPU" in skipped["gpu:4"]
    assert [m.cell(c).device for c in launcher.launched] == ["cpu", "cpu:2"]
    plan = json.loads((tmp_path / "plan.json").read_text())["cells"]
    assert sum(p["action"] == "skip" for p in plan) == 3


def test_partial_gpu_machine_runs_what_fits() -> None:
    m = small_matrix(devices=("gpu", "gpu:2", "gpu:4"), batch_sizes=(1,))
    plan = plan_matrix(m, ResultStore("/nonexistent/results.jsonl"), gpus=2)
    assert {p.cell.device: p.action for p in plan} == {"gpu": "run", "gpu:2": "run", "gpu:4": "skip"}
    assert "has 2 GPUs" in next(p.reason for p in plan if p.action == "skip")


def test_thesis_matrix_on_this_cpu_only_plan() -> None:
    plan = plan_matrix(load_matrix(ROOT / "configs" / "thesis.toml"), ResultStore("/nonexistent/x.jsonl"), gpus=0)
    # CPU cells of the study: sine 2, har 2 x 4, traffic 2 x 4 = 18; the other 62 need GPUs.
    assert sum(p.action == "run" for p in plan) == 18
    assert sum(p.action == "skip" for p in plan) == 62


def test_multi_process_cells_get_a_free_port_and_single_ones_none(tmp_path: Path) -> None:
    m = small_matrix(devices=("cpu", "cpu:2"), batch_sizes=(1,))
    launcher = FakeLauncher()
    run_matrix(m, tmp_path, launcher=launcher, gpus=0, echo=quiet)
    ports = {m.cell(cid).device: port for cid, port in launcher.calls}
    assert ports["cpu"] is None
    assert isinstance(ports["cpu:2"], int) and 1024 <= ports["cpu:2"] <= 65535


def test_train_command_single_and_distributed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("torchliquid.runtime.available_cores", lambda: 8)
    single = train_command(CellSpec("har", "ltc", "cpu", 64, max_windows=10, data_dir="d"), tmp_path, None)
    assert single[:4] == [sys.executable, "-m", "torchliquid", "train"]
    flags = dict(zip(single[4::2], single[5::2]))
    assert flags == {"--model": "ltc", "--dataset": "har", "--epochs": "50", "--batch-size": "64", "--lr": "0.001",
                     "--units": "64", "--device": "cpu", "--seed": "0", "--out": str(tmp_path), "--threads": "8",
                     "--data-dir": "d", "--max-windows": "10"}
    multi = train_command(CellSpec("har", "cfc", "gpu:4", 512), tmp_path, 29511)
    assert multi[1:8] == ["-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-port", "29511", "-m"]
    rest = multi[8:]
    flags = dict(zip(rest[2::2], rest[3::2]))
    assert flags["--lr"] == "0.004" and flags["--lr-scaling"] == "none" and flags["--backend"] == "nccl"
    assert flags["--device"] == "cuda" and flags["--batch-size"] == "512" and flags["--threads"] == "2"
    with pytest.raises(ValueError, match="master port"):
        train_command(CellSpec("har", "cfc", "cpu:2", 64), tmp_path, None)


@pytest.mark.parametrize(("device", "cores", "train_args", "threads"), [
    ("cpu", 2, (), 2),               # one process: every core
    ("cpu:2", 2, (), 1),             # N processes: cores // N each, the same cores in total
    ("cpu:4", 8, (), 2),
    ("cpu:4", 2, (), 1),             # more processes than cores: still 1 each
    ("cpu", 2, ("--threads", "1"), 1),  # the matrix file's own --threads wins
    ("cpu:2", 8, ("--threads=3",), 3),
])
def test_threads_are_pinned_per_cell(tmp_path: Path, monkeypatch, device: str, cores: int, train_args: tuple,
                                     threads: int) -> None:
    from torchliquid.experiments.runner import cell_threads

    monkeypatch.setattr("torchliquid.runtime.available_cores", lambda: cores)
    cell = CellSpec("power", "cfc", device, 32, train_args=train_args)
    assert cell_threads(cell) == threads
    argv = train_command(cell, tmp_path, 29500 if cell.nproc > 1 else None)
    pinned = [a for a in argv if a.startswith("--threads")]
    assert pinned == (["--threads"] if not train_args else [train_args[0]])  # once, never twice
    value = argv[argv.index("--threads") + 1] if "--threads" in argv else train_args[0].partition("=")[2]
    assert int(value) == threads


def test_the_runner_pins_and_records_threads(tmp_path: Path, monkeypatch) -> None:
    """1-process and 2-process CPU cells on a 2-core machine: 2 threads vs 1 thread per process,
    in the launcher's environment (OMP_NUM_THREADS, so torchrun does not pick its own), in the
    store and in the plan."""
    monkeypatch.setattr("torchliquid.runtime.available_cores", lambda: 2)
    m = small_matrix(devices=("cpu", "cpu:2"), batch_sizes=(1,))
    lines: list[str] = []
    run_matrix(m, tmp_path, launcher=FakeLauncher(), gpus=0, echo=lines.append)
    latest = _store(tmp_path).latest()
    plan = {c["cell_id"]: c for c in json.loads((tmp_path / "plan.json").read_text())["cells"]}
    for cell, threads in zip(m.cells, (2, 1)):
        assert latest[cell.cell_id]["threads_per_process"] == threads
        assert plan[cell.cell_id]["threads_per_process"] == threads
        seen = json.loads((tmp_path / latest[cell.cell_id]["run_dir"] / "argv.json").read_text())
        assert seen["omp_num_threads"] == str(threads)
    assert "1 process x 2 threads)" in lines[0] and "2 processes x 1 thread)" in lines[2]


def test_busy_cores_reads_other_work_between_cells(monkeypatch) -> None:
    from torchliquid.experiments import runner

    stats = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  150 0 150 900 0 0 0 0 0 0\n"])  # 100 of 200 ticks busy
    monkeypatch.setattr("builtins.open", lambda *a, **k: __import__("io").StringIO(next(stats)))
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    assert runner.busy_cores(0.0) == 1.0  # half of 2 cores


def test_the_store_records_how_busy_the_machine_was(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("torchliquid.experiments.runner.busy_cores", lambda: 1.25)
    m = small_matrix(batch_sizes=(1,))
    run_matrix(m, tmp_path, launcher=FakeLauncher(), gpus=0, echo=quiet)
    assert _store(tmp_path).latest()[m.cells[0].cell_id]["busy_cores_at_start"] == 1.25


def test_sigint_marks_the_running_cell_interrupted_and_stops(tmp_path: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    m = small_matrix(batch_sizes=(1, 2, 3))
    first, second, third = (c.cell_id for c in m.cells)
    previous = signal.getsignal(signal.SIGINT)
    launcher = FakeLauncher({second: "sigint"})
    run = run_matrix(m, tmp_path, launcher=launcher, gpus=0, echo=quiet)
    assert signal.getsignal(signal.SIGINT) is previous  # the runner restored the handler
    assert run.interrupted
    assert launcher.launched == [first, second]
    latest = _store(tmp_path).latest()
    assert latest[first]["status"] == "done"
    assert latest[second]["status"] == "interrupted" and latest[second]["error"]["message"] == "stopped by SIGINT"
    assert third not in latest
    resume = FakeLauncher()
    run_matrix(m, tmp_path, launcher=resume, gpus=0, echo=quiet)
    assert resume.launched == [second, third]


def test_torn_last_line_leaves_a_readable_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append({"cell_id": "a", "status": "done", "result": {"x": 1}})
    with open(store.path, "ab") as fh:
        fh.write(b'{"cell_id": "b", "status": "do')  # the write a power cut interrupted
    assert [r["cell_id"] for r in store.records()] == ["a"] and store.skipped_lines == 1
    store.append({"cell_id": "c", "status": "failed"})
    assert [r["cell_id"] for r in store.records()] == ["a", "c"] and store.skipped_lines == 1


def test_store_rejects_unknown_status(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="running"):
        _store(tmp_path).append({"cell_id": "a", "status": "finished"})


def test_dry_run_writes_nothing_and_estimates(tmp_path: Path) -> None:
    m = small_matrix(datasets=("har",), batch_sizes=(64, 128), models=("cfc", "ltc"), epochs=50)
    out = tmp_path / "r"
    run = run_matrix(m, out, dry_run=True, gpus=0, echo=quiet)
    assert not out.exists()
    guess = {p.cell.model: p for p in run.plan if p.cell.batch_size == 64}
    assert {p.estimate_source for p in run.plan} == {"rough guess"}
    assert guess["ltc"].estimate_s > guess["cfc"].estimate_s  # the study: LTC far slower than CfC
    # With a finished cell in the store: its own time, and its per-epoch time for its neighbour.
    cfc64, cfc128 = (c for c in m.cells if c.model == "cfc")
    _store(out).append({"cell_id": cfc64.cell_id, "status": "done", "cell": cfc64.to_dict(),
                        "wall_seconds": 200.0, "result": {"epochs": 50}})
    plan = {p.cell.cell_id: p for p in run_matrix(m, out, dry_run=True, gpus=0, echo=quiet).plan}
    assert plan[cfc64.cell_id].action == "done"
    assert plan[cfc64.cell_id].estimate_s == 200.0 and plan[cfc64.cell_id].estimate_source == "previous run"
    assert plan[cfc128.cell_id].estimate_s == pytest.approx(200.0 / 50 * 50)
    assert plan[cfc128.cell_id].estimate_source == f"scaled from {cfc64.cell_id}"
    assert "to run" in run.summary()


TORCHRUN_STDERR = """\
Setting OMP_NUM_THREADS environment variable for each process to be 1 in default
torchliquid: error: unrecognized arguments: --backend gloo (see torchliquid --help)
E1203 17:32:01.086000 16639 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2)
Traceback (most recent call last):
  File "/venv/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 380, in wrapper
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
  exitcode  : -15 (pid: 16724)  (SIGTERM)
------------------------------------------------------------
"""


def test_error_summary_finds_the_workers_error_under_torchrun_noise(tmp_path: Path) -> None:
    from torchliquid.experiments.cellfiles import error_summary

    (tmp_path / "a.log").write_text(TORCHRUN_STDERR)
    assert error_summary(tmp_path / "a.log").startswith("torchliquid: error: unrecognized arguments")
    (tmp_path / "b.log").write_text("loading\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                                    "ValueError: unknown dataset 'x'\n")
    assert error_summary(tmp_path / "b.log") == "ValueError: unknown dataset 'x'"
    (tmp_path / "c.log").write_text("just a last line\n\n")
    assert error_summary(tmp_path / "c.log") == "just a last line"


def test_second_runner_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl", reason="the folder lock uses POSIX flock")
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `matrix run` would
        launcher = FakeLauncher()
        with pytest.raises(RuntimeError, match="in use"):
            run_matrix(small_matrix(batch_sizes=(1,)), tmp_path, launcher=launcher, gpus=0, echo=quiet)
        assert launcher.launched == []
    run_matrix(small_matrix(batch_sizes=(1,)), tmp_path, launcher=launcher, gpus=0, echo=quiet)
    assert len(launcher.launched) == 1  # released: the next runner proceeds
