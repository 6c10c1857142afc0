"""Stand-ins shared by the experiments tests (no tests here).

``fake_launcher`` is the collaborator ``run_matrix`` receives instead of ``torchliquid train``:
it launches a tiny python script that behaves as told per cell (write a result, fail with a
traceback, exit 0 without a result, or press Ctrl-C on the runner). ``result_dict`` builds a
result.json in the trainer's documented schema from numbers the test chooses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torchliquid.experiments.spec import CellSpec, parse_matrix

# The fake trainer: argv = run_dir, mode, cell json, port. Writes what the real trainer writes.
FAKE_TRAIN = r"""
import json, os, signal, sys
run_dir, mode, cell, port = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
with open(os.path.join(run_dir, "argv.json"), "w") as f:
    json.dump({"port": port, "pid": os.getpid(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}, f)
if mode == "fail":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: boom in " + cell["dataset"], file=sys.stderr)
    sys.exit(3)
if mode == "noresult":
    sys.exit(0)
if mode == "sigint":
    os.kill(os.getppid(), signal.SIGINT)   # the runner is our parent
    signal.pause()                         # until the runner stops our process group
post = {"loss": 0.5, "accuracy": 0.9} if cell["dataset"] == "har" else {"loss": 0.2, "mse": 0.2, "mae": 0.3}
result = {"model": cell["model"], "dataset": cell["dataset"], "epochs": cell["epochs"],
          "batch_size": cell["batch_size"], "lr": 0.001, "pre_training": post, "post_training": post,
          "train_seconds": 10.0 * cell["epochs"], "params": 100, "sequences_per_second": 1.0,
          "environment": {"device": "cpu"}}
with open(os.path.join(run_dir, "metrics.csv"), "w") as f:
    f.write("epoch,train_loss,test_loss\n1,0.7,0.5\n")
with open(os.path.join(run_dir, "result.json"), "w") as f:
    json.dump(result, f)
"""


class FakeLauncher:
    """Launcher ``(cell, run_dir, port) -> argv``; ``modes`` maps cell_id -> mode (default ok).

    Records every call, so a test can see which cells were launched and with which port.
    """

    def __init__(self, modes: Optional[Mapping[str, str]] = None) -> None:
        self.modes = dict(modes or {})
        self.calls: list[tuple[str, Optional[int]]] = []

    def __call__(self, cell: CellSpec, run_dir: Path, port: Optional[int]) -> list[str]:
        self.calls.append((cell.cell_id, port))
        mode = self.modes.get(cell.cell_id, "ok")
        return [sys.executable, "-c", FAKE_TRAIN, str(run_dir), mode, json.dumps(cell.to_dict()), str(port)]

    @property
    def launched(self) -> list[str]:
        return [cid for cid, _ in self.calls]


def small_matrix(devices: Sequence[str] = ("cpu",), datasets: Sequence[str] = ("sine",),
                 batch_sizes: Sequence[int] = (1, 2), models: Sequence[str] = ("cfc",), epochs: int = 1):
    return parse_matrix({"matrix": {"name": "t"},
                         "defaults": {"models": list(models), "epochs": epochs},
                         "grid": [{"datasets": list(datasets), "devices": list(devices),
                                   "batch_sizes": list(batch_sizes)}]}, source="small.toml")


def result_dict(model: str, dataset: str, device: str, batch: int, seconds: float, *, epochs: int = 50,
                world_size: int = 1, post: Optional[Mapping[str, float]] = None,
                monitor: Optional[Mapping[str, Any]] = None, seed: int = 0,
                threads: Optional[int] = None) -> dict[str, Any]:
    """A result.json in the trainer's schema; ``device`` is "cpu" or "cuda:0"; ``threads`` is
    the trainer's ``environment.threads`` (left out when None, as in old results)."""
    if post is None:
        post = {"loss": 0.4, "accuracy": 0.9} if dataset == "har" else {"loss": 0.2, "mse": 0.2, "mae": 0.35}
    out: dict[str, Any] = {
        "model": model, "dataset": dataset, "epochs": epochs, "batch_size": batch, "lr": 1e-3, "seed": seed,
        "task": "classification" if "accuracy" in post else "regression",
        "pre_training": {k: v * 2 for k, v in post.items()}, "post_training": dict(post),
        "train_seconds": seconds, "params": 1234, "sequences_per_second": 100.0,
        "environment": {"device": device, "torch": "2.x", "cpu_model": "Fake CPU", "world_size": world_size},
        "world_size": world_size}
    if monitor is not None:
        out["monitor"] = monitor
    if threads is not None:
        out["environment"]["threads"] = threads
    return out


def store_record(result: Mapping[str, Any], device: str, status: str = "done", **cell_kw: Any) -> dict[str, Any]:
    """A store record around ``result`` for a cell on matrix device ``device``."""
    cell = CellSpec(dataset=result["dataset"], model=result["model"], device=device,
                    batch_size=result["batch_size"], epochs=result["epochs"], seed=result.get("seed", 0), **cell_kw)
    return {"cell_id": cell.cell_id, "status": status, "cell": cell.to_dict(), "result": dict(result),
            "run_dir": f"runs/{cell.cell_id}", "wall_seconds": result["train_seconds"] + 5.0,
            "environment": {"hostname": "fakehost", "cpu_model": "Fake CPU", "cpu_cores": 2, "gpu_models": [],
                            "torch": "2.x", "cuda": None}}
