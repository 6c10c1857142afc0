"""The single-step streaming path (nn/step_path.py): correctness and cache invalidation.

Start here: a length-1 call of a layer under implementation="auto" without autograd, and
``Stream.step``, run a Plan derived once from the parameters. Every test compares that path with
the plain loop (implementation="reference", the control) or with ncps 1.0.1, and checks that a
parameter change reaches the next step. No timing is asserted here: the latency is a report
(benchmarks/bench_infer.py, benchmarks/RESULTS_infer.md).

TOL = 1e-6 (float32, the brief's bound). CfC replays functional.py op for op (one GEMM for the
four heads): the difference is 0 in practice; LTC's unfolds run in the native C kernel (~1e-7).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from torchliquid.infer import Stream
from torchliquid.nn import CfC, LTC, step_path
from torchliquid.nn import _fused_native as native
from torchliquid.nn.wirings import NCP, AutoNCP, FullyConnected

TOL = 1e-6
I = 5


MODELS = {
    "cfc-default-proj": lambda: CfC(I, 8, proj_size=2),
    "cfc-pure": lambda: CfC(I, 8, mode="pure"),
    "cfc-no_gate-relu": lambda: CfC(I, 8, mode="no_gate", activation="relu"),
    "cfc-no-backbone": lambda: CfC(I, 8, backbone_layers=0),
    "cfc-2-layers-dropout": lambda: CfC(I, 8, backbone_layers=2, backbone_units=6, backbone_dropout=0.3),
    "cfc-wired-autoncp": lambda: CfC(I, AutoNCP(12, 3)),
    "cfc-wired-ncp-pure-proj": lambda: CfC(I, NCP(3, 3, 2, 2, 2, 2, 1), mode="pure", proj_size=2),
    "cfc-wired-fc": lambda: CfC(I, FullyConnected(6, 2), mode="no_gate"),
    "ltc-autoncp": lambda: LTC(I, AutoNCP(12, 3)),
    "ltc-fc-linear-explicit": lambda: LTC(I, FullyConnected(6, 2), input_mapping="linear", output_mapping=None,
                                          implicit_param_constraints=False),
    "ltc-unmapped-unfolds": lambda: LTC(I, 7, input_mapping=None, output_mapping="linear", ode_unfolds=3),
}


def _build(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().to(dtype).eval()
    with torch.no_grad():  # off CfC pure's w_tau = 0 kink and LTC's init, so every parameter matters
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _reference(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model)
    reference.implementation = "reference"
    return reference


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    torch.testing.assert_close(actual, expected, atol=tol, rtol=0.0, msg=lambda m: f"{what}: {m}")


def _no_loop(monkeypatch, model: nn.Module) -> None:
    """Break the ordinary paths of this model: the whole-sequence runners and the cell's _step."""

    def refuse(*args, **kwargs):
        raise AssertionError("the ordinary path ran")

    monkeypatch.setattr(model, "_forward_sequence", refuse)
    monkeypatch.setattr(model.rnn_cell, "_step", refuse)


@pytest.fixture(params=["native", "torch"])
def ltc_kernel(request, monkeypatch):
    """LTC plans with the native unfolds and with the torch ops they fall back to."""
    if request.param == "native" and not native.available():
        pytest.skip(f"no native kernels: {native.failure()}")
    if request.param == "torch":
        monkeypatch.setattr(native, "supports", lambda *tensors: False)
    return request.param


# ------------------------------------------------------------------- equal to the reference


@pytest.mark.parametrize("timespans", ["none", "per-sample", "scalar"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_step_equals_reference(monkeypatch, ltc_kernel, name, timespans):
    if ltc_kernel == "torch" and not name.startswith("ltc"):
        pytest.skip("the torch fallback is LTC's")
    model = _build(name)
    reference = _reference(model)
    _no_loop(monkeypatch, model)
    B = 3
    x, h = torch.randn(B, 1, I), torch.randn(B, model.state_size)
    dt = {"none": None, "per-sample": torch.rand(B, 1) + 0.2, "scalar": 0.7}[timespans]
    with torch.no_grad():
        y_ref, h_ref = reference(x, h, dt)
        y, h_n = model(x, h, dt)
    _close(y, y_ref, "output")
    _close(h_n, h_ref, "state")


@pytest.mark.parametrize("layout", ["time_major", "unbatched", "last_only", "unbatched_last_only"])
@pytest.mark.parametrize("name", ["cfc-default-proj", "cfc-wired-autoncp", "ltc-autoncp"])
def test_layouts_equal_reference(monkeypatch, name, layout):
    torch.manual_seed(1)
    model = _build(name)
    model.batch_first = layout != "time_major"
    model.return_sequences = "last_only" not in layout
    reference = _reference(model)
    _no_loop(monkeypatch, model)
    x, h = torch.randn(2, 1, I), torch.randn(2, model.state_size)
    if layout == "time_major":
        x = x.transpose(0, 1)
    if "unbatched" in layout:
        x, h = x[0], h[0]
    with torch.inference_mode():
        for args in ((x,), (x, h), (x, h, torch.full(x.shape[:-1], 0.5))):
            (y_ref, h_ref), (y, h_n) = reference(*args), model(*args)
            _close(y, y_ref, f"output, {len(args)} arguments")
            _close(h_n, h_ref, f"state, {len(args)} arguments")


def test_float64_and_dt_none_equals_dt_one(monkeypatch, ltc_kernel):
    for name in ("cfc-default-proj", "ltc-autoncp"):
        model = _build(name, torch.float64)
        reference = _reference(model)
        x, h = torch.randn(2, 1, I, dtype=torch.float64), torch.randn(2, model.state_size, dtype=torch.float64)
        with torch.no_grad():
            y, h_n = model(x, h)
            _close(y, reference(x, h)[0], f"{name} fp64 output", 1e-12)
            _close(h_n, reference(x, h)[1], f"{name} fp64 state", 1e-12)
            for ones in (1.0, torch.ones(2, 1, dtype=torch.float64)):  # field case A14, bit for bit
                assert torch.equal(model(x, h, ones)[0], y) and torch.equal(model(x, h, ones)[1], h_n)


@pytest.mark.parametrize("mode", ["default", "pure", "no_gate"])
def test_cfc_step_equals_ncps(mode):
    ncps_torch = pytest.importorskip("ncps.torch")
    torch.manual_seed(2)
    theirs = ncps_torch.CfC(I, 16, proj_size=3, mode=mode).eval()
    ours = CfC(I, 16, proj_size=3, mode=mode).eval()
    ours.load_state_dict(theirs.state_dict())
    _steps_equal_ncps(theirs, ours)


def test_ltc_step_equals_ncps(ltc_kernel):
    ncps_torch = pytest.importorskip("ncps.torch")
    ncps_wirings = pytest.importorskip("ncps.wirings")
    torch.manual_seed(3)
    theirs = ncps_torch.LTC(I, ncps_wirings.AutoNCP(16, 3)).eval()
    ours = LTC(I, AutoNCP(16, 3)).eval()
    ours.load_state_dict(theirs.state_dict())
    _steps_equal_ncps(theirs, ours)


def _steps_equal_ncps(theirs: nn.Module, ours: nn.Module) -> None:
    """Batch 1 (ncps squeezes timespans, field case A01), 30 streamed steps, dt None and given."""
    stream = Stream(ours)
    h_theirs = h_ours = torch.zeros(1, ours.state_size)
    with torch.no_grad():
        for t in range(30):
            x = torch.randn(1, 1, I)
            dt = None if t % 2 else torch.rand(1, 1) + 0.1
            y_theirs, h_theirs = theirs(x, h_theirs, dt)
            y_ours, h_ours = ours(x, h_ours, dt)
            y_stream = stream.step(x[:, 0], dt)
            assert step_path.step_plan(ours, x) is not None
            _close(y_ours, y_theirs, f"layer output, step {t}")
            _close(h_ours, h_theirs, f"layer state, step {t}")
            _close(y_stream, y_theirs[:, 0], f"Stream output, step {t}")


def test_stream_steps_equal_reference_and_use_the_plan(monkeypatch, ltc_kernel):
    for name in ("cfc-wired-ncp-pure-proj", "ltc-autoncp", "cfc-default-proj"):
        model = _build(name)
        reference = _reference(model)
        x, ts = torch.randn(2, 12, I), torch.rand(2, 12) + 0.1
        ts[:, ::3] = 1.0  # stepped with dt=None there
        with torch.no_grad():
            y_ref, h_ref = reference(x, timespans=ts)
        stream = Stream(model, batch_size=2)
        with monkeypatch.context() as patch:
            _no_loop(patch, model)
            y = torch.stack([stream.step(x[:, t], None if t % 3 == 0 else ts[:, t]) for t in range(12)], 1)
        _close(y, y_ref, f"{name} stepped outputs")
        _close(stream.state, h_ref, f"{name} final state")
        assert not y.requires_grad and not stream.state.requires_grad


# --------------------------------------------------------------------- when it does not run


def test_autograd_named_implementations_and_longer_inputs_take_the_ordinary_path(monkeypatch):
    model = _build("cfc-default-proj")
    x = torch.randn(2, 1, I)
    y, _ = model(x)  # grad enabled, parameters require grad: the kernels, with a graph
    assert y.requires_grad
    y.sum().backward()
    assert model.fc.weight.grad is not None
    with torch.no_grad():
        y_fast, _ = model(x)
    model.requires_grad_(False)  # nothing requires grad: the plan serves even with grad enabled
    with monkeypatch.context() as patch:
        _no_loop(patch, model)
        assert torch.equal(model(x)[0], y_fast) and not model(x)[0].requires_grad
    calls = []
    monkeypatch.setattr(model.rnn_cell, "_step", lambda *a: calls.append(1) or type(model.rnn_cell)._step(model.rnn_cell, *a))
    model.implementation = "reference"
    with torch.no_grad():
        model(x)
        assert calls == [1]
        model.implementation = "auto"
        model(x)
        assert calls == [1]
        model(torch.randn(2, 2, I))  # T = 2: the sequence kernels
    assert calls == [1]


def test_mixed_memory_dropout_hooks_and_tracing_take_the_ordinary_path():
    x = torch.randn(2, 1, I)
    assert step_path.step_plan(CfC(I, 8, mixed_memory=True).eval(), x) is None
    model = _build("cfc-2-layers-dropout").train()
    assert step_path.step_plan(model, x) is None  # dropout is active
    assert step_path.step_plan(model.eval(), x) is not None
    seen = []
    handle = model.fc.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        model(x)
    assert len(seen) == 1  # the hook ran: the ordinary path
    handle.remove()
    assert step_path.step_plan(model, x) is not None
    ltc = _build("ltc-autoncp")
    with torch.no_grad():
        traced = torch.jit.trace(ltc, (x,), check_trace=False)  # the traced graph is the loop
        _close(traced(x)[0], _reference(ltc)(x)[0], "traced")
    assert step_path.step_plan(ltc, x.double()) is None  # wrong dtype: the ordinary path's error
    with pytest.raises(TypeError, match="dtype"), torch.no_grad():
        ltc(x.double())


# ----------------------------------------------------------------------- cache invalidation


def _check_fresh(model: nn.Module, what: str) -> None:
    """The next no-grad step equals a reference built from the parameters as they are now."""
    reference = _reference(model)
    x = torch.randn(2, 1, I, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        (y_ref, h_ref), (y, h_n) = reference(x), model(x)
    _close(y, y_ref, f"output after {what}")
    _close(h_n, h_ref, f"state after {what}")


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    model(torch.randn(4, 3, I))[0].square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("optimizer", ["sgd-foreach", "adam", "adam-fused", "adamw-fused"])
@pytest.mark.parametrize("name", ["cfc-default-proj", "cfc-wired-autoncp", "ltc-autoncp"])
def test_optimizer_steps_reach_the_next_step(name, optimizer):
    """Fused optimizers update parameters without bumping their _version: the plan must still
    see the update (step_path counts Optimizer.step)."""
    model = _build(name)
    _check_fresh(model, "building")  # a plan exists now
    kind, _, fused = optimizer.partition("-")
    options = {"foreach": True} if fused == "foreach" else {"fused": True} if fused else {}
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](
        model.parameters(), lr=0.05, **options)
    stream, x = Stream(model), torch.randn(I)
    for step in range(3):
        stream.reset()
        before = stream.step(x)
        _train_step(model, opt)
        _check_fresh(model, f"{optimizer} step {step}")
        stream.reset()
        assert not torch.equal(stream.step(x), before), "the stream saw the update"


@pytest.mark.parametrize("name", ["cfc-default-proj", "cfc-wired-autoncp", "ltc-autoncp"])
def test_parameter_edits_reach_the_next_step(name):
    model = _build(name)
    _check_fresh(model, "building")
    cell = model.rnn_cell
    donor = _build(name)
    with torch.no_grad():  # the same architecture, other values
        for p in donor.parameters():
            p.mul_(1.1)
    model.load_state_dict(donor.state_dict())
    _check_fresh(model, "load_state_dict")
    first = next(p for p in cell.parameters() if p.dim() == 2)
    with torch.no_grad():
        first.add_(0.1)
    _check_fresh(model, "an in-place edit under no_grad")
    first.data = first.data * 0.5
    _check_fresh(model, "assigning .data")
    buffer = next(b for n, b in model.named_buffers() if "mask" in n) if "wired" in name or "ltc" in name else None
    if buffer is not None:
        with torch.no_grad():
            buffer.mul_(0.5)  # a mask is read through the plan too
        _check_fresh(model, "editing a mask buffer")
    first.data.add_(0.3)  # bypasses versions (as it bypasses autograd): invalidate() is the remedy
    step_path.invalidate(model)
    _check_fresh(model, "tensor.data.add_ + invalidate")
    first.data.add_(0.3)
    step_path.invalidate()
    _check_fresh(model, "tensor.data.add_ + invalidate()")


def test_replaced_parameters_modules_attributes_and_dtype_reach_the_next_step():
    model = _build("cfc-default-proj")
    _check_fresh(model, "building")
    model.fc.weight = nn.Parameter(torch.randn_like(model.fc.weight))
    _check_fresh(model, "a new fc.weight Parameter")
    model.fc = nn.Linear(8, 2)
    _check_fresh(model, "a new fc module")
    model.rnn_cell.backbone.append(nn.Tanh())  # a module the plan does not replay: the ordinary path
    assert step_path.step_plan(model, torch.zeros(1, 1, I)) is None
    del model.rnn_cell.backbone[-1]
    assert step_path.step_plan(model, torch.zeros(1, 1, I)) is not None
    model.double()
    _check_fresh(model, "model.double()")
    ltc = _build("ltc-autoncp")
    _check_fresh(ltc, "building")
    ltc.rnn_cell.epsilon, ltc.rnn_cell.ode_unfolds = 0.5, 2
    _check_fresh(ltc, "new epsilon and ode_unfolds")
    with torch.no_grad():
        params = {name: p * 2 for name, p in ltc.named_parameters()}
        x = torch.randn(1, 1, I)
        swapped = torch.func.functional_call(ltc, params, (x,))[0]  # swaps _parameters entries
        plain = ltc(x)[0]
    assert not torch.equal(swapped, plain)
    _check_fresh(ltc, "functional_call")


def test_copies_pickles_and_inference_mode_tensors():
    model = _build("ltc-autoncp")
    x = torch.randn(1, 1, I)
    with torch.inference_mode():
        y_inference, _ = model(x)  # the plan is built inside inference_mode ...
    with torch.no_grad():
        y, _ = model(x)  # ... and serves outside it
    assert torch.equal(y, y_inference)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.equal(clone(x)[0], y)
            clone.rnn_cell.cm.add_(1.0)  # the copy has its own parameters and plan
            assert not torch.equal(clone(x)[0], y) and torch.equal(model(x)[0], y)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # a whole-module save with a plan in it
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], y)


@pytest.mark.parametrize("name", ["cfc-pure", "cfc-wired-fc", "ltc-unmapped-unfolds"])
def test_outputs_never_alias_the_state(name):
    model = _build(name)
    with torch.no_grad():
        y, h_n = model(torch.randn(2, 1, I))
        h_before = h_n.clone()
        y.add_(1.0)
    assert torch.equal(h_n, h_before)
