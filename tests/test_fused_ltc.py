"""Fused LTC (nn/ltc_fused.py) against its slow control and against ncps 1.0.1.

Start here: every backend of `ltc_sequence` must equal `ltc_sequence_reference` (functional.py
looped over T with plain autograd) for outputs and for the gradient of every argument, on dense
(FullyConnected) and sparse (AutoNCP) wirings, with and without per-sample timespans. Then: the
same numbers as an ncps LTC whose parameters we copy, float64 gradcheck of the hand-written
backwards, the O(B·T·U) saved-memory claim (a byte count, not a timing), and dtype handling.

Tolerances: float32 outputs 1e-5 absolute (the fused kernels sum the same terms in another order
and the native sigmoid's exp is a < 2 ulp polynomial: observed ~1e-6 after 6 unfolds x 9 steps);
gradients 1e-4 relative to the largest gradient entry (observed ~1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchliquid.nn import _fused_native as native
from torchliquid.nn import ltc_fused
from torchliquid.nn.sparse_synapses import SynapseIndex

ncps_torch = pytest.importorskip("ncps.torch")
ncps_wirings = pytest.importorskip("ncps.wirings")

BACKENDS = ["native", "torch-sparse", "torch-dense"]
needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.failure()}")


def _backend_param(name: str):
    return pytest.param(name, marks=needs_native) if name == "native" else name


BACKEND_PARAMS = [_backend_param(b) for b in BACKENDS]


def _wiring(kind: str, inputs: int, units: int, outputs: int):
    wiring = ncps_wirings.AutoNCP(units, outputs) if kind == "ncp" else ncps_wirings.FullyConnected(units, outputs)
    wiring.build(inputs)
    return wiring


def _params(wiring, dtype=torch.float32, seed=0) -> dict[str, torch.Tensor]:
    """Positive-constrained parameters in the ranges ncps initialises them in."""
    g = torch.Generator().manual_seed(seed)
    I, U = wiring.input_dim, wiring.units
    rand = lambda *s, lo=0.0, hi=1.0: torch.rand(*s, generator=g, dtype=torch.float64) * (hi - lo) + lo  # noqa: E731
    p = {
        "sensory_w_IU": rand(I, U, lo=0.001), "sensory_mu_IU": rand(I, U, lo=0.3, hi=0.8),
        "sensory_sigma_IU": rand(I, U, lo=3, hi=8),
        "sensory_erev_IU": torch.tensor(wiring.sensory_erev_initializer(), dtype=torch.float64),
        "sensory_mask_IU": torch.tensor(np.abs(wiring.sensory_adjacency_matrix), dtype=torch.float64),
        "cm_U": rand(U, lo=0.4, hi=0.6), "gleak_U": rand(U, lo=0.001), "vleak_U": rand(U, lo=-0.2, hi=0.2),
        "w_UU": rand(U, U, lo=0.001), "mu_UU": rand(U, U, lo=0.3, hi=0.8), "sigma_UU": rand(U, U, lo=3, hi=8),
        "erev_UU": torch.tensor(wiring.erev_initializer(), dtype=torch.float64),
        "mask_UU": torch.tensor(np.abs(wiring.adjacency_matrix), dtype=torch.float64),
    }  # fmt: skip
    return {k: v.to(dtype).requires_grad_("mask" not in k) for k, v in p.items()}


def _loss_and_grads(fn, x, v0, dt, params, **kw):
    out = fn(x, v0, dt, **params, **kw)
    # A loss that weighs units differently, so that a gradient routed to the wrong unit shows.
    weights_U = torch.linspace(-1.0, 1.0, out.shape[-1], dtype=out.dtype)
    loss = (out * weights_U).sum() + (out**2).sum()
    leaves = {"x": x, "v0": v0, **{k: p for k, p in params.items() if p.requires_grad}}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, dict(zip(leaves, grads))


def _assert_close(out, ref, grads, ref_grads, out_tol=1e-5, grad_tol=1e-4):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert (out - ref).abs().max().item() < out_tol
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item() + 1e-30
        err = (g - ref_grads[name]).abs().max().item() / scale
        assert err < grad_tol, f"grad of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("wiring_kind", ["ncp", "fc"])
@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("B,T", [(1, 1), (5, 9), (19, 3)])
def test_matches_reference_loop(backend, wiring_kind, timed, B, T):
    wiring = _wiring(wiring_kind, 5, 12, 2)
    params = _params(wiring)
    g = torch.Generator().manual_seed(B * 100 + T)
    x = torch.randn(B, T, 5, generator=g, requires_grad=True)
    v0 = torch.randn(B, 12, generator=g, requires_grad=True)
    dt = torch.rand(B, T, 1, generator=g) * 1.5 + 0.25 if timed else None
    ref, ref_grads = _loss_and_grads(ltc_fused.ltc_sequence_reference, x, v0, dt, params)
    out, grads = _loss_and_grads(ltc_fused.ltc_sequence, x, v0, dt, params, backend=backend)
    _assert_close(out, ref, grads, ref_grads)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_matches_ncps_ltc_with_autoncp(backend):
    """Copy an ncps LTC(AutoNCP) into the fused function: same outputs and parameter grads."""
    torch.manual_seed(3)
    I, U, M, B, T = 6, 16, 2, 4, 7
    model = ncps_torch.LTC(I, ncps_wirings.AutoNCP(U, M), ode_unfolds=6)  # implicit constraints
    x = torch.randn(B, T, I)
    ref_out, _ = model(x)
    ref_out.square().sum().backward()

    p = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in model.rnn_cell._params.items()}
    sp = F.softplus
    x_mapped = x * p["input_w"] + p["input_b"]
    v_BTU = ltc_fused.ltc_sequence(
        x_mapped, torch.zeros(B, U), None, sp(p["sensory_w"]), p["sensory_mu"], p["sensory_sigma"],
        p["sensory_erev"], p["sensory_sparsity_mask"], sp(p["cm"]), sp(p["gleak"]), p["vleak"],
        sp(p["w"]), p["mu"], p["sigma"], p["erev"], p["sparsity_mask"], unfolds=6, epsilon=1e-8,
        backend=backend,
    )  # fmt: skip
    out = v_BTU[:, :, :M] * p["output_w"] + p["output_b"]
    out.square().sum().backward()
    assert (out - ref_out).abs().max().item() < 1e-5
    for name, param in model.rnn_cell._params.items():
        if param.requires_grad:
            scale = param.grad.abs().max().item() + 1e-30
            assert (p[name].grad - param.grad).abs().max().item() / scale < 1e-4, name


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_gradcheck_float64(backend):
    """The hand-written recomputing backwards against finite differences, every argument."""
    wiring = _wiring("ncp", 3, 7, 1)  # 7 units: some neurons with no synapse of each kind
    params = _params(wiring, torch.float64)
    names = [k for k, v in params.items() if v.requires_grad]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    dt = torch.rand(2, 3, 1, generator=g, dtype=torch.float64) + 0.5

    def fn(x, v0, *values):
        kw = {**params, **dict(zip(names, values))}
        return ltc_fused.ltc_sequence(x, v0, dt, **kw, unfolds=2, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, v0, *[params[n] for n in names]), eps=1e-6, atol=1e-6)


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while `fn()` builds its graph."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_saved_memory_is_linear_in_batch_time_units(backend):
    """Saved-for-backward bytes: O(B·T·U) for the fused path, O(B·T·K·U²) for the reference."""
    wiring = _wiring("fc", 4, 16, 1)
    params = _params(wiring)
    U, K = 16, 6

    def measure(fn, B, T, **kw):
        x = torch.randn(B, T, 4, requires_grad=True)
        return _saved_bytes(lambda: fn(x, torch.zeros(B, U), None, **params, unfolds=K, **kw))

    f = {(b, t): measure(ltc_fused.ltc_sequence, b, t, backend=backend) for b in (8, 16) for t in (10, 20)}
    # Bytes = params + (B,U) initial state + c·B·T: the T-growth doubles when B doubles, exactly.
    per_bt = f[8, 20] - f[8, 10]  # c · 8 · 10
    assert f[16, 20] - f[16, 10] == 2 * per_bt
    # c: a few (B, T, U)/(B, T, I) tensors, at most 8 floats per unit and input.
    assert 0 < per_bt <= 8 * 8 * 10 * (U + 4) * 4
    small = f[8, 10]
    assert small - per_bt < 64 * U * U * 4  # the rest: parameter copies and v0
    reference = measure(ltc_fused.ltc_sequence_reference, 8, 10)
    assert reference > 10 * small


def test_ltc_layer_saves_at_most_ten_times_cfc_at_the_field_case_size():
    """Field case A16's right behaviour at its own size (B=32, T=64, I=8, U=128, 6 unfolds; ncps
    saves 3,225 MB for LTC there, 33 MB for CfC): the LTC layer as users build it saves <= 10x
    what the CfC layer saves, for every fused backend."""
    from torchliquid.nn import CfC, LTC

    x = torch.randn(32, 64, 8)
    torch.manual_seed(0)
    cfc_bytes = _saved_bytes(lambda: CfC(8, 128)(x))
    for backend in BACKENDS:
        torch.manual_seed(0)
        ltc = LTC(8, 128, implementation=backend)
        ltc_bytes = _saved_bytes(lambda: ltc(x))
        assert ltc_bytes <= 10 * cfc_bytes, (backend, ltc_bytes / 2**20, cfc_bytes / 2**20)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_output_dtype_follows_input(dtype):
    wiring = _wiring("ncp", 4, 10, 2)
    params = {k: v.detach() for k, v in _params(wiring).items()}
    x = torch.randn(3, 6, 4)
    ref = ltc_fused.ltc_sequence(x, torch.zeros(3, 10), None, **params)
    low = {k: v.to(dtype) for k, v in params.items()}
    out = ltc_fused.ltc_sequence(x.to(dtype), torch.zeros(3, 10, dtype=dtype), None, **low)
    assert out.dtype == dtype
    # bf16 holds ~3 significant digits: 1e-2 over T=6 covers inputs and parameters rounded to it.
    assert (out.float() - ref).abs().max().item() < (1e-5 if dtype == torch.float64 else 2e-2)


def test_autocast_bf16_loss_is_finite_and_close():
    wiring = _wiring("ncp", 4, 10, 2)
    params = _params(wiring)
    x = torch.randn(3, 8, 4)
    loss32 = ltc_fused.ltc_sequence(x, torch.zeros(3, 10), None, **params).square().mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = ltc_fused.ltc_sequence(x, torch.zeros(3, 10), None, **params).square().mean()
    loss16.backward()
    assert torch.isfinite(loss16) and abs(loss16.item() - loss32.item()) < 1e-2
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.requires_grad)


def test_auto_falls_back_to_torch_layouts_without_native(monkeypatch):
    monkeypatch.setattr(native, "supports", lambda *tensors: False)
    sparse = SynapseIndex.from_mask(torch.tensor(np.abs(_wiring("ncp", 4, 16, 2).adjacency_matrix)))
    dense = SynapseIndex.from_mask(torch.ones(16, 16))
    assert ltc_fused._choose("auto", sparse, torch.zeros(1)) == "sparse"
    assert ltc_fused._choose("auto", dense, torch.zeros(1)) == "dense"
    with pytest.raises(RuntimeError, match="backend='native' cannot run here"):
        ltc_fused._choose("native", dense, torch.zeros(1))


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="backend must be one of"):
        ltc_fused._choose("cuda-magic", SynapseIndex.from_mask(torch.ones(2, 2)), torch.zeros(1))


def test_synapse_index_is_csr_by_post():
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # (S=2, U=3)
    index = SynapseIndex.from_mask(mask)
    assert index.post_P.tolist() == [0, 2, 2] and index.pre_P.tolist() == [0, 0, 1]
    assert index.ptr_U1.tolist() == [0, 1, 1, 3]
    assert index.density == pytest.approx(0.5)
