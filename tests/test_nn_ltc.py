"""LTC behaviour beyond ncps parity: argument checks (A12), the positivity constraints and their
training consequence (A03), constrain_after_step, wired outputs and config round trips.

Numerical agreement with ncps is in test_parity_ltc.py.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from torchliquid.nn import LTC, LTCCell, constrain_after_step
from torchliquid.nn.wirings import NCP, AutoNCP, FullyConnected, Random

B, T, I = 3, 5, 4


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"input_mapping": "afine"}, ValueError, r"input_mapping must be one of \{'affine', 'linear', None\}, got 'afine'"),
        ({"output_mapping": "none"}, ValueError, r"output_mapping must be one of \{'affine', 'linear', None\}, got 'none'"),
        ({"ode_unfolds": 0}, ValueError, "ode_unfolds must be an int >= 1, got 0"),
        ({"ode_unfolds": 2.5}, TypeError, "ode_unfolds must be an int >= 1, got float 2.5"),
        ({"epsilon": -1e-8}, ValueError, "epsilon must be >= 0.0, got -1e-08"),
        ({"epsilon": float("nan")}, ValueError, "epsilon must be >= 0.0, got nan"),
        ({"implicit_param_constraints": "yes"}, TypeError, "implicit_param_constraints must be True or False"),
        ({"units": 0}, ValueError, "units must be an int >= 1, got 0"),
        ({"units": [8]}, TypeError, "units must be an int or a torchliquid.nn.wirings.Wiring"),
        ({"mixed_memory": None}, TypeError, "mixed_memory must be True or False"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, error, message):
    arguments = {"input_size": I, "units": 8, **kwargs}
    with pytest.raises(error, match=message):
        LTC(**arguments)


def test_cell_and_layer_share_one_constraint_default():
    """A03: ncps's cell defaults to explicit constraints and its layer to implicit; here both are implicit."""
    layer_default = inspect.signature(LTC).parameters["implicit_param_constraints"].default
    cell_default = inspect.signature(LTCCell).parameters["implicit_param_constraints"].default
    assert layer_default is cell_default is True
    assert LTCCell(FullyConnected(4), in_features=I).implicit_param_constraints is True


@pytest.mark.parametrize("wiring", [FullyConnected(8, 2), Random(8, 3, 0.5), NCP(4, 3, 2, 2, 2, 2, 2), AutoNCP(10, 2)], ids=["fc", "random", "ncp", "autoncp"])
def test_wired_ltc_outputs_the_motor_neurons(wiring):
    model = LTC(I, wiring, output_mapping=None)
    y, h = model(torch.randn(B, T, I))
    assert y.shape == (B, T, wiring.output_dim) and h.shape == (B, wiring.units)
    torch.testing.assert_close(y[:, -1], h[:, : wiring.output_dim], atol=0.0, rtol=0.0)


def _a03_data():
    generator = torch.Generator().manual_seed(0)
    x_BTI = torch.randn(32, 20, 4, generator=generator) * 3.0
    return x_BTI, torch.sin(x_BTI.sum(dim=-1, keepdim=True))


def _train_cell(cell, steps, optimizer):
    """The A03 loop: the cell stepped by hand, MSE over all steps; returns the per-step losses."""
    x_BTI, target_BT1 = _a03_data()
    losses = []
    for _ in range(steps):
        v_BU = torch.zeros(x_BTI.shape[0], cell.state_size)
        outputs = []
        for t in range(x_BTI.shape[1]):
            y_BM, v_BU = cell(x_BTI[:, t], v_BU)
            outputs.append(y_BM)
        loss = torch.nn.functional.mse_loss(torch.stack(outputs, dim=1), target_BT1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses)


@pytest.mark.slow
def test_a03_default_flags_keep_the_loss_finite_for_300_steps():
    torch.manual_seed(0)
    cell = LTCCell(FullyConnected(16, 1), in_features=4)  # default flags, as in the case
    losses = _train_cell(cell, 300, torch.optim.Adam(cell.parameters(), lr=0.05))
    assert torch.isfinite(losses).all(), f"first non-finite loss at step {int((~torch.isfinite(losses)).nonzero()[0])}"
    assert losses[-20:].mean() < losses[:5].mean(), "the model must learn, not merely stay finite"


@pytest.mark.slow
def test_a03_explicit_mode_with_constrain_after_step_stays_finite():
    # 120 steps, not 300: the case's unconstrained run broke at step 97, and the clipping itself
    # is checked exactly in test_constrain_after_step_clips_after_every_step_and_can_be_removed.
    torch.manual_seed(0)
    cell = LTCCell(FullyConnected(16, 1), in_features=4, implicit_param_constraints=False)
    optimizer = torch.optim.Adam(cell.parameters(), lr=0.05)
    constrain_after_step(optimizer, cell)
    losses = _train_cell(cell, 120, optimizer)
    assert torch.isfinite(losses).all(), f"first non-finite loss at step {int((~torch.isfinite(losses)).nonzero()[0])}"
    for name in ("w", "sensory_w", "cm", "gleak"):
        assert (getattr(cell, name) >= 0).all(), name


def test_constrain_after_step_clips_after_every_step_and_can_be_removed():
    torch.manual_seed(0)
    model = LTC(I, 6, implicit_param_constraints=False, mixed_memory=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    handle = constrain_after_step(optimizer, model)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)  # a large step pushes everything below zero
    optimizer.step()
    cell = model.rnn_cell
    for name in ("w", "sensory_w", "cm", "gleak"):
        assert (getattr(cell, name) >= 0).all(), name
    assert (cell.vleak < 0).all(), "vleak is unconstrained"
    handle.remove()
    optimizer.step()
    assert (cell.cm < 0).all(), "after remove() the hook no longer runs"


def test_constraints_do_nothing_in_implicit_mode():
    model = LTC(I, 6)
    with torch.no_grad():
        model.rnn_cell.cm.fill_(-1.0)
    model.rnn_cell.apply_weight_constraints()
    assert (model.rnn_cell.cm == -1.0).all()  # softplus(-1) > 0 already keeps the ODE well posed
    assert torch.isfinite(model(torch.randn(B, T, I))[0]).all()


def test_constrain_after_step_checks_its_arguments():
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        constrain_after_step(LTC(I, 4), LTC(I, 4))


def test_cell_needs_a_built_wiring_or_in_features():
    with pytest.raises(ValueError, match="in_features is None and .* is not built: pass in_features"):
        LTCCell(AutoNCP(10, 2))
    assert LTCCell(AutoNCP(10, 2).build(I)).sensory_size == I
    assert LTCCell(5, in_features=I).state_size == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda: LTC(I, NCP(4, 3, 2, 2, 2, 2, 2), mixed_memory=True, input_mapping="linear", output_mapping=None, ode_unfolds=2, epsilon=1e-6, implicit_param_constraints=False, batch_first=False),
        lambda: LTC(I, 6, return_sequences=False),
    ],
    ids=["ncp", "fc"],
)
def test_config_is_json_and_rebuilds_the_same_architecture(make):
    torch.manual_seed(0)
    model = make()
    rebuilt = LTC.from_config(json.loads(json.dumps(model.config())))
    assert rebuilt.config() == model.config()
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(dict(rebuilt.named_buffers())[name], buffer, atol=0.0, rtol=0.0)
    torch.testing.assert_close(rebuilt.rnn_cell.erev, model.rnn_cell.erev, atol=0.0, rtol=0.0)
