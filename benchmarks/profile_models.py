"""Where the time goes: torch.profiler tables of one training step per contender.

    .venv/bin/python benchmarks/profile_models.py --workload traffic --batch 64 \\
        --cases ncps-cfc,tl-cfc-reference,tl-cfc-function,ncps-ltc,tl-ltc-native

Prints, per contender, the top operators by self CPU time (forward + backward + Adam) and the
number of ATen calls per step: the first thing to read before predicting what a fused kernel
can save (RESULTS.md "Profile" quotes these tables).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import WORKLOADS, Contender, _data  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="traffic", choices=sorted(WORKLOADS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--cases", default="ncps-cfc,tl-cfc-function,ncps-ltc,tl-ltc-native")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    w = WORKLOADS[args.workload]
    x, y = _data(w, args.batch, torch.device("cpu"))
    for name in args.cases.split(","):
        c = Contender(name, w, torch.device("cpu"))
        c.step(x, y)  # warm-up (scripting, kernel build, allocator)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                c.step(x, y)
        events = prof.key_averages()
        aten_calls = sum(e.count for e in events if e.key.startswith("aten::")) / args.steps
        total_ms = sum(c.timing.total) / len(c.timing.total) * 1e3
        print(f"\n=== {name} ({w.name}, B={args.batch}): {total_ms:.1f} ms/step under the profiler, "
              f"{aten_calls:.0f} aten calls/step")  # fmt: skip
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
