"""CfC behaviour beyond ncps parity: argument checks (A12), wired outputs (A08), wiring reuse
(A11), masks as buffers, the single-step cell API and config round trips.

Numerical agreement with ncps is in test_parity_cfc.py; the sequence driver in test_nn_sequence.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchliquid.nn import CfC, CfCCell, WiredCfCCell
from torchliquid.nn.wirings import NCP, AutoNCP, FullyConnected, Random, Wiring

B, T, I = 3, 5, 4


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"mode": "gated"}, ValueError, r"mode must be one of \{'default', 'pure', 'no_gate'\}, got 'gated'"),
        ({"activation": "lecun"}, ValueError, r"activation must be one of \{'lecun_tanh', 'tanh', 'relu', 'gelu', 'silu'\}"),
        ({"units": 0}, ValueError, "units must be an int >= 1, got 0"),
        ({"units": "8"}, TypeError, "units must be an int or a torchliquid.nn.wirings.Wiring"),
        ({"units": 8.0}, TypeError, "units must be an int or a torchliquid.nn.wirings.Wiring"),
        ({"input_size": 0}, ValueError, "input_size must be an int >= 1, got 0"),
        ({"proj_size": 0}, ValueError, "proj_size must be an int >= 1, got 0"),
        ({"backbone_units": 0}, ValueError, "backbone_units must be an int >= 1, got 0"),
        ({"backbone_layers": -1}, ValueError, "backbone_layers must be an int >= 0, got -1"),
        ({"backbone_dropout": 1.0}, ValueError, r"backbone_dropout must be in \[0.0, 1.0\), got 1.0"),
        ({"backbone_dropout": -0.1}, ValueError, r"backbone_dropout must be in \[0.0, 1.0\), got -0.1"),
        ({"batch_first": 1}, TypeError, "batch_first must be True or False, got int 1"),
        ({"units": AutoNCP(10, 2), "backbone_units": 16}, ValueError, "backbone_units must be None when units is a wiring"),
        ({"units": AutoNCP(10, 2), "backbone_dropout": 0.0}, ValueError, "backbone_dropout must be None when units is a wiring"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, error, message):
    arguments = {"input_size": I, "units": 8, **kwargs}
    with pytest.raises(error, match=message):
        CfC(**arguments)


def test_ncps_wiring_is_refused_with_a_pointer_to_compat():
    ncps_wirings = pytest.importorskip("ncps.wirings")
    with pytest.raises(TypeError, match="torchliquid.compat.from_ncps"):
        CfC(I, ncps_wirings.AutoNCP(10, 2))


WIRINGS = {
    "fc": lambda: FullyConnected(8, 2),
    "random": lambda: Random(8, 2, sparsity_level=0.5),
    "ncp": lambda: NCP(4, 3, 2, 2, 2, 2, 2),
    "autoncp": lambda: AutoNCP(10, 2),
    "explicit": lambda: Wiring.from_adjacency(np.ones((5, 5), dtype=int), output_dim=2, layers=[[3, 4], [0, 1, 2]]),
}


@pytest.mark.parametrize("proj", [None, 3])
@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_wired_cfc_outputs_the_motor_neurons_for_every_wiring(wiring, proj):
    """A08: output width is wiring.output_dim (or proj_size) for every wiring type; hx keeps U."""
    spec = WIRINGS[wiring]()
    model = CfC(I, spec, proj_size=proj)
    y, h = model(torch.randn(B, T, I))
    assert y.shape == (B, T, proj or spec.output_dim)
    assert h.shape == (B, spec.units)
    assert model.output_size == (proj or spec.output_dim)


@pytest.mark.parametrize("wiring", ["fc", "autoncp", "explicit"])
def test_wired_output_is_the_motor_slice_of_the_last_layer_state(wiring):
    spec = WIRINGS[wiring]()
    model = CfC(I, spec)
    y, h = model(torch.randn(B, T, I))
    last_layer_start = spec.units - len(spec.neurons_of_layer(spec.num_layers - 1))
    torch.testing.assert_close(y[:, -1], h[:, last_layer_start : last_layer_start + spec.output_dim], atol=0.0, rtol=0.0)


def test_one_wiring_spec_serves_several_layers():
    """A11: build returns a copy; the caller's spec stays unbuilt and reusable."""
    spec = AutoNCP(25, 6)
    first, second = CfC(30, spec), CfC(6, spec)
    assert not spec.is_built()
    assert first.wiring.input_dim == 30 and second.wiring.input_dim == 6
    y, _ = second(first(torch.randn(B, T, 30))[0])
    assert y.shape == (B, T, 6)


def test_wiring_masks_are_buffers_and_block_gradients():
    model = CfC(I, AutoNCP(10, 2))
    names = {name for name, _ in model.named_parameters()}
    assert not any("mask" in name for name in names)
    buffers = dict(model.named_buffers())
    assert {f"rnn_cell.layer_{i}.sparsity_mask" for i in range(3)} <= set(buffers)
    model(torch.randn(B, T, I))[0].pow(2).sum().backward()
    layer = model.rnn_cell.layer_0
    absent_UZ = layer.sparsity_mask == 0
    assert absent_UZ.any(), "AutoNCP(10, 2) is sparse, or this test cannot fail"
    assert layer.ff1.weight.grad[absent_UZ].abs().max() == 0.0
    assert layer.ff1.weight.grad[~absent_UZ].abs().max() > 0.0


def test_masks_follow_to_dtype():
    model = CfC(I, AutoNCP(10, 2)).to(torch.float64)
    assert model.rnn_cell.layer_1.sparsity_mask.dtype == torch.float64
    y, _ = model(torch.randn(B, T, I, dtype=torch.float64))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("cell_factory", [lambda: CfCCell(I, 6, mode="pure"), lambda: WiredCfCCell(I, FullyConnected(6, 2))], ids=["dense", "wired"])
def test_cell_time_argument_forms_agree_also_when_batch_equals_units(cell_factory):
    torch.manual_seed(0)
    cell = cell_factory()
    batch = 6  # == units: a (B,) ts must not broadcast along the units
    x_BI, h_BU, dt_B = torch.randn(batch, I), torch.randn(batch, 6), torch.rand(batch) + 0.1
    y, h = cell(x_BI, h_BU, dt_B)
    torch.testing.assert_close(cell(x_BI, h_BU, dt_B.unsqueeze(1))[1], h, atol=0.0, rtol=0.0)
    for b in range(batch):
        _, h_b = cell(x_BI[b : b + 1], h_BU[b : b + 1], float(dt_B[b]))
        torch.testing.assert_close(h[b : b + 1], h_b, atol=1e-6, rtol=0.0)  # 1e-6: BLAS blocking of B=1 vs B=6


def test_cell_rejects_bad_step_arguments():
    cell = CfCCell(I, 6)
    with pytest.raises(ValueError, match=r"input must have shape \(B, 4\)"):
        cell(torch.randn(2, 5, I), torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 6\), got \(2, 5\)"):
        cell(torch.randn(2, I), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"ts must be a scalar, \(2,\) or \(2, 1\)"):
        cell(torch.randn(2, I), torch.zeros(2, 6), torch.ones(3))
    with pytest.raises(ValueError, match=r"sparsity_mask must have shape .* = \(10, 6\)"):
        CfCCell(I, 6, sparsity_mask=np.ones((6, 10)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: CfC(I, 7, proj_size=2, mixed_memory=True, mode="no_gate", activation="silu", backbone_layers=2, backbone_units=5, backbone_dropout=0.1, batch_first=False, return_sequences=False),
        lambda: CfC(I, AutoNCP(10, 3), mode="pure"),
        lambda: CfC(I, Random(6, 2, 0.3), proj_size=4),
    ],
    ids=["dense", "autoncp", "random"],
)
def test_config_is_json_and_rebuilds_the_same_architecture(make):
    torch.manual_seed(0)
    model = make()
    config = json.loads(json.dumps(model.config()))
    rebuilt = CfC.from_config(config)
    assert rebuilt.config() == model.config()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(dict(rebuilt.named_buffers())[name], buffer, atol=0.0, rtol=0.0)
