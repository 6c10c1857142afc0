"""Predictions from a trained run: raw feature windows in, answers in the data's own units out.

    import torchliquid.infer
    predictor = torchliquid.infer.load("runs/cfc-traffic")  # model (eval mode) + saved preprocessing
    result = predictor.predict(windows)                     # (N, T, I) or (T, I), un-normalised
    result.values                                           # regression: (N, T, O) in target units
    result.classes, result.probabilities                    # classification: (N, T), (N, T, C)

The run's checkpoint (checksummed, loaded with ``weights_only=True``) records the model spec, the
task and the normalisation statistics fitted on the training split, so inputs are normalised
exactly as in training and regression outputs are mapped back with the target's mean and std.

Windows are the per-step features the dataset derives from its raw rows
(``Dataset.features_from_frame``) BEFORE normalisation; for files in a dataset's raw format use
:func:`torchliquid.infer.predict_file`.

Shape legend: N windows, T steps per window, I input features, O targets, C classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from torchliquid.data import apply_normalization, get_dataset, invert_normalization
from torchliquid.data.domains import FeatureDomain, first_violation
from torchliquid.nn import build_model
from torchliquid.train import CheckpointError, load_run

TASKS = ("regression", "classification")


@dataclass(frozen=True)
class Prediction:
    """The model's answer for N windows of T steps.

    Attributes:
        task: "regression" or "classification".
        values: regression outputs (N, T, O) float32, de-normalised into the target's units.
        classes: classification class ids (N, T) int64 (argmax of the probabilities).
        probabilities: classification softmax probabilities (N, T, C) float32.
        names: target names (regression) or class names (classification), one per O or C.
    Arrays of a (T, I) input have no N axis. Fields of the other task are None.
    """

    task: str
    values: Optional[np.ndarray]
    classes: Optional[np.ndarray]
    probabilities: Optional[np.ndarray]
    names: tuple[str, ...]


def _names(section: Any) -> tuple[str, ...]:
    return tuple(section.get("names", ())) if isinstance(section, Mapping) else ()


class WindowValueError(ValueError):
    """A bad value in the windows given to a Predictor, at ``window`` and ``step`` (0-based), so a
    caller that cut the windows from a file can name the file's row too."""

    def __init__(self, message: str, window: int, step: int) -> None:
        super().__init__(message)
        self.window, self.step = window, step


class Predictor:
    """A trained model plus the preprocessing it was trained with.

    Args:
        model: a sequence model mapping (B, T, I) -> (y (B, T, O), h_n); put in eval mode here.
        task: "regression" or "classification".
        normalization: the run's ``DatasetSplits.normalization`` dict ("inputs" and, for
            regression, "target" sections of mean/std).
        seq_len: the training window length T (None: any length is accepted).
        feature_names, target_names: for messages and file headers (default: from the stats).
        device: where the model runs ("cpu", "cuda", ...).
    """

    def __init__(self, model: nn.Module, *, task: str, normalization: Mapping[str, Any],
                 seq_len: Optional[int] = None, feature_names: Sequence[str] = (),
                 target_names: Sequence[str] = (), dataset: Optional[str] = None,
                 device: Union[str, torch.device] = "cpu", run_dir: Optional[Path] = None,
                 feature_domains: Mapping[str, FeatureDomain] = MappingProxyType({})) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        if not isinstance(normalization, Mapping) or not isinstance(normalization.get("inputs"), Mapping):
            raise ValueError("normalization must be the run's normalisation dict with an 'inputs' section "
                             f"(mean/std per feature), got {normalization!r:.200}")
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.task = task
        self.normalization = dict(normalization)
        self.seq_len = seq_len
        self.dataset = dataset
        self.run_dir = run_dir
        self.feature_names = tuple(feature_names) or _names(normalization["inputs"])
        self.feature_domains = feature_domains
        classes = tuple(normalization.get("classes") or ())
        self.target_names = tuple(target_names) or classes or _names(normalization.get("target"))
        self.input_size = len(normalization["inputs"]["mean"])
        model_inputs = getattr(model, "input_size", self.input_size)
        if model_inputs != self.input_size:
            raise ValueError(f"the model takes {model_inputs} input features but the normalisation has "
                             f"{self.input_size}; they belong to different runs")
        if len(self.feature_names) != self.input_size:
            self.feature_names = tuple(f"feature_{i}" for i in range(self.input_size))

    @classmethod
    def from_run(cls, run_dir: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> "Predictor":
        """The predictor of a run directory written by ``torchliquid train`` (its checkpoint.pt)."""
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {run_dir} is a file, not a folder; pass the --out folder of "
                                    "torchliquid train")
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {run_dir} does not exist; pass the --out of torchliquid train")
        check_device(device)  # before the (possibly slow) checkpoint load
        payload, info = load_run(run_dir)
        spec = info.get("model")
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise CheckpointError(f"{run_dir}/checkpoint.pt records no model spec (run_info['model'] with a "
                                  "'name'); it cannot be rebuilt")
        kwargs = dict(spec)
        model = build_model(kwargs.pop("name"), **kwargs)
        try:
            state = payload["trainer"]["model"]
        except (KeyError, TypeError):
            raise CheckpointError(f"{run_dir}/checkpoint.pt has no trainer.model weights") from None
        model.load_state_dict(state)
        dataset_info = info.get("dataset") if isinstance(info.get("dataset"), Mapping) else {}
        name = dataset_info.get("name")
        feature_names: Sequence[str] = ()
        target_names: Sequence[str] = ()
        domains: Mapping[str, FeatureDomain] = MappingProxyType({})
        try:
            registered = get_dataset(name)
            feature_names, target_names = registered.feature_names, registered.target_names
            domains = registered.feature_domains
        except ValueError:
            pass  # a dataset this version does not know: fall back to the names in the stats
        return cls(model, task=info.get("task", ""), normalization=info.get("normalization") or {},
                   seq_len=dataset_info.get("seq_len"), feature_names=feature_names,
                   target_names=target_names, dataset=name, device=device, run_dir=run_dir,
                   feature_domains=domains)

    def __repr__(self) -> str:
        return (f"Predictor({type(self.model).__name__}, task={self.task!r}, dataset={self.dataset!r}, "
                f"seq_len={self.seq_len}, inputs={self.input_size})")

    # -- input ---------------------------------------------------------------------------------

    def check_windows(self, windows: Any, any_length: bool = False) -> tuple[np.ndarray, bool]:
        """(windows as float64 (N, T, I), unbatched) after checking shape, numbers and finiteness.

        Raises ValueError naming the window, step and feature of the first bad value (not finite,
        or outside the dataset's ``feature_domains``: a weekday of 9, hour as 0-23), or the
        axis whose size is wrong (expected vs got).
        """
        if isinstance(windows, torch.Tensor):
            windows = windows.detach().cpu().numpy()
        array = np.asarray(windows)
        if array.dtype == bool or not (np.issubdtype(array.dtype, np.number) or array.dtype == object):
            raise ValueError(f"windows must hold numbers, got dtype {array.dtype}"
                             + (f" (first value {array.flat[0].item()!r})" if array.size else ""))
        if np.iscomplexobj(array):
            raise ValueError(f"windows must hold real numbers, got dtype {array.dtype}")
        if array.dtype == object:
            array = _object_to_float(array)
        if array.ndim not in (2, 3):
            raise ValueError(f"windows must be (N, T, I) or one window (T, I) with I = {self.input_size}, "
                             f"got shape {array.shape}")
        unbatched = array.ndim == 2
        array_NTI = array[None] if unbatched else array
        n, steps, features = array_NTI.shape
        if features != self.input_size:
            raise ValueError(f"windows must have {self.input_size} features per step "
                             f"({', '.join(self.feature_names)}), got {features} (shape {array.shape})")
        if n == 0 or steps == 0:
            raise ValueError(f"windows must hold at least one window of at least one step, got shape {array.shape}")
        if self.seq_len is not None and steps != self.seq_len and not any_length:
            raise ValueError(f"windows must have {self.seq_len} steps (the run's window length), got {steps} "
                             f"(shape {array.shape}); pass any_length=True (--any-length) to run other lengths")
        array_NTI = array_NTI.astype(np.float64, copy=False)
        def at(w: int, t: int, i: int) -> str:
            where = f"step {t}" if unbatched else f"window {w}, step {t}"
            return f"{where}, feature {self.feature_names[i]!r} (column {i}) is {array_NTI[w, t, i]:g}"

        bad = ~np.isfinite(array_NTI)
        if bad.any():
            w, t, i = (int(k) for k in np.argwhere(bad)[0])
            raise WindowValueError(f"{at(w, t, i)}; expected a finite number: fill or drop missing values first", w, t)
        outside = first_violation(array_NTI, self.feature_names, self.feature_domains)
        if outside is not None:
            w, t, i, domain = outside
            raise WindowValueError(f"{at(w, t, i)}; expected {domain.describe()}", w, t)
        return array_NTI, unbatched

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, windows: Any, *, batch_size: int = 1024, any_length: bool = False) -> Prediction:
        """Predict for raw (un-normalised) feature windows (N, T, I) or (T, I).

        ``any_length``: accept windows of a length other than the run's seq_len (the models take
        any T, but the run was trained and evaluated on seq_len).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        raw_NTI, unbatched = self.check_windows(windows, any_length)
        x_NTI = torch.from_numpy(apply_normalization(raw_NTI, self.normalization, "inputs"))
        dtype = next(self.model.parameters()).dtype
        outputs = []
        with torch.inference_mode():
            for start in range(0, x_NTI.shape[0], batch_size):
                x_BTI = x_NTI[start:start + batch_size].to(device=self.device, dtype=dtype)
                outputs.append(self.model(x_BTI)[0].float().cpu())
        return self.postprocess(torch.cat(outputs), unbatched)

    def postprocess(self, output: Any, unbatched: bool = False) -> Prediction:
        """Model outputs (..., O) -> a Prediction (de-normalised values, or classes and probabilities).
        ``output``: a tensor, or anything numpy reads as numbers (an array, nested lists)."""
        output = (output.detach() if isinstance(output, torch.Tensor) else torch.as_tensor(np.asarray(output))).float().cpu()
        if unbatched:
            output = output[0]
        if self.task == "classification":
            probabilities = torch.softmax(output, dim=-1)
            return Prediction(self.task, None, probabilities.argmax(-1).numpy(), probabilities.numpy(),
                              self.target_names)
        values = invert_normalization(output.numpy(), self.normalization, "target")
        return Prediction(self.task, values, None, None, self.target_names)

    def normalize(self, raw: Any) -> torch.Tensor:
        """Raw features (..., I) -> the normalised float tensor the model takes (no shape checks)."""
        return torch.as_tensor(apply_normalization(np.asarray(raw, dtype=np.float64), self.normalization, "inputs"))


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a torch.device this process can use; ValueError saying why not otherwise."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} was requested but torch sees no CUDA GPU (torch "
                             f"{torch.__version__}); use --device cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {str(device)!r} does not exist: torch sees {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return resolved


def _object_to_float(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.float64)
    for index, value in np.ndenumerate(array):
        try:
            out[index] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"windows must hold numbers; the value at index {index} is {value!r}") from None
    return out


def load(run_dir: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> Predictor:
    """The :class:`Predictor` of a trained run directory (model in eval mode + saved preprocessing)."""
    return Predictor.from_run(run_dir, device=device)
