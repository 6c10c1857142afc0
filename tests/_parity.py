"""Shared comparison for the parity tests (test_parity_cfc.py, test_parity_ltc.py, test_compat.py).

Tolerances (TOL): torchliquid and ncps 1.0.1 do the same operations in the same order, so they
agree to the last bit in practice; 1e-5 (float32) / 1e-10 (float64) leave room for a different
BLAS reduction order (e.g. a projection applied to the whole sequence at once instead of per
step). Gradients are compared relative to each tensor's largest entry (1e-4 float32, 1e-8
float64): an absolute bound is meaningless across parameters whose gradients differ by orders of
magnitude, and a per-element relative bound breaks on entries that are nearly zero.
"""

from __future__ import annotations

import torch

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
GRAD_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8}


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=TOL[dtype], rtol=0.0, msg=lambda m: f"{what}: {m}")


def states(h) -> list:
    return list(h) if isinstance(h, tuple) else [h]


def random_state(mixed: bool, batch: int, units: int):
    h = torch.randn(batch, units)
    return (h, torch.randn(batch, units)) if mixed else h


def compare_runs(reference, ours, x, hx=None, dtype=torch.float32, motor=None, timespans=None) -> None:
    """Forward both, compare outputs and final states, backward a random linear loss, compare grads.

    ``motor``: compare only the first ``motor`` output features (ncps returns every unit of a
    single-layer wired CfC where torchliquid returns the motor neurons, field case A08).
    Parameters are matched by name, so ours must use ncps's parameter names.
    """
    reference, ours = reference.to(dtype), ours.to(dtype)
    x = x.to(dtype)
    if hx is not None:
        hx = tuple(h.to(dtype) for h in hx) if isinstance(hx, tuple) else hx.to(dtype)
    y_ref, h_ref = reference(x, hx, timespans)
    y, h = ours(x, hx, timespans)
    if motor is not None:
        y_ref = y_ref[..., :motor]
    assert y.shape == y_ref.shape, (y.shape, y_ref.shape)
    assert y.dtype == dtype
    close(y, y_ref, dtype, "output")
    for got, want in zip(states(h), states(h_ref), strict=True):
        close(got, want, dtype, "final state")

    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(t.shape, generator=generator, dtype=dtype) for t in [y, *states(h)]]
    for out, final, model in ((y_ref, h_ref, reference), (y, h, ours)):
        model.zero_grad()
        loss = sum((t * w).sum() for t, w in zip([out, *states(final)], weights))
        loss.backward()
    reference_parameters = dict(reference.named_parameters())
    checked = 0
    for name, parameter in ours.named_parameters():
        if not parameter.requires_grad:
            continue
        want = reference_parameters[name].grad
        scale = max(want.abs().max().item(), 1e-30)
        torch.testing.assert_close(
            parameter.grad, want, rtol=0.0, atol=GRAD_RTOL[dtype] * scale, msg=lambda m: f"grad of {name}: {m}"
        )
        checked += 1
    trainable = sum(p.requires_grad for p in reference_parameters.values())  # ncps masks are frozen parameters
    assert checked == trainable, "every trainable ncps parameter has a counterpart"
