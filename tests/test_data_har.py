"""UCI HAR: the study's window counts, labels, file-format fidelity, errors and the download.

The real X files are not available offline (shared data README §3b): directories are built by
``tests/helpers/make_har_dir.py`` from the real label files plus a generated X in the exact UCI
text format. The full-size directory (92 MB of text, ~3 s) is built once per module. Tiny
directories (first 40/30 lines) exercise errors; they are generated rather than committed
because one UCI X line is 9 KB.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import re
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torchliquid.data import DATASETS, DatasetError, load_dataset
from torchliquid.data import har, sources

_spec = importlib.util.spec_from_file_location("make_har_dir", Path(__file__).parent / "helpers" / "make_har_dir.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
SHARED_HAR = helpers.shared_har_dir()
needs_labels = pytest.mark.skipif(not (SHARED_HAR / "train" / "y_train.txt").is_file(),
                                  reason=helpers.missing_shared(SHARED_HAR / "train" / "y_train.txt"))
pytestmark = needs_labels


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private empty cache and no network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHLIQUID_DATA", str(cache))

    def offline(url: str, timeout: float = 0) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(sources, "urlopen", offline)
    return cache


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("har_full")
    helpers.make_har_dir(root, seed=0)
    return root


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    helpers.make_har_dir(root, seed=1, n_train=40, n_test=30)
    return root


def test_full_size_windows_and_labels(full_dir: Path) -> None:
    splits = load_dataset("har", data_dir=full_dir, seed=0, progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6_603, 733, 367)
    assert splits.task == "classification" and (splits.input_size, splits.output_size, splits.seq_len) == (561, 6, 16)
    assert splits.train.x.shape == (6_603, 16, 561) and splits.train.y.shape == (6_603, 16)
    assert splits.train.y.dtype == torch.int64 and splits.test.x.dtype == torch.float32
    # Labels are the real UCI ones minus 1, read here independently of the loader.
    y_train = np.loadtxt(SHARED_HAR / "train" / "y_train.txt", dtype=np.int64)
    y_test = np.loadtxt(SHARED_HAR / "test" / "y_test.txt", dtype=np.int64)
    for split, labels in ((splits.train, y_train), (splits.val, y_train), (splits.test, y_test)):
        for i in (0, len(split) // 2, len(split) - 1):
            s = split.starts[i].item()
            assert split.y[i].tolist() == (labels[s : s + 16] - 1).tolist()
    assert splits.test.starts.tolist() == list(range(0, 2947 - 16, 8))
    assert set(splits.train.starts.tolist()) | set(splits.val.starts.tolist()) == set(range(7336))
    # Inputs are the file's numbers unchanged: compare one window with a plain text parse.
    s = splits.val.starts[3].item()
    lines = (full_dir / "har" / "UCI HAR Dataset" / "train" / "X_train.txt").read_text().splitlines()[s : s + 16]
    expected = np.array([[float(v) for v in line.split()] for line in lines], dtype=np.float32)
    assert np.array_equal(splits.val.x[3].numpy(), expected)
    assert splits.normalization["target"] is None and splits.normalization["classes"][5] == "LAYING"


def test_split_is_seeded(tiny_dir: Path) -> None:
    a, b = (load_dataset("har", data_dir=tiny_dir, seed=0, progress=False) for _ in range(2))
    assert a.val.starts.tolist() == b.val.starts.tolist() and a.train.x.equal(b.train.x)
    val_sets = {tuple(load_dataset("har", data_dir=tiny_dir, seed=s, progress=False).val.starts.tolist())
                for s in range(1, 4)}
    assert len(val_sets | {tuple(a.val.starts.tolist())}) > 1
    small = load_dataset("har", data_dir=tiny_dir, seed=0, max_windows=5, progress=False)
    assert (len(small.train), len(small.val), len(small.test)) == (5, 2, 2)
    assert set(small.train.starts.tolist()) <= set(a.train.starts.tolist())


def test_generated_files_have_the_uci_shape_and_format(full_dir: Path) -> None:
    folder = full_dir / "har" / "UCI HAR Dataset"
    x_train = folder / "train" / "X_train.txt"
    with open(x_train, "rb") as f:
        first = f.readline()
        rows = 1 + sum(1 for _ in f)
    assert rows == 7352 and len(first) == 561 * 16 + 1
    assert re.fullmatch(rb"( [ -]\d\.\d{7}e[+-]\d{3}){561}\n", first)
    assert (folder / "train" / "y_train.txt").read_bytes() == (SHARED_HAR / "train" / "y_train.txt").read_bytes()


def test_uci_number_format_matches_a_published_line() -> None:
    # First three values of UCI's X_train.txt line 1, as quoted in many public READMEs.
    line = helpers.format_uci_rows(np.array([[0.28858451, -0.020294171, -0.13290514]]))
    assert line == b"  2.8858451e-001 -2.0294171e-002 -1.3290514e-001\n"


def test_fast_formatter_equals_python_formatting() -> None:
    # Slow control: Python's correctly rounded '%15.7e' with the exponent widened to 3 digits.
    # (Exact decimal ties such as 9.99999995 can differ in the last digit; random values are not ties.)
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.uniform(-1, 1, 5000), rng.normal(0, 1e3, 500),
                        rng.choice([-1, 1], 500) * 10.0 ** rng.integers(-20, 20, 500), [0.0, 1.0, -1.0, 1e-5]])
    slow = "".join(re.sub(r"e([+-])(\d\d)$", r"e\g<1>0\2", f"{x:15.7e}") for x in v) + "\n"
    assert helpers.format_uci_rows(v[None, :]).decode() == slow


def test_tiny_dir_windows_and_aliases(tiny_dir: Path, tmp_path: Path) -> None:
    splits = load_dataset("har", data_dir=tiny_dir, progress=False)
    # 40 rows: range(0, 24) -> 24 windows, val int(2.4) = 2; test: range(0, 14, 8) -> 2
    assert (len(splits.train), len(splits.val), len(splits.test)) == (22, 2, 2)
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_dir / "har" / "UCI HAR Dataset", renamed / "har" / "UCI_HAR_Dataset")
    again = load_dataset("har", data_dir=renamed, progress=False)
    assert again.train.x.equal(splits.train.x)


@pytest.mark.parametrize("variant", ["gzip", "crlf"])
def test_gzip_and_crlf_files_read_the_same(tiny_dir: Path, variant: str) -> None:
    reference = load_dataset("har", data_dir=tiny_dir, progress=False)
    folder = tiny_dir / "har" / "UCI HAR Dataset"
    for rel in har.FILES:
        data = (folder / rel).read_bytes()
        if variant == "gzip":
            (folder / f"{rel}.gz").write_bytes(gzip.compress(data))
            (folder / rel).unlink()
        else:
            (folder / rel).write_bytes(data.replace(b"\n", b"\r\n"))
    other = load_dataset("har", data_dir=tiny_dir, progress=False)
    assert other.train.x.equal(reference.train.x) and other.test.y.equal(reference.test.y)


def _edit_line(rel: str, index: int, edit):
    def mutate(folder: Path) -> None:
        lines = (folder / rel).read_bytes().split(b"\n")
        lines[index] = edit(lines[index])
        (folder / rel).write_bytes(b"\n".join(lines))

    return mutate


@pytest.mark.parametrize(
    "rel, mutate, message",
    [
        (har.X_TEST, lambda folder: (folder / har.X_TEST).write_bytes(b""), r"the file is empty"),
        (har.X_TRAIN, _edit_line(har.X_TRAIN, 6, lambda line: line[:-16]),
         r"row 6 \(file line 7\) has 560 values, expected 561"),
        (har.X_TRAIN, _edit_line(har.X_TRAIN, 2, lambda line: line[:16] + b"  2.88584X1e-001" + line[32:]),
         r"column 1, row 2 \(file line 3\): expected a finite number, found '2.88584X1e-001'"),
        (har.X_TRAIN, _edit_line(har.X_TRAIN, 4, lambda line: line + b"  1.0000000e+000"), r"cannot parse"),
        (har.Y_TRAIN, _edit_line(har.Y_TRAIN, 8, lambda line: b"7"),
         r"row 8 \(file line 9\): expected an activity id 1-6, found 7"),
        (har.Y_TEST, _edit_line(har.Y_TEST, 0, lambda line: b"walking"), r"expected a finite number, found 'walking'"),
        (har.Y_TEST, lambda folder: (folder / har.Y_TEST).write_bytes(b"5\n" * 29),
         r"has 30 rows but .*y_test.txt has 29 labels"),
    ],
    ids=["empty", "short-line", "non-numeric", "long-line", "label-out-of-range", "label-text", "row-mismatch"],
)
def test_malformed_files_raise_clear_errors(tiny_dir: Path, rel: str, mutate, message: str) -> None:
    folder = tiny_dir / "har" / "UCI HAR Dataset"
    mutate(folder)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("har", data_dir=tiny_dir, progress=False)
    assert str(folder / rel) in str(info.value)


@pytest.mark.parametrize("download", [False, True])
def test_missing_x_lists_every_place(tiny_dir: Path, isolated: Path, download: bool) -> None:
    (tiny_dir / "har" / "UCI HAR Dataset" / har.X_TRAIN).unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("har", data_dir=tiny_dir, download=download, progress=False)
    text = str(info.value)
    assert f"{tiny_dir / 'har' / 'UCI HAR Dataset'}  [data_dir]: missing train/X_train.txt[.gz]" in text
    assert str(isolated / "har" / "UCI HAR Dataset") in text
    assert ("download=False" in text) != download and ("network disabled in tests" in text) == download
    assert not isolated.exists()  # a failed download removes the cache folders it created


def test_data_dir_beats_cache(tiny_dir: Path, isolated: Path, tmp_path: Path) -> None:
    cached = tmp_path / "for_cache"
    helpers.make_har_dir(cached, seed=2, n_train=60, n_test=30)
    shutil.copytree(cached / "har", isolated / "har")
    first = load_dataset("har", data_dir=tiny_dir, progress=False)
    assert str(tiny_dir) in first.source and len(first.train) + len(first.val) == 24
    second = load_dataset("har", data_dir=tmp_path / "empty", progress=False)
    assert str(isolated) in second.source and len(second.train) + len(second.val) == 44


def _outer_zip(folder: Path, nested: bool) -> bytes:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, f"UCI HAR Dataset/{path.relative_to(folder).as_posix()}")
    if not nested:
        return inner.getvalue()
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as archive:
        archive.writestr("UCI HAR Dataset.names", b"readme")
        archive.writestr("UCI HAR Dataset.zip", inner.getvalue())
    return outer.getvalue()


def _pretend_tiny_is_uci(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    # The real checks need the real 92 MB X files; the same mechanism with the tiny dir's facts.
    monkeypatch.setattr(har, "X_ROWS", {har.X_TRAIN: 40, har.X_TEST: 30})
    monkeypatch.setattr(har, "KNOWN_SHA256", {rel: sources.sha256_of(folder / rel) for rel in har.KNOWN_SHA256})


@pytest.mark.parametrize("nested", [True, False])
def test_download_verifies_and_caches(tiny_dir: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch,
                                      nested: bool) -> None:
    folder = tiny_dir / "har" / "UCI HAR Dataset"
    _pretend_tiny_is_uci(monkeypatch, folder)
    payload = _outer_zip(folder, nested)
    monkeypatch.setattr(sources, "urlopen", lambda url, timeout=0: io.BytesIO(payload))
    splits = load_dataset("har", progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (22, 2, 2)
    cached = isolated / "har" / "UCI HAR Dataset"
    assert (cached / har.X_TRAIN).read_bytes() == (folder / har.X_TRAIN).read_bytes()
    assert sorted(p.name for p in (isolated / "har").iterdir()) == ["UCI HAR Dataset"]  # no staging left


@pytest.mark.parametrize("damage", ["label", "x-rows"])
def test_bad_download_leaves_nothing(tiny_dir: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch,
                                     damage: str) -> None:
    folder = tiny_dir / "har" / "UCI HAR Dataset"
    _pretend_tiny_is_uci(monkeypatch, folder)
    expected_sha = har.KNOWN_SHA256[har.Y_TEST]
    if damage == "label":
        (folder / har.Y_TEST).write_bytes((folder / har.Y_TEST).read_bytes().replace(b"5", b"4", 1))
        got = sources.sha256_of(folder / har.Y_TEST)
        message = rf"y_test.txt from .*: sha256 mismatch: expected {expected_sha}, got {got}"
    else:
        _edit_line(har.X_TEST, 0, lambda line: b"")(folder)
        message = r"test/X_test.txt has shape 30x0, expected 30x561"
    payload = _outer_zip(folder, nested=True)
    monkeypatch.setattr(sources, "urlopen", lambda url, timeout=0: io.BytesIO(payload))
    with pytest.raises(DatasetError, match=message):
        load_dataset("har", progress=False)
    assert [p for p in isolated.rglob("*") if p.is_file()] == []


def test_frame_functions_for_inference(tiny_dir: Path) -> None:
    folder = tiny_dir / "har" / "UCI HAR Dataset"
    x = DATASETS["har"].features_from_frame(DATASETS["har"].read_frame(folder / har.X_TEST))
    y = DATASETS["har"].targets_from_frame(har.read_labels(folder / har.Y_TEST))
    assert x.shape == (30, 561) and x.dtype == np.float32 and y.dtype == np.int64
    assert y.tolist() == (np.loadtxt(folder / har.Y_TEST, dtype=np.int64) - 1).tolist()
