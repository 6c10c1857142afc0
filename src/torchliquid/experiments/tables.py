"""Pure table builders over recorded results: no files, no clocks, no torch.

Input is either a store record (``{"cell": {...}, "result": {...}, ...}``) or a bare
``result.json`` dict; :func:`flatten` turns both into one flat row. Every builder works on those
rows, so each number in a report can be checked by hand from the input dicts.

Speed-up follows the study: ``S_n = T_cpu / T_n`` where ``T`` is the training time
(``train_seconds``) and ``T_cpu`` the single-process CPU run of the same dataset, model, batch
size (per process) and epochs; scaling efficiency ``E_n = S_n / n`` with ``n`` the process count
(GPUs for ``gpu:N``). Several seeds of one configuration are averaged first.
"""

from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

NA = "n/a"
MODEL_NAMES = {"cfc": "CfC", "ltc": "LTC"}
DATASET_NAMES = {"sine": "Sine", "har": "UCI HAR", "traffic": "Metro traffic", "power": "Household power"}


def model_name(model: Any) -> str:
    return MODEL_NAMES.get(str(model), str(model))


def dataset_name(dataset: Any) -> str:
    return DATASET_NAMES.get(str(dataset), str(dataset))
#: post-training metrics shown per task, in table order.
QUALITY_METRICS = {"classification": ("accuracy", "loss"), "regression": ("mse", "mae")}


def device_label(result: Mapping[str, Any]) -> str:
    """Canonical device of a run: ``cpu``, ``cpu:N``, ``gpu``, ``gpu:N``.

    From the matrix cell when present, else from ``environment.device`` and ``world_size``.
    """
    cell = result.get("cell")
    if isinstance(cell, Mapping) and cell.get("device"):
        return str(cell["device"])
    env = result.get("environment") or {}
    dev = str(env.get("device") or "cpu")
    ws = result.get("world_size") or env.get("world_size") or 1
    kind = "gpu" if dev.startswith(("cuda", "gpu")) else "cpu"
    return kind if int(ws) == 1 else f"{kind}:{int(ws)}"


def device_sort_key(device: str) -> tuple[int, int]:
    kind, _, n = device.partition(":")
    return (0 if kind == "cpu" else 1, int(n) if n else 1)


def _num(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _stat(stats: Mapping[str, Any], name: str, agg: str) -> Optional[float]:
    """A monitor statistic in either layout: ``{name: {agg: v}}`` or ``{f"{name}_{agg}": v}``."""
    nested = stats.get(name)
    if isinstance(nested, Mapping):
        return _num(nested.get(agg))
    return _num(stats.get(f"{name}_{agg}"))


def gpu_stats(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-GPU utilisation summaries from ``result["monitor"]`` ([] when absent).

    Device keys containing ``gpu`` count (``gpu0``, or ``rank1/gpu1`` after a rank merge).
    """
    monitor = result.get("monitor") or {}
    devices = monitor.get("devices") or {}
    out = []
    for key in sorted(devices):
        stats = devices[key]
        if "gpu" not in str(key) or not isinstance(stats, Mapping):
            continue
        out.append({"gpu": str(key),
                    "util_mean": _stat(stats, "util_pct", "mean"),
                    "util_peak": _stat(stats, "util_pct", "peak"),
                    "mem_mean": _stat(stats, "mem_used_pct", "mean"),
                    "mem_peak": _stat(stats, "mem_used_pct", "peak"),
                    "mem_used_mib_peak": _stat(stats, "mem_used_mib", "peak"),
                    "energy_j": _num(stats.get("energy_j"))})
    return out


def flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row from a store record or a bare result.json dict."""
    result = record.get("result") if isinstance(record.get("result"), Mapping) else record
    cell = record.get("cell") if isinstance(record.get("cell"), Mapping) else {}
    device = device_label({**result, "cell": cell}) if cell else device_label(result)
    kind, _, n = device.partition(":")
    post = result.get("post_training") or {}
    pre = result.get("pre_training") or {}
    task = result.get("task") or ("classification" if "accuracy" in post else "regression")
    row: dict[str, Any] = {
        "cell_id": record.get("cell_id", ""),
        "dataset": cell.get("dataset", result.get("dataset")),
        "model": cell.get("model", result.get("model")),
        "device": device, "device_kind": kind, "nproc": int(n) if n else 1,
        "batch_size": cell.get("batch_size", result.get("batch_size")),
        "epochs": cell.get("epochs", result.get("epochs")),
        "seed": cell.get("seed", result.get("seed")),
        "lr": result.get("lr", cell.get("base_lr")),
        "task": task,
        "train_seconds": _num(result.get("train_seconds")),
        "wall_seconds": _num(record.get("wall_seconds")),
        "sequences_per_second": _num(result.get("sequences_per_second")),
        "params": result.get("params"),
    }
    for name, value in post.items():
        row[f"test_{name}"] = _num(value)
    for name, value in pre.items():
        row[f"pre_{name}"] = _num(value)
    gpus = gpu_stats(result)
    row["gpus"] = gpus
    row["gpu_util_mean"] = _mean([g["util_mean"] for g in gpus])
    row["gpu_unavailable_reason"] = (result.get("monitor") or {}).get("gpu_unavailable_reason")
    row["host_cpu_mean"] = _mean(
        _stat(stats, "cpu_util_pct", "mean")
        for key, stats in ((result.get("monitor") or {}).get("devices") or {}).items()
        if str(key).split("/")[-1] == "host" and isinstance(stats, Mapping)  # "host", "rank1/host"
    )
    return row


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def averaged(rows: Sequence[Mapping[str, Any]], key: str) -> dict[tuple, Optional[float]]:
    """(dataset, model, device, batch_size, epochs) -> mean of ``key`` over seeds."""
    groups: dict[tuple, list[Optional[float]]] = {}
    for r in rows:
        k = (r["dataset"], r["model"], r["device"], r["batch_size"], r["epochs"])
        groups.setdefault(k, []).append(_num(r.get(key)))
    return {k: _mean(v) for k, v in groups.items()}


def fmt(value: Optional[float], digits: int = 4) -> str:
    """Significant-digit formatting; ``n/a`` for missing values."""
    if value is None:
        return NA
    if math.isnan(value):
        return "nan"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


@dataclass
class Table:
    """A titled table of strings that renders as Markdown, plain text or HTML."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)  # long form, for CSV files

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def text(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]
        line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "\n".join([line(self.headers), line(["-" * w for w in widths]), *map(line, self.rows)])

    def html(self) -> str:
        esc = _html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pivot(rows: Sequence[Mapping[str, Any]], dataset: str, key: str, title: str, digits: int = 4) -> Table:
    """Rows (model, batch size, epochs) x columns devices of ``key``, averaged over seeds."""
    rows = [r for r in rows if r["dataset"] == dataset]
    values = averaged(rows, key)
    devices = sorted({r["device"] for r in rows}, key=device_sort_key)
    lines = sorted({(r["model"], r["batch_size"], r["epochs"]) for r in rows})
    body = [[model_name(m), str(b), str(e)] + [fmt(values.get((dataset, m, d, b, e)), digits) if
                                           (dataset, m, d, b, e) in values else "" for d in devices]
            for m, b, e in lines]
    return Table(title, ["Model", "Batch", "Epochs", *devices], body)


class SpeedupTable(NamedTuple):
    """Rows (dicts) and the same as an aligned text table."""

    rows: list[dict[str, Any]]
    text: str


def speedup_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up ``T_cpu / T_n`` and efficiency ``S / n`` per configuration (see module doc)."""
    seconds = averaged(rows, "train_seconds")
    out = []
    for (dataset, model, device, batch, epochs), t in sorted(
            seconds.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]), kv[0][3] or 0, kv[0][4] or 0,
                                             device_sort_key(kv[0][2]))):
        base = seconds.get((dataset, model, "cpu", batch, epochs))
        n = int(device.partition(":")[2] or 1)
        s = base / t if base and t else None
        out.append({"dataset": dataset, "model": model, "batch_size": batch, "epochs": epochs,
                    "device": device, "n": n, "seconds": t, "cpu_seconds": base, "speedup": s,
                    "efficiency": s / n if s is not None else None})
    return out


def speedup_table(results: Sequence[Mapping[str, Any]]) -> SpeedupTable:
    """Speed-up over the CPU baseline from a list of result.json dicts (or store records).

    Runs are grouped by dataset, model, per-process batch size and epochs; the baseline is the
    single-process CPU run of the group. Groups without one get ``n/a``.

    Example:
        >>> cpu = {"model": "cfc", "dataset": "har", "batch_size": 64, "epochs": 50,
        ...        "train_seconds": 100.0, "environment": {"device": "cpu"}, "world_size": 1}
        >>> gpu2 = {**cpu, "train_seconds": 40.0, "environment": {"device": "cuda:0"}, "world_size": 2}
        >>> [round(r["speedup"], 2) for r in speedup_table([cpu, gpu2]).rows]
        [1.0, 2.5]
    """
    rows = speedup_rows([flatten(r) for r in results])
    table = Table("Speed-up over CPU", ["Dataset", "Model", "Batch", "Epochs", "Device", "n", "Time (s)",
                                        "CPU time (s)", "Speed-up", "Efficiency"],
                  [[str(r["dataset"]), model_name(r["model"]), str(r["batch_size"]), str(r["epochs"]), r["device"],
                    str(r["n"]), fmt(r["seconds"]), fmt(r["cpu_seconds"]), fmt(r["speedup"], 3),
                    fmt(r["efficiency"], 3)] for r in rows])
    return SpeedupTable(rows, table.text())


def speedup_pivot(rows: Sequence[Mapping[str, Any]], dataset: str) -> Table:
    """Per dataset: rows (model, batch, epochs) x devices, cells ``S (E)``."""
    sp = [r for r in speedup_rows(rows) if r["dataset"] == dataset]
    devices = sorted({r["device"] for r in sp}, key=device_sort_key)
    by = {(r["model"], r["batch_size"], r["epochs"], r["device"]): r for r in sp}
    lines = sorted({(r["model"], r["batch_size"], r["epochs"]) for r in sp})
    body = []
    for m, b, e in lines:
        cells = []
        for d in devices:
            r = by.get((m, b, e, d))
            cells.append("" if r is None else NA if r["speedup"] is None else
                         f"{r['speedup']:.2f}x (E {r['efficiency']:.2f})")
        body.append([model_name(m), str(b), str(e), *cells])
    return Table(f"{dataset_name(dataset)}: speed-up S = T_cpu/T_n (efficiency E = S/n)", ["Model", "Batch", "Epochs", *devices],
                 body, note=("n/a: no single-process CPU run with the same batch size and epochs to compare with."
                       if any(r["speedup"] is None for r in sp) else ""), records=sp)


def utilisation_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """GPU utilisation and memory utilisation per GPU (mean / peak %) of every GPU run.

    One line per run; multi-GPU runs list each GPU (``gpu0 20/45; gpu1 25/45``). GPU runs
    without monitor data show ``n/a`` and the monitor's reason. ``records`` (for the CSV) hold
    one row per GPU.
    """
    body, records = [], []
    gpu_rows = [r for r in rows if r["device_kind"] == "gpu" or r["gpus"]]
    for r in sorted(gpu_rows, key=lambda r: (r["dataset"], r["model"], device_sort_key(r["device"]), r["batch_size"])):
        base = [r["dataset"], model_name(r["model"]), r["device"], str(r["batch_size"])]
        key = {k: r[k] for k in ("cell_id", "dataset", "model", "device", "batch_size")}
        host = fmt(r.get("host_cpu_mean"), 3)
        if not r["gpus"]:
            why = r.get("gpu_unavailable_reason") or "no monitor data in result.json"
            body.append(base + [NA, NA, host, why])
            records.append({**key, "gpu": None, "host_cpu_mean": r.get("host_cpu_mean"), "note": why})
            continue
        util = "; ".join(f"{g['gpu']} {fmt(g['util_mean'], 3)}/{fmt(g['util_peak'], 3)}" for g in r["gpus"])
        mem = "; ".join(f"{g['gpu']} {fmt(g['mem_mean'], 3)}/{fmt(g['mem_peak'], 3)}" for g in r["gpus"])
        body.append(base + [util, mem, host, ""])
        records += [{**key, **g, "host_cpu_mean": r.get("host_cpu_mean"), "note": ""} for g in r["gpus"]]
    cpu_only = len(rows) - len(gpu_rows)
    note = f"{cpu_only} CPU run(s) have no GPU and are left out." if cpu_only else ""
    return Table("GPU and memory utilisation per GPU (mean / peak, %)",
                 ["Dataset", "Model", "Device", "Batch", "GPU utilisation %", "GPU memory %", "Host CPU % (mean)",
                  "Note"], body, note=note, records=records)


def reference_table(reference: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> Table:
    """This machine vs the study's published numbers, one line per reference row.

    A reference row matches runs with the same dataset, model and device (blank = any) and batch
    size (blank = any); its ``metric`` is a flat-row key (``train_seconds``, ``test_accuracy``,
    ``gpu_util_mean``...). Published values are a point (``value``) or a range (``low``-``high``).
    """
    body, records = [], []
    for ref in reference:
        match = [r for r in rows if all(not ref.get(k) or str(r.get(k)) == str(ref[k])
                                        for k in ("dataset", "model", "device", "batch_size"))]
        metric = str(ref.get("metric") or "")
        values = [v for v in (_num(r.get(metric)) for r in match) if v is not None] if metric else []
        ours = _mean(values)
        point, low, high = (_num(_float_or_none(ref.get(k))) for k in ("value", "low", "high"))
        published = fmt(point) if point is not None else (f"{fmt(low)}-{fmt(high)}" if low is not None else "")
        ratio = fmt(ours / point, 3) if ours is not None and point else ""
        epochs = sorted({r["epochs"] for r in match})
        note = str(ref.get("note") or "")
        if ref.get("epochs") and match and epochs != [int(ref["epochs"])]:
            note = f"ran {epochs} epochs, published {ref['epochs']}; " + note
        if ours is None:
            ours_text = "not run here" if not match else NA
        elif point is None and len(values) > 1:  # a published range: show ours as a range too
            ours_text = f"{fmt(min(values))}-{fmt(max(values))}"
        else:
            ours_text = fmt(ours)
        where = ", ".join(str(ref.get(k)) for k in ("dataset", "model", "device", "batch_size") if ref.get(k))
        body.append([where or "all", metric or "-", published, ours_text, ratio, str(ref.get("source") or ""), note])
        records.append({**dict(ref), "this_machine": ours, "ratio": ours / point if ours is not None and point else None})
    return Table("This machine vs published", ["Runs", "Metric", "Published", "This machine", "Ratio",
                                               "Source", "Note"], body, records=records)


def _float_or_none(x: Any) -> Optional[float]:
    if x is None or (isinstance(x, str) and not x.strip()):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
