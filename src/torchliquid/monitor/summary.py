"""Pure functions over recorded samples: aggregate, merge across ranks, write CSV.

A *sample* is one flat record from a backend: ``{"t": seconds_since_start,
"device": "gpu0" | "host" | ..., <metric>: float, ...}`` (see ``backends.py`` for the
metric names). Nothing here touches hardware, threads or clocks, so every number in a
summary can be checked against a hand-computed series.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torchliquid._atomic import atomic_write

from .backends import Record

#: Keys that are not metrics.
INDEX_KEYS = ("t", "device")
#: Monotonic counters: their mean and peak mean nothing, their increase is the result.
CUMULATIVE_KEYS = frozenset({"energy_j"})


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def trapezoid(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Integral of ``ys`` over ``ts`` by the trapezoid rule (uneven spacing allowed)."""
    return sum(0.5 * (ys[i] + ys[i - 1]) * (ts[i] - ts[i - 1]) for i in range(1, len(ts)))


def counter_increase(values: Sequence[float]) -> float:
    """Total increase of a monotonic counter; negative steps (a reset) are skipped."""
    return sum(max(0.0, values[i] - values[i - 1]) for i in range(1, len(values)))


def _summarize_device(rows: list[Record]) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: r["t"])
    ts = [float(r["t"]) for r in rows]
    out: dict[str, Any] = {
        "n_samples": len(rows),
        "duration_s": ts[-1] - ts[0] if ts else 0.0,
    }
    keys: dict[str, None] = {}  # ordered set: keep first-seen metric order in the output
    for r in rows:
        keys.update(dict.fromkeys(k for k in r if k not in INDEX_KEYS))
    for key in keys:
        if key in CUMULATIVE_KEYS:
            continue
        vals = [r[key] for r in rows if _finite(r.get(key))]
        if vals:
            out[f"{key}_mean"] = sum(vals) / len(vals)
            out[f"{key}_peak"] = max(vals)
    # Energy: a reported counter wins; otherwise integrate power over the samples
    # that carry it (a device without either simply has no energy entry).
    energy = [(float(r["t"]), r["energy_j"]) for r in rows if _finite(r.get("energy_j"))]
    power = [(float(r["t"]), r["power_w"]) for r in rows if _finite(r.get("power_w"))]
    if energy:
        out["energy_j"] = counter_increase([e for _, e in energy])
        out["energy_source"] = "counter"
    elif power:
        out["energy_j"] = trapezoid([t for t, _ in power], [p for _, p in power])
        out["energy_source"] = "power_trapezoid"
    return out


def summarize(samples: Iterable[Record], interval: float | None = None) -> dict[str, Any]:
    """Aggregate a sample series into per-device means, peaks and energy.

    Args:
        samples: flat records, any order, any mix of devices.
        interval: the nominal sampling interval, copied into the result when given.

    Returns:
        ``{"n_samples", "n_ticks", "duration_s", "interval_s", "devices": {device:
        {"n_samples", "duration_s", "<metric>_mean", "<metric>_peak", ...,
        "energy_j", "energy_source"}}}``. Means are plain sample means (the schedule is
        regular, so they equal time-weighted means up to the final partial tick).
        ``energy_j`` is the counter's increase when records carry ``energy_j``, else the
        trapezoid integral of ``power_w``; absent when neither is reported.

    Example:
        >>> s = summarize([{"t": 0.0, "device": "gpu0", "power_w": 100.0},
        ...                {"t": 0.2, "device": "gpu0", "power_w": 200.0}])
        >>> s["devices"]["gpu0"]["energy_j"], s["devices"]["gpu0"]["power_w_peak"]
        (30.0, 200.0)
    """
    by_device: dict[str, list[Record]] = {}
    ticks: set[float] = set()
    for r in samples:
        by_device.setdefault(str(r["device"]), []).append(r)
        ticks.add(float(r["t"]))
    return {
        "n_samples": sum(len(v) for v in by_device.values()),
        "n_ticks": len(ticks),
        "duration_s": (max(ticks) - min(ticks)) if ticks else 0.0,
        "interval_s": interval,
        "devices": {dev: _summarize_device(rows) for dev, rows in by_device.items()},
    }


def merge_rank_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-rank ``HardwareMonitor.summary()`` dicts on rank 0 (list index = rank).

    Device keys become ``"rank{r}/{device}"`` so two ranks' ``"host"`` entries (or a
    shared GPU) stay apart. ``gpu_available`` is True if any rank saw a GPU; the reason
    lists every rank that did not, e.g. ``"rank1: NVML: Driver Not Loaded"``.

    Raises:
        ValueError: ``summaries`` is empty.
    """
    if not summaries:
        raise ValueError("summaries must hold one summary per rank, got an empty list")
    devices: dict[str, Any] = {}
    per_rank: list[dict[str, Any]] = []
    reasons: list[str] = []
    for rank, s in enumerate(summaries):
        for dev, stats in s.get("devices", {}).items():
            devices[f"rank{rank}/{dev}"] = stats
        per_rank.append({k: v for k, v in s.items() if k != "devices"})
        if not s.get("gpu_available", False):
            reasons.append(f"rank{rank}: {s.get('gpu_unavailable_reason') or 'unknown'}")
    any_gpu = any(s.get("gpu_available", False) for s in summaries)
    return {
        "world_size": len(summaries),
        "gpu_available": any_gpu,
        "gpu_unavailable_reason": "; ".join(reasons) or None,
        "interval_s": summaries[0].get("interval_s"),
        "duration_s": max(float(s.get("duration_s") or 0.0) for s in summaries),
        "n_samples": sum(int(s.get("n_samples") or 0) for s in summaries),
        "devices": devices,
        "per_rank": per_rank,
    }


def write_samples_csv(samples: Sequence[Record], path: str | os.PathLike[str]) -> Path:
    """Write the raw time series as CSV atomically (temp file + ``os.replace``).

    Columns are ``t, device`` then every metric in first-seen order; a metric a device
    does not report is an empty cell. Parent directories are created.

    Returns:
        The path written.
    """
    columns: dict[str, None] = dict.fromkeys(INDEX_KEYS)
    for r in samples:
        columns.update(dict.fromkeys(r))
    with atomic_write(path) as f:  # readers see the old file or the whole new one, never half
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(samples)
    return Path(path)
