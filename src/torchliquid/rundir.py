"""What a run directory (``train --out``) already holds, and whether a new run may use it.

:func:`existing_run` decides between starting afresh, resuming and refusing, before any data is
loaded or any file written, so that a refused command leaves the directory as it was. It lives
apart from :mod:`torchliquid.workflow` (which calls it) to keep that module short.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

from torchliquid import runtime
from torchliquid.config import RunConfig
from torchliquid.train import CHECKPOINT, PREVIOUS_CHECKPOINT, load_first_good

# TrainConfig fields a resumed run may change; every other field must match the checkpoint.
RESUMABLE_CHANGES = {"epochs", "quiet", "log_every", "device", "threads", "checkpoint_every",
                     "finite_check_every", "checkpoint_steps", "monitor_interval", "backend",
                     "deterministic", "cuda_graphs"}
PREDICTIONS_SINE = "predictions_sine.npz"
# Where --overwrite keeps the run it replaces until the new run has its first checkpoint.
REPLACED = ".replaced"


def check_out_dir(out_dir: str | Path) -> None:
    """ValueError when ``out_dir`` or one of its parents exists but is not a folder.

    Otherwise the first write fails deep inside mkdir with a FileExistsError traceback (a user
    passing ``--out result.csv``), or ``--overwrite`` would try to delete files inside a file.
    """
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "" if path == out else f" (inside {path}, which is a file)"
                raise ValueError(f"--out {out_dir} cannot be a run directory{what}: "
                                 f"{path} is a file, not a folder; choose another --out")
            return


def existing_run(run: RunConfig, resume: bool, overwrite: bool) -> tuple | None:
    """``(payload, run_info, path)`` of the checkpoint to resume from, or None to start afresh.

    Rank 0 looks at the run directory and sends what it found to every rank, errors included,
    so all processes resume, start or fail together.
    """
    found: Any = None
    if runtime.is_main_process():
        try:
            found = ("ok", _read_existing(run, resume, overwrite))
        except (ValueError, OSError) as e:
            found = ("error", e)
    status, value = runtime.broadcast_object(found)
    if status == "error":
        raise value
    return value


def _read_existing(run: RunConfig, resume: bool, overwrite: bool) -> tuple | None:
    out = Path(run.out_dir)
    paths = [out / CHECKPOINT, out / PREVIOUS_CHECKPOINT]
    restarted = runtime.restart_count() > 0
    # After a torchrun restart --overwrite already did its job in the first attempt: deleting
    # again would throw away what the crashed attempt checkpointed.
    if overwrite and not restarted:
        return None  # replacing() sets the old run aside; the new one must not resume from it
    if not any(p.exists() for p in paths):
        if resume:
            raise ValueError(f"--resume: {run.out_dir} holds no checkpoint ({paths[0]}); "
                             "train without --resume to start the run")
        return None  # also after a restart that crashed before the first checkpoint
    payload, path = load_first_good(paths)
    try:
        recorded = json.loads(payload["run_info"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"checkpoint {path} lacks a readable run_info; it was not written by "
                         "torchliquid's Trainer; choose another --out") from None
    if not (resume or restarted) and differences(run, recorded):
        raise ValueError(f"{run.out_dir} already holds a run ({path}) of another configuration "
                         f"({', '.join(differences(run, recorded))} differ); pass --resume to "
                         "continue it, --overwrite to replace it, or choose another --out")
    _check_epochs(run, payload, path)
    return payload, recorded, path


def _check_epochs(run: RunConfig, payload: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume with fewer epochs than the checkpoint has done: training would not run,
    but config.json would be rewritten to the smaller count while result.json and metrics.csv
    keep the larger one."""
    state = payload.get("trainer") if isinstance(payload.get("trainer"), Mapping) else {}
    done = int(state.get("epoch", 0))
    ranks = state.get("ranks") or [{}]
    position = ranks[0].get("position") if isinstance(ranks[0], Mapping) else None
    started = int(position["epoch"]) if isinstance(position, Mapping) else done
    if run.train.epochs < max(done, started):
        part = f" and part of epoch {started}" if started > done else ""
        raise ValueError(f"{run.out_dir} already has {done} epoch{'s' * (done != 1)} done{part} "
                         f"({path.name}), more than --epochs {run.train.epochs}; pass --epochs "
                         f"{max(done, started)} or more to continue it (nothing was changed)")


def differences(run: RunConfig, old: Mapping[str, Any]) -> list[str]:
    """What of ``run`` differs from the recorded run ``old`` beyond RESUMABLE_CHANGES."""
    old_run = RunConfig.from_dict(old["run"])
    def pair(name: str, before: Any, now: Any) -> str:  # say what each value is
        return f"{name} (checkpoint: {before!r}, now: {now!r})"

    differ = [pair(f"model.{k}", getattr(old_run.model, k), getattr(run.model, k))
              for k in ("name", "units", "wiring", "kwargs") if getattr(old_run.model, k) != getattr(run.model, k)]
    differ += [pair(f"data.{k}", getattr(old_run.data, k), getattr(run.data, k))
               for k in ("name", "seed", "max_windows") if getattr(old_run.data, k) != getattr(run.data, k)]
    differ += [pair(f"train.{k}", getattr(old_run.train, k), v) for k, v in vars(run.train).items()
               if k not in RESUMABLE_CHANGES and getattr(old_run.train, k) != v]
    if old.get("world_size", 1) != runtime.world_size():
        differ.append(f"the number of processes (checkpoint: {old.get('world_size', 1)}, now: "
                      f"{runtime.world_size()})")
    return differ


def check_resumable(run: RunConfig, new: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    differ = differences(run, old)
    if json.loads(json.dumps(new["normalization"])) != old.get("normalization"):
        differ.append("normalization statistics (the data files changed)")
    if differ:
        raise ValueError(f"cannot resume {run.out_dir}: {', '.join(differ)} differ from the "
                         "checkpoint; repeat the original arguments (only --epochs and logging/"
                         "device options may change) or choose a new --out")


@contextlib.contextmanager
def replacing(out_dir: str | Path, active: bool) -> Iterator[None]:
    """``--overwrite`` without losing the old run to a failed new one.

    On entry (rank 0) everything in ``out_dir`` moves into ``out_dir/.replaced``; the new run
    starts in an empty folder (no stale result, metrics or exported model of the old one). On
    exit the old run is deleted once the new one has a checkpoint or has finished, and moved
    back when the new one failed or was interrupted before its first checkpoint (bad data,
    Ctrl-C during start-up) -- unless torchrun may still restart the job, whose next attempt
    continues the new run. A run killed outright leaves ``.replaced`` behind: the next
    ``--overwrite`` into the folder keeps replacing that same old run.
    """
    out = Path(out_dir)
    backup = out / REPLACED
    if not active or not runtime.is_main_process() or not out.is_dir():
        yield
        return
    if runtime.restart_count() > 0:
        pass  # torchrun's restart: the first attempt set the old run aside; continue the new one
    elif backup.is_dir():  # an earlier --overwrite was killed: backup still holds the old run
        _clear(out, keep=backup)
    else:
        contents = list(out.iterdir())
        if contents:
            backup.mkdir()
            for path in contents:
                path.rename(backup / path.name)
    if not backup.is_dir():
        yield
        return
    try:
        yield
    except BaseException:
        if not (out / CHECKPOINT).exists() and not _restart_pending():
            _clear(out, keep=backup)
            for path in backup.iterdir():
                path.rename(out / path.name)
            backup.rmdir()
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _clear(folder: Path, keep: Path) -> None:
    """Delete everything in ``folder`` but ``keep`` (what a new run wrote before it failed)."""
    for path in folder.iterdir():
        if path == keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _restart_pending() -> bool:
    """True when torchrun's elastic agent would restart the job after this attempt fails."""
    try:
        return runtime.restart_count() < int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        return False
