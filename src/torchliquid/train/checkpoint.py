"""Atomic, checksummed files: checkpoints, JSON and CSV.

Every write goes to a temporary file in the destination's directory and is moved into place with
``os.replace``, so a reader (or a crash) only ever sees the old file or the complete new one.

A checkpoint is a plain ``torch.save`` of a dict that ``torch.load(path, weights_only=True)``
reads, holding only tensors, numbers, strings, lists, tuples and dicts::

    {"format": "torchliquid.checkpoint", "format_version": 1,
     "payload": {...},          # what the caller saved (Trainer.state_dict() plus metadata)
     "sha256": "<hex>"}         # over a canonical walk of payload (see payload_sha256)

The checksum is computed from the values (keys, types, tensor dtype/shape/bytes), not from the
pickled bytes, so it is stable across torch versions and catches a file that unpickles fine but
whose numbers were damaged. A truncated or foreign file fails to load; both cases raise
:class:`CheckpointError` naming the file.

Saving with ``previous=`` keeps the file being replaced as that path (``checkpoint.prev.pt``), so
a run always has one more complete checkpoint to fall back on; :func:`load_first_good` reads the
newest that verifies and warns, naming the file, about each one it skipped.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from torchliquid._atomic import atomic_write

FORMAT = "torchliquid.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or not ours; the message names the file."""


class CheckpointFallbackWarning(UserWarning):
    """A checkpoint could not be used and an older one was loaded instead."""


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str,
                  before_replace: Callable[[], None] | None = None) -> Path:
    with atomic_write(path, mode, before_replace=before_replace) as fh:
        write(fh)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (floats keep their exact repr)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"
    return _atomic_write(path, lambda fh: fh.write(text), "w")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              fieldnames: list[str]) -> Path:
    """Write ``rows`` (dicts) with a header, atomically."""
    rows = list(rows)

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    return _atomic_write(path, write, "w")


def _walk(h: "hashlib._Hash", obj: Any) -> None:
    # Type tags keep e.g. 1, 1.0, "1" and True apart; lengths keep ["ab"] apart from ["a", "b"].
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _walk(h, key)
            _walk(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _walk(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        text = repr(obj)
        h.update(f"{type(obj).__name__}{len(text)}:{text}".encode())
    else:
        raise TypeError(
            f"checkpoints hold only tensors, numbers, strings, lists, tuples and dicts (so that "
            f"torch.load(weights_only=True) reads them), got {type(obj).__name__}; convert it, "
            "e.g. store JSON text")


def payload_sha256(payload: Any) -> str:
    """SHA-256 over a canonical walk of ``payload`` (keys sorted, types and shapes included)."""
    h = hashlib.sha256()
    _walk(h, payload)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any],
                    previous: str | os.PathLike | None = None) -> Path:
    """Atomically write ``payload`` with its checksum to ``path``; returns the path.

    With ``previous``, the existing ``path`` is first kept there (after the new file is fully
    written), and ``path`` itself always names a complete checkpoint, the old one until the new
    one replaces it: the previous copy is a hard link (a copy where links fail) moved into place
    atomically. Moving ``path`` away instead left a moment without ``path``, and a Ctrl-C or
    SIGTERM landing in it ended the run with only ``previous`` on disk.
    """
    blob = {"format": FORMAT, "format_version": FORMAT_VERSION, "payload": dict(payload),
            "sha256": payload_sha256(dict(payload))}
    buffer = io.BytesIO()
    torch.save(blob, buffer)  # serialise first so a failure leaves no temporary file behind
    path = Path(path)

    def keep_previous() -> None:
        if previous is None or not path.exists():
            return
        staged = Path(previous).with_name(f".{Path(previous).name}.staged")
        try:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            try:
                os.link(path, staged)
            except OSError:  # a filesystem without hard links
                shutil.copy2(path, staged)
            os.replace(staged, previous)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()

    return _atomic_write(path, lambda fh: fh.write(buffer.getbuffer()), "wb", keep_previous)


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and verify its checksum; returns the payload.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, not a torch file), not a
            torchliquid checkpoint, of a newer format, or its checksum does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first "
                              "(torchliquid train ... --out DIR) or check the path")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError by damage kind
        raise CheckpointError(
            f"checkpoint {path} cannot be read, it is truncated or not a torch file "
            f"({type(e).__name__}: {_first_sentence(str(e))})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a torchliquid checkpoint (no format={FORMAT!r} "
                              "key); pass a checkpoint.pt written by torchliquid train")
    if blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version "
                              f"{blob.get('format_version')!r}, this torchliquid reads "
                              f"{FORMAT_VERSION}; use the torchliquid version that wrote it")
    payload = blob.get("payload")
    if not isinstance(payload, dict) or payload_sha256(payload) != blob.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 checksum does not "
                              "match its contents; retrain, or restore it from a copy")
    return payload


def _first_sentence(message: str, limit: int = 120) -> str:
    """torch's load errors run to a paragraph; the first sentence says what broke."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = first.split(". ")[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


def load_first_good(paths: Sequence[str | os.PathLike],
                    map_location: str | torch.device | None = "cpu") -> tuple[dict[str, Any], Path]:
    """The payload of the first of ``paths`` (newest first) that loads and verifies, and its path.

    Each file skipped because it is truncated or corrupt gives a
    :class:`CheckpointFallbackWarning` naming it; a missing file is skipped silently.

    Raises:
        CheckpointError: no file loads (the message names every file and why).
    """
    problems = []
    for path in map(Path, paths):
        if not path.exists():
            problems.append(f"{path} does not exist")
            continue
        try:
            return load_checkpoint(path, map_location), path
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"skipping checkpoint {path}: {e}; trying an older one",
                          CheckpointFallbackWarning, stacklevel=2)
    raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
