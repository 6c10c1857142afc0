"""The shared sequence driver (torchliquid.nn.sequence), exercised through CfC and LTC.

Start here: the driver's job is to accept every documented form of input/hx/timespans, turn it
into one canonical form, and refuse everything else with a message naming the argument. So the
tests check (1) that equivalent forms give identical results, (2) that a batched run equals
running each sequence alone (ncps fails this: A01/A02), (3) dtypes are preserved (A04), and
(4) bad arguments raise the documented errors (A13).

Tolerance: different but equivalent forms run the same kernels on the same numbers, so they agree
to 1e-7 in float32 (TIGHT, the A14 requirement); batched vs one-at-a-time differs only by
BLAS blocking of different batch sizes (SOLO: 1e-6, the A01 requirement).
"""

from __future__ import annotations

import pytest
import torch

from torchliquid.nn import CfC, LTC
from torchliquid.nn.wirings import AutoNCP

TIGHT = 1e-7
SOLO = 1e-6
B, T, I, U = 3, 6, 4, 8

MODELS = {
    "cfc": lambda **kw: CfC(I, U, proj_size=2, **kw),
    "cfc_mixed": lambda **kw: CfC(I, U, mixed_memory=True, **kw),
    "cfc_wired": lambda **kw: CfC(I, AutoNCP(U + 2, 3), **kw),
    "ltc": lambda **kw: LTC(I, U, ode_unfolds=3, **kw),
    "ltc_wired_mixed": lambda **kw: LTC(I, AutoNCP(U + 2, 3), mixed_memory=True, ode_unfolds=2, **kw),
}


def _model(name, **kwargs):
    torch.manual_seed(0)
    return MODELS[name](**kwargs)


def _assert_same(a, b, atol=TIGHT):
    torch.testing.assert_close(a, b, atol=atol, rtol=0.0)


def _state(h):
    return torch.cat(h, dim=-1) if isinstance(h, tuple) else h


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unit_timespans_in_every_form_equal_no_timespans(name):
    model = _model(name)
    x = torch.randn(B, T, I)
    y_none, h_none = model(x)
    for form in (1.0, 1, torch.tensor(1.0), torch.ones(T), torch.ones(B, T), torch.ones(B, T, 1), torch.ones(B, T, dtype=torch.int64)):
        y, h = model(x, timespans=form)
        _assert_same(y, y_none)
        _assert_same(_state(h), _state(h_none))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_constant_timespans_equal_the_full_tensor(name):
    """A14: a float or 0-d tensor equals a full (B, T) tensor of that constant."""
    model = _model(name)
    x = torch.randn(B, T, I)
    y_full, h_full = model(x, timespans=torch.full((B, T), 0.37))
    for form in (0.37, torch.tensor(0.37), torch.full((T,), 0.37), torch.full((B, T, 1), 0.37)):
        y, h = model(x, timespans=form)
        _assert_same(y, y_full)
        _assert_same(_state(h), _state(h_full))
    y_other, _ = model(x, timespans=0.9)
    assert (y_other - y_full).abs().max() > 1e-3, "dt must matter, or this test cannot fail"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shared_per_step_timespans_equal_them_repeated_over_the_batch(name):
    model = _model(name)
    x, dt_T = torch.randn(B, T, I), torch.rand(T) + 0.1
    y_shared, _ = model(x, timespans=dt_T)
    y_repeated, _ = model(x, timespans=dt_T.expand(B, T))
    _assert_same(y_shared, y_repeated)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_time_major_equals_batch_first(name):
    x, dt = torch.randn(B, T, I), torch.rand(B, T) + 0.1
    y_bf, h_bf = _model(name)(x, timespans=dt)
    time_major = _model(name, batch_first=False)
    for form in (dt.T, dt.T.unsqueeze(-1)):
        y_tm, h_tm = time_major(x.transpose(0, 1), timespans=form)
        _assert_same(y_tm.transpose(0, 1), y_bf)
        _assert_same(_state(h_tm), _state(h_bf))


@pytest.mark.parametrize("batch", [B, U, U + 2], ids=["B!=U", "B==U", "B==U_wired"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_irregular_timespans_equal_each_sequence_alone(name, batch):
    """A01/A02, including B == U where ncps silently broadcasts dt along the units."""
    model = _model(name)
    x, dt = torch.randn(batch, T, I), torch.rand(batch, T) * 2 + 0.05
    y, h = model(x, timespans=dt)
    for b in range(batch):
        y_b, h_b = model(x[b : b + 1], timespans=dt[b : b + 1])
        _assert_same(y[b : b + 1], y_b, SOLO)
        _assert_same(_state(h)[b : b + 1], _state(h_b), SOLO)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unbatched_sequence_equals_a_batch_of_one(name):
    model = _model(name)
    x, dt = torch.randn(T, I), torch.rand(T) + 0.1
    y_batched, h_batched = model(x.unsqueeze(0), timespans=dt.unsqueeze(0))
    for form in (dt, dt.unsqueeze(-1)):
        y, h = model(x, timespans=form)
        assert y.shape == y_batched.shape[1:]
        _assert_same(y, y_batched[0])
        _assert_same(_state(h), _state(h_batched)[0])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_last_step_output_is_the_last_element_of_the_sequence(name):
    x = torch.randn(B, T, I)
    y_all, _ = _model(name)(x)
    y_last, _ = _model(name, return_sequences=False)(x)
    _assert_same(y_last, y_all[:, -1])
    y_unbatched, _ = _model(name, return_sequences=False)(x[0])
    _assert_same(y_unbatched, y_all[0, -1], SOLO)  # one sequence alone: another batch size's blocking


@pytest.mark.parametrize("name", sorted(MODELS))
def test_streaming_in_chunks_with_carried_state_equals_one_call(name):
    """A19: carrying h_n between chunks of one long sequence is the same computation."""
    model = _model(name)
    x, dt = torch.randn(2, 4 * T, I), torch.rand(2, 4 * T) + 0.1
    y_whole, h_whole = model(x, timespans=dt)
    h, chunks = None, []
    for start in range(0, 4 * T, T):
        y, h = model(x[:, start : start + T], h, dt[:, start : start + T])
        chunks.append(y)
    _assert_same(torch.cat(chunks, dim=1), y_whole, SOLO)
    _assert_same(_state(h), _state(h_whole), SOLO)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_and_state_keep_the_input_dtype(name, dtype):
    """A04: the default state is created in the input's dtype; nothing promotes to float32."""
    model = _model(name).to(dtype)
    y, h = model(torch.randn(B, T, I, dtype=dtype), timespans=torch.rand(B, T) + 0.1)
    assert y.dtype == dtype
    for state in h if isinstance(h, tuple) else (h,):
        assert state.dtype == dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["cfc", "ltc"])
def test_bfloat16_stays_close_to_float32_over_fifty_steps(name):
    # A04's bound: bf16 keeps ~3 significant digits; outputs are O(1) and the liquid state is a
    # contraction, so rounding errors do not grow along the sequence beyond 1e-2.
    model = _model(name)
    x = torch.randn(2, 50, I)
    y32, _ = model(x)
    y16, _ = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert (y16.float() - y32).abs().max() <= 1e-2


@pytest.mark.parametrize("name", ["cfc", "ltc_wired_mixed"])
def test_cpu_autocast_gives_a_finite_loss_and_gradients(name):
    model = _model(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = model(torch.randn(B, T, I))
        loss = y.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------
# Errors at the boundary (A13)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hx, message",
    [
        (torch.zeros(2, 7), r"hx must have shape \(2, 8\), got \(2, 7\)"),
        (torch.zeros(3, 8), r"hx must have shape \(2, 8\), got \(3, 8\)"),
        (torch.zeros(1, 8), r"hx must have shape \(2, 8\), got \(1, 8\); a batch-1 state is not broadcast"),
        (torch.zeros(8), r"hx must have shape \(2, 8\), got \(8,\)"),
    ],
)
@pytest.mark.parametrize("layer", [CfC, LTC])
def test_wrong_hx_shape_names_hx_and_the_expected_shape(layer, hx, message):
    with pytest.raises(ValueError, match=message):
        layer(4, 8)(torch.randn(2, 5, 4), hx)


def test_hx_type_and_dtype_errors_name_hx():
    x = torch.randn(2, 5, 4)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\).*mixed_memory=True"):
        CfC(4, 8, mixed_memory=True)(x, torch.zeros(2, 8))
    with pytest.raises(TypeError, match="hx must be a single tensor.*mixed_memory=False"):
        CfC(4, 8)(x, (torch.zeros(2, 8), torch.zeros(2, 8)))
    with pytest.raises(ValueError, match=r"hx\[1\] must have shape \(2, 8\), got \(2, 3\)"):
        LTC(4, 8, mixed_memory=True)(x, (torch.zeros(2, 8), torch.zeros(2, 3)))
    with pytest.raises(TypeError, match=r"hx must have the input's dtype torch.float32, got torch.float64"):
        CfC(4, 8)(x, torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="hx must be a torch.Tensor"):
        CfC(4, 8)(x, x.numpy()[:, 0, :].repeat(2, axis=1))  # a (2, 8) numpy array


@pytest.mark.parametrize("layer", [CfC, LTC])
def test_wrong_input_names_input_and_the_expected_size(layer):
    model = layer(4, 8)
    with pytest.raises(ValueError, match="input must have 4 features in its last dimension.*got shape \\(2, 5, 5\\)"):
        model(torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="input must be 3-D .* or 2-D .* got 4-D"):
        model(torch.randn(2, 5, 4, 1))
    with pytest.raises(ValueError, match="input must have at least one time step"):
        model(torch.randn(2, 0, 4))
    with pytest.raises(TypeError, match="input must be a floating-point tensor, got dtype torch.int64"):
        model(torch.ones(2, 5, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="input has dtype torch.float64 but the layer's parameters are torch.float32"):
        model(torch.randn(2, 5, 4, dtype=torch.float64))


@pytest.mark.parametrize(
    "batch_first, timespans, accepted",
    [
        (True, torch.ones(5, 2), r"\(2, 5\) or \(2, 5, 1\)"),
        (True, torch.ones(2, 4), r"\(2, 5\) or \(2, 5, 1\)"),
        (True, torch.ones(2, 5, 2), r"\(2, 5\) or \(2, 5, 1\)"),
        (False, torch.ones(2, 5), r"\(5, 2\) or \(5, 2, 1\)"),
        (True, torch.ones(7), r"\(5,\) shared by the batch"),
    ],
)
def test_wrong_timespans_shape_lists_the_accepted_shapes(batch_first, timespans, accepted):
    model = CfC(4, 8, batch_first=batch_first)
    x = torch.randn(2, 5, 4) if batch_first else torch.randn(5, 2, 4)
    with pytest.raises(ValueError, match="timespans must be .*" + accepted):
        model(x, timespans=timespans)


def test_timespans_of_the_wrong_type_are_rejected():
    model, x = LTC(4, 8), torch.randn(2, 5, 4)
    for bad in ("1.0", [1.0] * 5, True, torch.ones(2, 5, dtype=torch.bool)):
        with pytest.raises(TypeError, match="timespans must"):
            model(x, timespans=bad)
    with pytest.raises(ValueError, match=r"timespans must be a scalar, \(5,\) or \(5, 1\)"):
        model(x[0], timespans=torch.ones(1, 5))


@pytest.mark.parametrize("timespans", [-1.0, float("nan"), float("inf"),
                                       "tensor_negative", "tensor_nan"])
@pytest.mark.parametrize("layer", ["cfc", "ltc"])
def test_timespans_must_be_finite_and_non_negative(layer: str, timespans) -> None:
    # A negative or NaN elapsed time would silently poison every later state (user report).
    from torchliquid.nn import CfC, LTC

    model = CfC(4, 8) if layer == "cfc" else LTC(4, 8)
    x = torch.randn(2, 5, 4)
    if timespans == "tensor_negative":
        timespans = torch.full((2, 5), 0.5)
        timespans[1, 3] = -0.25
    elif timespans == "tensor_nan":
        timespans = torch.full((2, 5), 0.5)
        timespans[0, 0] = float("nan")
    with pytest.raises(ValueError, match="timespans must be"):
        model(x, timespans=timespans)


def test_stream_rejects_negative_dt() -> None:
    from torchliquid.infer import Stream
    from torchliquid.nn import CfC

    stream = Stream(CfC(4, 8), batch_size=1)
    with pytest.raises(ValueError, match="finite elapsed time"):
        stream.step(torch.randn(4), dt=-1.0)
