"""Inference: predict from a trained run, stream step by step, export with a dynamic time axis.

    import torchliquid.infer as infer
    predictor = infer.load("runs/cfc-traffic")          # Predictor: model + saved preprocessing
    predictor.predict(windows).values                   # de-normalised (N, T, O)
    infer.predict_file("runs/cfc-traffic", "rows.csv", "pred.csv")

    stream = infer.Stream(model)                        # online: one step at a time, state kept
    y_t = stream.step(x_t, dt=0.5)

    infer.export_onnx(model, "model.onnx")              # any batch, any T (ONNX Scan), verified
    infer.export_torchscript(model, "model.pt")         # torch.jit.script that works (A05)

Names are imported on first use (PEP 562), so ``torchliquid.infer.commands`` — which the CLI
imports to register its subcommands — does not pull in pandas, onnx or the data modules.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "ExportError": "export",
    "export_onnx": "export",
    "export_program": "export",
    "export_torchscript": "export",
    "script": "export",
    "verify_onnx": "export",
    "predict_file": "files",
    "write_prediction": "files",
    "portable_core": "portable",
    "Prediction": "predict",
    "Predictor": "predict",
    "load": "predict",
    "SequenceStates": "stream",
    "Stream": "stream",
    "hidden_states": "stream",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
