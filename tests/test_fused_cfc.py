"""Fused CfC (nn/cfc_fused.py, nn/cfc_fused_variants.py) against its slow control and ncps 1.0.1.

Start here: every implementation of `cfc_sequence` must equal `cfc_sequence_reference` (the
cell's step looped over T) in outputs and in the gradient of every argument, for the three
modes, backbones of 0-3 layers with each activation, and with/without per-sample timespans.
Then: the same numbers as ncps CfC (dense and wired, weights copied), float64 gradcheck of the
hand-written backward, dtype and autocast, and a compile counter proving that no variant
recompiles for a new sequence length (field case A07).

Tolerances: float32 outputs 1e-5 absolute and gradients 1e-4 relative to the largest entry:
the fused path sums the same products in another order (one matmul over B·T rows for weight
gradients) and its C tanh is a < 2 ulp polynomial; observed ~5e-7 for both.
"""

from __future__ import annotations

import pytest
import torch

from torchliquid.nn import _fused_native as native
from torchliquid.nn import cfc_fused, cfc_fused_variants

ncps_torch = pytest.importorskip("ncps.torch")
ncps_wirings = pytest.importorskip("ncps.wirings")

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.failure()}")
IMPLEMENTATIONS = [pytest.param("function", marks=needs_native), "function-torch", "jit"]
BACKBONES = [("lecun_tanh", 1), ("tanh", 2), ("relu", 1), ("gelu", 2), ("silu", 3), ("lecun_tanh", 0)]


def _cell_params(cell) -> dict:
    """cfc_sequence's arguments from an ncps (or torchliquid) CfCCell, heads concatenated."""
    layers = [m for m in (cell.backbone or []) if isinstance(m, torch.nn.Linear)]
    mask = getattr(cell, "sparsity_mask", None)
    masked = (lambda w: w) if mask is None else (lambda w: w * mask)  # noqa: E731
    if cell.mode == "pure":
        head_w, head_b = masked(cell.ff1.weight), cell.ff1.bias
        extra = {"w_tau_1U": cell.w_tau, "a_1U": cell.A}
    else:
        heads = [cell.ff1, cell.ff2, cell.time_a, cell.time_b]
        head_w = torch.cat([masked(h.weight) if i < 2 else h.weight for i, h in enumerate(heads)])
        head_b = torch.cat([h.bias for h in heads])
        extra = {}
    return dict(
        backbone_weights=[l.weight for l in layers], backbone_biases=[l.bias for l in layers],
        head_weight_XZ=head_w, head_bias_X=head_b, mode=cell.mode, **extra,
    )  # fmt: skip


def _model(mode, activation, layers, I=4, U=8, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = ncps_torch.CfC(I, U, mode=mode, activation=activation, backbone_layers=layers or 1,
                           backbone_units=16).to(dtype)  # fmt: skip
    cell = model.rnn_cell
    if layers == 0:  # ncps.CfC cannot build 0 layers; its cell can
        cell = ncps_torch.CfCCell(I, U, mode, activation, 0, 0).to(dtype)
    if mode == "pure":  # ncps initialises w_tau = 0 and A = 1: move off the kinks of |.|
        with torch.no_grad():
            cell.w_tau.normal_()
            cell.A.normal_()
    return model, cell


def _run(fn, x, h0, dt, params, activation, **kw):
    out = fn(x, h0, dt, activation=activation, **params, **kw)
    weights_U = torch.linspace(-1.0, 1.0, out.shape[-1], dtype=out.dtype)
    loss = (out * weights_U).sum() + out.square().sum()
    leaves = [x, h0] + [p for p in _leaves(params)]
    return out, torch.autograd.grad(loss, leaves)


def _leaves(params):
    for key in ("backbone_weights", "backbone_biases"):
        yield from params[key]
    for key in ("head_weight_XZ", "head_bias_X", "w_tau_1U", "a_1U"):
        if key in params:
            yield params[key]


def _assert_close(out, ref, grads, ref_grads, out_tol=1e-5, grad_tol=1e-4):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert (out - ref).abs().max().item() < out_tol
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        err = (g - r).abs().max().item() / (r.abs().max().item() + 1e-30)
        assert err < grad_tol, f"gradient {i}: relative error {err:.2e}"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("activation,layers", BACKBONES)
@pytest.mark.parametrize("timed", [False, True])
def test_matches_reference_loop(implementation, mode, activation, layers, timed):
    _, cell = _model(mode, activation, layers)
    params = _cell_params(cell)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 6, 4, generator=g, requires_grad=True)
    h0 = torch.randn(5, 8, generator=g, requires_grad=True)
    dt = torch.rand(5, 6, 1, generator=g) + 0.25 if timed else None
    ref, ref_grads = _run(cfc_fused_variants.cfc_sequence_reference, x, h0, dt, params, activation)
    out, grads = _run(cfc_fused.cfc_sequence, x, h0, dt, params, activation, implementation=implementation)
    _assert_close(out, ref, grads, ref_grads)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("B,T", [(1, 1), (3, 17), (33, 2)])
def test_batch_and_length_sweep(implementation, B, T):
    _, cell = _model("default", "lecun_tanh", 1)
    params = _cell_params(cell)
    x = torch.randn(B, T, 4, requires_grad=True)
    h0 = torch.zeros(B, 8, requires_grad=True)
    ref, ref_grads = _run(cfc_fused_variants.cfc_sequence_reference, x, h0, None, params, "lecun_tanh")
    out, grads = _run(cfc_fused.cfc_sequence, x, h0, None, params, "lecun_tanh", implementation=implementation)
    _assert_close(out, ref, grads, ref_grads)


@needs_native
@pytest.mark.parametrize("mode,activation,layers", [("default", "lecun_tanh", 1), ("no_gate", "tanh", 2),
                                                    ("pure", "lecun_tanh", 0), ("default", "tanh", 3)])
@pytest.mark.parametrize("timed,last", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("B,I", [(37, 5), (47, 5), (64, 40), (130, 3)])  # every row remainder of MR 6 or 8
def test_c_loop_splits_the_batch_over_threads_exactly(mode, activation, layers, timed, last, B, I):
    """The C loop gives each thread a block of rows (>= 16 rows each) for the whole sequence,
    with its own packed-GEMM kernel; uneven blocks, wide inputs (one input-half GEMM over all
    steps, I >= WIDE_INPUT) and odd widths (a partial column panel) must change nothing."""
    assert cfc_fused._Plan(mode, activation, layers, True, I, torch.float32, last).c_loop
    _, cell = _model(mode, activation, layers, I=I, U=9)
    params = _cell_params(cell)
    x = torch.randn(B, 6, I, requires_grad=True)
    h0 = torch.randn(B, 9, requires_grad=True)
    dt = torch.rand(B, 6, 1) + 0.25 if timed else None
    pick = (lambda h: h[:, -1:]) if last else (lambda h: h)  # noqa: E731
    ref_fn = lambda *a, **k: pick(cfc_fused_variants.cfc_sequence_reference(*a, **k))  # noqa: E731
    fused = lambda *a, **k: cfc_fused.cfc_sequence(*a, **k, return_sequences=not last)  # noqa: E731
    ref, ref_grads = _run(ref_fn, x, h0, dt, params, activation)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # 3 blocks of rows where B allows (the suite otherwise runs 1 thread)
    try:
        out, grads = _run(fused, x, h0, dt, params, activation, implementation="function")
    finally:
        torch.set_num_threads(threads)
    _assert_close(out.view_as(ref), ref, grads, ref_grads)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode,timed", [("default", False), ("no_gate", True), ("pure", True)])
def test_return_last_state_only(implementation, mode, timed):
    """return_sequences=False: h_T only, and a backward that feeds the last step alone."""
    _, cell = _model(mode, "lecun_tanh", 1)
    params = _cell_params(cell)
    x = torch.randn(3, 6, 4, requires_grad=True)
    h0 = torch.randn(3, 8, requires_grad=True)
    dt = torch.rand(3, 6, 1) + 0.25 if timed else None
    last = lambda *a, **k: cfc_fused_variants.cfc_sequence_reference(*a, **k)[:, -1:]  # noqa: E731
    ref, ref_grads = _run(last, x, h0, dt, params, "lecun_tanh")
    fused = lambda *a, **k: cfc_fused.cfc_sequence(*a, **k, return_sequences=False).unsqueeze(1)  # noqa: E731
    out, grads = _run(fused, x, h0, dt, params, "lecun_tanh", implementation=implementation)
    _assert_close(out, ref, grads, ref_grads)


def test_gradient_with_time_major_strides():
    """The C backward reads dL/dh in place with its strides (here a transposed (T, B, U) grad)."""
    _, cell = _model("default", "lecun_tanh", 1)
    params = _cell_params(cell)
    x = torch.randn(3, 5, 4)
    weights_TBU = torch.randn(5, 3, 8)
    grads = []
    for fn in (cfc_fused.cfc_sequence, cfc_fused_variants.cfc_sequence_reference):
        out = fn(x, torch.zeros(3, 8), None, **params)
        leaves = list(_leaves(params))
        grads.append(torch.autograd.grad((out.transpose(0, 1) * weights_TBU).sum(), leaves))
    for g, r in zip(*grads):
        assert (g - r).abs().max().item() < 1e-4 * (r.abs().max().item() + 1e-30)


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_reference_equals_ncps_cfc(mode):
    """The control itself is ncps: CfC (no projection) and our loop agree on outputs."""
    model, cell = _model(mode, "lecun_tanh", 1)
    x = torch.randn(3, 9, 4)
    expected, _ = model(x)
    got = cfc_fused.cfc_sequence(x, torch.zeros(3, 8), None, activation="lecun_tanh", **_cell_params(cell))
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("mode", ["default", "pure"])
def test_wired_cfc_layer_by_layer_equals_ncps(mode):
    """A wired CfC is its layers in sequence: layer l at step t reads layer l-1 at step t, so
    running each layer over the whole sequence (masked heads, no backbone) is exact."""
    torch.manual_seed(5)
    model = ncps_torch.CfC(5, ncps_wirings.AutoNCP(14, 2), mode=mode)
    x = torch.randn(3, 7, 5)
    expected, _ = model(x)
    inputs = x
    for cell in model.rnn_cell._layers:
        inputs = cfc_fused.cfc_sequence(
            inputs, torch.zeros(3, cell.hidden_size), None, activation="lecun_tanh", **_cell_params(cell)
        )
    assert (inputs - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("implementation", ["function", "function-torch"])
@pytest.mark.parametrize("mode,layers,timed", [("default", 1, True), ("no_gate", 2, True), ("pure", 0, True),
                                               ("default", 0, True), ("default", 1, False), ("no_gate", 0, False)])
def test_gradcheck_float64(implementation, mode, layers, timed):
    """Untimed cases run the merged time gate (one head time_a + time_b, dt = 1)."""
    if implementation == "function" and not native.available():
        pytest.skip(f"no native kernels: {native.failure()}")
    _, cell = _model(mode, "lecun_tanh", layers, I=3, U=4, dtype=torch.float64)
    params = _cell_params(cell)
    leaves = [p.detach().clone().requires_grad_() for p in _leaves(params)]
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    dt = torch.rand(2, 3, 1, dtype=torch.float64) + 0.5 if timed else None
    nb = len(params["backbone_weights"])

    def fn(x, h0, *values):
        kw = {"backbone_weights": list(values[:nb]), "backbone_biases": list(values[nb : 2 * nb]),
              "head_weight_XZ": values[2 * nb], "head_bias_X": values[2 * nb + 1], "mode": mode}  # fmt: skip
        if mode == "pure":
            kw.update(w_tau_1U=values[2 * nb + 2], a_1U=values[2 * nb + 3])
        return cfc_fused.cfc_sequence(x, h0, dt, **kw, implementation=implementation)

    assert torch.autograd.gradcheck(fn, (x, h0, *leaves), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_output_dtype_follows_input(dtype):
    _, cell = _model("default", "lecun_tanh", 1)
    params = {k: (v if not isinstance(v, torch.Tensor) else v.detach()) for k, v in _cell_params(cell).items()}
    params["backbone_weights"] = [w.detach() for w in params["backbone_weights"]]
    params["backbone_biases"] = [b.detach() for b in params["backbone_biases"]]
    cast = {k: ([t.to(dtype) for t in v] if isinstance(v, list) else v.to(dtype) if isinstance(v, torch.Tensor) else v)
            for k, v in params.items()}  # fmt: skip
    x = torch.randn(2, 6, 4)
    ref = cfc_fused.cfc_sequence(x, torch.zeros(2, 8), None, **params)
    out = cfc_fused.cfc_sequence(x.to(dtype), torch.zeros(2, 8, dtype=dtype), None, **cast)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max().item() < (1e-5 if dtype == torch.float64 else 3e-2)


@pytest.mark.parametrize("implementation", ["function", "function-torch"])
def test_autocast_bf16_loss_is_finite_and_close(implementation):
    _, cell = _model("default", "lecun_tanh", 1)
    params = _cell_params(cell)
    x = torch.randn(4, 10, 4)
    loss32 = cfc_fused.cfc_sequence(x, torch.zeros(4, 8), None, **params, implementation=implementation).square().mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cfc_fused.cfc_sequence(x, torch.zeros(4, 8), None, **params, implementation=implementation)
        loss16 = out.float().square().mean()
    loss16.backward()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(loss16) and abs(loss16.item() - loss32.item()) < 1e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cell.parameters())


def test_compiled_step_does_not_recompile_for_new_lengths(monkeypatch):
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(len(gm.graph.nodes))
        return gm.forward

    monkeypatch.setattr(cfc_fused_variants, "COMPILE_BACKEND", counting_backend)
    cfc_fused_variants.reset_compiled()
    torch._dynamo.reset()
    _, cell = _model("default", "lecun_tanh", 1)
    params = _cell_params(cell)
    try:
        for T, B in [(3, 2), (5, 2), (8, 3), (13, 4), (4, 2)]:
            x = torch.randn(B, T, 4)
            out = cfc_fused.cfc_sequence(x, torch.zeros(B, 8), None, **params, implementation="compile")
            ref = cfc_fused_variants.cfc_sequence_reference(x, torch.zeros(B, 8), None, **params)
            assert (out - ref).abs().max().item() < 1e-5
    finally:
        cfc_fused_variants.reset_compiled()
    # One graph for every T and B, plus one when the state first requires grad (h0 does not,
    # the states after step 0 do): a constant, not one per sequence length.
    assert 1 <= len(compiles) <= 2, compiles


def test_scripted_loop_is_scripted_once_for_all_lengths():
    _, cell = _model("no_gate", "tanh", 2)
    params = _cell_params(cell)
    cfc_fused.cfc_sequence(torch.randn(2, 3, 4), torch.zeros(2, 8), None, activation="tanh", **params, implementation="jit")
    scripted = cfc_fused_variants._scripted
    for T in (1, 7, 20):
        x = torch.randn(2, T, 4)
        out = cfc_fused.cfc_sequence(x, torch.zeros(2, 8), None, activation="tanh", **params, implementation="jit")
        ref = cfc_fused_variants.cfc_sequence_reference(x, torch.zeros(2, 8), None, activation="tanh", **params)
        assert out.shape == (2, T, 8) and (out - ref).abs().max().item() < 1e-5
    assert cfc_fused_variants._scripted is scripted


def test_argument_errors_name_the_choices():
    _, cell = _model("default", "lecun_tanh", 1)
    params = _cell_params(cell)
    x, h0 = torch.randn(2, 3, 4), torch.zeros(2, 8)
    with pytest.raises(ValueError, match="implementation must be one of"):
        cfc_fused.cfc_sequence(x, h0, None, **params, implementation="fast")
    with pytest.raises(ValueError, match="mode must be one of"):
        cfc_fused.cfc_sequence(x, h0, None, **{**params, "mode": "gated"})
    with pytest.raises(ValueError, match="w_tau_1U and a_1U"):
        cfc_fused.cfc_sequence(x, h0, None, **{**params, "mode": "pure"})


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode,timed", [("default", False), ("default", True), ("no_gate", False), ("pure", True)])
def test_heads_as_lists_equal_heads_concatenated(implementation, mode, timed):
    """The heads may arrive as [ff1, ff2, time_a, time_b] (the layers' path: joined outside
    autograd, each given its slice of the gradient): the same numbers, to the bit, as one
    concatenated tensor."""
    _, cell = _model(mode, "lecun_tanh", 1)
    heads = [cell.ff1] if mode == "pure" else [cell.ff1, cell.ff2, cell.time_a, cell.time_b]
    listed = {**_cell_params(cell), "head_weight_XZ": [h.weight for h in heads], "head_bias_X": [h.bias for h in heads]}
    x = torch.randn(5, 6, 4, requires_grad=True)
    h0 = torch.randn(5, 8, requires_grad=True)
    dt = torch.rand(5, 6, 1) + 0.25 if timed else None
    results = []
    for params in (_cell_params(cell), listed):
        out = cfc_fused.cfc_sequence(x, h0, dt, activation="lecun_tanh", **params, implementation=implementation)
        leaves = [x, h0, *[p for h in heads for p in (h.weight, h.bias)]]
        results.append((out, torch.autograd.grad((out * out.detach().sin()).sum(), leaves)))
    (out_cat, grads_cat), (out_list, grads_list) = results
    # TorchScript re-optimises its graph over the first calls (other rounding): close, not equal
    exact = {} if implementation == "jit" else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(out_list, out_cat, **exact)
    for i, (a, b) in enumerate(zip(grads_list, grads_cat)):
        torch.testing.assert_close(a, b, **exact, msg=lambda m, i=i: f"gradient {i}: {m}")


def test_listed_time_heads_get_gradients_that_share_no_memory():
    """time_a and time_b receive the same merged-gate gradient: as two tensors, or accumulating
    into one .grad (gradient accumulation) would silently change the other."""
    _, cell = _model("default", "lecun_tanh", 1)
    heads = [cell.ff1, cell.ff2, cell.time_a, cell.time_b]
    params = {**_cell_params(cell), "head_weight_XZ": [h.weight for h in heads], "head_bias_X": [h.bias for h in heads]}
    cfc_fused.cfc_sequence(torch.randn(3, 4, 4), torch.zeros(3, 8), None, **params).sum().backward()
    before = cell.time_b.weight.grad.clone()
    assert torch.equal(cell.time_a.weight.grad, before)
    cell.time_a.weight.grad.add_(1.0)
    assert torch.equal(cell.time_b.weight.grad, before)


def test_head_lists_of_the_wrong_length_are_refused():
    _, cell = _model("default", "lecun_tanh", 1)
    params = {**_cell_params(cell), "head_weight_XZ": [cell.ff1.weight, cell.ff2.weight], "head_bias_X": [cell.ff1.bias, cell.ff2.bias]}
    with pytest.raises(ValueError, match=r"\[ff1, ff2, time_a, time_b\] lists .* got 2 and 2"):
        cfc_fused.cfc_sequence(torch.randn(2, 3, 4), torch.zeros(2, 8), None, **params)
