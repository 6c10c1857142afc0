"""Export with a dynamic time axis (field cases A05, A06, A07): TorchScript, ONNX, torch.export.

Start here: every exported form is run at several batch sizes and lengths, INCLUDING a length
longer than the export example (the A06 trap, where a traced graph silently returns T_example
steps), and compared with the eager layer called on the same inputs.

Tolerances:
    TS_TOL = 1e-6    TorchScript runs the same torch kernels in the same order (observed: 0);
                     1e-6 is field case A05's bound.
    ONNX_TOL = 1e-5  onnxruntime has its own GEMM/tanh/sigmoid kernels, each within a few float32
                     ulps of torch's; over 29 recurrent steps the differences stay ~1e-7 (observed
                     <= 5e-7); 1e-5 is field case A06's bound.

The TorchScript-based ONNX exporter is fast (< 1 s) and covers the full model matrix; the
default dynamo exporter takes 3-10 s per file on 2 cores, so it covers one model per family.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from torchliquid.infer import (ExportError, export_onnx, export_program, export_torchscript, script,
                               verify_onnx)
from torchliquid.nn import CfC, LTC
from torchliquid.nn.wirings import AutoNCP, FullyConnected

TS_TOL = 1e-6
ONNX_TOL = 1e-5
I = 4
EXAMPLE_B, EXAMPLE_T = 2, 3
SIZES = [(1, 1), (EXAMPLE_B, EXAMPLE_T), (5, 29)]  # (batch, length); 29 > EXAMPLE_T

MODELS = {
    "cfc-default": lambda: CfC(I, 8),
    "cfc-pure": lambda: CfC(I, 8, mode="pure"),
    "cfc-no_gate-proj": lambda: CfC(I, 8, mode="no_gate", proj_size=2),
    "cfc-backbone2-gelu": lambda: CfC(I, 8, backbone_layers=2, backbone_units=16, activation="gelu",
                                      backbone_dropout=0.2),
    "cfc-wired-ncp": lambda: CfC(I, AutoNCP(12, 3)),
    "cfc-wired-fc-pure": lambda: CfC(I, FullyConnected(6, 2), mode="pure"),
    "cfc-mixed": lambda: CfC(I, 8, mixed_memory=True),
    "cfc-time-major-last-step": lambda: CfC(I, 8, batch_first=False, return_sequences=False),
    "ltc-fc": lambda: LTC(I, 8),
    "ltc-ncp": lambda: LTC(I, AutoNCP(12, 3)),
    "ltc-ncp-explicit-linear": lambda: LTC(I, AutoNCP(12, 3), implicit_param_constraints=False,
                                           input_mapping="linear", output_mapping=None, ode_unfolds=3),
    "ltc-mixed": lambda: LTC(I, AutoNCP(12, 3), mixed_memory=True),
}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _inputs(model, batch: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, I, generator=g)
    h = torch.randn(batch, model.state_size, generator=g)
    c = torch.randn(batch, model.state_size, generator=g)
    dt = torch.rand(batch, length, generator=g) + 0.5
    return x, h, c, dt


def _eager(model, x, h, c, dt):
    """(y, h_n[, c_n]) of the eager layer for batch-first graph inputs (exported graphs are batch first)."""
    if not model.batch_first:
        x, dt = x.transpose(0, 1), dt.transpose(0, 1)
    with torch.no_grad():
        y, state = model(x, (h, c) if model.use_mixed else h, timespans=dt)
    if not model.batch_first and model.return_sequences:
        y = y.transpose(0, 1)
    return (y, *state) if model.use_mixed else (y, state)


def _close(actual, expected, tol: float, what: str) -> None:
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        a = torch.as_tensor(a)
        assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != eager {tuple(e.shape)}"
        torch.testing.assert_close(a, e, atol=tol, rtol=0.0, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scripted_sequence_equals_eager(name: str) -> None:
    model = _build(name)
    scripted = script(model)
    assert isinstance(scripted, torch.jit.ScriptModule)
    for batch, length in SIZES:
        x, h, c, dt = _inputs(model, batch, length)
        if not model.batch_first:  # the scripted module takes the layer's own layout
            x, dt = x.transpose(0, 1), dt.transpose(0, 1)
        hx = (h, c) if model.use_mixed else h
        with torch.no_grad():
            for args in ((x,), (x, hx, dt)):  # defaults (zeros, dt = 1) and everything given
                expected_y, expected_state = model(*args[:2], timespans=args[2] if len(args) > 2 else None)
                y, state = scripted(*args[:2], args[2] if len(args) > 2 else None)
                expected = (expected_y, *expected_state) if model.use_mixed else (expected_y, expected_state)
                got = (y, *state) if model.use_mixed else (y, state)
                _close(got, expected, TS_TOL, f"{name} B={batch} T={length} args={len(args)}")


@pytest.mark.parametrize("layout", ["time-major", "unbatched", "last-step"])
def test_scripted_sequence_keeps_the_layer_layout(layout: str) -> None:
    torch.manual_seed(0)
    model = CfC(I, 8, batch_first=layout != "time-major", return_sequences=layout != "last-step").eval()
    x = {"time-major": torch.randn(7, 3, I), "unbatched": torch.randn(7, I), "last-step": torch.randn(3, 7, I)}[layout]
    dt = {"time-major": torch.rand(7, 3), "unbatched": torch.rand(7), "last-step": torch.rand(3, 7)}[layout]
    with torch.no_grad():
        expected = model(x, timespans=dt)
    _close(script(model)(x, None, dt), expected, TS_TOL, layout)


@pytest.mark.parametrize("name", ["cfc-default", "cfc-mixed", "cfc-wired-ncp", "ltc-ncp", "ltc-mixed"])
def test_scripted_step_form_stepping_equals_full_forward(name: str) -> None:
    model = _build(name)
    step = script(model, form="step")
    x, h, c, dt = _inputs(model, 3, 11)
    expected = _eager(model, x, h, c, dt)
    outputs, state = [], ((h, c) if model.use_mixed else (h,))
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, *state = step(x[:, t], *state, dt[:, t])
            outputs.append(y)
    _close((torch.stack(outputs, dim=1), *state), expected, TS_TOL, f"{name} stepped")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", ["cfc-no_gate-proj", "cfc-mixed", "ltc-ncp"])
def test_torchscript_file_round_trip(tmp_path: Path, name: str) -> None:
    model = _build(name)
    path = export_torchscript(model, tmp_path / "model.pt", metadata={"note": {"k": 1}})
    extra = {"torchliquid.json": "", "note.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    info = json.loads(extra["torchliquid.json"])
    assert info["form"] == "sequence" and info["input_size"] == I and info["mixed_memory"] == model.use_mixed
    assert json.loads(extra["note.json"]) == {"k": 1}
    x, h, c, dt = _inputs(model, 2, 13)
    hx = (h, c) if model.use_mixed else h
    with torch.no_grad():
        expected_y, _ = model(x, hx, timespans=dt)
        y, _ = loaded(x, hx, dt)
    _close((y,), (expected_y,), TS_TOL, "loaded TorchScript")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_export_is_a_frozen_copy() -> None:
    model = _build("cfc-default")
    scripted = script(model)
    x = torch.randn(2, 5, I)
    before = scripted(x)[0]
    with torch.no_grad():
        model.rnn_cell.ff1.weight.add_(1.0)
    torch.testing.assert_close(scripted(x)[0], before, atol=0.0, rtol=0.0)


# ----------------------------------------------------------------------------------------- ONNX


def _run_onnx(path: Path, model, batch: int, length: int, form: str):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, h, c, dt = _inputs(model, batch, length, seed=3)
    if form == "step":
        x, dt = x[:, 0], dt[:, :1]
    feeds = {"x": x, "h0" if form == "sequence" else "h": h, "dt": dt}
    if model.use_mixed:
        feeds["c0" if form == "sequence" else "c"] = c
    names = [i.name for i in session.get_inputs()]
    assert sorted(names) == sorted(feeds)
    outputs = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    return outputs, (x, h, c, dt)


def _check_onnx_sequence(path: Path, model, what: str) -> None:
    for batch, length in SIZES:
        outputs, inputs = _run_onnx(path, model, batch, length, "sequence")
        if model.return_sequences:
            assert outputs[0].shape[:2] == (batch, length), f"{what}: time axis not honoured at T={length}"
        _close(outputs, _eager(model, *inputs), ONNX_TOL, f"{what} B={batch} T={length}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_loop_export_any_batch_and_length(tmp_path: Path, name: str) -> None:
    model = _build(name)
    path = export_onnx(model, tmp_path / "m.onnx", exporter="torchscript", example_batch=EXAMPLE_B,
                       example_length=EXAMPLE_T)
    assert "Loop" in {node.op_type for node in onnx.load(str(path)).graph.node}
    _check_onnx_sequence(path, model, f"{name} (Loop)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cfc-default", "cfc-mixed", "ltc-ncp"])
def test_onnx_scan_export_any_batch_and_length(tmp_path: Path, name: str) -> None:
    model = _build(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(model, tmp_path / "m.onnx", example_batch=EXAMPLE_B, example_length=EXAMPLE_T)
    # torch's exporter calling torch's own deprecated APIs (pytree LeafSpec) is not the user's business
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    assert "Scan" in {node.op_type for node in onnx.load(str(path)).graph.node}
    _check_onnx_sequence(path, model, f"{name} (Scan)")


# dynamo exports are slow: one model (with mixed memory, the most inputs) covers that exporter
@pytest.mark.parametrize(("exporter", "name"), [
    ("torchscript", "cfc-wired-ncp"), ("torchscript", "cfc-mixed"), ("torchscript", "ltc-ncp"),
    pytest.param("dynamo", "cfc-mixed", marks=pytest.mark.slow),
])
def test_onnx_step_form_stepping_equals_full_forward(tmp_path: Path, name: str, exporter: str) -> None:
    model = _build(name)
    path = export_onnx(model, tmp_path / "step.onnx", form="step", exporter=exporter)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, h, c, dt = _inputs(model, 3, 12)
    state = [h.numpy(), c.numpy()] if model.use_mixed else [h.numpy()]
    names = ["h", "c"] if model.use_mixed else ["h"]
    outputs = []
    for t in range(x.shape[1]):
        y, *state = session.run(None, {"x": x[:, t].numpy(), "dt": dt[:, t:t + 1].numpy(), **dict(zip(names, state))})
        outputs.append(torch.from_numpy(y))
    got = (torch.stack(outputs, dim=1), *map(torch.from_numpy, state))
    _close(got, _eager(model, x, h, c, dt), ONNX_TOL, f"{name} ONNX step ({exporter})")


def test_onnx_metadata_describes_the_interface(tmp_path: Path) -> None:
    model = _build("cfc-mixed")
    path = export_onnx(model, tmp_path / "m.onnx", exporter="torchscript", metadata={"extra": [1, 2]})
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    info = json.loads(props["torchliquid"])
    assert info["inputs"] == ["x", "h0", "c0", "dt"] and info["outputs"] == ["y", "h_n", "c_n"]
    assert info["model"]["class"] == "CfC" and json.loads(props["extra"]) == [1, 2]


def _traced_onnx_bytes(model) -> bytes:
    """The A06 repro: the legacy exporter TRACES the eager layer, unrolling its loop at T=5."""
    buffer = io.BytesIO()
    x, h, _, dt = _inputs(model, 2, 5)
    with pytest.warns(Warning):  # deprecation / tracer warnings of the legacy path
        torch.onnx.export(model, (x, h, dt), buffer, dynamo=False, input_names=["x", "h0", "dt"],
                          output_names=["y", "h_n"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "h0": {0: "batch"}, "dt": {0: "batch", 1: "time"}})
    return buffer.getvalue()


def test_verification_catches_a_frozen_time_axis() -> None:
    model = _build("cfc-default")
    data = _traced_onnx_bytes(model)
    verify_onnx(data, model, "sequence", lengths=[5], batches=[2])  # fine at the traced length ...
    with pytest.raises(ExportError, match=r"time axis \(axis 1 of 'x'\) was frozen at export \(5 steps\)"):
        verify_onnx(data, model, "sequence", lengths=[9], batches=[2])  # ... wrong beyond it


@pytest.mark.parametrize(("form", "checked"), [
    ("sequence", f"whole sequences at batch {EXAMPLE_B} x {EXAMPLE_T} steps and batch {EXAMPLE_B + 1} x "
                 f"{2 * EXAMPLE_T + 3} steps (longer than the {EXAMPLE_T} traced)"),
    ("step", f"one step at batch {EXAMPLE_B} and {EXAMPLE_B + 1}"),
])
def test_a_passed_verification_is_reported_with_what_it_checked(tmp_path: Path, form: str, checked: str) -> None:
    lines: list[str] = []
    export_onnx(_build("cfc-default"), tmp_path / "m.onnx", form=form, exporter="torchscript",
                example_batch=EXAMPLE_B, example_length=EXAMPLE_T, report=lines.append)
    assert len(lines) == 1
    assert lines[0].startswith(f"verified in onnxruntime against eager PyTorch: {checked}; every output matches, "
                               "max abs difference ")
    worst = float(lines[0].split("max abs difference ")[1].split(" ")[0])
    assert 0 <= worst <= ONNX_TOL and lines[0].endswith(f"(tolerance {ONNX_TOL:g})")
    export_onnx(_build("cfc-default"), tmp_path / "n.onnx", exporter="torchscript", verify=False, report=lines.append)
    assert len(lines) == 1  # nothing verified, nothing reported


def test_failed_verification_writes_nothing(tmp_path: Path) -> None:
    model = _build("cfc-default")
    with pytest.raises(ExportError, match="differs from eager PyTorch"):
        export_onnx(model, tmp_path / "m.onnx", exporter="torchscript", atol=-1.0)  # no diff is <= -1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"form": "loop"}, ValueError, r"form must be one of \['sequence', 'step'\], got 'loop'"),
    ({"exporter": "tf"}, ValueError, r"exporter must be one of \['dynamo', 'torchscript'\]"),
    ({"example_length": 1}, ValueError, r"example_length must be an int >= 2"),
    ({"example_batch": True}, ValueError, r"example_batch must be an int >= 2"),
])
def test_bad_export_arguments_are_named(tmp_path: Path, kwargs, error, match: str) -> None:
    with pytest.raises(error, match=match):
        export_onnx(_build("cfc-default"), tmp_path / "m.onnx", **kwargs)


@pytest.mark.parametrize("model", [torch.nn.LSTM(4, 8), torch.nn.Linear(4, 8)], ids=["lstm", "linear"])
def test_only_torchliquid_layers_export(tmp_path: Path, model) -> None:
    with pytest.raises(TypeError, match="CfC or LTC layer"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="CfC or LTC layer"):
        script(model)


def test_ncps_layers_are_pointed_to_compat() -> None:
    ncps_torch = pytest.importorskip("ncps.torch")
    with pytest.raises(TypeError, match="from_ncps"):
        script(ncps_torch.CfC(4, 8))


# --------------------------------------------------------------------------------- torch.export


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cfc-default", "ltc-mixed"])
def test_export_program_serves_every_length(name: str) -> None:
    """A07: one exported program with a dynamic T (no re-export per length)."""
    model = _build(name)
    program = export_program(model, example_batch=EXAMPLE_B, example_length=EXAMPLE_T).module()
    for batch, length in [(2, 3), (4, 17)]:
        x, h, c, dt = _inputs(model, batch, length)
        args = (x, h, c, dt) if model.use_mixed else (x, h, dt)
        with torch.no_grad():
            got = program(*args)
        _close(tuple(got), _eager(model, x, h, c, dt), TS_TOL, f"{name} program T={length}")



def test_scan_form_compiles_once_for_every_length() -> None:
    """A07: torch.compile of the scan form captures ONE graph that serves every T.

    A counting backend (public torch.compile API) records each compilation; the eager layer's
    Python loop would be recompiled per new T. Inductor cannot lower scan on CPU in torch 2.x
    yet (it falls back to running scan eagerly), so this guards capture, not kernel speed.
    """
    from torchliquid.infer.modules import ScanSequence
    from torchliquid.infer.portable import portable_core

    compiled_graphs = []

    def counting_backend(graph_module, example_inputs):
        compiled_graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()  # a clean cache, so the count is this test's alone
    model = _build("cfc-default")
    compiled = torch.compile(ScanSequence(portable_core(model)).eval(), backend=counting_backend, dynamic=True)
    for length in (5, 9, 5, 23):
        x, h, c, dt = _inputs(model, 2, length)
        with torch.no_grad():
            got = compiled(x, h, dt)
        _close(tuple(got), _eager(model, x, h, c, dt), TS_TOL, f"compiled T={length}")
    assert len(compiled_graphs) == 1
