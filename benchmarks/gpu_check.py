"""The one prepared GPU check: training throughput and GPU utilisation on CUDA, eager vs CUDA graphs.

Run once on a machine with a CUDA GPU (about 5-8 minutes, bounded by --budget-s):

  1. benchmarks/bench_train.py --device cuda on a subset (Traffic-like and HAR-like workloads,
     batches 64 and 512; torchliquid's modules and kernels, ncps and LSTM), GPU utilisation
     sampled meanwhile through NVML (torchliquid.monitor);
  2. `torchliquid train` of CfC and of LTC on the traffic data, each eager and with
     --cuda-graphs, with the trainer's own monitor (--monitor-interval 0.1: mean and peak GPU
     utilisation in result.json);
  3. a summary table of seq/s and mean/peak GPU utilisation, printed and written to
     $OUT (or --out): gpu_check_summary.md and .json, bench_train_cuda.json, results.json
     (every run's result.json) and gpu_check.log. The run folders themselves stay in --work.

    python benchmarks/gpu_check.py --dry-run        # print the plan's commands, run nothing
    python benchmarks/gpu_check.py --smoke          # the same pieces on CPU in seconds (tests)
    python benchmarks/gpu_check.py --data-dir DIR   # on the GPU machine (DIR holds traffic/)

On this project's lent H200 (README, "Command line"), whose python3 has CUDA torch, NVML and
psutil but not ncps: copy the data into a git-ignored folder and carry it, and the ncps wheel
(pure Python; without it the ncps contenders are dropped, and the script says so):

    echo /.gpu_data/ >> .git/info/exclude && mkdir -p .gpu_data && cp -r /work/shared/data/traffic .gpu_data/
    python3 -m pip download --no-deps --only-binary=:all: -d .whl ncps==1.0.1   # .whl/ is ignored
    run(carry=[".gpu_data", ".whl"], timeout_s=600, command="python3 -m pip install -q --no-index
        --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1
        python3 benchmarks/gpu_check.py --data-dir .gpu_data --out $OUT")

Every step runs in its own process with a timeout; a step that fails or times out is reported
in the table with its reason and the others still run. The script adds ``src`` to PYTHONPATH,
so torchliquid needs no install.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_train.py"


@dataclass
class Step:
    """One process of the plan: what it runs, how long it may take, where its result lands."""

    name: str
    argv: list[str]
    timeout_s: float
    kind: str  # "bench" | "train"
    result: Path | None = None  # the JSON it writes (bench --json, or the run's result.json)
    note: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)


def _python() -> list[str]:
    return [sys.executable]


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps of the check, in order (bench first, then CfC/LTC eager and graphed)."""
    work = Path(args.work)
    steps = []
    if args.smoke:  # CPU: the same pieces on tiny sizes
        bench = ["--smoke", "--cases", "tl-module-cfc,lstm", "--threads", "1"]
    else:
        cases = args.cases.split(",")
        bench = ["--workloads", args.workloads, "--batches", args.batches, "--cases",
                 ",".join(cases), "--rounds", "5", "--warmup", "2", "--budget-s", "2",
                 "--max-step-s", "2", "--infer-repeats", "10"]
    result = work / f"bench_train_{args.device}.json"
    steps.append(Step("bench_train", [*_python(), str(BENCH), "--device", args.device, *bench,
                                      "--json", str(result)], args.bench_timeout_s, "bench", result))
    for model, epochs in (("cfc", args.cfc_epochs), ("ltc", args.ltc_epochs)):
        for graphs in (False, True):
            name = f"train-{model}-{'graphs' if graphs else 'eager'}"
            out = work / name
            if args.smoke:
                data = ["--dataset", "sine", "--batch-size", "1", "--units", "8", "--threads", "1"]
            else:
                data = ["--dataset", args.dataset, "--batch-size", str(args.batch_size),
                        "--max-windows", str(args.max_windows), "--no-download"]
                data += ["--data-dir", args.data_dir] if args.data_dir else []
            argv = [*_python(), "-m", "torchliquid", "train", "--model", model, *data,
                    "--epochs", str(2 if args.smoke else epochs), "--device", args.device,
                    "--monitor-interval", "0.1", "--checkpoint-epochs", "0", "--log-every",
                    "100", "--out", str(out), "--overwrite",
                    *(["--cuda-graphs"] if graphs else [])]
            step = Step(name, argv, args.train_timeout_s, "train", out / "result.json")
            if graphs and args.device != "cuda":
                step.note = "skipped: --cuda-graphs needs --device cuda"
            steps.append(step)
    return steps


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def _gpu_monitor(device: str) -> Any:
    """torchliquid's HardwareMonitor on GPU 0 every 0.1 s, or None on CPU / without NVML."""
    if device != "cuda":
        return None
    sys.path.insert(0, str(ROOT / "src"))
    from torchliquid.monitor import HardwareMonitor

    return HardwareMonitor(interval=0.1, devices=[0])


def run_step(step: Step, device: str, log: Callable[[str], None], deadline: float) -> None:
    """Run ``step`` (bounded by its timeout and the overall deadline); fill ``step.outcome``."""
    left = deadline - time.monotonic()
    if step.note:
        step.outcome = {"status": step.note}
        return
    if left < 20:
        step.outcome = {"status": "skipped: out of --budget-s"}
        return
    log(f"\n$ {shlex.join(step.argv)}")
    monitor = _gpu_monitor(device) if step.kind == "bench" else None
    if monitor is not None:
        monitor.start()
    started = time.monotonic()
    try:
        done = subprocess.run(step.argv, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=min(step.timeout_s, left))
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {min(step.timeout_s, left):.0f} s"
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    finally:
        if monitor is not None:
            monitor.stop()
    step.outcome = {"status": status, "seconds": time.monotonic() - started}
    if monitor is not None:
        step.outcome["monitor"] = monitor.summary()
    log(output.rstrip()[-6000:])
    if status != "ok":
        log(f"[{step.name}] {status}")


def _gpu(monitor: dict | None) -> dict[str, Any]:
    """The first GPU's entry of a monitor summary ({} when none was sampled)."""
    devices = (monitor or {}).get("devices") or {}
    return next((d for k, d in sorted(devices.items()) if "gpu" in k), {})


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def summary_rows(steps: list[Step]) -> list[dict[str, Any]]:
    """One row per measured configuration: seq/s and the GPU's mean/peak utilisation."""
    rows = []
    for step in steps:
        status = step.outcome.get("status", "not run")
        result = None
        if step.result is not None and step.result.exists() and status == "ok":
            result = json.loads(step.result.read_text())
        if step.kind == "bench":
            gpu = _gpu(step.outcome.get("monitor"))
            for r in (result or {}).get("records", []):
                speed = (r.get("seq_per_s") or {}).get("median")
                rows.append({"what": f"bench {r['workload']} B={r['batch']} {r['case']}",
                             "seq_per_s": speed, "gpu_util_mean": gpu.get("util_pct_mean"),
                             "gpu_util_peak": gpu.get("util_pct_peak"),
                             "device_peak_mb": r.get("device_peak_mb"),
                             "note": r.get("skipped") or "util: whole bench"})
            if result is None:
                rows.append({"what": "bench", "note": status})
            continue
        if result is None:
            rows.append({"what": step.name, "note": status})
            continue
        gpu = _gpu(result.get("monitor"))
        metric = result.get("metric", "loss")
        rows.append({"what": step.name, "seq_per_s": result.get("sequences_per_second"),
                     "gpu_util_mean": gpu.get("util_pct_mean"),
                     "gpu_util_peak": gpu.get("util_pct_peak"),
                     "train_seconds": result.get("train_seconds"),
                     "test_metric": f"{metric} {result['post_training'][metric]:.4g}",
                     "note": "" if gpu else "no GPU sampled"})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    header = ["what", "seq/s", "GPU util mean %", "GPU util peak %", "test", "note"]
    body = [[r["what"], "-" if r.get("seq_per_s") is None else f"{r['seq_per_s']:,.0f}",
             _pct(r.get("gpu_util_mean")), _pct(r.get("gpu_util_peak")),
             r.get("test_metric", ""), r.get("note", "")[:70]] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _machine(device: str) -> dict[str, Any]:
    import platform

    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cuda_available": torch.cuda.is_available(), "device": device}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, tiny sizes: bench --smoke and sine runs (graph runs skipped)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check",
                   help="where the summary and JSON go (default: $OUT, else runs/gpu_check)")
    p.add_argument("--work", default=None, help="run folders (default: OUT/work, or /tmp/... "
                                                "when OUT is $OUT, whose file count is limited)")
    p.add_argument("--data-dir", default=None, help="folder with traffic/ (or power/)")
    p.add_argument("--dataset", default="traffic", choices=["traffic", "power", "har"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=16384, help="windows per split")
    p.add_argument("--cfc-epochs", type=int, default=8)
    p.add_argument("--ltc-epochs", type=int, default=3)
    p.add_argument("--workloads", default="traffic,har")
    p.add_argument("--batches", default="64,512")
    p.add_argument("--cases", default="tl-module-cfc,tl-cfc-function-torch,tl-module-ltc,"
                                      "tl-ltc-torch-sparse,ncps-cfc,ncps-ltc,lstm")
    p.add_argument("--bench-timeout-s", type=float, default=170)
    p.add_argument("--train-timeout-s", type=float, default=75)
    p.add_argument("--budget-s", type=float, default=480, help="stop starting steps after this")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    out = Path(args.out)
    if args.work is None:
        args.work = (str(Path("/tmp") / "torchliquid_gpu_check") if os.environ.get("OUT")
                     and Path(os.environ["OUT"]) == out else str(out / "work"))
    if not args.smoke:
        if importlib.util.find_spec("ncps") is None:  # a test dependency: the GPU machine
            # may lack it; drop its contenders and the raw-kernel LTC (whose masks come from it)
            cases = args.cases.split(",")
            dropped = [c for c in cases if c.startswith(("ncps-", "tl-ltc-"))]
            args.cases = ",".join(c for c in cases if c not in dropped)
            print(f"ncps is not installed: bench cases {', '.join(dropped) or 'none'} dropped")
    steps = plan(args)
    if args.dry_run:
        for step in steps:
            print(("# " + step.note + "\n# " if step.note else "") + shlex.join(step.argv))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    log_file = open(out / "gpu_check.log", "w", encoding="utf-8")

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    machine = _machine(args.device)
    log(f"machine: {json.dumps(machine)}")
    if args.device == "cuda" and not machine["cuda_available"]:
        log("torch sees no CUDA GPU: run this on the GPU machine, or use --smoke / --dry-run")
        return 2
    deadline = time.monotonic() + args.budget_s
    for step in steps:
        run_step(step, args.device, log, deadline)
    rows = summary_rows(steps)
    table = format_rows(rows)
    log("\n" + table)
    results = {s.name: json.loads(s.result.read_text()) for s in steps
               if s.kind == "train" and s.result is not None and s.result.exists()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    bench = steps[0].result
    if bench is not None and bench.exists():
        (out / bench.name).write_bytes(bench.read_bytes())
    summary = {"machine": machine, "args": vars(args), "rows": rows,
               "steps": {s.name: {"argv": s.argv, **{k: v for k, v in s.outcome.items()
                                                     if k != "monitor"}} for s in steps}}
    (out / "gpu_check_summary.json").write_text(json.dumps(summary, indent=1))
    (out / "gpu_check_summary.md").write_text(
        f"# GPU check ({machine.get('gpu', args.device)}, torch {machine['torch']})\n\n"
        + table + "\n")
    log_file.close()
    failed = [s.name for s in steps if not str(s.outcome.get("status", "")).startswith(("ok", "skipped"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
