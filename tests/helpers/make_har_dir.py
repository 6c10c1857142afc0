"""Build a UCI HAR directory: the real label/subject files plus a synthetic 561-feature X.

The real ``X_train.txt``/``X_test.txt`` are not available offline (shared data README §3b), so
this writes X of the right shape (7,352 x 561 and 2,947 x 561) in the exact UCI text format
(each value ``%16.7e`` with a three-digit exponent, e.g. ``  2.8858451e-001 -2.0294171e-002``),
seeded, in [-1, 1], with class-dependent means so that a model can learn something. Labels,
subjects, ``features.txt`` and ``activity_labels.txt`` are copied from the shared data.

Usage (creates ``OUT_DIR/har/UCI HAR Dataset/...``)::

    python tests/helpers/make_har_dir.py OUT_DIR [--seed 0] [--labels-from DIR]
    torchliquid train --dataset har --data-dir OUT_DIR ...

or ``from make_har_dir import make_har_dir`` (see ``tests/test_data_har.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

N_FEATURES = 561
N_CLASSES = 6
FIELD = 16  # characters per value in the UCI X files
_COPIED = ("activity_labels.txt", "features.txt", "README.txt", "features_info.txt")


SHARED_DATA_ENV = "TORCHLIQUID_SHARED_DATA"
# The development machine's copy, found even from a clone elsewhere (e.g. /tmp/clone).
MACHINE_SHARED_DATA = Path("/work/shared/data")


def shared_data_dir() -> Path:
    """The project's shared real-data folder: ``$TORCHLIQUID_SHARED_DATA``, else ``shared/data``
    inside or beside the repository, else ``/work/shared/data`` (the development machine)."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "shared" / "data", repo.parent / "shared" / "data", MACHINE_SHARED_DATA):
        if candidate.is_dir():
            return candidate
    return repo / "shared" / "data"


def missing_shared(path: Path) -> str:
    """Skip reason of a test whose shared real-data file ``path`` is absent: says how to point at it."""
    return (f"shared real data not found at {path} (CI provides it; set {SHARED_DATA_ENV} to the folder "
            "holding traffic/, power/ and har/)")


def shared_har_dir() -> Path:
    return shared_data_dir() / "har" / "UCI_HAR_Dataset"


def format_uci_rows(values: np.ndarray) -> bytes:
    """Rows of floats -> UCI text: each value right-aligned in 16 characters as ``d.ddddddde±ddd``.

    Vectorised equivalent of ``"".join(f"{v:15.7e}" with the exponent widened to 3 digits)``
    per line, LF-terminated; ~10x faster than Python formatting for the 4 M values of X_train.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or not np.all(np.isfinite(v)):
        raise ValueError(f"expected a finite 2-D array; got shape {v.shape}")
    a = np.abs(v)
    nonzero = a > 0
    exp = np.zeros(v.shape, dtype=np.int64)
    exp[nonzero] = np.floor(np.log10(a[nonzero])).astype(np.int64)

    def mantissa(e: np.ndarray) -> np.ndarray:
        # a * 10**(7-e) is one rounding for |e| <= 15 (the power of ten is exact)
        return np.rint(a * np.power(10.0, 7 - e)).astype(np.int64)

    mant = mantissa(exp)
    low = nonzero & (mant < 10_000_000)  # log10 rounded up across a power of ten
    exp[low] -= 1
    mant = np.where(low, mantissa(exp), mant)
    carry = mant >= 100_000_000  # 9.99999995.. rounds up to 10.0000000
    exp[carry] += 1
    mant[carry] //= 10
    if np.any(np.abs(exp) > 999):
        raise ValueError("exponent does not fit the UCI three-digit format")

    chars = np.empty(v.shape + (FIELD,), dtype=np.uint8)  # (R, F, 16)
    zero = ord("0")
    chars[..., 0] = ord(" ")
    chars[..., 1] = np.where(v < 0, ord("-"), ord(" "))
    for k in range(8):  # mantissa digits d0 . d1..d7
        digit = (mant // 10 ** (7 - k)) % 10
        chars[..., 2 if k == 0 else 3 + k] = zero + digit
    chars[..., 3] = ord(".")
    chars[..., 11] = ord("e")
    chars[..., 12] = np.where(exp < 0, ord("-"), ord("+"))
    e = np.abs(exp)
    chars[..., 13], chars[..., 14], chars[..., 15] = zero + e // 100, zero + e // 10 % 10, zero + e % 10
    lines = np.empty((v.shape[0], v.shape[1] * FIELD + 1), dtype=np.uint8)
    lines[:, :-1] = chars.reshape(v.shape[0], -1)
    lines[:, -1] = ord("\n")
    return lines.tobytes()


def synthetic_features(labels: np.ndarray, class_means: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(R, 561)`` values in [-1, 1]: the row's class mean plus Gaussian noise, clipped."""
    noise = rng.normal(0.0, 0.25, size=(len(labels), class_means.shape[1]))
    return np.clip(class_means[labels - 1] + noise, -1.0, 1.0)


def make_har_dir(out_dir: str | Path, *, seed: int = 0, labels_from: str | Path | None = None,
                 n_train: int | None = None, n_test: int | None = None) -> Path:
    """Write ``out_dir/har/UCI HAR Dataset/`` and return that directory.

    ``labels_from``: a UCI HAR folder with the real ``train/y_train.txt`` etc. (default: the
    shared data). ``n_train``/``n_test`` keep only the first rows, for tiny test directories.
    """
    source = Path(labels_from) if labels_from is not None else shared_har_dir()
    target = Path(out_dir) / "har" / "UCI HAR Dataset"
    rng = np.random.default_rng(seed)
    class_means = rng.uniform(-0.5, 0.5, size=(N_CLASSES, N_FEATURES))
    for name in _COPIED:
        if (source / name).is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
    for split, n_rows in (("train", n_train), ("test", n_test)):
        (target / split).mkdir(parents=True, exist_ok=True)
        y_lines = (source / split / f"y_{split}.txt").read_bytes().splitlines(keepends=True)[:n_rows]
        s_lines = (source / split / f"subject_{split}.txt").read_bytes().splitlines(keepends=True)[:n_rows]
        (target / split / f"y_{split}.txt").write_bytes(b"".join(y_lines))
        (target / split / f"subject_{split}.txt").write_bytes(b"".join(s_lines))
        labels = np.array([int(line) for line in y_lines], dtype=np.int64)
        x = synthetic_features(labels, class_means, rng)
        (target / split / f"X_{split}.txt").write_bytes(format_uci_rows(x))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels-from", type=Path, default=None, help="UCI HAR folder with the real y/subject files")
    args = parser.parse_args(argv)
    print(make_har_dir(args.out_dir, seed=args.seed, labels_from=args.labels_from))


if __name__ == "__main__":
    main()
