"""LTC parity with ncps 1.0.1, the definition of correct for torchliquid.nn.LTC and LTCCell.

Start here: each test builds an ncps LTC, loads its state_dict into the torchliquid LTC of the same
arguments (same parameter names; masks are buffers here, frozen parameters there, same keys),
runs both on the same random input and random initial state and compares outputs, final states
and parameter gradients (tests/_parity.py holds the comparison and justifies its tolerances).

ncps's batched timespans crash or mix sequences (A02), so timespan tests run ncps one sequence at
a time with a scalar dt per step.
"""

from __future__ import annotations

import pytest
import torch

ncps_torch = pytest.importorskip("ncps.torch")
ncps_wirings = pytest.importorskip("ncps.wirings")

from torchliquid.nn import LTC, LTCCell  # noqa: E402
from torchliquid.nn import wirings as tl_wirings  # noqa: E402

from _parity import close, compare_runs, random_state, states  # noqa: E402

B, T, I = 3, 5, 4

WIRINGS = {
    "fc": lambda m: m.FullyConnected(6, 2),
    "random": lambda m: m.Random(8, 3, sparsity_level=0.5),
    "ncp": lambda m: m.NCP(6, 4, 2, 3, 2, 2, 2),
    "autoncp": lambda m: m.AutoNCP(12, 3),
}


def _pair(wiring, **kwargs):
    """(ncps LTC, torchliquid LTC) with the same arguments and the ncps weights loaded into ours."""
    factory = WIRINGS[wiring]
    torch.manual_seed(5)
    reference = ncps_torch.LTC(I, factory(ncps_wirings), **kwargs)
    ours = LTC(I, factory(tl_wirings), **kwargs)
    ours.load_state_dict(reference.state_dict())  # strict: the parameter names must agree
    return reference, ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("output_mapping", ["affine", "linear", None])
@pytest.mark.parametrize("input_mapping", ["affine", "linear", None])
def test_mappings_match_ncps(input_mapping, output_mapping, implicit, dtype):
    reference, ours = _pair(
        "fc", input_mapping=input_mapping, output_mapping=output_mapping, implicit_param_constraints=implicit
    )
    with torch.no_grad():  # non-trivial mappings: the identity init would hide a swapped w/b
        for model in (reference, ours):
            torch.manual_seed(1)
            for name, parameter in model.rnn_cell.named_parameters():
                if name.startswith(("input_", "output_")):
                    parameter.add_(torch.randn_like(parameter) * 0.3)
    compare_runs(reference, ours, torch.randn(B, T, I), random_state(False, B, 6), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("ode_unfolds", [1, 6])
@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_wirings_match_ncps(wiring, ode_unfolds, implicit, mixed, dtype):
    reference, ours = _pair(wiring, ode_unfolds=ode_unfolds, implicit_param_constraints=implicit, mixed_memory=mixed)
    units = ours.state_size
    compare_runs(reference, ours, torch.randn(B, T, I), random_state(mixed, B, units), dtype)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("layout", ["batch_first", "time_major", "unbatched"])
def test_layouts_match_ncps(layout, return_sequences):
    batch_first = layout != "time_major"
    reference, ours = _pair("autoncp", batch_first=batch_first, return_sequences=return_sequences)
    if layout == "unbatched":
        x, hx = torch.randn(T, I), torch.randn(12)
    else:
        x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
        hx = torch.randn(B, 12)
    compare_runs(reference, ours, x, hx)


def test_explicit_mode_uses_raw_parameters_like_ncps():
    """Explicit mode must not sneak in a softplus: negative raw values change the output as in ncps.

    Negative cm and w bring the solver's denominator near 0 and the outputs to ~1e5, where the
    1e-5 absolute tolerance holds only for ncps's own order of operations: the plain loop is the
    one compared here; the fused kernels equal it relatively (test_nn_fast_paths.py).
    """
    reference, ours = _pair("fc", implicit_param_constraints=False)
    ours.implementation = "reference"
    with torch.no_grad():
        for model in (reference, ours):
            model.rnn_cell.cm[:2] = -0.05
            model.rnn_cell.w[0, :3] = -0.2
    compare_runs(reference, ours, torch.randn(B, T, I), random_state(False, B, 6))


def test_apply_weight_constraints_matches_ncps():
    reference, ours = _pair("fc", implicit_param_constraints=False)
    with torch.no_grad():
        for model in (reference, ours):
            torch.manual_seed(2)
            for name in ("w", "sensory_w", "cm", "gleak", "vleak"):
                getattr(model.rnn_cell, name).sub_(0.5)
    reference.rnn_cell.apply_weight_constraints()
    ours.rnn_cell.apply_weight_constraints()
    want = reference.state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, want[name]), name
    assert (ours.rnn_cell.vleak < 0).any(), "vleak is not a constrained parameter and must stay negative"


@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
@pytest.mark.parametrize("batch", [3, 6], ids=["B!=U", "B==U"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_batched_timespans_equal_ncps_one_sequence_at_a_time(batch_first, batch, mixed):
    reference, ours = _pair("fc", mixed_memory=mixed, batch_first=batch_first)  # U = 6
    x_BTI = torch.randn(batch, T, I)
    dt_BT = torch.rand(batch, T) * 2.0 + 0.05
    hx = random_state(mixed, batch, 6)
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
        close(y[b], y_ref[0], torch.float32, f"output of sequence {b}")
        for got, want in zip(states(h), states(h_ref), strict=True):
            close(got[b], want[0], torch.float32, f"state of sequence {b}")


@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_same_seed_gives_ncps_initial_weights(wiring):
    """Construction consumes the torch RNG exactly as ncps does: the study's seeds give its weights."""
    torch.manual_seed(11)
    reference = ncps_torch.LTC(I, WIRINGS[wiring](ncps_wirings), mixed_memory=True)
    torch.manual_seed(11)
    ours = LTC(I, WIRINGS[wiring](tl_wirings), mixed_memory=True)
    want, got = reference.state_dict(), ours.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_cell_step_matches_ncps_cell(implicit):
    torch.manual_seed(4)
    reference = ncps_torch.LTCCell(ncps_wirings.AutoNCP(10, 2), in_features=I, implicit_param_constraints=implicit)
    ours = LTCCell(tl_wirings.AutoNCP(10, 2), in_features=I, implicit_param_constraints=implicit)
    ours.load_state_dict(reference.state_dict())
    x_BI, v_BU = torch.randn(B, I), torch.randn(B, 10)
    y_ref, v_ref = reference(x_BI, v_BU, 0.7)
    y, v = ours(x_BI, v_BU, 0.7)
    close(y, y_ref, torch.float32, "cell output")
    close(v, v_ref, torch.float32, "cell state")
