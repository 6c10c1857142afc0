"""Inference: predict from a trained run, stream step by step, export with a dynamic time axis.

    import torchliquid.infer as infer
    predictor = infer.load("runs/cfc-traffic")          # Predictor: model + saved preprocessing
    predictor.predict(windows).values                   # de-normalised (N, T, O)
    infer.predict_file("runs/cfc-traffic", "rows.csv", "pred.csv")

    stream = infer.Stream(model)                        # online: one step at a time, state kept
    y_t = stream.step(x_t, dt=0.5)

    infer.export_onnx(model, "model.onnx")              # any batch, any T (ONNX Scan), verified
    infer.export_torchscript(model, "model.pt")         # torch.jit.script that works (A05)
"""

from .export import (ExportError, export_onnx, export_program, export_torchscript, script,
                     verify_onnx)
from .files import predict_file, write_prediction
from .portable import portable_core
from .predict import Prediction, Predictor, load
from .stream import SequenceStates, Stream, hidden_states

__all__ = [
    "ExportError",
    "Prediction",
    "Predictor",
    "SequenceStates",
    "Stream",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "hidden_states",
    "load",
    "portable_core",
    "predict_file",
    "script",
    "verify_onnx",
    "write_prediction",
]
