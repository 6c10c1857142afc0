"""Pure table builders over recorded results: no files, no clocks, no torch.

Input is either a store record (``{"cell": {...}, "result": {...}, ...}``) or a bare
``result.json`` dict; :func:`flatten` turns both into one flat row. Every builder works on those
rows, so each number in a report can be checked by hand from the input dicts.

Speed-up follows the study: ``S_n = T_cpu / T_n`` where ``T`` is the training time
(``train_seconds``) and ``T_cpu`` the single-process CPU run of the same dataset, model, batch
size (per process) and epochs; scaling efficiency ``E_n = S_n / n`` with ``n`` the process count
(GPUs for ``gpu:N``). Several seeds of one configuration are averaged first.

Threads: every row carries ``threads`` (intra-op threads per process: what the trainer recorded
in ``result.environment.threads``, else what the runner pinned, ``threads_per_process``). Tables
name them in the device columns (``cpu:2 (2x1 thr)``), so a speed-up of N processes is read
against the threads of the baseline (N processes x T threads vs 1 process x N*T threads).
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
        "threads": _threads(result, record),
        "busy_cores_at_start": _num(record.get("busy_cores_at_start")),
        "train_seconds": _num(result.get("train_seconds")),
        "wall_seconds": _num(record.get("wall_seconds")),
        "sequences_per_second": _num(result.get("sequences_per_second")),
        "params": result.get("params"),
        "effective_params": result.get("effective_params"),
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


def _threads(result: Mapping[str, Any], record: Mapping[str, Any]) -> Optional[int]:
    """Intra-op threads per process: recorded by the trainer, else pinned by the runner."""
    for value in ((result.get("environment") or {}).get("threads"), record.get("threads_per_process")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def threads_label(nproc: int, threads: Optional[int]) -> str:
    """``2 thr`` (one process) or ``2x1 thr`` (processes x threads each); '' when unknown."""
    if threads is None:
        return ""
    return f"{threads} thr" if nproc == 1 else f"{nproc}x{threads} thr"


def device_headers(rows: Sequence[Mapping[str, Any]], devices: Sequence[str]) -> list[str]:
    """Column headers for ``devices``: ``cpu (2 thr)``, ``cpu:2 (2x1 thr)``; ``cpu:2 (threads vary)``
    when its runs used different counts; the bare device when no run recorded its threads."""
    headers = []
    for device in devices:
        counts = {r.get("threads") for r in rows if r["device"] == device}
        nproc = int(device.partition(":")[2] or 1)
        if counts == {None} or not counts:
            headers.append(device)
        elif len(counts - {None}) == 1:
            headers.append(f"{device} ({threads_label(nproc, next(iter(counts - {None})))})")
        else:
            headers.append(f"{device} (threads vary)")
    return headers


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
    return Table(title, ["Model", "Batch", "Epochs", *device_headers(rows, devices)], body)


class SpeedupTable(NamedTuple):
    """Rows (dicts) and the same as an aligned text table."""

    rows: list[dict[str, Any]]
    text: str


def speedup_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up ``T_cpu / T_n`` and efficiency ``S / n`` per configuration (see module doc)."""
    seconds = averaged(rows, "train_seconds")
    threads = _group_threads(rows)
    out = []
    for (dataset, model, device, batch, epochs), t in sorted(
            seconds.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]), kv[0][3] or 0, kv[0][4] or 0,
                                             device_sort_key(kv[0][2]))):
        base = seconds.get((dataset, model, "cpu", batch, epochs))
        n = int(device.partition(":")[2] or 1)
        s = base / t if base and t else None
        out.append({"dataset": dataset, "model": model, "batch_size": batch, "epochs": epochs,
                    "device": device, "n": n, "threads": threads.get((dataset, model, device, batch, epochs)),
                    "cpu_threads": threads.get((dataset, model, "cpu", batch, epochs)),
                    "seconds": t, "cpu_seconds": base, "speedup": s,
                    "efficiency": s / n if s is not None else None})
    return out


def _group_threads(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, Optional[int]]:
    """(dataset, model, device, batch_size, epochs) -> threads per process of its runs (None if unknown or mixed)."""
    groups: dict[tuple, set] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["device"], r["batch_size"], r["epochs"]), set()).add(
            r.get("threads"))
    return {k: next(iter(v)) if len(v) == 1 else None for k, v in groups.items()}


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
    table = Table("Speed-up over CPU", ["Dataset", "Model", "Batch", "Epochs", "Device", "n", "Threads/proc",
                                        "Time (s)", "CPU threads", "CPU time (s)", "Speed-up", "Efficiency"],
                  [[str(r["dataset"]), model_name(r["model"]), str(r["batch_size"]), str(r["epochs"]), r["device"],
                    str(r["n"]), _or_na(r["threads"]), fmt(r["seconds"]), _or_na(r["cpu_threads"]),
                    fmt(r["cpu_seconds"]), fmt(r["speedup"], 3), fmt(r["efficiency"], 3)] for r in rows])
    return SpeedupTable(rows, table.text())


def _or_na(value: Any) -> str:
    return NA if value is None else str(value)


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
    notes = []
    if any(r["speedup"] is None for r in sp):
        notes.append("n/a: no single-process CPU run with the same batch size and epochs to compare with.")
    notes.append(thread_note([r for r in rows if r["dataset"] == dataset]))
    return Table(f"{dataset_name(dataset)}: speed-up S = T_cpu/T_n (efficiency E = S/n)",
                 ["Model", "Batch", "Epochs", *device_headers([r for r in rows if r["dataset"] == dataset], devices)],
                 body, note=" ".join(n for n in notes if n), records=sp)


def thread_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on the threads of the CPU runs: cores used in total per device, and whether
    the CPU devices used the same number (a fair comparison) or not."""
    cpu = [r for r in rows if r["device_kind"] == "cpu"]
    totals: dict[str, set] = {}
    for r in cpu:
        totals.setdefault(r["device"], set()).add(r["threads"] * r["nproc"] if r.get("threads") else None)
    if not totals or all(v == {None} for v in totals.values()):
        return "Threads per process were not recorded for these runs."
    parts = [f"{d}: {threads_label(int(d.partition(':')[2] or 1), next(iter(_known(rows, d))))}"
             for d in sorted(totals, key=device_sort_key) if len(_known(rows, d)) == 1]
    used = {t for v in totals.values() for t in v if t is not None}
    verdict = (f"every CPU device used {next(iter(used))} thread(s) in total, so CPU speed-ups compare equal "
               "core counts" if len(used) == 1 else
               "the CPU devices used different thread totals, so CPU speed-ups also reflect the extra threads")
    return f"Intra-op threads per process ({', '.join(parts)}): {verdict}."


#: other work on at least this many cores when a cell started makes its time suspect
BUSY_THRESHOLD = 0.5


def busy_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """A warning naming the cells that started while other work kept cores busy ('' if none)."""
    busy = [r for r in rows if (r.get("busy_cores_at_start") or 0.0) >= BUSY_THRESHOLD]
    if not busy:
        return ""
    worst = max(r["busy_cores_at_start"] for r in busy)
    names = ", ".join(sorted(str(r["cell_id"] or r["device"]) for r in busy)[:6]) + (", ..." if len(busy) > 6 else "")
    return (f"Warning: {len(busy)} of {len(rows)} cells started while other work kept cores busy (up to {worst:g}; "
            f"{names}). Their times are inflated, most where threads outnumber the free cores (a one-process "
            "cell with every core), which inflates speed-ups over that baseline: rerun them on an idle machine "
            "before comparing.")


def _known(rows: Sequence[Mapping[str, Any]], device: str) -> set:
    return {r["threads"] for r in rows if r["device"] == device and r.get("threads")}


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
