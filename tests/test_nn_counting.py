"""Field case A18: a sparse wiring's parameter count and speed.

ncps counts every masked-out synapse as a parameter (and, for LTC, computes it). Here
count_parameters says which entries a wiring removes, the claim is checked against autograd (a
removed entry never gets a gradient, a kept one does), and the sparse LTC paths equal the masked
dense computation at 70 % sparsity. The speed side is benchmarks/bench_sparse.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchliquid.nn import CfC, LTC, count_parameters
from torchliquid.nn.wirings import AutoNCP, FullyConnected

I, U, MOTORS = 5, 24, 4
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sparse.py"


def _sparse(layer, **kwargs):
    torch.manual_seed(0)
    return layer(I, AutoNCP(U, MOTORS, sparsity_level=0.7), **kwargs)


def _masked_pairs(model):
    return [pair for m in model.modules() if hasattr(m, "masked_parameters") for pair in m.masked_parameters()]


def test_ltc_effective_parameters_are_the_wirings_synapses():
    model = _sparse(LTC)
    wiring = model.wiring
    count = count_parameters(model)
    missing = (U * U - wiring.synapse_count) + (I * U - wiring.sensory_synapse_count)
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.effective == count.total - 4 * missing  # w, mu, sigma, erev of each absent synapse
    assert f"{count.effective:,} effective" in str(count)


@pytest.mark.parametrize("layer", [CfC, LTC])
def test_dense_wirings_have_no_masked_parameters(layer):
    torch.manual_seed(0)
    count = count_parameters(layer(I, FullyConnected(U)))
    assert count.effective == count.total and "effective" not in str(count)


@pytest.mark.parametrize("layer", [CfC, LTC])
def test_masked_entries_never_get_a_gradient_and_kept_ones_do(layer):
    """What 'effective' claims, checked by autograd on the reference loop (no fused kernel's word)."""
    model = _sparse(layer, implementation="reference")
    y, _ = model(torch.randn(3, 6, I))
    y.square().sum().backward()
    pairs = _masked_pairs(model)
    assert pairs, "the sparse model reports no masks"
    removed = kept = kept_with_gradient = 0
    for parameter, mask in pairs:
        zero = torch.broadcast_to(mask, parameter.shape) == 0
        assert torch.all(parameter.grad[zero] == 0), "a masked-out entry got a gradient"
        removed += int(zero.sum())
        kept += int((~zero).sum())
        kept_with_gradient += int((parameter.grad[~zero] != 0).sum())
    count = count_parameters(model)
    assert count.total - count.effective == removed > 0
    assert kept_with_gradient > 0.9 * kept  # the kept synapses do matter


@pytest.mark.parametrize("implementation", ["native", "torch-sparse"])
def test_sparse_ltc_paths_equal_the_masked_dense_computation(implementation):
    """A18's right behaviour: computing only existing synapses changes nothing (1e-5)."""
    model = _sparse(LTC, implementation="torch-dense")
    x, dt = torch.randn(4, 7, I), torch.rand(4, 7) + 0.2
    want, _ = model(x, timespans=dt)
    want_grads = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    model.implementation = implementation
    got, _ = model(x, timespans=dt)
    got_grads = torch.autograd.grad(got.square().sum(), list(model.parameters()))
    assert (got - want).abs().max() < 1e-5
    for a, b in zip(got_grads, want_grads):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, float(b.abs().max()))


def test_bench_sparse_smoke_run_prints_its_table():
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for needed in ("ltc-dense", "ltc-sparse", "ltc-sparse-masked", "cfc-sparse", "ncps-ltc-sparse", "effective"):
        assert needed in done.stdout, (needed, done.stdout[-2000:])
