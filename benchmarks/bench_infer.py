"""Inference speed: single-step latency (batch 1) and whole-sequence throughput (batch 512).

Subjects (the study's models, 64 units; per workload I inputs and O outputs: HAR-like I = 561,
O = 6; Traffic-like I = 7, O = 1):

    cfc        torchliquid build_model("cfc", I, O, 64)      CfC(I, 64, proj_size=O), backbone 128 x 1
    ltc        torchliquid build_model("ltc", I, O, 64)      LTC(I, AutoNCP(64, O))
    ncps-cfc   ncps.torch.CfC(I, 64, proj_size=O)            the reference library, eager only
    ncps-ltc   ncps.torch.LTC(I, AutoNCP(64, O))             (it cannot be scripted: field case A05)
    lstm, gru  torch.nn.LSTM(I, 64), torch.nn.GRU(I, 64)     baselines of the same width (no readout)

Runtimes of one step (state carried from call to call):
    layer        the eager layer called with a length-1 sequence and the carried state, every
                 subject alike (torchliquid: its single-step path, nn/step_path.py)
    stream       torchliquid ``infer.Stream.step(x_t)`` (the others have no streaming API)
    torchscript  torchliquid ``infer.script(form="step")``; LSTM/GRU scripted; ncps fails (A05)
    onnxruntime  torchliquid ``infer.export_onnx(form="step")``; the others a step graph traced at
                 T = 1 (a traced sequence freezes T, field case A06: not measured)
Latency: median and p99 of >= 1,000 calls after a warm-up, batch 1, every (subject, runtime) of
a workload interleaved with every other in rounds, so a noisy neighbour slows all alike.
Throughput (Traffic-like, batch 512 x T 32; "layer" is ``model(x)``): sequences/s of the median
pass. All under ``torch.inference_mode`` on CPU, ``--threads`` intra-op threads for torch and
onnxruntime alike. No assertion: this is a report.

    .venv/bin/python benchmarks/bench_infer.py                  # full
    .venv/bin/python benchmarks/bench_infer.py --quick          # 1,000 steps, fewer passes
    .venv/bin/python benchmarks/bench_infer.py --smoke          # seconds (CI: proves it runs)
    .venv/bin/python benchmarks/bench_infer.py --json out.json  # machine-readable results
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from torchliquid.infer import Stream, export_onnx, script
from torchliquid.nn import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (the shared benchmark harness: provenance, tables)

Runner = Union[Callable[[], Any], str]  # a call to time, or why this combination is not measured
RUNTIMES = ("layer", "stream", "torchscript", "onnxruntime")
# name -> (label, inputs, outputs); --smoke uses SMOKE with 8 units
WORKLOADS = {"har": ("HAR-like", 561, 6), "traffic": ("Traffic-like", 7, 1)}
SMOKE = ("smoke", 7, 2)
SEQUENCE_WORKLOAD = "traffic"


# ----------------------------------------------------------------------------------- subjects


def _ncps(kind: str, inputs: int, outputs: int, units: int) -> nn.Module:
    import ncps.torch
    import ncps.wirings

    if kind == "cfc":
        return ncps.torch.CfC(inputs, units, proj_size=outputs, batch_first=True)
    return ncps.torch.LTC(inputs, ncps.wirings.AutoNCP(units, outputs), batch_first=True)


SUBJECTS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "cfc": lambda i, o, u: build_model("cfc", i, o, u),
    "ltc": lambda i, o, u: build_model("ltc", i, o, u),
    "ncps-cfc": lambda i, o, u: _ncps("cfc", i, o, u),
    "ncps-ltc": lambda i, o, u: _ncps("ltc", i, o, u),
    "lstm": lambda i, o, u: nn.LSTM(i, u, batch_first=True),
    "gru": lambda i, o, u: nn.GRU(i, u, batch_first=True),
}


def _family(name: str) -> str:
    return "torchliquid" if name in ("cfc", "ltc") else name.split("-")[0]  # ncps, lstm, gru


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:120] if text else ''}"


def _session(data: Union[bytes, str], threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class _ScriptableLSTM(nn.Module):
    """nn.LSTM behind a typed forward: a scripted bare nn.LSTM exposes only its overloads."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.lstm(x, hx)


class _ScriptableGRU(_ScriptableLSTM):
    """nn.GRU behind a typed forward (as _ScriptableLSTM)."""

    def forward(self, x: torch.Tensor, hx: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lstm(x, hx)


def _script_layer(model: nn.Module) -> torch.jit.ScriptModule:
    wrapper = {nn.LSTM: _ScriptableLSTM, nn.GRU: _ScriptableGRU}.get(type(model))
    return torch.jit.script(wrapper(model) if wrapper else model)


def _trace_onnx(model: nn.Module, args: tuple, names: list[str], outputs: list[str]) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(model, args, buffer, dynamo=False, input_names=names, output_names=outputs)
    return buffer.getvalue()


# ------------------------------------------------------------------------------- single step


def step_runners(name: str, model: nn.Module, inputs: int, units: int, args: argparse.Namespace,
                 workdir: Path) -> dict[str, Runner]:
    """runtime -> a no-argument call that advances one step at batch 1 (state carried), or a reason."""
    x = torch.randn(1, inputs)
    x_seq = x[:, None]  # (1, 1, I): a length-1 sequence, the streaming call every layer offers
    family = _family(name)
    state: list[Any] = [torch.zeros(1, units) if family in ("torchliquid", "ncps") else torch.zeros(1, 1, units)]
    if family == "lstm":
        state[0] = (state[0], torch.zeros(1, 1, units))

    def layer_step() -> None:
        _, state[0] = model(x_seq, state[0])

    runners: dict[str, Runner] = {"layer": layer_step}
    if family == "torchliquid":
        stream = Stream(model)
        runners["stream"] = lambda: stream.step(x)
        scripted = script(model, form="step")
        ts_state, dt = [torch.zeros(1, units)], torch.ones(1, 1)

        def ts_step() -> None:
            _, ts_state[0] = scripted(x, ts_state[0], dt)

        runners["torchscript"] = ts_step
        path = export_onnx(model, workdir / f"{name}-{inputs}-step.onnx", form="step", exporter=args.onnx_exporter)
        session = _session(str(path), args.threads)
        feeds = {"x": x.numpy(), "h": np.zeros((1, units), np.float32), "dt": np.ones((1, 1), np.float32)}

        def ort_step() -> None:
            _, feeds["h"] = session.run(None, feeds)

        runners["onnxruntime"] = ort_step
        return runners
    runners["stream"] = "no streaming API (the layer at T = 1 is its streaming call)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted_layer = _script_layer(model)
        ts_hx: list[Any] = [state[0]]

        def ts_layer_step() -> None:
            _, ts_hx[0] = scripted_layer(x_seq, ts_hx[0])

        runners["torchscript"] = ts_layer_step
    except Exception as error:  # ncps: field case A05
        runners["torchscript"] = f"torch.jit.script fails ({_first_line(error)})"
    try:
        states = list(state[0]) if family == "lstm" else [state[0]]
        names = ["h", "c"][: len(states)]
        hx = tuple(states) if family == "lstm" else states[0]
        data = _trace_onnx(model, (x_seq, hx), ["x", *names], ["y", *(f"{n}_next" for n in names)])
        feeds = {"x": x_seq.numpy(), **{n: t.numpy() for n, t in zip(names, states)}}
        session = _session(data, args.threads)

        def ort_layer_step() -> None:
            _, *new = session.run(None, feeds)
            feeds.update(zip(names, new))

        runners["onnxruntime"] = ort_layer_step
    except Exception as error:
        runners["onnxruntime"] = f"ONNX export fails ({_first_line(error)})"
    return runners


# --------------------------------------------------------------------------- whole sequences


def sequence_runners(name: str, model: nn.Module, x: torch.Tensor, args: argparse.Namespace,
                     workdir: Path) -> dict[str, Runner]:
    """runtime -> a no-argument call of one whole-batch forward pass, or a reason."""
    family = _family(name)
    runners: dict[str, Runner] = {"layer": lambda: model(x), "stream": "a step API, not a sequence runtime"}
    if family == "torchliquid":
        scripted = script(model)
        runners["torchscript"] = lambda: scripted(x)
        path = export_onnx(model, workdir / f"{name}-seq.onnx", exporter=args.onnx_exporter)
        session = _session(str(path), args.threads)
        feeds = {"x": x.numpy(), "h0": np.zeros((x.shape[0], model.state_size), np.float32),
                 "dt": np.ones(x.shape[:2], np.float32)}
        runners["onnxruntime"] = lambda: session.run(None, feeds)
    elif family in ("lstm", "gru"):
        outputs = ["y", "h", "c"] if family == "lstm" else ["y", "h"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted_rnn = _script_layer(model)
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], output_names=outputs,
                              dynamic_axes={"x": {0: "batch", 1: "time"}})
        runners["torchscript"] = lambda: scripted_rnn(x)
        session = _session(buffer.getvalue(), args.threads)
        runners["onnxruntime"] = lambda: session.run(["y"], {"x": x.numpy()})
    else:
        runners["torchscript"] = "torch.jit.script fails (field case A05)"
        runners["onnxruntime"] = "a traced export freezes T (field case A06)"
    return runners


# --------------------------------------------------------------------------------------- timing


def measure(runners: dict[str, dict[str, Runner]], calls: int, warmup: int, rounds: int
            ) -> dict[str, dict[str, dict[str, Any]]]:
    """subject -> runtime -> median, p99 and mean seconds per call over ``calls`` timed calls.

    Every (subject, runtime) is interleaved with every other in ``rounds`` (each round times
    calls / rounds calls of each in turn), so a noisy neighbour on shared cores slows all alike.
    """
    live = {(m, r): fn for m, row in runners.items() for r, fn in row.items() if not isinstance(fn, str)}
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in live}
    per_round = max(1, calls // rounds)
    with torch.inference_mode():
        for fn in live.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for key, fn in live.items():
                for _ in range(per_round):
                    start = time.perf_counter()
                    fn()
                    samples[key].append(time.perf_counter() - start)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for model, row in runners.items():
        results[model] = {}
        for runtime in RUNTIMES:
            runner = row.get(runtime, "not applicable")
            if isinstance(runner, str):
                results[model][runtime] = {"skipped": runner}
                continue
            seconds = samples[(model, runtime)]
            results[model][runtime] = {"median_s": statistics.median(seconds), "calls": len(seconds),
                                       "p99_s": float(np.percentile(seconds, 99)), "mean_s": statistics.fmean(seconds)}
    return results


def machine() -> dict[str, Any]:
    """The harness's provenance record plus the inference libraries' versions."""
    info = harness.machine_info(torch.device("cpu"))
    for distribution in ("onnxruntime", "onnx"):
        try:
            info[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            info[distribution] = None
    info["numpy"] = np.__version__
    return info


# -------------------------------------------------------------------------------------- report


def _cell(entry: dict[str, Any], scale: float, unit: str) -> str:
    if "skipped" in entry:
        return "n/a"
    return f"{entry['median_s'] * scale:,.0f} / {entry['p99_s'] * scale:,.0f} {unit}"


def ratios(latency: dict[str, dict], throughput: dict[str, dict]) -> dict[str, float]:
    """Speed-ups (> 1 means faster) of interest, from medians."""
    out: dict[str, float] = {}

    def get(table: dict, model: str, runtime: str) -> Optional[float]:
        return table.get(model, {}).get(runtime, {}).get("median_s")

    for workload, table in latency.items():
        for model in ("cfc", "ltc"):
            ncps = get(table, f"ncps-{model}", "layer")
            for runtime in ("layer", "stream"):
                ours = get(table, model, runtime)
                if ours and ncps:
                    out[f"{workload} step {model}: torchliquid {runtime} vs ncps layer"] = ncps / ours
            for baseline in ("lstm", "gru"):
                theirs, ours = get(table, baseline, "layer"), get(table, model, "stream")
                if ours and theirs:
                    out[f"{workload} step {model}: torchliquid stream vs {baseline} layer"] = theirs / ours
    for model in ("cfc", "ltc"):
        seq, seq_ncps = get(throughput, model, "layer"), get(throughput, f"ncps-{model}", "layer")
        if seq and seq_ncps:
            out[f"sequence {model}: torchliquid layer vs ncps layer"] = seq_ncps / seq
    return out


def print_report(result: dict[str, Any]) -> None:
    cfg = result["config"]
    for workload, table in result["latency"].items():
        print(f"\n{workload}: single-step latency, batch 1: median / p99 over {cfg['calls']:,} calls")
        rows = [[model] + [_cell(row[r], 1e6, "us") for r in RUNTIMES] for model, row in table.items()]
        print(harness.format_table(rows, ["model", *RUNTIMES]))
    print(f"\n{cfg['sequence_workload']}: sequence throughput, batch {cfg['batch']} x T {cfg['length']}: "
          "sequences/s (median pass)")
    rows = [[model] + ["n/a" if "skipped" in row[r] else f"{cfg['batch'] / row[r]['median_s']:,.0f}" for r in RUNTIMES]
            for model, row in result["throughput"].items()]
    print(harness.format_table(rows, ["model", *RUNTIMES]))
    print("\nspeed-ups (median time ratio, > 1 = faster):")
    for key, value in result["ratios"].items():
        print(f"  {key:<64} x{value:.2f}")
    skipped = {f"{m}/{r}": e["skipped"] for table in [*result["latency"].values(), result["throughput"]]
               for m, row in table.items() for r, e in row.items() if "skipped" in e}
    for key, reason in sorted(set(skipped.items())):
        print(f"  n/a {key}: {reason}")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1,000 steps, 3 sequence passes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few calls: proves the script runs")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--models", default=",".join(SUBJECTS), help=f"comma-separated subset of {list(SUBJECTS)}")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"single-step workloads, of {list(WORKLOADS)}")
    p.add_argument("--onnx-exporter", choices=["dynamo", "torchscript"], default=None,
                   help="exporter of the torchliquid ONNX files (default dynamo; torchscript with --smoke)")
    args = p.parse_args(argv)
    args.onnx_exporter = args.onnx_exporter or ("torchscript" if args.smoke else "dynamo")
    calls, warmup, passes = (20, 5, 1) if args.smoke else (1000, 100, 3) if args.quick else (2000, 200, 7)
    units, batch, length = (8, 8, 4) if args.smoke else (64, 512, 32)
    names = [m for m in args.models.split(",") if m]
    workloads = {"smoke": SMOKE} if args.smoke else {w: WORKLOADS[w] for w in args.workloads.split(",") if w}
    unknown = sorted(set(names) - set(SUBJECTS)) + sorted(set(args.workloads.split(",")) - set(WORKLOADS) - {""})
    if unknown:
        p.error(f"unknown model(s)/workload(s) {unknown}; choose from {list(SUBJECTS)} / {list(WORKLOADS)}")
    torch.set_num_threads(args.threads)
    # torch.jit / legacy-exporter deprecation notices and the exporter's LSTM batch-size note
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size other than 1")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # tracing ncps/LSTM steps at T = 1
    info = machine()
    latency: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, (label, inputs, outputs) in workloads.items():
            runners = {}
            for name in names:
                torch.manual_seed(0)
                model = SUBJECTS[name](inputs, outputs, units).eval()
                print(f"{label}: {name}: single-step runtimes ...", flush=True)
                runners[name] = step_runners(name, model, inputs, units, args, Path(tmp))
            print(f"{label}: timing {sum(len(r) for r in runners.values())} step runners interleaved ...", flush=True)
            latency[label] = measure(runners, calls, warmup, rounds=10 if calls >= 10 else 1)
        sequence_key = "smoke" if args.smoke else SEQUENCE_WORKLOAD
        label, inputs, outputs = SMOKE if args.smoke else WORKLOADS[sequence_key]
        x = torch.randn(batch, length, inputs)
        runners = {}
        for name in names:
            torch.manual_seed(0)
            runners[name] = sequence_runners(name, SUBJECTS[name](inputs, outputs, units).eval(), x, args, Path(tmp))
        print(f"{label}: timing sequences ...", flush=True)
        throughput = measure(runners, passes, 2, rounds=passes)
    info["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result = {"machine": info,
              "config": {"mode": "smoke" if args.smoke else "quick" if args.quick else "full", "calls": calls,
                         "warmup": warmup, "sequence_passes": passes, "units": units,
                         "workloads": {label: {"inputs": i, "outputs": o} for label, i, o in workloads.values()},
                         "sequence_workload": label, "batch": batch, "length": length, "threads": args.threads,
                         "onnx_exporter": args.onnx_exporter},
              "latency": latency, "throughput": throughput, "ratios": ratios(latency, throughput)}
    print_report(result)
    if args.json:  # written whole or not at all
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        os.replace(tmp_name, path)
        print(f"\nresults written to {path}")
    return result


if __name__ == "__main__":
    main()
