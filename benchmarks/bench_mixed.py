"""Training throughput with mixed memory: torchliquid's fast path vs its reference loop vs ncps.

    .venv/bin/python benchmarks/bench_mixed.py                 # Traffic-like and HAR-like, B = 64
    .venv/bin/python benchmarks/bench_mixed.py --smoke         # seconds; tests prove the script runs
    .venv/bin/python benchmarks/bench_mixed.py --workloads traffic --rounds 20 --json out.json

Contenders, all with mixed_memory=True, 64 units and the study's heads (bench_train/factory.py):

    tl-mixed-cfc / tl-mixed-ltc          torchliquid CfC / LTC, implementation="auto" (mixed_fused)
    tl-reference-cfc / tl-reference-ltc  the same layers with implementation="reference"
    ncps-cfc / ncps-ltc                  ncps 1.0.1

    CfC  CfC(I, 64, proj_size=O): backbone 128 x 1, lecun_tanh, mode "default"
    LTC  LTC(I, AutoNCP(64, O)): 6 ODE unfolds, softplus constraints, affine mappings

One training step = forward of a batch, loss on the last step (cross-entropy for HAR-like, MSE
for Traffic-like), backward, Adam (torch's fused step, as the trainer's). After `--warmup` steps
each, the contenders are timed in interleaved rounds (one step each per round, so a noisy
neighbour slows all alike); the table gives the median sequences/s of the wall-clock steps with
quartiles, and the median by the thread's CPU time (what the step cost, waits excluded).
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from factory import Workload  # noqa: E402

from torchliquid.nn import CfC, LTC  # noqa: E402
from torchliquid.nn.wirings import AutoNCP  # noqa: E402
from torchliquid.train.optim import adam  # noqa: E402

WORKLOADS = {
    "traffic": Workload("Traffic-like", 32, 7, 1, False),
    "har": Workload("HAR-like", 16, 561, 6, True),
    "smoke": Workload("smoke", 3, 5, 2, True),
}
CASES = ["tl-mixed-cfc", "tl-reference-cfc", "ncps-cfc", "tl-mixed-ltc", "tl-reference-ltc", "ncps-ltc"]


def _model(case: str, w: Workload, units: int) -> torch.nn.Module:
    """The contender's layer, built from seed 0 (torchliquid and ncps then draw the same weights)."""
    torch.manual_seed(0)
    family = case.rsplit("-", 1)[1]
    if case.startswith("ncps"):
        import ncps.torch
        import ncps.wirings

        if family == "cfc":
            return ncps.torch.CfC(w.inputs, units, proj_size=w.outputs, return_sequences=False, mixed_memory=True)
        return ncps.torch.LTC(w.inputs, ncps.wirings.AutoNCP(units, w.outputs), return_sequences=False, mixed_memory=True)
    implementation = "reference" if "-reference-" in case else "auto"
    if family == "cfc":
        return CfC(w.inputs, units, proj_size=w.outputs, return_sequences=False, mixed_memory=True,
                   implementation=implementation)  # fmt: skip
    return LTC(w.inputs, AutoNCP(units, w.outputs), return_sequences=False, mixed_memory=True,
               implementation=implementation)  # fmt: skip


class Contender:
    def __init__(self, case: str, w: Workload, units: int) -> None:
        self.case, self.w = case, w
        self.model = _model(case, w, units)
        self.opt = adam(self.model.parameters(), lr=1e-3)
        self.timing, self.cpu_s = harness.Timing(), []

    def step(self, x: torch.Tensor, target: torch.Tensor) -> None:
        def forward() -> torch.Tensor:
            y, _ = self.model(x)
            return F.cross_entropy(y, target) if self.w.classify else F.mse_loss(y, target)

        def backward(loss: torch.Tensor) -> None:
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

        cpu0 = time.thread_time()
        harness.timed_step(forward, backward, torch.device("cpu"), self.timing)
        self.cpu_s.append(time.thread_time() - cpu0)


def run(w: Workload, batch: int, units: int, cases: list[str], warmup: int, rounds: int) -> list[dict]:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, w.seq_len, w.inputs, generator=g)
    target = torch.randint(0, w.outputs, (batch,), generator=g) if w.classify else torch.randn(batch, w.outputs, generator=g)
    contenders = [Contender(case, w, units) for case in cases]
    for c in contenders:
        for _ in range(warmup):
            c.step(x, target)
        c.timing, c.cpu_s = harness.Timing(), []
    for _ in range(rounds):
        for c in contenders:
            c.step(x, target)
    results = []
    for c in contenders:
        rate = harness.summarize(c.timing.total, batch)
        results.append({"workload": w.name, "batch": batch, "case": c.case, "seq_per_s": rate,
                        "cpu_seq_per_s": batch / statistics.median(c.cpu_s),
                        "forward_ms": 1e3 * statistics.median(c.timing.forward),
                        "backward_ms": 1e3 * statistics.median(c.timing.backward)})  # fmt: skip
    return results


def print_table(results: list[dict]) -> None:
    rows = [[r["workload"], r["batch"], r["case"], f"{r['seq_per_s']['median']:,.0f}",
             f"{r['seq_per_s']['q1']:,.0f}-{r['seq_per_s']['q3']:,.0f}", f"{r['cpu_seq_per_s']:,.0f}",
             f"{r['forward_ms']:.1f}", f"{r['backward_ms']:.1f}"] for r in results]  # fmt: skip
    print(harness.format_table(rows, ["workload", "B", "case", "seq/s", "q1-q3", "seq/s (CPU time)",
                                      "fwd ms", "bwd+Adam ms"]))  # fmt: skip
    ratios = []
    by = {(r["workload"], r["case"]): r for r in results}
    for workload in dict.fromkeys(r["workload"] for r in results):
        for family in ("cfc", "ltc"):
            fast = by.get((workload, f"tl-mixed-{family}"))
            for other in (f"tl-reference-{family}", f"ncps-{family}"):
                if fast and (workload, other) in by:
                    slow = by[(workload, other)]
                    ratios.append([workload, f"tl-mixed-{family} / {other}",
                                   f"{fast['seq_per_s']['median'] / slow['seq_per_s']['median']:.2f}x",
                                   f"{fast['cpu_seq_per_s'] / slow['cpu_seq_per_s']:.2f}x"])  # fmt: skip
    if ratios:
        print()
        print(harness.format_table(ratios, ["workload", "speed-up", "wall", "CPU time"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: proves the script runs")
    p.add_argument("--workloads", default="traffic,har", help=f"comma list of {sorted(WORKLOADS)}")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--units", type=int, default=64)
    harness.add_run_arguments(p, CASES)
    args = p.parse_args(argv)
    if args.smoke:
        args.workloads, args.batch, args.units, args.warmup, args.rounds = "smoke", 4, 12, 1, 2
    machine = harness.start_cpu_run(args.threads)
    results = []
    for name in args.workloads.split(","):
        results += run(WORKLOADS[name], args.batch, args.units, args.cases.split(","), args.warmup, args.rounds)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
