"""Whole-model save/load (A10) and the model registry used by the experiments.

Start here: a model saved here and loaded in a FRESH Python process (no shared objects, no
custom_objects) must give the same outputs. Same code, same float operations, so 1e-6 (the A10
bound) only allows for thread-count-dependent BLAS blocking between the processes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from torchliquid.nn import (
    MODELS,
    CfC,
    CfCCell,
    LTC,
    LTCCell,
    WiredCfCCell,
    build_model,
    load_model,
    model_from_config,
    save_model,
)
from torchliquid.nn.wirings import NCP, AutoNCP, FullyConnected, Random

B, T, I = 2, 6, 4

MODELS_TO_SAVE = {
    "cfc_dense_mixed_proj": lambda: CfC(I, 8, proj_size=3, mixed_memory=True, mode="pure", backbone_layers=2, backbone_units=6),
    "cfc_autoncp": lambda: CfC(I, AutoNCP(10, 2, seed=5)),
    "cfc_random_time_major": lambda: CfC(I, Random(7, 2, 0.4, random_seed=3), batch_first=False),
    "ltc_ncp_mixed": lambda: LTC(I, NCP(4, 3, 2, 2, 2, 2, 2, seed=9), mixed_memory=True, input_mapping="linear"),
    "ltc_fc_explicit": lambda: LTC(I, FullyConnected(6, 2, erev_init_seed=4), implicit_param_constraints=False),
}

# Loads every model of a directory and runs it on its saved input: one fresh process for all
# models, because starting Python + torch costs seconds on 2 shared cores.
_LOAD_AND_RUN = """
import pathlib, sys, torch
from torchliquid.nn import load_model
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.model")):
    model = load_model(path)
    y, h = model(torch.load(path.with_suffix(".x"), weights_only=True))
    h = torch.cat(h, -1) if isinstance(h, tuple) else h
    torch.save({"y": y, "h": h}, path.with_suffix(".out"))
"""


def _trained_like(model):
    """Perturb every parameter, so a loader that silently re-initialises cannot pass."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def _run(model, x):
    y, h = model(x)
    return y.detach(), (torch.cat(h, -1) if isinstance(h, tuple) else h).detach()


def test_saved_models_load_in_a_fresh_process_with_the_same_outputs(tmp_path):
    expected = {}
    for name, make in MODELS_TO_SAVE.items():
        torch.manual_seed(0)
        model = _trained_like(make())
        x = torch.randn(B, T, I) if model.batch_first else torch.randn(T, B, I)
        expected[name] = _run(model, x)
        save_model(model, tmp_path / f"{name}.model")
        torch.save(x, tmp_path / f"{name}.x")
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for name, (y, h) in expected.items():
        loaded = torch.load(tmp_path / f"{name}.out", weights_only=True)
        torch.testing.assert_close(loaded["y"], y, atol=1e-6, rtol=0.0, msg=lambda m: f"{name} output: {m}")
        torch.testing.assert_close(loaded["h"], h, atol=1e-6, rtol=0.0, msg=lambda m: f"{name} state: {m}")


@pytest.mark.parametrize("name", sorted(MODELS_TO_SAVE))
def test_saved_model_round_trips_in_process(name, tmp_path):
    torch.manual_seed(0)
    model = _trained_like(MODELS_TO_SAVE[name]())
    loaded = load_model(save_model(model, tmp_path / "model.pt"))
    assert loaded.config() == model.config()
    x = torch.randn(B, T, I) if model.batch_first else torch.randn(T, B, I)
    for got, want in zip(_run(loaded, x), _run(model, x)):
        torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CfCCell(I, 5, backbone_layers=0),
        lambda: WiredCfCCell(I, AutoNCP(9, 2)),
        lambda: LTCCell(NCP(4, 3, 2, 2, 2, 2, 2), in_features=I),
    ],
    ids=["cfc_cell", "wired_cfc_cell", "ltc_cell"],
)
def test_cells_round_trip_in_process(make, tmp_path):
    torch.manual_seed(0)
    cell = _trained_like(make())
    loaded = load_model(save_model(cell, tmp_path / "cell.pt"))
    assert type(loaded) is type(cell)
    x_BI, h_BU = torch.randn(B, I), torch.randn(B, cell.state_size)
    torch.testing.assert_close(loaded(x_BI, h_BU)[1], cell(x_BI, h_BU)[1], atol=0.0, rtol=0.0)


def test_dtype_is_restored(tmp_path):
    model = CfC(I, 5).double()
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert all(p.dtype == torch.float64 for p in loaded.parameters())


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    first = CfC(I, 5)
    save_model(first, path)
    before = path.read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(CfC(I, 6), path)
    assert path.read_bytes() == before, "a failed save must not touch the existing file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_loading_rejects_wrong_files_with_the_path_in_the_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt is not a readable torchliquid model file"):
        load_model(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(CfC(I, 5).state_dict(), bare)
    with pytest.raises(ValueError, match="bare.pt is not a torchliquid model file.*load_state_dict"):
        load_model(bare)


def test_only_torchliquid_models_can_be_saved(tmp_path):
    with pytest.raises(TypeError, match="model must be a torchliquid model with .config()"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_config_of_an_unknown_class_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"config 'class' must be one of \['CfC', 'CfCCell', 'LTC', 'LTCCell', 'WiredCfCCell'\]"):
        model_from_config({"class": "GRU"})


# ---------------------------------------------------------------------------------------------
# build_model: the registry the experiments use
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, wiring, layer, wired",
    [
        ("cfc", None, CfC, False),
        ("cfc", "autoncp", CfC, True),
        ("cfc", "fc", CfC, True),
        ("ltc", None, LTC, True),
        ("ltc", "fc", LTC, True),
    ],
)
def test_build_model_maps_inputs_to_outputs(name, wiring, layer, wired):
    model = build_model(name, input_size=I, output_size=3, units=12, wiring=wiring)
    assert isinstance(model, layer)
    assert (getattr(model, "wiring", None) is not None) == wired
    y, h = model(torch.randn(B, T, I))
    assert y.shape == (B, T, 3) and h.shape == (B, 12)
    if wiring in (None, "autoncp") and wired:
        assert type(model.wiring).__name__ == "AutoNCP"


def test_build_model_passes_layer_arguments_and_names_bad_ones():
    assert build_model("cfc", I, 2, units=8, mode="pure").mode == "pure"
    assert build_model("ltc", I, 2, units=8, ode_unfolds=1).rnn_cell.ode_unfolds == 1
    with pytest.raises(ValueError, match=r"name must be one of \{'cfc', 'ltc'\}, got 'lstm'"):
        build_model("lstm", I, 2)
    with pytest.raises(ValueError, match=r"wiring must be one of \{'autoncp', 'fc'\}, got 'ncp'"):
        build_model("ltc", I, 2, wiring="ncp")
    with pytest.raises(ValueError, match="output_size must be an int >= 1, got 0"):
        build_model("cfc", I, 0)
    assert set(MODELS) == {"cfc", "ltc"}


def test_build_model_config_is_json():
    model = build_model("ltc", I, 2, units=10)
    assert json.loads(json.dumps(model.config()))["units"]["class"] == "AutoNCP"
