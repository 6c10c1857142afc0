"""Reports of a matrix folder: report.md (+ CSV + PNG under report/), optionally one HTML page.

The tables follow the study's layout for this machine: per dataset, test quality (accuracy and
loss for HAR; MSE and MAE for regression) and training time per device x batch size, speed-up
``T_cpu / T_n`` with scaling efficiency, GPU/memory utilisation per GPU, and "this machine vs
published" where ``configs/thesis_reference.csv`` has a value. The report is rebuilt from the
store alone, so it can be regenerated at any time, including while a matrix is still running.
"""

from __future__ import annotations

import base64
import csv
import html as _html
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .cellfiles import summarize_stderr
from .runner import is_running
from .spec import load_matrix
from .store import STORE_NAME, ResultStore, atomic_write_text, utc_now
from .tables import (QUALITY_METRICS, dataset_name, model_name, Table, busy_note, device_sort_key, flatten, fmt, pivot,
                     reference_table, speedup_pivot, utilisation_table)

#: The study's published figures, shipped with the source tree.
DEFAULT_REFERENCE = Path(__file__).resolve().parents[3] / "configs" / "thesis_reference.csv"
PREDICTIONS_FILE = "predictions_sine.npz"
Block = tuple  # ("h", level, text) | ("p", text) | ("table", Table) | ("img", relpath, caption)


def load_reference(path: Optional[Union[str, Path]] = None) -> list[dict[str, str]]:
    """Rows of a reference CSV (default: configs/thesis_reference.csv); [] when it is absent."""
    path = Path(path) if path is not None else DEFAULT_REFERENCE
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def load_matrix_results(results_dir: Union[str, Path]) -> dict[str, Any]:
    """Latest record per cell of a matrix folder, split by status, limited to the cells of the
    matrix.toml in that folder (results of cells since removed or changed are left out)."""
    results_dir = Path(results_dir)
    store = ResultStore(results_dir / STORE_NAME)
    if not store.path.exists():
        raise FileNotFoundError(f"{results_dir}: no {STORE_NAME}; run `torchliquid matrix run FILE --out {results_dir}`")
    latest = store.latest()
    matrix_file, name, wanted = results_dir / "matrix.toml", results_dir.name, None
    if matrix_file.exists():
        try:
            matrix = load_matrix(matrix_file)
            name, wanted = matrix.name, {c.cell_id for c in matrix.cells}
        except ValueError:
            pass  # an unparseable copy must not hide the results; report everything
    plan_path = results_dir / "plan.json"
    plan = json.loads(plan_path.read_text()).get("cells", []) if plan_path.exists() else []
    kept = {cid: r for cid, r in latest.items() if wanted is None or cid in wanted}
    # A "running" record is live while a runner holds the folder, else that runner died mid-cell.
    live = is_running(results_dir)
    return {"name": name, "dir": results_dir, "records": kept, "stale": len(latest) - len(kept),
            "skipped_lines": store.skipped_lines,
            "done": [r for r in kept.values() if r["status"] == "done"],
            "running": [r for r in kept.values() if r["status"] == "running" and live],
            "problems": [r for r in kept.values() if r["status"] not in ("done",) and
                         not (r["status"] == "running" and live)],
            "skipped": [p for p in plan if p.get("action") == "skip"],
            "not_run": [p for p in plan if p.get("action") in ("run", "rerun") and p["cell_id"] not in kept]}


def write_report(results_dir: Union[str, Path], html: bool = False,
                 reference: Optional[Union[str, Path]] = None) -> Path:
    """Write ``report.md`` (and ``report.html`` when ``html``) into ``results_dir``.

    CSV tables and PNG figures go to ``results_dir/report/``. Returns the Markdown path (the
    HTML path sits beside it).
    """
    data = load_matrix_results(results_dir)
    out = data["dir"] / "report"
    rows = [flatten(r) for r in data["done"]]
    blocks = _blocks(data, rows, load_reference(reference), out)
    md_path = atomic_write_text(data["dir"] / "report.md", _markdown(blocks))
    if html:
        atomic_write_text(data["dir"] / "report.html", _html_page(blocks, data["dir"], f"Matrix report: {data['name']}"))
    return md_path


def compare_matrices(a: Union[str, Path], b: Union[str, Path]) -> Table:
    """Two matrix folders side by side (before/after a change, or machine vs machine).

    Runs are matched by dataset, model, device, batch size and seed. ``Speed-up`` is
    ``T_A / T_B`` (above 1: B trained faster). The quality column is test accuracy for
    classification and test MSE for regression. The note names both machines.
    """
    sides = [load_matrix_results(p) for p in (a, b)]
    keyed = []
    for side in sides:
        rows = {}
        for r in map(flatten, side["done"]):
            rows[(r["dataset"], r["model"], r["device"], r["batch_size"], r["seed"])] = r
        keyed.append(rows)
    body, records = [], []
    for key in sorted(set(keyed[0]) | set(keyed[1]),
                      key=lambda k: (str(k[0]), str(k[1]), device_sort_key(k[2]), k[3] or 0, k[4] or 0)):
        ra, rb = keyed[0].get(key), keyed[1].get(key)
        ta, tb = (r.get("train_seconds") if r else None for r in (ra, rb))
        task = (ra or rb)["task"]
        metric = "test_accuracy" if task == "classification" else "test_mse"
        ma, mb = (r.get(metric) if r else None for r in (ra, rb))
        speed = ta / tb if ta and tb else None
        epochs = "/".join(str(r["epochs"]) if r else "-" for r in (ra, rb))
        body.append([str(key[0]), model_name(key[1]), key[2], str(key[3]), str(key[4]), epochs,
                     fmt(ta) if ra else "-", fmt(tb) if rb else "-", fmt(speed, 3), metric.replace("test_", ""),
                     fmt(ma) if ra else "-", fmt(mb) if rb else "-"])
        records.append({"dataset": key[0], "model": key[1], "device": key[2], "batch_size": key[3], "seed": key[4],
                        "seconds_a": ta, "seconds_b": tb, "speedup_b_over_a": speed, "metric": metric,
                        "a": ma, "b": mb})
    note = "; ".join(f"{tag} = {s['dir']} ({_machine(s['done'])})" for tag, s in zip("AB", sides))
    return Table(f"Compare {sides[0]['name']} (A) vs {sides[1]['name']} (B)",
                 ["Dataset", "Model", "Device", "Batch", "Seed", "Epochs A/B", "Time A (s)", "Time B (s)",
                  "Speed-up T_A/T_B", "Metric", "A", "B"], body, note=note, records=records)


# -- building blocks ------------------------------------------------------------------------------

def _machine(done: Sequence[dict[str, Any]]) -> str:
    if not done:
        return "no finished runs"
    env = done[-1].get("environment") or {}
    gpus = env.get("gpu_models") or []
    gpu = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU"
    return (f"{env.get('hostname', '?')}: {env.get('cpu_model') or 'unknown CPU'} ({env.get('cpu_cores', '?')} cores), "
            f"{gpu}, torch {env.get('torch', '?')} (CUDA build {env.get('cuda') or 'none'})")


def _blocks(data: dict[str, Any], rows: list[dict[str, Any]], reference: list[dict[str, str]],
            out: Path) -> list[Block]:
    from . import plots  # matplotlib costs ~0.6 s to import: only when a report is drawn
    n = len(data["records"]) + len(data["skipped"]) + len(data["not_run"])
    blocks: list[Block] = [
        ("h", 1, f"Matrix report: {data['name']}"),
        ("p", f"Generated {utc_now()} from `{data['dir'] / STORE_NAME}`. Machine: {_machine(data['done'])}."),
        ("p", f"{n} cells: {len(data['done'])} done, "
              + (f"{len(data['running'])} running now, " if data["running"] else "")
              + f"{len(data['problems'])} failed or interrupted, "
              f"{len(data['not_run'])} not run yet, {len(data['skipped'])} skipped on this machine."
              + (f" {data['stale']} stored result(s) of cells no longer in matrix.toml are left out." if data["stale"] else "")
              + (f" {data['skipped_lines']} unreadable store line(s) skipped." if data["skipped_lines"] else "")),
    ]
    if busy_note(rows):  # every time and speed-up below is affected
        blocks.append(("p", busy_note(rows)))
    datasets = sorted({r["dataset"] for r in rows}, key=lambda d: ["sine", "har", "traffic", "power"].index(d)
                      if d in ("sine", "har", "traffic", "power") else 9)
    tables: dict[str, Table] = {}
    if rows:
        blocks.append(("h", 2, "Test quality after training"))
        for ds in datasets:
            task = next(r["task"] for r in rows if r["dataset"] == ds)
            for m in QUALITY_METRICS.get(task, ("loss",)):
                t = pivot(rows, ds, f"test_{m}", f"{dataset_name(ds)}: test {m} per device x batch size")
                blocks += [("h", 3, t.title), ("table", t)]
        blocks.append(("h", 2, "Training time (s) per device x batch size"))
        for ds in datasets:
            t = pivot(rows, ds, "train_seconds", f"{dataset_name(ds)}: training time (s)")
            blocks += [("h", 3, t.title), ("table", t)]
            png = plots.plot_time_vs_batch(rows, ds, out / f"time_vs_batch_{ds}.png")
            if png:
                blocks.append(("img", f"report/{png.name}", f"Training time vs batch size, {ds}"))
        blocks.append(("h", 2, "Speed-up over the CPU baseline and scaling efficiency"))
        blocks.append(("p", "Speed-up S = T_cpu / T_n (training time of the single-process CPU run with the same "
                            "batch size and epochs over this run's); efficiency E = S / n for n processes/GPUs. "
                            "The runner pins each cell's intra-op threads: a one-process cell gets every core, an "
                            "n-process cell cores / n threads per process, so CPU cells use the same cores in total; "
                            "column headers give processes x threads per process as the runs recorded them."))
        speed_records = []
        for ds in datasets:
            if {r["device"] for r in rows if r["dataset"] == ds} == {"cpu"}:
                continue  # only the baseline itself: nothing to compare
            t = speedup_pivot(rows, ds)
            speed_records += t.records
            blocks += [("h", 3, t.title), ("table", t)] + ([("p", t.note)] if t.note else [])
            png = plots.plot_speedup(rows, ds, out / f"speedup_{ds}.png")
            if png:
                blocks.append(("img", f"report/{png.name}", f"Speed-up per device and batch size, {ds}"))
        if not speed_records:
            blocks.append(("p", "No runs on devices other than the single-process CPU yet: nothing to compare."))
        tables["speedup"] = Table("", [], [], records=speed_records)
        util = utilisation_table(rows)
        tables["utilisation"] = util
        blocks.append(("h", 2, util.title))
        blocks += [("table", util)] if util.rows else [("p", "No GPU runs.")]
        blocks += [("p", util.note)] if util.note else []
    blocks += _sine_blocks(data, out)
    if reference:
        ref = reference_table(reference, rows)
        tables["reference_comparison"] = ref
        blocks += [("h", 2, "This machine vs published"),
                   ("p", "Published figures are the study's, quoted where known (configs/thesis_reference.csv); "
                         "they come from the study's hardware, so the ratio compares machines as well as code."),
                   ("table", ref)]
    blocks += _problem_blocks(data)
    _write_csvs(out, rows, tables)
    blocks.append(("p", "CSV files: " + ", ".join(f"`report/{p.name}`" for p in sorted(out.glob("*.csv")))))
    return blocks


def _sine_blocks(data: dict[str, Any], out: Path) -> list[Block]:
    from . import plots
    sine = [r for r in data["done"] if (r.get("cell") or {}).get("dataset") == "sine"]
    if not sine:
        return []
    preds: dict[str, Any] = {}
    # Prefer the single-process CPU run of each model: the study's reference curve.
    for rec in sorted(sine, key=lambda r: device_sort_key(r["cell"]["device"])):
        model = rec["cell"]["model"]
        if model not in preds:
            arrays = plots.load_predictions(data["dir"] / rec.get("run_dir", "") / PREDICTIONS_FILE)
            if arrays is not None:
                preds[model] = arrays
    blocks: list[Block] = [("h", 2, "Sine: predictions before and after training")]
    png = plots.plot_sine_predictions(preds, out / "sine_predictions.png")
    if png:
        return blocks + [("img", f"report/{png.name}", "Sine predictions vs target")]
    return blocks + [("p", f"No plot: the sine runs wrote no `{PREDICTIONS_FILE}` (arrays `target`, `before`, "
                           "`after` of shape (N, T, C) and optionally `t`); the trainer must write it for this plot.")]


def _problem_blocks(data: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    if data["problems"]:
        rows = []
        for r in data["problems"]:
            err = r.get("error") or {}
            tail = (err.get("stderr_tail") or "").strip().splitlines()
            message = err.get("message") or ("runner stopped during this cell" if r["status"] == "running" else "")
            cause = err.get("summary") or summarize_stderr(err.get("stderr_tail") or "") or "see stderr.log"
            rows.append([r["cell_id"], r["status"], message, cause[:200]])
        blocks += [("h", 2, "Failed or interrupted cells (rerun the matrix to retry them)"),
                   ("p", "Full logs: `runs/<cell>/stderr.log`; the store keeps the last lines of each."),
                   ("table", Table("", ["Cell", "Status", "Error", "Cause (from stderr)"], rows))]
    if data["skipped"]:
        rows = [[p["cell_id"], p.get("reason", "")] for p in data["skipped"]]
        blocks += [("h", 2, "Cells skipped on this machine"), ("table", Table("", ["Cell", "Reason"], rows))]
    return blocks


def _write_csvs(out: Path, rows: list[dict[str, Any]], tables: dict[str, Table]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cells = [{k: v for k, v in r.items() if k != "gpus"} for r in rows]
    for name, records in [("cells", cells), *((k, t.records) for k, t in tables.items())]:
        if not records:
            continue
        columns: dict[str, None] = {}
        for r in records:
            columns.update(dict.fromkeys(r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(out / f"{name}.csv", buf.getvalue())


def _markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h":
            parts.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "table":
            parts.append(b[1].markdown() if b[1].rows else "_(no rows)_")
        elif b[0] == "img":
            parts.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(parts) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #eee}code{background:#f5f5f5;padding:0 3px}")


def _html_page(blocks: list[Block], base: Path, title: str) -> str:
    """One self-contained page: inline CSS, images as base64 data URIs, no external references."""
    esc = _html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{esc(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            text = esc(b[1])
            segments = text.split("`")  # `code` spans, as in the Markdown
            parts.append("<p>" + "".join(s if i % 2 == 0 else f"<code>{s}</code>" for i, s in enumerate(segments)) + "</p>")
        elif b[0] == "table":
            parts.append(b[1].html() if b[1].rows else "<p><em>(no rows)</em></p>")
        elif b[0] == "img":
            data = base64.b64encode((base / b[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(b[2])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{esc(b[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
