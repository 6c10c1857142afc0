"""Inference speed: single-step latency (batch 1) and whole-sequence throughput (batch 512).

Subjects (same input size and 64 hidden units, the study's models):

    cfc        torchliquid build_model("cfc", I, 1, 64)      CfC(I, 64, proj_size=1)
    ltc        torchliquid build_model("ltc", I, 1, 64)      LTC(I, AutoNCP(64, 1))
    ncps-cfc   ncps.torch.CfC(I, 64, proj_size=1)            the reference library, eager only
    ncps-ltc   ncps.torch.LTC(I, AutoNCP(64, 1))             (it cannot be scripted: field case A05)
    lstm       torch.nn.LSTM(I, 64)                          a baseline of the same width

Runtimes: PyTorch eager (torchliquid: ``Stream.step`` for one step, ``model(x)`` for sequences;
ncps and LSTM: the layer called with a length-1 sequence and the carried state), TorchScript
(torchliquid: ``infer.script``; ncps: reported as failing) and onnxruntime (torchliquid:
``infer.export_onnx`` step / sequence graphs; ncps: a step graph traced at T = 1 where that
works — traced whole sequences freeze T, field case A06, so they are not measured).

Latency: median and p99 of >= 1,000 timed calls after a warm-up, batch 1, state carried from
call to call. Throughput: sequences per second of the median of several whole-batch forward
passes (batch 512, T = 32). The runtimes of a model are interleaved in rounds (harness.py habit)
so that a noisy neighbour slows them alike. Everything runs under ``torch.inference_mode`` on
CPU with ``--threads`` intra-op threads for torch and onnxruntime alike. No assertion: this is
a report.

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
RUNTIMES = ("eager", "torchscript", "onnxruntime")


# ----------------------------------------------------------------------------------- subjects


def _ncps(kind: str, inputs: int, units: int) -> nn.Module:
    import ncps.torch
    import ncps.wirings

    if kind == "cfc":
        return ncps.torch.CfC(inputs, units, proj_size=1, batch_first=True)
    return ncps.torch.LTC(inputs, ncps.wirings.AutoNCP(units, 1), batch_first=True)


SUBJECTS: dict[str, Callable[[int, int], nn.Module]] = {
    "cfc": lambda i, u: build_model("cfc", i, 1, u),
    "ltc": lambda i, u: build_model("ltc", i, 1, u),
    "ncps-cfc": lambda i, u: _ncps("cfc", i, u),
    "ncps-ltc": lambda i, u: _ncps("ltc", i, u),
    "lstm": lambda i, u: nn.LSTM(i, u, batch_first=True),
}


def _family(name: str) -> str:
    return "torchliquid" if name in ("cfc", "ltc") else name.split("-")[0]


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


def _script_layer(model: nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.script(_ScriptableLSTM(model) if isinstance(model, nn.LSTM) else model)


def _trace_onnx(model: nn.Module, args: tuple, names: list[str], outputs: list[str]) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(model, args, buffer, dynamo=False, input_names=names, output_names=outputs)
    return buffer.getvalue()


# ------------------------------------------------------------------------------- single step


def step_runners(name: str, model: nn.Module, inputs: int, units: int, args: argparse.Namespace,
                 workdir: Path) -> dict[str, Runner]:
    """runtime -> a no-argument call that advances one step at batch 1 (state carried), or a reason."""
    x = torch.randn(1, inputs)
    family = _family(name)
    runners: dict[str, Runner] = {}
    if family == "torchliquid":
        stream = Stream(model)
        runners["eager"] = lambda: stream.step(x)
        scripted = script(model, form="step")
        ts_state = [torch.zeros(1, model.state_size)]
        dt = torch.ones(1, 1)

        def ts_step() -> None:
            _, ts_state[0] = scripted(x, ts_state[0], dt)

        runners["torchscript"] = ts_step
        path = export_onnx(model, workdir / f"{name}-step.onnx", form="step", exporter=args.onnx_exporter)
        session = _session(str(path), args.threads)
        feeds = {"x": x.numpy(), "h": np.zeros((1, model.state_size), np.float32), "dt": np.ones((1, 1), np.float32)}

        def ort_step() -> None:
            _, feeds["h"] = session.run(None, feeds)

        runners["onnxruntime"] = ort_step
        return runners

    x_seq = x[:, None]  # (1, 1, I): a length-1 sequence, the streaming call these layers offer
    state: list[Any] = [None]
    if family == "lstm":
        state[0] = (torch.zeros(1, 1, units), torch.zeros(1, 1, units))
    else:
        state[0] = torch.zeros(1, model.state_size)

    def eager_step() -> None:
        _, state[0] = model(x_seq, state[0])

    runners["eager"] = eager_step
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
        if family == "lstm":
            h0, c0 = state[0]
            data = _trace_onnx(model, (x_seq, (h0, c0)), ["x", "h", "c"], ["y", "h_next", "c_next"])
            feeds = {"x": x_seq.numpy(), "h": h0.numpy(), "c": c0.numpy()}
            session = _session(data, args.threads)

            def ort_lstm() -> None:
                _, feeds["h"], feeds["c"] = session.run(None, feeds)

            runners["onnxruntime"] = ort_lstm
        else:
            data = _trace_onnx(model, (x_seq, state[0]), ["x", "h"], ["y", "h_next"])
            feeds = {"x": x_seq.numpy(), "h": state[0].numpy()}
            session = _session(data, args.threads)

            def ort_ncps() -> None:
                _, feeds["h"] = session.run(None, feeds)

            runners["onnxruntime"] = ort_ncps
    except Exception as error:
        runners["onnxruntime"] = f"ONNX export fails ({_first_line(error)})"
    return runners


# --------------------------------------------------------------------------- whole sequences


def sequence_runners(name: str, model: nn.Module, x: torch.Tensor, args: argparse.Namespace,
                     workdir: Path) -> dict[str, Runner]:
    """runtime -> a no-argument call of one whole-batch forward pass, or a reason."""
    family = _family(name)
    runners: dict[str, Runner] = {"eager": lambda: model(x)}
    if family == "torchliquid":
        scripted = script(model)
        runners["torchscript"] = lambda: scripted(x)
        path = export_onnx(model, workdir / f"{name}-seq.onnx", exporter=args.onnx_exporter)
        session = _session(str(path), args.threads)
        feeds = {"x": x.numpy(), "h0": np.zeros((x.shape[0], model.state_size), np.float32),
                 "dt": np.ones(x.shape[:2], np.float32)}
        runners["onnxruntime"] = lambda: session.run(None, feeds)
    elif family == "lstm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted_lstm = _script_layer(model)
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], output_names=["y", "h", "c"],
                              dynamic_axes={"x": {0: "batch", 1: "time"}})
        runners["torchscript"] = lambda: scripted_lstm(x)
        session = _session(buffer.getvalue(), args.threads)
        runners["onnxruntime"] = lambda: session.run(["y"], {"x": x.numpy()})
    else:
        runners["torchscript"] = "torch.jit.script fails (field case A05)"
        runners["onnxruntime"] = "a traced export freezes T (field case A06)"
    return runners


# --------------------------------------------------------------------------------------- timing


def measure(runners: dict[str, Runner], calls: int, warmup: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Per runtime: median, p99 and mean seconds per call over ``calls`` timed calls.

    The runtimes are interleaved in ``rounds`` (each round times calls / rounds calls of every
    runtime in turn), so a noisy neighbour on shared cores slows all of them alike.
    """
    live = {r: fn for r, fn in runners.items() if not isinstance(fn, str)}
    samples: dict[str, list[float]] = {r: [] for r in live}
    per_round = max(1, calls // rounds)
    with torch.inference_mode():
        for fn in live.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for runtime, fn in live.items():
                for _ in range(per_round):
                    start = time.perf_counter()
                    fn()
                    samples[runtime].append(time.perf_counter() - start)
    results: dict[str, dict[str, Any]] = {}
    for runtime in RUNTIMES:
        runner = runners.get(runtime, "not applicable")
        if isinstance(runner, str):
            results[runtime] = {"skipped": runner}
            continue
        seconds = samples[runtime]
        results[runtime] = {"median_s": statistics.median(seconds), "p99_s": float(np.percentile(seconds, 99)),
                            "mean_s": statistics.fmean(seconds), "calls": len(seconds)}
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
        entry = table.get(model, {}).get(runtime, {})
        return entry.get("median_s")

    for model in ("cfc", "ltc"):
        eager = get(latency, model, "eager")
        for runtime in ("torchscript", "onnxruntime"):
            other = get(latency, model, runtime)
            if eager and other:
                out[f"step {model}: {runtime} vs eager"] = eager / other
        ncps = get(latency, f"ncps-{model}", "eager")
        if eager and ncps:
            out[f"step {model}: torchliquid eager vs ncps eager"] = ncps / eager
        lstm = get(latency, "lstm", "eager")
        best = min(filter(None, (get(latency, model, r) for r in RUNTIMES)), default=None)
        if best and lstm:
            out[f"step {model}: fastest torchliquid runtime vs LSTM eager"] = lstm / best
        seq, seq_ncps = get(throughput, model, "eager"), get(throughput, f"ncps-{model}", "eager")
        if seq and seq_ncps:
            out[f"sequence {model}: torchliquid eager vs ncps eager"] = seq_ncps / seq
    return out


def print_report(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(f"\nsingle-step latency, batch 1: median / p99 over {cfg['calls']:,} calls")
    rows = [[model] + [_cell(row[r], 1e6, "us") for r in RUNTIMES] for model, row in result["latency"].items()]
    print(harness.format_table(rows, ["model", *RUNTIMES]))
    print(f"\nsequence throughput, batch {cfg['batch']} x T {cfg['length']}: sequences/s (median pass)")
    rows = [[model] + ["n/a" if "skipped" in row[r] else f"{cfg['batch'] / row[r]['median_s']:,.0f}" for r in RUNTIMES]
            for model, row in result["throughput"].items()]
    print(harness.format_table(rows, ["model", *RUNTIMES]))
    print("\nspeed-ups (median time ratio, > 1 = faster):")
    for key, value in result["ratios"].items():
        print(f"  {key:<58} x{value:.2f}")
    skipped = {f"{m}/{r}": e["skipped"] for table in ("latency", "throughput")
               for m, row in result[table].items() for r, e in row.items() if "skipped" in e}
    for key, reason in sorted(set(skipped.items())):
        print(f"  n/a {key}: {reason}")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1,000 steps, 3 sequence passes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few calls: proves the script runs")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--models", default=",".join(SUBJECTS), help=f"comma-separated subset of {list(SUBJECTS)}")
    p.add_argument("--onnx-exporter", choices=["dynamo", "torchscript"], default=None,
                   help="exporter of the torchliquid ONNX files (default dynamo; torchscript with --smoke)")
    args = p.parse_args(argv)
    args.onnx_exporter = args.onnx_exporter or ("torchscript" if args.smoke else "dynamo")
    calls, warmup, passes = (20, 5, 1) if args.smoke else (1000, 100, 3) if args.quick else (2000, 200, 7)
    inputs, units, batch, length = (7, 8, 8, 4) if args.smoke else (7, 64, 512, 32)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(SUBJECTS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(SUBJECTS)}")
    torch.set_num_threads(args.threads)
    # torch.jit / legacy-exporter deprecation notices and the exporter's LSTM batch-size note
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size other than 1")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # tracing ncps/LSTM steps at T = 1
    info = machine()
    x = torch.randn(batch, length, inputs)
    latency, throughput = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            model = SUBJECTS[name](inputs, units).eval()
            print(f"{name}: single step ...", flush=True)
            runners = step_runners(name, model, inputs, units, args, Path(tmp))
            latency[name] = measure(runners, calls, warmup, rounds=10 if calls >= 10 else 1)
            print(f"{name}: sequences ...", flush=True)
            throughput[name] = measure(sequence_runners(name, model, x, args, Path(tmp)), passes, 2, rounds=passes)
    info["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result = {"machine": info,
              "config": {"mode": "smoke" if args.smoke else "quick" if args.quick else "full", "calls": calls,
                         "warmup": warmup, "sequence_passes": passes, "inputs": inputs, "units": units,
                         "batch": batch, "length": length, "threads": args.threads,
                         "onnx_exporter": args.onnx_exporter},
              "latency": latency, "throughput": throughput, "ratios": ratios(latency, throughput)}
    print_report(result)
    if args.json:
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
