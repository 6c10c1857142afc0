"""Export a CfC/LTC layer to TorchScript, ONNX or torch.export with a dynamic batch AND time axis.

Field cases A05-A07: ncps layers cannot be scripted, and tracing unrolls the Python time loop
for the example length, so an exported file silently returns T_example steps for longer input.
Here every sequence export carries a real loop (TorchScript ``prim::Loop``, ONNX ``Scan`` or
``Loop``), and ``export_onnx`` runs the file it wrote in onnxruntime at the example length AND
at a longer one before moving it into place, raising :class:`ExportError` (naming the time axis)
if the length or the numbers differ from eager PyTorch.

Two forms, chosen by ``form=``:

========  ==============================================  ===========================================
form      ONNX inputs -> outputs                          TorchScript call
========  ==============================================  ===========================================
sequence  x (B, T, I), h0 (B, U), [c0 (B, U)], dt (B, T)  module(input, hx=None, timespans=None), the
          -> y (B, T, O) [(B, O) without                  layer's own layouts and return values
          return_sequences], h_n, [c_n]
step      x (B, I), h (B, U), [c (B, U)], dt (B, 1)       module(x, h, dt=None) -> (y, h'), with
          -> y (B, O), h_next, [c_next]                   mixed memory module(x, h, c, dt=None)
========  ==============================================  ===========================================

c0/c/c_n/c_next exist only for layers built with mixed_memory=True. ONNX graphs are batch first
whatever the layer's batch_first. Exports have eval-mode semantics (no dropout) and hold a frozen
copy of the weights (see infer.portable).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from torchliquid._atomic import atomic_write

from .modules import (LoopSequence, MixedLoopSequence, MixedScanSequence, MixedSequenceModule,
                      MixedStepModule, ScanSequence, SequenceModule, StepModule)
from .portable import PortableCore, check_exportable, portable_core

PathLike = Union[str, os.PathLike]
FORMS = ("sequence", "step")
ONNX_EXPORTERS = ("dynamo", "torchscript")
METADATA_KEY = "torchliquid"


class ExportError(RuntimeError):
    """An exported graph that does not reproduce the eager model (wrong length or numbers)."""


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def describe(model: nn.Module, form: str) -> dict[str, Any]:
    """The interface of an export of ``model`` in ``form`` (stored in the file's metadata)."""
    mixed = bool(model.use_mixed)
    if form == "sequence":
        inputs = ["x", "h0", "c0", "dt"] if mixed else ["x", "h0", "dt"]
        outputs = ["y", "h_n", "c_n"] if mixed else ["y", "h_n"]
    else:
        inputs = ["x", "h", "c", "dt"] if mixed else ["x", "h", "dt"]
        outputs = ["y", "h_next", "c_next"] if mixed else ["y", "h_next"]
    config = model.config() if callable(getattr(model, "config", None)) else {"class": type(model).__name__}
    from torchliquid import __version__

    return {"form": form, "inputs": inputs, "outputs": outputs, "input_size": model.input_size,
            "state_size": model.state_size, "output_size": model.output_size, "mixed_memory": mixed,
            "return_sequences": bool(model.return_sequences), "model": config,
            "torchliquid_version": __version__}


@contextlib.contextmanager
def _quiet_torch_export():
    """Silence the deprecation notices and progress lines of torch's exporters (we chose them knowingly)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings():
        # torch.jit's deprecation, and torch's exporters calling torch's own deprecated APIs (pytree's
        # LeafSpec, raised from typing_extensions during a deepcopy): nothing a user could act on
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy ONNX exporter's notices
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            registration.setLevel(level)


def script(model: nn.Module, form: str = "sequence") -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a frozen copy of ``model`` (CfC or LTC; dense, wired, mixed memory).

    form="sequence": ``module(input, hx=None, timespans=None)`` like the eager layer (its layouts,
    return_sequences and (h, c) state); form="step": ``module(x, h, [c,] dt=None)``.
    """
    _check_choice("form", form, FORMS)
    core = portable_core(model)
    if form == "sequence":
        module: nn.Module = MixedSequenceModule(core) if core.mixed else SequenceModule(core)
    else:
        module = MixedStepModule(core) if core.mixed else StepModule(core)
    with _quiet_torch_export():
        return torch.jit.script(module.eval())


def export_torchscript(model: nn.Module, path: PathLike, *, form: str = "sequence",
                       metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Script ``model`` (see :func:`script`) and save it to ``path`` atomically; returns the path.

    Load it with ``torch.jit.load(path)`` (Python) or ``torch::jit::load`` (C++). The interface
    description is stored as the extra file ``torchliquid.json``, and each ``metadata`` item as
    an extra file ``KEY.json``. TorchScript is in maintenance upstream; prefer ONNX or
    torch.export for new deployments.
    """
    scripted = script(model, form)
    extra = {f"{key}.json": value if isinstance(value, str) else json.dumps(value)
             for key, value in (metadata or {}).items()}
    extra[f"{METADATA_KEY}.json"] = json.dumps(describe(model, form))
    buffer = io.BytesIO()
    with _quiet_torch_export():
        torch.jit.save(scripted, buffer, _extra_files=extra)
    return _atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- graph interface


def _graph_module(core: PortableCore, form: str, exporter: str) -> nn.Module:
    if form == "step":
        module: nn.Module = MixedStepModule(core) if core.mixed else StepModule(core)
    elif exporter == "dynamo":
        module = MixedScanSequence(core) if core.mixed else ScanSequence(core)
    else:
        module = MixedLoopSequence(core) if core.mixed else LoopSequence(core)
    return module.eval()


def example_inputs(model: nn.Module, form: str, batch: int, length: int,
                   generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, ...]:
    """Random graph inputs (x, h, [c,] dt) in the model's dtype: dt in [0.5, 1.5), states ~ N(0, 1)."""
    reference = next(model.parameters())
    kind = dict(dtype=reference.dtype, device=reference.device)
    lead = (batch, length) if form == "sequence" else (batch,)
    x = torch.randn(*lead, model.input_size, generator=generator).to(**kind)
    h = torch.randn(batch, model.state_size, generator=generator).to(**kind)
    dt = (torch.rand(batch, length if form == "sequence" else 1, generator=generator) + 0.5).to(**kind)
    if model.use_mixed:
        return x, h, torch.randn(batch, model.state_size, generator=generator).to(**kind), dt
    return x, h, dt


def eager_reference(model: nn.Module, form: str, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """What the eager ``model`` returns for graph inputs ``inputs``, in the graph's layout."""
    mixed = bool(model.use_mixed)
    x, h = inputs[0], inputs[1]
    c, dt = (inputs[2], inputs[3]) if mixed else (None, inputs[2])
    hx = (h, c) if mixed else h
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if form == "step":
                x_seq, dt_seq = x.unsqueeze(1), dt  # (B, 1, I), (B, 1)
            else:
                x_seq, dt_seq = x, dt
            if not model.batch_first:
                x_seq, dt_seq = x_seq.transpose(0, 1), dt_seq.transpose(0, 1)
            y, state = model(x_seq, hx, timespans=dt_seq)
    finally:
        model.train(was_training)
    if model.return_sequences:
        y = y if model.batch_first else y.transpose(0, 1)
        if form == "step":
            y = y[:, 0]
    states = tuple(state) if mixed else (state,)
    return (y, *states)


def _dynamic_shapes(model: nn.Module, form: str) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch")
    time = torch.export.Dim("time")
    data = {0: batch, 1: time} if form == "sequence" else {0: batch}
    dt = {0: batch, 1: time} if form == "sequence" else {0: batch}
    states = ({0: batch}, {0: batch}) if model.use_mixed else ({0: batch},)
    return (data, *states, dt)


def _onnx_bytes(module: nn.Module, model: nn.Module, form: str, exporter: str,
                inputs: tuple[torch.Tensor, ...], opset: Optional[int]) -> bytes:
    spec = describe(model, form)
    names, outputs = spec["inputs"], spec["outputs"]
    with _quiet_torch_export():
        if exporter == "dynamo":
            program = torch.onnx.export(module, inputs, None, dynamo=True, input_names=names, output_names=outputs,
                                        dynamic_shapes=_dynamic_shapes(model, form), opset_version=opset,
                                        external_data=False, verbose=False)
            return program.model_proto.SerializeToString()
        axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names + outputs}
        if form == "sequence":
            axes["x"] = axes["dt"] = {0: "batch", 1: "time"}
            if model.return_sequences:
                axes["y"] = {0: "batch", 1: "time"}
        buffer = io.BytesIO()
        torch.onnx.export(torch.jit.script(module), inputs, buffer, dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes=axes, opset_version=opset)
        return buffer.getvalue()


def _with_metadata(data: bytes, metadata: Mapping[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _session(data: bytes) -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("verifying an ONNX export needs onnxruntime: pip install 'torchliquid[export]' "
                          "(or onnxruntime), or pass verify=False") from error

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: unused-initializer notices are not ours to fix
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def verify_onnx(data: Union[bytes, PathLike], model: nn.Module, form: str, lengths: Sequence[int],
                batches: Sequence[int], atol: float = 1e-5) -> float:
    """Run the ONNX graph in onnxruntime for every (batch, length) and compare with eager ``model``.

    Returns the largest absolute difference; raises ExportError on a wrong output shape (naming
    the time axis when the length is wrong) or a difference above ``atol``.
    """
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    session = _session(data)
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for batch, length in zip(batches, lengths):
        inputs = example_inputs(model, form, batch, length, generator)
        expected = eager_reference(model, form, inputs)
        got = session.run(None, {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)})
        for name, want, have in zip(describe(model, form)["outputs"], expected, got):
            if tuple(have.shape) != tuple(want.shape):
                steps = f" for an input of {length} time steps" if form == "sequence" else ""
                time_axis = (form == "sequence" and name == "y" and len(want.shape) == 3
                             and have.ndim == 3 and have.shape[1] != want.shape[1])
                hint = (f": the time axis (axis 1 of 'x') was frozen at export ({have.shape[1]} steps)"
                        if time_axis else "")
                raise ExportError(f"exported ONNX output {name!r} has shape {tuple(have.shape)}{steps}, eager "
                                  f"PyTorch gives {tuple(want.shape)}{hint}; the file cannot honour a dynamic "
                                  "time axis: export with form='step' and loop over time")
            diff = float((torch.from_numpy(have) - want.cpu()).abs().max()) if want.numel() else 0.0
            if not diff <= atol:
                raise ExportError(f"exported ONNX output {name!r} differs from eager PyTorch by {diff:.3g} "
                                  f"(> {atol:g}) at batch {batch}, length {length}")
            worst = max(worst, diff)
    return worst


def describe_verification(form: str, batches: Sequence[int], lengths: Sequence[int], worst: float,
                          atol: float) -> str:
    """One line saying what a passed :func:`verify_onnx` checked (for the CLI and logs)."""
    if form == "sequence":
        sizes = " and ".join(f"batch {b} x {t} steps" for b, t in zip(batches, lengths))
        what = f"whole sequences at {sizes} (longer than the {lengths[0]} traced)" if len(set(lengths)) > 1 \
            else f"whole sequences at {sizes}"
    else:
        what = "one step at batch " + " and ".join(str(b) for b in batches)
    return (f"verified in onnxruntime against eager PyTorch: {what}; every output matches, max abs difference "
            f"{worst:.3g} (tolerance {atol:g})")


def export_onnx(model: nn.Module, path: PathLike, *, form: str = "sequence", exporter: str = "dynamo",
                example_batch: int = 2, example_length: int = 3, opset: Optional[int] = None,
                verify: bool = True, atol: float = 1e-5,
                metadata: Optional[Mapping[str, Any]] = None,
                report: Optional[Callable[[str], None]] = None) -> Path:
    """Export ``model`` (a torchliquid CfC or LTC layer) to ONNX at ``path``; returns the path.

    Args:
        form: "sequence" (dynamic batch and time; see the module table) or "step".
        exporter: "dynamo" (torch.export; the time loop becomes ONNX ``Scan``) or "torchscript"
            (torch's legacy exporter on a scripted loop; ONNX ``Loop``; deprecated upstream).
        example_batch, example_length: sizes traced with (>= 2 each, so that no axis is
            specialised to a constant 1).
        opset: ONNX opset (None: the exporter's default).
        verify: run the file in onnxruntime at the example sizes and at batch + 1 with a length
            2 * example_length + 3 (longer than the example, the A06 trap) and compare with
            eager; the file is written only if it matches within ``atol``.
        metadata: extra key/value pairs for the model's metadata_props (values JSON-encoded unless
            strings); the interface description is always stored under "torchliquid".
        report: called with one line (:func:`describe_verification`) once verification passed.

    Raises:
        TypeError: ``model`` is not a torchliquid CfC/LTC layer.
        ValueError: a bad ``form``, ``exporter`` or example size.
        ExportError: the exported graph has a frozen time axis or different numbers.
    """
    check_exportable(model)
    _check_choice("form", form, FORMS)
    _check_choice("exporter", exporter, ONNX_EXPORTERS)
    for name, value in (("example_batch", example_batch), ("example_length", example_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2 (size 1 would be specialised as a constant), got {value!r}")
    core = portable_core(model)
    module = _graph_module(core, form, exporter)
    inputs = example_inputs(model, form, example_batch, example_length, torch.Generator().manual_seed(0))
    data = _onnx_bytes(module, model, form, exporter, inputs, opset)
    extra = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    data = _with_metadata(data, {METADATA_KEY: json.dumps(describe(model, form)), **extra})
    if verify:
        lengths, batches = [example_length, 2 * example_length + 3], [example_batch, example_batch + 1]
        worst = verify_onnx(data, model, form, lengths=lengths, batches=batches, atol=atol)
        if report is not None:
            report(describe_verification(form, batches, lengths, worst, atol))
    return _atomic_write_bytes(path, data)


def export_program(model: nn.Module, *, form: str = "sequence", example_batch: int = 2,
                   example_length: int = 3) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` with dynamic batch (and time, for form="sequence").

    The program's call is the ONNX graph interface (see the module table). Field case A07:
    exporting the eager layer fails on a dynamic T because its Python loop is unrolled; here
    the loop is torch's ``scan`` higher-order op, so one program serves every length.
    """
    check_exportable(model)
    _check_choice("form", form, FORMS)
    core = portable_core(model)
    module = _graph_module(core, form, "dynamo")
    inputs = example_inputs(model, form, example_batch, example_length, torch.Generator().manual_seed(0))
    with _quiet_torch_export():
        return torch.export.export(module, inputs, dynamic_shapes=_dynamic_shapes(model, form))


EXPORTERS: dict[str, Callable[..., Path]] = {"onnx": export_onnx, "torchscript": export_torchscript}
