"""Run a matrix: one isolated process per cell, a resumable store, a clean stop on Ctrl-C.

Layout of the output folder ``results/NAME``::

    matrix.toml     copy of the matrix file that was run (provenance; the report reads it)
    plan.json       every cell with what this machine did about it (run/done/skip + why)
    results.jsonl   the store (see store.py): cell config, machine, result, metrics, errors
    runs/<cell_id>/ result.json, metrics.csv, config.json from the trainer; stdout.log, stderr.log

Launch (the default launcher, :func:`train_command`)::

    python -m torchliquid train --model M --dataset D ... --out runs/<cell_id>         # 1 process
    python -m torch.distributed.run --nproc-per-node N --master-port PORT \\
        -m torchliquid train ... --lr-scaling none --backend gloo|nccl                  # N processes

Multi-process cells get the already-scaled learning rate and ``--lr-scaling none``, so the lr
in the command, in the store and in the trainer's config.json is the one used. A launcher is any
callable ``(cell, run_dir, port) -> argv``; tests inject a tiny python script instead of training.

Threads are pinned per cell, never left to the environment (torchrun sets ``OMP_NUM_THREADS=1``
on its own, a plain process takes every core): a one-process cell gets all the cores this
machine lets the runner use, an N-process cell ``cores // N`` threads per process (at least 1),
so every cell of a CPU speed-up comparison uses the same cores in total. ``--threads`` in a
cell's ``train_args`` overrides that. The count goes to the trainer as ``--threads`` and to every
launcher's environment as ``OMP_NUM_THREADS``, and is stored with the cell
(``threads_per_process``) for the report. Pinning cannot make a busy machine idle: threads that
outnumber the free cores wait on each other (a 2-thread process on a 2-core machine with one core
taken runs many times slower than 1 thread), so each record also stores ``busy_cores_at_start``,
the cores other work kept busy just before the cell started, and the report flags such cells.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .cellfiles import error_summary, read_metrics, read_result, tail_lines
from .estimate import estimate_seconds
from .spec import CellSpec, MatrixSpec, load_matrix
from .store import STORE_NAME, ResultStore, atomic_write_json, atomic_write_text

Launcher = Callable[[CellSpec, Path, Optional[int]], Sequence[str]]
STDERR_TAIL_LINES = 25
#: Seconds a stopped cell gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_S = 30.0


def _threads_argument(train_args: Sequence[str]) -> Optional[int]:
    """The value of the last ``--threads N`` / ``--threads=N`` in ``train_args`` (None if absent or not an int)."""
    value = None
    for i, arg in enumerate(train_args):
        if arg == "--threads" and i + 1 < len(train_args):
            value = train_args[i + 1]
        elif arg.startswith("--threads="):
            value = arg.partition("=")[2]
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the trainer rejects it with its own message


def cell_threads(cell: CellSpec, cores: Optional[int] = None) -> int:
    """Intra-op threads per process pinned for ``cell``: ``--threads`` from its train_args, else
    ``cores`` (default: the cores this process may use) split evenly between its processes."""
    explicit = _threads_argument(cell.train_args)
    if explicit is not None:
        return explicit
    if cores is None:
        from torchliquid.runtime import available_cores

        cores = available_cores()
    return max(1, cores // cell.nproc)


def train_command(cell: CellSpec, run_dir: Path, port: Optional[int]) -> list[str]:
    """argv of ``torchliquid train`` for ``cell`` (through torch.distributed.run when nproc > 1),
    with its threads per process pinned (:func:`cell_threads`)."""
    args = ["-m", "torchliquid", "train", "--model", cell.model, "--dataset", cell.dataset,
            "--epochs", str(cell.epochs), "--batch-size", str(cell.batch_size), "--lr", repr(cell.lr),
            "--units", str(cell.units), "--device", "cuda" if cell.device_spec.kind == "gpu" else "cpu",
            "--seed", str(cell.seed), "--out", str(run_dir)]
    if _threads_argument(cell.train_args) is None:  # train_args' own --threads is passed as written
        args += ["--threads", str(cell_threads(cell))]
    if cell.data_dir is not None:
        args += ["--data-dir", cell.data_dir]
    if cell.max_windows is not None:
        args += ["--max-windows", str(cell.max_windows)]
    if cell.nproc > 1:
        if port is None:
            raise ValueError(f"cell {cell.cell_id} runs {cell.nproc} processes and needs a master port")
        args = ["-m", "torch.distributed.run", "--nproc-per-node", str(cell.nproc), "--master-port",
                str(port), *args, "--lr-scaling", "none", "--backend", cell.resolved_backend]
    return [sys.executable, *args, *cell.train_args]


#: seconds :func:`busy_cores` samples /proc/stat over before each cell
BUSY_SAMPLE_S = 0.25


def busy_cores(interval: Optional[float] = None) -> Optional[float]:
    """Cores kept busy by other work over ``interval`` seconds (default :data:`BUSY_SAMPLE_S`),
    from /proc/stat; None off Linux.

    Measured between cells, when none of ours runs, so everything counted is someone else's.
    """
    def sample() -> Optional[tuple[int, int]]:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user..steal; guest time is already inside user

    first = sample()
    if first is None:
        return None
    time.sleep(BUSY_SAMPLE_S if interval is None else interval)
    second = sample()
    if second is None or second[0] <= first[0]:
        return None
    busy_share = 1.0 - (second[1] - first[1]) / (second[0] - first[0])
    return round(max(0.0, busy_share) * (os.cpu_count() or 1), 2)  # /proc/stat covers every CPU


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gpu_count() -> int:
    """GPUs torch can use here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def machine_environment() -> dict[str, Any]:
    """The machine a matrix ran on: CPU, GPUs, versions (stored with every record)."""
    import torch

    from torchliquid import __version__
    from torchliquid.runtime import available_cores, describe_environment

    env = describe_environment("cpu")
    n = gpu_count()
    return {"hostname": env.get("hostname"), "platform": platform.platform(), "python": env.get("python"),
            "torch": torch.__version__, "torchliquid": __version__, "cuda": torch.version.cuda,
            "cpu_model": env.get("cpu_model"), "cpu_cores": available_cores(), "gpu_count": n,
            "gpu_models": [torch.cuda.get_device_name(i) for i in range(n)]}


@dataclass
class PlannedCell:
    """What the runner will do about one cell on this machine.

    ``action``: ``run`` (new), ``rerun`` (failed/interrupted before), ``done`` (finished before,
    skipped) or ``skip`` (this machine cannot run it; ``reason`` says why).
    """

    cell: CellSpec
    action: str
    reason: str = ""
    estimate_s: float = 0.0
    estimate_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell.cell_id, "action": self.action, "reason": self.reason,
                "estimate_s": round(self.estimate_s, 1), "estimate_source": self.estimate_source,
                "threads_per_process": cell_threads(self.cell), "cell": self.cell.to_dict()}


@dataclass
class MatrixRun:
    """What :func:`run_matrix` did: the plan, each launched cell's final status, and whether a
    SIGINT stopped it."""

    out_dir: Path
    plan: list[PlannedCell]
    statuses: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    dry_run: bool = False

    def count(self, action: str) -> int:
        return sum(p.action == action for p in self.plan)

    def summary(self) -> str:
        """The plan as a text table, one line per cell, then the totals."""
        lines = [f"{'#':>3}  {'cell':<44} {'action':<8} {'estimate':>9}  {'procs x threads':<15}  note"]
        for i, p in enumerate(self.plan, 1):
            status = self.statuses.get(p.cell.cell_id, p.action)
            note = p.reason if p.action == "skip" else p.estimate_source
            est = "" if p.action in ("skip", "done") else _hms(p.estimate_s)
            layout = f"{p.cell.nproc} x {cell_threads(p.cell)}"
            lines.append(f"{i:>3}  {p.cell.cell_id:<44} {status:<8} {est:>9}  {layout:<15}  {note}")
        todo = [p for p in self.plan if p.action in ("run", "rerun")]
        # After a run the plan's "to run" is history: say so, or it reads as work still pending.
        planned = "planned at the start: " if self.statuses else ""
        lines.append(f"{len(self.plan)} cells, {planned}{len(todo)} to run (~{_hms(sum(p.estimate_s for p in todo))}), "
                     f"{self.count('done')} already done, {self.count('skip')} skipped on this machine")
        if self.statuses:
            counts = {s: list(self.statuses.values()).count(s) for s in sorted(set(self.statuses.values()))}
            lines.append("this run: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                         + ("  (stopped by SIGINT)" if self.interrupted else ""))
        return "\n".join(lines)


def plan_matrix(matrix: MatrixSpec, store: ResultStore, gpus: int) -> list[PlannedCell]:
    """Decide, per cell, run / rerun / done / skip on a machine with ``gpus`` GPUs."""
    latest = store.latest()
    done = {cid: r for cid, r in latest.items() if r["status"] == "done"}
    plan = []
    for cell in matrix.cells:
        spec = cell.device_spec
        if spec.kind == "gpu" and spec.nproc > gpus:
            have = f"{gpus} GPU" + ("" if gpus == 1 else "s") if gpus else "no CUDA GPU (torch.cuda.device_count() == 0)"
            plan.append(PlannedCell(cell, "skip", f"needs {spec.nproc} GPU(s); this machine has {have}"))
            continue
        prev = latest.get(cell.cell_id)
        if prev is not None and prev["status"] == "done":
            plan.append(PlannedCell(cell, "done", "finished in an earlier run", *estimate_seconds(cell, done)))
            continue
        action = "rerun" if prev is not None else "run"
        reason = f"previous attempt {prev['status']}" if prev is not None else ""
        plan.append(PlannedCell(cell, action, reason, *estimate_seconds(cell, done)))
    return plan


def run_matrix(file: str | Path | MatrixSpec, out_dir: str | Path, dry_run: bool = False,
               launcher: Launcher = train_command, gpus: Optional[int] = None,
               cell_timeout_s: Optional[float] = None, echo: Callable[[str], None] = print) -> MatrixRun:
    """Run every cell of a matrix this machine can run, resuming where an earlier run stopped.

    Args:
        file: matrix TOML path (or an already parsed :class:`MatrixSpec`).
        out_dir: the matrix's results folder (created); see the module docstring for its layout.
        dry_run: only plan: list cells, skips and estimated times; launch nothing, write nothing.
        launcher: ``(cell, run_dir, port) -> argv``; ``port`` is a free TCP port for multi-process
            cells, None otherwise.
        gpus: GPUs available (default: ``torch.cuda.device_count()``); cells needing more are
            skipped with the reason.
        cell_timeout_s: stop a cell after this many seconds and record it as failed.
        echo: where progress lines go.

    Returns:
        A :class:`MatrixRun`; ``interrupted`` is True when SIGINT stopped the matrix (the
        running cell is recorded as ``interrupted`` and reruns next time).

    Raises:
        ValueError: the matrix file is invalid (the message names file, key, allowed values).
        RuntimeError: another ``run_matrix`` holds ``out_dir`` (one runner per folder).
    """
    matrix = file if isinstance(file, MatrixSpec) else load_matrix(file)
    out_dir = Path(out_dir)
    gpus = gpu_count() if gpus is None else gpus
    if dry_run:
        return MatrixRun(out_dir=out_dir, plan=_plan(matrix, out_dir, gpus, echo), dry_run=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):  # plan under the lock, so it sees every record of a runner before us
        run = MatrixRun(out_dir=out_dir, plan=_plan(matrix, out_dir, gpus, echo))
        return _run_plan(matrix, out_dir, run, ResultStore(out_dir / STORE_NAME), launcher, cell_timeout_s, echo)


def _plan(matrix: MatrixSpec, out_dir: Path, gpus: int, echo: Callable[[str], None]) -> list[PlannedCell]:
    store = ResultStore(out_dir / STORE_NAME)
    plan = plan_matrix(matrix, store, gpus)
    if store.skipped_lines:
        echo(f"warning: {store.path}: skipped {store.skipped_lines} unreadable line(s) (a torn write?)")
    return plan


def _run_plan(matrix: MatrixSpec, out_dir: Path, run: MatrixRun, store: ResultStore, launcher: Launcher,
              cell_timeout_s: Optional[float], echo: Callable[[str], None]) -> MatrixRun:
    plan = run.plan
    atomic_write_text(out_dir / "matrix.toml", matrix.text or f"# parsed from {matrix.source}\n")
    atomic_write_json(out_dir / "plan.json", {"matrix": matrix.name, "source": matrix.source,
                                              "cells": [p.to_dict() for p in plan]})
    for p in plan:
        if p.action == "skip":
            echo(f"skip {p.cell.cell_id}: {p.reason}")
    environment = machine_environment()
    todo = [p for p in plan if p.action in ("run", "rerun")]
    with _SigintGuard() as guard:
        for i, p in enumerate(todo, 1):
            if guard.requested:
                break
            threads = cell_threads(p.cell)
            echo(f"[{i}/{len(todo)}] {p.cell.cell_id} ({p.action}, ~{_hms(p.estimate_s)}, {p.cell.nproc} "
                 f"process{'es' * (p.cell.nproc > 1)} x {threads} thread{'s' * (threads > 1)})")
            status = _run_cell(p.cell, out_dir, store, launcher, environment, guard, cell_timeout_s, echo)
            run.statuses[p.cell.cell_id] = status
        run.interrupted = guard.requested
    if run.interrupted:
        echo("stopped by SIGINT; rerun the same command to resume")
    return run


# -- one cell -----------------------------------------------------------------------------------

def _run_cell(cell: CellSpec, out_dir: Path, store: ResultStore, launcher: Launcher,
              environment: dict[str, Any], guard: "_SigintGuard", timeout: Optional[float],
              echo: Callable[[str], None]) -> str:
    run_dir = out_dir / "runs" / cell.cell_id
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an earlier attempt's files must not pass for this attempt's
    run_dir.mkdir(parents=True)
    port = free_port() if cell.nproc > 1 else None
    argv = [str(a) for a in launcher(cell, run_dir, port)]
    threads = cell_threads(cell)
    base = {"cell_id": cell.cell_id, "cell": cell.to_dict(), "command": argv,
            "run_dir": str(run_dir.relative_to(out_dir)), "environment": environment,
            "threads_per_process": threads, "busy_cores_at_start": busy_cores()}
    store.append({**base, "status": "running"})
    # Logs are complete even when a cell is killed; threads pinned whatever the launcher (torchrun
    # would otherwise set OMP_NUM_THREADS=1 for its workers while a plain process takes every core).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    timed_out, exit_code = False, None
    try:
        with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
            # Own session: Ctrl-C reaches only the runner, which then stops the whole cell
            # (torchrun and its workers) as one process group.
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
            guard.proc = proc
            if guard.requested:  # Ctrl-C landed between the loop's check and Popen
                _stop_group(proc, signal.SIGTERM)
            try:
                exit_code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop_group(proc, signal.SIGTERM)
                exit_code = _wait_or_kill(proc)
            finally:
                guard.proc = None
    except OSError as exc:  # the launcher's program does not exist, etc.
        wall = time.perf_counter() - start
        store.append({**base, "status": "failed", "wall_seconds": wall,
                      "error": {"exit_code": None, "message": f"could not start: {exc}", "stderr_tail": ""}})
        echo(f"    failed: could not start {argv[0]!r}: {exc}")
        return "failed"
    wall = time.perf_counter() - start
    result = read_result(run_dir / "result.json") if exit_code == 0 else None
    if result is not None:
        store.append({**base, "status": "done", "wall_seconds": wall, "result": result,
                      "metrics": read_metrics(run_dir / "metrics.csv")})
        echo(f"    done in {_hms(wall)}")
        return "done"
    tail = tail_lines(run_dir / "stderr.log", STDERR_TAIL_LINES)
    cause = error_summary(run_dir / "stderr.log")
    if guard.requested and not timed_out:
        status, message = "interrupted", "stopped by SIGINT"
    elif timed_out:
        status, message = "failed", f"timed out after {timeout:g} s"
    elif exit_code == 0:
        status, message = "failed", f"exited 0 but wrote no readable {run_dir / 'result.json'}"
    else:
        status, message = "failed", f"exit code {exit_code}"
    store.append({**base, "status": status, "wall_seconds": wall,
                  "error": {"exit_code": exit_code, "message": message, "summary": cause, "stderr_tail": tail}})
    echo(f"    {status}: {message}; {cause or '(no stderr)'}  [logs: {run_dir}]")
    return status


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """One runner per results folder: two would launch the same cells and interleave the store.

    flock is released by the OS when the process dies, so a crash leaves no stale lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, documented
        yield
        return
    with open(out_dir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"{out_dir} is in use by another `matrix run`; wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_running(out_dir: str | Path) -> bool:
    """True while a ``run_matrix`` holds ``out_dir`` (so a ``running`` record is live, not stale)."""
    lock = Path(out_dir) / ".lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


class _SigintGuard:
    """Turns SIGINT into a flag and stops the running cell: SIGTERM to its process group on the
    first Ctrl-C, SIGKILL on the second. Installs itself only in the main thread (signal
    handlers cannot be set elsewhere); restores the previous handler on exit."""

    def __init__(self) -> None:
        self.requested = False
        self.proc: Optional[subprocess.Popen] = None
        self._count = 0
        self._previous: Any = None

    def __enter__(self) -> "_SigintGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self._count += 1
        if self.proc is not None and self.proc.poll() is None:
            _stop_group(self.proc, signal.SIGTERM if self._count == 1 else signal.SIGKILL)


def _stop_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_or_kill(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        _stop_group(proc, signal.SIGKILL)
        return proc.wait()


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
