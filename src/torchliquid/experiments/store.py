"""The results store of one matrix: an append-only, fsync'd JSON-lines file.

Every state change of a cell appends one record (``running``, then ``done`` / ``failed`` /
``interrupted``); the latest record of a cell is its state. Appending never rewrites earlier
lines, and each line is flushed and fsync'd before the runner moves on, so a crash or power cut
loses at most the line being written. The reader skips a torn or otherwise unreadable line (and
counts it in :attr:`ResultStore.skipped_lines`), and the writer starts a fresh line if the file
ends mid-line, so one torn write never damages the next record.

A ``running`` record with no later record means the runner itself died during that cell; the
runner treats it like ``interrupted`` and reruns the cell.

Record fields (schema 1)::

    schema, cell_id, status, at (UTC ISO time), cell (CellSpec.to_dict()), command (argv),
    run_dir (relative to the matrix folder), environment (the machine, see runner),
    wall_seconds, result (result.json), metrics (metrics.csv rows), error
    ({exit_code, message, stderr_tail}) -- the last four only where they apply.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from torchliquid._atomic import atomic_write

SCHEMA = 1
STATUSES = ("running", "done", "failed", "interrupted")
#: States after which a rerun executes the cell again.
RERUN_STATUSES = ("running", "failed", "interrupted")
STORE_NAME = "results.jsonl"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file + fsync + ``os.replace``: readers see the old
    file or the whole new one, never half."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class ResultStore:
    """Append-only JSON-lines store; see the module docstring for the guarantees."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.skipped_lines = 0

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record (``schema`` and ``at`` are filled in); returns what was written."""
        status = record.get("status")
        if status not in STATUSES:
            raise ValueError(f"record status must be one of {list(STATUSES)}, got {status!r}")
        if not record.get("cell_id"):
            raise ValueError("record needs a cell_id")
        full = {"schema": SCHEMA, "at": utc_now(), **record}
        # allow_nan: a diverged run's NaN loss is a result worth keeping (Python reads it back).
        line = json.dumps(full, allow_nan=True, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            # A torn previous write leaves no newline at the end: start a new line so this
            # record stays whole (the fragment before it is skipped by the reader).
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        return full

    def records(self) -> list[dict[str, Any]]:
        """Every readable record in file order (unreadable lines are skipped and counted)."""
        self.skipped_lines = 0
        if not self.path.exists():
            return []
        out = []
        with open(self.path, "rb") as fh:
            for raw in fh:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    self.skipped_lines += 1
                    continue
                if isinstance(rec, dict) and rec.get("cell_id") and rec.get("status") in STATUSES:
                    out.append(rec)
                else:
                    self.skipped_lines += 1
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """cell_id -> its most recent record."""
        return {rec["cell_id"]: rec for rec in self.records()}

    def done(self) -> dict[str, dict[str, Any]]:
        """cell_id -> latest record, for the cells whose latest state is ``done``."""
        return {cid: rec for cid, rec in self.latest().items() if rec["status"] == "done"}
