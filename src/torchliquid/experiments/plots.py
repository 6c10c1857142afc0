"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: nothing global is touched (a notebook's backend stays as it is) and figures are
freed when the function returns. Each function takes flat rows (see tables.flatten), writes one
PNG and returns its path, or None when there is nothing to draw.

Sine predictions come from ``RUN_DIR/predictions_sine.npz`` written by the trainer: float arrays
``target``, ``before`` and ``after`` of shape (N, T, C), (T, C) or (T,) (the first sequence and
output channel are drawn) and optionally ``t`` of shape (T,) with the time of each step (radians
for the sine task; the x axis says so). Without ``t`` the x axis is the step index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg

from .tables import averaged, dataset_name, device_sort_key, model_name, speedup_rows

FONT = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11,
        "xtick.labelsize": 11, "ytick.labelsize": 11}
DEVICE_COLOURS = {"cpu": "#1f77b4", "cpu:2": "#17becf", "cpu:4": "#9edae5", "gpu": "#ff7f0e",
                  "gpu:2": "#2ca02c", "gpu:4": "#d62728", "gpu:8": "#9467bd"}
_FALLBACK = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
DPI = 110


def _colour(device: str, i: int) -> str:
    return DEVICE_COLOURS.get(device, _FALLBACK[i % len(_FALLBACK)])


def _figure(ncols: int, width: float = 6.0, height: float = 4.6) -> tuple[Figure, list[Any]]:
    """A figure on its own Agg canvas; call inside ``rc_context(FONT)`` so fonts apply."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    tmp.replace(path)  # a half-written PNG never sits under the final name
    return path


def plot_time_vs_batch(rows: Sequence[Mapping[str, Any]], dataset: str, path: Path) -> Optional[Path]:
    """Training time vs batch size, one line per device, one panel per model.

    With a single batch size (sine: batch 1) lines would be lone dots, so it draws one bar per
    device instead.
    """
    import matplotlib

    rows = [r for r in rows if r["dataset"] == dataset and r.get("train_seconds") is not None]
    if not rows:
        return None
    seconds = averaged(rows, "train_seconds")
    models = sorted({r["model"] for r in rows})
    batches_all = sorted({r["batch_size"] for r in rows})
    with matplotlib.rc_context(FONT):
        fig, axes = _figure(len(models))
        for ax, model in zip(axes, models):
            devices = sorted({r["device"] for r in rows if r["model"] == model}, key=device_sort_key)
            if len(batches_all) == 1:
                ys = [_mean_of(seconds, model, d) for d in devices]
                bars = ax.bar(devices, ys, color=[_colour(d, i) for i, d in enumerate(devices)], width=0.5)
                ax.set_xlim(-0.75, len(devices) - 0.25)
                ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys], padding=2)
                ax.set_xlabel(f"Device (batch size {batches_all[0]})")
                ax.set_ylim(0, max(ys) * 1.15)
            else:
                spread: list[float] = []
                for i, device in enumerate(devices):
                    pts = sorted((k[3], v) for k, v in seconds.items()
                                 if k[1] == model and k[2] == device and v is not None)
                    spread += [p[1] for p in pts]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linewidth=2, markersize=7,
                            color=_colour(device, i), label=device)
                ax.set_xscale("log", base=2)
                batches = sorted({r["batch_size"] for r in rows if r["model"] == model})
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.minorticks_off()
                if spread and min(spread) > 0 and max(spread) / min(spread) > 20:
                    ax.set_yscale("log")  # CPU LTC vs GPU CfC spans decades
                else:
                    ax.set_ylim(bottom=0)
                ax.set_xlabel("Batch size per process (sequences)")
                ax.legend(title="Device")
            ax.set_title(model_name(model))
            ax.set_ylabel("Training time (s)")
            ax.grid(True, axis="y", alpha=0.3)
        what = "per device" if len(batches_all) == 1 else "vs batch size"
        fig.suptitle(f"Training time {what} - {dataset_name(dataset)}", fontsize=14)
        return _save(fig, path)


def _mean_of(seconds: Mapping[tuple, Optional[float]], model: str, device: str) -> float:
    vals = [v for k, v in seconds.items() if k[1] == model and k[2] == device and v is not None]
    return sum(vals) / len(vals) if vals else 0.0


def plot_speedup(rows: Sequence[Mapping[str, Any]], dataset: str, path: Path) -> Optional[Path]:
    """Grouped bars: speed-up over CPU per batch size (groups) and device (bars), per model."""
    import matplotlib

    sp = [r for r in speedup_rows(rows) if r["dataset"] == dataset and r["speedup"] is not None
          and r["device"] != "cpu"]
    if not sp:
        return None
    models = sorted({r["model"] for r in sp})
    with matplotlib.rc_context(FONT):
        fig, axes = _figure(len(models))
        for ax, model in zip(axes, models):
            mine = [r for r in sp if r["model"] == model]
            batches = sorted({r["batch_size"] for r in mine})
            devices = sorted({r["device"] for r in mine}, key=device_sort_key)
            width = 0.8 / len(devices)
            for i, device in enumerate(devices):
                vals = {r["batch_size"]: r["speedup"] for r in mine if r["device"] == device}
                xs = [j + (i - (len(devices) - 1) / 2) * width for j, b in enumerate(batches) if b in vals]
                ys = [vals[b] for b in batches if b in vals]
                bars = ax.bar(xs, ys, width=width * 0.95, color=_colour(device, i), label=device)
                # White boxes keep labels readable where they cross the CPU = 1 line.
                ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=10, padding=2,
                             bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"})
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2, label="CPU = 1", zorder=0)
            ax.set_xticks(range(len(batches)), [str(b) for b in batches])
            ax.set_title(model_name(model))
            ax.set_xlabel("Batch size per process (sequences)")
            ax.set_ylabel("Speed-up over CPU (T_cpu / T_n, x)")
            top = max(r["speedup"] for r in mine)
            ax.set_ylim(0, max(1.4, top * 1.4))  # headroom: the legend sits above the bars
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(loc="upper center", ncol=len(devices) + 1, fontsize=10, columnspacing=1.0,
                      handlelength=1.5)
        fig.suptitle(f"Speed-up over the CPU baseline - {dataset_name(dataset)}", fontsize=14)
        return _save(fig, path)


def _series(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array, dtype=float)
    if a.ndim == 3:
        return a[0, :, 0]
    if a.ndim == 2:
        return a[:, 0]
    return a.reshape(-1)


def load_predictions(path: Path) -> Optional[dict[str, np.ndarray]]:
    """target/before/after (and t) from a predictions_sine.npz; None when missing or malformed.

    Without a ``t`` array, ``t`` is the step index 0..T-1 and the result has no ``"t_is_time"``.
    """
    try:
        with np.load(path) as data:
            out = {k: _series(data[k]) for k in ("target", "before", "after")}
            n = len(out["target"])
            has_t = "t" in data.files
            out["t"] = np.asarray(data["t"], dtype=float).reshape(-1) if has_t else np.arange(n)
    except (OSError, KeyError, ValueError):
        return None
    if any(len(v) != n for v in out.values()):
        return None
    if has_t:
        out["t_is_time"] = np.array(True)
    return out


def _pi_ticks(ax: Any, t: np.ndarray) -> None:
    """x ticks at multiples of π/2 (labelled 0, π/2, π, ...) across the range of ``t``."""
    if not len(t) or not np.all(np.isfinite(t)):
        return
    slack = 1e-4  # t saved as float32: 3π may land a hair above or below
    halves = np.arange(np.ceil(t.min() / (np.pi / 2) - slack), np.floor(t.max() / (np.pi / 2) + slack) + 1)
    if not 2 <= len(halves) <= 13:
        return  # too few or too many for readable π labels: keep matplotlib's numbers

    def label(k: int) -> str:
        sign, k = ("−" if k < 0 else ""), abs(k)
        if k == 0:
            return "0"
        whole = "π" if k == 2 else f"{k // 2}π"
        return sign + (whole if k % 2 == 0 else "π/2" if k == 1 else f"{k}π/2")

    ax.set_xticks(halves * np.pi / 2, [label(int(k)) for k in halves])


def sine_predictions_figure(predictions: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """The figure of :func:`plot_sine_predictions` (not saved): one panel per model, one shared
    legend below the panels, so it never covers a curve."""
    models = sorted(predictions)
    fig, axes = _figure(len(models), height=5.0)
    for ax, model in zip(axes, models):
        p = predictions[model]
        ax.plot(p["t"], p["target"], color="black", linewidth=2.5, label="target sin(2t)")
        ax.plot(p["t"], p["before"], color="#7f7f7f", linestyle="--", linewidth=1.8, label="before training")
        ax.plot(p["t"], p["after"], color="#d62728", linewidth=2, label="after training")
        mse = float(np.mean((p["after"] - p["target"]) ** 2))
        ax.set_title(f"{model_name(model)} (MSE after training {mse:.3g})")
        if "t_is_time" in p:
            ax.set_xlabel("t (radians)")
            _pi_ticks(ax, np.asarray(p["t"], dtype=float))
        else:
            ax.set_xlabel("Step")
        ax.set_ylabel("Output (a.u.)")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    fig.suptitle("Sine: predictions before and after training vs target", fontsize=14)
    return fig


def plot_sine_predictions(predictions: Mapping[str, Mapping[str, np.ndarray]], path: Path) -> Optional[Path]:
    """Target vs output before and after training, one panel per model (``{model: arrays}``)."""
    import matplotlib

    if not predictions:
        return None
    with matplotlib.rc_context(FONT):
        return _save(sine_predictions_figure(predictions), path)

