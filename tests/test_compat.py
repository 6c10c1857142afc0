"""torchliquid.compat: ncps 1.0.1 models, checkpoints and wirings convert both ways, exactly.

Start here: every converted module is run against its source with tests/_parity.py's
compare_runs (outputs, final states and gradients; tolerances justified there).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

ncps_torch = pytest.importorskip("ncps.torch")
ncps_wirings = pytest.importorskip("ncps.wirings")

from torchliquid.compat import from_ncps, to_ncps  # noqa: E402
from torchliquid.nn import CfC, LTC, LTCCell  # noqa: E402
from torchliquid.nn import wirings as tl_wirings  # noqa: E402

from _parity import close, compare_runs, random_state  # noqa: E402

B, T, I = 3, 5, 4

NCPS_MODELS = {
    "cfc_dense_proj_mixed": lambda: ncps_torch.CfC(I, 8, proj_size=2, mixed_memory=True),
    "cfc_backbone_gelu_dropout": lambda: ncps_torch.CfC(I, 8, activation="gelu", backbone_layers=3, backbone_units=6, backbone_dropout=0.25),
    "cfc_pure_relu": lambda: ncps_torch.CfC(I, 8, mode="pure", activation="relu", backbone_layers=0),
    "cfc_no_gate_time_major": lambda: ncps_torch.CfC(I, 8, mode="no_gate", batch_first=False),
    "cfc_autoncp_proj": lambda: ncps_torch.CfC(I, ncps_wirings.AutoNCP(12, 3), proj_size=2),
    "cfc_ncp_mixed": lambda: ncps_torch.CfC(I, ncps_wirings.NCP(6, 4, 2, 3, 2, 2, 2), mixed_memory=True),
    "ltc_fc_explicit": lambda: ncps_torch.LTC(I, 6, implicit_param_constraints=False),
    "ltc_random_linear": lambda: ncps_torch.LTC(I, ncps_wirings.Random(8, 3, 0.4), input_mapping="linear", output_mapping=None),
    "ltc_ncp_mixed_1unfold": lambda: ncps_torch.LTC(I, ncps_wirings.NCP(6, 4, 2, 3, 2, 2, 2), mixed_memory=True, ode_unfolds=1),
    "ltc_autoncp_last_step": lambda: ncps_torch.LTC(I, ncps_wirings.AutoNCP(10, 2), return_sequences=False),
}


def _input_for(model):
    x = torch.randn(B, T, I)
    return x if getattr(model, "batch_first", True) else x.transpose(0, 1)


@pytest.mark.parametrize("name", sorted(NCPS_MODELS))
def test_from_ncps_layer_runs_like_ncps(name):
    torch.manual_seed(0)
    theirs = NCPS_MODELS[name]()
    theirs.eval()  # dropout off: both sides deterministic
    ours = from_ncps(theirs)
    assert type(ours).__name__ == type(theirs).__name__ and not ours.training
    mixed = theirs.use_mixed
    units = ours.state_size
    compare_runs(theirs, ours, _input_for(theirs), random_state(mixed, B, units))


@pytest.mark.parametrize("name", sorted(NCPS_MODELS))
def test_to_ncps_round_trip_runs_like_the_original(name):
    torch.manual_seed(0)
    theirs = NCPS_MODELS[name]().eval()
    back = to_ncps(from_ncps(theirs))
    assert type(back) is type(theirs)
    compare_runs(theirs, back, _input_for(theirs), random_state(theirs.use_mixed, B, from_ncps(theirs).state_size))


@pytest.mark.parametrize(
    "make",
    [
        lambda: CfC(I, 8, proj_size=3, mode="pure", backbone_layers=2, backbone_units=5),
        lambda: CfC(I, tl_wirings.AutoNCP(12, 3), mixed_memory=True),
        lambda: LTC(I, tl_wirings.NCP(6, 4, 2, 3, 2, 2, 2), input_mapping=None),
        lambda: LTC(I, 7, mixed_memory=True, implicit_param_constraints=False),
    ],
    ids=["cfc_dense", "cfc_autoncp", "ltc_ncp", "ltc_fc"],
)
def test_to_ncps_runs_like_torchliquid(make):
    torch.manual_seed(1)
    ours = make()
    theirs = to_ncps(ours)
    assert type(theirs).__module__.startswith("ncps.torch")
    compare_runs(theirs, ours, torch.randn(B, T, I), random_state(ours.use_mixed, B, ours.state_size))


def test_custom_multilayer_wiring_converts_through_explicit_matrices():
    rng = np.random.default_rng(0)
    adjacency = rng.choice([-1, 0, 1], size=(7, 7))
    sensory = rng.choice([-1, 0, 1], size=(I, 7))
    wiring = tl_wirings.Wiring.from_adjacency(adjacency, sensory, output_dim=2, layers=[[4, 5, 6], [2, 3], [0, 1]])
    torch.manual_seed(2)
    for ours in (CfC(I, wiring), LTC(I, wiring)):
        theirs = to_ncps(ours)
        np.testing.assert_array_equal(theirs.rnn_cell._wiring.adjacency_matrix, adjacency)
        compare_runs(theirs, ours, torch.randn(B, T, I), torch.randn(B, 7))
        back = from_ncps(theirs)
        np.testing.assert_array_equal(back.wiring.sensory_adjacency_matrix, sensory)
        assert [back.wiring.neurons_of_layer(i) for i in range(3)] == [[4, 5, 6], [2, 3], [0, 1]]


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.FullyConnected(6, 2, erev_init_seed=5, self_connections=False),
        lambda m: m.Random(8, 3, sparsity_level=0.5, random_seed=9),
        lambda m: m.AutoNCP(14, 4, sparsity_level=0.6, seed=3),
    ],
    ids=["fc", "random", "autoncp"],
)
@pytest.mark.parametrize("built", [False, True])
def test_wiring_converts_to_the_same_class_and_matrices(make, built):
    theirs = make(ncps_wirings)
    if built:
        theirs.build(I)
    ours = from_ncps(theirs)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.is_built() == built
    if built or not isinstance(theirs, ncps_wirings.NCP):  # NCP draws everything at build
        compared = ours if built else ours.build(I)
        reference = theirs if built else make(ncps_wirings)
        if not built:
            reference.build(I)
        np.testing.assert_array_equal(compared.adjacency_matrix, reference.adjacency_matrix)
        np.testing.assert_array_equal(compared.sensory_adjacency_matrix, reference.sensory_adjacency_matrix)
    back = to_ncps(ours)
    assert type(back) is type(theirs)


def test_built_ncp_converts_to_explicit_matrices_and_unbuilt_ncp_is_refused():
    theirs = ncps_wirings.NCP(6, 4, 2, 3, 2, 2, 2)
    with pytest.raises(ValueError, match="unbuilt ncps NCP"):
        from_ncps(theirs)
    theirs.build(I)
    ours = from_ncps(theirs)
    np.testing.assert_array_equal(ours.adjacency_matrix, theirs.adjacency_matrix)
    assert [ours.neurons_of_layer(i) for i in range(3)] == [theirs.get_neurons_of_layer(i) for i in range(3)]


@pytest.mark.parametrize(
    "pair",
    [
        (lambda: ncps_torch.CfCCell(I, 6, backbone_layers=2, backbone_units=5), "CfCCell"),
        (lambda: ncps_torch.WiredCfCCell(I, ncps_wirings.AutoNCP(10, 2), mode="no_gate"), "WiredCfCCell"),
        (lambda: ncps_torch.LTCCell(ncps_wirings.FullyConnected(6, 2), in_features=I), "LTCCell"),
    ],
    ids=["cfc_cell", "wired_cfc_cell", "ltc_cell"],
)
def test_cells_convert_both_ways(pair):
    make, name = pair
    torch.manual_seed(3)
    theirs = make()
    ours = from_ncps(theirs)
    assert type(ours).__name__ == name
    x_BI = torch.randn(B, I)
    units = ours.state_size
    h_BU = torch.randn(B, units)
    for other in (ours, to_ncps(ours)):
        y, h = other(x_BI, h_BU, 0.8)
        y_ref, h_ref = theirs(x_BI, h_BU, 0.8)
        close(h, h_ref, torch.float32, f"{type(other).__module__} state")
        close(y, y_ref[:, : y.shape[1]], torch.float32, f"{type(other).__module__} output")


def test_ltc_cell_keeps_ncps_explicit_default():
    """ncps's LTCCell defaults to explicit constraints; the converted cell must keep that flag."""
    theirs = ncps_torch.LTCCell(ncps_wirings.FullyConnected(5), in_features=I)
    assert from_ncps(theirs).implicit_param_constraints is False
    assert LTCCell(tl_wirings.FullyConnected(5), in_features=I).implicit_param_constraints is True


@pytest.mark.parametrize(
    "make_pair",
    [
        lambda: (ncps_torch.CfC(I, 8, mixed_memory=True, proj_size=2), CfC(I, 8, mixed_memory=True, proj_size=2)),
        lambda: (ncps_torch.LTC(I, ncps_wirings.AutoNCP(10, 2)), LTC(I, tl_wirings.AutoNCP(10, 2))),
    ],
    ids=["cfc", "ltc"],
)
def test_ncps_checkpoint_loads_strictly_into_torchliquid(make_pair, tmp_path):
    theirs, ours = make_pair()
    path = tmp_path / "ncps.pt"
    torch.save(theirs.state_dict(), path)
    ours.load_state_dict(torch.load(path, weights_only=True))  # strict by default
    compare_runs(theirs, ours, torch.randn(B, T, I))


def test_to_ncps_refuses_a_projection_ncps_cannot_run():
    with pytest.raises(ValueError, match="A08"):
        to_ncps(CfC(I, tl_wirings.FullyConnected(8, 2), proj_size=3))


def test_conversion_leaves_the_callers_random_stream_alone():
    theirs = ncps_torch.CfC(I, 8)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    to_ncps(from_ncps(theirs))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("bad", [torch.nn.LSTM(3, 4), "CfC", tl_wirings.FullyConnected(4)], ids=["lstm", "str", "ours"])
def test_from_ncps_rejects_what_it_cannot_convert(bad):
    with pytest.raises(TypeError, match="from_ncps converts"):
        from_ncps(bad)


def test_importing_torchliquid_never_imports_ncps_or_tensorflow():
    code = (
        "import sys, torchliquid, torchliquid.nn, torchliquid.compat; "
        "bad = [m for m in ('ncps', 'tensorflow', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
