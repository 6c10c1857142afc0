"""Matrix files -> cells: the study's matrix, lr scaling, stable ids, and errors on bad input.

Start here for the matrix format; the expected cell counts below are derived from the study's
Table 14 by hand (see the comments), not from the code.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from torchliquid.experiments.spec import CellSpec, DeviceSpec, load_matrix, parse_matrix

ROOT = Path(__file__).resolve().parents[1]
THESIS = ROOT / "configs" / "thesis.toml"
QUICK = ROOT / "configs" / "quick.toml"


def test_thesis_matrix_has_the_studys_80_cells() -> None:
    cells = load_matrix(THESIS).cells
    # sine: 2 models x 4 devices x 1 batch = 8
    # har: 2 x 4 devices x 4 batches = 32
    # traffic: 2 x (2 devices x 4 batches + 2 devices x 3 batches) = 28
    # power: 2 x 2 devices x 3 batches = 12
    assert Counter(c.dataset for c in cells) == {"sine": 8, "har": 32, "traffic": 28, "power": 12}
    assert len(cells) == 80
    assert {c.epochs for c in cells} == {50}
    assert {c.model for c in cells} == {"cfc", "ltc"}


def test_thesis_matrix_devices_and_batches_per_dataset() -> None:
    cells = load_matrix(THESIS).cells
    combos = lambda ds, dev: sorted({c.batch_size for c in cells if c.dataset == ds and c.device == dev})
    assert combos("sine", "gpu:4") == [1]
    assert combos("har", "gpu:2") == [64, 128, 256, 512]
    assert combos("traffic", "cpu") == [64, 128, 256, 512]
    assert combos("traffic", "gpu:4") == [512, 1024, 2048]
    assert combos("power", "cpu") == [] and combos("power", "gpu") == []
    assert combos("power", "gpu:2") == [512, 1024, 2048]


def test_linear_lr_scaling_matches_the_study() -> None:
    lrs = {(c.device, c.lr) for c in load_matrix(THESIS).cells}
    # 1e-3 on one device, 2e-3 on 2, 4e-3 on 4.
    assert lrs == {("cpu", 1e-3), ("gpu", 1e-3), ("gpu:2", 2e-3), ("gpu:4", 4e-3)}


def test_lr_scaling_none_keeps_the_written_lr() -> None:
    cell = CellSpec("har", "cfc", "gpu:4", 64, base_lr=5e-4, lr_scaling="none")
    assert cell.lr == 5e-4
    assert CellSpec("har", "cfc", "cpu:2", 64, base_lr=5e-4).lr == 1e-3


def test_cell_ids_are_stable_unique_and_readable() -> None:
    a, b = load_matrix(THESIS), load_matrix(THESIS)
    ids = [c.cell_id for c in a.cells]
    assert ids == [c.cell_id for c in b.cells]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z]+-(cfc|ltc)-(cpu|gpu)(x\d+)?-b\d+-s\d+-[0-9a-f]{8}", i) for i in ids)
    assert "har-ltc-gpux2-b128-s0-" in " ".join(ids)


def test_cell_id_changes_with_any_setting_but_not_with_device_spelling() -> None:
    base = CellSpec("har", "cfc", "gpu", 64)
    assert CellSpec("har", "cfc", "gpu:1", 64).cell_id == base.cell_id
    for changed in (CellSpec("har", "cfc", "gpu", 64, epochs=49), CellSpec("har", "cfc", "gpu", 64, base_lr=2e-3),
                    CellSpec("har", "cfc", "gpu", 64, max_windows=10), CellSpec("har", "cfc", "gpu", 64, seed=1)):
        assert changed.cell_id != base.cell_id


def test_cell_round_trips_through_its_dict() -> None:
    cell = CellSpec("power", "ltc", "cpu:2", 32, epochs=2, max_windows=256, train_args=("--threads", "1"))
    assert CellSpec.from_dict(cell.to_dict()) == cell


def test_quick_matrix_is_small_cpu_only_and_capped() -> None:
    cells = load_matrix(QUICK).cells
    assert {c.dataset for c in cells} == {"sine", "power"}
    assert {c.device for c in cells} == {"cpu", "cpu:2"}
    assert {c.model for c in cells} == {"cfc", "ltc"}
    assert len({c.batch_size for c in cells if c.dataset == "power"}) == 2
    assert all(c.max_windows is not None for c in cells)
    assert all(c.epochs <= 2 for c in cells if c.dataset == "power")


@pytest.mark.parametrize("text, allowed", [("cpu", ("cpu", 1)), ("cpu:2", ("cpu", 2)), ("GPU", ("gpu", 1)),
                                           ("gpu:4", ("gpu", 4))])
def test_device_parse(text: str, allowed: tuple) -> None:
    d = DeviceSpec.parse(text)
    assert (d.kind, d.nproc) == allowed


@pytest.mark.parametrize("text", ["tpu", "gpu:0", "gpu:x", "cuda", "cpu:-1", 4])
def test_bad_device_names_the_allowed_values(text: object) -> None:
    with pytest.raises(ValueError, match="cpu:N"):
        DeviceSpec.parse(text)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


GRID = '[[grid]]\ndatasets = ["sine"]\ndevices = ["cpu"]\nbatch_sizes = [1]\nmodels = ["cfc"]\n'


@pytest.mark.parametrize("text, needles", [
    ('[defaults]\nepoch = 3\n' + GRID, ["m.toml", "[defaults]", "'epoch'", "epochs"]),
    ('[[grid]]\ndatasets = ["imagenet"]\ndevices = ["cpu"]\nbatch_sizes = [1]\nmodels = ["cfc"]\n',
     ["m.toml", "[[grid]] #1", "imagenet", "har"]),
    ('[[grid]]\ndatasets = ["sine"]\ndevices = ["tpu:8"]\nbatch_sizes = [1]\nmodels = ["cfc"]\n',
     ["m.toml", "tpu:8", "gpu:N"]),
    ('[defaults]\nlr_scaling = "sqrt"\n' + GRID, ["m.toml", "lr_scaling", "linear"]),
    ('[defaults]\nepochs = [1, 2]\n' + GRID, ["m.toml", "'epochs'", "one value"]),
    ('[[grid]]\ndatasets = ["sine"]\nbatch_sizes = [1]\nmodels = ["cfc"]\n', ["m.toml", "missing key 'devices'"]),
    (GRID + '[[override]]\nmatch = { dataset = "har" }\nset = { epochs = 1 }\n', ["m.toml", "selects no cell"]),
    (GRID + '[[override]]\nmatch = { dataset = "sine" }\nset = { batch_size = 4 }\n', ["m.toml", "'batch_size'"]),
    (GRID + GRID, ["m.toml", "appears twice"]),
    ('[matrix\n', ["m.toml", "TOML"]),
    ('[runs]\n' + GRID, ["m.toml", "'runs'", "grid"]),
])
def test_bad_matrix_file_errors_name_file_key_and_allowed(tmp_path: Path, text: str, needles: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        load_matrix(_write(tmp_path, text))
    for needle in needles:
        assert needle in str(info.value)


def test_a_missing_folder_or_binary_matrix_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"matrix file .*none\.toml does not exist; see configs/quick\.toml"):
        load_matrix(tmp_path / "none.toml")
    with pytest.raises(ValueError, match=r"is a folder; pass a matrix TOML file"):
        load_matrix(tmp_path)
    (tmp_path / "b.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"b\.toml: not a text \(UTF-8\) file"):
        load_matrix(tmp_path / "b.toml")


def test_override_changes_only_matching_cells() -> None:
    m = parse_matrix({"defaults": {"models": ["cfc", "ltc"], "epochs": 50},
                      "grid": [{"datasets": ["sine"], "devices": ["cpu", "gpu:2"], "batch_sizes": [1]}],
                      "override": [{"match": {"model": "ltc", "device": "gpu:2"}, "set": {"epochs": 5, "lr": 0.01}}]})
    changed = [(c.model, c.device) for c in m.cells if c.epochs == 5]
    assert changed == [("ltc", "gpu:2")]
    ltc = next(c for c in m.cells if c.epochs == 5)
    assert ltc.base_lr == 0.01 and ltc.lr == 0.02  # linear scaling still applies to the new lr


def test_grid_values_override_defaults() -> None:
    m = parse_matrix({"defaults": {"models": ["cfc"], "epochs": 50, "units": 64},
                      "grid": [{"datasets": ["sine"], "devices": ["cpu"], "batch_sizes": [1], "units": 8},
                               {"datasets": ["har"], "devices": ["cpu"], "batch_sizes": [64]}]})
    assert [(c.dataset, c.units) for c in m.cells] == [("sine", 8), ("har", 64)]
