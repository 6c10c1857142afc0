"""Every `implementation` of CfC and LTC against the "reference" loop (STYLE item 10), and "auto"
against ncps 1.0.1.

Start here: `_check_against_reference` runs one layer twice, as built (the implementation under
test) and as a deep copy with implementation="reference" (the plain per-step loop, the control),
on the same random input, random initial state and timespans; it compares outputs and final
states, then backpropagates one random linear loss and compares the gradient of every parameter,
of the input and of the initial state (and of timespans, where they require grad).

Tolerances (as tests/test_fused_*.py): float32 outputs and states 1e-5 absolute; gradients 1e-4
relative to the largest entry of each tensor (the kernels sum the same products in another order,
weight gradients as one matmul over B·T rows, and their C tanh/exp are < 2 ulp polynomials;
observed ~1e-6). Float64: 1e-10 and 1e-8, the reordering alone.

The product of every option would be ~10^5 cases of the same few code paths. The sweep is
orthogonal grids, each crossed with every implementation: what the CfC cell computes (mode x
backbone depth x timespans), what surrounds it (dense/FC/AutoNCP wiring x proj x mode), the
layout, the LTC (wiring x mappings x implicit constraints x timespans), and batch x length for
each. Mixed memory runs mixed_fused under every kernel name but "jit"/"compile", which refuse it
(its own sweep against the reference and ncps: tests/test_nn_mixed_fused.py).
"""

from __future__ import annotations

import copy
from typing import Optional

import pytest
import torch

from torchliquid.nn import CfC, LTC, build_model, load_model, save_model
from torchliquid.nn import _fused_native as native
from torchliquid.nn import cfc_fused_variants
from torchliquid.nn import wirings as tl_wirings

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.failure()}")
CFC_IMPLEMENTATIONS = ["auto", "function", "function-torch", "jit", "compile"]
LTC_IMPLEMENTATIONS = ["auto", pytest.param("native", marks=needs_native), "torch-sparse", "torch-dense"]
TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}  # (outputs, relative grads)
I = 3


@pytest.fixture(autouse=True, scope="module")
def _eager_compile_backend():
    """implementation="compile" traces its step with dynamo but runs it eagerly here: inductor's
    C++ build takes ~20 s per graph on this CPU; it is tested by tests/test_fused_cfc.py."""
    saved = cfc_fused_variants.COMPILE_BACKEND
    cfc_fused_variants.COMPILE_BACKEND = "eager"
    cfc_fused_variants.reset_compiled()
    yield
    cfc_fused_variants.COMPILE_BACKEND = saved
    cfc_fused_variants.reset_compiled()


def _states(h) -> list[torch.Tensor]:
    return list(h) if isinstance(h, tuple) else [h]


def _off_the_kinks(model: torch.nn.Module) -> torch.nn.Module:
    """CfC "pure" starts at w_tau = 0, where |w_tau| has no derivative: move it (and A) off."""
    cell_modules = [m for m in model.modules() if hasattr(m, "w_tau")]
    with torch.no_grad():
        for cell in cell_modules:
            cell.w_tau.normal_()
            cell.A.normal_()
    return model


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got - want).abs().max().item() / (want.abs().max().item() + 1e-30)


def _check_against_reference(
    model: torch.nn.Module,
    implementation: str,
    B: int = 3,
    T: int = 5,
    timespans: str = "none",
    dtype: torch.dtype = torch.float32,
    layout: str = "batch_first",
) -> None:
    """Outputs, final states and every gradient of `model` with `implementation` == "reference"."""
    torch.manual_seed(11)
    model = model.to(dtype)
    fast = copy.deepcopy(model)
    fast.implementation = implementation
    reference = copy.deepcopy(model)
    reference.implementation = "reference"
    U = model.state_size
    x = torch.randn(B, T, I, dtype=dtype)
    hx: object = torch.randn(B, U, dtype=dtype)
    if model.use_mixed:
        hx = (hx, torch.randn(B, U, dtype=dtype))
    dt: Optional[torch.Tensor] = {
        "none": None,
        "per_sample": torch.rand(B, T, dtype=dtype) + 0.25,
        "scalar": torch.tensor(0.7, dtype=dtype),
        "grad": (torch.rand(B, T, dtype=dtype) + 0.25),
    }[timespans]
    if layout == "time_major":
        x = x.transpose(0, 1).contiguous()
        dt = None if dt is None or dt.dim() == 0 else dt.t().contiguous()
    if layout == "unbatched":
        x, hx = x[0], (tuple(h[0] for h in hx) if isinstance(hx, tuple) else hx[0])
        dt = None if dt is None or dt.dim() == 0 else dt[0]

    out_tol, grad_tol = TOL[dtype]
    results = []
    for layer in (reference, fast):
        leaves = [t.detach().clone().requires_grad_() for t in [x, *_states(hx)]]
        h_in = tuple(leaves[1:]) if isinstance(hx, tuple) else leaves[1]
        dt_in = dt.detach().clone().requires_grad_() if timespans == "grad" else dt
        y, h_n = layer(leaves[0], h_in, dt_in)
        generator = torch.Generator().manual_seed(3)
        loss = sum((t * torch.randn(t.shape, generator=generator, dtype=dtype)).sum() for t in [y, *_states(h_n)])
        inputs = leaves + ([dt_in] if timespans == "grad" else [])
        parameters = [p for p in layer.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, inputs + parameters, allow_unused=True)
        results.append((y, _states(h_n), grads))

    (y_ref, h_ref, g_ref), (y, h, g) = results
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert (y - y_ref).abs().max().item() < out_tol, "output"
    for got, want in zip(h, h_ref, strict=True):
        assert got.shape == want.shape and (got - want).abs().max().item() < out_tol, "final state"
    names = ["input", "hx", "cx"][: 1 + len(h_ref)] + (["timespans"] if timespans == "grad" else [])
    names += [name for name, p in reference.named_parameters() if p.requires_grad]
    for name, got, want in zip(names, g, g_ref, strict=True):
        assert (got is None) == (want is None), name
        if want is not None:
            assert _rel_err(got, want) < grad_tol, f"gradient of {name}: {_rel_err(got, want):.2e}"


# ------------------------------------------------------------------------------------------ CfC


@pytest.mark.parametrize("implementation", CFC_IMPLEMENTATIONS)
@pytest.mark.parametrize("timespans", ["none", "per_sample"])
@pytest.mark.parametrize("backbone_layers", [0, 1, 2])
@pytest.mark.parametrize("mode", ["default", "pure", "no_gate"])
def test_cfc_cell_math_equals_reference(implementation, mode, backbone_layers, timespans):
    torch.manual_seed(0)
    model = CfC(I, 6, mode=mode, backbone_layers=backbone_layers, backbone_units=5)
    _check_against_reference(_off_the_kinks(model), implementation, timespans=timespans)


@pytest.mark.parametrize("implementation", CFC_IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", ["default", "pure", "no_gate"])
@pytest.mark.parametrize("proj_size", [None, 2])
@pytest.mark.parametrize("wiring", ["dense", "fc", "autoncp"])
def test_cfc_wiring_and_projection_equal_reference(implementation, wiring, proj_size, mode):
    torch.manual_seed(1)
    units = {"dense": 6, "fc": tl_wirings.FullyConnected(6, 2), "autoncp": tl_wirings.AutoNCP(9, 2)}[wiring]
    model = CfC(I, units, proj_size=proj_size, mode=mode)
    _check_against_reference(_off_the_kinks(model), implementation, timespans="per_sample")


@pytest.mark.parametrize("implementation", CFC_IMPLEMENTATIONS)
@pytest.mark.parametrize("B,T", [(1, 1), (1, 5), (3, 1), (3, 5), (8, 1), (8, 5)])
def test_cfc_batch_and_length_equal_reference(implementation, B, T):
    torch.manual_seed(2)
    # both kinds across the sizes
    model = CfC(I, tl_wirings.AutoNCP(8, 2)) if B == 3 else CfC(I, 6, backbone_units=5)
    _check_against_reference(model, implementation, B=B, T=T, timespans="per_sample")


@pytest.mark.parametrize("implementation", CFC_IMPLEMENTATIONS)
@pytest.mark.parametrize("layout,timespans", [("time_major", "per_sample"), ("unbatched", "per_sample"),
                                              ("batch_first", "scalar"), ("batch_first", "grad")])
def test_cfc_layouts_and_timespans_equal_reference(implementation, layout, timespans):
    torch.manual_seed(3)
    batch_first = layout != "time_major"
    model = CfC(I, tl_wirings.AutoNCP(8, 2), batch_first=batch_first)
    _check_against_reference(model, implementation, layout=layout, timespans=timespans)
    last_only = CfC(I, 5, proj_size=2, return_sequences=False, batch_first=batch_first, backbone_units=4)
    _check_against_reference(last_only, implementation, layout=layout, timespans=timespans)
    wired_last = CfC(I, tl_wirings.AutoNCP(8, 2), return_sequences=False, batch_first=batch_first, mode="pure")
    _check_against_reference(_off_the_kinks(wired_last), implementation, layout=layout, timespans=timespans)


# ------------------------------------------------------------------------------------------ LTC

LTC_WIRINGS = {
    "fc": lambda: tl_wirings.FullyConnected(6, 2),
    "autoncp": lambda: tl_wirings.AutoNCP(9, 2),
    "random": lambda: tl_wirings.Random(7, 3, sparsity_level=0.5),
}


@pytest.mark.parametrize("implementation", LTC_IMPLEMENTATIONS)
@pytest.mark.parametrize("timespans", ["none", "per_sample"])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("mappings", [("affine", "affine"), ("linear", None), (None, "linear")])
@pytest.mark.parametrize("wiring", sorted(LTC_WIRINGS))
def test_ltc_equals_reference(implementation, wiring, mappings, implicit, timespans):
    torch.manual_seed(4)
    model = LTC(I, LTC_WIRINGS[wiring](), input_mapping=mappings[0], output_mapping=mappings[1],
                implicit_param_constraints=implicit, ode_unfolds=3)  # fmt: skip
    with torch.no_grad():  # non-trivial mappings: the identity init would hide a swapped w/b
        for name, parameter in model.rnn_cell.named_parameters():
            if name.startswith(("input_", "output_")):
                parameter.add_(torch.randn_like(parameter) * 0.3)
    _check_against_reference(model, implementation, timespans=timespans)


@pytest.mark.parametrize("implementation", LTC_IMPLEMENTATIONS)
@pytest.mark.parametrize("B,T", [(1, 1), (1, 5), (3, 1), (3, 5), (8, 1), (8, 5)])
def test_ltc_batch_and_length_equal_reference(implementation, B, T):
    torch.manual_seed(5)
    _check_against_reference(LTC(I, tl_wirings.AutoNCP(8, 2)), implementation, B=B, T=T, timespans="per_sample")


@pytest.mark.parametrize("implementation", LTC_IMPLEMENTATIONS)
@pytest.mark.parametrize("layout,timespans", [("time_major", "per_sample"), ("unbatched", "none"),
                                              ("batch_first", "scalar"), ("batch_first", "grad")])
def test_ltc_layouts_and_timespans_equal_reference(implementation, layout, timespans):
    torch.manual_seed(6)
    batch_first = layout != "time_major"
    model = LTC(I, tl_wirings.AutoNCP(8, 2), batch_first=batch_first, ode_unfolds=2)
    _check_against_reference(model, implementation, layout=layout, timespans=timespans)
    last_only = LTC(I, tl_wirings.FullyConnected(5, 2), batch_first=batch_first, return_sequences=False)
    _check_against_reference(last_only, implementation, layout=layout, timespans=timespans)


# ------------------------------------------------------------------- coverage gaps and "auto"


@pytest.mark.parametrize("implementation", CFC_IMPLEMENTATIONS + LTC_IMPLEMENTATIONS[1:])
def test_mixed_memory_runs_the_kernels_except_jit_and_compile(implementation):
    layer_class = LTC if implementation in ("native", "torch-sparse", "torch-dense") else CfC
    torch.manual_seed(7)
    model = layer_class(I, tl_wirings.AutoNCP(8, 2), mixed_memory=True, implementation=implementation)
    if implementation in ("jit", "compile"):
        with pytest.raises(ValueError, match="no mixed-memory form"):
            model(torch.zeros(2, 3, I))
        return
    assert model.resolve_implementation(torch.zeros(2, 3, I)) != "reference"
    _check_against_reference(model, implementation, timespans="per_sample")


def test_backbone_dropout_is_covered_in_eval_mode_only():
    torch.manual_seed(8)
    model = CfC(I, 6, backbone_layers=2, backbone_units=5, backbone_dropout=0.3)
    x = torch.randn(2, 4, I)
    assert model.resolve_implementation(x) == "reference"  # training: dropout is active
    model.implementation = "function"  # allowed: the model may be used in eval mode
    with pytest.raises(ValueError, match="backbone_dropout > 0 in training mode"):
        model(x)
    model.eval()
    assert model.resolve_implementation(x) == "function"
    model.implementation = "auto"
    assert model.resolve_implementation(x) == "function"
    _check_against_reference(model, "auto")


def test_unknown_implementation_names_the_choices():
    with pytest.raises(ValueError, match=r"implementation must be one of \{'auto', 'reference', 'function'"):
        CfC(I, 4, implementation="fused")
    with pytest.raises(ValueError, match=r"implementation must be one of \{'auto', 'reference', 'native'"):
        LTC(I, 4).implementation = "function"


@pytest.mark.parametrize("wiring", ["dense", "autoncp"])
def test_auto_picks_the_kernels_per_device(monkeypatch, wiring):
    """CPU: the C kernels; any other device (meta stands in for CUDA here): torch-op kernels only,
    never a ctypes call on device memory; LTC without native kernels: torch by wiring density."""
    cfc = CfC(I, 6 if wiring == "dense" else tl_wirings.AutoNCP(9, 2))
    ltc = LTC(I, tl_wirings.AutoNCP(12, 2) if wiring == "autoncp" else tl_wirings.FullyConnected(6))
    cpu, meta = torch.zeros(2, 3, I), torch.zeros(2, 3, I, device="meta")
    assert cfc.resolve_implementation(cpu) == "function"
    assert cfc.resolve_implementation(meta) == "function-torch"
    torch_ltc = "torch-sparse" if wiring == "autoncp" else "torch-dense"
    assert ltc.resolve_implementation(meta) == torch_ltc
    if native.available():
        assert ltc.resolve_implementation(cpu) == "native"
    monkeypatch.setattr(native, "available", lambda: False)
    assert ltc.resolve_implementation(cpu) == torch_ltc


@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_auto_does_not_run_the_reference_loop(monkeypatch, layer_class):
    """The kernels really run: the cell's per-step `_step` (the reference loop's body) is broken."""
    model = layer_class(I, tl_wirings.AutoNCP(8, 2))
    expected, _ = model(torch.ones(2, 4, I))

    def no_step(*args):
        raise AssertionError("the reference loop ran")

    monkeypatch.setattr(model.rnn_cell, "_step", no_step)
    got, _ = model(torch.ones(2, 4, I))
    assert torch.equal(got, expected)
    model.implementation = "reference"
    with pytest.raises(AssertionError, match="reference loop ran"):
        model(torch.ones(2, 4, I))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks become constants
@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_tracing_takes_the_reference_loop(monkeypatch, layer_class):
    torch.manual_seed(9)
    model = layer_class(I, tl_wirings.AutoNCP(8, 2)).eval()
    x = torch.randn(2, 4, I)
    chosen = []
    resolve = layer_class.resolve_implementation

    def spy(self, x_BTI):
        chosen.append(resolve(self, x_BTI))
        return chosen[-1]

    monkeypatch.setattr(layer_class, "resolve_implementation", spy)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    assert chosen == ["reference"]
    torch.testing.assert_close(traced(x)[0], model(x)[0], atol=1e-5, rtol=0)
    assert chosen[-1] != "reference"  # eager again: the kernels


@pytest.mark.parametrize("name", ["cfc", "ltc"])
def test_implementation_is_a_runtime_choice_not_saved(tmp_path, name):
    model = build_model(name, I, 2, units=8, implementation="reference")
    assert "implementation" not in model.config()
    loaded = load_model(save_model(model, tmp_path / "model.pt"))
    assert loaded.implementation == "auto"
    x = torch.randn(2, 5, I)
    torch.testing.assert_close(loaded(x)[0], model(x)[0], atol=1e-5, rtol=0)
    replica = copy.deepcopy(model)
    assert replica.implementation == "reference"
    del replica.__dict__["_implementation"]  # a module pickled before the attribute existed
    assert replica.implementation == "auto"


@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_double_backward_through_the_kernels_is_refused_not_wrong(layer_class):
    """The fused backwards are first-order: create_graph=True must raise, never return wrong
    second derivatives; the reference loop supports it."""
    model = layer_class(I, 6)
    x = torch.randn(2, 4, I, requires_grad=True)
    y, h = model(x)
    torch.autograd.grad((y.square().sum() + h.sum()), x)  # first order: fine
    y, _ = model(x)
    with pytest.raises(RuntimeError, match="first-order.*implementation='reference'"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)
    model.implementation = "reference"
    y, _ = model(x)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    g.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# -------------------------------------------------------------------------- dtypes and autocast


@pytest.mark.parametrize("implementation", ["auto", "function", pytest.param("native", marks=needs_native),
                                            "torch-sparse"])
def test_float64_in_float64_out_through_the_kernels(implementation):
    layer_class = CfC if implementation in ("auto", "function") else LTC
    torch.manual_seed(10)
    model = layer_class(I, tl_wirings.AutoNCP(8, 2) if layer_class is LTC else 6, implementation="auto")
    _check_against_reference(_off_the_kinks(model), implementation, dtype=torch.float64, timespans="per_sample")
    if implementation == "auto":
        other = LTC(I, tl_wirings.AutoNCP(8, 2)).double()
        _check_against_reference(other, "auto", dtype=torch.float64, timespans="per_sample")


@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_bf16_autocast_runs_the_kernels_and_stays_finite(layer_class):
    torch.manual_seed(12)
    model = layer_class(I, tl_wirings.AutoNCP(8, 2))
    x = torch.randn(4, 6, I)
    assert model.resolve_implementation(x) != "reference"
    loss32 = model(x)[0].float().square().mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = model(x, timespans=torch.rand(4, 6) + 0.5)
        loss = y.float().square().mean()
    loss.backward()
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert abs(loss.item() - loss32.item()) < 0.1  # bf16 keeps ~3 digits; dt differs (0.5..1.5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("layer_class", [CfC, LTC])
def test_bf16_model_keeps_bf16(layer_class):
    model = layer_class(I, tl_wirings.AutoNCP(8, 2)).to(torch.bfloat16)
    y, h = model(torch.randn(2, 5, I, dtype=torch.bfloat16))
    assert y.dtype == h.dtype == torch.bfloat16 and torch.isfinite(y).all()


# ------------------------------------------------------------------------------- ncps and training

ncps_torch = pytest.importorskip("ncps.torch")
ncps_wirings = pytest.importorskip("ncps.wirings")
from _parity import compare_runs, random_state  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("units", ["dense", "autoncp"])
@pytest.mark.parametrize("mode", ["default", "pure", "no_gate"])
def test_cfc_auto_matches_ncps(mode, units, dtype):
    torch.manual_seed(13)
    make = (lambda m: 8) if units == "dense" else (lambda m: m.AutoNCP(9, 2))  # noqa: E731
    kwargs = {"backbone_units": 6, "backbone_layers": 2} if units == "dense" else {}
    reference = ncps_torch.CfC(I, make(ncps_wirings), mode=mode, proj_size=2, **kwargs)
    ours = CfC(I, make(tl_wirings), mode=mode, proj_size=2, implementation="auto", **kwargs)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 5, I)
    assert ours.resolve_implementation(x) == "function"
    compare_runs(reference, ours, x, random_state(False, 3, ours.state_size), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("wiring", ["fc", "autoncp"])
def test_ltc_auto_matches_ncps(wiring, implicit, dtype):
    torch.manual_seed(14)
    make = (lambda m: m.FullyConnected(6, 2)) if wiring == "fc" else (lambda m: m.AutoNCP(10, 2))  # noqa: E731
    reference = ncps_torch.LTC(I, make(ncps_wirings), implicit_param_constraints=implicit)
    ours = LTC(I, make(tl_wirings), implicit_param_constraints=implicit, implementation="auto")
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 5, I)
    assert ours.resolve_implementation(x) != "reference"
    compare_runs(reference, ours, x, random_state(False, 3, ours.state_size), dtype)


@pytest.mark.parametrize("name", ["cfc", "ltc"])
def test_twenty_adam_steps_end_at_the_same_parameters(name):
    """Training with "auto" and with "reference" from one seed: the last parameters agree to
    1e-4. Adam normalises each step, so per-step gradient differences of ~1e-6 relative move
    parameters by ~lr·1e-6 at most; 20 steps stay far below 1e-4."""
    finals = []
    for implementation in ("reference", "auto"):
        torch.manual_seed(15)
        model = build_model(name, I, 2, units=8, implementation=implementation)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(16)
        for _ in range(20):
            x = torch.randn(4, 6, I, generator=data)
            target = torch.randn(4, 6, 2, generator=data)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x)[0], target)
            loss.backward()
            optimizer.step()
        finals.append(dict(model.named_parameters()))
    for key, want in finals[0].items():
        assert (finals[1][key] - want).abs().max().item() < 1e-4, key


@pytest.mark.parametrize("implementation", LTC_IMPLEMENTATIONS)
def test_ltc_raw_negative_parameters_equal_reference_relatively(implementation):
    """Explicit constraints with negative raw cm and w (the case of test_parity_ltc): denominators
    near 0 make outputs ~1e5, so the kernels' other summation order is compared relatively, 1e-5."""
    torch.manual_seed(5)
    model = LTC(I, tl_wirings.FullyConnected(6, 2), implicit_param_constraints=False)
    with torch.no_grad():
        model.rnn_cell.cm[:2] = -0.05
        model.rnn_cell.w[0, :3] = -0.2
    fast = copy.deepcopy(model)
    fast.implementation = implementation
    model.implementation = "reference"
    x, h0 = torch.randn(3, 5, I), torch.randn(3, 6)
    (y_ref, h_ref), (y, h) = model(x, h0), fast(x, h0)
    assert _rel_err(y, y_ref) < 1e-5 and _rel_err(h, h_ref) < 1e-5
