"""CfC parity with ncps 1.0.1, the definition of correct for torchliquid.nn.CfC.

Start here: each test builds an ncps module, loads its state_dict into the torchliquid module of
the same arguments (the parameter names are the same by design), runs both on the same random
input and random initial state (never zeros) and compares outputs, final states and the gradients
of every parameter after a random linear loss.

Tolerances and the comparison itself live in tests/_parity.py (justified there).

The variant product is swept as two orthogonal grids, each crossed with every mode: what the cell
computes (activation x backbone depth, float32 and float64) and what surrounds it (projection x
mixed memory x layout x return_sequences). The two groups touch disjoint code (the backbone only
shapes z inside the cell; projection, LSTM and layout live in the driver), so the full product
would only multiply the run time.

ncps's batched timespans are wrong (A01: it broadcasts a (B,) vector along units), so timespan
tests run ncps one sequence at a time with a scalar dt per step and compare each sequence of our
batched run against it.
"""

from __future__ import annotations

import pytest
import torch

ncps_torch = pytest.importorskip("ncps.torch")
ncps_wirings = pytest.importorskip("ncps.wirings")

from torchliquid.nn import CfC  # noqa: E402
from torchliquid.nn import wirings as tl_wirings  # noqa: E402

from _parity import close as _close  # noqa: E402
from _parity import compare_runs as _compare  # noqa: E402
from _parity import random_state, states as _states  # noqa: E402

B, T, I, U = 3, 5, 4, 8


def _pair(units_factory, **kwargs):
    """(ncps CfC, torchliquid CfC) with the same arguments and the ncps weights loaded into ours."""
    torch.manual_seed(7)
    reference = ncps_torch.CfC(I, units_factory(ncps_wirings), **kwargs)
    ours = CfC(I, units_factory(tl_wirings), **kwargs)
    ours.load_state_dict(reference.state_dict())  # strict: the parameter names must agree
    return reference, ours


def _dense(_module):
    return U


def _random_state(mixed, batch=B, units=U):
    return random_state(mixed, batch, units)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("backbone_layers", [0, 1, 2])
@pytest.mark.parametrize("activation", ["lecun_tanh", "relu", "tanh", "gelu", "silu"])
@pytest.mark.parametrize("mode", ["default", "pure", "no_gate"])
def test_backbone_variants_match_ncps(mode, activation, backbone_layers, dtype):
    reference, ours = _pair(
        _dense, mode=mode, activation=activation, backbone_layers=backbone_layers, backbone_units=12, backbone_dropout=0.0
    )
    _compare(reference, ours, torch.randn(B, T, I), _random_state(False), dtype)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("layout", ["batch_first", "time_major", "unbatched"])
@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
@pytest.mark.parametrize("proj", [None, 3])
@pytest.mark.parametrize("mode", ["default", "pure", "no_gate"])
def test_layouts_match_ncps(mode, proj, mixed, layout, return_sequences):
    batch_first = layout != "time_major"
    reference, ours = _pair(
        _dense, proj_size=proj, mixed_memory=mixed, mode=mode, batch_first=batch_first, return_sequences=return_sequences
    )
    if layout == "unbatched":
        x, hx = torch.randn(T, I), _random_state(mixed, batch=1)
        hx = tuple(s[0] for s in hx) if mixed else hx[0]
    else:
        x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
        hx = _random_state(mixed)
    _compare(reference, ours, x, hx)


def test_backbone_dropout_in_eval_matches_ncps():
    reference, ours = _pair(_dense, backbone_layers=3, backbone_units=10, backbone_dropout=0.3)
    reference.eval(), ours.eval()
    _compare(reference, ours, torch.randn(B, T, I), _random_state(False))


WIRINGS = {
    "fc": lambda m: m.FullyConnected(U, 2),
    "fc_full_output": lambda m: m.FullyConnected(U),
    "random": lambda m: m.Random(U, 3, sparsity_level=0.5),
    "ncp": lambda m: m.NCP(6, 4, 2, 3, 2, 2, 2),
    "autoncp": lambda m: m.AutoNCP(12, 3),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
@pytest.mark.parametrize("mode", ["default", "pure", "no_gate"])
@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_wired_matches_ncps(wiring, mode, mixed, dtype):
    factory = WIRINGS[wiring]
    reference, ours = _pair(factory, mode=mode, mixed_memory=mixed)
    spec = factory(tl_wirings)
    # ncps returns the whole last wiring layer; for multi-layer wirings that is the motor layer.
    single_layer = spec.num_layers == 1
    _compare(reference, ours, torch.randn(B, T, I), _random_state(mixed, units=spec.units), dtype,
             motor=spec.output_dim if single_layer else None)


@pytest.mark.parametrize("wiring", ["ncp", "autoncp"])
def test_wired_projection_matches_ncps(wiring):
    # ncps's proj works only where its last layer equals the motor neurons (A08 otherwise).
    reference, ours = _pair(WIRINGS[wiring], proj_size=4)
    _compare(reference, ours, torch.randn(B, T, I))


@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
@pytest.mark.parametrize("batch", [3, U], ids=["B!=U", "B==U"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("wiring", ["dense", "autoncp"])
def test_batched_timespans_equal_ncps_one_sequence_at_a_time(wiring, batch_first, batch, mixed):
    factory = _dense if wiring == "dense" else WIRINGS["autoncp"]
    reference, ours = _pair(factory, mixed_memory=mixed, batch_first=batch_first, proj_size=2)
    x_BTI = torch.randn(batch, T, I)
    dt_BT = torch.rand(batch, T) * 2.0 + 0.05
    units = ours.state_size
    hx = _random_state(mixed, batch=batch, units=units)
    if batch_first:
        y, h = ours(x_BTI, hx, dt_BT)
    else:
        y, h = ours(x_BTI.transpose(0, 1), hx, dt_BT.T)
        y = y.transpose(0, 1)
    for b in range(batch):
        hx_b = tuple(s[b : b + 1] for s in hx) if mixed else hx[b : b + 1]
        if batch_first:
            y_ref, h_ref = reference(x_BTI[b : b + 1], hx_b, dt_BT[b : b + 1])
        else:
            y_ref, h_ref = reference(x_BTI[b : b + 1].transpose(0, 1), hx_b, dt_BT[b : b + 1].T)
            y_ref = y_ref.transpose(0, 1)
        _close(y[b], y_ref[0], torch.float32, f"output of sequence {b}")
        for got, want in zip(_states(h), _states(h_ref), strict=True):
            _close(got[b], want[0], torch.float32, f"state of sequence {b}")


@pytest.mark.parametrize("wiring", ["dense", "ncp", "fc"])
def test_same_seed_gives_ncps_initial_weights(wiring):
    """Construction consumes the torch RNG exactly as ncps does: the study's seeds give its weights."""
    factory = _dense if wiring == "dense" else WIRINGS[wiring]
    kwargs = {"mixed_memory": True, "proj_size": 2}
    if wiring == "dense":
        kwargs.update(backbone_layers=2, backbone_units=9)
    torch.manual_seed(11)
    reference = ncps_torch.CfC(I, factory(ncps_wirings), **kwargs) if wiring != "fc" else None
    if wiring == "fc":  # ncps's proj on a single-layer wiring is broken (A08): compare unprojected
        kwargs.pop("proj_size")
        reference = ncps_torch.CfC(I, factory(ncps_wirings), **kwargs)
    torch.manual_seed(11)
    ours = CfC(I, factory(tl_wirings), **kwargs)
    want = reference.state_dict()
    got = ours.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
