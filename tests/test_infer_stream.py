"""Streaming inference and per-step states (field case A19): Stream, hidden_states, chunked hx.

Start here: every test compares a stepped or chunked run with ONE call of the eager layer on the
whole sequence. TOL = 1e-6 (float32) is the brief's bound: the stepped path runs the same cell
operations in the same order, so in practice the difference is 0; the bound leaves room for the
readout being applied per step (B, M) instead of on the stacked (B, T, M) (a different GEMM
blocking can change the last bit, ~1e-7 for outputs of order 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchliquid.infer import Stream, hidden_states
from torchliquid.nn import CfC, LTC
from torchliquid.nn.wirings import AutoNCP, FullyConnected

TOL = 1e-6
B, T, I = 3, 17, 4


def _models() -> dict[str, callable]:
    return {
        "cfc-default": lambda: CfC(I, 8),
        "cfc-pure": lambda: CfC(I, 8, mode="pure"),
        "cfc-no_gate-proj": lambda: CfC(I, 8, mode="no_gate", proj_size=2),
        "cfc-wired-ncp": lambda: CfC(I, AutoNCP(12, 3)),
        "cfc-mixed": lambda: CfC(I, 8, mixed_memory=True),
        "cfc-wired-mixed": lambda: CfC(I, AutoNCP(12, 3), mixed_memory=True, mode="pure"),
        "ltc-fc": lambda: LTC(I, FullyConnected(8, 2)),
        "ltc-ncp": lambda: LTC(I, AutoNCP(12, 3)),
        "ltc-mixed": lambda: LTC(I, AutoNCP(12, 3), mixed_memory=True),
    }


MODELS = _models()


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _close(actual, expected, what: str) -> None:
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=TOL, rtol=0.0, msg=lambda m: f"{what}: {m}")


def _inputs(timed: bool):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, I, generator=generator)
    ts = torch.rand(B, T, generator=generator) * 2 + 0.1 if timed else None
    return x, ts


@pytest.mark.parametrize("timed", [False, True], ids=["dt=1", "timespans"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_stepping_equals_full_sequence(name: str, timed: bool) -> None:
    model = _build(name)
    x, ts = _inputs(timed)
    with torch.no_grad():
        y_full, h_full = model(x, timespans=ts)
    stream = Stream(model, batch_size=B)
    steps = [stream.step(x[:, t], None if ts is None else ts[:, t]) for t in range(T)]
    _close(torch.stack(steps, dim=1), y_full, "stepped outputs")
    _close(stream.state, h_full, "final state")
    assert stream.steps == T


@pytest.mark.parametrize("timed", [False, True], ids=["dt=1", "timespans"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_chunks_with_carried_state_equal_one_call(name: str, timed: bool) -> None:
    """A19 repro: ten chunks with hx carried == one long call (layer API and Stream.run)."""
    model = _build(name)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 100, I, generator=generator)
    ts = torch.rand(1, 100, generator=generator) + 0.5 if timed else None
    with torch.no_grad():
        y_full, h_full = model(x, timespans=ts)
        hx, pieces = None, []
        for start in range(0, 100, 10):
            span = None if ts is None else ts[:, start:start + 10]
            y, hx = model(x[:, start:start + 10], hx, timespans=span)
            pieces.append(y)
    _close(torch.cat(pieces, dim=1), y_full, "chunked layer calls")
    _close(hx, h_full, "chunked final state")

    stream = Stream(model)
    chunks = [stream.run(x[:, s:s + 10], None if ts is None else ts[:, s:s + 10]) for s in range(0, 100, 10)]
    _close(torch.cat(chunks, dim=1), y_full, "Stream.run chunks")


@pytest.mark.parametrize("name", ["cfc-default", "cfc-mixed", "ltc-ncp"])
def test_stream_resumes_from_a_saved_state(name: str) -> None:
    model = _build(name)
    x, ts = _inputs(timed=True)
    with torch.no_grad():
        y_full, _ = model(x, timespans=ts)
    first = Stream(model, batch_size=B)
    first.run(x[:, :7], ts[:, :7])
    second = Stream(model, batch_size=B)
    second.reset(first.state)
    _close(second.run(x[:, 7:], ts[:, 7:]), y_full[:, 7:], "resumed stream")


def test_reset_starts_from_zeros_again() -> None:
    model = _build("cfc-mixed")
    stream = Stream(model, batch_size=2)
    x = torch.randn(2, I)
    first = stream.step(x)
    stream.step(torch.randn(2, I))
    stream.reset()
    assert stream.steps == 0
    assert all(bool((s == 0).all()) for s in stream.state)
    _close(stream.step(x), first, "after reset")


def test_single_stream_accepts_and_returns_vectors() -> None:
    model = _build("ltc-ncp")
    x = torch.randn(1, 5, I)
    with torch.no_grad():
        y_full, _ = model(x)
    stream = Stream(model)
    outputs = [stream.step(x[0, t].numpy()) for t in range(5)]  # (I,) numpy in, (O,) out
    assert outputs[0].shape == (3,)
    _close(torch.stack(outputs), y_full[0], "vector steps")


@pytest.mark.parametrize("dt", [0.5, torch.tensor(0.5), torch.full((B,), 0.5), torch.full((B, 1), 0.5),
                                np.full(B, 0.5)], ids=["float", "0-d", "(B,)", "(B,1)", "numpy"])
def test_every_dt_form_means_the_same(dt) -> None:
    model = _build("cfc-default")
    x = torch.randn(B, 1, I)
    with torch.no_grad():
        expected, _ = model(x, timespans=0.5)
    _close(Stream(model, batch_size=B).step(x[:, 0], dt), expected[:, 0], "dt form")


def test_irregular_dt_changes_the_answer() -> None:
    """Guards against dt being ignored: the same input with another elapsed time differs."""
    model = _build("cfc-default")
    x = torch.randn(1, I)
    assert not torch.allclose(Stream(model).step(x, 0.1), Stream(model).step(x, 3.0))


@pytest.mark.parametrize(("x_shape", "match"), [((2, I), r"\(batch_size=3, input_size=4\)"),
                                                 ((3, I + 1), r"input_size=4"),
                                                 ((I,), r"\(batch_size=3")])
def test_wrong_step_shape_is_named(x_shape, match: str) -> None:
    stream = Stream(_build("cfc-default"), batch_size=3)
    with pytest.raises(ValueError, match=match):
        stream.step(torch.randn(*x_shape))


def test_bad_dt_and_state_are_named() -> None:
    stream = Stream(_build("cfc-mixed"), batch_size=3)
    with pytest.raises(ValueError, match=r"dt must be .*\(3,\).*got shape \(2,\)"):
        stream.step(torch.randn(3, I), torch.ones(2))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        stream.reset(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        Stream(_build("cfc-default"), batch_size=0)
    with pytest.raises(TypeError, match="CfC or LTC layer"):
        Stream(torch.nn.LSTM(4, 8))


def test_steps_do_not_record_gradients_unless_asked() -> None:
    model = _build("cfc-default").train()
    x = torch.randn(1, I)
    assert not Stream(model).step(x).requires_grad
    y = Stream(model, grad=True).step(x)
    y.sum().backward()
    assert model.rnn_cell.ff1.weight.grad is not None


@pytest.mark.parametrize("timed", [False, True], ids=["dt=1", "timespans"])
@pytest.mark.parametrize("name", ["cfc-default", "cfc-wired-ncp", "cfc-mixed", "ltc-fc", "ltc-ncp", "ltc-mixed"])
def test_hidden_states_are_the_states_of_every_prefix(name: str, timed: bool) -> None:
    model = _build(name)
    x, ts = _inputs(timed)
    with torch.no_grad():
        result = hidden_states(model, x, timespans=ts)
        y_full, h_full = model(x, timespans=ts)
        _close(result.output, y_full, "output")
        _close(result.final, h_full, "final")
        assert result.states.shape == (B, T, model.state_size)
        for t in (0, 5, T - 1):
            _, h_t = model(x[:, : t + 1], timespans=None if ts is None else ts[:, : t + 1])
            h_t = h_t if isinstance(h_t, tuple) else (h_t,)
            _close(result.states[:, t], h_t[0], f"h after step {t}")
            if model.use_mixed:
                _close(result.cell_states[:, t], h_t[1], f"c after step {t}")
    assert (result.cell_states is None) == (not model.use_mixed)


@pytest.mark.parametrize("layout", ["time-major", "unbatched", "last-step"])
def test_hidden_states_follow_the_model_layout(layout: str) -> None:
    torch.manual_seed(0)
    model = CfC(I, 8, batch_first=layout != "time-major", return_sequences=layout != "last-step").eval()
    x = torch.randn(T, I) if layout == "unbatched" else torch.randn(T, B, I) if layout == "time-major" else torch.randn(B, T, I)
    with torch.no_grad():
        result = hidden_states(model, x)
        y_full, h_full = model(x)
    _close(result.output, y_full, layout)
    _close(result.final, h_full, layout)
    expected = {"time-major": (T, B, 8), "unbatched": (T, 8), "last-step": (B, T, 8)}[layout]
    assert tuple(result.states.shape) == expected


def test_docstring_example_runs() -> None:
    import doctest

    import torchliquid.infer.stream as module

    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
