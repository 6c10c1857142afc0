"""The one way torchliquid writes a file that matters: readers and crashes see the old file or
the whole new one, never half of it.

Bytes go to a temporary file in the destination's folder (same filesystem, so the final
``os.replace`` is atomic), are flushed and fsync'd, and only then moved over the destination.
Any exception inside the ``with`` block (a failed write, a failed check) removes the temporary
file and leaves the destination untouched. Standard library only: every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_write(
    path: PathLike,
    mode: str = "w",
    *,
    before_replace: Optional[Callable[[], None]] = None,
    suffix: str = ".tmp",
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing in ``mode`` ("w" text, UTF-8, no newline translation;
    "wb" binary) and move it over ``path`` when the block ends without an exception.

    ``handle.name`` is the temporary file's path, so a caller can verify the complete file
    (a checksum, a size) inside the block before it replaces anything. ``before_replace`` runs
    after the new file is on disk and just before the move (e.g. to keep the old file as a
    backup, so that one complete file exists at every instant).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "result.json"
        >>> with atomic_write(target) as handle:
        ...     _ = handle.write('{"ok": true}')
        >>> target.read_text()
        '{"ok": true}'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = _temporary(path, suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and checkpoints are meant to be shared
        text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with open(tmp, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_writable(path: PathLike) -> None:
    """OSError naming ``path`` when a file cannot be created beside it (a folder that cannot be
    made or written): called before long work whose result goes there."""
    fd, tmp = _temporary(Path(path), ".probe")
    os.close(fd)
    os.unlink(tmp)


def _temporary(path: Path, suffix: str) -> tuple[int, str]:
    """mkstemp beside ``path``; its failure names ``path``, not the temporary file's random name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
