"""Cost of one HardwareMonitor tick versus a typical CfC training step.

Backs the claim that sampling costs < 1 % of training: the sampler thread runs one tick
every ``interval`` seconds whatever the step time, so the share of wall time it takes is
``tick_s / interval``; ``tick_s / step_s`` is reported too, for the "one tick vs one step"
reading. An A/B of step time with the monitor off and on is printed as a sanity check
(noisy on shared cores: read its std before its mean). No assertion: this is a report.

    .venv/bin/python benchmarks/bench_monitor.py                 # real NVML if present
    .venv/bin/python benchmarks/bench_monitor.py --fake-gpus 8   # GPU code path, no GPU
    .venv/bin/python benchmarks/bench_monitor.py --quick --json  # one JSON line

Fake GPUs measure the Python side of the NVML path (record building, unit conversion);
a real driver adds its own per-call latency, so run on the GPU box for the real figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from torchliquid.monitor import HardwareMonitor, HostBackend, open_gpu_backend
from torchliquid.monitor.testing import FakeNvml


def timed(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``n`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def make_step(batch: int, seq: int, units: int, device: torch.device) -> Callable[[], None]:
    """One forward + backward + SGD step of a CfC regressor (the study's model family)."""
    torch.manual_seed(0)
    try:
        from torchliquid.nn import CfC

        model: torch.nn.Module = CfC(8, units, proj_size=1)
    except ImportError:  # keeps the monitor benchmark usable before nn exists
        model = torch.nn.GRU(8, units, batch_first=True)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, seq, 8, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        y = model(x)[0]
        y.square().mean().backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # time the work, not the launch

    return step


def stats_us(xs: list[float]) -> dict[str, float]:
    return {
        "mean_us": 1e6 * statistics.fmean(xs),
        "std_us": 1e6 * (statistics.stdev(xs) if len(xs) > 1 else 0.0),
        "p50_us": 1e6 * statistics.median(xs),
        "max_us": 1e6 * max(xs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--ticks", type=int, default=2000)
    p.add_argument("--steps", type=int, default=10, help="steps per A/B block")
    p.add_argument("--blocks", type=int, default=4, help="interleaved off/on blocks")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--fake-gpus", type=int, default=0, help="use a fake NVML with N devices")
    p.add_argument("--children", action="store_true", help="host RSS includes child processes")
    p.add_argument("--quick", action="store_true", help="fewer ticks and steps")
    p.add_argument("--json", action="store_true", help="print one JSON line only")
    a = p.parse_args()
    if a.quick:
        a.ticks, a.steps, a.blocks = 300, 5, 2

    def backends() -> list[Any]:
        gpu = open_gpu_backend(nvml=FakeNvml(n_devices=a.fake_gpus) if a.fake_gpus else None)
        return [gpu, HostBackend(include_children=a.children)]

    mon = HardwareMonitor(a.interval, backends=backends())
    tick = timed(mon.sample_once, a.ticks, warmup=20)
    summary = mon.summary()
    mon.stop()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step_fn = make_step(a.batch, a.seq, a.units, device)
    timed(step_fn, 3, warmup=0)  # burn-in: allocator and autograd caches
    # Interleave off/on blocks so load drift on shared cores hits both arms alike.
    step_off: list[float] = []
    step_on: list[float] = []
    for _ in range(a.blocks):
        step_off += timed(step_fn, a.steps, warmup=0)
        with HardwareMonitor(a.interval, backends=backends()):
            step_on += timed(step_fn, a.steps, warmup=0)

    tick_s, step_s = statistics.fmean(tick), statistics.fmean(step_off)
    report = {
        "bench": "monitor_tick",
        "host": platform.node(),
        "torch": torch.__version__,
        "device": str(device),
        "gpus_monitored": [d for d in summary["devices"] if d != "host"],
        "gpu_unavailable_reason": summary["gpu_unavailable_reason"],
        "interval_s": a.interval,
        "tick": stats_us(tick),
        "step_off": stats_us(step_off),
        "step_on": stats_us(step_on),
        "tick_share_of_wall_pct": 100.0 * tick_s / a.interval,
        "tick_vs_one_step_pct": 100.0 * tick_s / step_s,
        "ab_step_slowdown_pct": 100.0 * (statistics.fmean(step_on) / step_s - 1.0),
    }
    if a.json:
        print(json.dumps(report))
        return
    t, s_off, s_on = report["tick"], report["step_off"], report["step_on"]
    print(f"monitored: {report['gpus_monitored'] or 'no GPU'} + host"
          f"{'' if not report['gpu_unavailable_reason'] else ' (' + report['gpu_unavailable_reason'] + ')'}")
    print(f"one tick        : {t['mean_us']:9.1f} µs ± {t['std_us']:.1f} (p50 {t['p50_us']:.1f}, "
          f"max {t['max_us']:.1f}) over {a.ticks} ticks")
    print(f"training step   : {s_off['mean_us'] / 1e3:9.2f} ms ± {s_off['std_us'] / 1e3:.2f} "
          f"(CfC {a.units} units, batch {a.batch}, seq {a.seq}, {device})")
    print(f"step, monitor on: {s_on['mean_us'] / 1e3:9.2f} ms ± {s_on['std_us'] / 1e3:.2f} "
          f"(A/B {report['ab_step_slowdown_pct']:+.1f} %, within noise unless it exceeds the std)")
    print(f"tick / interval : {report['tick_share_of_wall_pct']:.4f} % of wall time at "
          f"{a.interval} s sampling")
    print(f"tick / one step : {report['tick_vs_one_step_pct']:.3f} %")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
