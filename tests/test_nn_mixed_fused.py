"""Mixed memory's fast path (nn/mixed_fused.py) against the reference loop and against ncps 1.0.1.

Start here: `_case` builds an ncps layer with mixed_memory=True, loads its weights into a
torchliquid layer (same parameter names), and `_check` runs three things on one random input,
random (h0, c0) and timespans: our layer with the implementation under test, a deep copy of it
with implementation="reference" (the plain per-step loop), and ncps. It compares outputs and both
final states, then backpropagates one random linear loss of all three and compares the gradients
of every parameter (and, against the reference, of the input, h0 and c0).

ncps's batched timespans are wrong (A01/A02), so with timespans ncps runs one sequence at a time
with a scalar dt per step and its gradients are summed over the sequences (the loss is a sum).

Tolerances as tests/_parity.py: float32 outputs and states 1e-5 absolute, gradients 1e-4 relative
to each tensor's largest entry (observed ~1e-6: the same products, summed in other places, C tanh
within 2 ulp). The grids are orthogonal, as in test_parity_cfc.py: what the CfC cell computes
(mode x timespans x return_sequences x dense/wired), batch x length, the backbone variants, the
LTC (backend x timespans x return_sequences, batch x length), then gradcheck of the hand-written
backward in float64, the choice of path, and the benchmark's smoke run.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from torchliquid.nn import CfC, LTC, mixed_fused
from torchliquid.nn import _fused_native as native
from torchliquid.nn import wirings as tl_wirings

I = 4
TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}  # (outputs, relative grads)
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mixed.py"
needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.failure()}")


def _ncps() -> tuple[Any, Any]:
    return pytest.importorskip("ncps.torch"), pytest.importorskip("ncps.wirings")


def _case(layer: str, units: str, dtype: torch.dtype = torch.float32, **kwargs: Any) -> tuple[Any, Any]:
    """(ncps layer, our layer with the ncps weights), mixed_memory=True."""
    ncps_torch, ncps_wirings = _ncps()
    make = (lambda m: 8) if units == "dense" else (lambda m: m.AutoNCP(10, 2))  # noqa: E731
    torch.manual_seed(21)
    if layer == "cfc":
        if units == "dense":
            kwargs = {"backbone_units": 6, "backbone_layers": 2, **kwargs}
        theirs, ours = ncps_torch.CfC(I, make(ncps_wirings), mixed_memory=True, **kwargs), CfC
    else:
        theirs, ours = ncps_torch.LTC(I, make(ncps_wirings), mixed_memory=True, **kwargs), LTC
    with torch.no_grad():  # pure mode starts at w_tau = 0, where |w_tau| has no derivative
        for name, parameter in theirs.named_parameters():
            if name.endswith(("w_tau", ".A")):
                parameter.normal_()
    ours = ours(I, make(tl_wirings), mixed_memory=True, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs.to(dtype), ours.to(dtype)


def _run(model: Any, x: torch.Tensor, hx: tuple, dt: Optional[torch.Tensor], weights: list) -> tuple[list, dict]:
    """Outputs [y, h_n, c_n] and the gradients of one linear loss: input, hx, cx, parameters."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, *hx)]
    y, (h, c) = model(leaves[0], tuple(leaves[1:]), dt)
    loss = sum((t * w).sum() for t, w in zip((y, h, c), weights))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, leaves + [p for _, p in named])
    return [y, h, c], dict(zip(["input", "hx", "cx"] + [n for n, _ in named], grads))


def _run_ncps(model: Any, x: torch.Tensor, hx: tuple, dt: Optional[torch.Tensor], weights: list) -> tuple[list, dict]:
    """As _run for ncps; with timespans one sequence at a time (A01), gradients summed."""
    if dt is None:
        outs, grads = _run(model, x, hx, None, weights)
        return outs, {k: v for k, v in grads.items() if k not in ("input", "hx", "cx")}
    runs = [
        _run(model, x[b : b + 1], tuple(s[b : b + 1] for s in hx), dt[b : b + 1], [w[b : b + 1] for w in weights])
        for b in range(x.shape[0])
    ]
    outs = [torch.cat([r[0][k] for r in runs]) for k in range(3)]
    names = [k for k in runs[0][1] if k not in ("input", "hx", "cx")]
    return outs, {k: sum(r[1][k] for r in runs) for k in names}


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got - want).abs().max().item() / max(want.abs().max().item(), 1e-30)


def _compare(got: tuple[list, dict], want: tuple[list, dict], dtype: torch.dtype, against: str) -> None:
    out_tol, grad_tol = TOL[dtype]
    for what, a, b in zip(("output", "h_n", "c_n"), got[0], want[0]):
        assert a.shape == b.shape and a.dtype == b.dtype, (against, what, a.shape, b.shape)
        assert (a - b).abs().max().item() < out_tol, f"{what} vs {against}: {(a - b).abs().max().item():.2e}"
    assert set(want[1]) <= set(got[1]), (against, set(want[1]) - set(got[1]))
    for name, expected in want[1].items():
        err = _rel(got[1][name], expected)
        assert err < grad_tol, f"gradient of {name} vs {against}: {err:.2e}"


def _check(theirs: Any, ours: Any, implementation: str, B: int, T: int, timespans: bool,
           dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
    """Our layer with `implementation` == the reference loop == ncps (see module doc)."""
    fast, reference = copy.deepcopy(ours), copy.deepcopy(ours)
    fast.implementation, reference.implementation = implementation, "reference"
    generator = torch.Generator().manual_seed(B * 100 + T)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype)  # noqa: E731
    U = ours.state_size
    x, hx = rand(B, T, I), (rand(B, U), rand(B, U))
    dt = torch.rand(B, T, generator=generator, dtype=dtype) * 1.5 + 0.1 if timespans else None
    y_shape = (B, T, ours.output_size) if ours.return_sequences else (B, ours.output_size)
    weights = [rand(*y_shape), rand(B, U), rand(B, U)]
    got = _run(fast, x, hx, dt, weights)
    _compare(got, _run(reference, x, hx, dt, weights), dtype, "reference")
    _compare(got, _run_ncps(theirs, x, hx, dt, weights), dtype, "ncps")


# ------------------------------------------------------------------------------------------ CfC


@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("timespans", [False, True], ids=["dt1", "dt"])
@pytest.mark.parametrize("units", ["dense", "autoncp"])
@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_cfc_equals_reference_and_ncps(mode, units, timespans, return_sequences):
    theirs, ours = _case("cfc", units, mode=mode, return_sequences=return_sequences)
    _check(theirs, ours, "auto", B=3, T=9, timespans=timespans)


@pytest.mark.parametrize("implementation", ["auto", "function-torch"])
@pytest.mark.parametrize("T", [1, 9])
@pytest.mark.parametrize("B", [1, 3, 37])
@pytest.mark.parametrize("units", ["dense", "autoncp"])
def test_cfc_batch_and_length_equal_reference_and_ncps(units, B, T, implementation):
    theirs, ours = _case("cfc", units)
    _check(theirs, ours, implementation, B=B, T=T, timespans=True)


@pytest.mark.parametrize("activation", ["lecun_tanh", "tanh", "relu", "gelu"])
@pytest.mark.parametrize("backbone_layers", [0, 1, 3])
def test_cfc_backbone_variants_equal_reference_and_ncps(backbone_layers, activation):
    theirs, ours = _case("cfc", "dense", activation=activation, backbone_layers=backbone_layers, proj_size=3)
    _check(theirs, ours, "auto", B=3, T=5, timespans=False)


def test_cfc_float64_equals_reference_and_ncps():
    theirs, ours = _case("cfc", "autoncp", torch.float64, mode="pure")
    _check(theirs, ours, "auto", B=3, T=5, timespans=True, dtype=torch.float64)


# ------------------------------------------------------------------------------------------ LTC

LTC_BACKENDS = ["auto", pytest.param("native", marks=needs_native), "torch-sparse", "torch-dense"]


@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("timespans", [False, True], ids=["dt1", "dt"])
@pytest.mark.parametrize("implementation", LTC_BACKENDS)
def test_ltc_equals_reference_and_ncps(implementation, timespans, return_sequences):
    theirs, ours = _case("ltc", "autoncp", return_sequences=return_sequences)
    _check(theirs, ours, implementation, B=3, T=9, timespans=timespans)


@pytest.mark.parametrize("T", [1, 9])
@pytest.mark.parametrize("B", [1, 3, 37])
def test_ltc_batch_and_length_equal_reference_and_ncps(B, T):
    theirs, ours = _case("ltc", "autoncp")
    _check(theirs, ours, "auto", B=B, T=T, timespans=True)


def test_ltc_dense_wiring_float64_equals_reference_and_ncps():
    theirs, ours = _case("ltc", "dense", torch.float64, implicit_param_constraints=False)
    _check(theirs, ours, "auto", B=3, T=5, timespans=True, dtype=torch.float64)


def test_ltc_timespans_gradient_equals_reference():
    """The LTC path differentiates through dt (cm / (dt / K) is outside the Function)."""
    _, ours = _case("ltc", "autoncp")
    x, hx = torch.randn(3, 6, I), (torch.randn(3, 10), torch.randn(3, 10))
    grads = []
    for implementation in ("auto", "reference"):
        model = copy.deepcopy(ours)
        model.implementation = implementation
        dt = (torch.rand(3, 6, generator=torch.Generator().manual_seed(1)) + 0.2).requires_grad_()
        y, (h, c) = model(x, hx, dt)
        grads.append(torch.autograd.grad(y.sum() + h.sum() + c.sum(), dt)[0])
    assert _rel(grads[0], grads[1]) < 1e-4


# ----------------------------------------------------------------- the hand-written backward


def _lstm_args(U: int, generator: torch.Generator) -> list[torch.Tensor]:
    rand = lambda *s: (torch.randn(*s, generator=generator, dtype=torch.float64) * 0.5).requires_grad_()  # noqa: E731
    return [rand(4 * U, 2), rand(4 * U), rand(4 * U, U)]


GRADCHECK_CASES = {  # mode, stages as (units, backbone widths, activation), timespans
    "default-dt": ("default", [(3, [4], "lecun_tanh")], True),
    "no_gate-merged": ("no_gate", [(3, [4], "tanh")], False),
    "pure": ("pure", [(3, [], "lecun_tanh")], True),
    "wired-two-stages": ("default", [(2, [], "lecun_tanh"), (1, [], "lecun_tanh")], False),
    "backbone-gelu": ("default", [(3, [5, 4], "gelu")], True),
}


@pytest.mark.parametrize("use_native", [pytest.param(True, marks=needs_native), False], ids=["native", "torch"])
@pytest.mark.parametrize("case", sorted(GRADCHECK_CASES))
def test_cfc_function_gradcheck_float64(case, use_native):
    mode, stages, timespans = GRADCHECK_CASES[case]
    g = torch.Generator().manual_seed(3)
    rand = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).requires_grad_()  # noqa: E731
    B, T, feed = 2, 3, 2
    cells, tensors = [], []
    for units, widths, activation in stages:
        ins = [feed + units, *widths]
        backbone = [(rand(o, i), rand(o)) for i, o in zip(ins, widths)]
        heads = units if mode == "pure" else 4 * units
        args = {"backbone_weights": [w for w, _ in backbone], "backbone_biases": [b for _, b in backbone],
                "head_weight_XZ": rand(heads, ins[-1]), "head_bias_X": rand(heads), "mode": mode,
                "activation": activation}  # fmt: skip
        if mode == "pure":
            args.update(w_tau_1U=rand(1, units), a_1U=rand(1, units))
        cells.append(args)
        tensors += [*args["backbone_weights"], *args["backbone_biases"]]
        tensors += [t for t in args.values() if isinstance(t, torch.Tensor)]
        feed = units
    U = sum(units for units, _, _ in stages)
    x, h0, c0 = rand(B, T, 2), rand(B, U), rand(B, U)
    lstm = _lstm_args(U, g)
    dt = torch.rand(B, T, 1, generator=g, dtype=torch.float64) + 0.5 if timespans else None

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # gradcheck perturbs these very tensors in place; the closure reads them as `cells` holds them
        return mixed_fused.mixed_cfc_sequence(x, h0, c0, dt, *lstm, cells, use_native=use_native)

    assert torch.autograd.gradcheck(run, (x, h0, c0, *lstm, *tensors), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native), "torch-sparse", "torch-dense"])
def test_ltc_function_gradcheck_float64(backend):
    torch.manual_seed(4)
    model = LTC(2, tl_wirings.AutoNCP(5, 1), mixed_memory=True).double()
    cell = model.rnn_cell
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    h0, c0 = (torch.randn(2, 5, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    dt = (torch.rand(2, 3, 1, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    lstm = _lstm_args(5, g)
    params = [cell.sensory_w, cell.sensory_mu, cell.sensory_sigma, cell.sensory_erev, cell.cm, cell.gleak,
              cell.vleak, cell.w, cell.mu, cell.sigma, cell.erev]  # fmt: skip

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sw, smu, ssg, sev, cm, gl, vl, w, mu, sg, ev = params
        return mixed_fused.mixed_ltc_sequence(
            x, x * 1.5, h0, c0, dt, *lstm, sw.abs(), smu, ssg, sev, cell.sensory_sparsity_mask, cm.abs(),
            gl.abs(), vl, w.abs(), mu, sg, ev, cell.sparsity_mask, unfolds=3, backend=backend,
        )  # fmt: skip

    assert torch.autograd.gradcheck(run, (x, h0, c0, dt, *lstm, *params), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------- which path runs


@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_auto_runs_the_fast_path_for_mixed_memory(monkeypatch, layer_class):
    """"auto" resolves to a kernel for mixed layers, and neither the LSTM cell nor the liquid
    cell's per-step `_step` (the reference loop's body) runs; "reference" still runs them."""
    torch.manual_seed(6)
    model = layer_class(I, tl_wirings.AutoNCP(8, 2), mixed_memory=True)
    x = torch.randn(2, 4, I)
    assert model.resolve_implementation(x) == ("function" if layer_class is CfC else layer_class(I, 8).resolve_implementation(x))
    expected, _ = model(x)
    calls = []
    apply = mixed_fused._MixedFunction.apply
    monkeypatch.setattr(mixed_fused._MixedFunction, "apply", lambda *a: calls.append(1) or apply(*a))

    def broken(*args: Any) -> None:
        raise AssertionError("the reference loop ran")

    monkeypatch.setattr(model.rnn_cell, "_step", broken)
    monkeypatch.setattr(model.lstm, "forward", broken)
    got, (h, c) = model(x)
    (got.sum() + c.sum()).backward()
    assert torch.equal(got, expected) and calls == [1]
    model.implementation = "reference"
    with pytest.raises(AssertionError, match="reference loop ran"):
        model(x)


@pytest.mark.parametrize("implementation", ["jit", "compile"])
def test_cfc_kernels_without_a_mixed_form_refuse_it(implementation):
    model = CfC(I, 6, mixed_memory=True, implementation=implementation)
    with pytest.raises(ValueError, match="no mixed-memory form.*'auto' or 'reference'"):
        model(torch.randn(2, 3, I))


def test_cfc_timespans_that_require_grad_run_the_reference_loop():
    _, ours = _case("cfc", "dense")
    dt = (torch.rand(2, 4) + 0.5).requires_grad_()
    y, (h, c) = ours(torch.randn(2, 4, I), None, dt)
    (y.sum() + c.sum()).backward()
    assert dt.grad is not None and torch.isfinite(dt.grad).all()


@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_double_backward_through_mixed_memory_is_refused(layer_class):
    model = layer_class(I, tl_wirings.AutoNCP(8, 2), mixed_memory=True)
    x = torch.randn(2, 3, I, requires_grad=True)
    _, (h, c) = model(x)
    with pytest.raises(RuntimeError, match="create_graph=True through a fused"):
        torch.autograd.grad(c.sum(), x, create_graph=True)


@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_bf16_autocast_and_bf16_layers_run_mixed_memory(layer_class):
    torch.manual_seed(8)
    model = layer_class(I, tl_wirings.AutoNCP(8, 2), mixed_memory=True)
    x = torch.randn(3, 5, I)
    y32, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = model(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and (y.float() - y32).abs().max().item() < 0.1
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    y16, (h16, c16) = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y16.dtype == h16.dtype == c16.dtype == torch.bfloat16 and torch.isfinite(y16).all()


def test_outputs_and_final_states_are_separate_tensors():
    model = CfC(I, 6, mixed_memory=True, return_sequences=False)
    y, (h, c) = model(torch.randn(2, 3, I))
    h_before, c_before = h.clone(), c.clone()
    y.add_(1.0)
    assert torch.equal(h, h_before) and torch.equal(c, c_before)


@pytest.mark.parametrize("B, T", [(3, 5), (1, 5), (3, 1)], ids=["B3-T5", "B1", "T1"])
@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_reused_step_buffers_never_leak_between_live_calls(layer_class, B, T):
    """mixed_fused reuses its step buffers across calls (_Workspace): an output kept from one call
    survives the next, and three graphs alive at once backpropagate as three separate runs.
    B = 1 and T = 1 make the step-major buffer's batch-major view contiguous already, so an output
    made with .contiguous() would be the pooled buffer itself (A19's chunked streaming broke so)."""
    torch.manual_seed(9)
    fast = layer_class(I, tl_wirings.AutoNCP(8, 2), mixed_memory=True)
    reference = copy.deepcopy(fast)
    reference.implementation = "reference"
    xs = [torch.randn(B, T, I) for _ in range(3)]
    with torch.no_grad():
        first, (h, c) = fast(xs[0])
        kept = [t.clone() for t in (first, h, c)]
        fast(xs[1])
    assert all(torch.equal(a, b) for a, b in zip((first, h, c), kept))
    outs = [fast(x)[0] for x in xs]
    for x, y in reversed(list(zip(xs, outs))):
        got = torch.autograd.grad(y.square().sum(), list(fast.parameters()))
        want = torch.autograd.grad(reference(x)[0].square().sum(), list(reference.parameters()))
        assert max(_rel(a, b) for a, b in zip(got, want)) < 1e-4


def test_the_comparison_catches_a_wrong_weight():
    """The checks can fail: one LSTM weight off by 1e-3 in the fast layer is caught."""
    theirs, ours = _case("cfc", "dense")
    with torch.no_grad():
        theirs.lstm.recurrent_map.weight[5, 2] += 1e-3
    with pytest.raises(AssertionError, match="vs ncps"):
        _check(theirs, ours, "auto", B=3, T=4, timespans=False)


# --------------------------------------------------------------------------------- benchmark


def test_bench_mixed_smoke_run_prints_its_table():
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for needed in ("tl-mixed-cfc", "tl-reference-cfc", "ncps-cfc", "tl-mixed-ltc", "tl-reference-ltc", "ncps-ltc",
                   "seq/s"):  # fmt: skip
        assert needed in done.stdout, (needed, done.stdout[-2000:])
